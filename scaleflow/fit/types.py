"""The types a fit passes around.

FitOptions (what `scaleflow fit` was asked), FitData (the prepared table), FitRun (what
came out). Units: params in parameters, tokens in tokens, flops in FLOPs, loss in nats/token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scaleflow.fit.defaults import HUBER_DELTA, N_BOOTSTRAP
from scaleflow.fit.laws import jsonable

PARAM_COUNTS = ("non_embedding", "with_head", "total")
RESAMPLE_UNITS = ("runs", "trunks")  # what the chinchilla bootstraps draw: each run, or whole trunks
SIX_ND = {"definition": "6 N D (the table has no flops column)", "flops_per_param_token": 6.0, "spread": 0.0}


@dataclass(frozen=True)
class FitOptions:
    """Settings of one `scaleflow fit` call (see the CLI for their meaning)."""

    law: str = "chinchilla"
    columns: dict[str, str] = field(default_factory=dict)  # logical name -> column in the source
    where: str | None = None
    param_count: str | None = None
    n_bootstrap: int = N_BOOTSTRAP
    huber_delta: float = HUBER_DELTA
    predict: tuple[float, ...] = ()  # FLOP budgets
    holdout_largest: bool = False
    seed: int = 0
    budget_rtol: float = 0.1  # runs whose FLOPs agree within this fraction share a budget
    history: str | None = None  # a CSV / parquet of metrics lines (run_id, step, tokens, train_loss, ...)
    source_kind: str | None = None  # --from: wandb | tensorboard | mlflow (scaleflow.importers); None: table or study
    chance: float | None = None  # --law downstream: accuracy of a random guess (fixes the sigmoid's floor)
    at: tuple[tuple[float, float], ...] = ()  # --law downstream: (N, D) pairs to predict at
    asymmetry: float = 1.0  # approach 3: weight of runs the model over-estimates (> 1: lower envelope)
    shared_e: bool = False  # compute-multiplier: one irreducible loss E for both recipes
    versus: str | None = None  # compute-multiplier: a second source, the second recipe
    study_dir: str | None = None  # loss-curve: the study directory SOURCE (its runs' config.yaml); the CLI sets it
    holdout_runs: tuple[str, ...] = ()  # loss-curve: run ids left out of the fit and predicted
    predict_schedules: tuple[str, ...] = ()  # loss-curve: schedules to predict (fit.loss_curve.SCHEDULE_SYNTAX)
    curve_loss: str = "train_loss"  # loss-curve: the history's train_loss or val_loss
    resample: str = "runs"  # approaches 2, 3: the bootstrap's unit (RESAMPLE_UNITS); trunks: a cluster bootstrap


@dataclass(frozen=True, eq=False)
class FitData:
    """The prepared inputs: `table` (one row per finished run), `curves` (approach 1) and
    `history` (every metrics line: run_id, step, tokens, train_loss, val_loss,
    grad_noise_scale; None without a study directory or `--history FILE`)."""

    table: Any
    curves: Any = None
    notes: tuple[str, ...] = ()
    excluded: dict[str, Any] = field(default_factory=dict)
    history: Any = None
    flops: dict[str, Any] = field(default_factory=lambda: dict(SIX_ND))


@dataclass(frozen=True, eq=False)
class FitRun:
    """Everything one fit produced; `to_dict()` is the JSON object of `scaleflow fit --json`."""

    source: str
    options: FitOptions
    data: FitData
    results: dict[str, Any]
    skipped: dict[str, str]
    optimal: list[dict[str, Any]]
    holdout: dict[str, Any] | None = None
    agreement: Any = None  # fit.agreement.Agreement when two or more approaches ran

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        o = self.options
        out: dict[str, Any] = {
            "source": self.source, "law": o.law, "n_points": len(self.data.table), "columns": o.columns,
            "where": o.where, "param_count": o.param_count, "n_bootstrap": o.n_bootstrap,
            "huber_delta": o.huber_delta, "notes": list(self.data.notes), "excluded": self.data.excluded,
            "flops": self.data.flops,
        }
        if o.asymmetry != 1.0:
            out["asymmetry"] = o.asymmetry
        if o.resample != "runs":
            out["resample"] = o.resample
        if o.versus:
            out["versus"] = o.versus
        if self.agreement is not None:
            out["agreement"] = self.agreement.to_dict()
        out["results"] = list(self.results)
        out.update({name: r.to_dict(include_samples) for name, r in self.results.items()})
        out.update(skipped=self.skipped, optimal=self.optimal)
        if self.holdout is not None:
            out["holdout"] = self.holdout
        return jsonable(out)


def allocation(result: Any):
    """The result's compute-optimal allocation law (n_opt, d_opt, loss_opt, interval), or None."""
    law = getattr(result, "law", result)
    return law if all(hasattr(law, m) for m in ("n_opt", "d_opt", "loss_opt", "interval")) else None


def predict_optimal(results: dict[str, Any], budgets) -> list[dict[str, Any]]:
    """One row per (budget, approach): N_opt, D_opt, tokens per parameter, loss, 95% intervals."""
    laws = {name: law for name, res in results.items() if (law := allocation(res)) is not None}
    rows = []
    for C in budgets:
        for name, law in laws.items():
            n, d, loss = (float(getattr(law, q)(C)) for q in ("n_opt", "d_opt", "loss_opt"))
            ci = {q: law.interval(q, C).tolist() for q in ("n_opt", "d_opt", "loss_opt")}
            rows.append(jsonable({
                "flops": float(C), "params": n, "tokens": d, "tokens_per_param": d / n, "loss": loss,
                "approach": name, "params_ci": ci["n_opt"], "tokens_ci": ci["d_opt"], "loss_ci": ci["loss_opt"],
            }))
    return rows
