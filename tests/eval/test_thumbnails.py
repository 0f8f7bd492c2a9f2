"""An index's thumbnails: made under the image policy, stored by row, a missing photo is no thumbnail (not an error)."""

from __future__ import annotations

import io
import json
import logging
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from exiflang.eval.images import ImageError
from exiflang.eval.index.run import build_index
from exiflang.eval.index.thumbnails import (
    Thumbnails,
    ThumbSettings,
    add_thumbnails,
    make_thumbnail,
    write_thumbnails,
)
from exiflang.pipeline.image_policy import MAX_PIXELS_ENV


def jpeg(width: int, height: int, orientation: int | None = None, seed: int = 0) -> bytes:
    """A noisy RGB JPEG (quality 90), optionally with an EXIF orientation tag."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    img, buf = Image.fromarray(pixels), io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    img.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def grey_png_bomb(side: int) -> bytes:
    """A valid ``side`` x ``side`` all-black grey PNG: ``side**2`` pixels in a file of a few kB."""
    raw = zlib.compress(b"".join(b"\x00" + bytes(side) for _ in range(side)), 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    ihdr = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def forged_header(data: bytes, width: int, height: int) -> bytes:
    """``data`` (a baseline JPEG) with its SOF0 frame claiming ``width`` x ``height``."""
    at = data.index(b"\xff\xc0")
    return data[: at + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[at + 9 :]


def tar_of(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))


def test_thumbnail_is_a_small_upright_jpeg_without_metadata():
    thumb = Image.open(io.BytesIO(make_thumbnail(jpeg(400, 200), "wide.jpg")))
    assert thumb.format == "JPEG" and thumb.size == (128, 64) and "exif" not in thumb.info
    # Orientation 6: stored landscape, shown turned 90 degrees - a person sees it upright.
    turned = Image.open(io.BytesIO(make_thumbnail(jpeg(400, 200, orientation=6), "turned.jpg")))
    assert turned.size == (64, 128)
    small = Image.open(io.BytesIO(make_thumbnail(jpeg(60, 40), "small.jpg")))
    assert small.size == (60, 40)  # never enlarged
    big = Image.open(io.BytesIO(make_thumbnail(jpeg(1000, 700), "big.jpg", ThumbSettings(max_side=96))))
    assert big.size == (96, 67)


def test_real_photo_thumbnail(photos_dir):
    path = sorted(photos_dir.glob("*.jpg"))[0]
    data = make_thumbnail(path.read_bytes(), str(path))
    assert Image.open(io.BytesIO(data)).format == "JPEG" and max(Image.open(io.BytesIO(data)).size) == 128
    assert len(data) < 8000


def test_the_image_policy_refuses_a_decompression_bomb_and_a_forged_header(monkeypatch):
    bomb = grey_png_bomb(2000)  # 4 MP in a few kB
    assert len(bomb) < 10_000 and Image.open(io.BytesIO(bomb)).size == (2000, 2000)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000000")  # the default policy, lowered to 1 MP
    with pytest.raises(ImageError, match=r"bomb\.png: too large: 2000x2000 is 4\.0 MP, over the 1 MP limit"):
        make_thumbnail(bomb, "bomb.png")
    monkeypatch.delenv(MAX_PIXELS_ENV)
    assert Image.open(io.BytesIO(make_thumbnail(bomb, "bomb.png"))).size == (128, 128)  # under 200 MP: fine
    with pytest.raises(ImageError, match="implausible size"):
        make_thumbnail(forged_header(jpeg(64, 64), 9000, 9000), "forged.jpg")
    with pytest.raises(ImageError, match="not a readable image"):
        make_thumbnail(b"not an image at all", "text.jpg")


def test_rows_without_a_usable_photo_get_no_thumbnail(tmp_path, monkeypatch, caplog):
    data = tmp_path / "shards"
    data.mkdir()
    good, truncated = jpeg(300, 200, seed=1), jpeg(300, 200, seed=2)[:400]
    tar_of(
        data / "00000.tar",
        {
            "a.jpg": good,
            "a.exif.json": b"{}",
            "b.exif.json": b"{}",  # a sample without an image member
            "c.png": grey_png_bomb(1500),  # 2.25 MP: over the lowered limit below
            "d.jpg": truncated,
        },
    )
    (tmp_path / "loose.jpg").write_bytes(jpeg(100, 150, seed=3))
    table = pd.DataFrame(
        {
            "key": ["a", "b", "c", "d", "e", "f", "loose.jpg", "gone.jpg"],
            "shard": ["00000.tar"] * 4 + ["99999.tar", "00000.tar", "images-00000", "images-00000"],
            "url": [None] * 6 + [str(tmp_path / "loose.jpg"), str(tmp_path / "gone.jpg")],
        }
    )
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000000")
    out = tmp_path / "index"
    out.mkdir()
    with caplog.at_level(logging.WARNING, "exiflang.eval"):
        summary = write_thumbnails(out, table, data, ThumbSettings(workers=2))
    assert summary["made"] == 2 and summary["rows"] == 8
    assert summary["missing"] == {
        "file_missing": 1,
        "no_image": 1,
        "not_in_shard": 1,
        "refused_or_broken": 2,
        "shard_missing": 1,
    }
    assert any("c.png: too large" in r.getMessage() for r in caplog.records)
    thumbs = Thumbnails.open(out, len(table))
    assert thumbs is not None and len(thumbs) == 2
    assert [thumbs.has(i) for i in range(8)] == [True] + [False] * 5 + [True, False]
    assert Image.open(io.BytesIO(thumbs.get(0))).size == (128, 85)
    assert Image.open(io.BytesIO(thumbs.get(6))).size == (85, 128)
    assert thumbs.get(1) is None and thumbs.get(8) is None and thumbs.get(-1) is None
    assert json.loads((out / "thumbs.json").read_text())["bytes"] == (out / "thumbs.bin").stat().st_size
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left


def test_damaged_or_mismatched_thumbnails_are_not_used(tmp_path, caplog):
    table = pd.DataFrame({"key": ["x.jpg"], "shard": ["images-00000"], "url": [str(tmp_path / "x.jpg")]})
    (tmp_path / "x.jpg").write_bytes(jpeg(50, 50))
    out = tmp_path / "index"
    out.mkdir()
    write_thumbnails(out, table, None)
    assert Thumbnails.open(out, 1) is not None
    with caplog.at_level(logging.WARNING, "exiflang.eval"):
        assert Thumbnails.open(out, 2) is None  # another index's row count
        (out / "thumbs.bin").write_bytes(b"short")
        assert Thumbnails.open(out, 1) is None
    assert sum("thumbnails not used" in r.getMessage() for r in caplog.records) == 2
    assert Thumbnails.open(tmp_path / "nowhere", 1) is None


def test_index_build_writes_thumbnails_and_they_can_be_remade(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(6):
        (photos / f"p{i}.jpg").write_bytes(jpeg(200 + 20 * i, 150, seed=i))
    keys = [f"p{i}.jpg" for i in range(6)]
    table = pd.DataFrame({"key": keys, "shard": "images-00000", "url": None})
    vectors = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    build_index(vectors, tmp_path / "idx", table=table, meta={"data": str(photos)})
    thumbs = Thumbnails.open(tmp_path / "idx", 6)
    assert thumbs is not None and len(thumbs) == 6
    assert [Image.open(io.BytesIO(thumbs.get(i))).size[0] for i in range(6)] == [128] * 6

    build_index(vectors, tmp_path / "bare", table=table, meta={"data": str(photos)}, thumbnails=False)
    assert not (tmp_path / "bare" / "thumbs.bin").exists()
    moved = tmp_path / "moved"
    photos.rename(moved)
    with pytest.raises(ValueError, match=r"no photo of .* could be read .*6 file_missing"):
        add_thumbnails(tmp_path / "bare")
    assert add_thumbnails(tmp_path / "bare", moved, ThumbSettings(max_side=64))["made"] == 6
    again = Thumbnails.open(tmp_path / "bare", 6)
    assert again is not None and max(Image.open(io.BytesIO(again.get(5))).size) == 64

    build_index(vectors, tmp_path / "arrays")  # no table, no photos: no thumbnail files at all
    assert sorted(p.name for p in (tmp_path / "arrays").iterdir()) == ["index.faiss", "index.json", "rows.parquet"]
