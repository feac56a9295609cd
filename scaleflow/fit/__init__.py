"""Scaling-law fits: Chinchilla approaches 1-3, power laws, LR / batch-size laws.

Estimators follow scikit-learn: settings in the constructor, data to `fit`, a frozen result
back (`scaleflow.fit.laws`). `scaleflow.fit.api.fit` is the one dispatch used by the CLI.
Units: N in parameters, D in tokens, C in FLOPs, loss in nats/token.
"""

from scaleflow.fit.envelope import EnvelopeFitter
from scaleflow.fit.hparams import LrBsFitter
from scaleflow.fit.isoflop import IsoFlopFitter
from scaleflow.fit.laws import AllocationLaw, ChinchillaLaw, PowerLaw, SaturatingPowerLaw
from scaleflow.fit.parametric import ParametricFitter
from scaleflow.fit.power import PowerFitter

__all__ = ["AllocationLaw", "ChinchillaLaw", "EnvelopeFitter", "IsoFlopFitter", "LrBsFitter", "ParametricFitter",
           "PowerFitter", "PowerLaw", "SaturatingPowerLaw"]
