"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018).

docs/science.md section 6. From the squared norms of two gradient estimates of the same parameters,
one over a small batch of b tokens and one over a big batch of B tokens (b < B),

    E|G_b|^2 = |G|^2 + tr(Sigma) / b,    E|G_B|^2 = |G|^2 + tr(Sigma) / B,

so the unbiased estimates are

    |G|^2     ~ (B |G_B|^2 - b |G_b|^2) / (B - b)
    tr(Sigma) ~ (|G_b|^2 - |G_B|^2) / (1/b - 1/B)

where Sigma is the per-token gradient covariance, so B_simple comes out in tokens. Each
single-step estimate is very noisy (|G|^2 may even come out negative), so `NoiseScaleEMA`
averages the numerator and denominator separately (bias-corrected EMAs) and divides the
averages, never averaging ratios.

In the trainer, with gradient accumulation over `accum` micro-batches: after the first
micro-batch's backward the gradient is g_1 / accum, so |G_b|^2 = accum^2 |grad|^2 with
b = micro-batch tokens; after all micro-batches (before clipping) |G_B|^2 = |grad|^2 with
B = tokens per step. With data parallelism the small batch is one rank's micro-batch.
"""

from __future__ import annotations

import math
from typing import Optional


def estimate(g_small_sq: float, g_big_sq: float, b: float, B: float) -> tuple[float, float]:
    """Unbiased single-step estimates (|G|^2, tr(Sigma)) from |G_b|^2 and |G_B|^2.

    b, B: the two batch sizes (tokens), 0 < b < B. Either estimate can be negative on one step.
    """
    if not 0 < b < B:
        raise ValueError(f"the noise scale needs two batch sizes 0 < b < B, got b={b}, B={B}")
    g_sq = (B * g_big_sq - b * g_small_sq) / (B - b)
    trace = (g_small_sq - g_big_sq) / (1.0 / b - 1.0 / B)
    return g_sq, trace


class NoiseScaleEMA:
    """Bias-corrected EMAs of tr(Sigma) and |G|^2; their ratio is B_simple (in tokens).

    `update` returns the current B_simple, or None while it is undefined: before the first
    update, or when either averaged estimate is not positive (early on, with few samples, the
    noisy |G|^2 or tr(Sigma) estimate can average to <= 0; a non-positive noise scale has no
    meaning, so it is reported as missing rather than as a number).
    Non-finite inputs (an overflowed gradient) are skipped so that they cannot poison the
    averages. The state is plain floats and ints (safe in a weights_only checkpoint).
    """

    def __init__(self, beta: float = 0.99):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must lie in [0, 1), got {beta}")
        self.beta = float(beta)
        self.trace_avg = 0.0  # EMA of tr(Sigma) estimates (uncorrected)
        self.g_sq_avg = 0.0  # EMA of |G|^2 estimates (uncorrected)
        self.count = 0  # updates taken

    def update(self, g_small_sq: float, g_big_sq: float, b: float, B: float) -> Optional[float]:
        g_small_sq, g_big_sq = float(g_small_sq), float(g_big_sq)
        if math.isfinite(g_small_sq) and math.isfinite(g_big_sq):
            g_sq, trace = estimate(g_small_sq, g_big_sq, b, B)
            self.trace_avg = self.beta * self.trace_avg + (1.0 - self.beta) * trace
            self.g_sq_avg = self.beta * self.g_sq_avg + (1.0 - self.beta) * g_sq
            self.count += 1
        return self.value

    def _corrected(self, avg: float) -> Optional[float]:
        if self.count == 0:
            return None
        return avg / (1.0 - self.beta**self.count)

    @property
    def trace(self) -> Optional[float]:
        """The bias-corrected average of tr(Sigma) (per token), or None before any update."""
        return self._corrected(self.trace_avg)

    @property
    def g_sq(self) -> Optional[float]:
        """The bias-corrected average of |G|^2, or None before any update."""
        return self._corrected(self.g_sq_avg)

    @property
    def value(self) -> Optional[float]:
        """B_simple = tr(Sigma) / |G|^2 in tokens, or None while undefined."""
        trace, g_sq = self.trace, self.g_sq
        if trace is None or g_sq is None or g_sq <= 0.0 or trace <= 0.0:
            return None
        return trace / g_sq

    def state_dict(self) -> dict:
        return {"beta": self.beta, "trace_avg": self.trace_avg, "g_sq_avg": self.g_sq_avg, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.beta = float(state["beta"])
        self.trace_avg = float(state["trace_avg"])
        self.g_sq_avg = float(state["g_sq_avg"])
        self.count = int(state["count"])
