import numpy as np
import pytest

from scaleflow.config import DataConfig
from scaleflow.data import batch_offsets, load_corpus, stdlib_files
from scaleflow.errors import DataError


def test_stdlib_corpus_is_real_deterministic_and_split_by_file():
    files = stdlib_files()
    assert files == sorted(files, key=lambda p: p.as_posix())
    corpus = load_corpus(DataConfig(kind="stdlib"), 256)
    total = len(corpus.train) + len(corpus.val)
    assert 5e6 < total < 40e6  # about 12 MB on CPython 3.11
    assert 0.01 < len(corpus.val) / total < 0.15
    assert b"def " in corpus.train[:200_000].tobytes()
    again = load_corpus(DataConfig(kind="stdlib"), 256)
    assert np.array_equal(corpus.val, again.val)


def test_batch_is_a_pure_function_of_seed_and_step():
    a = batch_offsets(1, 7, 16, 10_000, 32)
    assert np.array_equal(a, batch_offsets(1, 7, 16, 10_000, 32))
    assert not np.array_equal(a, batch_offsets(1, 8, 16, 10_000, 32))
    assert not np.array_equal(a, batch_offsets(2, 7, 16, 10_000, 32))


def test_token_files(tmp_path):
    ids = np.arange(5000, dtype=np.uint16) % 1000
    ids.tofile(tmp_path / "train.bin")
    corpus = load_corpus(DataConfig(kind="tokens", paths=[str(tmp_path / "train.bin")]), 1024)
    assert corpus.vocab_size == 1000 and len(corpus.train) + len(corpus.val) == 5000
    with pytest.raises(DataError, match="vocab_size"):
        load_corpus(DataConfig(kind="tokens", paths=[str(tmp_path / "train.bin")]), 512)


def test_text_files_and_missing_files(tmp_path):
    (tmp_path / "a.txt").write_text("hello world " * 100)
    corpus = load_corpus(DataConfig(kind="text", paths=[str(tmp_path / "*.txt")]), 256)
    assert corpus.byte_level and len(corpus.train) > len(corpus.val) > 0
    with pytest.raises(DataError, match="does not exist"):
        load_corpus(DataConfig(kind="text", paths=[str(tmp_path / "nope.txt")]), 256)
