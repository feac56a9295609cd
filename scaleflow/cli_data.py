"""`scaleflow data prepare`: text, JSONL, parquet or a local Hugging Face dataset into token
shards and meta.json (scaleflow/prepare/, docs/data.md).

`register(app, console)` adds the `data` command group to the main typer app (scaleflow/cli.py
calls it). `tokenizers` and `datasets` are imported only when a preparation runs, so `--help`
stays instant. Bad input raises ScaleflowError: one line and exit code 2 from the entry point.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from scaleflow.exit_codes import EXIT_CTRL_C

data_app = typer.Typer(help="Prepare your own data: tokenize documents into shards the trainer reads.",
                       no_args_is_help=True)


def default_workers() -> int:
    """min(4, the cores this process may use)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores))


@contextmanager
def _progress_bar(total_bytes: Optional[int]):
    """A rich progress bar on stderr (off when stderr is not a terminal); yields on_progress."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = [SpinnerColumn(), TextColumn("tokenizing"), BarColumn(), TextColumn("{task.fields[tokens]} tokens"),
               TextColumn("{task.fields[rate]} tokens/s"), TextColumn("{task.fields[docs]} documents"),
               TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True), disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("tokenizing", total=total_bytes, tokens="0", rate="-", docs="0")
        counts, started = [0, 0], time.perf_counter()

        def on_progress(tokens: int, nbytes: int, documents: int) -> None:
            counts[0] += tokens
            counts[1] += documents
            rate = counts[0] / max(time.perf_counter() - started, 1e-9)
            bar.update(task, advance=nbytes, tokens=f"{counts[0]:,}", rate=f"{rate:,.0f}", docs=f"{counts[1]:,}")

        yield on_progress


def register(app: typer.Typer, console: Console) -> None:
    """Add the `data` command group (`data prepare`) to `app`, printing to `console`."""

    @data_app.command("prepare")
    def prepare_cmd(
        inputs: Annotated[list[str], typer.Argument(help="Text files (one document each), .jsonl or .parquet files, "
                                                    "a dataset directory saved with save_to_disk, or a folder of "
                                                    ".jsonl/.parquet data files.", show_default=False)],
        out: Annotated[Path, typer.Option("--out", help="The directory to write: shards, tokenizer.json, meta.json.",
                                          show_default=False)],
        tokenizer: Annotated[Optional[Path], typer.Option("--tokenizer", help="A Hugging Face tokenizers JSON file.",
                                                          show_default=False)] = None,
        train_bpe: Annotated[Optional[int], typer.Option("--train-bpe", help="Train a byte-level BPE of this many "
                                                         "ids on the inputs instead (saved as OUT/tokenizer.json).",
                                                         show_default=False)] = None,
        text_field: Annotated[str, typer.Option("--text-field", help="The field of a document in JSONL, parquet "
                                                "and datasets.")] = "text",
        val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of documents (chosen by a hash "
                                                    "of their text) in the validation split.")] = 0.05,
        dtype: Annotated[str, typer.Option("--dtype", help="Token dtype: auto (uint16 when the vocabulary fits), "
                                           "uint16 or uint32.")] = "auto",
        workers: Annotated[Optional[int], typer.Option("--workers", help="Tokenizing processes; default "
                                                       "min(4, cores). The output does not depend on it.",
                                                       show_default=False)] = None,
        shard_tokens: Annotated[int, typer.Option("--shard-tokens", help="A shard closes at the first document "
                                                  "end past this many tokens.")] = 100_000_000,
        eot_token: Annotated[Optional[str], typer.Option("--eot-token", help="A given tokenizer's end-of-text "
                                                         "token; default: the first it has of <|endoftext|>, "
                                                         "<|end_of_text|>, </s>, <eos>.", show_default=False)] = None,
    ) -> None:
        """Tokenize documents into train/val token shards and meta.json; resumable, a no-op when done."""
        from scaleflow.prepare.pipeline import PrepareOptions, prepare
        from scaleflow.prepare.sources import resolve, text_bytes_total

        opts = PrepareOptions(list(inputs), out, tokenizer, train_bpe, text_field, val_fraction, dtype,
                              workers or default_workers(), shard_tokens, eot_token)
        try:
            with _progress_bar(text_bytes_total(resolve(opts.inputs))) as on_progress:
                result = prepare(opts, on_progress)
        except KeyboardInterrupt:
            Console(stderr=True).print(f"interrupted: the finished shards are kept; the same command continues "
                                       f"from there (meta.json is written once {out} is complete)",
                                       markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_CTRL_C) from None
        _report(console, opts, result)

    app.add_typer(data_app, name="data")


def _report(console: Console, opts, result) -> None:
    meta = result.meta
    for note in result.notes:
        console.print(note, markup=False, highlight=False)
    splits = ", ".join(f"{s} {meta['splits'][s]['documents']:,} documents, {meta['splits'][s]['tokens']:,} tokens "
                       f"in {len(meta['splits'][s]['shards'])} shard(s)" for s in ("train", "val"))
    if result.noop:
        console.print(f"{opts.out} is already prepared from these inputs with these settings: nothing to do ({splits})",
                      markup=False, highlight=False, soft_wrap=True)
        return
    console.print(f"prepared {opts.out}: {splits}; vocab_size {meta['vocab_size']} ({meta['dtype']}), "
                  f"end-of-text id {meta['eot_id']}", markup=False, highlight=False, soft_wrap=True)
    rate = result.tokens / result.encode_s if result.encode_s else 0.0
    console.print(f"tokenized {result.tokens:,} tokens in {result.encode_s:.1f} s: {rate:,.0f} tokens/s on "
                  f"{opts.workers} worker(s)", markup=False, highlight=False)
    console.print(f"train on it: scaleflow train data=tokens data.path={opts.out} model.vocab_size={meta['vocab_size']}",
                  markup=False, highlight=False, soft_wrap=True)
