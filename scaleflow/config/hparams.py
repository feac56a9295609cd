"""The `hparams` config group: the rule that sets each planned run's learning rate, batch size
and weight decay (scaleflow/rules.py). One dataclass per rule, stored in Hydra's ConfigStore as
`hparams/NAME_schema` (scaleflow/conf/hparams/NAME.yaml starts from it), so a key of another
rule is an error. The rule is planning: a run's id hashes the values it set, not the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class FixedHparams:
    """hparams=fixed (the default): every run uses optim.lr, trainer.batch_size and
    optim.weight_decay as configured."""

    name: str = "fixed"
    # AdamW timescale rule (Wang & Aitchison 2024), for every rule: weight decay
    # lambda = 1 / (lr * fraction * steps), so that the EMA timescale 1 / (lr lambda) is this
    # fraction of each run's optimizer steps. None = keep optim.weight_decay.
    weight_decay_timescale: Optional[float] = None


@dataclass
class LrBsFitHparams(FixedHparams):
    """hparams=lr_bs_fit: eta_opt(C) and B_opt(C) of a saved `scaleflow fit --law lr-bs` fit, so
    an LR x batch-size study feeds the IsoFLOP study (as DeepSeek LLM did); with form=nd,
    eta_opt(N, D) and B_opt(N, D) of a `--law lr-bs-nd` fit (Step Law's form)."""

    name: str = "lr_bs_fit"
    path: str = ""  # the fit.json of `scaleflow fit STUDY --law lr-bs --out DIR` (or lr-bs-nd)
    form: str = "compute"  # compute: eta_opt(C), B_opt(C) (lr-bs); nd: eta_opt(N, D), B_opt(N, D) (lr-bs-nd)
    batch: bool = True  # also take the batch size from B_opt(C); false = trainer.batch_size


@dataclass
class DeepseekHparams(FixedHparams):
    """hparams=deepseek: DeepSeek LLM's published law, eta = 0.3118 C^-0.125 and
    B = 0.2920 C^0.3271 tokens (C in FLOPs)."""

    name: str = "deepseek"
    batch: bool = True


@dataclass
class OlmoHparams(FixedHparams):
    """hparams=olmo: the OLMo model ladder's rule of N, lr = 0.0047 (N / 108M)^(-1/3) and
    batch = 160 (N / 108M)^(2/3) sequences of 2048 tokens."""

    name: str = "olmo"
    batch: bool = True


@dataclass
class MupHparams(FixedHparams):
    """hparams=mup: muP transfer from a base width: every run is muP (model.parametrization=mup,
    model.mup.base_width=base_width) and uses the LR tuned at the base width."""

    name: str = "mup"
    base_width: int = 256  # d_model where the LR was tuned (at most the study's narrowest model)
    lr: float = 3e-3  # the LR tuned at base_width (e.g. by a mup_transfer study)


@dataclass
class PowerHparams(FixedHparams):
    """hparams=power: an LR law of N, lr = lr_ref (N / n_ref)^exponent (N in parameters, as the
    study counts them), batch trainer.batch_size: a measured law (the N exponent of `fit --law
    lr-bs-nd`, or an LR probe at a few sizes) or a published one (OLMo's: exponent -1/3)."""

    name: str = "power"
    lr_ref: float = 3e-3  # peak LR at n_ref parameters
    n_ref: float = 1e5  # parameters
    exponent: float = -1 / 3


#: hparams.name -> its schema.
HPARAMS = {"fixed": FixedHparams, "lr_bs_fit": LrBsFitHparams, "deepseek": DeepseekHparams,
           "olmo": OlmoHparams, "mup": MupHparams, "power": PowerHparams}
