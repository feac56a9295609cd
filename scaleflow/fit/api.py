"""One dispatch for every fit: load a source, prepare its table, run the requested law(s).

`fit(source, FitOptions(...))` -> FitRun, whose `to_dict()` is the JSON of `scaleflow fit`.
SOURCE is a CSV or parquet table (columns `params, tokens, loss`, optional `flops, lr,
batch_size, batch_tokens, budget, diverged`) or a study directory (collected on the fly).
Units: params in parameters, tokens in tokens, flops in FLOPs, loss in nats/token.

Laws are looked up in `LAWS` (name -> function(FitData, FitOptions) -> {result name: result});
`register_law` adds one (e.g. `lr-transfer`, `critical-batch`). A result needs
`to_dict(include_samples)`; one with an allocation (`n_opt`, `d_opt`, `loss_opt`, `interval`,
directly or as `.law`) also gets predictions in `optimal`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from scaleflow.errors import FitError
from scaleflow.fit.laws import check_table, jsonable, numeric_column

PARAM_COUNTS = ("non_embedding", "with_head", "total")
SIX_ND = {"definition": "6 N D (the table has no flops column)", "flops_per_param_token": 6.0, "spread": 0.0}


@dataclass(frozen=True)
class FitOptions:
    """Settings of one `scaleflow fit` call (see the CLI for their meaning)."""

    law: str = "chinchilla"
    columns: dict[str, str] = field(default_factory=dict)  # logical name -> column in the source
    where: str | None = None
    param_count: str | None = None
    n_bootstrap: int = 200
    huber_delta: float = 1e-3
    predict: tuple[float, ...] = ()  # FLOP budgets
    holdout_largest: bool = False
    seed: int = 0
    budget_rtol: float = 0.1  # runs whose FLOPs agree within this fraction share a budget
    history: str | None = None  # a CSV / parquet of metrics lines (run_id, step, tokens, train_loss, ...)


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
        if self.agreement is not None:
            out["agreement"] = self.agreement.to_dict()
        out.update({name: r.to_dict(include_samples) for name, r in self.results.items()})
        out.update(skipped=self.skipped, optimal=self.optimal)
        if self.holdout is not None:
            out["holdout"] = self.holdout
        return jsonable(out)


def load_source(source: str | Path):
    """(runs table, notes, history or None) from a CSV/parquet file or a study directory."""
    path = Path(source)
    if path.is_dir():
        from scaleflow.store import collect

        c = collect(path)
        return c.runs, tuple(getattr(c, "warnings", ()) or ()), getattr(c, "history", None)
    return _read_table(path, source), (), None


def _read_table(path: Path, source: str | Path):
    import pandas as pd

    if not path.exists():
        raise FitError(f"no such file or study directory: {source}")
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".pq": pd.read_parquet}
    if path.suffix.lower() not in readers:
        raise FitError(f"cannot read {source}: expected a .csv or .parquet table, or a study directory")
    try:
        return readers[path.suffix.lower()](path)
    except Exception as exc:  # a corrupt or unreadable file is the user's to fix
        raise FitError(f"cannot read {source}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _map_columns(df, columns: dict[str, str], param_count: str | None):
    for logical, src in columns.items():
        if src not in df.columns:
            raise FitError(f"--col {logical}={src}: no column {src!r}; the table has: {', '.join(map(str, df.columns))}")
        df = df.drop(columns=[logical], errors="ignore") if logical != src else df
        df = df.rename(columns={src: logical})
    if param_count:
        if param_count not in PARAM_COUNTS:
            raise FitError(f"--param-count must be one of {', '.join(PARAM_COUNTS)}; got {param_count!r}")
        col = f"params_{param_count}"
        if col not in df.columns:
            raise FitError(f"--param-count {param_count} needs column {col!r}, which the table lacks")
        df = df.assign(params=df[col])
    return df


def _derive(df, notes: list[str]):
    """Fill tokens = flops / (6 params) or flops = 6 params tokens when one of them is absent."""
    cols = set(df.columns)
    if "tokens" not in cols and {"flops", "params"} <= cols:
        check_table(df, ("flops", "params"), 1, "deriving tokens")
        df = df.assign(tokens=df["flops"] / (6.0 * df["params"]))
        notes.append("no tokens column: tokens = flops / (6 params)")
    elif "flops" not in cols and {"tokens", "params"} <= cols:
        check_table(df, ("tokens", "params"), 1, "deriving flops")
        df = df.assign(flops=6.0 * df["params"] * df["tokens"])
        notes.append("no flops column: flops = 6 params tokens")
    return df


def flop_definition(df, notes: list[str]) -> dict[str, Any]:
    """The one FLOP count C of every approach and prediction: the `flops` column as the study
    counted it. Approach 3 needs C as a function of N and D: C = k N D with k the geometric
    mean of flops / (N D) over the runs (6 for the 6ND count with the same N)."""
    with np.errstate(all="ignore"):
        ratio = np.log(numeric_column(df, "flops") / (numeric_column(df, "params") * numeric_column(df, "tokens")))
    ratio = ratio[np.isfinite(ratio)]
    if not len(ratio):
        return dict(SIX_ND)
    k = float(np.exp(ratio.mean()))
    spread = float(np.exp(np.abs(ratio - ratio.mean()).max()) - 1.0)
    counts = sorted({str(c) for c in df["flop_count"].dropna()}) if "flop_count" in df.columns else []
    definition = f"flops column (trainer.flop_count={', '.join(counts)})" if counts else "flops column"
    if spread > 0.01:
        notes.append(f"FLOPs per parameter per token vary by up to {spread:.1%} across runs (the count includes "
                     f"terms not proportional to N D): approach 3 converts with C = {k:.3g} N D, so its optima are "
                     "approximate by about that much")
    return {"definition": definition, "flops_per_param_token": k, "spread": spread}


CURVE_KEYS = ("lr", "batch_size", "seed", "parent")  # besides the size, what makes runs one curve


def final_point_curves(table):
    """Approach-1 curves: one point per finished run (its final loss) or WSD branch (its end),
    one curve per model size (4 significant digits) and setting (LR, batch, seed, trunk).

    Mid-run evaluation points are never used: before its schedule has annealed, a run's loss
    overstates what that compute buys (Hoffmann et al. 2022's caveat on approach 1), and
    stable-phase (trunk) losses are already left out by `prepare`."""
    need = {"params", "flops", "tokens", "loss"}
    if not need <= set(table.columns):
        return None
    t = table[list(need)].copy()
    key = table["params"].map(lambda v: f"{float(v):.4g}")
    for col in (c for c in CURVE_KEYS if c in table.columns):
        key = key + "|" + table[col].map(str)
    t["curve"] = key
    return t


def prepare(runs, options: FitOptions, notes: tuple[str, ...] = (), history=None) -> FitData:
    """Map columns, pick the parameter count, drop trunks and diverged runs, filter, derive."""
    notes_l, excluded = list(notes), {}
    df = _map_columns(runs, options.columns, options.param_count)
    if "kind" in df.columns and (df["kind"] == "trunk").any():
        excluded["trunks"] = int((df["kind"] == "trunk").sum())
        notes_l.append(f"{excluded['trunks']} trunk run(s) left out: stable-phase losses are not final")
        df = df[df["kind"] != "trunk"]
    if "diverged" in df.columns:
        bad = df["diverged"].fillna(False).astype(bool)
        if bad.any():
            ids = df.loc[bad, "run_id"] if "run_id" in df.columns else df.index[bad]
            excluded["diverged"] = [str(i) for i in ids]
            notes_l.append(f"{int(bad.sum())} diverged run(s) excluded: {', '.join(excluded['diverged'][:10])}")
            df = df[~bad]
    dup = df.duplicated()
    if dup.any():
        excluded["duplicates"] = int(dup.sum())
        notes_l.append(f"{excluded['duplicates']} duplicate row(s) dropped (identical in every column)")
        df = df[~dup]
    if options.where:
        n = len(df)
        try:
            df = df.query(options.where)
        except Exception as exc:
            raise FitError(f"--where {options.where!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        excluded["filtered"] = n - len(df)
    if not len(df):
        raise FitError("no runs left to fit (after dropping diverged runs and applying --where)")
    counted = "flops" in df.columns
    df = _derive(df.reset_index(drop=True), notes_l)
    flops = flop_definition(df, notes_l) if counted and {"params", "tokens"} <= set(df.columns) else dict(SIX_ND)
    return FitData(df, final_point_curves(df), tuple(notes_l), excluded, history, flops)


# ----------------------------------------------------------------------------- laws

def _approach3(data: FitData, o: FitOptions):
    from scaleflow.fit.parametric import ParametricFitter

    return ParametricFitter(o.huber_delta, o.n_bootstrap, o.seed, data.flops["flops_per_param_token"]).fit(data.table)


def _approach2(data: FitData, o: FitOptions):
    from scaleflow.fit.isoflop import IsoFlopFitter

    return IsoFlopFitter(o.budget_rtol, o.n_bootstrap, o.seed, o.huber_delta).fit(data.table)


def _approach1(data: FitData, o: FitOptions):
    from scaleflow.fit.envelope import EnvelopeFitter

    if data.curves is None:
        raise FitError("approach 1 needs runs of one model size at several token counts (or WSD branches)")
    return EnvelopeFitter(n_bootstrap=o.n_bootstrap, seed=o.seed, huber_delta=o.huber_delta).fit(data.curves)


APPROACHES = {"approach3": _approach3, "approach2": _approach2, "approach1": _approach1}


def _chinchilla(data: FitData, o: FitOptions) -> dict[str, Any]:
    """Every approach the data supports; the reasons of the others go to `skipped`."""
    check_table(data.table, ("params", "tokens", "loss"), 1, "the chinchilla fits")
    results, skipped = {}, {}
    for name, fn in APPROACHES.items():
        try:
            results[name] = fn(data, o)
        except FitError as exc:
            skipped[name] = str(exc)
    if not results:
        raise FitError("; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return {**results, "skipped": skipped}


def _power(data: FitData, o: FitOptions):
    from scaleflow.fit.power import PowerFitter

    x = "x" if "x" in data.table.columns else "flops" if "flops" in data.table.columns else "params"
    return {"power": PowerFitter(x, o.huber_delta, o.n_bootstrap, o.seed).fit(data.table)}


def _lr_bs(data: FitData, o: FitOptions):
    from scaleflow.fit.hparams import LrBsFitter

    batch = "batch_tokens" if "batch_tokens" in data.table.columns else "batch_size"
    return {"lr_bs": LrBsFitter(batch, rtol=o.budget_rtol, n_bootstrap=o.n_bootstrap, seed=o.seed).fit(data.table)}


def _only(name: str) -> Callable[[FitData, FitOptions], dict[str, Any]]:
    """The law that runs one approach and lets its FitError through."""
    def run(data: FitData, o: FitOptions) -> dict[str, Any]:
        return {name: APPROACHES[name](data, o)}
    return run


LAWS: dict[str, Callable[[FitData, FitOptions], dict[str, Any]]] = {
    "chinchilla": _chinchilla, "power": _power, "lr-bs": _lr_bs, **{name: _only(name) for name in APPROACHES},
}


def register_law(name: str, fn: Callable[[FitData, FitOptions], dict[str, Any]]) -> None:
    """Add a law to `--law` (e.g. `lr-transfer`, `critical-batch`)."""
    LAWS[name] = fn


# ----------------------------------------------------------------------------- predictions

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


def load_saved(path: str | Path) -> dict[str, Any]:
    """Allocation laws of a saved fit.json: {approach name: ChinchillaLaw or AllocationLaw}."""
    import json

    from scaleflow.fit.laws import AllocationLaw, ChinchillaLaw

    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise FitError(f"cannot read fit {path}: {exc}") from None
    laws = {name: AllocationLaw.from_dict(d[name], name) for name in ("approach2", "approach1") if d.get(name)}
    if d.get("approach3"):
        laws = {"approach3": ChinchillaLaw.from_dict(d["approach3"]), **laws}
    if not laws:
        raise FitError(f"{path} holds no compute-optimal law (approach 1, 2 or 3)")
    return laws


def answer(laws: dict[str, Any], flops=(), loss: float | None = None, tokens: float | None = None) -> dict[str, Any]:
    """Questions to a saved fit: best loss for each budget in `flops`; compute to reach `loss`;
    with `tokens` too, the smallest model reaching `loss` on that many tokens (approach 3)."""
    out: dict[str, Any] = {}
    if len(flops):
        out["optimal"] = predict_optimal(laws, flops)
    if loss is not None and tokens is None:
        rows = [{"approach": k, "loss": loss, "flops": float(law.compute_for_loss(loss)),
                 "flops_ci": law.interval("compute_for_loss", loss).tolist()} for k, law in laws.items()]
        for r in rows:
            r.update(params=float(laws[r["approach"]].n_opt(r["flops"])), tokens=float(laws[r["approach"]].d_opt(r["flops"])))
        out["compute_for_loss"] = _reachable(rows, f"loss {loss} is not reachable: it is at or below every "
                                             "fitted irreducible loss E (or no fit has a loss law)")
    if loss is not None and tokens is not None:
        if "approach3" not in laws:
            raise FitError("the smallest model for a loss and token budget needs approach 3 (L(N, D)) in the fit")
        law = laws["approach3"]
        n = float(law.smallest_model(loss, tokens))
        out["smallest_model"] = _reachable([{
            "approach": "approach3", "loss": loss, "tokens": tokens, "params": n,
            "params_ci": law.interval("smallest_model", loss, tokens).tolist(), "flops": law.k * n * tokens}],
            f"loss {loss} is not reachable with {tokens:.3g} tokens: even an infinite model gets "
            f"{law.E + law.B * tokens ** -law.beta:.4g}")
    return jsonable(out)


def _reachable(rows: list[dict[str, Any]], why: str) -> list[dict[str, Any]]:
    if not any(np.isfinite(r.get("flops", np.nan)) for r in rows):
        raise FitError(why)
    return rows


def _default_budgets(table, rtol: float) -> list[float]:
    """The data's FLOP budgets when it has at most 12, else 5 log-spaced over its range."""
    from scaleflow.fit.isoflop import group_budgets

    budgets = np.unique(group_budgets(table, rtol))
    if len(budgets) <= 12:
        return budgets.tolist()
    return np.geomspace(budgets.min(), budgets.max(), 5).tolist()


def _measured_optimum(table, top: float, rtol: float) -> dict[str, Any]:
    """The optimum the held-out budget measured: its minimum in the approach-2 fit of every
    budget (the curves' shape is fitted on all of them), else its best run."""
    from scaleflow.fit.isoflop import IsoFlopFitter

    try:
        fitted = [b for b in IsoFlopFitter(rtol).fit(table).budgets if b.flops == top]
    except FitError:
        fitted = []
    if fitted and np.isfinite(fitted[0].params_opt):
        b = fitted[0]
        return {"params": b.params_opt, "tokens": b.tokens_opt, "loss": b.loss_opt,
                "how": "minimum of the held-out budget's IsoFLOP curve"}
    from scaleflow.fit.isoflop import group_budgets

    test = table[group_budgets(table, rtol) == top]
    best = test.loc[test["loss"].idxmin()]
    return {"params": best["params"], "tokens": best["tokens"], "loss": best["loss"], "how": "best held-out run"}


def _holdout(data: FitData, o: FitOptions) -> dict[str, Any]:
    """Fit without the largest budget; compare its predicted optimum with the measured one."""
    from scaleflow.fit.isoflop import group_budgets

    t = data.table
    C = group_budgets(t, o.budget_rtol)
    if len(np.unique(C)) < 3:
        raise FitError("--holdout-largest needs at least 3 FLOP budgets")
    top = C.max()
    train, test = t[C < top], t[C == top]
    curves = None if data.curves is None else data.curves[data.curves["flops"] < test["flops"].min()]
    sub = replace(data, table=train.reset_index(drop=True), curves=curves)
    results = {k: v for k, v in LAWS[o.law](sub, o).items() if k != "skipped"}
    m = _measured_optimum(t, float(top), o.budget_rtol)
    rows = []
    for p in predict_optimal(results, [top]):
        rows.append({**p, "params_ratio": p["params"] / m["params"] if p["params"] else None,
                     "loss_error": (p["loss"] - m["loss"]) / m["loss"] if p["loss"] is not None else None})
    return jsonable({"flops": top, "n_train": len(train), "n_test": len(test), "measured": m, "predicted": rows})


def fit(source: str | Path | Any, options: FitOptions = FitOptions()) -> FitRun:
    """Load SOURCE (a path, or a DataFrame), prepare it and run `options.law`."""
    import scaleflow.fit.critical_batch  # noqa: F401  (these modules register their laws)
    import scaleflow.fit.transfer  # noqa: F401

    if options.law not in LAWS:
        raise FitError(f"unknown law {options.law!r}; choose one of: {', '.join(LAWS)}")
    if isinstance(source, (str, Path)):
        runs, notes, history = load_source(source)
        name = str(source)
    else:
        runs, notes, history, name = source, (), None, "<DataFrame>"
    if options.history:
        try:
            history = _read_table(Path(options.history), options.history)
        except FitError as exc:
            raise FitError(f"--history: {exc}") from None
    data = prepare(runs, options, notes, history)
    from scaleflow.fit.parametric import one_blas_thread

    with one_blas_thread():  # small problems: idle BLAS threads would only steal the optimiser's core
        out = dict(LAWS[options.law](data, options))
        holdout = _holdout(data, options) if options.holdout_largest else None
    skipped = out.pop("skipped", {})
    budgets = list(options.predict) or (_default_budgets(data.table, options.budget_rtol)
                                        if "flops" in data.table.columns else [])
    from scaleflow.fit.agreement import compare

    return FitRun(name, options, data, out, skipped, predict_optimal(out, budgets), holdout, compare(out, data.table))


__all__ = ["FitOptions", "FitData", "FitRun", "LAWS", "fit", "load_source", "prepare",
           "predict_optimal", "register_law"]
