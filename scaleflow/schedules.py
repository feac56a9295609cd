"""Learning-rate schedules as pure functions of the step (docs/science.md section 4).

`lr_factor(step, plan, schedule)` gives the multiplier of the peak LR used by optimizer step
`step` (0-based) of a run whose StepPlan (length, warmup, first decay step) is `plan` and whose
schedule config is `schedule`. Warmup is linear over `warmup` steps: factor (step + 1) / warmup.

WSD: the decay covers the last `decay_steps(total, f)` steps; before them the factor is 1,
independent of `total`, which is what lets one stable-phase trunk serve every budget.
Decay progress x runs from 1/decay_steps to 1 over the decay, and with r = final fraction:
  linear       1 - (1 - r) x
  cosine       r + (1 - r) (1 + cos(pi x)) / 2
  1-sqrt       1 - (1 - r) sqrt(x)
  exponential  r^x                       (MiniCPM's geometric decay, ending at r)
Cosine: r + (1 - r) (1 + cos(pi p)) / 2 with p the progress after warmup, ending at r.
Multi-step (DeepSeek LLM): 1 until 80% of the steps, 0.316 until 90%, then 0.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

SHAPES = ("linear", "cosine", "1-sqrt", "exponential")


def absolute_warmup(schedule, tokens_per_step: int) -> Optional[int]:
    """Warmup in steps from schedule.warmup_tokens or schedule.warmup_steps; None when the
    warmup is relative (warmup_steps < 0: 5% of the run, which depends on its length)."""
    if schedule.warmup_tokens > 0:
        return math.ceil(schedule.warmup_tokens / tokens_per_step)
    if schedule.warmup_steps >= 0:
        return schedule.warmup_steps
    return None


def decay_steps(total: int, fraction: float) -> int:
    """Steps in the WSD decay phase of a `total`-step run (at least 1)."""
    return max(1, round(total * fraction))


def decay_start(total: int, fraction: float) -> int:
    """First step of the WSD decay: the fork point of a branch of this length."""
    return total - decay_steps(total, fraction)


def decay_factor(x: float, shape: str, final: float) -> float:
    """Multiplier at decay progress x in [0, 1] for a decay from 1 to `final`."""
    if shape == "linear":
        return 1 - (1 - final) * x
    if shape == "cosine":
        return final + (1 - final) * (1 + math.cos(math.pi * x)) / 2
    if shape == "1-sqrt":
        return 1 - (1 - final) * math.sqrt(x)
    if shape == "exponential":
        return final**x
    raise ValueError(f"unknown decay shape {shape!r}")


@dataclass(frozen=True)
class StepPlan:
    """The steps a schedule reads, computed once per run: its length, its warmup and its
    first WSD decay step (= steps for schedules without a WSD decay)."""

    steps: int
    warmup: int
    decay_start: int

    @classmethod
    def of(cls, steps: int, warmup: int, schedule) -> "StepPlan":
        start = decay_start(steps, schedule.decay_fraction) if schedule.name == "wsd" else steps
        return cls(steps, warmup, start)


def lr_factor(step: int, plan: StepPlan, schedule) -> float:
    """Multiplier of the peak LR at optimizer step `step`; `schedule`: the schedule config
    (name, final_lr_fraction, decay_shape)."""
    final = schedule.final_lr_fraction
    if step < plan.warmup:
        return (step + 1) / plan.warmup
    if schedule.name == "constant":
        return 1.0
    if schedule.name == "cosine":
        span = max(1, plan.steps - plan.warmup)
        progress = min(1.0, (step - plan.warmup + 1) / span)
        return decay_factor(progress, "cosine", final)
    if schedule.name == "wsd":
        if step < plan.decay_start:
            return 1.0
        return decay_factor((step - plan.decay_start + 1) / (plan.steps - plan.decay_start), schedule.decay_shape,
                            final)
    if schedule.name == "multistep":
        if step < 0.8 * plan.steps:
            return 1.0
        return 0.316 if step < 0.9 * plan.steps else 0.1
    raise ValueError(f"unknown schedule {schedule.name!r}")
