"""tracker=tensorboard: a folder of event files per scaleflow run (`tensorboard --logdir
<study dir>/tensorboard` shows the study), written with torch's SummaryWriter; a resumed run
writes to the same folder (TensorBoard shows the later value of a step). The fit report goes to
`<log dir>/fit`: report.md as text, the plots as images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scaleflow.trackers.base import RunInfo


def root(settings: Any, base_dir: Path) -> Path:
    """The folder every run's folder lies in: tracker.log_dir, else <study dir>/tensorboard."""
    return Path(settings.log_dir).expanduser() if settings.log_dir else Path(base_dir) / "tensorboard"


def run_folder(settings: Any, info: RunInfo) -> Path:
    """<log dir>/<run id>; a lone run without tracker.log_dir: <run dir>/tensorboard."""
    if not settings.log_dir and not info.in_study:
        return info.run_dir / "tensorboard"
    return root(settings, info.base_dir) / info.run_id


def _writer(folder: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(folder))


def _table(rows: dict) -> str:
    """A markdown table (TensorBoard's text tab renders it)."""
    return "| key | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows.items())


class Run:
    """An event-file writer in the run's folder; the config and tags are written once, as text."""

    def __init__(self, settings: Any, info: RunInfo, state: dict):
        folder = run_folder(settings, info)
        new = state.get("id") != str(folder)
        state["id"] = str(folder)
        self.writer = _writer(folder)
        if new:
            self.writer.add_text("config", _table(info.params), 0)
            self.writer.add_text("tags", _table({"run_id": info.run_id, "study": info.study, **info.tags}), 0)
            self.writer.flush()
        self.step = 0

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a killed run keeps what it logged
        self.step = step

    def finish(self, status: str) -> None:
        self.writer.add_text("status", status, self.step)
        self.writer.close()


def log_report(settings: Any, study_dir: Path, study: str, files: list[Path], out_dir: Path) -> None:
    """report.md as text and every PNG plot as an image, in <log dir>/fit."""
    import numpy as np
    from PIL import Image

    writer = _writer(root(settings, study_dir) / "fit")
    for path in files:
        name = Path(path).relative_to(out_dir).as_posix()
        if path.suffix == ".md":
            writer.add_text(f"fit/{name}", path.read_text(), 0)
        elif path.suffix == ".png":
            image = np.asarray(Image.open(path).convert("RGB"))
            writer.add_image(f"fit/{name}", image, 0, dataformats="HWC")
    writer.close()
