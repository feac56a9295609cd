"""scaleflow as an installed package: a built wheel carries its configs and studies and runs
from any directory; a user's own studies and config groups are found through the search path
(`--config-path`, $SCALEFLOW_CONFIG_PATH)."""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from conftest import run_cli

REPO = Path(__file__).resolve().parent.parent


def _source_tree(dest: Path) -> Path:
    """The checkout's source, without build leftovers (an old egg-info's file list would add
    files the package data no longer names)."""
    skip = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "runs", ".*cache",
                                  ".hypothesis", "outputs")
    return Path(shutil.copytree(REPO, dest, ignore=skip))


def test_a_wheel_in_a_fresh_venv_runs_a_built_in_study_from_any_directory(tmp_path):
    source = _source_tree(tmp_path / "source")
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    wheel = next((tmp_path / "dist").glob("scaleflow-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"scaleflow/conf/config.yaml", "scaleflow/conf/model/tiny.yaml", "scaleflow/sweeps/isoflop_cpu.yaml"} <= set(names)

    # A fresh venv: the wheel installed into it, the dependencies (torch, hydra...) borrowed from
    # this environment through a path entry (its .pth files, the editable install's among them,
    # are not read from there).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    out = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                          "--no-deps", str(wheel)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SCALEFLOW_CONFIG_PATH")}
    where = subprocess.run([venv / "bin" / "python", "-c", "import scaleflow; print(scaleflow.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere, env=env)
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr  # the wheel's, not the checkout's
    dry = subprocess.run([venv / "bin" / "scaleflow", "sweep", "isoflop", "isoflop_cpu", "--dry-run"],
                         capture_output=True, text=True, cwd=elsewhere, env=env)
    assert dry.returncode == 0, dry.stderr
    assert "24 runs" in dry.stdout


USER_STUDY = """
defaults:
  - config
  - study: isoflop
  - override model: mine
  - _self_
study:
  name: my_study
  budgets: [2e9]
  shapes: [{n_layer: 1, d_model: 8, n_head: 1}, {n_layer: 1, d_model: 16, n_head: 2}]
  min_steps: 10
"""
USER_MODEL = "defaults:\n  - tiny\n  - _self_\nseq_len: 48\n"


def test_the_search_path_finds_a_users_studies_and_config_groups(tmp_path):
    mine = tmp_path / "mine"
    (mine / "model").mkdir(parents=True)
    (mine / "my_study.yaml").write_text(USER_STUDY)
    (mine / "model" / "mine.yaml").write_text(USER_MODEL)
    args = ["sweep", "isoflop", "my_study", f"study_dir={tmp_path / 's'}", "--dry-run"]

    by_option = run_cli("--config-path", str(mine), *args, cwd=tmp_path)
    assert by_option.returncode == 0, by_option.stderr
    assert "2 runs" in by_option.stdout
    by_env = run_cli(*args, cwd=tmp_path, env={**os.environ, "SCALEFLOW_CONFIG_PATH": str(mine)})
    assert by_env.stdout == by_option.stdout

    from scaleflow.config import compose_study

    (mine / "launcher").mkdir()
    (mine / "launcher" / "mycluster.yaml").write_text("defaults:\n  - slurm_schema\n  - _self_\nname: slurm\n"
                                                      "partition: gpu\n")
    os.environ["SCALEFLOW_CONFIG_PATH"] = str(mine)
    try:
        assert compose_study("my_study").model.seq_len == 48  # the user's model group was used
        assert compose_study("my_study", ["launcher=mycluster"]).launcher.partition == "gpu"  # and launcher
    finally:
        del os.environ["SCALEFLOW_CONFIG_PATH"]

    unknown = run_cli(*args, cwd=tmp_path)  # not on the search path: a one-line error
    assert unknown.returncode == 2 and "unknown study 'my_study'" in unknown.stderr
    missing = run_cli("--config-path", str(tmp_path / "nowhere"), *args, cwd=tmp_path)
    assert missing.returncode == 2 and "not a folder" in missing.stderr and "Traceback" not in missing.stderr
