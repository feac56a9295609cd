"""An external trainer's runs: the command template, planning, the worker's handling of the
command (signals, exit codes, the contract), end to end through sweep, collect and fit.

The fake trainer below is a program of its own (standard library and scaleflow's vendorable
runlog.py only): its loss is a known Chinchilla law of the parameters and tokens it is given,
so a fit of its study must recover that law. tests/test_own_trainer.py runs a real PyTorch
trainer (examples/own_trainer/train.py).
"""

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from scaleflow.config import compose_study
from scaleflow.errors import ConfigError
from scaleflow.external.template import fill, render, split
from scaleflow.store import study_states
from scaleflow.sweep import plan_study, sweep

LAW = dict(E=1.7, A=300.0, alpha=0.35, B=900.0, beta=0.3)

FAKE = r'''
import argparse, json, os, signal, sys, time
sys.path.insert(0, os.environ["RUNLOG_DIR"])
import runlog

p = argparse.ArgumentParser()
p.add_argument("--params", type=float); p.add_argument("--tokens", type=float); p.add_argument("--steps", type=int)
p.add_argument("--mode", default="ok"); p.add_argument("--resume", action="store_true"); p.add_argument("--note", default="")
a = p.parse_args()
run_dir = os.environ["SCALEFLOW_RUN_DIR"]
with open(os.path.join(run_dir, "attempts.jsonl"), "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "resume_env": os.environ["SCALEFLOW_RESUME"],
                        "extra": os.environ.get("EXTRA"), "cwd": os.getcwd()}) + "\n")
if a.mode == "crash":
    sys.exit("out of memory in layer 3")
if a.mode == "nometrics":
    sys.exit(0)
stop = []
signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
signal.signal(signal.SIGUSR2, lambda s, f: stop.append(s))
ckpt = os.path.join(run_dir, "ckpt.json")
start = json.load(open(ckpt))["step"] if a.resume and os.path.exists(ckpt) else 0
run = runlog.open_run()
E, A, alpha, B, beta = %(law)s
for step in range(start + 1, a.steps + 1):
    tokens = a.tokens * step / a.steps
    loss = E + A / a.params ** alpha + B / tokens ** beta
    if a.mode == "diverge" and step > a.steps // 2:
        loss = float("nan")
    if step %% max(1, a.steps // 20) == 0 or step == a.steps or a.mode == "wait":
        run.log(step, tokens=tokens, train_loss=loss, val_loss=loss)
    if a.mode == "wait" and step == 3 and not a.resume:
        while not stop:
            signal.pause()
    if stop:
        json.dump({"step": step}, open(ckpt, "w"))
        print("stopped by", stop[0], flush=True)
        sys.exit(3)
print("number of parameters: %%d" %% a.params)
run.finish(params=int(a.params) + 7)
''' % {"law": tuple(LAW.values())}

STUDY = """
defaults:
  - config
  - study: isoflop
  - _self_
study:
  name: ext
  budgets: [BUDGETS]
  shapes:
    - {params: 2e5}
    - {params: 8e5}
    - {params: 3.2e6}
    - {params: 1.28e7}
    - {params: 5.12e7}
  min_steps: 10
trainer: {batch_size: 8}
model: {seq_len: 32}
command:
  template: TEMPLATE
  resume_args: --resume
  resume_if: ckpt.json
  env: {EXTRA: "id={run.id}"}
launcher: {max_parallel: 2}
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE)
    monkeypatch.setenv("RUNLOG_DIR", str(Path(__import__("scaleflow.runlog").runlog.__file__).parent))
    return script


def study(tmp_path, fake, mode="ok", budgets="1e12", extra=""):
    template = (f"{shlex.quote(sys.executable)} {fake} --params={{run.params}} --tokens={{run.tokens}} "
                f"--steps={{run.steps}} --mode={mode} {extra}")
    path = tmp_path / "ext.yaml"
    path.write_text(STUDY.replace("BUDGETS", budgets).replace("TEMPLATE", json.dumps(template)))
    return path


def test_a_value_is_always_one_argument_and_never_shell_syntax():
    words = split("train.py --name={data.paths} --lr={optim.lr} 'a b' {{literal}}")
    values = {"data.paths": ["x; rm -rf /", "$(reboot)"], "optim.lr": 3e-4}
    filled = [fill(w, values) for w in words]
    assert filled == ["train.py", "--name=x; rm -rf /,$(reboot)", "--lr=0.0003", "a b", "{literal}"]
    assert render(1e9) == "1000000000.0" and render(2.5e-3) == "0.0025" and render(True) == "True"
    assert render(1.0) == "1.0" and render(12) == "12"  # a float flag gets a float, a count an integer
    with pytest.raises(ConfigError, match=r"unknown placeholder \{run.nope\}"):
        fill("--x={run.nope}", values)


def test_the_plan_refuses_an_unknown_placeholder_and_shows_every_command(tmp_path, fake):
    path = study(tmp_path, fake, extra="--note={model.nope}")
    cfg = compose_study(str(path), [f"study_dir={tmp_path / 's'}"])
    with pytest.raises(ConfigError, match=r"unknown placeholder \{model.nope\}"):
        plan_study(cfg, "isoflop")
    result = run_cli("sweep", "isoflop", str(path), f"study_dir={tmp_path / 's'}", "--dry-run")
    assert result.returncode == 2 and "unknown placeholder {model.nope}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    ok = run_cli("sweep", "isoflop", str(study(tmp_path, fake)), f"study_dir={tmp_path / 's'}", "--dry-run")
    assert ok.returncode == 0, ok.stderr
    specs = plan_study(compose_study(str(path.with_name("ext.yaml")), [f"study_dir={tmp_path / 's'}"]), "isoflop")
    for spec in specs:  # the exact command of every run, with the planner's values in it
        line = next(line for line in ok.stdout.splitlines() if line.startswith(spec.run_id + ":"))
        assert f"--params={spec.params}" in line and f"--steps={spec.steps}" in line
        assert f"--tokens={spec.tokens}" in line


def test_external_runs_are_collected_and_fitted_to_the_law_they_follow(tmp_path, fake):
    path = study(tmp_path, fake, budgets="1e12, 4e12, 1.6e13")
    cfg = compose_study(str(path), [f"study_dir={tmp_path / 's'}"])
    report = sweep(cfg, "isoflop")
    assert report.outcome.finished == report.launched == len(report.specs) == 15
    attempt = json.loads((report.study_dir / report.specs[0].run_id / "attempts.jsonl").read_text().splitlines()[0])
    assert attempt["extra"] == f"id={report.specs[0].run_id}" and attempt["resume_env"] == "0"
    assert attempt["cwd"] == str(Path.cwd())  # where the study was planned
    fitted = run_cli("fit", str(report.study_dir), "--law", "approach3", "--bootstrap", "0", "--json")
    assert fitted.returncode == 0, fitted.stderr
    law = json.loads(fitted.stdout)["approach3"]
    assert law["alpha"] == pytest.approx(LAW["alpha"], rel=0.1) and law["beta"] == pytest.approx(LAW["beta"], rel=0.1)
    assert law["E"] == pytest.approx(LAW["E"], rel=0.05)


def test_the_trainers_parameter_count_wins_and_the_table_says_so(tmp_path, fake):
    report = sweep(compose_study(str(study(tmp_path, fake)), [f"study_dir={tmp_path / 's'}"]), "isoflop")
    collected = run_cli("collect", str(report.study_dir))
    assert collected.returncode == 0, collected.stderr
    runs = __import__("pandas").read_csv(report.study_dir / "runs.csv")
    assert set(runs["params_source"]) == {"trainer"}
    planned = {s.run_id: s.params for s in report.specs}
    assert all(row.params == planned[row.run_id] + 7 for row in runs.itertuples())


def wait_for(predicate, what: str, proc=None):
    """Poll the run's own progress (its files), never a fixed delay."""
    for _ in range(100000):
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended before {what}")
        time.sleep(0.01)
    raise AssertionError(f"never saw {what}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2])
def test_a_stop_signal_reaches_the_command_and_the_next_attempt_resumes(tmp_path, fake, signum):
    path = study(tmp_path, fake, mode="wait")
    cfg = compose_study(str(path), [f"study_dir={tmp_path / 's'}", "study.shapes=[{params: 2e5}]"])
    spec = plan_study(cfg, "isoflop")[0]
    from scaleflow.store import register

    run_dir = register(tmp_path / "s", [spec], "ext", "isoflop")[0]
    worker = subprocess.Popen([sys.executable, "-m", "scaleflow.worker", str(run_dir)])
    metrics = run_dir / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, "step 3", worker)
    worker.send_signal(signum)
    try:  # the bound only turns a signal that never reaches the trainer into a failure, not a hang
        assert worker.wait(timeout=120) == 3  # interrupted: resumable
    finally:
        worker.kill()
    assert f"stopped by {int(signum)}" in (run_dir / "stdout.log").read_text()
    assert study_states(tmp_path / "s")[0].state == "stopped"
    assert subprocess.run([sys.executable, "-m", "scaleflow.worker", str(run_dir)]).returncode == 0
    attempts = [json.loads(line) for line in (run_dir / "attempts.jsonl").read_text().splitlines()]
    assert [a["resume_env"] for a in attempts] == ["0", "1"] and "--resume" in attempts[1]["argv"]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, spec.steps + 1))  # resumed after step 3: nothing lost, nothing twice
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "done"


BAD = {
    "crash": "the command exited with code 1: out of memory in layer 3",
    "nometrics": "the command exited 0 but",
    "diverge": None,
}


@pytest.mark.parametrize("mode", sorted(BAD))
def test_a_bad_command_fails_its_own_run_with_the_reason_and_nothing_else(tmp_path, fake, mode):
    one = [f"study_dir={tmp_path / 's'}", "study.shapes=[{params: 2e5}, {params: 8e5}]"]
    good = sweep(compose_study(str(study(tmp_path, fake)), one), "isoflop")
    assert good.outcome.finished == len(good.specs) == 2
    bad_file = study(tmp_path, fake, mode=mode, budgets="1e12, 2e12")
    report = sweep(compose_study(str(bad_file), one + ["study.shapes=[{params: 8e5}]"]), "isoflop")
    states = {s.run_dir.name: s for s in study_states(tmp_path / "s")}
    new = [s.run_id for s in report.specs if s.run_id not in {g.run_id for g in good.specs}]
    for run in good.specs:  # the study's finished runs are untouched
        assert states[run.run_id].state == "done"
    for run_id in new:
        summary = json.loads((tmp_path / "s" / run_id / "summary.json").read_text())
        if BAD[mode] is None:
            assert summary["status"] == "diverged" and states[run_id].state == "diverged"
        else:
            assert states[run_id].state == "failed" and summary["error"].startswith(BAD[mode])
            assert "\n" not in summary["error"]
    status = run_cli("status", str(tmp_path / "s"))
    assert status.returncode == (1 if BAD[mode] else 0)  # status exits 1 while a run is failed
    if BAD[mode]:
        assert f"{new[0]} failed: {BAD[mode]}" in status.stdout


def test_a_command_that_is_not_found_fails_its_runs_with_that_reason(tmp_path, fake):
    path = tmp_path / "nf.yaml"
    path.write_text(STUDY.replace("BUDGETS", "1e12").replace("TEMPLATE", "no-such-trainer-xyz --steps={run.steps}"))
    report = sweep(compose_study(str(path), [f"study_dir={tmp_path / 's'}"]), "isoflop")
    assert len(report.outcome.failed) == len(report.specs)
    for spec in report.specs:
        summary = json.loads((report.study_dir / spec.run_id / "summary.json").read_text())
        assert summary["error"] == "command not found: no-such-trainer-xyz"


def test_metrics_with_the_wrong_keys_or_a_log_with_no_match_fail_naming_what_is_missing(tmp_path, fake):
    path = study(tmp_path, fake)
    base = [f"study_dir={tmp_path / 's'}", "study.shapes=[{params: 2e5}]"]
    wrong_keys = base + ["command.metrics.format=jsonl", "command.metrics.path=metrics.jsonl",
                         "+command.metrics.keys.val_loss=eval_loss", "+command.metrics.keys.train_loss=eval_loss"]
    report = sweep(compose_study(str(path), wrong_keys), "isoflop")
    error = json.loads((report.study_dir / report.specs[0].run_id / "summary.json").read_text())["error"]
    assert "eval_loss" in error and "\n" not in error
    no_match = base + ["command.metrics.format=regex", "command.metrics.regex='final loss (?P<val_loss>[0-9.]+)'"]
    report = sweep(compose_study(str(path), no_match), "isoflop")
    error = json.loads((report.study_dir / report.specs[0].run_id / "summary.json").read_text())["error"]
    assert "regex" in error and "\n" not in error


def test_model_counts_without_a_command_are_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(STUDY[:STUDY.index("command:")].replace("BUDGETS", "1e12"))
    with pytest.raises(ConfigError, match="model.params describes a model of an external trainer"):
        plan_study(compose_study(str(path)), "isoflop")
    branched = tmp_path / "b.yaml"
    branched.write_text(path.read_text().replace("study: isoflop", "study: decay_branches").replace(
        "  budgets: [1e12]", "  branch_tokens: [1e6]") + "command: {template: train.py}\n")
    with pytest.raises(ConfigError, match="cannot be branched"):
        plan_study(compose_study(str(branched)), "decay_branches")


def test_a_run_whose_trainer_counts_its_steps_otherwise_is_not_launched_again(tmp_path, fake):
    path = study(tmp_path, fake)
    path.write_text(path.read_text().replace("--steps={run.steps}", "--steps=7"))  # 7 steps, whatever the plan
    cfg = compose_study(str(path), [f"study_dir={tmp_path / 's'}", "study.shapes=[{params: 2e5}]"])
    first = sweep(cfg, "isoflop")
    assert first.outcome.finished == 1
    assert json.loads((first.study_dir / first.specs[0].run_id / "summary.json").read_text())["steps"] == 7 < first.specs[0].steps
    again = sweep(cfg, "isoflop")
    assert again.launched == 0 and again.skipped_done == 1
