"""The tokenizer of a preparation: a Hugging Face `tokenizers` JSON file, or a byte-level BPE
trained on the corpus; its end-of-text token; and encoding in worker processes.

`tokenizers` is imported only here, and only when a preparation needs it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from scaleflow.errors import ConfigError, DataError

#: End-of-text tokens looked up, in this order, in a given tokenizer's vocabulary.
EOT_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[EOS]")
BPE_EOT = "<|endoftext|>"  # the special token a trained BPE gets (id 0)
UINT16_IDS = 2**16
MIN_BPE = 258  # 256 bytes, the end-of-text token and one merge


@dataclass(frozen=True)
class TokenizerInfo:
    json: str  # the tokenizer, as tokenizers JSON
    name: str
    sha256: str  # of its JSON text
    vocab_size: int  # ids 0 .. vocab_size - 1
    eot_id: int
    eot_token: str
    source: str  # the file it was read from, or "trained"


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise DataError("data prepare needs the `tokenizers` package: pip install 'scaleflow[data]'") from None
    return tokenizers


def _info(tok, text: str, name: str, eot_token: str, source: str) -> TokenizerInfo:
    eot_id = tok.token_to_id(eot_token)
    if eot_id is None:
        raise DataError(f"the tokenizer has no token {eot_token!r} (--eot-token)")
    vocab_size = max(tok.get_vocab(with_added_tokens=True).values()) + 1
    return TokenizerInfo(text, name, hashlib.sha256(text.encode()).hexdigest(), vocab_size, eot_id, eot_token, source)


def load(path: Path, eot_token: Optional[str] = None) -> TokenizerInfo:
    """A tokenizers JSON file; its end-of-text token is `eot_token` or the first of
    EOT_CANDIDATES it knows. DataError when it is unreadable or has none."""
    tokenizers = _tokenizers()
    try:
        text = Path(path).read_bytes().decode("utf-8")  # bytes as they are: its sha256 is the file's
        tok = tokenizers.Tokenizer.from_str(text)
    except OSError as exc:
        raise DataError(f"cannot read the tokenizer {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a tokenizers JSON file: not UTF-8") from None
    except Exception as exc:  # tokenizers raises a bare Exception for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path} is not a tokenizers JSON file: {first}") from None
    if eot_token is None:
        eot_token = next((t for t in EOT_CANDIDATES if tok.token_to_id(t) is not None), None)
        if eot_token is None:
            raise DataError(f"the tokenizer {path} has none of the end-of-text tokens {', '.join(EOT_CANDIDATES)}; "
                            "name its own with --eot-token")
    name = Path(path).parent.name if Path(path).name == "tokenizer.json" and Path(path).parent.name else Path(path).stem
    return _info(tok, text, name, eot_token, str(Path(path).resolve()))


def train_bpe(documents: Iterable[str], vocab_size: int) -> TokenizerInfo:
    """A byte-level BPE of `vocab_size` ids (GPT-2 pre-tokenization, all 256 bytes, and the
    special BPE_EOT as id 0), trained on `documents`."""
    if vocab_size < MIN_BPE:
        raise ConfigError(f"--train-bpe {vocab_size}: a byte-level BPE needs at least {MIN_BPE} ids (256 bytes, "
                          "the end-of-text token and one merge)")
    tokenizers = _tokenizers()
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BPE_EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(documents, trainer=trainer)
    return _info(tok, tok.to_str(), f"bpe-{vocab_size}", BPE_EOT, "trained")


def resolve_dtype(requested: str, vocab_size: int) -> str:
    """uint16 when every id fits (auto), else uint32; DataError for uint16 that cannot hold them."""
    if requested not in ("auto", "uint16", "uint32"):
        raise ConfigError(f"--dtype {requested} is not one of auto, uint16, uint32")
    if requested == "uint16" and vocab_size > UINT16_IDS:
        raise DataError(f"the tokenizer has {vocab_size} ids, more than uint16 holds ({UINT16_IDS}); "
                        "use --dtype uint32 or auto")
    if requested == "auto":
        return "uint16" if vocab_size <= UINT16_IDS else "uint32"
    return requested


# --------------------------------------------------------------------- encoding (per process)
_worker = None  # (tokenizer, eot_id) of this process


def start_worker(tokenizer_json: str, eot_id: int) -> None:
    """Pool initializer: load the tokenizer once per process; Ctrl-C is the parent's to handle."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    use_here(tokenizer_json, eot_id)


def use_here(tokenizer_json: str, eot_id: int) -> None:
    """Encode in this process. Special tokens written in a document ("<|endoftext|>" as text)
    are encoded as text: only the appended end-of-text token has its id."""
    global _worker
    tok = _tokenizers().Tokenizer.from_str(tokenizer_json)
    tok.encode_special_tokens = True
    _worker = (tok, eot_id)


def encode(texts: list[str], is_val: list[bool]) -> dict:
    """Each split's documents encoded, end-of-text appended: {split: (ids uint32, lengths)}.
    One document at a time (`encode`, not `encode_batch`): no threads of its own, so a
    worker is one core."""
    tok, eot = _worker
    out = {}
    for split, want in (("train", False), ("val", True)):
        ids = [tok.encode(t, add_special_tokens=False).ids for t, v in zip(texts, is_val) if v == want]
        lengths = np.array([len(x) + 1 for x in ids], dtype=np.int64)
        flat = np.fromiter(chain.from_iterable(x + [eot] for x in ids), dtype=np.uint32, count=int(lengths.sum()))
        out[split] = (flat, lengths)
    return out
