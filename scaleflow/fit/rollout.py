"""Rollout backtest (`scaleflow fit --law rollout`): an expanding window over the FLOP budgets.

Budgets C_1 < ... < C_K (grouped as approach 2 groups them, `isoflop.group_budgets`). Step k
(k = 2 .. K-1) fits every Chinchilla approach (`registry.APPROACHES`, the fitters themselves)
on the runs of budgets C_1..C_k and predicts the optimum of C_{k+1}: N_opt and the loss at
the optimum, against what C_{k+1} measured (the minimum of its IsoFLOP curve in one approach-2
fit of every budget, else its best run: `measured_optima`). `--holdout-largest` is the last
step (`backtest_step`, shared with `fit.api`).

Prediction intervals (95%) include observation noise: each bootstrap replicate's prediction
(parameter uncertainty) gets a log-residual drawn from the approach's misses on its own
training budgets (measured optimum against its prediction there: the residual scatter of the
fit, in the quantity compared). With 2 training budgets approaches 1 and 2 go through their
points (no scatter), so early intervals are mostly the bootstrap's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from scaleflow.errors import FitError
from scaleflow.fit.laws import LEVEL, OK, Law, jsonable, percentile_interval
from scaleflow.fit.types import FitData, FitOptions, allocation, predict_optimal

QUANTITIES = (("params", "n_opt"), ("loss", "loss_opt"))  # (measured key, law method)


def budgets_of(table, rtol: float) -> np.ndarray:
    """The FLOP budget of each row (`isoflop.group_budgets`)."""
    from scaleflow.fit.isoflop import group_budgets

    return group_budgets(table, rtol)


def measured_optima(table, rtol: float) -> dict[float, dict[str, Any]]:
    """{budget: measured optimum}: the minimum of the budget's curve in one approach-2 fit of every
    budget (the curves' shape is fitted on all of them), else the budget's best run."""
    from scaleflow.fit.isoflop import IsoFlopFitter

    try:
        fitted = {b.flops: b for b in IsoFlopFitter(rtol=rtol).fit(table).budgets if np.isfinite(b.params_opt)}
    except FitError:
        fitted = {}
    C = budgets_of(table, rtol)
    out = {}
    for c in np.unique(C):
        c = float(c)
        if c in fitted:
            b = fitted[c]
            out[c] = {"params": b.params_opt, "tokens": b.tokens_opt, "loss": b.loss_opt,
                      "how": "minimum of the held-out budget's IsoFLOP curve"}
        else:
            best = table[C == c].loc[table[C == c]["loss"].idxmin()]
            out[c] = {"params": float(best["params"]), "tokens": float(best["tokens"]), "loss": float(best["loss"]),
                      "how": "best held-out run"}
    return out


def draws(law: Any, method: str, C: float) -> np.ndarray | None:
    """Bootstrap replicates of law.`method`(C) (n_opt or loss_opt) for a ChinchillaLaw or an
    AllocationLaw; None without replicates."""
    if isinstance(law, Law):  # approach 3: every replicate's parameters
        part, func = law, method
    else:  # approaches 1, 2: N_opt and L_opt are separate laws
        part, func = (law.n_law if method == "n_opt" else law.loss), "predict"
    if part is None or not part.samples.size:
        return None
    cols = {p: part.samples[:, i] for i, p in enumerate(part.PARAMS)}
    with np.errstate(all="ignore"):
        v = np.asarray(part.FUNCS[func](np.asarray(C, float), **cols, **part.constants()), float)
    v = v[np.isfinite(v) & (v > 0)]
    return v if v.size else None


def prediction_interval(law: Any, method: str, C: float, residuals: np.ndarray, seed: int) -> list[float]:
    """95% interval of an observation at C: bootstrap replicates times exp(a resampled log-residual)."""
    v = draws(law, method, C)
    if v is None:
        return [np.nan, np.nan]
    if residuals.size:
        v = v * np.exp(np.random.default_rng(seed).choice(residuals, size=v.size))
    return percentile_interval(v, LEVEL).tolist()


def _residuals(law: Any, method: str, key: str, train_budgets, measured) -> np.ndarray:
    """log(measured) - log(predicted) of `key` on the training budgets."""
    r = []
    for c in train_budgets:
        with np.errstate(all="ignore"):
            p = float(getattr(law, method)(c))
        m = measured[c][key]
        if np.isfinite(p) and p > 0 and m > 0:
            r.append(np.log(m) - np.log(p))
    return np.array(r)


def backtest_step(data: FitData, o: FitOptions, k: int, run: Callable[[FitData, FitOptions], dict[str, Any]],
                  measured: dict[float, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Fit `run` (a law of the registry) on the runs of the k smallest budgets and predict budget k+1
    (k counts from 1): the held-out budget's measured optimum, each approach's prediction with its
    95% confidence (`*_ci`, parameters only) and prediction (`*_pi`, with observation noise)
    intervals, the relative errors and whether the observation fell inside. Skipped approaches
    (FitError) are listed under `skipped`."""
    t = data.table
    C = budgets_of(t, o.budget_rtol)
    budgets = np.unique(C)
    measured = measured_optima(t, o.budget_rtol) if measured is None else measured
    top = float(budgets[k])
    train, test = t[C < top], t[C == top]
    curves = None if data.curves is None else data.curves[data.curves["flops"] < test["flops"].min()]
    sub = replace(data, table=train.reset_index(drop=True), curves=curves)
    with np.errstate(over="ignore"):  # early steps fit few points: some bootstrap replicates overflow
        out = run(sub, o)
    skipped = dict(out.pop("skipped", {}) or {})
    results = {name: res for name, res in out.items() if allocation(res) is not None}
    m = measured[top]
    rows = []
    for p in predict_optimal(results, [top]):
        law = allocation(results[p["approach"]])
        row = {**p, "params_ratio": p["params"] / m["params"] if p["params"] else None,
               "loss_error": (p["loss"] - m["loss"]) / m["loss"] if p["loss"] is not None else None}
        row["params_error"] = row["params_ratio"] - 1.0 if row["params_ratio"] is not None else None
        for key, method in QUANTITIES:
            res = _residuals(law, method, key, [float(c) for c in budgets[:k]], measured)
            pi = prediction_interval(law, method, top, res, o.seed + k)
            row[f"{key}_pi"] = pi
            row[f"{key}_inside"] = bool(pi[0] <= m[key] <= pi[1]) if np.all(np.isfinite(pi)) else None
            row[f"{key}_residual_sd"] = float(np.sqrt(np.mean(res**2))) if res.size else None
        rows.append(row)
    return jsonable({"step": k, "flops": top, "train_budgets": budgets[:k], "n_train": len(train),
                     "n_test": len(test), "measured": m, "predicted": rows, "skipped": skipped})


@dataclass(frozen=True, eq=False)
class RolloutResult:
    """Every step of the rollout (dicts of `backtest_step`) and a summary per approach."""

    budgets: tuple[float, ...]
    steps: tuple[dict[str, Any], ...]
    status: str = OK
    message: str = ""
    level: float = LEVEL
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def last(self) -> dict[str, Any]:
        """The last step: the same numbers as `--holdout-largest` under `--law chinchilla`."""
        return self.steps[-1]

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        return jsonable({"budgets": self.budgets, "steps": self.steps, "summary": self.summary,
                         "level": self.level, "status": self.status, "message": self.message,
                         "method": "expanding window: fit budgets C_1..C_k, predict C_{k+1}; prediction intervals "
                                   "= bootstrap replicates x a resampled log-residual of the training budgets"})


def summarise(steps) -> dict[str, Any]:
    """Per approach: steps predicted, mean |relative error| of N_opt and of the loss, and how many
    observations fell inside their prediction intervals."""
    out: dict[str, Any] = {}
    for s in steps:
        for p in s["predicted"]:
            a = out.setdefault(p["approach"], {"steps": 0, "params_abs_error": [], "loss_abs_error": [],
                                               "params_inside": [], "loss_inside": []})
            a["steps"] += 1
            for key in ("params", "loss"):
                if p[f"{key}_error"] is not None:
                    a[f"{key}_abs_error"].append(abs(p[f"{key}_error"]))
                if p[f"{key}_inside"] is not None:
                    a[f"{key}_inside"].append(p[f"{key}_inside"])
    for a in out.values():
        for key in ("params", "loss"):
            e, inside = a[f"{key}_abs_error"], a[f"{key}_inside"]
            a[f"{key}_abs_error"] = float(np.mean(e)) if e else None
            a[f"{key}_inside"] = f"{sum(inside)}/{len(inside)}" if inside else None
    return out


def rollout(data: FitData, o: FitOptions, every_approach: Callable[[FitData, FitOptions], dict[str, Any]],
            approaches: tuple[str, ...]) -> dict[str, Any]:
    """The `rollout` law: {"rollout": RolloutResult, "skipped": {approach: reason at every step}}.
    `every_approach`: the registry's fit of every approach (`approaches`), reasons under "skipped"."""
    from scaleflow.fit.tables import check_table

    check_table(data.table, ("params", "tokens", "loss", "flops"), 1, "the rollout")
    budgets = np.unique(budgets_of(data.table, o.budget_rtol))
    if len(budgets) < 3:
        raise FitError(f"a rollout needs at least 3 budgets, got {len(budgets)}")
    measured = measured_optima(data.table, o.budget_rtol)
    steps = [backtest_step(data, o, k, every_approach, measured) for k in range(2, len(budgets))]
    never = {n for n in approaches if all(n in s["skipped"] for s in steps)}
    if len(never) == len(approaches):
        raise FitError("the rollout predicted nothing: " + "; ".join(f"{n}: {steps[-1]['skipped'][n]}" for n in never))
    skipped = {n: f"at every step; at the last: {steps[-1]['skipped'][n]}" for n in never}
    late = {n: [s["step"] for s in steps if n in s["skipped"]] for n in approaches if n not in never}
    message = "; ".join(f"{n} skipped at step(s) {v} (a FitError: see that step's skipped)" for n, v in late.items() if v)
    res = RolloutResult(tuple(float(c) for c in budgets), tuple(steps), OK, message, LEVEL, summarise(steps))
    return {"rollout": res, "skipped": skipped}
