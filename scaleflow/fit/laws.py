"""Fitted scaling laws: frozen results with predictions and bootstrap intervals.

Units throughout: N = parameters (a count), D = training tokens (a count), C = training
FLOPs, L = loss in nats per token. Every law keeps its bootstrap replicates (`samples`, one
row per replicate, columns in `PARAMS` order), so any prediction has a percentile interval:
`law.interval("n_opt", 1e22)`. A law whose fit is questionable carries `status="doubtful"`
and a one-line `message` saying why; it is still returned, and the CLI shows the warning.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np

OK, DOUBTFUL, REFUSED = "ok", "doubtful", "refused"
LEVEL = 0.95  # two-sided coverage of every reported interval


def percentile_interval(values: Any, level: float = LEVEL) -> np.ndarray:
    """(2, ...) array of the low and high percentiles along axis 0, ignoring NaN replicates."""
    v = np.asarray(values, dtype=float)
    q = 50.0 * (1.0 - level)
    if v.shape[0] == 0:
        return np.full((2,) + v.shape[1:], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, quietly
        return np.nanpercentile(v, [q, 100.0 - q], axis=0)


def resample_weights(rng: np.random.Generator, n: int, n_replicates: int, groups: Any = None) -> np.ndarray:
    """(n_replicates, n) bootstrap counts: how often each of n points is drawn, n draws each.

    With `groups` (n labels), whole groups are drawn, as many draws as there are groups (a
    cluster bootstrap): each point counts as often as its group was drawn. Runs that share
    noise, such as WSD branches of one trunk, are then never treated as independent."""
    if groups is None:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_replicates).astype(float)
    labels, member_of = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    drawn = rng.multinomial(len(labels), np.full(len(labels), 1.0 / len(labels)), size=n_replicates)
    return drawn[:, member_of].astype(float)


def jsonable(x: Any) -> Any:
    """Recursively turn numpy values into Python ones and NaN/inf into None (valid JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    return x


def loglinear(x: Any, y: Any, w: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted least squares of log y = log k + e log x along the last axis; batched.

    x, y, w broadcast together, shape (..., n); w holds point weights (bootstrap counts,
    0 to drop a point, whose y may then be NaN). Returns (k, e) of shape (...); NaN where
    fewer than two distinct x carry weight.
    """
    x, y, w = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float),
                                  np.ones(1) if w is None else np.asarray(w, float))
    with np.errstate(invalid="ignore", divide="ignore"):
        lx = np.where(w > 0, np.log(x), 0.0)
        ly = np.where(w > 0, np.log(y), 0.0)
        sw = w.sum(-1)
        mx, my = (w * lx).sum(-1) / sw, (w * ly).sum(-1) / sw
        dx = lx - mx[..., None]
        sxx = (w * dx**2).sum(-1)
        e = np.where(sxx > 1e-12, (w * dx * (ly - my[..., None])).sum(-1) / sxx, np.nan)
        return np.exp(my - e * mx), e


@dataclass(frozen=True, eq=False, kw_only=True)
class Law:
    """Base of every fitted law: parameters as fields, replicates, status and message."""

    PARAMS: ClassVar[tuple[str, ...]] = ()
    FUNCS: ClassVar[dict[str, Callable[..., Any]]] = {}
    samples: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))
    status: str = OK
    message: str = ""

    @property
    def params(self) -> dict[str, float]:
        return {p: float(getattr(self, p)) for p in self.PARAMS}

    @property
    def ci(self) -> dict[str, list[float]]:
        """95% percentile bootstrap interval of each parameter ([nan, nan] without bootstrap)."""
        s = self.samples if self.samples.size else np.empty((0, len(self.PARAMS)))
        lo, hi = percentile_interval(s)
        return {p: [float(lo[i]), float(hi[i])] for i, p in enumerate(self.PARAMS)}

    def evaluate(self, quantity: str, *x: Any) -> np.ndarray:
        """Value of `quantity` (a key of FUNCS) at the fitted parameters."""
        return self.FUNCS[quantity](*(np.asarray(v, float) for v in x), **self.params, **self.constants())

    def constants(self) -> dict[str, float]:
        """Fixed settings the FUNCS need besides the fitted parameters (none by default)."""
        return {}

    def interval(self, quantity: str, *x: Any, level: float = LEVEL) -> np.ndarray:
        """(2, ...) percentile interval of `quantity` over the bootstrap replicates."""
        args = [np.asarray(v, float)[None, ...] for v in x]
        if not self.samples.size:
            return np.full((2,) + args[0].shape[1:], np.nan)
        cols = {p: self.samples[:, i].reshape((-1,) + (1,) * (args[0].ndim - 1)) for i, p in enumerate(self.PARAMS)}
        with np.errstate(all="ignore"):
            return percentile_interval(self.FUNCS[quantity](*args, **cols, **self.constants()), level)

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.params)
        d.update(self._extra())
        d.update(ci=self.ci, status=self.status, message=self.message, n_bootstrap=len(self.samples))
        if include_samples:
            d["samples"] = self.samples.tolist()
        return jsonable(d)

    def _extra(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Law":
        """Rebuild a law from `to_dict(include_samples=True)` output (e.g. a saved fit.json)."""
        names = {f for f in cls.__dataclass_fields__} - {"samples"}
        kw = {k: (np.nan if d[k] is None else d[k]) if k in cls.PARAMS else d[k] for k in names if k in d}
        samples = np.array(d.get("samples") or np.empty((0, len(cls.PARAMS))), dtype=float)
        return cls(samples=samples, **kw)


def _pow(x, k, exponent):
    return k * x**exponent


@dataclass(frozen=True, eq=False, kw_only=True)
class PowerLaw(Law):
    """y = k x^exponent, fitted in log-log space (e.g. N_opt in parameters against C in FLOPs)."""

    PARAMS: ClassVar[tuple[str, ...]] = ("k", "exponent")
    FUNCS: ClassVar[dict[str, Callable[..., Any]]] = {"predict": _pow}
    k: float
    exponent: float

    def __call__(self, x: Any) -> np.ndarray:
        return self.evaluate("predict", x)

    @classmethod
    def fit(cls, x: Any, y: Any, w: Any = None, boot: tuple | None = None, **kw: Any) -> "PowerLaw":
        """Log-log least squares on the points (x, y, weights w); `boot` = (x, y, w) bootstrap
        replicates, each broadcastable to (R, n) (weight 0 drops a point from a replicate)."""
        k, e = loglinear(x, y, w)
        samples = np.empty((0, 2))
        if boot is not None:
            samples = np.column_stack(loglinear(*boot))
            samples = samples[np.isfinite(samples).all(axis=1)]
        return cls(k=float(k), exponent=float(e), samples=samples, **kw)


def _sat(x, E, A, alpha):
    return E + A * x ** (-alpha)


def _sat_inverse(L, E, A, alpha):
    with np.errstate(all="ignore"):
        return np.where(L > E, (A / (L - E)) ** (1.0 / alpha), np.nan)


@dataclass(frozen=True, eq=False, kw_only=True)
class SaturatingPowerLaw(Law):
    """L = E + A x^-alpha: a power law above an irreducible loss E (x in the units of `x_name`)."""

    PARAMS: ClassVar[tuple[str, ...]] = ("E", "A", "alpha")
    FUNCS: ClassVar[dict[str, Callable[..., Any]]] = {"predict": _sat, "inverse": _sat_inverse}
    E: float
    A: float
    alpha: float
    huber_loss: float = math.nan
    n_points: int = 0
    x_name: str = "x"

    def predict(self, x: Any) -> np.ndarray:
        return self.evaluate("predict", x)

    def inverse(self, loss: Any) -> np.ndarray:
        """x at which the law reaches `loss` (NaN at or below E)."""
        return self.evaluate("inverse", loss)

    def _extra(self) -> dict[str, Any]:
        return {"huber_loss": self.huber_loss, "n_points": self.n_points, "x_name": self.x_name}


# C = k N D (k = 6 for the 6ND count): the compute-optimal frontier under that constraint.
def _chin_loss(N, D, E, A, B, alpha, beta, k=6.0):
    return E + A * N ** (-alpha) + B * D ** (-beta)


def _chin_G(A, B, alpha, beta):
    return (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))


def _chin_n_opt(C, E, A, B, alpha, beta, k=6.0):
    return _chin_G(A, B, alpha, beta) * (C / k) ** (beta / (alpha + beta))


def _chin_d_opt(C, E, A, B, alpha, beta, k=6.0):
    return (C / k) ** (alpha / (alpha + beta)) / _chin_G(A, B, alpha, beta)


def _chin_loss_opt(C, E, A, B, alpha, beta, k=6.0):
    p = dict(E=E, A=A, B=B, alpha=alpha, beta=beta)
    return _chin_loss(_chin_n_opt(C, k=k, **p), _chin_d_opt(C, k=k, **p), **p)


def _chin_compute_for_loss(L, E, A, B, alpha, beta, k=6.0):
    # L_opt(C) = E + K (C/k)^(-alpha beta / (alpha + beta)), K = A G^-alpha + B G^beta
    G = _chin_G(A, B, alpha, beta)
    K = A * G ** (-alpha) + B * G**beta
    with np.errstate(all="ignore"):
        return np.where(L > E, k * ((L - E) / K) ** (-(alpha + beta) / (alpha * beta)), np.nan)


def _chin_smallest_model(L, D, E, A, B, alpha, beta, k=6.0):
    gap = L - E - B * D ** (-beta)
    with np.errstate(all="ignore"):
        return np.where(gap > 0, (A / gap) ** (1.0 / alpha), np.nan)


@dataclass(frozen=True, eq=False, kw_only=True)
class ChinchillaLaw(Law):
    """L(N, D) = E + A / N^alpha + B / D^beta (Chinchilla approach 3), with optima under C = k N D.

    C in FLOPs as the study counted them; k (FLOPs per parameter per token) is 6 for the 6ND
    count, else the study's own ratio (`fit.api.flop_definition`), so every approach predicts
    at the same C. n_opt(C) = G (C/k)^a and d_opt(C) = G^-1 (C/k)^b, with a = beta/(alpha+beta),
    b = alpha/(alpha+beta) and G = (alpha A / (beta B))^(1/(alpha+beta)).
    """

    PARAMS: ClassVar[tuple[str, ...]] = ("E", "A", "B", "alpha", "beta")
    FUNCS: ClassVar[dict[str, Callable[..., Any]]] = {
        "predict": _chin_loss, "n_opt": _chin_n_opt, "d_opt": _chin_d_opt, "loss_opt": _chin_loss_opt,
        "compute_for_loss": _chin_compute_for_loss, "smallest_model": _chin_smallest_model,
    }
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    huber_loss: float = math.nan
    n_points: int = 0
    k: float = 6.0  # FLOPs per parameter per token: C = k N D

    def constants(self) -> dict[str, float]:
        return {"k": self.k}

    @property
    def a(self) -> float:
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def predict(self, N: Any, D: Any) -> np.ndarray:
        """Loss (nats/token) of N parameters trained on D tokens."""
        return self.evaluate("predict", N, D)

    def n_opt(self, C: Any) -> np.ndarray:
        """Compute-optimal parameters for C FLOPs."""
        return self.evaluate("n_opt", C)

    def d_opt(self, C: Any) -> np.ndarray:
        """Compute-optimal training tokens for C FLOPs."""
        return self.evaluate("d_opt", C)

    def loss_opt(self, C: Any) -> np.ndarray:
        """Best reachable loss with C FLOPs."""
        return self.evaluate("loss_opt", C)

    def compute_for_loss(self, loss: Any) -> np.ndarray:
        """FLOPs a compute-optimal model needs to reach `loss` (NaN at or below E)."""
        return self.evaluate("compute_for_loss", loss)

    def smallest_model(self, loss: Any, tokens: Any) -> np.ndarray:
        """Fewest parameters reaching `loss` when trained on `tokens` (NaN if unreachable)."""
        return self.evaluate("smallest_model", loss, tokens)

    @property
    def ci(self) -> dict[str, list[float]]:
        ci = super().ci
        if self.samples.size:
            alpha, beta = self.samples[:, 3], self.samples[:, 4]
            for name, v in (("a", beta / (alpha + beta)), ("b", alpha / (alpha + beta))):
                lo, hi = percentile_interval(v)
                ci[name] = [float(lo), float(hi)]
        else:
            ci.update(a=[math.nan] * 2, b=[math.nan] * 2)
        return ci

    def _extra(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "huber_loss": self.huber_loss, "n_points": self.n_points,
                "k": self.k}


@dataclass(frozen=True, eq=False)
class AllocationLaw:
    """N_opt = k_N C^a and D_opt = k_D C^b (approaches 1 and 2), optionally L_opt = E + A C^-alpha.

    C in FLOPs, N_opt in parameters, D_opt in tokens; `loss` is None when too few optima were
    measured to fit a three-parameter law to their losses.
    """

    approach: str
    n_law: PowerLaw
    d_law: PowerLaw
    loss: SaturatingPowerLaw | None = None
    status: str = OK
    message: str = ""

    @property
    def a(self) -> float:
        return self.n_law.exponent

    @property
    def b(self) -> float:
        return self.d_law.exponent

    def n_opt(self, C: Any) -> np.ndarray:
        return self.n_law(C)

    def d_opt(self, C: Any) -> np.ndarray:
        return self.d_law(C)

    def loss_opt(self, C: Any) -> np.ndarray:
        return self.loss.predict(C) if self.loss is not None else np.full(np.shape(C), np.nan)

    def compute_for_loss(self, loss: Any) -> np.ndarray:
        """FLOPs at which the fitted optimal loss reaches `loss` (NaN without a loss law)."""
        return self.loss.inverse(loss) if self.loss is not None else np.full(np.shape(loss), np.nan)

    def interval(self, quantity: str, x: Any) -> np.ndarray:
        """Interval of "n_opt", "d_opt", "loss_opt" (x = C in FLOPs) or "compute_for_loss" (x = loss)."""
        if quantity in ("loss_opt", "compute_for_loss"):
            if self.loss is None:
                return np.full((2,) + np.shape(x), np.nan)
            return self.loss.interval("predict" if quantity == "loss_opt" else "inverse", x)
        return {"n_opt": self.n_law, "d_opt": self.d_law}[quantity].interval("predict", x)

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        n, d = self.n_law.to_dict(include_samples), self.d_law.to_dict(include_samples)
        out = {
            "a": self.a, "b": self.b, "k_n": self.n_law.k, "k_d": self.d_law.k,
            "ci": {"a": n["ci"]["exponent"], "b": d["ci"]["exponent"], "k_n": n["ci"]["k"], "k_d": d["ci"]["k"]},
            "n_law": n, "d_law": d, "loss": self.loss.to_dict(include_samples) if self.loss else None,
            "status": self.status, "message": self.message,
        }
        return jsonable(out)

    @classmethod
    def from_dict(cls, d: dict[str, Any], approach: str) -> "AllocationLaw":
        loss = SaturatingPowerLaw.from_dict(d["loss"]) if d.get("loss") else None
        return cls(approach, PowerLaw.from_dict(d["n_law"]), PowerLaw.from_dict(d["d_law"]), loss,
                   d.get("status", OK), d.get("message", ""))
