"""Property-based tests: any override string gives a config or a one-line ConfigError."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_cli
from scaleflow.config import compose_run
from scaleflow.errors import ScaleflowError

KEYS = ["model.n_layer", "model.d_model", "model.n_head", "model.norm", "model.nope", "optim.lr", "trainer.steps",
        "trainer.batch_size", "schedule.name", "schedule.decay_fraction", "data", "seed", "launcher.partition",
        "nokey", "model", "trainer.flop_count", "device"]
VALUES = st.one_of(
    st.integers(-5, 10_000).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "abc", "[1,2]", "{a: 1}", "null", "true", "rmsnorm", "wsd", "stdlib", "'x y'", "${oops}",
                     "\\n", "=", "1e400", "-0"]),
    st.text(max_size=12),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=3), st.text(max_size=20))
def test_any_override_is_a_config_or_a_one_line_config_error(pairs, raw):
    overrides = [f"{k}={v}" for k, v in pairs] + ([raw] if raw else [])
    try:
        compose_run(overrides)
    except ScaleflowError as exc:
        message = str(exc)
        assert message and "\n" not in message.strip()


def test_the_cli_never_prints_a_traceback():
    for args in (["train", "model.d_model=[", "x"], ["train", "=", "trainer.steps=abc"], ["sweep", "isoflop", "%%%"],
                 ["status"], ["train", "${oops}"], ["fit"]):
        out = run_cli(*args)
        assert out.returncode != 0 and "Traceback" not in out.stderr, (args, out.stderr)
