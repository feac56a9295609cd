"""The gradient noise scale estimator (science.md section 6) against a closed form.

Linear regression y = x . w* + eps with x ~ N(0, I_d), eps ~ N(0, sigma^2), loss
0.5 (x . w - y)^2 per sample, evaluated at w = w* + r. The per-sample gradient is
g = x (x . r - eps), so G = E[g] = r and, since E[x x^T r r^T x x^T] = |r|^2 I + 2 r r^T
for Gaussian x, Sigma = Cov[g] = (|r|^2 + sigma^2) I + r r^T:
tr(Sigma) = (d + 1) |r|^2 + sigma^2 d and B_simple = tr(Sigma) / |r|^2 (in samples).
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from scaleflow.noise_scale import NoiseScaleEMA, estimate


def _regression_stream(steps: int, micro: int, accum: int, d: int, sigma: float, seed: int):
    """(|G_b|^2, |G_B|^2) per step from real minibatch gradients, measured the trainer's way:
    backward of loss / accum per micro-batch; after the first one the gradient is g_1 / accum.

    All `steps` independent steps run at once: w is a (steps, d) leaf, one row per step, so one
    backward per micro-batch gives every step's gradient.
    """
    gen = torch.Generator().manual_seed(seed)
    w_star = torch.randn(d, generator=gen, dtype=torch.float64)
    r = torch.randn(d, generator=gen, dtype=torch.float64)
    r = r / r.norm()  # |r|^2 = 1
    w = (w_star + r).expand(steps, d).clone().requires_grad_(True)
    small_sq = None
    for m in range(accum):
        x = torch.randn(steps, micro, d, generator=gen, dtype=torch.float64)
        y = x @ w_star + sigma * torch.randn(steps, micro, generator=gen, dtype=torch.float64)
        pred = (x * w.unsqueeze(1)).sum(-1)
        loss = 0.5 * (pred - y).pow(2).mean(dim=1)  # each step's mean loss over its micro-batch
        (loss.sum() / accum).backward()
        if m == 0:
            small_sq = accum**2 * w.grad.pow(2).sum(dim=1)
    big_sq = w.grad.pow(2).sum(dim=1)
    return small_sq.tolist(), big_sq.tolist(), r


@pytest.mark.parametrize("d, sigma", [(8, 1.0), (16, 0.5)])
def test_recovers_closed_form_noise_scale(d, sigma):
    # 8000 steps and a long EMA memory (beta 0.9995, ~4000 steps): over 40 seeds the scatter of
    # the result is about 3%, so 10% is a margin of more than three standard deviations.
    # (The trainer's default beta 0.99 remembers ~200 steps: about 15% scatter on this problem.)
    micro, accum, steps = 8, 4, 8000
    small, big, r = _regression_stream(steps, micro, accum, d, sigma, seed=d)
    g_sq = float(r.pow(2).sum())
    true_trace = (d + 1) * g_sq + sigma**2 * d
    true_scale = true_trace / g_sq

    ema = NoiseScaleEMA(beta=0.9995)
    for s, bg in zip(small, big):
        value = ema.update(s, bg, micro, micro * accum)
    assert value == pytest.approx(true_scale, rel=0.10)
    assert ema.trace == pytest.approx(true_trace, rel=0.10)
    assert ema.g_sq == pytest.approx(g_sq, rel=0.10)


def test_estimate_is_exact_on_expected_norms():
    g_sq, trace, b, B = 2.0, 300.0, 16, 256
    small, big = g_sq + trace / b, g_sq + trace / B
    assert estimate(small, big, b, B) == pytest.approx((g_sq, trace))
    with pytest.raises(ValueError):
        estimate(small, big, 256, 256)


def test_undefined_until_positive_and_skips_non_finite():
    ema = NoiseScaleEMA()
    assert ema.value is None and ema.trace is None
    # |G_B|^2 far below |G_b|^2 / (B/b): the |G|^2 estimate is negative, so no value yet.
    assert ema.update(10.0, 0.1, 4, 32) is None
    assert ema.update(float("nan"), 1.0, 4, 32) is None
    assert ema.count == 1
    # Bias correction: one update gives exactly that update's estimates.
    fresh = NoiseScaleEMA(beta=0.9)
    value = fresh.update(2.0 + 100.0 / 4, 2.0 + 100.0 / 32, 4, 32)
    assert value == pytest.approx(50.0)


def test_state_dict_round_trips_through_weights_only_checkpoint():
    ema = NoiseScaleEMA(beta=0.95)
    for i in range(5):
        ema.update(30.0 + i, 5.0, 4, 32)
    buffer = io.BytesIO()
    torch.save({"noise_scale": ema.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["noise_scale"]
    assert all(isinstance(v, (int, float)) for v in state.values())
    restored = NoiseScaleEMA()
    restored.load_state_dict(state)
    assert restored.state_dict() == ema.state_dict()
    assert math.isclose(restored.update(31.0, 5.0, 4, 32), ema.update(31.0, 5.0, 4, 32))
