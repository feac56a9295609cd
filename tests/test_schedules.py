import math

import pytest

from scaleflow.config import ScheduleConfig
from scaleflow.schedules import StepPlan, decay_start, lr_factor


def lr(step, total, name, warmup=0, final=0.0, fraction=0.2, shape="1-sqrt"):
    """The schedule as the trainer calls it: a ScheduleConfig and the run's StepPlan."""
    schedule = ScheduleConfig(name=name, final_lr_fraction=final, decay_fraction=fraction, decay_shape=shape)
    return lr_factor(step, StepPlan.of(total, warmup, schedule), schedule)


def test_warmup_is_linear():
    assert [lr(s, 100, "constant", warmup=4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_cosine_ends_at_the_final_fraction():
    total, warm, r = 100, 10, 0.1
    assert lr(total - 1, total, "cosine", warm, r) == pytest.approx(r)
    mid = warm + (total - warm) // 2 - 1  # progress 0.5
    assert lr(mid, total, "cosine", warm, r) == pytest.approx(r + (1 - r) / 2)


@pytest.mark.parametrize(
    "shape,formula",
    [
        ("linear", lambda x, r: 1 - (1 - r) * x),
        ("cosine", lambda x, r: r + (1 - r) * (1 + math.cos(math.pi * x)) / 2),
        ("1-sqrt", lambda x, r: 1 - (1 - r) * math.sqrt(x)),
        ("exponential", lambda x, r: r**x),
    ],
)
def test_wsd_decay_shapes(shape, formula):
    total, f, r = 100, 0.2, 0.05
    start = decay_start(total, f)
    assert start == 80
    assert lr(start - 1, total, "wsd", 5, r, f, shape) == 1.0
    for step in (80, 85, 90, 99):
        x = (step - start + 1) / 20
        assert lr(step, total, "wsd", 5, r, f, shape) == pytest.approx(formula(x, r))
    assert lr(99, total, "wsd", 5, r, f, shape) == pytest.approx(r)


def test_wsd_stable_phase_does_not_depend_on_the_length():
    # What lets one trunk serve every budget: before its own decay, every length agrees.
    for total in (100, 200, 400):
        start = decay_start(total, 0.2)
        assert all(lr(s, total, "wsd", 10) == lr(s, 10_000, "wsd", 10) for s in range(start))


def test_multistep_is_deepseeks():
    total = 100
    assert lr(79, total, "multistep") == 1.0
    assert lr(80, total, "multistep") == 0.316
    assert lr(89, total, "multistep") == 0.316
    assert lr(90, total, "multistep") == 0.1
