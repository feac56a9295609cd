"""The critical batch size against loss (`scaleflow fit --law critical-batch`).

docs/science.md section 6 (McCandlish et al. 2018; Kaplan et al. 2020). Two measurements, shown
side by side; batch sizes in tokens throughout.

(a) Noise scale. From the training history (metrics lines with `grad_noise_scale`, in tokens,
logged with trainer.noise_scale=true and trainer.grad_accum >= 2): B_simple against the
train loss (per run smoothed by a centred running median over `smooth` log lines; each
run's first `skip_fraction` of steps is left out, while the bias-corrected EMA of the
estimator is still dominated by few steps), fitted by log-log least squares as
B_crit(L) = B* / L^(1/alpha_B) (Kaplan: B* ~ 2e8 tokens, alpha_B ~ 0.21). Intervals resample
blocks of `block_steps` consecutive steps of one run (the trainer's EMA, beta 0.99, keeps
about 100 steps of memory, so neighbouring log lines are not independent).

(b) Steps-tokens trade-off. From a batch-size sweep (runs of one model at 2 or more batch
sizes): for target losses spread over the range every batch size reaches, S = the first
step at which the loss curve reaches the target (the `val_loss` curve when every run logged
at least 4 evaluations, else the smoothed train loss; linear interpolation between log
lines; with several runs at one batch size, e.g. an LR grid, the fastest), E = S B tokens.
S = S_min (1 + B_crit / B), equivalently (S/S_min - 1)(E/E_min - 1) = 1, is linear in 1/B:
S = S_min + E_min / B, fitted by least squares on relative residuals; B_crit = E_min / S_min.
Intervals resample the relative residuals (with 2 batch sizes the fit is exact: no interval).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from scaleflow.errors import FitError
from scaleflow.fit.defaults import N_BOOTSTRAP
from scaleflow.fit.laws import DOUBTFUL, OK, Law, jsonable, loglinear, percentile_interval, resample_weights
from scaleflow.fit.tables import numeric_column
from scaleflow.fit.tradeoff import first_reach, fit_tradeoff, running_median

NO_NOISE_SCALE = ("no grad_noise_scale in the training history: train with trainer.noise_scale=true "
                  "trainer.grad_accum>=2 (a micro-batch is the small batch of the estimator)")
MODEL_COLUMNS = ("params", "n_layer", "d_model", "n_head", "seq_len", "parametrization")
# Target losses of (b), as fractions of the loss range every batch size reaches, from its low end: weighted to
# late training, where B_crit matters and the LR warmup no longer sets the pace.
TARGET_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.35)


def _bcrit(L, B_star, alpha_B):
    with np.errstate(all="ignore"):
        return B_star / L ** (1.0 / alpha_B)


@dataclass(frozen=True, eq=False, kw_only=True)
class NoiseScaleLaw(Law):
    """B_crit(L) = B_star / L^(1/alpha_B): the gradient noise scale (tokens) against loss (nats/token)."""

    PARAMS: ClassVar[tuple[str, ...]] = ("B_star", "alpha_B")
    FUNCS: ClassVar[dict] = {"predict": _bcrit}
    B_star: float
    alpha_B: float
    n_points: int = 0
    n_runs: int = 0
    loss_range: tuple[float, float] = (math.nan, math.nan)
    rms_log_residual: float = math.nan
    resampled: str = ""

    def __call__(self, loss: Any) -> np.ndarray:
        return self.evaluate("predict", loss)

    def _extra(self) -> dict[str, Any]:
        return {"unit": "tokens", "n_points": self.n_points, "n_runs": self.n_runs, "loss_range": list(self.loss_range),
                "rms_log_residual": self.rms_log_residual, "resampled": self.resampled}


@dataclass(frozen=True, eq=False)
class TargetFit:
    """S = S_min + E_min / B at one target loss: the batch-size sweep's steps and tokens to reach it."""

    loss: float
    batch: np.ndarray  # tokens per step, one per batch size that reached the target
    steps: np.ndarray
    S_min: float
    E_min: float
    samples: np.ndarray  # (R, 2) replicates of (S_min, E_min)
    status: str = OK
    message: str = ""
    b_simple: float = math.nan  # the noise-scale law at this loss (tokens)
    b_simple_ci: tuple[float, float] = (math.nan, math.nan)

    @property
    def B_crit(self) -> float:
        return self.E_min / self.S_min if self.S_min > 0 and self.E_min > 0 else math.nan

    @property
    def tokens(self) -> np.ndarray:
        return self.steps * self.batch

    @property
    def ci(self) -> dict[str, list[float]]:
        s = self.samples if len(self.samples) else np.empty((0, 2))
        with np.errstate(all="ignore"):
            bc = np.where((s[:, 0] > 0) & (s[:, 1] > 0), s[:, 1] / s[:, 0], np.nan)
        lo, hi = percentile_interval(np.column_stack([s, bc]))
        return {k: [float(lo[i]), float(hi[i])] for i, k in enumerate(("S_min", "E_min", "B_crit"))}

    @property
    def ratio(self) -> float:
        """B_crit / B_simple (nan without a positive B_simple)."""
        return self.B_crit / self.b_simple if self.b_simple > 0 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return jsonable({
            "loss": self.loss, "S_min": self.S_min, "E_min": self.E_min, "B_crit": self.B_crit, "ci": self.ci,
            "B_simple": self.b_simple, "B_simple_ci": list(self.b_simple_ci), "ratio": self.ratio,
            "batch_tokens": self.batch, "steps": self.steps, "tokens": self.tokens,
            "status": self.status, "message": self.message,
        })


@dataclass(frozen=True, eq=False)
class Tradeoff:
    """One model's batch-size sweep: its batch sizes and the fit at each target loss."""

    model: str
    batch: np.ndarray  # tokens per step, distinct
    loss_column: str  # val_loss or train_loss
    targets: tuple[TargetFit, ...]

    def to_dict(self) -> dict[str, Any]:
        return jsonable({"model": self.model, "batch_tokens": self.batch, "loss_column": self.loss_column,
                         "targets": [t.to_dict() for t in self.targets]})


@dataclass(frozen=True, eq=False)
class CriticalBatchResult:
    """(a) the noise-scale law (or None) and (b) the trade-off fits (possibly empty)."""

    noise: NoiseScaleLaw | None
    tradeoffs: tuple[Tradeoff, ...]
    points: tuple[np.ndarray, np.ndarray]  # (loss, noise scale) of (a), for the plot
    status: str = OK
    message: str = ""

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        rows = [{"model": t.model, "loss": f.loss, "B_crit": f.B_crit, "B_crit_ci": f.ci["B_crit"],
                 "B_simple": f.b_simple, "B_simple_ci": list(f.b_simple_ci),
                 "ratio": f.ratio, "S_min": f.S_min, "E_min": f.E_min,
                 "n_batch_sizes": len(f.batch), "status": f.status}
                for t in self.tradeoffs for f in t.targets]
        return jsonable({
            "unit": "tokens", "noise_scale": self.noise.to_dict(include_samples) if self.noise else None,
            "tradeoff": [t.to_dict() for t in self.tradeoffs], "table": rows,
            "status": self.status, "message": self.message,
        })


# ----------------------------------------------------------------------------- helpers

def _runs_of(history, table):
    """History restricted to the table's runs (when both name them), sorted by run and step."""
    h = history
    if "run_id" in h.columns and "run_id" in table.columns:
        h = h[h["run_id"].isin(set(table["run_id"]))]
        if not len(h):
            raise FitError("the history's run ids match none of the runs in the table (after dropping diverged "
                           "runs and applying --where)")
    elif "run_id" not in h.columns:
        h = h.assign(run_id="all")
    return h.sort_values(["run_id", "step"]) if "step" in h.columns else h


def _col(df, name: str) -> np.ndarray:
    return numeric_column(df, name, "history column")


# ----------------------------------------------------------------------------- fitter

@dataclass(frozen=True, kw_only=True)
class CriticalBatchFitter:
    """`CriticalBatchFitter(n_bootstrap=200).fit(table, history)` -> (CriticalBatchResult, skipped)."""

    n_bootstrap: int = N_BOOTSTRAP
    seed: int = 0
    smooth: int = 5  # log lines in the running median of the train loss
    skip_fraction: float = 0.1  # of each run's steps left out of (a)
    block_steps: int = 100  # bootstrap block of (a): consecutive steps of one run
    targets: tuple[float, ...] | None = None  # target losses of (b); default: TARGET_FRACTIONS of the range
    min_val_points: int = 4

    def fit(self, table, history) -> tuple[CriticalBatchResult, dict[str, str]]:
        if history is None or not len(history):
            raise FitError("the critical-batch analysis needs the training history (metrics lines): give a study "
                           "directory, or a table with --history FILE (columns run_id, step, train_loss, "
                           "grad_noise_scale)")
        if "step" not in history.columns:
            raise FitError("the training history needs a 'step' column")
        h = _runs_of(history, table)
        skipped: dict[str, str] = {}
        noise = points = None
        try:
            noise, points = self.fit_noise(h)
        except FitError as exc:
            skipped["noise_scale"] = str(exc)
        tradeoffs: list[Tradeoff] = []
        try:
            tradeoffs = self.fit_tradeoffs(table, h, noise)
        except FitError as exc:
            skipped["tradeoff"] = str(exc)
        if noise is None and not tradeoffs:
            raise FitError(f"{skipped['noise_scale']}; steps-tokens trade-off: {skipped['tradeoff']}")
        problems = ([f"noise scale: {noise.message}"] if noise is not None and noise.status != OK else [])
        problems += [f"{t.model + ', ' if len(tradeoffs) > 1 else ''}loss {f.loss:.4g}: {f.message}"
                     for t in tradeoffs for f in t.targets if f.status != OK]
        status = DOUBTFUL if problems else OK
        pts = points if points is not None else (np.empty(0), np.empty(0))
        return CriticalBatchResult(noise, tuple(tradeoffs), pts, status, "; ".join(problems)), skipped

    # (a) -------------------------------------------------------------------
    def fit_noise(self, h) -> tuple[NoiseScaleLaw, tuple[np.ndarray, np.ndarray]]:
        if "grad_noise_scale" not in h.columns:
            raise FitError(NO_NOISE_SCALE)
        if "train_loss" not in h.columns:
            raise FitError("the training history has no train_loss column to set the noise scale against")
        run, block, L, Bn = [], [], [], []
        for rid, g in h.groupby("run_id", sort=True):
            steps, loss, ns = _col(g, "step"), _col(g, "train_loss"), _col(g, "grad_noise_scale")
            ok = np.isfinite(loss) & (loss > 0)
            steps, loss, ns = steps[ok], running_median(loss[ok], self.smooth), ns[ok]
            keep = np.isfinite(ns) & (ns > 0) & (steps >= self.skip_fraction * (steps.max() if len(steps) else 0))
            run += [rid] * int(keep.sum())
            block += [f"{rid}/{int(v // max(1, self.block_steps))}" for v in steps[keep]]
            L.append(loss[keep])
            Bn.append(ns[keep])
        L, Bn = (np.concatenate(v) if v else np.empty(0) for v in (L, Bn))
        if not len(L):
            raise FitError(NO_NOISE_SCALE)
        if len(L) < 3:
            raise FitError(f"the noise-scale law needs at least 3 logged noise scales; got {len(L)}")
        if np.log(L.max() / L.min()) < 0.01:
            raise FitError(f"the noise-scale law needs a range of losses; all lie within 1% ({L.min():.4g} to "
                           f"{L.max():.4g})")
        k, e = loglinear(L, Bn)
        runs = np.unique(run)
        resampled = f"{len(set(block))} blocks of {self.block_steps} steps"
        samples = np.empty((0, 2))
        if self.n_bootstrap:
            W = resample_weights(np.random.default_rng(self.seed), len(L), self.n_bootstrap, block)
            kb, eb = loglinear(L, Bn, W)
            with np.errstate(divide="ignore"):
                samples = np.column_stack([kb, -1.0 / eb])
            samples = samples[np.isfinite(samples).all(axis=1)]
        rms = float(np.sqrt(np.mean((np.log(Bn) - np.log(k) - e * np.log(L)) ** 2)))
        status, message = OK, ""
        if not e < 0:
            status, message = DOUBTFUL, (f"the noise scale does not grow as the loss falls (log-log slope {e:+.3g}); "
                                         "alpha_B is not meaningful")
        law = NoiseScaleLaw(B_star=float(k), alpha_B=float(-1.0 / e) if e != 0 else math.nan, samples=samples,
                            status=status, message=message, n_points=len(L), n_runs=len(runs),
                            loss_range=(float(L.min()), float(L.max())), rms_log_residual=rms, resampled=resampled)
        return law, (L, Bn)

    # (b) -------------------------------------------------------------------
    def fit_tradeoffs(self, table, h, noise: NoiseScaleLaw | None) -> list[Tradeoff]:
        if "run_id" not in table.columns or "run_id" not in h.columns:
            raise FitError("needs run ids (column run_id) to join runs with their history")
        bt = self._batch_tokens(table, h)
        t = table.assign(_batch=bt)
        t = t[np.isfinite(bt) & (bt > 0) & t["run_id"].isin(set(h["run_id"]))]
        keys = [c for c in MODEL_COLUMNS if c in t.columns]
        groups = ([(self._label(k if isinstance(k, tuple) else (k,), keys), g)
                   for k, g in t.groupby(keys, sort=True, dropna=False)] if keys else [("model", t)])
        found = {name: g["_batch"].nunique() for name, g in groups}
        usable = [(name, g) for name, g in groups if g["_batch"].nunique() >= 2]
        if not usable:
            most = max(found.values(), default=0)
            raise FitError(f"needs a batch-size sweep (runs of one model at 2 or more batch sizes); the runs with a "
                           f"history have at most {most} batch size(s) per model")
        out, reasons = [], []
        for name, g in usable:
            try:
                out.append(self._tradeoff(name, g, h, noise))
            except FitError as exc:
                reasons.append(f"{name}: {exc}")
        if not out:
            raise FitError("; ".join(reasons))
        return out

    @staticmethod
    def _label(values: tuple, keys: list[str]) -> str:
        return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in zip(keys, values))

    @staticmethod
    def _batch_tokens(table, h) -> np.ndarray:
        """Tokens per step of each run: batch_tokens, else batch_size x seq_len, else the history's tokens / step."""
        n = len(table)
        out = np.full(n, np.nan)
        if "batch_tokens" in table.columns:
            out = np.asarray(pd_numeric(table["batch_tokens"]), float)
        if {"batch_size", "seq_len"} <= set(table.columns):
            alt = np.asarray(pd_numeric(table["batch_size"]), float) * np.asarray(pd_numeric(table["seq_len"]), float)
            out = np.where(np.isfinite(out), out, alt)
        if "tokens" in h.columns and not np.isfinite(out).all():
            with np.errstate(all="ignore"):
                per = (h.assign(_r=_col(h, "tokens") / _col(h, "step")).groupby("run_id")["_r"].median())
            alt = table["run_id"].map(per).to_numpy(float)
            out = np.where(np.isfinite(out), out, alt)
        return out

    def _tradeoff(self, name: str, g, h, noise: NoiseScaleLaw | None) -> Tradeoff:
        hh = h[h["run_id"].isin(set(g["run_id"]))]
        use_val = "val_loss" in hh.columns and all(
            np.isfinite(_col(r, "val_loss")).sum() >= self.min_val_points for _, r in hh.groupby("run_id"))
        column = "val_loss" if use_val else "train_loss"
        if column not in hh.columns:
            raise FitError("the history has neither val_loss nor train_loss")
        curves: dict[float, list[tuple[np.ndarray, np.ndarray]]] = {}
        batch_of = dict(zip(g["run_id"], g["_batch"]))
        for rid, r in hh.groupby("run_id"):
            s, y = _col(r, "step"), _col(r, column)
            ok = np.isfinite(s) & np.isfinite(y) & (s > 0)
            if ok.sum() < 3:
                continue
            y = y[ok] if use_val else running_median(y[ok], self.smooth)
            curves.setdefault(float(batch_of[rid]), []).append((s[ok], y))
        if len(curves) < 2:
            raise FitError(f"fewer than 2 batch sizes have a {column} curve of 3 or more log lines")
        lo = max(min(c[1].min() for c in cs) for cs in curves.values())  # lowest loss every batch size reaches
        hi = min(max(c[1][0] for c in cs) for cs in curves.values())  # below every curve's first line
        targets = self.targets or tuple(lo + f * (hi - lo) for f in TARGET_FRACTIONS)
        if not self.targets and not hi > lo:
            raise FitError(f"the batch sizes' {column} curves share no loss range to compare steps over")
        B = np.array(sorted(curves))
        fits = []
        for i, L in enumerate(targets):
            S = np.array([min((first_reach(s, y, L) for s, y in curves[b]), key=lambda v: (math.isnan(v), v))
                          for b in B])
            ok = np.isfinite(S)
            fits.append(self._target(float(L), B[ok], S[ok], noise, i))
        return Tradeoff(name, B, column, tuple(fits))

    def _target(self, L: float, B: np.ndarray, S: np.ndarray, noise, i: int) -> TargetFit:
        bs = (math.nan, math.nan)
        b_simple = math.nan
        if noise is not None:
            b_simple = float(noise(L))
            bs = tuple(float(v) for v in noise.interval("predict", L))
        if len(B) < 2:
            return TargetFit(L, B, S, math.nan, math.nan, np.empty((0, 2)), DOUBTFUL,
                             "reached at fewer than 2 batch sizes", b_simple, bs)
        s_min, e_min, samples = fit_tradeoff(B, S, self.n_bootstrap, self.seed + i)
        status, message = OK, ""
        if not s_min > 0:
            status, message = DOUBTFUL, (f"steps fall as fast as 1/B up to the largest batch: B_crit lies above "
                                         f"{B.max():.3g} tokens")
        elif not e_min > 0:
            status, message = DOUBTFUL, (f"steps do not fall with the batch size: B_crit lies below "
                                         f"{B.min():.3g} tokens")
        elif not B.min() <= e_min / s_min <= B.max():
            status, message = DOUBTFUL, (f"B_crit = {e_min / s_min:.3g} tokens lies outside the swept batch sizes "
                                         f"({B.min():.3g} to {B.max():.3g}): extrapolated")
        return TargetFit(L, B, S, s_min, e_min, samples, status, message, b_simple, bs)


def pd_numeric(s):
    import pandas as pd

    return pd.to_numeric(s, errors="coerce")
