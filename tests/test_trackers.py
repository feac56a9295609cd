"""Experiment trackers (tracker=wandb | tensorboard | mlflow | none), each read back from what it
wrote: W&B's offline run files, TensorBoard event files, an MLflow file store. Runs are a study's
runs as the run store registers them (or lone runs) and train in-process, a few steps each; a
tracker never changes a run's id or its results, and a failing one never stops a run."""

from __future__ import annotations

import inspect
import json
import sys
import time
from pathlib import Path

import pytest

from conftest import TRUE_LAW_PARAMS, metrics_without_timing, run_cli
from scaleflow.config import ModelConfig, compose_run, compose_study, run_id
from scaleflow.counting import count
from scaleflow.errors import ConfigError
from scaleflow.external.tensorboard import scalars
from scaleflow.store import register, study_dir_for
from scaleflow.sweep import plan_study
from scaleflow.worker import execute_run, train_external

RUN = ["model.n_layer=1", "model.d_model=16", "model.n_head=2", "model.seq_len=32", "trainer.batch_size=8",
       "trainer.eval_sequences=16", "trainer.log_every=5", "trainer.eval_every=10", "data=text"]
PARAMS = count(ModelConfig(n_layer=1, d_model=16, n_head=2, seq_len=32)).params("with_head")  # 7,216
STEPS = 20
BUDGET = STEPS * 8 * 32 * 6.0 * PARAMS  # training FLOPs: 20 steps of 8 x 32 tokens
STUDY = """
defaults: [config, {study: isoflop}, _self_]
study: {name: tiny_study, budgets: [%r], shapes: [{n_layer: 1, d_model: 16, n_head: 2}], min_steps: 10}
""" % BUDGET
LOGGED = ("train_loss", "val_loss", "lr", "tokens", "flops", "grad_norm")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train fastest on one thread, and do not fight other processes for cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(inspect.getsource(json.decoder) * 10)  # small: quick to load
    return path


def study_run(root: Path, corpus: Path, *overrides: str) -> Path:
    """The study's one run directory, registered as `scaleflow sweep` does (config.yaml, run.json)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "tiny_study.yaml").write_text(STUDY)
    cfg = compose_study(str(root / "tiny_study.yaml"), [*RUN, f"data.paths=[{corpus}]", f"study_dir={root / 'study'}",
                                                          *overrides])
    specs = plan_study(cfg, "isoflop")
    assert len(specs) == 1 and specs[0].steps == STEPS
    return register(study_dir_for(cfg), specs, cfg.study.name, "isoflop")[0]


def train_in_two_parts(run_dir: Path) -> dict:
    """Train to step 10 (stopped, checkpointed), then resume to the end, as a requeued job does."""
    assert execute_run(run_dir, until=10)["status"] == "stopped"
    return execute_run(run_dir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus) -> Path:
    """The study's run without a tracker, trained straight through."""
    run_dir = study_run(tmp_path_factory.mktemp("reference"), corpus)
    assert execute_run(run_dir)["status"] == "done"
    return run_dir


def assert_same_results(run_dir: Path, reference: Path) -> None:
    assert run_dir.name == reference.name  # the tracker is not part of the run id
    assert metrics_without_timing(run_dir) == metrics_without_timing(reference)
    summary, expected = (json.loads((d / "summary.json").read_text()) for d in (run_dir, reference))
    assert summary["status"] == "done" and summary["val_loss"] == expected["val_loss"]


def logged(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as a tracker should hold it: key -> [(step, value), ...]."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {k: [(line["step"], float(line[k])) for line in lines if line.get(k) is not None] for k in LOGGED}


def assert_points(got: list[tuple[int, float]], want: list[tuple[int, float]], what: str) -> None:
    """The same steps with the same values (trackers may store float32)."""
    assert [s for s, _ in got] == [s for s, _ in want], what
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), what


# ----------------------------------------------------------------------------- the config group

def test_the_tracker_group_is_typed_per_tracker_and_not_part_of_the_run_id():
    from omegaconf import OmegaConf

    from scaleflow.config import typed_config

    plain = compose_run([])
    assert plain.tracker.name == "none"
    wandb = compose_run(["tracker=wandb", "tracker.project=p", "tracker.tags=[a]"])
    assert (wandb.tracker.mode, wandb.tracker.project, list(wandb.tracker.tags)) == ("offline", "p", ["a"])
    assert run_id(wandb) == run_id(plain)
    for overrides, message in ((["tracker=tensorboard", "tracker.project=p"], "Key 'project' not in"),
                               (["tracker=wandb", "tracker.name=mlflow"], "contradicts tracker=wandb"),
                               (["tracker=wandb", "tracker.mode=cloud"], "tracker.mode='cloud' is not one of")):
        with pytest.raises(ConfigError, match=message):
            compose_run(overrides)
    old = OmegaConf.to_container(plain)
    del old["tracker"]  # a run config written before trackers
    assert typed_config(old).tracker.name == "none"
    assert OmegaConf.get_type(typed_config(OmegaConf.to_container(wandb)).tracker).__name__ == "WandbTrackerConfig"


def test_an_unknown_tracker_is_a_one_line_error_with_exit_code_2():
    r = run_cli("train", "tracker=comet")
    assert r.returncode == 2
    assert r.stderr.strip() == "error: tracker='comet' is not one of mlflow, none, tensorboard, wandb"


# ----------------------------------------------------------------------------- each tracker, read back

def test_tensorboard_holds_every_metrics_line_of_a_resumed_study_run(tmp_path, corpus, reference):
    run_dir = study_run(tmp_path, corpus, "tracker=tensorboard")
    train_in_two_parts(run_dir)
    assert_same_results(run_dir, reference)
    folder = run_dir.parent / "tensorboard" / run_dir.name  # <study dir>/tensorboard/<run id>
    got = scalars(folder)
    for key, points in logged(run_dir).items():
        assert_points(got[key], points, key)
    assert [step for step, _ in got["train_loss"]] == [1, 5, 10, 15, 20]


def train_lone(run_dir: Path, corpus: Path, *overrides: str) -> dict:
    """`scaleflow train` of one lone run (no study), in-process."""
    from scaleflow.train import train

    cfg = compose_run([*RUN, f"data.paths=[{corpus}]", f"trainer.steps={STEPS}", f"run_dir={run_dir}", *overrides])
    return train(cfg, run_dir)


def test_a_lone_runs_tensorboard_folder_is_in_its_run_directory(tmp_path, corpus):
    run_dir = tmp_path / "lone"
    train_lone(run_dir, corpus, "tracker=tensorboard")
    assert_points(scalars(run_dir / "tensorboard")["val_loss"], logged(run_dir)["val_loss"], "val_loss")


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """W&B offline, silent, with its caches in the test's folder and no credentials."""
    for name in ("WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))


def wandb_records(path: Path) -> list:
    """The records of a W&B run file (run-ID.wandb): a 7-byte header (':W&B', magic, version),
    then LevelDB-log blocks of 32 KiB whose chunks (7-byte header: checksum, length, type)
    carry serialised `Record` protobufs of the wandb package."""
    from wandb.proto import wandb_internal_pb2

    data, block, records, chunks = path.read_bytes(), 32768, [], b""
    assert data[:4] == b":W&B"
    pos = 7
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if left < 7 or (length == 0 and kind == 0):  # the block's zero padding
            pos += left
            continue
        if pos + 7 + length > len(data):  # a record still being written
            break
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def wandb_runs(folder: Path, n: int) -> list[list]:
    """The records of the `n` W&B run files under `folder`, in the order they were made,
    once each is complete: wandb's service may still be writing one when finish() returns."""
    deadline = time.time() + 30
    while True:
        files = sorted(folder.glob("offline-run-*/run-*.wandb"))
        runs = [wandb_records(f) for f in files]
        if len(runs) == n and all(r and r[-1].WhichOneof("record_type") == "exit" for r in runs):
            return runs
        assert time.time() < deadline, f"{len(files)} W&B run files under {folder}, not {n} complete ones"
        time.sleep(0.1)


def wandb_history(records: list) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
            for key, value in items.items():
                if not key.startswith("_"):
                    out.setdefault(key, []).append((items["_step"], value))
    return out


def test_wandb_offline_holds_one_run_continued_across_a_resume(tmp_path, corpus, reference, wandb_env):
    run_dir = study_run(tmp_path, corpus, "tracker=wandb", "tracker.project=scaling", "tracker.tags=[cpu]")
    train_in_two_parts(run_dir)
    assert_same_results(run_dir, reference)
    # <study dir>/wandb: a run file per attempt, with the same id (`wandb sync` resumes the run)
    attempts = wandb_runs(run_dir.parent / "wandb", 2)
    runs = [next(r.run for r in records if r.WhichOneof("record_type") == "run") for records in attempts]
    wandb_id = json.loads((run_dir / "tracker.json").read_text())["wandb"]["id"]
    assert {r.run_id for r in runs} == {wandb_id} and wandb_id.startswith(run_dir.name)
    first = runs[0]
    assert (first.project, first.run_group, first.display_name) == ("scaling", "tiny_study", run_dir.name)
    assert set(first.tags) == {f"budget={BUDGET:.4g}", f"params={PARAMS}", "cpu"}
    config = {u.key: json.loads(u.value_json) for u in first.config.update}
    assert config["model"]["d_model"] == 16 and config["trainer"]["steps"] == STEPS
    assert config["scaleflow"] == {"run_id": run_dir.name, "study": "tiny_study", "budget": BUDGET,
                                   "params": PARAMS}
    history = wandb_history(attempts[0] + attempts[1])
    for key, points in logged(run_dir).items():
        assert_points(history[key], points, key)


def test_mlflow_file_store_holds_one_run_continued_across_a_resume(tmp_path, corpus, reference):
    from mlflow.tracking import MlflowClient

    run_dir = study_run(tmp_path, corpus, "tracker=mlflow")
    train_in_two_parts(run_dir)
    assert_same_results(run_dir, reference)
    client = MlflowClient(tracking_uri=(run_dir.parent / "mlruns").as_uri())  # <study dir>/mlruns
    experiment = client.get_experiment_by_name("tiny_study")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == json.loads((run_dir / "tracker.json").read_text())["mlflow"]["id"]
    assert (run.info.run_name, run.info.status) == (run_dir.name, "FINISHED")
    assert float(run.data.tags["budget"]) == pytest.approx(BUDGET, rel=1e-5)
    assert run.data.tags["params"] == str(PARAMS) and run.data.tags["scaleflow.status"] == "done"
    assert run.data.params["model.d_model"] == "16" and run.data.params["schedule.name"] == "cosine"
    assert "resume" not in run.data.params and "tracker.name" not in run.data.params
    for key, points in logged(run_dir).items():
        history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        assert_points(sorted(history), points, key)


# ----------------------------------------------------------------------------- failures never stop a run

def test_a_tracker_that_fails_never_stops_a_run(tmp_path, corpus, reference, monkeypatch, capsys, wandb_env):
    """The package is missing (wandb), online mode lacks a login (no prompt), or a log call
    raises (a full disk under TensorBoard): one warning line each, and the same results."""
    from torch.utils.tensorboard import SummaryWriter

    calls = []

    def full_disk(self, *args, **kwargs):
        calls.append(args)
        raise OSError(28, "No space left on device")

    cases = [("missing", ["tracker=wandb"], "warning: tracker wandb failed (ModuleNotFoundError: "),
             ("online", ["tracker=wandb", "tracker.mode=online"],
              "warning: tracker wandb failed (RuntimeError: not logged in to W&B"),
             ("full", ["tracker=tensorboard"], "warning: tracker tensorboard failed (OSError: [Errno 28] No space")]
    for name, overrides, warning in cases:
        with monkeypatch.context() as patch:
            if name == "missing":
                patch.setitem(sys.modules, "wandb", None)  # `import wandb` fails
            if name == "full":
                patch.setattr(SummaryWriter, "add_scalar", full_disk)
            run_dir = study_run(tmp_path / name, corpus, *overrides)
            train_in_two_parts(run_dir)
        assert_same_results(run_dir, reference)
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 2 and lines[0] == lines[1], lines  # one line per attempt, nothing else
        assert lines[0].startswith(warning) and lines[0].endswith("; the run goes on without it"), lines[0]
    assert len(calls) == 2  # the first failure turned TensorBoard off, in each attempt


# ----------------------------------------------------------------------------- external trainers, fits

FAKE_TRAINER = """
import sys
sys.path.insert(0, sys.argv[1])
import runlog
run = runlog.open_run()
for step in (10, 20, 30):
    run.log(step, train_loss=4.0 - step / 20, val_loss=4.1 - step / 20)
run.finish(params=1234)
"""


def test_an_external_trainers_lines_are_logged_when_it_ends(tmp_path):
    import scaleflow

    script = tmp_path / "fake.py"
    script.write_text(FAKE_TRAINER)
    run_dir = tmp_path / "ext"
    cfg = compose_run([f"run_dir={run_dir}", "trainer.steps=30", "trainer.batch_size=2", "model.seq_len=16",
                       "tracker=tensorboard", f"command.template='{{run.python}} {script} {Path(scaleflow.__file__).parent}'"])
    assert train_external(cfg, run_dir)["status"] == "done"
    got = scalars(run_dir / "tensorboard")
    assert_points(got["train_loss"], [(10, 3.5), (20, 3.0), (30, 2.5)], "train_loss")
    assert got["tokens"] == [(10, 320.0), (20, 640.0), (30, 960.0)]  # normalised: filled in by scaleflow
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    [tags] = events.Tensors("tags/text_summary")
    assert "| params | 1234 |" in tags.tensor_proto.string_val[0].decode()  # the trainer's own count


def write_study(study: Path, tracker: dict) -> None:
    """A finished IsoFLOP study written by hand, as the trainer would (summary.json, run.json,
    config.yaml), from a known Chinchilla law."""
    from scaleflow.fit.isoflop import simulate
    from scaleflow.fit.laws import ChinchillaLaw

    table = simulate(ChinchillaLaw(**TRUE_LAW_PARAMS), [1e18, 1e19, 1e20], sizes_per_budget=5)
    (study / "study.json").parent.mkdir(parents=True)
    (study / "study.json").write_text(json.dumps({"name": "synthetic", "kind": "isoflop"}))
    for i, row in table.iterrows():
        d = study / f"{i:010x}"
        d.mkdir()
        (d / "run.json").write_text(json.dumps({"kind": "run", "budget": row["budget"], "study": "synthetic"}))
        (d / "config.yaml").write_text(json.dumps({"seed": 0, "tracker": tracker}))
        (d / "summary.json").write_text(json.dumps({"status": "done", "params": row["params"], "tokens": row["tokens"],
                                                    "flops": row["flops"], "val_loss": row["loss"]}))


def test_the_fit_report_goes_to_the_tracker_of_the_studys_runs(tmp_path, wandb_env):
    import typer
    from mlflow.tracking import MlflowClient
    from typer.testing import CliRunner

    from scaleflow.cli_fit import register as register_fit
    from scaleflow.trackers import fit_tracker, log_fit_report

    study, out = tmp_path / "study", tmp_path / "study" / "fit"
    write_study(study, {"name": "mlflow", "experiment": "chinchilla"})
    app = typer.Typer()
    register_fit(app)
    r = CliRunner().invoke(app, ["fit", str(study), "--out", str(out), "--bootstrap", "0", "--json"])
    assert r.exit_code == 0, r.output
    json.loads(r.stdout)  # still exactly one JSON object on stdout
    client = MlflowClient(tracking_uri=(study / "mlruns").as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("chinchilla").experiment_id])
    assert run.info.run_name == "fit" and run.info.status == "FINISHED"
    names = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "fit")}
    assert {"fit.json", "report.md", "report.html"} <= names and any(n.endswith(".png") for n in names)
    report = Path(client.download_artifacts(run.info.run_id, "fit/report.md", str(tmp_path / "down")))
    assert report.read_text() == (out / "report.md").read_text()

    files = sorted(p for p in out.iterdir() if p.is_file())
    log_fit_report(fit_tracker(str(study), None, out, "tensorboard"), study, out, files)  # --tracker tensorboard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(study / "tensorboard" / "fit"))
    events.Reload()
    assert "fit/report.md/text_summary" in events.Tags()["tensors"]
    assert {f"fit/{p.name}" for p in files if p.suffix == ".png"} == set(events.Tags()["images"])

    log_fit_report(fit_tracker(str(study), None, out, "wandb"), study, out, files)  # --tracker wandb
    [records] = wandb_runs(study / "wandb", 1)
    [artifact] = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert (artifact.name, artifact.type) == ("synthetic-fit", "fit-report")
    assert {c.path for c in artifact.manifest.contents} == {p.name for p in files}
    with pytest.raises(ConfigError, match="tracker='comet' is not one of"):
        fit_tracker(str(study), None, out, "comet")
