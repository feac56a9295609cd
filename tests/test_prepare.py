"""`scaleflow data prepare` and the trainer reading its output (docs/data.md).

Tiny corpora made here (about 100 KB), a BPE of 400 ids, shards of a few thousand tokens so
that every split has several. CLI commands run in this process (scaleflow.cli.main), which
is what `scaleflow ...` runs, without a new interpreter per command.
"""

from __future__ import annotations

import io
import json
import math
import random
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest

from scaleflow.errors import ConfigError, DataError, StoreError
from scaleflow.prepare.pipeline import PrepareOptions, is_val_document, prepare

BPE = 400
SHARD = 3000  # tokens per shard: several shards per split
TINY = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.seq_len=32", "trainer.batch_size=8",
        "trainer.eval_sequences=8"]


def make_docs(n: int = 160, seed: int = 0) -> list[str]:
    """`n` documents of made-up words, some with non-ASCII text (bytes != characters)."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstu") for _ in range(rng.randint(2, 8))) for _ in range(300)]
    words += ["café", "naïve", "日本語", "Ωmega"]
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 120))) + "." for _ in range(n)]
    docs[3] += " A document may quote <|endoftext|>: it stays text."
    return docs


def write_text_files(folder: Path, docs: list[str]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, doc in enumerate(docs):
        (folder / f"doc{i:04d}.txt").write_text(doc, encoding="utf-8")
        paths.append(str(folder / f"doc{i:04d}.txt"))
    return paths


def write_jsonl(path: Path, docs: list[str], field: str = "text") -> str:
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    return str(path)


def cli(*args: str) -> tuple[int, str, str]:
    """`scaleflow ARGS` in this process: (exit code, stdout, stderr)."""
    from scaleflow.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["scaleflow", *args]
    try:
        with redirect_stdout(out), redirect_stderr(err):
            main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def documents_of(folder: Path, split: str) -> list[str]:
    """A split's documents, decoded from its shards (cut at the end-of-text token)."""
    from tokenizers import Tokenizer

    meta = json.loads((folder / "meta.json").read_text())
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = np.concatenate([np.fromfile(folder / s["file"], dtype=meta["dtype"]) for s in meta["splits"][split]["shards"]])
    assert ids[-1] == meta["eot_id"]
    cuts = np.flatnonzero(ids == meta["eot_id"])
    starts = np.concatenate([[0], cuts[:-1] + 1])
    return [tok.decode(ids[a:b].tolist()) for a, b in zip(starts, cuts)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[list[str], list[str]]:
    """The documents and their text files."""
    docs = make_docs()
    return docs, write_text_files(tmp_path_factory.mktemp("docs"), docs)


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory) -> Path:
    """The corpus prepared by the command line, with a BPE trained on it."""
    out = tmp_path_factory.mktemp("prepared") / "data"
    code, stdout, stderr = cli("data", "prepare", *corpus[1], "--out", str(out), "--train-bpe", str(BPE),
                               "--shard-tokens", str(SHARD), "--workers", "1")
    assert code == 0, stderr
    assert "prepared" in stdout and "tokens/s" in stdout
    return out


def test_meta_describes_the_shards(prepared, corpus):
    import hashlib

    docs = corpus[0]
    meta = json.loads((prepared / "meta.json").read_text())
    assert meta["format_version"] == 1 and meta["dtype"] == "uint16" and meta["vocab_size"] <= BPE
    assert meta["tokenizer"]["sha256"] == hashlib.sha256((prepared / "tokenizer.json").read_bytes()).hexdigest()
    assert meta["tokenizer"]["name"] == f"bpe-{BPE}" and meta["eot_token"] == "<|endoftext|>"
    val = [d for d in docs if is_val_document(d.encode(), 0.05)]
    train = [d for d in docs if not is_val_document(d.encode(), 0.05)]
    assert len(meta["splits"]["train"]["shards"]) > 3
    for split, texts in (("train", train), ("val", val)):
        info = meta["splits"][split]
        assert info["documents"] == len(texts) > 0
        assert info["bytes"] == sum(len(t.encode()) for t in texts)  # UTF-8 bytes, not characters
        assert info["tokens"] == sum(s["tokens"] for s in info["shards"])
        for shard in info["shards"]:
            ids = np.fromfile(prepared / shard["file"], dtype=np.uint16)
            assert len(ids) == shard["tokens"] and int((ids == meta["eot_id"]).sum()) == shard["documents"]
        # the shards hold the documents in input order, each followed by the end-of-text token
        assert documents_of(prepared, split) == texts


def test_a_run_on_prepared_data_reports_bits_per_byte(prepared, tmp_path):
    meta = json.loads((prepared / "meta.json").read_text())
    code, _, stderr = cli("train", f"run_dir={tmp_path}", "data=tokens", f"data.path={prepared}",
                          f"model.vocab_size={meta['vocab_size']}", "trainer.steps=4", *TINY)
    assert code == 0, stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    val = meta["splits"]["val"]
    assert summary["val_bpb"] == pytest.approx(summary["val_loss"] / math.log(2) * val["tokens"] / val["bytes"])
    assert summary["val_bpb"] < summary["val_loss"] / math.log(2)  # several bytes per token


def test_byte_level_bits_per_byte_are_unchanged(tmp_path):
    from scaleflow.config import DataConfig, compose_run
    from scaleflow.data import load_corpus
    from scaleflow.plan import plan_run
    from scaleflow.run_files import summary_fields

    (tmp_path / "a.txt").write_text("hello world " * 100)
    assert load_corpus(DataConfig(kind="text", paths=[str(tmp_path / "a.txt")]), 256).tokens_per_byte == 1.0
    cfg = compose_run(TINY)
    fields = lambda ratio: summary_fields(cfg, plan_run(cfg), [{"step": 1, "val_loss": 2.5}], "done", None, "x",
                                          1.0, ratio)["val_bpb"]
    assert fields(1.0) == 2.5 / math.log(2)
    assert fields(None) is None


def test_vocab_mismatch_and_data_path_rules(prepared):
    from scaleflow.config import DataConfig, compose_run
    from scaleflow.data import load_corpus, train_tokens

    meta = json.loads((prepared / "meta.json").read_text())
    with pytest.raises(ConfigError, match=f"vocab_size={meta['vocab_size']}.*model.vocab_size=512"):
        load_corpus(DataConfig(kind="tokens", path=str(prepared)), 512)
    corpus = load_corpus(DataConfig(kind="tokens", path=str(prepared)), meta["vocab_size"])
    assert len(corpus.train) == meta["splits"]["train"]["tokens"] == train_tokens(DataConfig(kind="tokens", path=str(prepared)))
    assert np.array_equal(corpus.train[SHARD - 5 : SHARD + 3 * SHARD],  # across shard boundaries
                          np.concatenate([np.fromfile(prepared / s["file"], dtype=np.uint16)
                                          for s in meta["splits"]["train"]["shards"]])[SHARD - 5 : SHARD + 3 * SHARD])
    with pytest.raises(ConfigError, match="not both"):
        compose_run(["data=tokens", f"data.path={prepared}", "data.paths=[x.bin]"])
    with pytest.raises(DataError, match="meta.json"):
        load_corpus(DataConfig(kind="tokens", path=str(prepared.parent)), meta["vocab_size"])
    # a study is refused when it is planned, not in each of its jobs
    from scaleflow.config import compose_study
    from scaleflow.sweep import plan_study

    study = compose_study("isoflop_cpu", ["data=tokens", f"data.path={prepared}", "model.vocab_size=512"])
    with pytest.raises(ConfigError, match=f"vocab_size={meta['vocab_size']}.*model.vocab_size=512"):
        plan_study(study, "isoflop")


def test_existing_run_ids_are_unchanged():
    from scaleflow.config import compose_run, run_id

    # ids of these configs before data.path existed
    assert run_id(compose_run([])) == "49a90c62e5"
    assert run_id(compose_run(["data=tokens", "data.paths=[a.bin]", "model.vocab_size=1000"])) == "fe5156c78b"
    assert run_id(compose_run(["data=tokens", "data.path=a", "model.vocab_size=1000"])) != "fe5156c78b"


def test_an_interrupted_prepare_continues_to_the_same_bytes(corpus, tmp_path):
    docs, files = corpus
    inputs = files[:60] + [write_jsonl(tmp_path / "more.jsonl", docs[60:])]
    options = lambda out: PrepareOptions(inputs, out, train_bpe=BPE, shard_tokens=SHARD)
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    prepare(options(whole))

    finished = []

    def stop_after_two(split, shard):
        finished.append(shard["file"])
        if len(finished) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(options(stopped), on_shard=stop_after_two)
    assert not (stopped / "meta.json").exists() and (stopped / "progress.json").exists()
    (stopped / ".train_002.bin.partial").write_bytes(b"half a shard")
    (stopped / "train_003.bin").write_bytes(b"a shard not recorded as finished")
    result = prepare(options(stopped))
    assert result.resumed_shards == 2 and not result.noop
    assert 0 < result.tokens < result.meta["splits"]["train"]["tokens"] + result.meta["splits"]["val"]["tokens"]
    assert files_of(stopped) == files_of(whole)

    again = prepare(options(stopped))
    assert again.noop and again.meta == result.meta
    code, stdout, _ = cli("data", "prepare", *inputs, "--out", str(stopped), "--train-bpe", str(BPE),
                          "--shard-tokens", str(SHARD))
    assert code == 0 and "nothing to do" in stdout
    with pytest.raises(StoreError, match="other inputs or settings"):
        prepare(PrepareOptions(inputs, stopped, train_bpe=BPE, shard_tokens=SHARD, val_fraction=0.1))
    assert files_of(stopped) == files_of(whole)

    (stopped / "meta.json").unlink()
    (stopped / "val_000.bin").unlink()  # a finished run with a shard and meta.json gone: redone
    assert not prepare(options(stopped)).noop
    assert files_of(stopped) == files_of(whole)


def test_workers_and_input_kinds_do_not_change_the_tokens(corpus, prepared, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    docs, files = corpus
    tokenizer = str(prepared / "tokenizer.json")
    run = lambda out, inputs, workers=1: prepare(PrepareOptions(inputs, tmp_path / out, tokenizer=Path(tokenizer),
                                                                workers=workers, shard_tokens=SHARD))
    run("one", files, 1)
    run("two", files, 2)
    assert files_of(tmp_path / "one") == files_of(tmp_path / "two")
    Dataset.from_dict({"text": docs, "n": list(range(len(docs)))}).save_to_disk(str(tmp_path / "hf"))
    pq.write_table(pa.table({"body": docs}), tmp_path / "docs.parquet")
    run("hf", [str(tmp_path / "hf")])
    with pytest.raises(DataError, match="no column 'text'"):
        run("pq", [str(tmp_path / "docs.parquet")])
    prepare(PrepareOptions([str(tmp_path / "docs.parquet")], tmp_path / "pq", tokenizer=Path(tokenizer),
                           shard_tokens=SHARD, text_field="body"))
    shards = lambda out: {k: v for k, v in files_of(tmp_path / out).items() if k.endswith(".bin")}
    assert shards("hf") == shards("pq") == shards("one")
    assert (tmp_path / "one" / "tokenizer.json").read_bytes() == Path(tokenizer).read_bytes()


def test_the_split_follows_the_text_not_its_position(corpus, prepared, tmp_path):
    docs, files = corpus
    shuffled = list(reversed(files))
    meta = prepare(PrepareOptions(shuffled, tmp_path / "r", tokenizer=prepared / "tokenizer.json",
                                  shard_tokens=SHARD, val_fraction=0.2)).meta
    expected_val = [d for d in reversed(docs) if is_val_document(d.encode(), 0.2)]
    assert documents_of(tmp_path / "r", "val") == expected_val
    assert 0.1 < len(expected_val) / len(docs) < 0.3 and meta["val_fraction"] == 0.2
    assert set(documents_of(tmp_path / "r", "train")) == set(docs) - set(expected_val)


def _big_vocab_tokenizer(path: Path) -> str:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    vocab = {f"w{i}": i for i in range(70_000)}
    vocab["<|endoftext|>"] = len(vocab)
    vocab["[UNK]"] = len(vocab)
    Tokenizer(WordLevel(vocab, unk_token="[UNK]")).save(str(path))
    return str(path)


BAD_INPUTS = {
    "missing file": (lambda d: [str(d / "nope.txt")], [], "does not exist"),
    "not UTF-8": (lambda d: [_bytes(d / "bin.txt", b"ok \xff\xfe")], [], "not UTF-8"),
    "empty corpus": (lambda d: [_bytes(d / "e1.txt", b""), _bytes(d / "e2.txt", b"")], [], "empty corpus"),
    "uint16 too small": (lambda d: [_bytes(d / "a.txt", b"w1 w2")], ["--dtype", "uint16", "--tokenizer", "BIG"],
                         "more than uint16"),
    "empty dataset folder": (lambda d: [_mkdir(d / "ds")], [], "is not a dataset"),
    "broken dataset": (lambda d: [_broken_dataset(d / "ds")], [], "not a dataset saved"),
    "JSONL without the field": (lambda d: [_bytes(d / "a.jsonl", b'{"body": "x"}\n')], [], "has no field 'text'"),
}


def _bytes(path, data: bytes) -> str:
    Path(path).write_bytes(data)
    return str(path)


def _mkdir(path: Path) -> str:
    path.mkdir()
    return str(path)


def _broken_dataset(path: Path) -> str:
    """A folder that looks saved by save_to_disk (state.json) but is not."""
    path.mkdir()
    (path / "state.json").write_text("{}")
    return str(path)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_nothing_complete(case, tmp_path):
    make, extra, message = BAD_INPUTS[case]
    inputs = make(tmp_path)
    if "BIG" in extra:
        extra = [_big_vocab_tokenizer(tmp_path / "big.json") if x == "BIG" else x for x in extra]
    elif "--tokenizer" not in extra:
        extra = extra + ["--train-bpe", "300"]
    out = tmp_path / "out"
    code, stdout, stderr = cli("data", "prepare", *inputs, "--out", str(out), *extra)
    assert code == 2, (stdout, stderr)
    assert stderr.startswith("error: ") and message in stderr and stderr.count("\n") == 1, stderr
    assert not (out / "meta.json").exists()


def test_dry_run_states_epochs_and_warns_once_data_repeats(prepared, tmp_path):
    from scaleflow.config import compose_study
    from scaleflow.sweep import plan_rows, plan_study

    meta = json.loads((prepared / "meta.json").read_text())
    args = ["data=tokens", f"data.path={prepared}", f"model.vocab_size={meta['vocab_size']}", "study.budgets=[1e11]"]
    code, stdout, stderr = cli("sweep", "isoflop", "isoflop_cpu", *args, "--dry-run")
    assert code == 0, stderr
    assert "epochs" in stdout
    assert stderr.count("warning:") == 1 and "Muennighoff" in stderr
    specs = plan_study(compose_study("isoflop_cpu", args), "isoflop")
    rows = plan_rows(specs, 2e10)
    assert [r["epochs"] for r in rows] == pytest.approx([s.tokens / meta["splits"]["train"]["tokens"] for s in specs])
    missing = plan_rows(plan_study(compose_study("isoflop_cpu", ["data=text", "data.paths=[/no/such.txt]",
                                                                 "study.budgets=[1e11]"]), "isoflop"), 2e10)
    assert {r["epochs"] for r in missing} == {None}
    external = plan_rows(plan_study(compose_study("isoflop_cpu", ["command.template='python train.py'",
                                                                  "study.budgets=[1e11]"]), "isoflop"), 2e10)
    assert {r["epochs"] for r in external} == {None}  # its own data, not data.*
    code, stdout, stderr = cli("sweep", "isoflop", "isoflop_cpu", "study.budgets=[1e11]", "--dry-run")
    assert code == 0 and "warning" not in stderr and " - " not in stdout.split("epochs")[1]


def test_a_study_on_a_prepared_few_mb_corpus_is_trained_and_fitted(tmp_path):
    """The whole path on real tokens: a corpus of a few MB, a BPE trained on it, a tiny
    IsoFLOP study on the shards (bits per byte in its table), and its fit."""
    from scaleflow.collect import collect
    from scaleflow.config import compose_study
    from scaleflow.sweep import sweep

    docs = make_docs(n=6000, seed=1)
    source = write_jsonl(tmp_path / "corpus.jsonl", docs)
    assert (tmp_path / "corpus.jsonl").stat().st_size > 2e6
    out = tmp_path / "data"
    code, _, stderr = cli("data", "prepare", source, "--out", str(out), "--train-bpe", "512")
    assert code == 0, stderr
    vocab = json.loads((out / "meta.json").read_text())["vocab_size"]
    shapes = ", ".join(f"{{n_layer: 1, d_model: {d}, n_head: 2}}" for d in (8, 16, 24, 32))
    cfg = compose_study("isoflop_cpu", [f"study_dir={tmp_path / 'study'}", "data=tokens", f"data.path={out}",
                                        f"model.vocab_size={vocab}", "model.seq_len=32", "trainer.batch_size=8",
                                        "trainer.eval_every=1000", "trainer.eval_sequences=16",
                                        f"study.shapes=[{shapes}]", "study.budgets=[3e9, 6e9]", "study.min_steps=20"])
    report = sweep(cfg, "isoflop")
    assert report.outcome.finished == len(report.specs) == 8
    runs = collect(tmp_path / "study").runs
    assert runs["val_bpb"].notna().all() and (runs["val_bpb"] < runs["loss"] / math.log(2)).all()
    code, stdout, stderr = cli("fit", str(tmp_path / "study"), "--law", "approach3", "--bootstrap", "0", "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["approach3"]["alpha"] > 0
