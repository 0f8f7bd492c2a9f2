"""The fourth cell of the tag-format ablation: ``values_shuffled`` renders values only, in a random
order per sample (and per crop in the loader), reproducibly for a seed."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from exiflang.pipeline.exif.text import FORMATS, render_text
from exiflang.train.data.loader import DataConfig, build_loader
from exiflang.train.tokenizer import build_tokenizer

EXIF = {
    "Make": "Canon",
    "Model": "EOS-5D",
    "ISO Speed Ratings": "400",
    "Exposure Time": "1/60",
    "F Number": "f/2.8",
    "Flash": "No",
    "Unused": "x",
}
VOCAB = ["Make", "Model", "ISO Speed Ratings", "Exposure Time", "F Number", "Flash"]


def test_values_only_in_a_random_order_per_call():
    assert {"paper", "values", "shuffled", "values_shuffled"} <= set(FORMATS)
    values = [EXIF[t] for t in VOCAB]
    orders = {render_text(EXIF, VOCAB, "values_shuffled", rng=random.Random(s)) for s in range(30)}
    for text in orders:
        assert Counter(text.split(" ")) == Counter(values) and ":" not in text
    assert len(orders) > 20  # the order really is drawn
    assert render_text(EXIF, VOCAB, "values_shuffled", rng=random.Random(3)) == render_text(
        EXIF, VOCAB, "values_shuffled", rng=random.Random(3)
    )
    assert render_text(EXIF, VOCAB, "values") == " ".join(values)  # the ordered cell is unchanged


def test_loader_renders_each_crop_its_own_order(tiny_shards: Path):
    tok = build_tokenizer("bert-uncased", max_length=256)

    def texts() -> list[tuple[str, str]]:
        cfg = DataConfig(
            data=str(tiny_shards),
            batch_size=8,
            patch_size=64,
            crops_per_image=2,
            shuffle_buffer=16,
            num_workers=0,
            text_format="values_shuffled",
        )
        return [(k, t) for b in build_loader(cfg, tok) for k, t in zip(b["keys"], b["texts"])]

    got = texts()
    assert got == texts()  # reproducible for the run's seed
    by_key: dict[str, set[str]] = {}
    for key, text in got:
        assert "Make:" not in text and "Model:" not in text
        by_key.setdefault(key, set()).add(text)
    assert sum(len(v) == 2 for v in by_key.values()) > len(by_key) // 2  # crops of a photo differ
    for variants in by_key.values():
        assert len({tuple(sorted(t.split())) for t in variants}) == 1  # same values, reordered
