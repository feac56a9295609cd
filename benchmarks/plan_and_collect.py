"""Planning and bookkeeping speed: a 1,000-run plan with its dry-run table, and collecting a
study of 10,000 finished runs.

    python benchmarks/plan_and_collect.py

Targets: plan + dry-run table of 1,000 runs under 2 s; collect 10,000 runs under 5 s.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STUDY = """
defaults:
  - config
  - study: isoflop
  - _self_
study:
  name: bench1000
  budgets: [1e17, 3e17, 1e18, 3e18, 1e19, 3e19]
  widths: [256, 320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960, 1024, 1152, 1280, 1408, 1536]
  depths: [4, 6, 8, 10, 12, 14, 16, 20, 24, 28]
  aspect_min: 0
  min_steps: 1
model: {seq_len: 1024, vocab_size: 50304}
trainer: {batch_size: 256}
"""


def bench_plan(tmp: Path) -> None:
    from rich.console import Console

    from scaleflow.config import compose_study
    from scaleflow.sweep import plan_study

    path = tmp / "bench1000.yaml"
    path.write_text(STUDY)
    started = time.perf_counter()
    cfg = compose_study(str(path))
    specs = plan_study(cfg, "isoflop")
    import scaleflow.cli as cli

    cli.console = Console(file=io.StringIO(), width=160)
    cli._print_plan(specs, cfg.study.throughput, "bench")
    in_process = time.perf_counter() - started
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "scaleflow.cli", "sweep", "isoflop", str(path), "--dry-run"],
                         capture_output=True, text=True)
    command = time.perf_counter() - started
    assert out.returncode == 0, out.stderr
    print(f"plan + dry-run table of {len(specs)} runs: {in_process:.2f} s in process, "
          f"{command:.2f} s as the command `scaleflow sweep isoflop --dry-run` (wall, with start-up)")


def bench_collect(tmp: Path, n: int = 10_000) -> None:
    from scaleflow.collect import collect

    study = tmp / "study"
    for i in range(n):
        run = study / f"{i:010x}"
        run.mkdir(parents=True)
        (run / "run.json").write_text(json.dumps({"kind": "run", "budget": 1e18, "label": "", "parent": None}))
        summary = {"status": "done", "params": 1e6 + i, "params_non_embedding": 1e6, "params_with_head": 1e6 + i,
                   "params_total": 1e6 + i, "flops": 1e18, "tokens": 1e9, "steps": 1000, "lr": 3e-3,
                   "batch_size": 256, "val_loss": 3.0 + i * 1e-6}
        (run / "summary.json").write_text(json.dumps(summary))
        (run / "metrics.jsonl").write_text("".join(
            json.dumps({"step": s, "tokens": s * 1e6, "flops": s * 1e15, "val_loss": 3.5 - s * 1e-4}) + "\n"
            for s in range(0, 1001, 100)))
    started = time.perf_counter()
    collected = collect(study)
    elapsed = time.perf_counter() - started
    print(f"collect {len(collected.runs)} runs ({len(collected.curves)} curve points): {elapsed:.2f} s")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bench_plan(Path(tmp))
        bench_collect(Path(tmp))


if __name__ == "__main__":
    main()
