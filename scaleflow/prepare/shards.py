"""Writing a split's token shards, and the progress file that lets a stopped run continue.

A shard is written to a hidden `.NAME.partial` file; it closes at the first document end at or
past `shard_tokens` tokens (shards hold whole documents), is flushed, fsynced and renamed to
its name, and only then recorded in `progress.json` (written atomically). A run that stops
anywhere leaves finished shards that progress.json lists, and at most a partial file or an
unrecorded shard per split, which the next run removes or overwrites: it redoes the open
shard from its first document (`next_doc`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from scaleflow.files import read_json, write_json
from scaleflow.prepare.meta import META_NAME, SPLITS, shard_name

PROGRESS_NAME = "progress.json"
_OURS = re.compile(r"^\.?(train|val)_\d{3,}\.bin(\.partial)?$")


@dataclass
class SplitState:
    shards: list[dict] = field(default_factory=list)  # finished: {file, tokens, documents, bytes}
    next_doc: int = 0  # index of the first document not in a finished shard of this split


def load_progress(directory: Path, settings: str) -> Optional[dict]:
    """The progress of an unfinished run with these settings, or None."""
    progress = read_json(Path(directory) / PROGRESS_NAME)
    if progress is None or progress.get("settings") != settings:
        return None
    return progress


def split_states(progress: Optional[dict]) -> dict[str, SplitState]:
    splits = (progress or {}).get("splits", {})
    return {s: SplitState(list(splits.get(s, {}).get("shards", [])), int(splits.get(s, {}).get("next_doc", 0)))
            for s in SPLITS}


def save_progress(directory: Path, settings: str, tokenizer_sha256: str, states: dict[str, SplitState]) -> None:
    splits = {s: {"shards": st.shards, "next_doc": st.next_doc} for s, st in states.items()}
    write_json(Path(directory) / PROGRESS_NAME, {"settings": settings, "tokenizer_sha256": tokenizer_sha256,
                                                  "splits": splits})


def clear(directory: Path) -> None:
    """Remove what a run writes (shards, partial files, progress, meta); nothing else."""
    for path in Path(directory).iterdir():
        if _OURS.match(path.name) or path.name in (PROGRESS_NAME, META_NAME):
            path.unlink()


def remove_partials(directory: Path) -> None:
    for path in Path(directory).glob(".*.partial"):
        if _OURS.match(path.name):
            path.unlink()


class SplitWriter:
    """One split's shards. `add` appends encoded documents; `finish` closes the open shard.
    `on_close(split)` runs after each shard is renamed into place and its state updated."""

    def __init__(self, directory: Path, split: str, dtype: str, shard_tokens: int, state: SplitState,
                 on_close: Callable[[str], None]) -> None:
        self.directory, self.split, self.dtype = Path(directory), split, dtype
        self.shard_tokens, self.state, self.on_close = shard_tokens, state, on_close
        self.file = None  # the open shard's partial file
        self.tokens = self.documents = self.bytes = 0  # in the open shard
        self.last_doc = -1

    def add(self, tokens: np.ndarray, lengths: np.ndarray, nbytes: np.ndarray, indices: np.ndarray) -> None:
        """Documents in order: their concatenated ids, ids per document, text bytes per
        document and document indices."""
        ends = np.cumsum(lengths)
        first = 0
        while first < len(lengths):
            base = int(ends[first - 1]) if first else 0
            cumulative = ends[first:] - base
            fill = int(np.searchsorted(cumulative, self.shard_tokens - self.tokens))  # the document that fills it
            stop = first + min(fill, len(cumulative) - 1) + 1
            self._write(tokens[base : int(ends[stop - 1])], stop - first, int(nbytes[first:stop].sum()),
                        int(indices[stop - 1]))
            if fill < len(cumulative):
                self._close()
            first = stop

    def finish(self) -> None:
        if self.documents:
            self._close()

    def abort(self) -> None:
        """Close the partial file (a stopped run); the next run removes it."""
        if self.file is not None:
            self.file.close()
            self.file = None

    def _name(self) -> str:
        return shard_name(self.split, len(self.state.shards))

    def _write(self, tokens: np.ndarray, documents: int, nbytes: int, last_doc: int) -> None:
        if self.file is None:
            self.file = open(self.directory / f".{self._name()}.partial", "wb")
        self.file.write(tokens.astype(self.dtype, copy=False).tobytes())
        self.tokens += len(tokens)
        self.documents += documents
        self.bytes += nbytes
        self.last_doc = last_doc

    def _close(self) -> None:
        name = self._name()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.file = None
        os.replace(self.directory / f".{name}.partial", self.directory / name)
        self.state.shards.append({"file": name, "tokens": self.tokens, "documents": self.documents,
                                  "bytes": self.bytes})
        self.state.next_doc = self.last_doc + 1
        self.tokens = self.documents = self.bytes = 0
        self.on_close(self.split)
