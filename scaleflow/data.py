"""Corpora and batches.

A corpus is two flat token arrays (train, validation). The batch of a step is a pure function
of (seed, step): resuming, forking or splitting a step over ranks and micro-batches reads
exactly the same sequences.

- stdlib: the bytes of the running Python's standard library source (*.py, tests excluded),
  files in sorted path order, split into train and validation by file; vocab 256.
- text: any text files, read as bytes, split the same way; vocab 256.
- tokens: nanoGPT-style flat uint16/uint32 token files, memory-mapped; or (data.path) a
  directory made by `scaleflow data prepare`: its shards, read as its meta.json says.

Bits per byte need the text's bytes per token: 1 for the byte-level corpora, the validation
split's tokens / bytes for a prepared directory, unknown for bare token files.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from scaleflow.config import DataConfig
from scaleflow.errors import ConfigError, DataError

BYTE_VOCAB = 256
_EXCLUDED_DIRS = {"site-packages", "test", "tests", "idle_test"}


@dataclass
class Corpus:
    train: Any  # flat token ids: an array, or prepare.meta.ShardedTokens (len() and [a:b])
    val: Any
    vocab_size: int  # smallest vocab that covers the ids (256 for bytes; a prepared corpus's own)
    byte_level: bool  # one token = one byte
    # Validation tokens per byte of text (val_bpb = val_loss / ln 2 x tokens_per_byte): 1.0 for
    # bytes; None when the text is unknown (bare token files): no bits per byte then.
    tokens_per_byte: Optional[float] = None


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


def _split_files(files: list[Path], root: Path | None, val_fraction: float) -> tuple[list[Path], list[Path]]:
    """Training and validation files (several files; one file is split by bytes instead)."""
    train, val = [], []
    for path in files:
        name = path.relative_to(root).as_posix() if root else path.as_posix()
        (val if _is_val_file(name, val_fraction) else train).append(path)
    if not val:  # few files, none drawn for validation: hold out the last one
        val = [train.pop()]
    return train, val


def _bytes_corpus(files: list[Path], root: Path | None, val_fraction: float) -> Corpus:
    if len(files) == 1:  # one file: hold out its tail instead
        blob = files[0].read_bytes()
        cut = int(len(blob) * (1 - val_fraction))
        train, val = [blob[:cut]], [blob[cut:]]
    else:
        train_files, val_files = _split_files(files, root, val_fraction)
        train, val = [p.read_bytes() for p in train_files], [p.read_bytes() for p in val_files]
    as_array = lambda parts: np.frombuffer(b"".join(parts), dtype=np.uint8)
    return Corpus(as_array(train), as_array(val), BYTE_VOCAB, byte_level=True, tokens_per_byte=1.0)


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


def _prepared_corpus(directory: Path, vocab_size: int) -> Corpus:
    """A `scaleflow data prepare` directory; ConfigError when its vocab is not the model's."""
    from scaleflow.prepare.meta import open_split, read_meta, tokens_per_byte

    meta = read_meta(directory)
    if meta["vocab_size"] != vocab_size:
        raise ConfigError(f"{directory} was tokenized with vocab_size={meta['vocab_size']} (meta.json) but "
                          f"model.vocab_size={vocab_size}; set model.vocab_size={meta['vocab_size']}")
    train, val = open_split(directory, meta, "train"), open_split(directory, meta, "val")
    return Corpus(train, val, meta["vocab_size"], byte_level=False, tokens_per_byte=tokens_per_byte(meta))


def load_corpus(cfg: DataConfig, vocab_size: int) -> Corpus:
    """The corpus a data config names; checks that its ids fit the model's vocab."""
    if cfg.kind == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        corpus = _bytes_corpus(stdlib_files(), root, cfg.val_fraction)
    elif cfg.kind == "text":
        files = _expand(list(cfg.paths), "data=text")
        corpus = _bytes_corpus(files, None, cfg.val_fraction)
    elif getattr(cfg, "path", None) is not None:
        corpus = _prepared_corpus(Path(cfg.path).expanduser(), vocab_size)
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


def train_tokens(cfg: Any) -> Optional[int]:
    """Tokens in the training split, known without reading it (a plan's epochs): the stdlib's or
    text files' bytes, a prepared directory's meta.json, token files' sizes. None when they
    cannot be known cheaply (missing files, no meta.json)."""
    try:
        if cfg.kind in ("stdlib", "text"):
            root = Path(sysconfig.get_paths()["stdlib"]) if cfg.kind == "stdlib" else None
            files = stdlib_files() if cfg.kind == "stdlib" else _expand(list(cfg.paths), "data=text")
            if len(files) == 1:
                return int(files[0].stat().st_size * (1 - cfg.val_fraction))
            return sum(p.stat().st_size for p in _split_files(files, root, cfg.val_fraction)[0])
        if getattr(cfg, "path", None) is not None:
            from scaleflow.prepare.meta import load_meta

            meta = load_meta(Path(cfg.path).expanduser())
            return meta["splits"]["train"]["tokens"] if meta else None
        files = _expand(list(cfg.paths), "data=tokens")
        n = files[0].stat().st_size // np.dtype(cfg.token_dtype).itemsize
        return n if cfg.val_paths else int(n * (1 - cfg.val_fraction))
    except (OSError, DataError, IndexError, KeyError, TypeError):
        return None


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
