"""The run contract's writer (scaleflow/runlog.py) and the readers of an external trainer's
results (scaleflow/external/readers.py): every format, and every error a user can meet."""

from __future__ import annotations

import ast
import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from scaleflow import runlog
from scaleflow.config.schema import MetricsSourceConfig
from scaleflow.errors import ScaleflowError
from scaleflow.external.readers import ContractError, TrainerReport, parse_number, read_report

RUNLOG = Path(runlog.__file__)


def report(run_dir: Path, final_step=None, **metrics) -> TrainerReport:
    """read_report over a composed (DictConfig) command.metrics, as the worker passes it."""
    cfg = OmegaConf.structured(MetricsSourceConfig(**metrics))
    return read_report(run_dir, cfg, run_dir / "stdout.log", final_step=final_step)


def error(run_dir: Path, **metrics) -> str:
    with pytest.raises(ContractError) as info:
        report(run_dir, **metrics)
    message = str(info.value)
    assert "\n" not in message
    return message


def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as every other language's parser does."""
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------- runlog


def test_log_and_finish_write_the_contract_files(tmp_path):
    run = runlog.open_run(tmp_path / "run")
    run.log(0, val_loss=5.5)
    run.log(10, tokens=1280, train_loss=4.25, lr=1e-3)
    run.finish(params=123456, val_loss=3.5)
    lines = (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    assert [strict_json(x) for x in lines] == [{"step": 0, "val_loss": 5.5},
                                               {"step": 10, "tokens": 1280, "train_loss": 4.25, "lr": 1e-3}]
    result = strict_json((tmp_path / "run/result.json").read_text())
    assert result == {"contract": runlog.CONTRACT_VERSION, "status": "done", "params": 123456, "val_loss": 3.5}
    assert runlog.CONTRACT_VERSION == 1
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["metrics.jsonl", "result.json"]


def test_nonfinite_values_stay_valid_json_and_read_back(tmp_path):
    run = runlog.open_run(tmp_path)
    run.log(5, train_loss=float("nan"), val_loss=float("inf"), grad_norm=-math.inf, tokens=10)
    run.finish("diverged", val_loss=float("nan"))
    line = strict_json((tmp_path / "metrics.jsonl").read_text())
    assert line == {"step": 5, "train_loss": None, "val_loss": None, "grad_norm": None, "tokens": 10,
                    "nonfinite": {"train_loss": "nan", "val_loss": "inf", "grad_norm": "-inf"}}
    [back] = runlog.read_lines(tmp_path / "metrics.jsonl")
    assert math.isnan(back["train_loss"]) and back["val_loss"] == math.inf and back["grad_norm"] == -math.inf
    assert "nonfinite" not in back and back["tokens"] == 10
    assert strict_json((tmp_path / "result.json").read_text())["val_loss"] is None
    assert math.isnan(runlog.read_json(tmp_path / "result.json")["val_loss"])


def test_log_takes_numpy_scalars_and_checks_its_arguments(tmp_path):
    np = pytest.importorskip("numpy")
    run = runlog.open_run(tmp_path)
    run.log(np.int64(3), train_loss=np.float32(2.5), tokens=np.int64(96))
    assert runlog.read_lines(run.metrics_path) == [{"step": 3, "train_loss": 2.5, "tokens": 96}]
    with pytest.raises(TypeError, match="step must be an integer"):
        run.log(1.5, train_loss=1.0)
    with pytest.raises(ValueError, match="step must be >= 0"):
        run.log(-1, train_loss=1.0)
    with pytest.raises(ValueError, match="reserved"):
        run.log(1, nonfinite=1)
    with pytest.raises(ValueError, match="status must be one of done, diverged"):
        run.finish("failed")
    assert len(runlog.read_lines(run.metrics_path)) == 1 and not Path(run.result_path).exists()


def test_open_run_uses_the_environment_or_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALEFLOW_RUN_DIR", str(tmp_path / "from_env"))
    assert runlog.open_run().run_dir == str(tmp_path / "from_env")
    assert (tmp_path / "from_env").is_dir()
    assert runlog.open_run(tmp_path / "given").run_dir == str(tmp_path / "given")
    monkeypatch.delenv("SCALEFLOW_RUN_DIR")
    with pytest.raises(ValueError, match=r"SCALEFLOW_RUN_DIR"):
        runlog.open_run()


def test_a_torn_last_line_is_skipped_and_the_next_append_starts_a_new_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    runlog.append_line(path, {"step": 1, "train_loss": 3.0})
    with open(path, "a") as f:
        f.write('{"step": 2, "train_lo')  # a kill mid-write
    assert runlog.read_lines(path) == [{"step": 1, "train_loss": 3.0}]
    runlog.append_line(path, {"step": 2, "train_loss": 2.0})
    assert runlog.read_lines(path) == [{"step": 1, "train_loss": 3.0}, {"step": 2, "train_loss": 2.0}]
    path.write_text('{"step": 1, "train_loss": 3.0}\n\n[1, 2]\n"text"\n{"step": 2, "train_loss": 2.0}\n\n')
    assert [line["step"] for line in runlog.read_lines(path)] == [1, 2]
    assert runlog.read_lines(tmp_path / "missing.jsonl") == []


_WRITER = """
import sys
sys.path.insert(0, sys.argv[1])
import runlog
run = runlog.open_run(sys.argv[2])
step = 0
while True:
    run.log(step, train_loss=1.0 / (step + 1), padding="x" * 200_000)
    step += 1
"""


def test_a_writer_killed_mid_write_leaves_only_whole_lines_before_a_torn_one(tmp_path):
    """SIGKILL a trainer logging large lines in a loop: every line but possibly the last is
    whole, and the reader gives the steps 0..n-1 in order."""
    shutil.copy(RUNLOG, tmp_path / "runlog.py")
    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WRITER, str(tmp_path), str(tmp_path / "run")])
    path = tmp_path / "run/metrics.jsonl"
    deadline = time.time() + 10
    while time.time() < deadline and (not path.exists() or path.stat().st_size < 2_000_000):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    raw = path.read_bytes().split(b"\n")
    whole = raw[:-1]
    assert len(whole) >= 5 and all(json.loads(x)["step"] == i for i, x in enumerate(whole))
    steps = [line["step"] for line in runlog.read_lines(path)]
    assert steps == list(range(len(whole)))
    assert [line["step"] for line in report(tmp_path / "run", final_step=0).lines] == steps


def test_runlog_is_dependency_free(tmp_path):
    """Copied alone into a folder, it works under `python -I -S` (no site-packages, no
    scaleflow), and it imports nothing but the standard library."""
    shutil.copy(RUNLOG, tmp_path / "runlog.py")
    code = ("import sys; sys.path.insert(0, sys.argv[2]); import runlog; run = runlog.open_run(sys.argv[1]); "
            "run.log(1, train_loss=float('nan')); run.finish(params=10); print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('scaleflow', 'numpy', 'torch', 'omegaconf')))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(tmp_path / "run"), str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert strict_json((tmp_path / "run/result.json").read_text())["params"] == 10
    tree = ast.parse(RUNLOG.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported and imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_every_line_and_the_result_are_fsynced(tmp_path, monkeypatch):
    synced, real, proc = [], os.fsync, os.path.exists("/proc/self/fd")

    def fsync(fd):
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) if proc else fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    run = runlog.open_run(tmp_path)
    run.log(1, train_loss=3.0)
    run.log(2, train_loss=2.0)
    assert len(synced) == 2
    run.finish(val_loss=2.0)
    assert len(synced) >= 3  # the temporary result file (and, on POSIX, its folder)
    if proc:
        assert synced[:2] == ["metrics.jsonl", "metrics.jsonl"] and synced[2].startswith(".result.json.")


def test_append_line_raises_oserror_unchanged(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError) as info:
        runlog.append_line(tmp_path / "metrics.jsonl", {"step": 1})
    assert info.value.errno == errno.ENOSPC and type(info.value) is OSError


def test_write_json_atomic_keeps_the_previous_file_when_it_fails(tmp_path, monkeypatch):
    path = tmp_path / "result.json"
    runlog.write_json_atomic(path, {"status": "done", "val_loss": 3.0})

    def broken(src, dst):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError) as info:
        runlog.write_json_atomic(path, {"status": "done", "val_loss": 2.0})
    assert info.value.errno == errno.EIO
    assert runlog.read_json(path) == {"status": "done", "val_loss": 3.0}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary left behind


# --------------------------------------------------------------------------- contract


def test_contract_reads_metrics_params_and_status(tmp_path):
    run = runlog.open_run(tmp_path)
    run.log(0, tokens=0, val_loss=5.0)
    run.log(10, tokens=640, train_loss=4.0)
    run.log(10, val_loss=3.9)  # an evaluation logged on its own line: merged into step 10
    run.log(20, tokens=1280, train_loss=float("nan"))
    run.finish("diverged", params="124.44M")
    r = report(tmp_path)
    assert r.lines[:2] == [{"step": 0, "tokens": 0.0, "val_loss": 5.0},
                           {"step": 10, "tokens": 640.0, "train_loss": 4.0, "val_loss": 3.9}]
    assert r.lines[2]["step"] == 20 and math.isnan(r.lines[2]["train_loss"])
    assert r.params == 124_440_000 and r.status == "diverged"
    assert r.source == "metrics.jsonl + result.json"


def test_contract_final_val_loss_from_result_json(tmp_path):
    run = runlog.open_run(tmp_path)
    run.log(50, train_loss=3.0)
    run.log(100, train_loss=2.5)
    run.finish(val_loss=2.7)
    r = report(tmp_path)
    assert r.lines == [{"step": 50, "train_loss": 3.0}, {"step": 100, "train_loss": 2.5, "val_loss": 2.7}]
    assert r.status is None and r.params is None
    # a result.json alone is enough: its val_loss goes at the run's planned steps
    (tmp_path / "metrics.jsonl").unlink()
    runlog.write_json_atomic(tmp_path / "run_values.json", {"run.steps": 400})
    assert report(tmp_path).lines == [{"step": 400, "val_loss": 2.7}]


def test_contract_errors(tmp_path):
    assert error(tmp_path) == "metrics.jsonl is missing: the trainer wrote no metrics (docs/contract.md)"
    runlog.append_line(tmp_path / "metrics.jsonl", {"step": 1, "tokens": 10})
    assert error(tmp_path) == ("metrics.jsonl has no key 'val_loss' (keys: step, tokens); see docs/contract.md")
    runlog.append_line(tmp_path / "metrics.jsonl", {"step": 2, "val_loss": "n/a"})
    assert error(tmp_path) == "metrics.jsonl has a non-number in key 'val_loss': 'n/a'"
    (tmp_path / "metrics.jsonl").write_text('{"val_loss": 3.0}\n')
    assert error(tmp_path) == "metrics.jsonl has no key 'step' (keys: val_loss); see docs/contract.md"
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "val_loss": 3.0}\n')
    runlog.write_json_atomic(tmp_path / "result.json", {"contract": 2, "status": "done"})
    assert "contract version 2" in error(tmp_path)
    runlog.write_json_atomic(tmp_path / "result.json", {"contract": 1, "status": "crashed"})
    assert error(tmp_path) == "result.json has status 'crashed', not one of done, diverged (docs/contract.md)"
    (tmp_path / "result.json").write_text('{"contract": 1, "sta')
    assert error(tmp_path) == "result.json is not a JSON object (docs/contract.md)"


def test_a_torn_last_metrics_line_is_skipped_by_the_reader(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "train_loss": 3.0}\n{"step": 2, "train_loss": 2.')
    assert report(tmp_path).lines == [{"step": 1, "train_loss": 3.0}]


# --------------------------------------------------------------------------- trainers' own files


def test_jsonl_with_key_mapping_and_nested_keys(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs/train.jsonl").write_text(
        '{"event": "start"}\n'
        '{"iter": 100, "loss": 3.2, "seen": 12800, "n_params": "1.2B"}\n'
        '{"iter": 100, "eval": {"loss": 3.3}}\n'
        '{"iter": 200, "loss": 3.0}\n'
        '{"iter": 200, "loss": 2.9}\n'  # logged again (a resumed trainer): the later value wins
        '{"iter": 300, "lo')
    r = report(tmp_path, format="jsonl", path="logs/*.jsonl",
               keys={"step": "iter", "train_loss": "loss", "val_loss": "eval.loss", "tokens": "seen",
                     "params": "n_params"})
    assert r.lines == [{"step": 100, "train_loss": 3.2, "tokens": 12800.0, "val_loss": 3.3},
                       {"step": 200, "train_loss": 2.9}]
    assert r.params == 1_200_000_000 and r.status is None and r.source == "logs/train.jsonl"
    message = error(tmp_path, format="jsonl", path="logs/train.jsonl", keys={"step": "iter", "val_loss": "eval_loss"})
    assert message == ("logs/train.jsonl has no key 'eval_loss' (keys: event, iter, loss, seen, n_params, eval); "
                       "map it with command.metrics.keys")


def test_csv_with_bom_blank_lines_empty_cells_and_mapping(tmp_path):
    (tmp_path / "log.csv").write_bytes("\ufeffiter, loss ,val\n1,3.5,\n2,3.4,3.45\n\n3,3.3,\n\n".encode())
    r = report(tmp_path, format="csv", path="log.csv", keys={"step": "iter", "train_loss": "loss", "val_loss": "val"})
    assert r.lines == [{"step": 1, "train_loss": 3.5}, {"step": 2, "train_loss": 3.4, "val_loss": 3.45},
                       {"step": 3, "train_loss": 3.3}]
    assert r.source == "log.csv" and r.params is None
    (tmp_path / "tab.tsv").write_text("step\ttrain_loss\n1\t2.5\n2\t2.4\n")
    assert report(tmp_path, format="csv", path="tab.tsv").lines[-1] == {"step": 2, "train_loss": 2.4}
    (tmp_path / "torn.csv").write_text("step,train_loss,val_loss\n1,3.5,3.6\n2,3.")
    assert report(tmp_path, format="csv", path="torn.csv").lines == [{"step": 1, "train_loss": 3.5, "val_loss": 3.6}]


def test_csv_errors_name_the_file_and_the_column(tmp_path):
    (tmp_path / "log.csv").write_text("iter,loss\n1,3.5\n2,abc\n")
    assert error(tmp_path, format="csv", path="log.csv", keys={"step": "iter"}) == (
        "log.csv has no column 'val_loss' (columns: iter, loss); map it with command.metrics.keys")
    assert error(tmp_path, format="csv", path="log.csv") == (
        "log.csv has no column 'step' (columns: iter, loss); map it with command.metrics.keys")
    assert error(tmp_path, format="csv", path="log.csv", keys={"step": "iter", "train_loss": "loss"}) == (
        "log.csv has a non-number in column 'loss': 'abc'")
    (tmp_path / "log.csv").write_text("step,val_loss\n1,\n2,\n")
    assert error(tmp_path, format="csv", path="log.csv") == (
        "log.csv holds no loss value: every 'val_loss' and 'train_loss' is empty")
    (tmp_path / "log.csv").write_text("step,val_loss\n1.5,3.0\n")
    assert error(tmp_path, format="csv", path="log.csv") == (
        "log.csv has a step that is not a whole number in column 'step': '1.5'")
    (tmp_path / "empty.csv").write_text("")
    assert error(tmp_path, format="csv", path="empty.csv") == "empty.csv is empty: no header row"


def test_tensorboard_tags_merge_by_step(tmp_path):
    SummaryWriter = pytest.importorskip("torch.utils.tensorboard").SummaryWriter
    writer = SummaryWriter(str(tmp_path / "tb"))
    for step in (10, 20, 30):
        writer.add_scalar("train/loss", 4.0 - step / 100, step)
        writer.add_scalar("lr", 1e-3, step)
    writer.add_scalar("eval/loss", 3.5, 20)
    writer.add_scalar("model/params", 2.5e6, 0)
    writer.close()
    r = report(tmp_path, format="tensorboard", path="tb",
               keys={"train_loss": "train/loss", "val_loss": "eval/loss", "params": "model/params"})
    assert [line["step"] for line in r.lines] == [10, 20, 30]
    assert r.lines[1]["val_loss"] == pytest.approx(3.5) and r.lines[1]["train_loss"] == pytest.approx(3.8)
    assert "val_loss" not in r.lines[0] and r.params == 2_500_000 and r.source == "tb/ (tensorboard)"
    message = error(tmp_path, format="tensorboard", path="tb", keys={"train_loss": "loss"})
    assert message.startswith("tb/ has no tag 'loss' (tags: ") and "train/loss" in message
    assert message.endswith("; map it with command.metrics.keys")
    # default: event files anywhere under the run directory, tags under scaleflow's own names
    (tmp_path / "empty").mkdir()
    assert error(tmp_path / "empty", format="tensorboard") == (
        "no TensorBoard event files under the run directory (command.metrics.path)")
    assert "has no tag 'val_loss'" in error(tmp_path, format="tensorboard")
    for sub, loss in (("train", 3.0), ("validation", 3.2)):  # Keras: one tag, a folder each
        with SummaryWriter(str(tmp_path / "keras" / sub)) as w:
            w.add_scalar("val_loss", loss, 5)
            w.add_scalar("train_loss", loss + 1, 5)
    assert error(tmp_path / "keras", format="tensorboard") == (
        "tag 'train_loss' is in several folders under the run directory (train, validation); "
        "map it with command.metrics.keys as FOLDER/train_loss")
    r = report(tmp_path / "keras", format="tensorboard",
               keys={"val_loss": "validation/val_loss", "train_loss": "train/train_loss"})
    assert r.lines == [{"step": 5, "val_loss": pytest.approx(3.2), "train_loss": pytest.approx(4.0)}]


def test_json_final_object(tmp_path):
    (tmp_path / "final.json").write_text(json.dumps({"eval_loss": 3.2, "n_params": 1e6, "step": 1000}))
    keys = {"val_loss": "eval_loss", "params": "n_params"}
    r = report(tmp_path, format="json", path="final.json", keys=keys)
    assert r.lines == [{"step": 1000, "val_loss": 3.2}] and r.params == 1_000_000
    (tmp_path / "final.json").write_text(json.dumps({"eval_loss": 3.2}))
    assert report(tmp_path, format="json", path="final.json", keys=keys | {"params": "eval_loss"},
                  final_step=77).lines == [{"step": 77, "val_loss": 3.2}]
    assert "final values without a step" in error(tmp_path, format="json", path="final.json",
                                                  keys={"val_loss": "eval_loss"})
    runlog.write_json_atomic(tmp_path / "run_values.json", {"run.steps": 500, "run.tokens": 64000})
    assert report(tmp_path, format="json", path="final.json", keys={"val_loss": "eval_loss"}).lines == [
        {"step": 500, "val_loss": 3.2}]
    (tmp_path / "final.json").write_text("[3.2]")
    assert error(tmp_path, format="json", path="final.json") == "final.json is not a JSON object"


# --------------------------------------------------------------------------- stdout


STDOUT = """\
loading data
model has 124.44M parameters
step 10 | loss 3.50 | tokens 1280
step 20 | loss 3.25 | tokens 2560\r step 20 | val 3.30
step 30 | loss nan | tokens 3840
done
"""


def test_regex_over_stdout(tmp_path):
    (tmp_path / "stdout.log").write_text(STDOUT)
    regex = r"step (?P<step>\d+) \| (?:loss (?P<train_loss>\S+) \| tokens (?P<tokens>\d+)|val (?P<val_loss>\S+))"
    r = report(tmp_path, format="regex", regex=regex, params_regex=r"has (?P<params>\S+) parameters")
    assert r.lines[:2] == [{"step": 10, "train_loss": 3.5, "tokens": 1280.0},
                           {"step": 20, "train_loss": 3.25, "tokens": 2560.0, "val_loss": 3.3}]
    assert math.isnan(r.lines[2]["train_loss"]) and r.params == 124_440_000
    assert r.source == "stdout.log (regex)" and r.status is None
    # no step group: the last value of each group, at the final step
    r = report(tmp_path, format="regex", regex=r"loss (?P<train_loss>[\d.]+)", final_step=30)
    assert r.lines == [{"step": 30, "train_loss": 3.25}]


def test_regex_errors(tmp_path):
    (tmp_path / "stdout.log").write_text(STDOUT)
    assert error(tmp_path, format="regex", regex=r"eval (?P<val_loss>\S+)") == (
        "stdout.log has no line matching command.metrics.regex")
    assert error(tmp_path, format="regex", regex=r"step (?P<step>\d+)") == (
        "command.metrics.regex has no group val_loss or train_loss")
    assert error(tmp_path, format="regex", regex=r"(?P<loss>\S+)") == (
        "command.metrics.regex has group 'loss', not one of step, tokens, train_loss, val_loss, params")
    assert error(tmp_path, format="regex", regex=r"(?P<val_loss>") .startswith(
        "command.metrics.regex is not a valid regular expression")
    assert error(tmp_path, format="regex") == "command.metrics.format=regex needs command.metrics.regex"
    (tmp_path / "stdout.log").unlink()
    assert error(tmp_path, format="regex", regex=r"(?P<val_loss>\S+)") == (
        "stdout.log is missing: the trainer's stdout was not kept")


def test_params_priority_and_params_regex_errors(tmp_path):
    (tmp_path / "stdout.log").write_text("n_params: 7e9\nn_params: 350k\n")
    (tmp_path / "log.csv").write_text("step,train_loss,params\n1,3.0,\n2,2.9,1.5M\n")
    assert report(tmp_path, format="csv", path="log.csv", params_regex=r"n_params: (?P<params>\S+)").params == 1_500_000
    (tmp_path / "log.csv").write_text("step,train_loss\n1,3.0\n")
    assert report(tmp_path, format="csv", path="log.csv", params_regex=r"n_params: (?P<params>\S+)").params == 350_000
    assert error(tmp_path, format="csv", path="log.csv", params_regex=r"weights: (?P<params>\S+)") == (
        "stdout.log has no line matching command.metrics.params_regex")
    assert error(tmp_path, format="csv", path="log.csv", params_regex=r"n_params: (\S+)") == (
        "command.metrics.params_regex has no group named params: (?P<params>...)")
    (tmp_path / "stdout.log").write_text("n_params: lots\n")
    assert error(tmp_path, format="csv", path="log.csv", params_regex=r"n_params: (?P<params>\S+)") == (
        "stdout.log (params_regex) has a parameter count that is not a positive number: 'lots'")
    runlog.append_line(tmp_path / "metrics.jsonl", {"step": 1, "train_loss": 3.0, "params": 10})
    runlog.write_json_atomic(tmp_path / "result.json", {"contract": 1, "status": "done", "params": 20})
    assert report(tmp_path, params_regex=r"n_params: (?P<params>\S+)").params == 20  # result.json wins


@pytest.mark.parametrize("text, value", [
    ("124.44M", 124.44e6), ("1.2B", 1.2e9), ("350k", 350e3), ("350K", 350e3), ("7e9", 7e9),
    ("2G", 2e9), ("1.5T", 1.5e12), ("3 M", 3e6), ("124,439,808", 124439808), (" 3.25 ", 3.25),
    ("-0.5", -0.5), (12, 12.0), (2.5, 2.5),
])
def test_parse_number(text, value):
    assert parse_number(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["abc", "", "3,2", "1.2X", "M", True, None, [1]])
def test_parse_number_refuses(text):
    with pytest.raises(ValueError):
        parse_number(text)


def test_parse_number_keeps_nonfinite_losses():
    assert math.isnan(parse_number("nan")) and parse_number("inf") == math.inf


# --------------------------------------------------------------------------- paths and config


def test_path_globs_must_match_one_file_and_absolute_paths_work(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    assert error(run_dir, format="csv", path="logs/*.csv") == "no file matches command.metrics.path='logs/*.csv'"
    (run_dir / "logs/a.csv").write_text("step,val_loss\n1,3.0\n")
    assert report(run_dir, format="csv", path="logs/*.csv").lines == [{"step": 1, "val_loss": 3.0}]
    (run_dir / "logs/b.csv").write_text("step,val_loss\n1,3.0\n")
    assert error(run_dir, format="csv", path="logs/*.csv") == (
        "command.metrics.path='logs/*.csv' matches 2: logs/a.csv, logs/b.csv; make it match one")
    assert error(run_dir, format="csv", path="logs/c.csv") == (
        "logs/c.csv is missing: the trainer wrote no metrics at command.metrics.path='logs/c.csv'")
    assert error(run_dir, format="csv") == (
        "command.metrics.format=csv needs command.metrics.path: the trainer's log file")
    assert "is a folder" in error(run_dir, format="csv", path="logs")
    elsewhere = tmp_path / "elsewhere.csv"
    elsewhere.write_text("step,train_loss\n5,2.0\n")
    r = report(run_dir, format="csv", path=str(elsewhere))
    assert r.lines == [{"step": 5, "train_loss": 2.0}] and r.source == str(elsewhere)


def test_config_errors_and_both_config_forms(tmp_path):
    (tmp_path / "log.csv").write_text("step,val_loss\n1,3.0\n")
    assert error(tmp_path, format="yaml", path="log.csv").startswith("command.metrics.format='yaml' is not one of")
    assert error(tmp_path, format="csv", path="log.csv", keys={"loss": "val_loss"}) == (
        "command.metrics.keys has 'loss', not one of step, tokens, train_loss, val_loss, params")
    dataclass_form = read_report(tmp_path, MetricsSourceConfig(format="csv", path="log.csv"), tmp_path / "stdout.log")
    assert dataclass_form == report(tmp_path, format="csv", path="log.csv")
    assert issubclass(ContractError, ScaleflowError)
