"""The prepared-corpus format, and reading it back.

A prepared directory holds token shards (`train_000.bin`, ..., `val_000.bin`: flat uint16 or
uint32 token ids, every document followed by the end-of-text token) and `meta.json`, written
last and atomically: a directory without it is unfinished, never a corpus. meta.json:

- format, format_version: "scaleflow-tokens", 1
- tokenizer: {name, sha256 (of its JSON), file (its copy in the directory), source}
- vocab_size (ids), dtype, eot_id, eot_token
- val_fraction, split (how a document is assigned), settings (hash of every setting)
- splits: {train, val}: documents, tokens, bytes (UTF-8 text, end-of-text not counted),
  shards: [{file, tokens, documents, bytes}]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import numpy as np

from scaleflow.errors import DataError

FORMAT = "scaleflow-tokens"
FORMAT_VERSION = 1
META_NAME = "meta.json"
SPLITS = ("train", "val")


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:03d}.bin"


def load_meta(directory: Path) -> Optional[dict]:
    """meta.json as a dict, or None when it is missing or unreadable (never an error)."""
    try:
        meta = json.loads((Path(directory) / META_NAME).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def read_meta(directory: Path) -> dict:
    """meta.json of a finished preparation; DataError when there is none or it is newer."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"data.path={directory} is not a directory (make one with: scaleflow data prepare ... --out DIR)")
    meta = load_meta(directory)
    if meta is None:
        raise DataError(f"{directory} has no valid {META_NAME}: not a finished `scaleflow data prepare` output "
                        "(run the same prepare command again to finish it)")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise DataError(f"{directory}/{META_NAME} has format version {meta['format_version']}; this scaleflow "
                        f"reads version {FORMAT_VERSION} (upgrade scaleflow)")
    return meta


def missing_shard(directory: Path, meta: dict) -> Optional[str]:
    """The first shard that is missing or not of its recorded size, or None."""
    item = np.dtype(meta["dtype"]).itemsize
    for split in SPLITS:
        for shard in meta["splits"][split]["shards"]:
            path = Path(directory) / shard["file"]
            if not path.is_file() or path.stat().st_size != shard["tokens"] * item:
                return shard["file"]
    return None


class ShardedTokens:
    """Several token files read as one flat array: len() and [a:b] (what batches read)."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])  # token offset of each part

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("sharded tokens are read by contiguous slices")
        start, stop, _ = key.indices(len(self))
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        pieces = []
        while start < stop:
            local = start - self.starts[first]
            take = min(stop - start, len(self.parts[first]) - local)
            pieces.append(self.parts[first][local : local + take])
            start += take
            first += 1
        return np.concatenate(pieces) if len(pieces) != 1 else pieces[0]


def open_split(directory: Path, meta: dict, split: str) -> Union[np.ndarray, ShardedTokens]:
    """A split's tokens, memory-mapped: one array, or ShardedTokens over several shards."""
    bad = missing_shard(directory, meta)
    if bad is not None:
        raise DataError(f"{directory}/{bad} is missing or not of the size meta.json records; prepare the data again")
    shards = [s for s in meta["splits"][split]["shards"] if s["tokens"] > 0]
    if not shards:
        raise DataError(f"{directory} has no {split} tokens")
    parts = [np.memmap(Path(directory) / s["file"], dtype=meta["dtype"], mode="r") for s in shards]
    return parts[0] if len(parts) == 1 else ShardedTokens(parts)


def tokens_per_byte(meta: dict, split: str = "val") -> Optional[float]:
    """Tokens per byte of text of a split (what turns nats per token into bits per byte)."""
    info = meta["splits"][split]
    return info["tokens"] / info["bytes"] if info.get("bytes") else None
