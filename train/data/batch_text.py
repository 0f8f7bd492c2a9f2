"""A batch's text side: each image's EXIF rendered and tokenised once, padded, and given text ids."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol

from exiflang.pipeline.exif.text import RANDOM_ORDER, render_text
from exiflang.train.data.crops import pad_ids
from exiflang.train.loss import text_ids_from_strings


class TextSample(Protocol):
    """What :func:`batch_text` reads and caches on a sample (the loader's per-image record)."""

    exif: Any  # {"Tag Name": "value"}
    seed: int  # the image's seed; item i of it renders random-order text with seed + i
    text: Any  # cached rendered text, or None
    ids: Any  # cached token ids, or None


def batch_text(
    items: Sequence[tuple[TextSample, int]],
    vocab: Sequence[str],
    tokenizer: Any,
    *,
    fmt: str,
    clean: bool,
    max_len: int,
) -> dict[str, Any]:
    """(sample, crop index) items -> ``texts``, ``text_ids`` ``[B]`` int64, and ``input_ids`` /
    ``attention_mask`` ``[B, L]`` padded like ``padding="longest"`` (L <= ``max_len``).

    A sample's K items share one rendering and one tokenisation, cached on the sample, except in
    the per-item random-order formats (``shuffled``, ``values_shuffled``): tokenising costs about a
    quarter of a 6-megapixel decode.
    """
    cache = fmt not in RANDOM_ORDER
    need = [not cache or s.text is None for s, _ in items]
    texts = [
        render_text(s.exif, vocab, fmt, clean=clean, rng=random.Random(s.seed + i)) if new else s.text
        for (s, i), new in zip(items, need)
    ]
    fresh = [t for t, new in zip(texts, need) if new]
    encoded = iter(tokenizer(fresh, truncation=True, max_length=max_len)["input_ids"] if fresh else ())
    ids = [next(encoded) if new else s.ids for (s, _), new in zip(items, need)]
    if cache:
        for (s, _), text, row in zip(items, texts, ids):
            s.text, s.ids = text, row
    input_ids, mask = pad_ids(ids, tokenizer.pad_token_id or 0, tokenizer.padding_side)
    return {"input_ids": input_ids, "attention_mask": mask, "text_ids": text_ids_from_strings(texts), "texts": texts}
