"""One `scaleflow data prepare` run: inputs -> tokenizer -> train/val shards -> meta.json.

Documents are assigned to a split by a hash of their text, tokenized in batches by `workers`
processes, and written in document order whatever the number of workers. A run over the
same inputs and settings as a finished one does nothing; an unfinished one continues from
its progress file (scaleflow/prepare/shards.py). meta.json is written last, atomically.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from scaleflow.errors import ConfigError, DataError, StoreError
from scaleflow.files import write_json, write_text
from scaleflow.prepare import shards, sources as src, tokenizer as toks
from scaleflow.prepare.meta import FORMAT, FORMAT_VERSION, META_NAME, SPLITS, load_meta, missing_shard

SPLIT_RULE = "sha1 of the document's UTF-8 text: its first 8 bytes as a big-endian integer / 2**64 < val_fraction"
_BATCH_BYTES = 1 << 20  # text per batch sent to a worker
_BATCH_DOCS = 1024


@dataclass
class PrepareOptions:
    inputs: list[str]
    out: Path
    tokenizer: Optional[Path] = None  # a tokenizers JSON file ...
    train_bpe: Optional[int] = None  # ... or the vocabulary size (ids) of a BPE trained here
    text_field: str = "text"  # JSONL / parquet / dataset field holding a document
    val_fraction: float = 0.05  # share of documents (by hash) in the validation split
    dtype: str = "auto"  # auto | uint16 | uint32
    workers: int = 1  # tokenizing processes
    shard_tokens: int = 100_000_000  # a shard closes at the first document end past this many tokens
    eot_token: Optional[str] = None  # a given tokenizer's end-of-text token; None: looked up


@dataclass
class PrepareResult:
    meta: dict
    noop: bool = False  # already prepared with these inputs and settings
    resumed_shards: int = 0  # shards an earlier, stopped run had finished
    tokens: int = 0  # tokens encoded by this run
    encode_s: float = 0.0  # seconds spent reading, encoding and writing
    notes: list[str] = field(default_factory=list)


def is_val_document(raw: bytes, val_fraction: float) -> bool:
    """The split of a document (SPLIT_RULE): a pure function of its text."""
    return int.from_bytes(hashlib.sha1(raw).digest()[:8], "big") / 2**64 < val_fraction


def _check(opts: PrepareOptions) -> None:
    if (opts.tokenizer is None) == (opts.train_bpe is None):
        raise ConfigError("give one tokenizer: --tokenizer path/to/tokenizer.json or --train-bpe VOCAB_SIZE")
    if opts.train_bpe is not None and opts.train_bpe < toks.MIN_BPE:
        raise ConfigError(f"--train-bpe {opts.train_bpe}: a byte-level BPE needs at least {toks.MIN_BPE} ids "
                          "(256 bytes, the end-of-text token and one merge)")
    if not 0 < opts.val_fraction < 1:
        raise ConfigError(f"--val-fraction must lie in (0, 1), got {opts.val_fraction}")
    if opts.workers < 1 or opts.shard_tokens < 1:
        raise ConfigError("--workers and --shard-tokens must be positive")
    if opts.tokenizer is None and opts.eot_token is not None:
        raise ConfigError(f"--eot-token is for a given tokenizer; a trained BPE's is {toks.BPE_EOT}")


def _settings(opts: PrepareOptions, inputs: list[dict], tokenizer: str, dtype: str) -> str:
    """A hash of everything the output depends on (not of --workers: it does not change it)."""
    blob = {"format_version": FORMAT_VERSION, "inputs": inputs, "text_field": opts.text_field,
            "tokenizer": tokenizer, "eot_token": opts.eot_token, "val_fraction": opts.val_fraction,
            "dtype": dtype, "shard_tokens": opts.shard_tokens}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def prepare(opts: PrepareOptions, on_progress: Optional[Callable[[int, int, int], None]] = None,
            on_shard: Optional[Callable[[str, dict], None]] = None) -> PrepareResult:
    """Prepare `opts.out`. `on_progress(tokens, bytes, documents)` after each batch (increments);
    `on_shard(split, shard)` after each finished shard is recorded. Raises ScaleflowError."""
    _check(opts)
    out = Path(opts.out)
    sources = src.resolve(opts.inputs)
    given = toks.load(opts.tokenizer, opts.eot_token) if opts.tokenizer is not None else None
    dtype = toks.resolve_dtype(opts.dtype, given.vocab_size if given else opts.train_bpe)
    inputs = src.fingerprint(sources)
    settings = _settings(opts, inputs, given.sha256 if given else f"bpe:{opts.train_bpe}", dtype)
    notes: list[str] = []
    if out.exists() and not out.is_dir():
        raise StoreError(f"--out {out} is a file, not a directory")
    finished = load_meta(out) if out.is_dir() else None
    if finished is not None:
        if finished.get("settings") != settings:
            raise StoreError(f"{out} holds data prepared from other inputs or settings; choose another --out or delete it")
        bad = missing_shard(out, finished)
        if bad is None:
            return PrepareResult(finished, noop=True)
        notes.append(f"{bad} was missing or incomplete: preparing {out} again")
        shards.clear(out)
    out.mkdir(parents=True, exist_ok=True)
    progress = shards.load_progress(out, settings)
    tok = given or _bpe_tokenizer(out, sources, opts, progress)
    if progress is None or progress.get("tokenizer_sha256") != tok.sha256:
        shards.clear(out)  # a fresh start: nothing of an earlier run with other settings stays
        progress = None
    shards.remove_partials(out)
    write_text(out / "tokenizer.json", tok.json)
    states = shards.split_states(progress)
    resumed = sum(len(s.shards) for s in states.values())
    if resumed:
        notes.append(f"continuing: {resumed} shard(s) of an earlier run were finished")
    started = time.perf_counter()
    tokens = _encode_all(opts, sources, tok, dtype, settings, states, on_progress, on_shard)
    meta = _meta(opts, tok, dtype, settings, src.summary(sources, inputs), states)
    write_json(out / META_NAME, meta)
    (out / shards.PROGRESS_NAME).unlink(missing_ok=True)
    return PrepareResult(meta, False, resumed, tokens, time.perf_counter() - started, notes)


def _bpe_tokenizer(out: Path, sources: list, opts: PrepareOptions, progress: Optional[dict]) -> toks.TokenizerInfo:
    """The BPE an unfinished run trained (when its file is intact), or a new one."""
    saved = out / "tokenizer.json"
    if progress is not None and saved.is_file():
        info = toks.load(saved, toks.BPE_EOT)
        if info.sha256 == progress.get("tokenizer_sha256"):
            return replace(info, name=f"bpe-{opts.train_bpe}", source="trained")
    count = [0]

    def texts() -> Iterator[str]:
        for _, text in src.documents(sources, opts.text_field):
            count[0] += 1
            yield text

    info = toks.train_bpe(texts(), opts.train_bpe)
    if not count[0]:
        raise DataError("the inputs hold no text (an empty corpus): nothing to train a tokenizer on")
    return info


def _batches(docs: Iterator[tuple[int, str]], states: dict, val_fraction: float) -> Iterator[dict]:
    """Documents not yet in a finished shard, in batches: texts, is_val, and per split the
    UTF-8 bytes and indices of its documents."""
    batch, size = [], 0
    for index, text in docs:
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(f"document {index} is not valid Unicode (a lone surrogate)") from None
        split = "val" if is_val_document(raw, val_fraction) else "train"
        if index < states[split].next_doc:
            continue
        batch.append((index, text, split, len(raw)))
        size += len(raw)
        if size >= _BATCH_BYTES or len(batch) >= _BATCH_DOCS:
            yield _batch(batch)
            batch, size = [], 0
    if batch:
        yield _batch(batch)


def _batch(docs: list[tuple]) -> dict:
    per_split = {s: [d for d in docs if d[2] == s] for s in SPLITS}
    return {"texts": [d[1] for d in docs], "is_val": [d[2] == "val" for d in docs],
            "nbytes": {s: np.array([d[3] for d in ds], dtype=np.int64) for s, ds in per_split.items()},
            "indices": {s: np.array([d[0] for d in ds], dtype=np.int64) for s, ds in per_split.items()}}


@contextmanager
def _encoder(tok: toks.TokenizerInfo, workers: int):
    """A function from batches to (batch, encoded) in batch order: here, or in a pool of
    `workers` processes with a bounded number of batches in flight."""
    if workers == 1:
        toks.use_here(tok.json, tok.eot_id)
        yield lambda batches: ((b, toks.encode(b["texts"], b["is_val"])) for b in batches)
        return
    import multiprocessing

    # spawn: the parent may hold tokenizers' threads (BPE training), which a fork would not copy
    pool = multiprocessing.get_context("spawn").Pool(workers, toks.start_worker, (tok.json, tok.eot_id))

    def ordered(batches):
        pending: deque = deque()
        for batch in batches:
            pending.append((batch, pool.apply_async(toks.encode, (batch["texts"], batch["is_val"]))))
            if len(pending) >= 4 * workers:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()

    try:
        yield ordered
    finally:
        pool.terminate()
        pool.join()


def _encode_all(opts, sources, tok, dtype, settings, states, on_progress, on_shard) -> int:
    """Encode and write every document not yet in a finished shard; the tokens encoded."""
    def closed(split: str) -> None:
        shards.save_progress(opts.out, settings, tok.sha256, states)
        if on_shard is not None:
            on_shard(split, states[split].shards[-1])

    writers = {s: shards.SplitWriter(opts.out, s, dtype, opts.shard_tokens, states[s], closed) for s in SPLITS}
    shards.save_progress(opts.out, settings, tok.sha256, states)
    docs = src.documents(sources, opts.text_field, start=min(st.next_doc for st in states.values()))
    total = 0
    try:
        with _encoder(tok, opts.workers) as encode:
            for batch, encoded in encode(_batches(docs, states, opts.val_fraction)):
                for split in SPLITS:
                    writers[split].add(*encoded[split], batch["nbytes"][split], batch["indices"][split])
                n = sum(len(encoded[s][0]) for s in SPLITS)
                total += n
                if on_progress is not None:
                    on_progress(n, sum(int(batch["nbytes"][s].sum()) for s in SPLITS), len(batch["texts"]))
        for split in SPLITS:
            writers[split].finish()
    finally:
        for writer in writers.values():
            writer.abort()
    _check_splits(states, opts.val_fraction)
    return total


def _check_splits(states: dict, val_fraction: float) -> None:
    docs = {s: sum(sh["documents"] for sh in states[s].shards) for s in SPLITS}
    if not docs["train"] and not docs["val"]:
        raise DataError("the inputs hold no text (an empty corpus)")
    for split, other in (("val", "train"), ("train", "val")):
        if not docs[split]:
            raise DataError(f"no document fell into the {split} split ({docs[other]} documents, --val-fraction "
                            f"{val_fraction}): give more documents or another --val-fraction")


def _meta(opts, tok: toks.TokenizerInfo, dtype: str, settings: str, inputs: dict, states: dict) -> dict:
    splits = {}
    for split in SPLITS:
        done = states[split].shards
        splits[split] = {key: sum(sh[key] for sh in done) for key in ("documents", "tokens", "bytes")}
        splits[split]["shards"] = done
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "settings": settings,
        "tokenizer": {"name": tok.name, "sha256": tok.sha256, "file": "tokenizer.json", "source": tok.source},
        "vocab_size": tok.vocab_size, "dtype": dtype, "eot_id": tok.eot_id, "eot_token": tok.eot_token,
        "val_fraction": opts.val_fraction, "split": SPLIT_RULE, "text_field": opts.text_field,
        "shard_tokens": opts.shard_tokens, "inputs": inputs, "splits": splits,
    }
