"""Run one external trainer's command for a run directory, as a job runs scaleflow's trainer.

The worker calls `run_command` under the run's lock. It fills the command in (template.py),
starts it in its own session with the run's environment, keeps its stdout and stderr in the
run directory, forwards SIGTERM and SIGUSR2 (and Ctrl-C, as SIGTERM) to it, and maps how it
ended to a state:
- it ended after a forwarded stop signal: interrupted (resumable; exit 3 from the worker);
- it exited non-zero, was killed, or could not start: failed, with the reason in summary.json;
- it exited 0: its results are read (readers.py); a run that did not meet the contract is
  failed with what is missing, otherwise done or diverged, with a summary like our trainer's.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

from scaleflow.external.readers import VALUES_FILE, ContractError, TrainerReport, read_report
from scaleflow.external.template import command_argv, command_env, run_values
from scaleflow.files import write_json, write_text
from scaleflow.run_files import diverges, json_line, summary_fields
from scaleflow.trackers import log_lines

STDOUT, STDERR = "stdout.log", "stderr.log"
_FORWARDED = {signal.SIGTERM: signal.SIGTERM, signal.SIGUSR2: signal.SIGUSR2, signal.SIGINT: signal.SIGTERM}


def run_command(cfg: Any, run_dir: Path, flag: Any, fresh: bool = False) -> dict:
    """Run the run's command to its end; returns its summary (status interrupted when it was
    stopped by a signal: nothing final is written then). `flag`: the worker's StopFlag."""
    from scaleflow.config import run_id
    from scaleflow.plan import plan_run

    run_dir = Path(run_dir).resolve()
    plan, this_id = plan_run(cfg), run_id(cfg)
    values = run_values(cfg, plan, run_dir, this_id, gpus=_visible_gpus())
    resume = not fresh and _resumable(cfg.command, run_dir)
    argv = command_argv(cfg.command, values, resume)
    write_json(run_dir / VALUES_FILE, values)
    env = {**os.environ, **command_env(cfg.command, values), "SCALEFLOW_RUN_DIR": str(run_dir),
           "SCALEFLOW_RUN_CONFIG": str(run_dir / VALUES_FILE), "SCALEFLOW_RESUME": "1" if resume else "0"}
    cwd = cfg.command.cwd or os.getcwd()
    print(f"running {shlex.join(argv)} (cwd {cwd}, resume={resume})", flush=True)
    started = time.time()
    code, reason = _run(argv, cwd, env, run_dir, flag)
    interrupted = {"status": "interrupted", "run_id": this_id, "step": None}
    if flag() and code != 0:
        return interrupted
    if reason is None and code != 0:
        reason = f"the command exited with code {code}{_last_line(run_dir / STDERR)}"
    if reason is None:  # exit 0, perhaps just after a stop signal: finished if its results say so
        try:
            report = read_report(run_dir, cfg.command.metrics, run_dir / STDOUT)
            if flag() and report.lines[-1]["step"] < plan.steps:
                return interrupted
            return _finish(cfg, plan, this_id, run_dir, report, time.time() - started)
        except ContractError as exc:
            if flag():
                return interrupted
            reason = f"the command exited 0 but {exc}"
    return _fail(run_dir, this_id, reason)


def _run(argv: list[str], cwd: str, env: dict, run_dir: Path, flag: Any) -> tuple[Optional[int], Optional[str]]:
    """(exit code, None), or (None, why it could not run)."""
    with open(run_dir / STDOUT, "ab") as out, open(run_dir / STDERR, "ab") as err:
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True)
        except FileNotFoundError:
            missing = argv[0] if not Path(cwd).joinpath(argv[0]).exists() else cwd
            return None, f"command not found: {missing}"
        except PermissionError:
            return None, f"the command {argv[0]} is not executable"
        with _forwarding(flag, proc):
            code = proc.wait()
    if code < 0 and not flag():
        return None, f"the command was killed by {signal.Signals(-code).name}{_last_line(run_dir / STDERR)}"
    return code, None


@contextmanager
def _forwarding(flag: Any, proc: subprocess.Popen):
    """While the command runs, a stop signal sets the worker's flag and reaches the command."""
    def handle(signum, frame):
        flag.signal = signum
        if proc.poll() is None:
            proc.send_signal(_FORWARDED[signum])

    previous = {s: signal.signal(s, handle) for s in _FORWARDED}
    try:
        if flag() and proc.poll() is None:  # a signal came before there was a process to pass it to
            proc.send_signal(_FORWARDED.get(flag.signal, signal.SIGTERM))
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _resumable(command: Any, run_dir: Path) -> bool:
    if command.resume_if:
        return any(run_dir.glob(command.resume_if))
    return (run_dir / STDOUT).exists()


def _visible_gpus() -> int:
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return len([d for d in devices.split(",") if d.strip()]) if devices else 0


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f": {lines[-1][:300]}" if lines else ""


def _fail(run_dir: Path, this_id: str, reason: str) -> dict:
    summary = {"status": "failed", "run_id": this_id, "error": reason}
    write_json(run_dir / "summary.json", summary)
    print(f"error: {reason}", flush=True)
    return summary


def _finish(cfg: Any, plan: Any, this_id: str, run_dir: Path, report: TrainerReport, wall: float) -> dict:
    """Normalised metrics.jsonl (tokens and FLOPs filled in) and summary.json of a run whose
    command met the contract; diverged as our trainer judges it, or as the trainer said."""
    by_step = {line["step"]: line for line in report.lines}  # a resumed trainer logs its last steps again: the later line wins
    lines = [_complete(by_step[step], plan) for step in sorted(by_step)]
    if cfg.command.metrics.format != "contract":
        write_text(run_dir / "metrics.jsonl", "".join(json_line(line) for line in lines))
    diverged_step = _diverged_step(lines, cfg.trainer.divergence_factor)
    status = "diverged" if report.status == "diverged" or diverged_step is not None else "done"
    if status == "diverged" and diverged_step is None:
        diverged_step = lines[-1]["step"]
    tokens = lines[-1].get("tokens")
    summary = summary_fields(cfg, plan, lines, status, diverged_step, this_id, wall, tokens_per_byte=None,
                             tokens=tokens)
    if report.params is not None:
        summary.update(params=int(report.params), params_source="trainer")
    if summary["val_loss"] is None and status == "done":
        train = [line["train_loss"] for line in lines if line.get("train_loss") is not None]
        summary.update(final_train_loss=train[-1] if train else None, loss_source="train")
    summary["source"] = report.source
    write_json(run_dir / "summary.json", summary)
    log_lines(cfg, run_dir, plan, this_id, lines, summary)  # tracker=...: never fails the run
    return summary


def _complete(line: dict, plan: Any) -> dict:
    out = dict(line)
    if out.get("tokens") is None:
        out["tokens"] = out["step"] * plan.tokens_per_step
    out["flops"] = out["tokens"] * plan.flops_per_token
    return out


def _diverged_step(lines: list[dict], factor: float) -> Optional[int]:
    """The first step whose loss is not finite or above `factor` x the first train loss."""
    first = next((line["train_loss"] for line in lines if line.get("train_loss") is not None), None)
    for line in lines:
        for key in ("train_loss", "val_loss"):
            value = line.get(key)
            if value is None:
                continue
            if not math.isfinite(value) or (key == "train_loss" and first is not None and diverges(value, first, factor)):
                return line["step"]
    return None
