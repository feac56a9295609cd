"""Hyperparameters that follow each run: the rule a study names (`hparams=NAME`, schemas in
config/hparams.py) sets every planned run's peak LR, batch size and weight decay from its
compute C (FLOPs, as the study counts them), its size N (parameters, as the study counts them)
and its length (optimizer steps). A scaling law holds only where each run is near its own
optimum; one LR for models from 5k to 360k parameters and runs from 45 to 13,000 steps is not.

| rule | LR | batch | source |
|---|---|---|---|
| fixed | optim.lr | trainer.batch_size | - |
| lr_bs_fit | eta_opt(C) of a saved lr-bs fit (form nd: eta_opt(N, D) of lr-bs-nd) | B_opt | the study's own LR x batch grid |
| deepseek | 0.3118 C^-0.125 | 0.2920 C^0.3271 tokens | DeepSeek LLM (2024), fitted at 1e17-2e19 FLOPs |
| olmo | 0.0047 (N/108M)^(-1/3) | 160 (N/108M)^(2/3) x 2048 tokens | the OLMo model ladder (Bhagia et al. 2024) |
| mup | the LR tuned at a base width | trainer.batch_size | muP transfer (Yang et al. 2022) |
| power | lr_ref (N / n_ref)^exponent | trainer.batch_size | a measured LR law of N, or a published one |

Weight decay, for every rule with `hparams.weight_decay_timescale` f: lambda = 1 / (lr f T),
T the run's steps, so that AdamW's EMA timescale 1 / (lr lambda) is the fraction f of the run
(Wang & Aitchison 2024). Otherwise optim.weight_decay.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from scaleflow.errors import ConfigError

OLMO_N0 = 108e6  # parameters of the OLMo ladder's reference model


@dataclass(frozen=True)
class RunHparams:
    """What a rule set for one run: peak LR, batch in sequences, weight decay, the rule's name."""

    lr: float
    batch_size: int
    weight_decay: float
    rule: str


def deepseek(C: float, N: float, D: Optional[float] = None) -> tuple[float, float]:
    """(LR, batch in tokens) of DeepSeek LLM's fits, C in FLOPs."""
    return 0.3118 * C**-0.125, 0.2920 * C**0.3271


def olmo(C: float, N: float, D: Optional[float] = None) -> tuple[float, float]:
    """(LR, batch in tokens) of the OLMo ladder's rule, N in parameters."""
    return 0.0047 * (N / OLMO_N0) ** (-1 / 3), 160 * 2048 * (N / OLMO_N0) ** (2 / 3)


def from_fit(path: str, form: str = "compute") -> tuple[Callable[..., tuple[float, float]], bool]:
    """The (LR, batch) rule of a saved fit, and whether its batch is in sequences (else tokens):
    form "compute", eta_opt(C) and B_opt(C) of `--law lr-bs`; form "nd", eta_opt(N, D) and
    B_opt(N, D) of `--law lr-bs-nd` (N in parameters, D in tokens)."""
    if form not in ("compute", "nd"):
        raise ConfigError(f"hparams.form is compute or nd; got {form!r}")
    key, law = ("lr_bs", "lr-bs") if form == "compute" else ("lr_bs_nd", "lr-bs-nd")
    try:
        d = json.loads(Path(path).expanduser().read_text())[key]
        lr, batch, unit = d["lr"], d["batch"], d["batch_unit"]
        if form == "compute":
            k_lr, e_lr, k_b, e_b = (float(x) for x in (lr["k"], lr["exponent"], batch["k"], batch["exponent"]))
            return (lambda C, N, D=None: (k_lr * C**e_lr, k_b * C**e_b)), unit != "batch_tokens"
        c1, a1, b1 = (float(lr[p]) for p in "cab")
        c2, a2, b2 = (float(batch[p]) for p in "cab")
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"hparams.path={path!r} is not a saved {law} fit: give the fit.json of "
                          f"`scaleflow fit STUDY --law {law} --out DIR`") from None
    return (lambda C, N, D: (c1 * N**a1 * D**b1, c2 * N**a2 * D**b2)), unit != "batch_tokens"


def _batch_sequences(tokens: float, seq_len: int, multiple: int) -> int:
    """A batch of about `tokens` tokens in whole sequences, a positive multiple of `multiple`
    (grad_accum x world_size)."""
    return max(multiple, round(tokens / seq_len / multiple) * multiple)


class Rule:
    """The study's rule, ready to apply: `Rule(cfg).run(base, shape, C, N, D, steps)` -> a run's
    config, model section and steps; its parts: `.at(C, N, D, seq_len)` -> (lr, batch_size),
    `.weight_decay(lr, steps)`, `.model(shape)` (for rules that change the model), `.apply`."""

    def __init__(self, cfg):
        h = cfg.get("hparams") or {"name": "fixed"}
        self.name = h["name"]
        self.cfg, self.h = cfg, h
        self.lr_batch: Optional[Callable[..., tuple[float, float]]] = {
            "deepseek": deepseek, "olmo": olmo}.get(self.name)
        self.batch_in_sequences = False
        if self.name == "lr_bs_fit":
            self.lr_batch, self.batch_in_sequences = from_fit(h["path"], h.get("form", "compute"))
        self.use_batch = bool(h.get("batch", False))

    def at(self, C: float, N: float, D: float, seq_len: int) -> tuple[float, int]:
        """(peak LR, batch in sequences) for a run of C FLOPs, N parameters and D tokens."""
        t = self.cfg.trainer
        if self.name == "mup":
            return float(self.h["lr"]), int(t.batch_size)
        if self.name == "power":
            if not (self.h["lr_ref"] > 0 and self.h["n_ref"] > 0):
                raise ConfigError("hparams=power needs a positive hparams.lr_ref and hparams.n_ref")
            return float(self.h["lr_ref"] * (N / self.h["n_ref"]) ** self.h["exponent"]), int(t.batch_size)
        if self.lr_batch is None:
            return float(self.cfg.optim.lr), int(t.batch_size)
        lr, batch = self.lr_batch(C, N, D)
        if not self.use_batch:
            return float(lr), int(t.batch_size)
        tokens = batch * seq_len if self.batch_in_sequences else batch
        return float(lr), _batch_sequences(tokens, seq_len, t.grad_accum * t.world_size)

    def weight_decay(self, lr: float, steps: int) -> float:
        f = self.h.get("weight_decay_timescale")
        if f is None:
            return float(self.cfg.optim.weight_decay)
        if not f > 0:
            raise ConfigError(f"hparams.weight_decay_timescale must be positive; got {f}")
        return 1.0 / (lr * f * steps)

    def model(self, shape: dict) -> dict:
        """The run's model section under this rule (muP transfer makes every run muP)."""
        if self.name != "mup":
            return shape
        mup = {**shape.get("mup", {}), "base_width": int(self.h["base_width"])}
        return {**shape, "parametrization": "mup", "mup": mup}

    def run(self, base: dict, shape: dict, C: float, N: float, D: float,
            steps: Callable[[int], int]) -> tuple[dict, dict, int]:
        """(config, model section, optimizer steps) of a run of C FLOPs, N parameters and D tokens
        under the rule, from the plain config `base` and model `shape`; `steps(batch_size)` is
        the run's length at a batch of that many sequences (the planner's rounding)."""
        lr, batch = self.at(C, N, D, shape["seq_len"])
        n = steps(batch)
        return self.apply(base, lr, batch, self.weight_decay(lr, max(n, 1))), self.model(shape), n

    def apply(self, base: dict, lr: float, batch_size: int, weight_decay: float) -> dict:
        """A copy of the plain config `base` with the run's LR, batch and weight decay."""
        import copy

        out: dict[str, Any] = copy.deepcopy(base)
        out["optim"].update(lr=lr, weight_decay=weight_decay)
        out["trainer"]["batch_size"] = batch_size
        return out
