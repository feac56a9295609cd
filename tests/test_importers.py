"""`scaleflow fit --from wandb|tensorboard|mlflow` and `scaleflow import` (scaleflow.importers),
through the command line: one IsoFLOP study from a known law, written as a W&B runs-table
export, as TensorBoard logs and as an MLflow file store, must give the law's exponents back."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from scaleflow.exit_codes import EXIT_USAGE
from scaleflow.fit.isoflop import simulate
from scaleflow.fit.laws import ChinchillaLaw

TRUE = dict(E=1.8, A=400.0, alpha=0.34, B=1200.0, beta=0.28)
BUDGETS = np.geomspace(1e19, 1e21, 4)  # 4 budgets x 6 model sizes: 24 runs
FIT = ["--law", "approach3", "--bootstrap", "20", "--json"]
COLS = ["--col", "params=n_params", "--col", "loss=eval/loss"]


@pytest.fixture(scope="module")
def study() -> pd.DataFrame:
    return simulate(ChinchillaLaw(**TRUE), BUDGETS, sizes_per_budget=6, noise=0.002, seed=1)


def assert_recovers_law(p, n_runs: int) -> dict:
    """The fit ran on `n_runs` runs and approach 3 found the true exponents."""
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["n_points"] == n_runs
    fit = d["approach3"]
    assert fit["alpha"] == pytest.approx(TRUE["alpha"], abs=0.03)
    assert fit["beta"] == pytest.approx(TRUE["beta"], abs=0.03)
    assert fit["E"] == pytest.approx(TRUE["E"], abs=0.15)
    assert fit["a"] == pytest.approx(TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"]), abs=0.03)
    return d


# ----------------------------------------------------------------------------- writers


def write_wandb(study: pd.DataFrame, path: Path, states=("crashed", "running")) -> Path:
    """The runs table's Export CSV: every field quoted, W&B's own columns, then config keys and
    summary metrics; plus one run per entry of `states` whose numbers must not be fitted."""
    base = {"Notes": "-", "User": "ada", "Tags": "isoflop, v2", "Created": "2026-11-30T12:00:00.000Z",
            "Sweep": "k3x9q2", "lr": 3e-4, "batch_size": 256}
    rows = [{"Name": f"iso-{i:02d}", "State": "finished", **base, "Runtime": 3600 + i, "n_params": r.params,
             "tokens": r.tokens, "eval/loss": r.loss, "_step": 5000} for i, r in enumerate(study.itertuples())]
    rows += [{"Name": f"iso-{s}", "State": s, **base, "Runtime": 60, "n_params": 1e8, "tokens": "-",
              "eval/loss": 9.5, "_step": 12} for s in states]
    pd.DataFrame(rows).to_csv(path, index=False, quoting=csv.QUOTE_ALL)
    return path


def write_tensorboard(study: pd.DataFrame, root: Path) -> Path:
    """One folder per run (nested by budget), tags logged over 4 steps, the last one final;
    hyperparameters through add_hparams (a sub-folder of the run's); one folder of text only."""
    from torch.utils.tensorboard import SummaryWriter

    for i, r in enumerate(study.itertuples()):
        with SummaryWriter(str(root / f"C{r.budget:.0e}" / f"n{i:02d}")) as w:
            for k, step in enumerate((0, 100, 200, 300)):
                done = (k + 1) / 4
                w.add_scalar("eval/loss", r.loss * (1.0 + 0.5 * (1.0 - done)), step)
                w.add_scalar("tokens", r.tokens * done, step)
                w.add_scalar("n_params", r.params, step)
            w.add_hparams({"lr": 3e-4, "batch_size": 64, "schedule": "cosine"}, {"hparam/final_loss": r.loss},
                          run_name="hparams")
    with SummaryWriter(str(root / "notes")) as w:
        w.add_text("readme", "no scalars here")
    return root


def write_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_mlflow_run(exp: Path, run_id: str, name: str, status: int, params: dict, metrics: dict,
                     stage: str = "active") -> None:
    """One run as MLflow's file store writes it; metrics: key -> [(step, value), ...]."""
    d = exp / run_id
    write_file(d / "meta.yaml", f"artifact_uri: file://{d}/artifacts\nend_time: 1764500000000\nentry_point_name: ''\n"
               f"experiment_id: '{exp.name}'\nlifecycle_stage: {stage}\nrun_id: {run_id}\nrun_name: {name}\n"
               f"run_uuid: {run_id}\nsource_name: ''\nsource_type: 4\nsource_version: ''\n"
               f"start_time: 1764490000000\nstatus: {status}\ntags: []\nuser_id: ada\n")
    for key, value in params.items():
        write_file(d / "params" / key, str(value))
    for key, points in metrics.items():  # written out of order; of a step logged twice, the later wins
        lines = [f"{1764490000000 + 1000 * j} {value} {step}" for j, (step, value) in enumerate(points)][::-1]
        write_file(d / "metrics" / key, "\n".join(lines) + "\n")
    write_file(d / "tags" / "mlflow.runName", name)
    write_file(d / "tags" / "mlflow.user", "ada")


def write_mlflow(study: pd.DataFrame, root: Path) -> Path:
    """mlruns/: experiment 0 (empty), experiment 1 (the study, one FAILED run, one deleted run),
    and a deleted experiment in .trash."""
    mlruns = root / "mlruns"
    for exp_id, name in (("0", "Default"), ("1", "isoflop")):
        write_file(mlruns / exp_id / "meta.yaml", f"artifact_location: file://{mlruns}/{exp_id}\nexperiment_id: "
                   f"'{exp_id}'\nlifecycle_stage: active\nname: {name}\ncreation_time: 1764480000000\n")
    exp = mlruns / "1"
    for i, r in enumerate(study.itertuples()):
        loss = [(0, r.loss + 2.0), (500, r.loss + 0.4), (1000, r.loss + 5.0), (1000, r.loss)]
        write_mlflow_run(exp, f"{i:032x}", f"iso-{i:02d}", 3, {"n_params": int(round(r.params)), "lr": "0.0003",
                         "optimizer": "adamw"}, {"eval/loss": loss, "tokens": [(0, 0.0), (1000, r.tokens)]})
    bad = {"n_params": 100000000, "lr": "0.0003", "optimizer": "adamw"}
    write_mlflow_run(exp, "f" * 32, "iso-failed", 4, bad, {"eval/loss": [(10, 9.5)], "tokens": [(10, 1e9)]})
    write_mlflow_run(exp, "e" * 32, "iso-deleted", 3, bad, {"eval/loss": [(10, 9.5)], "tokens": [(10, 1e9)]},
                     stage="deleted")
    write_file(mlruns / ".trash" / "2" / "meta.yaml", "experiment_id: '2'\nlifecycle_stage: deleted\nname: old\n")
    write_mlflow_run(mlruns / ".trash" / "2", "d" * 32, "old", 3, bad, {"eval/loss": [(10, 9.5)]})
    return mlruns


# ----------------------------------------------------------------------------- the law comes back


def test_wandb_export_fits_like_a_csv(tmp_path, study):
    path = write_wandb(study, tmp_path / "wandb_export.csv")
    p = run_cli("fit", "--from", "wandb", str(path), *COLS, *FIT)
    d = assert_recovers_law(p, len(study))
    note = d["notes"][0]
    assert "26 run(s) read, 24 imported" in note and "1 crashed" in note and "1 running" in note
    p = run_cli("fit", "--from", "wandb", str(path), *COLS, "--law", "approach3", "--bootstrap", "0",
                "--where", "params < 1e8")
    assert p.returncode == 0, p.stderr
    assert "W&B export" in p.stderr and "2 left out" in p.stderr  # the note, beside the other notes


def test_tensorboard_logs_last_step_and_hparams(tmp_path, study):
    root = write_tensorboard(study, tmp_path / "tb")
    out = tmp_path / "tb_runs.csv"
    p = run_cli("import", "tensorboard", str(root), "--out", str(out))
    assert p.returncode == 0, p.stderr
    t = pd.read_csv(out)
    assert len(t) == len(study) and "1 without scalar values" in p.stderr
    assert {"run", "eval/loss", "tokens", "n_params", "lr", "batch_size", "schedule",
            "hparam/final_loss"} <= set(t.columns)
    assert t["run"].iloc[0] == "C1e+19/n00" and set(t["schedule"]) == {"cosine"}
    first = t.set_index("run").loc["C1e+19/n00"]
    assert first["eval/loss"] == pytest.approx(study["loss"].iloc[0], rel=1e-6)  # the last step, not the first
    assert first["tokens"] == pytest.approx(study["tokens"].iloc[0], rel=1e-6)
    p = run_cli("fit", "--from", "tensorboard", str(root), *COLS, *FIT)
    assert_recovers_law(p, len(study))


def test_mlflow_store_finished_runs_last_step(tmp_path, study):
    mlruns = write_mlflow(study, tmp_path)
    p = run_cli("fit", "--from", "mlflow", str(mlruns), *COLS, *FIT)
    d = assert_recovers_law(p, len(study))
    note = d["notes"][0]
    assert "26 run(s) read, 24 imported" in note and "1 FAILED" in note and "1 deleted" in note
    out = tmp_path / "one_experiment.parquet"  # one experiment's folder; params that parse are numbers
    p = run_cli("import", "mlflow", str(mlruns / "1"), "--out", str(out))
    assert p.returncode == 0, p.stderr
    t = pd.read_parquet(out)
    assert len(t) == len(study) and set(t["experiment"]) == {"isoflop"} and t["run"].iloc[0] == "iso-00"
    assert t["n_params"].dtype.kind in "iuf" and t["lr"].dtype.kind == "f" and set(t["optimizer"]) == {"adamw"}
    assert t["eval/loss"].iloc[0] == pytest.approx(study["loss"].iloc[0], rel=1e-12)


def test_import_writes_the_table_fit_reads(tmp_path, study):
    table = tmp_path / "runs.csv"
    p = run_cli("import", "wandb", str(write_wandb(study, tmp_path / "export.csv")), "--out", str(table))
    assert p.returncode == 0, p.stderr
    t = pd.read_csv(table)
    assert len(t) == len(study) and set(t["State"]) == {"finished"}
    assert t["tokens"].dtype.kind == "f"  # "-" of the crashed run made it text; its finished rows are numbers
    assert_recovers_law(run_cli("fit", str(table), *COLS, *FIT), len(study))


# ----------------------------------------------------------------------------- bad input: one line, exit 2


def bad_sources(tmp_path: Path, study: pd.DataFrame) -> dict[str, tuple[list[str], str]]:
    (tmp_path / "empty").mkdir()
    study.to_csv(tmp_path / "plain.csv", index=False)
    write_wandb(study.iloc[:0], tmp_path / "crashed.csv", states=("crashed", "failed"))
    exp = tmp_path / "failed_only" / "1"
    write_file(exp / "meta.yaml", "experiment_id: '1'\nlifecycle_stage: active\nname: x\n")
    write_mlflow_run(exp, "a" * 32, "x", 4, {"n_params": 1}, {"eval/loss": [(1, 3.0)]})
    return {
        "missing path": (["fit", "--from", "wandb", str(tmp_path / "missing.csv")], "no such file"),
        "not a W&B export": (["fit", "--from", "wandb", str(tmp_path / "plain.csv")], "not a W&B export"),
        "no event files": (["fit", "--from", "tensorboard", str(tmp_path / "empty")], "no TensorBoard event files"),
        "not an MLflow store": (["fit", "--from", "mlflow", str(tmp_path / "empty")], "not an MLflow store"),
        "nothing finished (W&B)": (["fit", "--from", "wandb", str(tmp_path / "crashed.csv")], "nothing finished"),
        "nothing finished (MLflow)": (["import", "mlflow", str(tmp_path / "failed_only"), "--out",
                                       str(tmp_path / "t.csv")], "nothing finished"),
        "unknown kind": (["fit", "--from", "neptune", str(tmp_path / "plain.csv")], "--from takes one of"),
    }


@pytest.mark.parametrize("case", ["missing path", "not a W&B export", "no event files", "not an MLflow store",
                                  "nothing finished (W&B)", "nothing finished (MLflow)", "unknown kind"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, study, case):
    args, expected = bad_sources(tmp_path, study)[case]
    p = run_cli(*args)
    assert p.returncode == EXIT_USAGE, p.stderr
    assert p.stdout == "" and p.stderr.startswith("error:") and p.stderr.strip().count("\n") == 0, p.stderr
    assert expected in p.stderr and "Traceback" not in p.stderr


def test_out_must_be_csv_or_parquet(tmp_path):
    p = run_cli("import", "wandb", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "t.txt"))
    assert p.returncode == EXIT_USAGE and "--out must name a .csv or .parquet file" in p.stderr
    assert not (tmp_path / "t.txt").exists()
