"""One dispatch for every fit: load a source, prepare its table (`fit/prepare.py`), run the
requested law(s), compare the approaches, predict.

`fit(source, FitOptions(...))` -> FitRun, whose `to_dict()` is the JSON of `scaleflow fit`.
Units: params in parameters, tokens in tokens, flops in FLOPs, loss in nats/token.

Laws are looked up in `fit/registry.py`'s LAWS (`register_law` adds one); the types a fit
passes around are in `fit/types.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scaleflow.errors import FitError
from scaleflow.fit.laws import jsonable
from scaleflow.fit.prepare import load_source, prepare, read_table
from scaleflow.fit.registry import LAWS, register_law
from scaleflow.fit.types import FitData, FitOptions, FitRun, allocation, predict_optimal


# ----------------------------------------------------------------------------- predictions

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


def _holdout(data: FitData, o: FitOptions) -> dict[str, Any]:
    """Fit without the largest budget; compare its predicted optimum with the measured one: the
    last step of the rollout backtest (`fit.rollout.backtest_step`), with the law asked for
    (`--law rollout`: every approach, as `chinchilla`)."""
    from scaleflow.fit.rollout import backtest_step, budgets_of

    n = len(np.unique(budgets_of(data.table, o.budget_rtol)))
    if n < 3:
        raise FitError("--holdout-largest needs at least 3 FLOP budgets")
    return backtest_step(data, o, n - 1, LAWS["chinchilla" if o.law == "rollout" else o.law].run)


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
