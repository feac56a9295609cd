"""Throughput of `scaleflow data prepare` on the stdlib corpus (the Python standard library's
own .py files, as scaleflow.data reads them, one document per file), with a BPE trained on it.

    python benchmarks/prepare_throughput.py [--bpe 8192] [--workers 1,2,4]

Trains the BPE once (timed), then tokenizes and writes the shards with each worker count into
a fresh directory; prints tokens per second of tokenizing and writing (reading, hashing,
encoding, shard writes; not the BPE training) and the machine. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from scaleflow.cli_data import default_workers
from scaleflow.data import stdlib_files
from scaleflow.prepare.pipeline import PrepareOptions, prepare


def machine() -> str:
    """CPU model, usable cores, OS and Python."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} usable cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bpe", type=int, default=8192, help="BPE vocabulary size (ids)")
    parser.add_argument("--workers", default=None, help="comma-separated worker counts; default 1 and min(4, cores)")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")] if args.workers else sorted({1, default_workers()})
    files = [str(p) for p in stdlib_files()]
    size = sum(Path(f).stat().st_size for f in files)
    print(f"machine: {machine()}")
    print(f"corpus: {len(files)} stdlib files, {size / 1e6:.1f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        first = Path(tmp) / "bpe"
        started = time.perf_counter()
        result = prepare(PrepareOptions(files, first, train_bpe=args.bpe, workers=counts[0]))
        total = time.perf_counter() - started
        print(f"BPE {args.bpe} trained and the corpus prepared in {total:.1f} s (of which tokenizing "
              f"{result.encode_s:.1f} s); {result.tokens:,} tokens, {size / result.tokens:.2f} bytes per token")
        tokenizer = Path(tmp) / "tokenizer.json"
        shutil.copy(first / "tokenizer.json", tokenizer)
        for workers in counts:
            out = Path(tmp) / f"w{workers}"
            result = prepare(PrepareOptions(files, out, tokenizer=tokenizer, workers=workers))
            print(f"workers={workers}: {result.tokens / result.encode_s:,.0f} tokens/s "
                  f"({result.tokens:,} tokens in {result.encode_s:.2f} s)")


if __name__ == "__main__":
    main()
