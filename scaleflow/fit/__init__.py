"""Scaling-law fits: Chinchilla approaches 1-3, power laws, LR / batch-size laws, LR transfer,
critical batch size.

Estimators follow scikit-learn: settings in the constructor, data to `fit`, a frozen result
back (`scaleflow.fit.laws`). `scaleflow.fit.api.fit` is the one dispatch used by the CLI;
`scaleflow.fit.registry` lists every law. Units: N in parameters, D in tokens, C in FLOPs,
loss in nats/token.

The names below load on first use, so that `scaleflow fit --help` (which reads the registry)
imports no numpy or scipy.
"""

import importlib

_HOME = {
    "AllocationLaw": "laws", "ChinchillaLaw": "laws", "PowerLaw": "laws", "SaturatingPowerLaw": "laws",
    "EnvelopeFitter": "envelope", "IsoFlopFitter": "isoflop", "LrBsFitter": "hparams",
    "ParametricFitter": "parametric", "PowerFitter": "power",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'scaleflow.fit' has no attribute {name!r}")
    return getattr(importlib.import_module(f"scaleflow.fit.{_HOME[name]}"), name)
