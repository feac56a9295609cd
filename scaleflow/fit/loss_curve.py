"""`--law loss-curve`: whole loss curves under any LR schedule (Tissue et al. 2024, "Scaling
law with learning rate annealing").

    L(s) = L0 + A * S1(s)^(-alpha) - C * S2(s)

eta_i is the LR of optimizer step i (0-based): the run's peak LR times scaleflow's own
`schedules.lr_factor`, recomputed from the run's config.yaml. After s updates:
  S1(s) = sum_{i<s} eta_i                          (forward area, warmup included)
  S2(s) = sum_{i<s} m_i,  m_i = lam m_(i-1) + (eta_(i-1) - eta_i)   (annealing area)
with the LR changes of the warmup steps left out of m (a warmup is not an anneal), lam the
momentum decay (0.999). A metrics line at step s holds the validation loss after s updates, or
the training loss of update s (measured after s - 1 updates).

Fit: points after the warmup of a few runs of ONE model size, Huber loss (delta: --huber-delta)
of log L_pred - log L_obs, summed; seeded by a grid over alpha with (L0, A, C) by least squares,
then L-BFGS-B on all four. The law then predicts the curve of another schedule
(`parse_schedule`) or of held-out runs.

Intervals: a block bootstrap. A curve's points are not independent (a run's noise drifts
along it), so each run's points are cut into BLOCKS blocks of consecutive steps and whole
blocks are resampled (as critical-batch does); each replicate is refitted from the fit's
parameters. 95% percentile intervals for the parameters and every predicted final loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scaleflow.errors import FitError
from scaleflow.fit.laws import OK, jsonable, percentile_interval, resample_weights

LAMBDA = 0.999
BLOCKS = 5  # blocks of consecutive points per run, the bootstrap's unit (a WSD decay: about one)
PARAMS = ("L0", "A", "alpha", "C")
LOSS_KEYS = ("train_loss", "val_loss")
SCHEDULE_KEYS = {"warmup_steps": int, "decay_fraction": float, "decay_shape": str, "final_lr_fraction": float,
                 "lr": float, "steps": int}
SCHEDULE_SYNTAX = "NAME:steps=S[:warmup_steps=W][:decay_fraction=F][:decay_shape=SHAPE][:final_lr_fraction=R][:lr=LR]"


def lr_sequence(cfg) -> tuple[np.ndarray, int]:
    """(LR of each optimizer step, warmup steps) of a run config, as its trainer computes them."""
    from scaleflow.errors import ConfigError
    from scaleflow.plan import plan_run
    from scaleflow.schedules import lr_factor

    try:
        plan = plan_run(cfg)
        lrs = [cfg.optim.lr * lr_factor(i, plan.schedule, cfg.schedule) for i in range(plan.steps)]
    except (ConfigError, ValueError) as exc:
        raise FitError(f"loss-curve: {exc}") from None
    return np.asarray(lrs, dtype=float), plan.warmup


def areas(lrs: np.ndarray, warmup: int, lam: float = LAMBDA) -> tuple[np.ndarray, np.ndarray]:
    """(S1, S2), each of length steps + 1: their values after 0, 1, ..., steps updates."""
    from scipy.signal import lfilter

    delta = np.zeros_like(lrs)
    delta[1:] = lrs[:-1] - lrs[1:]
    delta[:max(1, warmup)] = 0.0
    m = lfilter([1.0], [1.0, -lam], delta)
    zero = np.zeros(1)
    return np.concatenate([zero, np.cumsum(lrs)]), np.concatenate([zero, np.cumsum(m)])


def law(theta, S1, S2) -> np.ndarray:
    L0, A, alpha, C = theta
    with np.errstate(divide="ignore"):
        return L0 + A * S1 ** (-alpha) - C * S2


@dataclass
class Curve:
    """One run's schedule and (for a run) its measured curve; `updates`: updates behind each point."""

    run_id: str
    label: str
    steps: int
    S1: np.ndarray
    S2: np.ndarray
    warmup: int
    step: np.ndarray = field(default_factory=lambda: np.zeros(0))
    loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    updates: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))

    def predict(self, theta, updates=None) -> np.ndarray:
        u = np.arange(self.steps + 1) if updates is None else updates
        return law(theta, self.S1[u], self.S2[u])

    def final(self, theta, loss_key: str) -> tuple[float, float]:
        """(predicted, measured) final loss: the last point (val_loss) or the mean of the last
        three logged points (train_loss, whose single-batch values are noisy)."""
        k = 1 if loss_key == "val_loss" else 3
        return float(self.predict(theta, self.updates[-k:]).mean()), float(self.loss[-k:].mean())


def label_of(cfg) -> str:
    s = cfg.schedule
    name = f"{s.name} {s.decay_shape} f={s.decay_fraction:g}" if s.name == "wsd" else s.name
    return f"{name}, {cfg.trainer.steps or '?'} steps"


@dataclass(frozen=True, eq=False)
class LossCurveResult:
    theta: tuple[float, float, float, float]
    lam: float
    loss_key: str
    params: float
    huber_loss: float
    n_points: int
    fitted: list[Curve]
    held_out: list[Curve]
    predicted: list[tuple[str, Curve]]
    samples: np.ndarray = field(default_factory=lambda: np.empty((0, 4)))  # bootstrap (L0, A, alpha, C) rows
    status: str = OK
    message: str = ""

    def _interval(self, value) -> list[float] | None:
        """95% interval of value(theta) over the bootstrap replicates; None without them."""
        if not len(self.samples):
            return None
        return percentile_interval(np.array([value(tuple(t)) for t in self.samples])).tolist()

    def rows(self, curves: list[Curve]) -> list[dict[str, Any]]:
        out = []
        for c in curves:
            pred, meas = c.final(self.theta, self.loss_key)
            fit = c.predict(self.theta, c.updates)
            out.append({"run_id": c.run_id, "schedule": c.label, "steps": c.steps, "predicted_final": pred,
                        "predicted_final_ci": self._interval(lambda t, c=c: c.final(t, self.loss_key)[0]),
                        "measured_final": meas, "rel_error": pred / meas - 1,
                        "curve_rel_rmse": float(np.sqrt(np.mean((fit / c.loss - 1) ** 2)))})
        return out

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        L0, A, alpha, C = self.theta
        d = {"L0": L0, "A": A, "alpha": alpha, "C": C, "lam": self.lam, "loss_key": self.loss_key,
             "params": self.params, "huber_loss": self.huber_loss, "n_points": self.n_points,
             "n_bootstrap": len(self.samples), "resampled": f"{BLOCKS} blocks of consecutive steps per run",
             "ci": {name: self._interval(lambda t, i=i: t[i]) for i, name in enumerate(PARAMS)},
             "fit_runs": self.rows(self.fitted), "holdout_runs": self.rows(self.held_out),
             "predictions": [{"schedule": spec, "steps": c.steps, "predicted_final": float(c.predict(self.theta)[-1]),
                              "predicted_final_ci": self._interval(lambda t, c=c: float(c.predict(t)[-1]))}
                             for spec, c in self.predicted], "status": self.status, "message": self.message}
        if include_samples:
            for c, row in zip(self.predicted, d["predictions"]):
                u = np.unique(np.linspace(1, c[1].steps, min(200, c[1].steps)).astype(int))
                row.update(curve_steps=u.tolist(), curve_loss=c[1].predict(self.theta, u).tolist())
        return jsonable(d)


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


BOUNDS = [(None, None), (-50, 50), (1e-3, 5.0), (None, None)]  # L0, ln A, alpha, C
TIGHT = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000}  # L-BFGS-B's options, fit and bootstrap alike


def _objective(S1, S2, y, delta: float, w=None):
    """The summed Huber loss of log L_pred - log y at p = (L0, ln A, alpha, C), each point's
    weighted by `w` (bootstrap counts) if given."""
    logy = np.log(y)

    def objective(p):
        pred = law((p[0], math.exp(p[1]), p[2], p[3]), S1, S2)
        if not np.all(pred > 0):
            return 1e6
        h = _huber(np.log(pred) - logy, delta)
        return float(h.sum() if w is None else h @ w)
    return objective


def fit_points(S1, S2, y, delta: float) -> tuple[tuple[float, ...], float]:
    """(L0, A, alpha, C) minimising the summed Huber loss of log L_pred - log y."""
    from scipy.optimize import minimize

    objective = _objective(S1, S2, y, delta)
    starts = []
    for alpha in np.linspace(0.02, 2.0, 60):
        X = np.column_stack([np.ones_like(S1), S1 ** -alpha, -S2])
        coef = np.linalg.lstsq(X, y, rcond=None)[0]
        if coef[1] > 0:
            p = np.array([coef[0], math.log(coef[1]), alpha, coef[2]])
            starts.append((objective(p), p))
    if not starts:
        raise FitError("loss-curve: the loss does not fall with the LR area (no start with A > 0)")
    starts.sort(key=lambda t: t[0])
    best = None
    for _, p0 in starts[:4]:
        r = minimize(objective, p0, method="L-BFGS-B", bounds=BOUNDS, options=TIGHT)
        if best is None or r.fun < best.fun:
            best = r
    p = best.x
    return (float(p[0]), math.exp(p[1]), float(p[2]), float(p[3])), float(best.fun)


def bootstrap_points(S1, S2, y, delta: float, theta, blocks, n_bootstrap: int, seed: int) -> np.ndarray:
    """(n_bootstrap, 4) refits of (L0, A, alpha, C), whole `blocks` (a label per point)
    resampled, each started at the fit's `theta`."""
    from scipy.optimize import minimize

    weights = resample_weights(np.random.default_rng(seed), len(y), n_bootstrap, blocks)
    start = np.array([theta[0], math.log(theta[1]), theta[2], theta[3]])
    out = np.empty((n_bootstrap, 4))
    for i, w in enumerate(weights):
        p = minimize(_objective(S1, S2, y, delta, w), start, method="L-BFGS-B", bounds=BOUNDS, options=TIGHT).x
        out[i] = p[0], math.exp(p[1]), p[2], p[3]
    return out


def parse_schedule(spec: str, base) -> tuple[str, Any]:
    """'wsd:steps=800:decay_fraction=0.2' -> (spec, run config): `base` (a fitted run's config)
    with that schedule and length; unset keys keep the base run's values."""
    import copy

    from scaleflow.schedules import SHAPES

    name, *pairs = spec.strip().split(":")
    if name not in ("constant", "cosine", "wsd", "multistep"):
        raise FitError(f"--predict-schedule {spec!r}: the schedule is constant, cosine, wsd or multistep; "
                       f"syntax {SCHEDULE_SYNTAX}")
    cfg = copy.deepcopy(base)
    cfg.schedule.name = name
    cfg.trainer.tokens, cfg.trainer.flops = 0.0, 0.0
    seen = set()
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in SCHEDULE_KEYS:
            raise FitError(f"--predict-schedule {spec!r}: {pair!r} is not one of {', '.join(SCHEDULE_KEYS)}=VALUE; "
                           f"syntax {SCHEDULE_SYNTAX}")
        try:
            v = SCHEDULE_KEYS[key](value)
        except ValueError:
            raise FitError(f"--predict-schedule {spec!r}: bad value for {key}: {value!r}") from None
        if key == "decay_shape" and v not in SHAPES:
            raise FitError(f"--predict-schedule {spec!r}: decay_shape is one of {', '.join(SHAPES)}")
        seen.add(key)
        if key == "steps":
            cfg.trainer.steps = v
        elif key == "lr":
            cfg.optim.lr = v
        else:
            if key == "warmup_steps":
                cfg.schedule.warmup_tokens = 0.0
            cfg.schedule[key] = v
    if "steps" not in seen:
        raise FitError(f"--predict-schedule {spec!r} needs steps=S; syntax {SCHEDULE_SYNTAX}")
    return spec, cfg


def _runs(study_dir: Path, where: str | None):
    """(table of the finished runs: run_id, kind, params, schedule, steps, lr; {run_id: config})."""
    import pandas as pd

    from scaleflow.config.compose import load_run_config
    from scaleflow.errors import ConfigError
    from scaleflow.files import read_json
    from scaleflow.store import run_dirs

    rows, configs = [], {}
    for d in run_dirs(study_dir):
        summary = read_json(d / "summary.json")
        if summary is None or summary.get("status") != "done" or not (d / "config.yaml").exists():
            continue
        try:
            cfg = load_run_config(d / "config.yaml")
        except ConfigError as exc:
            raise FitError(f"loss-curve: run {d.name}: {exc}") from None
        configs[d.name] = cfg
        rows.append({"run_id": d.name, "kind": (read_json(d / "run.json") or {}).get("kind", "run"),
                     "params": summary.get("params"), "schedule": cfg.schedule.name, "steps": summary.get("steps"),
                     "lr": cfg.optim.lr, "decay_fraction": cfg.schedule.decay_fraction,
                     "decay_shape": cfg.schedule.decay_shape})
    df = pd.DataFrame(rows, columns=["run_id", "kind", "params", "schedule", "steps", "lr", "decay_fraction",
                                     "decay_shape"])
    if where:
        try:
            df = df.query(where)
        except Exception as exc:
            raise FitError(f"--where {where!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return df, configs


def fit_loss_curve(study_dir, history, *, holdout=(), schedules=(), loss_key: str = "train_loss",
                   where: str | None = None, huber_delta: float = 1e-3, lam: float = LAMBDA,
                   n_bootstrap: int = 0, seed: int = 0) -> LossCurveResult:
    """Fit the law on the finished runs of `study_dir` (one model size; `where`: a pandas query on
    run_id, kind, params, schedule, steps, lr, decay_fraction, decay_shape) less `holdout`;
    predict the held-out runs and each schedule spec of `schedules`; `n_bootstrap` block
    bootstrap replicates give the intervals."""
    if loss_key not in LOSS_KEYS:
        raise FitError(f"--curve-loss is train_loss or val_loss; got {loss_key!r}")
    if history is None or not len(history):
        raise FitError("loss-curve needs the runs' training histories (metrics.jsonl): none found")
    table, configs = _runs(Path(study_dir), where)
    sizes = sorted({float(p) for p in table["params"].dropna()})
    if len(sizes) > 1:
        raise FitError(f"loss-curve fits runs of ONE model size; this selection has {len(sizes)} "
                       f"({', '.join(f'{s:.6g}' for s in sizes)}): pick one with --where 'params == {sizes[0]:.6g}'")
    unknown = [h for h in holdout if h not in set(table["run_id"])]
    if unknown:
        raise FitError(f"--holdout: no finished run {', '.join(unknown)} in the selection")
    if loss_key not in history.columns or history[loss_key].isna().all():
        raise FitError(f"loss-curve: the histories have no {loss_key} values (try --curve-loss "
                       f"{'val_loss' if loss_key == 'train_loss' else 'train_loss'})")
    curves = {}
    for run_id in table["run_id"]:
        cfg = configs[run_id]
        lrs, warmup = lr_sequence(cfg)
        S1, S2 = areas(lrs, warmup, lam)
        h = history[(history["run_id"] == run_id) & history[loss_key].notna()].sort_values("step")
        updates = h["step"].to_numpy(dtype=int) - (1 if loss_key == "train_loss" else 0)
        keep = (updates > warmup) & (updates <= len(lrs))
        if not keep.any():
            continue
        curves[run_id] = Curve(run_id, label_of(cfg), len(lrs), S1, S2, warmup, h["step"].to_numpy()[keep],
                               h[loss_key].to_numpy(dtype=float)[keep], updates[keep])
    fitted = [c for r, c in curves.items() if r not in holdout]
    if len(fitted) < 2 or not any(c.S2[c.updates].max() > 0 for c in fitted):
        raise FitError(f"loss-curve needs at least 2 runs with a {loss_key} history after the warmup, one of them "
                       f"with an LR decay (to fit the annealing term); got {len(fitted)} to fit")
    S1 = np.concatenate([c.S1[c.updates] for c in fitted])
    S2 = np.concatenate([c.S2[c.updates] for c in fitted])
    y = np.concatenate([c.loss for c in fitted])
    if not np.all(np.isfinite(y) & (y > 0)):
        raise FitError(f"loss-curve: the {loss_key} history holds non-finite or non-positive losses")
    theta, objective = fit_points(S1, S2, y, huber_delta)
    blocks = np.concatenate([[f"{c.run_id}/{b}" for b in np.arange(len(c.loss)) * BLOCKS // len(c.loss)]
                             for c in fitted])
    samples = bootstrap_points(S1, S2, y, huber_delta, theta, blocks, n_bootstrap, seed)
    base = configs[fitted[0].run_id]
    predicted = []
    for spec in schedules:
        spec, cfg = parse_schedule(spec, base)
        lrs, warmup = lr_sequence(cfg)
        s1, s2 = areas(lrs, warmup, lam)
        predicted.append((spec, Curve("-", label_of(cfg), len(lrs), s1, s2, warmup)))
    return LossCurveResult(theta, lam, loss_key, sizes[0] if sizes else math.nan, objective, len(y), fitted,
                           [curves[h] for h in holdout if h in curves], predicted, samples)
