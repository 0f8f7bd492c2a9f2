"""`exiflang embed` and the embeddings folder: rows vs a naive per-photo reference, resume, refusals, skips."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from exiflang.eval.embed import run as embed_mod
from exiflang.eval.embed.batch import crop_patches, normalise_patches
from exiflang.eval.embed.command import main
from exiflang.eval.embed.patches import PatchEmbedder, even_grid, normalise_image
from exiflang.eval.embed.run import embed_shards
from exiflang.eval.embed.settings import EmbedConfig
from exiflang.eval.embed.store import load_embeddings, model_signature, part_paths
from exiflang.eval.images import load_rgb_bytes
from exiflang.pipeline import build_shards
from exiflang.pipeline.exif.text import render_text
from exiflang.train.data.samples import IMAGE_EXTS, read_groups, read_member
from exiflang.train.model import ExifClip, ModelConfig
from exiflang.train.tokenizer import build_tokenizer
from tests.shard_fixtures import synth_shards

PATCH, PER_SIDE = 64, 2  # small grids keep the random cpu-small model fast


def make_model(folder: Path, tags: dict, seed: int = 0, **overrides) -> Path:
    """A random-init cpu-small model folder with the given vocabulary."""
    torch.manual_seed(seed)
    tok = build_tokenizer("auto", None, max_length=64)
    model = ExifClip(ModelConfig.preset("cpu-small", vocab_size=len(tok), **overrides))
    return model.save_pretrained(folder, tok, tags)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """12 synthetic photos (256-320 px wide) in 3 shards (5, 5, 2), and a random model for them."""
    root = tmp_path_factory.mktemp("embed")
    synth_shards(root, cameras=3, images=12, rows_per_shard=5, size=(256, 320), bare=True)
    tags = json.loads((root / "shards" / "tags.json").read_text())
    return {"root": root, "shards": root / "shards", "model": make_model(root / "model", tags)}


def run(corpus: dict, out: Path, **kw) -> Path:
    config = EmbedConfig(patch=PATCH, per_side=PER_SIDE, progress=False, device="cpu")
    return embed_shards(corpus["model"], corpus["shards"], out, config, **kw)


def tar_samples(shards: Path) -> list[tuple[str, str, bytes, dict, dict]]:
    """(tar name, key, image bytes, exif, info) of every sample, sorted tars, tar order."""
    out = []
    for tar in sorted(shards.glob("*.tar")):
        with open(tar, "rb") as fh:
            for key, members in read_groups(tar):
                ext = next(e for e in IMAGE_EXTS if e in members)
                out.append(
                    (
                        tar.name,
                        key,
                        read_member(fh, members[ext]),
                        json.loads(read_member(fh, members["exif.json"])),
                        json.loads(read_member(fh, members["json"])),
                    )
                )
    return out


def test_patch_normalisation_equals_whole_image_path(corpus):
    rgb = np.random.default_rng(0).integers(0, 256, (150, 170, 3), dtype=np.uint8)
    grid = even_grid(150, 170, PATCH, 3)
    ours = normalise_patches(crop_patches(rgb, grid))
    whole = normalise_image(rgb)
    ref = torch.stack([whole[:, y : y + PATCH, x : x + PATCH] for y, x in grid.corners().tolist()])
    assert torch.equal(ours, ref)


def test_rows_equal_naive_reference(corpus, tmp_path):
    emb = load_embeddings(run(corpus, tmp_path / "emb", text=True, batch_size=8, workers=2))
    samples = tar_samples(corpus["shards"])
    assert len(emb) == len(samples) == 12 and emb.image.dtype == np.float32
    assert emb.image.shape == emb.text.shape == (12, 128)
    assert list(emb.table["key"]) == [s[1] for s in samples]
    assert list(emb.table["shard"]) == [s[0] for s in samples]
    model, tok, tags = ExifClip.from_pretrained(corpus["model"])
    embedder = PatchEmbedder(model, device="cpu", batch_size=64)
    for i, (_, key, data, exif, info) in enumerate(samples):
        rgb = load_rgb_bytes(data, key)
        ref = embedder.embed_photo(rgb, PATCH, PER_SIDE).numpy()
        np.testing.assert_allclose(emb.image[i], ref, atol=2e-5)
        enc = tok([render_text(exif, tags["tags"], "paper")], return_tensors="pt", truncation=True)
        with torch.no_grad():
            txt = model.encode_text(enc["input_ids"], enc["attention_mask"])[0].numpy()
        np.testing.assert_allclose(emb.text[i], txt, atol=2e-5)
        row = emb.table.iloc[i]
        assert (row["width"], row["height"]) == (rgb.shape[1], rgb.shape[0]) == (info["width"], info["height"])
        assert json.loads(row["exif"]) == exif and row["n_tags"] == len(exif)
        assert pd.isna(row["photo_id"]) if info.get("photo_id") is None else row["photo_id"] == info["photo_id"]
    np.testing.assert_allclose(np.linalg.norm(emb.image, axis=1), 1, atol=1e-5)
    assert emb.meta["model_signature"] == model_signature(corpus["model"])
    assert emb.meta["data_tags"] == emb.meta["model_tags"] and emb.meta["counts"]["rows"] == 12


def test_single_patch_is_the_centre_patch(corpus, tmp_path):
    emb = load_embeddings(run(corpus, tmp_path / "emb", mode="single", limit=3))
    model, _, _ = ExifClip.from_pretrained(corpus["model"])
    embedder = PatchEmbedder(model, device="cpu")
    for i, (_, key, data, _, _) in enumerate(tar_samples(corpus["shards"])[:3]):
        rgb = load_rgb_bytes(data, key)
        ref = embedder.embed_grid(rgb, even_grid(*rgb.shape[:2], PATCH, 1))[0].numpy()
        np.testing.assert_allclose(emb.image[i], ref, atol=2e-5)
    assert len(emb) == 3 and emb.meta["mode"] == "single" and emb.text is None


def test_crash_and_resume_give_identical_rows(corpus, tmp_path, monkeypatch):
    whole = load_embeddings(run(corpus, tmp_path / "whole", text=True, batch_size=12))
    calls = []
    real = embed_mod.embed_shard

    def crashing(*args, **kw):
        calls.append(args[0].name)
        if len(calls) == 2:
            raise RuntimeError("simulated crash in the second shard")
        return real(*args, **kw)

    monkeypatch.setattr(embed_mod, "embed_shard", crashing)
    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="simulated"):
        run(corpus, out, text=True, batch_size=12)
    with pytest.raises(ValueError, match=r"meta\.json: embedding not finished \(1 of 3"):
        load_embeddings(out)
    first_done = part_paths(out, "00000")["done"].stat().st_mtime_ns
    calls.clear()
    monkeypatch.setattr(embed_mod, "embed_shard", lambda *a, **kw: (calls.append(a[0].name), real(*a, **kw))[1])
    run(corpus, out, text=True, batch_size=12)
    assert calls == ["00001.tar", "00002.tar"]  # the finished shard was not redone
    assert part_paths(out, "00000")["done"].stat().st_mtime_ns == first_done
    # A lost part (its done marker gone) is redone on the next run.
    part_paths(out, "00001")["done"].unlink()
    part_paths(out, "00001")["image"].write_bytes(b"half-written")
    calls.clear()
    run(corpus, out, text=True, batch_size=12)
    assert calls == ["00001.tar"]
    again = load_embeddings(out)
    assert np.array_equal(again.image, whole.image) and np.array_equal(again.text, whole.text)
    assert again.table.equals(whole.table)


def test_other_settings_into_same_folder_refused(corpus, tmp_path, capsys):
    out = run(corpus, tmp_path / "emb", limit=2)
    with pytest.raises(ValueError, match=r"meta\.json: .*other settings \(differs in: per_side\)"):
        run(corpus, out, limit=2, per_side=3)
    other = make_model(tmp_path / "other", json.loads((corpus["shards"] / "tags.json").read_text()), seed=1)
    argv = [
        "--model",
        str(other),
        "--data",
        str(corpus["shards"]),
        "--out",
        str(out),
        "--patch-size",
        str(PATCH),
        "--per-side",
        str(PER_SIDE),
        "--limit",
        "2",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model_signature" in err and "meta.json" in err
    (out / "parts" / "00000.done.json").write_text(json.dumps({"settings_key": "x", "rows": 2}))
    with pytest.raises(ValueError, match=r"00000\.done\.json: embedded with other settings"):
        load_embeddings(out)


def test_cli_and_bad_inputs(corpus, tmp_path, capsys):
    out = tmp_path / "emb"
    argv = [
        "--model",
        str(corpus["model"]),
        "--data",
        str(corpus["shards"]),
        "--out",
        str(out),
        "--patch-size",
        str(PATCH),
        "--per-side",
        str(PER_SIDE),
        "--limit",
        "7",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    assert "embedded 7 photos from 2 shards" in capsys.readouterr().out
    assert len(load_embeddings(out)) == 7
    for bad, needle in (
        (["--model", str(tmp_path / "nope")], "config.json"),
        (["--data", str(tmp_path)], "no *.tar shards"),
        (["--out", str(corpus["shards"])], "not an embeddings folder"),
    ):
        args = list(argv)
        args[args.index(bad[0]) + 1] = bad[1]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and "\n" not in err
    with pytest.raises(FileNotFoundError, match=r"meta\.json: missing"):
        load_embeddings(corpus["shards"])
    part_paths(out, "00001")["image"].write_bytes(b"not numpy")
    with pytest.raises(ValueError, match=r"00001\.image\.npy: not a readable \.npy"):
        load_embeddings(out)


def _jpeg(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_bad_samples_are_skipped_and_counted(corpus, tmp_path):
    data = tmp_path / "bad"
    data.mkdir()
    good = tar_samples(corpus["shards"])[0]
    members = [
        ("a_good", "jpg", good[2], good[3]),
        ("b_garbage", "jpg", b"\xff\xd8 not a jpeg", good[3]),
        ("c_tiny", "jpg", _jpeg((40, 30)), good[3]),
        ("d_badexif", "jpg", good[2], None),
        ("e_good", "jpg", good[2], {"Make": "X"}),
    ]
    with tarfile.open(data / "00000.tar", "w") as tar:
        for key, ext, img, exif in members:
            for name, payload in (
                (f"{key}.{ext}", img),
                (f"{key}.exif.json", b"{broken" if exif is None else json.dumps(exif).encode()),
                (f"{key}.json", json.dumps({"key": key}).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    (data / "sizes.json").write_text(json.dumps({"00000.tar": len(members)}))
    shutil.copy(corpus["shards"] / "tags.json", data / "tags.json")
    out = embed_shards(corpus["model"], data, tmp_path / "emb", patch=PATCH, per_side=PER_SIDE, progress=False)
    emb = load_embeddings(out)
    assert list(emb.table["key"]) == ["a_good", "e_good"]
    assert emb.meta["counts"]["skipped"] == {"decode_failed": 1, "too_small": 1, "bad_json": 1}
    assert emb.table["n_tags"].tolist() == [len(good[3]), 1]


def test_real_photos(photos_dir, tmp_path):
    """A handful of the real dev photos, through the pipeline's shards, at the 124-px patch."""
    src = tmp_path / "photos"
    src.mkdir()
    picked = sorted(photos_dir.glob("*.jpg"), key=lambda p: p.stat().st_size)[:3]
    for p in picked:
        (src / p.name).symlink_to(p)
    assert build_shards.main(["--source", str(src), "--out", str(tmp_path / "sh"), "--executor", "local", "-q"]) == 0
    tags = json.loads((tmp_path / "sh" / "tags.json").read_text())
    model = make_model(tmp_path / "model", tags)
    emb = load_embeddings(
        embed_shards(model, tmp_path / "sh", tmp_path / "emb", per_side=2, progress=False, text=True, device="cpu")
    )
    kept = json.loads((tmp_path / "sh" / "sizes.json").read_text())["00000.tar"]
    assert len(emb) == kept >= 1 and emb.image.shape[1] == 128
    assert all(n >= 10 for n in emb.table["n_tags"]) and emb.table["width"].min() >= 124
    assert np.isfinite(emb.image).all() and np.isfinite(emb.text).all()
