"""Every rank its own randomness: on shards that hold one photo many times over, two ranks cut
different crops at the same step (and random-order texts differ), while a rank repeats itself.
(Dropout masks per rank: tests/train/test_ddp_resume.py, from a real 2-process run.)"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from exiflang.train.data.loader import DataConfig, build_loader
from exiflang.train.data.samples import read_groups, read_member
from exiflang.train.data.shuffle import rank_seed
from exiflang.train.tokenizer import build_tokenizer

COPIES = 8  # per tar, 2 tars


@pytest.fixture(scope="module")
def one_photo(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tars of the same photo and EXIF under distinct keys: crops differ only by offset."""
    out = tmp_path_factory.mktemp("one_photo")
    with open(tiny_shards / "00000.tar", "rb") as fh:
        _, members = next(read_groups(fh))
        photo, exif = read_member(fh, members["jpg"]), read_member(fh, members["exif.json"])
    for t in range(2):
        with tarfile.open(out / f"{t:05d}.tar", "w") as tar:
            for i in range(COPIES):
                for ext, data in (("jpg", photo), ("exif.json", exif)):
                    info = tarfile.TarInfo(f"{t}_{i:03d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (out / "sizes.json").write_text(json.dumps({f"{t:05d}.tar": COPIES for t in range(2)}))
    shutil.copy(tiny_shards / "tags.json", out / "tags.json")
    return out


def _first_batch(data: Path, rank: int, workers: int) -> dict:
    cfg = DataConfig(
        data=str(data),
        batch_size=4,
        patch_size=64,
        crops_per_image=2,
        shuffle_buffer=8,
        num_workers=workers,
        text_format="values_shuffled",
        seed=7,
    )
    loader = build_loader(cfg, build_tokenizer("bert-uncased", max_length=256), rank=rank, world_size=2)
    return next(iter(loader))


@pytest.mark.parametrize("workers", [0, 1])
def test_two_ranks_cut_different_crops_of_the_same_photo_at_the_same_step(one_photo: Path, workers: int):
    a, b = _first_batch(one_photo, 0, workers), _first_batch(one_photo, 1, workers)
    assert a["images"].shape == b["images"].shape == (4, 3, 64, 64)
    # Same pixels under every key, so any difference is the crop offset drawn by the rank.
    for x in a["images"]:
        assert not any(torch.equal(x, y) for y in b["images"])
    assert a["texts"] != b["texts"]  # random value order drawn per rank too
    again = _first_batch(one_photo, 0, workers)
    assert torch.equal(a["images"], again["images"]) and a["texts"] == again["texts"]


def test_rank_seeds_are_distinct_and_rank_0_keeps_the_run_seed():
    assert rank_seed(1234, 0) == 1234  # one-process runs draw what they drew
    seeds = {rank_seed(1234, r) for r in range(64)}
    assert len(seeds) == 64 and all(0 <= s < 2**32 for s in seeds)
    assert rank_seed(1234, 1) != rank_seed(1235, 1)
