"""Scalars from TensorBoard event files, through the `tensorboard` package's own reader.

Used by the metrics reader of an external trainer (command.metrics.format=tensorboard) and by
`scaleflow fit --from tensorboard`. Both writers' forms are read: scalar summaries
(torch.utils.tensorboard, tensorboardX) and scalar tensors (TensorFlow 2's tf.summary).
"""

from __future__ import annotations

from pathlib import Path

from scaleflow.errors import ScaleflowError


def event_folders(root: Path) -> list[Path]:
    """Every folder under `root` (itself included) that holds event files, sorted."""
    root = Path(root)
    return sorted({p.parent for p in root.rglob("events.out.tfevents.*") if p.is_file()})


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value), ...] in step order, from the event files directly in `folder`
    (a later write of the same step wins, as TensorBoard shows it)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        from tensorboard.util import tensor_util
    except ImportError:
        raise ScaleflowError("reading TensorBoard event files needs the tensorboard package: "
                             "pip install tensorboard") from None
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    out: dict[str, dict[int, float]] = {}
    for tag in tags.get("scalars", []):
        out[tag] = {int(e.step): float(e.value) for e in acc.Scalars(tag)}
    for tag in tags.get("tensors", []):
        values = {}
        for e in acc.Tensors(tag):
            array = tensor_util.make_ndarray(e.tensor_proto)
            if array.size == 1 and array.dtype.kind in "fiu":
                values[int(e.step)] = float(array.reshape(()))
        if values:
            out.setdefault(tag, {}).update(values)
    return {tag: sorted(points.items()) for tag, points in out.items()}
