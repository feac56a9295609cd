"""Downstream accuracy (`scaleflow fit --law downstream`): the two-step prediction of Llama 3.

Step 1: the task loss (nats/token of the correct answer, column `task_loss`) as a function of
N (parameters) and D (tokens) in Chinchilla's form, L_task(N, D) = E + A/N^alpha + B/D^beta,
fitted by approach 3's fitter (`parametric.ParametricFitter`) on the task-loss column.
Step 2: the accuracy (a fraction in [0, 1], column `accuracy`) as a sigmoid of the observed
task loss, acc = lo + (hi - lo) / (1 + exp(k (L - L0))), by bounded least squares (lo, hi in
[0, 1], k >= 0, L0 within the data's task losses widened by their span); `--chance 0.25` fixes
lo at chance.

Intervals (95%) run through both steps: bootstrap replicate i refits both steps on the same
resampled runs (the same seed draws the same counts as approach 3's bootstrap) and predicts
sigmoid_i(L_task_i(N, D)). Predictions: at each `--predict` budget, at the compute-optimal
(N, D) of approach 3 fitted on the main `loss` column (when the table has one; replicate i of
that fit too), and at each `--at N:D` pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np

from scaleflow.errors import FitError
from scaleflow.fit.laws import DOUBTFUL, OK, ChinchillaLaw, Law, jsonable, percentile_interval, resample_weights
from scaleflow.fit.tables import check_table, numeric_column, require_columns
from scaleflow.fit.types import FitData, FitOptions


def _sigmoid(L, lo, hi, k, L0):
    with np.errstate(over="ignore"):
        return lo + (hi - lo) / (1.0 + np.exp(k * (L - L0)))


@dataclass(frozen=True, eq=False, kw_only=True)
class SigmoidLaw(Law):
    """acc = lo + (hi - lo) / (1 + exp(k (L - L0))): accuracy (fraction) against task loss L (nats/token)."""

    PARAMS: ClassVar[tuple[str, ...]] = ("lo", "hi", "k", "L0")
    FUNCS: ClassVar[dict[str, Callable[..., Any]]] = {"predict": _sigmoid}
    lo: float
    hi: float
    k: float
    L0: float
    chance: float | None = None  # lo fixed here when given
    rmse: float = np.nan
    n_points: int = 0

    def predict(self, L: Any) -> np.ndarray:
        return self.evaluate("predict", L)

    def _extra(self) -> dict[str, Any]:
        return {"chance": self.chance, "rmse": self.rmse, "n_points": self.n_points}


def fit_sigmoid(L: np.ndarray, acc: np.ndarray, chance: float | None, w: np.ndarray | None = None,
                starts: list[np.ndarray] | None = None) -> np.ndarray:
    """[lo, hi, k, L0] minimising the (weighted) squared error, from the best of `starts`
    (default: a small grid over k and L0)."""
    from scipy.optimize import least_squares

    span = max(float(np.ptp(L)), 1e-6)
    lower = [0.0, 0.0, 0.0, L.min() - span]
    upper = [1.0, 1.0, 1e3 / span, L.max() + span]
    sw = np.ones_like(L) if w is None else np.sqrt(w)
    free = slice(1, 4) if chance is not None else slice(0, 4)

    def full(p):
        return np.concatenate([[chance], p]) if chance is not None else p

    def resid(p):
        return sw * (_sigmoid(L, *full(p)) - acc)

    if starts is None:
        lo0 = chance if chance is not None else float(acc.min())
        starts = [np.array([lo0, float(acc.max()), c / span, L0]) for c in (2.0, 6.0, 15.0)
                  for L0 in np.quantile(L, [0.25, 0.5, 0.75])]
    best = None
    for s in starts:
        x0 = np.clip(np.asarray(s, float), lower, upper)[free]
        r = least_squares(resid, x0, bounds=(np.array(lower)[free], np.array(upper)[free]), method="trf")
        if best is None or r.cost < best.cost:
            best = r
    return full(best.x)


def _reps(law: Law, func: str, *x: np.ndarray) -> np.ndarray:
    """law.FUNCS[func] at replicate i's parameters and x[.][i] (x of shape (R,) or scalars)."""
    cols = {p: law.samples[:, i] for i, p in enumerate(law.PARAMS)}
    with np.errstate(all="ignore"):
        return np.asarray(law.FUNCS[func](*x, **cols, **law.constants()), float)


@dataclass(frozen=True, eq=False)
class DownstreamResult:
    """Step 1's task-loss law, step 2's sigmoid, the points and the predictions."""

    task_loss: ChinchillaLaw
    sigmoid: SigmoidLaw
    points: dict[str, np.ndarray]  # params, tokens, task_loss, accuracy of the runs
    predictions: tuple[dict[str, Any], ...]
    status: str = OK
    message: str = ""

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        return jsonable({"task_loss_law": self.task_loss.to_dict(include_samples),
                         "sigmoid": self.sigmoid.to_dict(include_samples), "points": self.points,
                         "predictions": list(self.predictions), "status": self.status, "message": self.message,
                         "method": "step 1: L_task(N, D) = E + A/N^alpha + B/D^beta (approach 3's fitter); step 2: "
                                   "acc = lo + (hi - lo) / (1 + exp(k (L_task - L0))); 95% bootstrap intervals "
                                   "through both steps"})


def _predict(task: ChinchillaLaw, sig: SigmoidLaw, N, D, point: dict[str, Any], how: str) -> dict[str, Any]:
    """Task loss and accuracy at point's (params, tokens), with 95% intervals over the replicates:
    replicate i evaluates both steps' replicate i at (N[i], D[i]) (N, D: replicates of approach 3
    on the main loss, or the given scalars)."""
    L = float(task.predict(point["params"], point["tokens"]))
    row = {**point, "how": how, "task_loss": L, "accuracy": float(sig.predict(L)),
           "task_loss_ci": [np.nan, np.nan], "accuracy_ci": [np.nan, np.nan]}
    R = len(task.samples)
    if R and len(sig.samples) == R:
        Lr = _reps(task, "predict", np.broadcast_to(N, (R,)), np.broadcast_to(D, (R,)))
        row.update(task_loss_ci=percentile_interval(Lr).tolist(),
                   accuracy_ci=percentile_interval(_reps(sig, "predict", Lr)).tolist())
    return row


def downstream(data: FitData, o: FitOptions) -> dict[str, Any]:
    """The `downstream` law: {"downstream": DownstreamResult}."""
    import pandas as pd

    from scaleflow.fit.parametric import ParametricFitter

    t = data.table
    require_columns(t, ("params", "tokens", "task_loss", "accuracy"), "the downstream law")
    check_table(t, ("params", "tokens", "task_loss"), 6, "the downstream law's task-loss fit (5 parameters)")
    acc = numeric_column(t, "accuracy")
    if not np.all(np.isfinite(acc) & (acc >= 0) & (acc <= 1)):
        raise FitError("column 'accuracy' must hold fractions in [0, 1] (divide percentages by 100)")
    chance = o.chance
    if chance is not None and not 0.0 <= chance < 1.0:
        raise FitError(f"--chance must be in [0, 1); got {chance}")
    k = data.flops["flops_per_param_token"]
    fitter = ParametricFitter(huber_delta=o.huber_delta, n_bootstrap=o.n_bootstrap, seed=o.seed,
                              flops_per_param_token=k)
    task = fitter.fit(pd.DataFrame({"params": t["params"], "tokens": t["tokens"], "loss": t["task_loss"]}))
    L = numeric_column(t, "task_loss")
    theta = fit_sigmoid(L, acc, chance)
    rmse = float(np.sqrt(np.mean((_sigmoid(L, *theta) - acc) ** 2)))
    # the same seed draws the same counts as approach 3's bootstrap: replicate i resamples the same runs
    weights = resample_weights(np.random.default_rng(o.seed), len(L), o.n_bootstrap)
    samples = np.array([fit_sigmoid(L, acc, chance, w, [theta]) for w in weights]).reshape(-1, 4)
    problems = []
    if theta[2] * np.ptp(L) < 1.0:
        problems.append("the accuracy hardly changes over the task losses sampled: the sigmoid is not pinned")
    if chance is None and theta[0] > acc.min() - 0.02 and theta[0] < 0.02:
        problems.append("lo is at 0: give --chance for a multiple-choice task")
    sig = SigmoidLaw(lo=theta[0], hi=theta[1], k=theta[2], L0=theta[3], chance=chance, rmse=rmse, n_points=len(L),
                     samples=samples, status=DOUBTFUL if problems else OK, message="; ".join(problems))
    preds, notes = [], []
    if o.predict:
        if "loss" in t.columns:
            main = ParametricFitter(huber_delta=o.huber_delta, n_bootstrap=o.n_bootstrap, seed=o.seed,
                                    flops_per_param_token=k).fit(t[["params", "tokens", "loss"]])
            for C in o.predict:
                N = _reps(main, "n_opt", C) if main.samples.size else main.n_opt(C)
                D = _reps(main, "d_opt", C) if main.samples.size else main.d_opt(C)
                point = {"flops": C, "params": float(main.n_opt(C)), "tokens": float(main.d_opt(C))}
                preds.append(_predict(task, sig, N, D, point, "compute-optimal (N, D) of approach 3 on `loss`"))
        else:
            notes.append("--predict needs a `loss` column (approach 3 on it gives the compute-optimal N, D); "
                         "give --at N:D pairs instead")
    for n, d in o.at:
        preds.append(_predict(task, sig, n, d, {"flops": k * n * d, "params": n, "tokens": d}, "given (N, D)"))
    worst = DOUBTFUL if DOUBTFUL in (task.status, sig.status) else OK
    message = "; ".join(m for m in (f"task loss: {task.message}" if task.message else "",
                                    f"sigmoid: {sig.message}" if sig.message else "", *notes) if m)
    points = {c: numeric_column(t, c) for c in ("params", "tokens", "task_loss", "accuracy")}
    return {"downstream": DownstreamResult(task, sig, points, tuple(jsonable(p) for p in preds), worst, message)}
