"""One dispatch for every fit: load a source, prepare its table (`fit/prepare.py`), run the
requested law(s), compare the approaches, predict.

`fit(source, FitOptions(...))` -> FitRun, whose `to_dict()` is the JSON of `scaleflow fit`.
Units: params in parameters, tokens in tokens, flops in FLOPs, loss in nats/token.

Laws are looked up in `fit/registry.py`'s LAWS (`register_law` adds one); the types a fit
passes around are in `fit/types.py`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from scaleflow.errors import FitError
from scaleflow.fit.laws import jsonable
from scaleflow.fit.prepare import load_source, prepare, read_table
from scaleflow.fit.registry import LAWS, register_law
from scaleflow.fit.types import FitData, FitOptions, FitRun, allocation


# ----------------------------------------------------------------------------- predictions

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
        fitted = [b for b in IsoFlopFitter(rtol=rtol).fit(table).budgets if b.flops == top]
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
    results = {k: v for k, v in LAWS[o.law].run(sub, o).items() if k != "skipped"}
    m = _measured_optimum(t, float(top), o.budget_rtol)
    rows = []
    for p in predict_optimal(results, [top]):
        rows.append({**p, "params_ratio": p["params"] / m["params"] if p["params"] else None,
                     "loss_error": (p["loss"] - m["loss"]) / m["loss"] if p["loss"] is not None else None})
    return jsonable({"flops": top, "n_train": len(train), "n_test": len(test), "measured": m, "predicted": rows})


def fit(source: str | Path | Any, options: FitOptions = FitOptions()) -> FitRun:
    """Load SOURCE (a path, or a DataFrame), prepare it and run `options.law`."""
    if options.law not in LAWS:
        raise FitError(f"unknown law {options.law!r}; choose one of: {', '.join(LAWS)}")
    if isinstance(source, (str, Path)):
        runs, notes, history = load_source(source, options.source_kind)
        name = str(source)
    else:
        runs, notes, history, name = source, (), None, "<DataFrame>"
    if options.history:
        try:
            history = read_table(Path(options.history), options.history)
        except FitError as exc:
            raise FitError(f"--history: {exc}") from None
    data = prepare(runs, options, notes, history)
    from scaleflow.fit.parametric import one_blas_thread

    with one_blas_thread():  # small problems: idle BLAS threads would only steal the optimiser's core
        out = dict(LAWS[options.law].run(data, options))
        holdout = _holdout(data, options) if options.holdout_largest else None
    skipped = out.pop("skipped", {})
    budgets = list(options.predict) or (_default_budgets(data.table, options.budget_rtol)
                                        if "flops" in data.table.columns else [])
    from scaleflow.fit.agreement import compare

    return FitRun(name, options, data, out, skipped, predict_optimal(out, budgets), holdout, compare(out, data.table))


__all__ = ["FitOptions", "FitData", "FitRun", "LAWS", "allocation", "fit", "load_source", "prepare",
           "predict_optimal", "register_law"]
