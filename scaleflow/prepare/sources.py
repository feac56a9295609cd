"""The inputs of `scaleflow data prepare`, read as one stream of documents in a fixed order.

An input is
- a text file: one document (UTF-8);
- a JSONL file (.jsonl, .ndjson): one document per line, the string under `text_field`;
- a parquet file: one document per row, the column `text_field`;
- a directory saved with `datasets`' `save_to_disk` (a Dataset, or a DatasetDict whose splits
  are read in name order): one document per row, read with `datasets.load_from_disk`;
- a directory of .parquet / .jsonl data files (a local copy of a dataset's files), sorted.

Documents come in input order, then file order, then line or row order; that order, and so
every document's index, does not depend on anything but the inputs. Empty documents (and
null texts) are skipped, but keep their index. Nothing is fetched from a hub.
"""

from __future__ import annotations

import glob
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from scaleflow.errors import DataError

_JSONL = (".jsonl", ".ndjson")
_PARQUET = (".parquet",)
_DATASET_MARKERS = ("state.json", "dataset_info.json", "dataset_dict.json")


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str  # text | jsonl | parquet | dataset


def resolve(inputs: list[str]) -> list[Source]:
    """The inputs as sources (a glob pattern expands, sorted); DataError for a path that
    does not exist or a directory that is neither a dataset nor a folder of data files."""
    if not inputs:
        raise DataError("give at least one input: text files, .jsonl or .parquet files, or a dataset directory")
    sources: list[Source] = []
    for text in inputs:
        path = Path(text).expanduser()
        matches = [path] if path.exists() else [Path(m) for m in sorted(glob.glob(str(path)))]
        if not matches:
            raise DataError(f"input {text} does not exist")
        for match in matches:
            sources.extend(_sources_of(match))
    return sources


def _sources_of(path: Path) -> list[Source]:
    if path.is_dir():
        if any((path / name).exists() for name in _DATASET_MARKERS):
            return [Source(path, "dataset")]
        files = sorted((p for p in path.rglob("*") if p.is_file() and p.suffix in _JSONL + _PARQUET
                        and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                       key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise DataError(f"{path} is not a dataset: no save_to_disk files ({', '.join(_DATASET_MARKERS)}) and no "
                            ".parquet or .jsonl data files in it; give text files themselves (e.g. DIR/*.txt)")
        return [_file_source(f) for f in files]
    return [_file_source(path)]


def _file_source(path: Path) -> Source:
    suffix = path.suffix.lower()
    return Source(path, "jsonl" if suffix in _JSONL else "parquet" if suffix in _PARQUET else "text")


def fingerprint(sources: list[Source]) -> list[dict]:
    """What identifies the inputs without reading them: every file's path, size and mtime."""
    out = []
    for source in sources:
        files = sorted(p for p in source.path.rglob("*") if p.is_file()) if source.path.is_dir() else [source.path]
        for f in files:
            try:
                st = f.stat()
            except OSError as exc:
                raise DataError(f"cannot read {f}: {exc.strerror}") from None
            out.append({"path": str(f.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def summary(sources: list[Source], files: list[dict], shown: int = 100) -> dict:
    """What meta.json records of the inputs: the first `shown` input paths, how many files and
    bytes, and a hash of every file's path, size and mtime (`fingerprint`)."""
    blob = json.dumps(files, sort_keys=True).encode()
    return {"paths": [str(s.path.resolve()) for s in sources[:shown]], "paths_left_out": max(0, len(sources) - shown),
            "files": len(files), "bytes": sum(f["size"] for f in files),
            "fingerprint_sha256": hashlib.sha256(blob).hexdigest()}


def text_bytes_total(sources: list[Source]) -> Optional[int]:
    """Bytes of text ahead when every input is a text file (a progress bar's total), else None."""
    if any(s.kind != "text" for s in sources):
        return None
    return sum(s.path.stat().st_size for s in sources)


def documents(sources: list[Source], text_field: str, start: int = 0) -> Iterator[tuple[int, str]]:
    """(index, text) of every non-empty document from index `start` on (earlier text files
    are not read). DataError, naming the file, for unreadable input."""
    index = 0
    for source in sources:
        if source.kind == "text":
            text = _read_text(source.path) if index >= start else ""
            if text:
                yield index, text
            index += 1
            continue
        reader = {"jsonl": _jsonl, "parquet": _parquet, "dataset": _dataset}[source.kind]
        for text in reader(source.path, text_field):
            if index >= start and text:
                yield index, text
            index += 1


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start} is not): convert it or leave it out") from None


def _field(value, text_field: str, where: str) -> str:
    if not isinstance(value, dict) or text_field not in value:
        keys = ", ".join(sorted(value)) if isinstance(value, dict) else type(value).__name__
        raise DataError(f"{where} has no field {text_field!r} (it has: {keys}); choose one with --text-field")
    text = value[text_field]
    if text is not None and not isinstance(text, str):
        raise DataError(f"{where}: field {text_field!r} is a {type(text).__name__}, not text")
    return text or ""


def _jsonl(path: Path, text_field: str) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except ValueError:
                    raise DataError(f"{path} line {number} is not JSON") from None
                yield _field(value, text_field, f"{path} line {number}")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None


def _parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not parquet
        raise DataError(f"cannot read {path} as parquet: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    names = table.schema_arrow.names
    if text_field not in names:
        raise DataError(f"{path} has no column {text_field!r} (it has: {', '.join(names)}); choose one with --text-field")
    for batch in table.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is not None and not isinstance(text, str):
                raise DataError(f"{path}: column {text_field!r} holds {type(text).__name__}, not text")
            yield text or ""


def _dataset(path: Path, text_field: str) -> Iterator[str]:
    try:
        from datasets import Dataset, load_from_disk
    except ImportError:
        raise DataError("reading a Hugging Face dataset needs the `datasets` package: pip install 'scaleflow[data]'") from None
    try:
        loaded = load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, JSON and Arrow errors here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path} is not a dataset saved with save_to_disk: {first}") from None
    parts = [loaded] if isinstance(loaded, Dataset) else [loaded[name] for name in sorted(loaded)]
    for part in parts:
        if text_field not in part.column_names:
            raise DataError(f"{path} has no column {text_field!r} (it has: {', '.join(part.column_names)}); "
                            "choose one with --text-field")
        for batch in part.select_columns([text_field]).iter(batch_size=1024):
            for text in batch[text_field]:
                if text is not None and not isinstance(text, str):
                    raise DataError(f"{path}: column {text_field!r} holds {type(text).__name__}, not text")
                yield text or ""
