"""scaleflow/files.py: atomic writes give files the mode the umask asks for (a study on a shared
filesystem must be readable by teammates under the usual umask 022, and private under 077)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from conftest import TINY
from scaleflow.checkpoints import list_checkpoints
from scaleflow.config import compose_run
from scaleflow.files import atomic_write, write_json, write_text
from scaleflow.train import train

# umask -> the mode of a new file: 0666 less the umask, as open() gives.
EXPECTED = {0o022: 0o644, 0o077: 0o600}


@pytest.fixture(params=sorted(EXPECTED), ids=lambda u: f"umask{u:03o}")
def umask(request):
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_helper_writes_honour_the_umask(tmp_path, umask):
    atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
    write_text(tmp_path / "b.txt", "y")
    write_json(tmp_path / "c.json", {"z": 1})
    (tmp_path / "d.txt").write_text("old")
    os.chmod(tmp_path / "d.txt", 0o600)
    write_text(tmp_path / "d.txt", "new")  # replacing a file: the new one follows the umask too
    modes = {p.name: oct(_mode(p)) for p in sorted(tmp_path.iterdir())}
    assert modes == {name: oct(EXPECTED[umask]) for name in ("a.bin", "b.txt", "c.json", "d.txt")}


def test_a_runs_files_honour_the_umask(tmp_path, umask):
    run_dir, text = tmp_path / "run", tmp_path / "corpus.txt"
    text.write_bytes(Path(stat.__file__).read_bytes())  # a small corpus: no need for the whole stdlib here
    train(compose_run(TINY + ["data=text", f"data.paths=[{text}]", "trainer.steps=2", "trainer.checkpoint_every=2",
                              "trainer.eval_sequences=2"]), run_dir)
    files = [run_dir / name for name in ("config.yaml", "run_id", "metrics.jsonl", "summary.json")]
    files += [path for _, path in list_checkpoints(run_dir)]
    assert len(files) == 5
    modes = {p.relative_to(run_dir).as_posix(): oct(_mode(p)) for p in files}
    assert modes == {name: oct(EXPECTED[umask]) for name in modes}
    assert not list(run_dir.rglob("*.tmp"))
