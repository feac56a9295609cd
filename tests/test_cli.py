import pytest

from conftest import run_cli


def test_train_as_documented(tmp_path):
    out = run_cli("train", f"run_dir={tmp_path}", "model.n_layer=1", "model.d_model=32", "model.n_head=2",
                    "trainer.steps=30")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "summary.json").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.d_modle=32", "d_modle"),
        ("model.d_model=30", "not divisible"),
        ("data=text", "data.paths"),
        ("trainer.tokens=10", "shorter than one step"),
        ("model.n_layer=abc", "n_layer"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, override, message):
    out = run_cli("train", f"run_dir={tmp_path}", override)
    assert out.returncode == 2
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


def test_missing_data_file(tmp_path):
    out = run_cli("train", f"run_dir={tmp_path}", "data=text", "data.paths=[/no/such/file.txt]")
    assert out.returncode == 2 and "does not exist" in out.stderr
