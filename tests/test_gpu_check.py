"""The GPU check script (benchmarks/gpu_check.py) runs its code paths on a CPU (--smoke): the
throughput runs, the first rungs of isoflop_gpu as its planner plans them, the JSON of figures.
The figures themselves need a GPU (docs/benchmarks.md)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_its_code_paths_on_a_cpu(tmp_path):
    out = tmp_path / "smoke.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--smoke", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    report = json.loads(out.read_text())
    assert report["throughput"]["tiny"]["tokens_per_s"] > 0 and report["data_parallel"] is None
    rungs = report["isoflop_gpu_rungs"]
    assert len(rungs) == 2 and rungs[0]["params_with_head"] < rungs[1]["params_with_head"]
    assert all(r["steps"] == min(10, r["planned_steps"]) for r in rungs)
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks/gpu_check.sh")]).returncode == 0
