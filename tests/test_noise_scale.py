"""The gradient noise scale estimator (docs/science.md section 6) against a closed form.

Linear regression y = x . w* + eps with x ~ N(0, I_d), eps ~ N(0, sigma^2), loss
0.5 (x . w - y)^2 per sample, evaluated at w = w* + r. The per-sample gradient is
g = x (x . r - eps), so G = E[g] = r and, since E[x x^T r r^T x x^T] = |r|^2 I + 2 r r^T
for Gaussian x, Sigma = Cov[g] = (|r|^2 + sigma^2) I + r r^T:
tr(Sigma) = (d + 1) |r|^2 + sigma^2 d and B_simple = tr(Sigma) / |r|^2 (in samples).

That checks the estimator (NoiseScaleEMA) alone. The trainer's own path (its micro-batch and
step gradients, their token counts, the EMA it keeps, the value it logs) is checked by
`test_the_trainer_logs_the_closed_form_noise_scale` at the end of this file.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import scaleflow.train as trainer
from conftest import metrics_without_timing
from scaleflow.config import compose_run
from scaleflow.noise_scale import NoiseScaleEMA, estimate


def _regression_stream(steps: int, micro: int, accum: int, d: int, sigma: float, seed: int):
    """(|G_b|^2, |G_B|^2) per step from real minibatch gradients, measured as the trainer does:
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


class _Unigram(torch.nn.Module):
    """Stands in for the GPT in the trainer: the logits are one parameter vector, whatever the
    input, so a target token y contributes the gradient softmax(logits) - onehot(y)."""

    def __init__(self, cfg):
        super().__init__()
        signs = torch.ones(cfg.vocab_size)
        signs[1::2] = -1.0
        self.logits = torch.nn.Parameter(signs)  # +1, -1, +1, ...

    def forward(self, idx, targets=None):
        logits = self.logits.expand(*idx.shape, -1)
        loss = None if targets is None else F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    def param_groups(self, weight_decay, lr_mults):
        return [{"params": [self.logits], "lr_mult": lr_mults["vector"], "weight_decay": 0.0, "role": "vector"}]


@pytest.fixture
def one_thread():
    """One torch thread: 1,600 tiny ops per run, which a second thread only slows down."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("batch_size, grad_accum", [(16, 4), (8, 2)])
def test_the_trainer_logs_the_closed_form_noise_scale(tmp_path, monkeypatch, one_thread, batch_size, grad_accum):
    """The grad_noise_scale that train() writes to metrics.jsonl, on a problem solved by hand.

    Tokens: every id 0..V-1 equally often (V = 256), shuffled, so each target is uniform, p = 1/V,
    and independent of its neighbours. Model: _Unigram with q = softmax(+-1) (LR 1e-9: it stays
    put). Per token g = q - onehot(y): G = q - p and Sigma = diag(p) - p p^T, so
    tr(Sigma) = 1 - 1/V, |G|^2 = tanh(1)^2 / V and B_simple = (V - 1) / tanh(1)^2 = 439.6 tokens.
    (Sequences start at uniform offsets; the 32 positions at either end of the file are drawn
    less often, which moves p by well under 0.1%.) Simulated with numpy, the trainer's estimator
    (beta 0.99, 400 steps, b = 128 tokens, B = 512 or 256) scatters by 2-4% over seeds, so 20%
    is five standard deviations; a value off by a factor 2, or counted in sequences, fails.
    """
    V, seq_len = 256, 32
    tokens = np.repeat(np.arange(V, dtype=np.uint16), 256)
    np.random.default_rng(0).shuffle(tokens)
    tokens.tofile(tmp_path / "train.bin")
    np.arange(V, dtype=np.uint16).tofile(tmp_path / "val.bin")
    monkeypatch.setattr(trainer, "GPT", _Unigram)
    cfg = compose_run(["data=tokens", f"data.paths=[{tmp_path / 'train.bin'}]", f"data.val_paths=[{tmp_path / 'val.bin'}]",
                       f"model.vocab_size={V}", f"model.seq_len={seq_len}", f"trainer.batch_size={batch_size}",
                       f"trainer.grad_accum={grad_accum}", "trainer.noise_scale=true", "trainer.steps=400",
                       "trainer.log_every=100", "trainer.eval_every=400", "trainer.eval_sequences=4",
                       "trainer.checkpoint_every=400", "optim.lr=1e-9", "device=cpu"])
    trainer.train(cfg, tmp_path / "run")

    q = torch.softmax(_Unigram(cfg.model).logits.detach().double(), 0).numpy()
    p = np.bincount(tokens, minlength=V) / len(tokens)
    closed_form = (1 - (p**2).sum()) / ((q - p) ** 2).sum()
    assert closed_form == pytest.approx((V - 1) / math.tanh(1) ** 2)
    logged = metrics_without_timing(tmp_path / "run")[-1]
    assert logged["step"] == 400
    assert logged["grad_noise_scale"] == pytest.approx(closed_form, rel=0.20)
