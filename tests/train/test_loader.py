"""The streaming loader on real shards: shapes, exact crops, K crops, rank balance, exact resume, bad data."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from exiflang.train.data.crops import decode_crops, normalise, unnormalise
from exiflang.train.data.loader import DataConfig, build_loader
from exiflang.train.normalize import CLIP_MEAN, CLIP_STD
from exiflang.train.tokenizer import build_tokenizer
from tests.shard_fixtures import synth_shards

SAMPLES = 30  # synth images, 4 shards of 8, 8, 8, 6


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loader")
    synth_shards(root, cameras=3, images=SAMPLES, rows_per_shard=8, seed=0)
    return root / "shards"


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer("bert-uncased", max_length=256)


def members(shards: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of every tar: key -> {ext: bytes}."""
    out: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted(shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def run(shards: Path, tokenizer, **kw) -> list[dict]:
    opts = {k: kw.pop(k) for k in ("rank", "world_size", "epoch", "start_batch") if k in kw}
    cfg = DataConfig(data=str(shards), **{"batch_size": 4, "num_workers": 0, "shuffle_buffer": 16, **kw})
    return list(build_loader(cfg, tokenizer, **opts))


def same(a: list[dict], b: list[dict]) -> bool:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if x.keys() != y.keys() or x["keys"] != y["keys"]:
            return False
        for k, v in x.items():
            if torch.is_tensor(v) and not torch.equal(v, y[k]):
                return False
    return True


def test_shapes_dtypes_and_normalisation(shards, tokenizer):
    batches = run(shards, tokenizer)
    assert len(batches) == SAMPLES // 4
    b = batches[0]
    assert b["images"].shape == (4, 3, 124, 124) and b["images"].dtype == torch.float32
    lo = (0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    hi = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    per_channel = b["images"].transpose(0, 1).reshape(3, -1)
    assert (per_channel.min(1).values >= lo - 1e-5).all() and (per_channel.max(1).values <= hi + 1e-5).all()
    assert b["input_ids"].dtype == b["attention_mask"].dtype == b["text_ids"].dtype == torch.long
    assert b["input_ids"].shape == b["attention_mask"].shape and b["input_ids"].shape[1] <= 256
    assert (b["input_ids"][:, 0] == 101).all() and set(b["attention_mask"].unique().tolist()) <= {0, 1}
    assert b["text_ids"].shape == (4,) and len(b["keys"]) == 4
    for i in range(4):
        for j in range(4):
            assert (b["texts"][i] == b["texts"][j]) == bool(b["text_ids"][i] == b["text_ids"][j])


def test_crops_are_exact_native_resolution_copies(shards, tokenizer, monkeypatch):
    # Image.draft would shrink the JPEG at decode: make any use of it fail loudly.
    monkeypatch.setattr(Image.Image, "draft", lambda *a, **k: pytest.fail("draft used"))
    data = members(shards)
    batch = run(shards, tokenizer, crops_per_image=2)[1]
    for key, crop in zip(batch["keys"], unnormalise(batch["images"]).numpy()):
        full = np.asarray(Image.open(io.BytesIO(data[key]["jpg"])).convert("RGB"))
        ys, xs = np.nonzero((full[:-123, :-123] == crop[0, 0]).all(-1))
        assert any((full[y : y + 124, x : x + 124] == crop).all() for y, x in zip(ys, xs)), key


def test_k_crops_per_image_are_separate_samples(shards, tokenizer):
    batches = run(shards, tokenizer, crops_per_image=3, batch_size=5)
    assert len(batches) == SAMPLES * 3 // 5
    keys = [k for b in batches for k in b["keys"]]
    assert {keys.count(k) for k in set(keys)} == {3} and len(set(keys)) == SAMPLES
    images = torch.cat([b["images"] for b in batches])
    first = keys.index(keys[0])
    others = [i for i, k in enumerate(keys) if k == keys[0] and i != first]
    assert all(not torch.equal(images[first], images[i]) for i in others)  # different boxes
    batch_of = {k: {i // 5 for i, kk in enumerate(keys) if kk == k} for k in set(keys)}
    assert sum(len(v) > 1 for v in batch_of.values()) > SAMPLES // 2  # the shuffle spreads them


def test_grouped_crops_keep_an_images_k_crops_in_one_batch_and_resume(shards, tokenizer):
    kw = dict(crops_per_image=3, batch_size=6, group_crops=True, epoch=1)
    batches = run(shards, tokenizer, **kw)
    assert len(batches) == SAMPLES * 3 // 6
    keys = [k for b in batches for k in b["keys"]]
    assert {keys.count(k) for k in set(keys)} == {3} and len(set(keys)) == SAMPLES
    for b in batches:  # K consecutive crops of one photo, one text between them
        assert all(len(set(b["keys"][i : i + 3])) == 1 for i in range(0, 6, 3))
        assert torch.equal(b["text_ids"][0::3], b["text_ids"][2::3])
        assert len(set(b["keys"])) == 2
    ungrouped = [k for b in run(shards, tokenizer, crops_per_image=3, batch_size=6, epoch=1) for k in b["keys"]]
    assert keys != ungrouped
    images = [keys[i] for i in range(0, len(keys), 3)]
    assert images != sorted(images)  # the buffer still shuffles the photos
    assert same(batches[4:], run(shards, tokenizer, start_batch=4, **kw))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on a 2-core machine
@pytest.mark.parametrize("workers", [0, 2, 3])  # 3: 6 slots > 4 shards -> split by sample index
def test_two_ranks_yield_equal_counts_and_disjoint_samples(shards, tokenizer, workers):
    per_rank = [run(shards, tokenizer, rank=r, world_size=2, num_workers=workers) for r in (0, 1)]
    assert [len(b) for b in per_rank] == [SAMPLES // 8] * 2
    keys = [{k for b in batches for k in b["keys"]} for batches in per_rank]
    assert not keys[0] & keys[1]


@pytest.mark.parametrize("workers", [0, 2])
def test_deterministic_and_exact_resume(shards, tokenizer, workers):
    kw = dict(crops_per_image=2, num_workers=workers, text_format="shuffled", epoch=1)
    full = run(shards, tokenizer, **kw)
    assert len(full) == SAMPLES * 2 // 4
    assert same(full, run(shards, tokenizer, **kw))
    assert same(full[3:], run(shards, tokenizer, start_batch=3, **kw))
    assert not same(full, run(shards, tokenizer, **{**kw, "epoch": 2}))


def test_resume_on_a_rank_of_two_with_workers(shards, tokenizer):
    kw = dict(rank=1, world_size=2, num_workers=2, crops_per_image=4, batch_size=3)
    full = run(shards, tokenizer, **kw)
    assert same(full[5:], run(shards, tokenizer, start_batch=5, **kw))


def _add(tar: tarfile.TarFile, key: str, parts: dict[str, bytes]) -> None:
    for ext, data in parts.items():
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _png(size: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(size).randint(0, 255, (size, size, 3), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def broken(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shards plus a tar of bad samples (and one good) plus a truncated copy of a tar."""
    root = tmp_path_factory.mktemp("broken")
    for p in shards.glob("*.tar"):
        shutil.copy(p, root / p.name)
    shutil.copy(shards / "tags.json", root / "tags.json")
    good = members(shards)["00000_00000"]
    exif = good["exif.json"]
    png = _png(200)
    with tarfile.open(root / "00004.tar", "w") as tar:
        _add(tar, "bad_00000", {"jpg": b"not a jpeg at all", "exif.json": exif})
        _add(tar, "bad_00001", {"jpg": good["jpg"][: len(good["jpg"]) // 2], "exif.json": exif})
        _add(tar, "bad_00002", {"jpg": good["jpg"]})  # no exif.json
        _add(tar, "bad_00003", {"jpg": good["jpg"], "exif.json": b"{not json"})
        _add(tar, "bad_00004", {"png": _png(64), "exif.json": exif})  # too small
        _add(tar, "bad_00005", {"png": png[: len(png) // 2], "exif.json": exif})  # header ok, decode fails
        _add(tar, "bad_00006", {"jpg": good["jpg"], "exif.json": exif})  # fine
    data = (shards / "00001.tar").read_bytes()
    (root / "00005.tar").write_bytes(data[: len(data) * 6 // 10])
    sizes = json.loads((shards / "sizes.json").read_text())
    sizes.update({"00004.tar": 7, "00005.tar": 8})
    (root / "sizes.json").write_text(json.dumps(sizes))
    return root


def test_corrupt_samples_and_shards_are_skipped_and_counted(broken, tokenizer):
    cfg = DataConfig(data=str(broken), batch_size=4, num_workers=0, shuffle_buffer=8)
    loader = build_loader(cfg, tokenizer)
    batches = list(loader)
    assert len(batches) == loader.batches_per_epoch == (SAMPLES + 15) // 4
    stats = loader.stats()
    assert {"not_an_image", "corrupt_image", "missing_exif", "bad_json", "too_small", "decode_failed"} <= set(
        stats["reasons"]
    ) and loader.skipped == stats["skipped"] >= 6
    assert stats["shard_errors"] >= 1 and stats["substituted"] >= 1
    assert "bad_00006" in {k for b in batches for k in b["keys"]}
    assert same(batches[4:], list(build_loader(cfg, tokenizer, start_batch=4)))


def test_cropclr_pairs_two_crops_of_one_image(shards):
    batches = run(shards, None, cropclr=True, crops_per_image=2)
    b = batches[0]
    assert set(b) == {"images", "images2", "keys"} and b["images2"].shape == b["images"].shape
    assert not torch.equal(b["images"], b["images2"])
    assert len(batches) == SAMPLES * 2 // 4


def test_single_tag_vocabulary_and_formats(shards, tokenizer):
    b = run(shards, tokenizer, tags=["Model"])[0]
    assert all(t.startswith("Model: ") and t.count(": ") == 1 for t in b["texts"])
    assert b["input_ids"].shape[1] < 20
    b = run(shards, tokenizer, text_format="code", clean_values=True, max_text_len=32)[0]
    assert b["input_ids"].shape[1] == 32 and ", " in b["texts"][0]


def test_resampled_mode_has_fixed_length_and_resumes(shards, tokenizer):
    full = run(shards, tokenizer, resampled=True, num_workers=2)
    assert len(full) == SAMPLES // 4
    assert same(full[2:], run(shards, tokenizer, resampled=True, num_workers=2, start_batch=2))


def test_folder_errors_name_the_file(shards, tokenizer, tmp_path):
    def error(path: Path, exc: type, **kw) -> str:
        with pytest.raises(exc) as info:
            build_loader(DataConfig(data=str(path), **kw), tokenizer)
        assert "\n" not in str(info.value)
        return str(info.value)

    assert str(tmp_path / "nope") in error(tmp_path / "nope", FileNotFoundError)
    assert "no *.tar" in error(tmp_path, FileNotFoundError)
    shutil.copy(shards / "00000.tar", tmp_path / "00000.tar")
    assert "sizes.json" in error(tmp_path, FileNotFoundError)
    (tmp_path / "sizes.json").write_text('{"00000.tar": 8}')
    assert "tags.json" in error(tmp_path, FileNotFoundError)
    doc = json.loads((shards / "tags.json").read_text())
    (tmp_path / "tags.json").write_text(json.dumps({**doc, "tags": doc["tags"][:-1]}))
    assert "tags.json" in error(tmp_path, ValueError) and "hash" in error(tmp_path, ValueError)
    assert "global batch" in error(tmp_path, ValueError, tags=["Model"], batch_size=64)


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA", "P", "I;16"])
def test_decode_crops_handles_modes(mode):
    rng = np.random.RandomState(0)
    if mode == "I;16":
        img = Image.fromarray(rng.randint(0, 65535, (130, 140)).astype(np.uint16))
        assert img.mode == "I;16"
    else:
        img = Image.fromarray(rng.randint(0, 255, (130, 140, 3), np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG" if mode in ("L", "CMYK") else ("TIFF" if mode == "I;16" else "PNG"))
    (crop,) = decode_crops(buf.getvalue(), [(5, 3, 129, 127)])
    assert crop.shape == (124, 124, 3) and crop.dtype == np.uint8
    ref = Image.open(io.BytesIO(buf.getvalue()))
    if mode == "I;16":
        expect = (np.asarray(ref).astype(np.int64)[3:127, 5:129] + 128) // 257
        assert (crop == expect[:, :, None]).all()
    else:
        assert (crop == np.asarray(ref.convert("RGB"))[3:127, 5:129]).all()
    assert (unnormalise(normalise([crop]))[0].numpy() == crop).all()


@pytest.mark.parametrize("fmt", ["paper", "shuffled"])
def test_token_ids_match_the_tokenizer_padding_longest(shards, tokenizer, fmt):
    for b in run(shards, tokenizer, crops_per_image=3, text_format=fmt, max_text_len=200)[:4]:
        ref = tokenizer(b["texts"], padding="longest", truncation=True, max_length=200, return_tensors="pt")
        assert torch.equal(b["input_ids"], ref["input_ids"])
        assert torch.equal(b["attention_mask"], ref["attention_mask"])


def test_resume_decodes_only_what_it_yields(shards, tokenizer, monkeypatch):
    import exiflang.train.data.loader as loader_module

    calls = []

    def counting(data, boxes):
        calls.append(1)
        return decode_crops(data, boxes)

    monkeypatch.setattr(loader_module, "decode_crops", counting)
    kw = dict(shuffle_buffer=4)
    full = run(shards, tokenizer, **kw)
    decoded_full, calls[:] = len(calls), []
    tail = run(shards, tokenizer, start_batch=len(full) - 1, **kw)
    assert same(full[-1:], tail)
    assert len(calls) <= 4 + 4 < decoded_full  # the last batch + what the buffer held, no more


def test_worker_loader_leaves_the_global_torch_rng_alone(shards, tokenizer):
    # A resumed run creates its DataLoader at another step than an uninterrupted one: if that
    # consumed the global torch RNG, the model's dropout draws would differ between the two.
    state = torch.get_rng_state()
    run(shards, tokenizer, num_workers=2)
    assert torch.equal(state, torch.get_rng_state())


def test_buffered_shuffle_is_a_seeded_permutation_and_seeds_are_stable_across_processes():
    import os
    import random
    import subprocess
    import sys

    from exiflang.train.data.shuffle import shuffled, stable_seed

    items = list(range(200))
    a = list(shuffled(items, 16, random.Random(1)))
    assert sorted(a) == items and a != items
    assert a == list(shuffled(items, 16, random.Random(1)))
    assert list(shuffled(items, 1, random.Random(1))) == items  # a buffer of one keeps the order
    # Python's hash() is salted per process; the loader's seeds must not be.
    code = "from exiflang.train.data.shuffle import stable_seed; print(stable_seed(0, 'epoch', 3))"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
        cwd=str(Path(__file__).resolve().parents[2]),
    )
    assert int(other.stdout) == stable_seed(0, "epoch", 3) != stable_seed(0, "epoch", 4)
