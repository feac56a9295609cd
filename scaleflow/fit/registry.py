"""Every law `scaleflow fit --law` knows, in one explicit list.

A law is a function (FitData, FitOptions) -> {result name: result} (plus "skipped":
{approach: reason} where it tries several); its help line feeds `--law`'s help. A result needs
`to_dict(include_samples)` and `status`/`message`; one with an allocation (`n_opt`, `d_opt`,
`loss_opt`, `interval`, directly or as `.law`) also gets predictions. `register_law` adds one
(its report then shows a generic table of its fields: `scaleflow.report`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from scaleflow.errors import FitError

if TYPE_CHECKING:  # the fitters load when a law runs: `scaleflow fit --help` reads this list alone
    from scaleflow.fit.types import FitData, FitOptions

LawFunction = Callable[["FitData", "FitOptions"], dict[str, Any]]


@dataclass(frozen=True)
class LawEntry:
    run: LawFunction
    help: str


def _approach3(data: FitData, o: FitOptions):
    from scaleflow.fit.parametric import ParametricFitter

    return ParametricFitter(huber_delta=o.huber_delta, n_bootstrap=o.n_bootstrap, seed=o.seed,
                            flops_per_param_token=data.flops["flops_per_param_token"],
                            asymmetry=o.asymmetry, cluster=_cluster(o)).fit(data.table)


def _approach2(data: FitData, o: FitOptions):
    from scaleflow.fit.isoflop import IsoFlopFitter

    return IsoFlopFitter(rtol=o.budget_rtol, n_bootstrap=o.n_bootstrap, seed=o.seed,
                         huber_delta=o.huber_delta, cluster=_cluster(o)).fit(data.table)


def _cluster(o: FitOptions) -> str | None:
    """The column approaches 2 and 3 resample by (`prepare` adds `trunk`); None: each run."""
    return "trunk" if o.resample == "trunks" else None


def _approach1(data: FitData, o: FitOptions):
    from scaleflow.fit.envelope import EnvelopeFitter

    if data.curves is None:
        raise FitError("approach 1 needs runs of one model size at several token counts (or WSD branches)")
    return EnvelopeFitter(n_bootstrap=o.n_bootstrap, seed=o.seed, huber_delta=o.huber_delta).fit(data.curves)


APPROACHES = {"approach3": _approach3, "approach2": _approach2, "approach1": _approach1}


def _chinchilla(data: FitData, o: FitOptions) -> dict[str, Any]:
    """Every approach the data supports; the reasons of the others go to `skipped`."""
    from scaleflow.fit.tables import check_table

    check_table(data.table, ("params", "tokens", "loss"), 1, "the chinchilla fits")
    out = _every_approach(data, o)
    if len(out) == 1:  # only "skipped"
        raise FitError("; ".join(f"{k}: {v}" for k, v in out["skipped"].items()))
    return out


def _every_approach(data: FitData, o: FitOptions) -> dict[str, Any]:
    """Each approach's result, or its FitError's reason under "skipped"."""
    results, skipped = {}, {}
    for name, fn in APPROACHES.items():
        try:
            results[name] = fn(data, o)
        except FitError as exc:
            skipped[name] = str(exc)
    return {**results, "skipped": skipped}


def _only(name: str) -> LawFunction:
    """The law that runs one approach and lets its FitError through."""
    def run(data: FitData, o: FitOptions) -> dict[str, Any]:
        return {name: APPROACHES[name](data, o)}
    return run


def _power(data: FitData, o: FitOptions):
    from scaleflow.fit.power import PowerFitter

    x = "x" if "x" in data.table.columns else "flops" if "flops" in data.table.columns else "params"
    fitter = PowerFitter(x=x, huber_delta=o.huber_delta, n_bootstrap=o.n_bootstrap, seed=o.seed)
    return {"power": fitter.fit(data.table)}


def _lr_bs(data: FitData, o: FitOptions):
    from scaleflow.fit.hparams import LrBsFitter

    batch = "batch_tokens" if "batch_tokens" in data.table.columns else "batch_size"
    fitter = LrBsFitter(batch=batch, rtol=o.budget_rtol, n_bootstrap=o.n_bootstrap, seed=o.seed)
    return {"lr_bs": fitter.fit(data.table)}


def _lr_bs_nd(data: FitData, o: FitOptions):
    """The compute-only law (`lr_bs`) beside eta_opt(N, D), B_opt(N, D) and their comparison (`lr_bs_nd`)."""
    from scaleflow.fit.hparams_nd import LrBsNDFitter

    batch = "batch_tokens" if "batch_tokens" in data.table.columns else "batch_size"
    nd = LrBsNDFitter(batch=batch, rtol=o.budget_rtol, n_bootstrap=o.n_bootstrap, seed=o.seed).fit(data.table)
    return {**_lr_bs(data, o), "lr_bs_nd": nd}


def _lr_transfer(data: FitData, o: FitOptions) -> dict[str, Any]:
    from scaleflow.fit.transfer import LrTransferFitter

    return {"lr_transfer": LrTransferFitter().fit(data.table)}


def _critical_batch(data: FitData, o: FitOptions) -> dict[str, Any]:
    from scaleflow.fit.critical_batch import CriticalBatchFitter

    res, skipped = CriticalBatchFitter(n_bootstrap=o.n_bootstrap, seed=o.seed).fit(data.table, data.history)
    return {"critical_batch": res, "skipped": skipped}


def _rollout(data: FitData, o: FitOptions) -> dict[str, Any]:
    from scaleflow.fit.rollout import rollout

    return rollout(data, o, _every_approach, tuple(APPROACHES))


def _downstream(data: FitData, o: FitOptions) -> dict[str, Any]:
    from scaleflow.fit.downstream import downstream

    return downstream(data, o)


def _compute_multiplier(data: FitData, o: FitOptions) -> dict[str, Any]:
    from scaleflow.fit.multiplier import MultiplierFitter, with_versus

    table = with_versus(data.table, o) if o.versus else data.table
    fitter = MultiplierFitter(huber_delta=o.huber_delta, n_bootstrap=o.n_bootstrap, seed=o.seed,
                              flops_per_param_token=data.flops["flops_per_param_token"], shared_e=o.shared_e,
                              asymmetry=o.asymmetry, budgets=o.predict, budget_rtol=o.budget_rtol,
                              baseline="source" if o.versus else None)
    return {"compute_multiplier": fitter.fit(table)}



def _loss_curve(data: FitData, o: FitOptions) -> dict[str, Any]:
    from scaleflow.fit.loss_curve import fit_loss_curve

    if not o.study_dir:
        raise FitError("--law loss-curve needs the runs' histories and schedules: give a study directory as SOURCE, "
                       "not a table")
    return {"loss_curve": fit_loss_curve(o.study_dir, data.history, holdout=o.holdout_runs,
                                         schedules=o.predict_schedules, loss_key=o.curve_loss, where=o.where,
                                         huber_delta=o.huber_delta, n_bootstrap=o.n_bootstrap, seed=o.seed)}


LAWS: dict[str, LawEntry] = {
    "chinchilla": LawEntry(_chinchilla, "approaches 3, 2 and 1, each where the data supports it"),
    "approach3": LawEntry(_only("approach3"), "L(N, D) = E + A/N^alpha + B/D^beta"),
    "approach2": LawEntry(_only("approach2"), "IsoFLOP minima"),
    "approach1": LawEntry(_only("approach1"), "the envelope of loss curves"),
    "power": LawEntry(_power, "L = E + A x^-alpha (x: the column mapped by --col x=..., else flops, else params)"),
    "lr-bs": LawEntry(_lr_bs, "optimal learning rate and batch size against compute"),
    "lr-bs-nd": LawEntry(_lr_bs_nd, "lr-bs beside eta_opt = c N^a D^b, B_opt = c N^g D^h (Step Law's form; needs "
                                    "2+ model sizes at some budget) and a leave-one-budget-out comparison"),
    "lr-transfer": LawEntry(_lr_transfer, "drift of the optimal learning rate with width (SP vs muP)"),
    "compute-multiplier": LawEntry(_compute_multiplier, "compute multiplier of recipe B over A: L(N, D) with "
                                                        "shared exponents (--col recipe=Column, or --versus SOURCE_B)"),
    "critical-batch": LawEntry(_critical_batch, "the noise-scale law B*/L^(1/alpha_B) and the steps-tokens "
                                                "trade-off of a batch-size sweep (needs the training history)"),
    "rollout": LawEntry(_rollout, "backtest: fit budgets C_1..C_k with every approach, predict C_(k+1)'s optimum, "
                                  "for k = 2 .. K-1 (errors, prediction intervals)"),
    "loss-curve": LawEntry(_loss_curve, "loss curve under any LR schedule, L0 + A S1^-alpha - C S2 (Tissue et al. "
                                        "2024), on one model size's runs of a study (--predict-schedule, --holdout)"),
    "downstream": LawEntry(_downstream, "task loss L_task(N, D) (approach 3 form), then accuracy as a sigmoid of "
                                        "task loss (--col task_loss=..., --col accuracy=..., --chance)"),
}


def register_law(name: str, run: LawFunction, help: str = "") -> None:
    """Add a law to `--law` (a plugin's, or a user's own)."""
    LAWS[name] = LawEntry(run, help)


def law_help() -> str:
    """`--law`'s help, from the registry."""
    return "; ".join(f"{name}: {entry.help}" for name, entry in LAWS.items())
