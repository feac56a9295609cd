"""Corpora and batches.

A corpus is two flat token arrays (train, validation). The batch of a step is a pure function
of (seed, step): resuming, forking or splitting a step over ranks and micro-batches reads
exactly the same sequences.

- stdlib: the bytes of the running Python's standard library source (*.py, tests excluded),
  files in sorted path order, split into train and validation by file; vocab 256.
- text: any text files, read as bytes, split the same way; vocab 256.
- tokens: nanoGPT-style flat uint16/uint32 token files, memory-mapped.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scaleflow.config import DataConfig
from scaleflow.errors import DataError

BYTE_VOCAB = 256
_EXCLUDED_DIRS = {"site-packages", "test", "tests", "idle_test"}


@dataclass
class Corpus:
    train: np.ndarray  # flat token ids
    val: np.ndarray
    vocab_size: int  # smallest vocab that covers the ids (256 for bytes)
    byte_level: bool  # one token = one byte (bits per byte are meaningful)


def stdlib_files() -> list[Path]:
    """The standard library's *.py files (no tests, no site-packages), in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subfolders, names in os.walk(root):  # os.walk: 30x quicker than rglob here
        subfolders[:] = [d for d in subfolders if d not in _EXCLUDED_DIRS]
        files += [Path(folder, name) for name in names if name.endswith(".py")]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _is_val_file(relative: str, val_fraction: float) -> bool:
    # A hash of the path, not its position, so adding a file does not move the others.
    digest = int.from_bytes(hashlib.sha1(relative.encode()).digest()[:8], "big")
    return digest / 2**64 < val_fraction


def _bytes_corpus(files: list[Path], root: Path | None, val_fraction: float) -> Corpus:
    train, val = [], []
    for path in files:
        name = path.relative_to(root).as_posix() if root else path.as_posix()
        (val if _is_val_file(name, val_fraction) else train).append(path.read_bytes())
    if len(files) == 1:  # one file: hold out its tail instead
        blob = train[0] if train else val[0]
        cut = int(len(blob) * (1 - val_fraction))
        train, val = [blob[:cut]], [blob[cut:]]
    if not val:  # few files, none drawn for validation: hold out the last one
        val = [train.pop()]
    as_array = lambda parts: np.frombuffer(b"".join(parts), dtype=np.uint8)
    return Corpus(as_array(train), as_array(val), BYTE_VOCAB, byte_level=True)


def _expand(patterns: list[str], what: str) -> list[Path]:
    if not patterns:
        raise DataError(f"{what} needs at least one file: set data.paths=[...]")
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(Path(pattern).expanduser())))
        if not matches:
            raise DataError(f"data file {pattern} does not exist")
        files.extend(Path(m) for m in matches if Path(m).is_file())
    return files


def _token_file(path: Path, dtype: str) -> np.ndarray:
    item = np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size == 0 or size % item:
        raise DataError(f"{path} is not a flat {dtype} token file ({size} bytes)")
    return np.memmap(path, dtype=dtype, mode="r")


def load_corpus(cfg: DataConfig, vocab_size: int) -> Corpus:
    """The corpus a data config names; checks that its ids fit the model's vocab."""
    if cfg.kind == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        corpus = _bytes_corpus(stdlib_files(), root, cfg.val_fraction)
    elif cfg.kind == "text":
        files = _expand(list(cfg.paths), "data=text")
        corpus = _bytes_corpus(files, None, cfg.val_fraction)
    else:
        train_files = _expand(list(cfg.paths), "data=tokens")
        if len(train_files) > 1:
            raise DataError("data=tokens takes one training file (data.paths=[train.bin])")
        train = _token_file(train_files[0], cfg.token_dtype)
        if cfg.val_paths:
            val = _token_file(_expand(list(cfg.val_paths), "data.val_paths")[0], cfg.token_dtype)
        else:
            cut = int(len(train) * (1 - cfg.val_fraction))
            train, val = train[:cut], train[cut:]
        top = int(max(train.max(), val.max())) + 1
        corpus = Corpus(train, val, top, byte_level=False)
    if corpus.vocab_size > vocab_size:
        raise DataError(f"the corpus has token ids up to {corpus.vocab_size - 1} but model.vocab_size={vocab_size}")
    return corpus


def check_length(corpus: Corpus, seq_len: int) -> None:
    for name, tokens in (("training", corpus.train), ("validation", corpus.val)):
        if len(tokens) < seq_len + 2:
            raise DataError(f"the {name} split has {len(tokens)} tokens, fewer than one sequence of {seq_len + 1}")


def batch_offsets(seed: int, step: int, n_sequences: int, n_tokens: int, seq_len: int) -> np.ndarray:
    """Start offsets of the global batch of `step`: a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    return rng.integers(0, n_tokens - seq_len - 1, size=n_sequences)


def gather(tokens: np.ndarray, offsets: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets, each (len(offsets), seq_len) int64."""
    rows = np.stack([np.asarray(tokens[o : o + seq_len + 1], dtype=np.int64) for o in offsets])
    rows = torch.from_numpy(rows)
    return rows[:, :-1], rows[:, 1:]


def validation_offsets(n_tokens: int, seq_len: int, n_sequences: int) -> np.ndarray:
    """A fixed validation set: sequences spread evenly over the split, the same for every seed."""
    n = min(n_sequences, max(1, (n_tokens - 1) // seq_len))
    return np.linspace(0, n_tokens - seq_len - 1, n).astype(np.int64)
