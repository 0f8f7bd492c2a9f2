"""Small synthetic datasets for tests: `exiflang synth` photos -> `exiflang shards` (local executor).

Many tests need "N synthetic photos of K cameras in shards of R rows"; this is the one way they
make it, through the real commands (so the data is what a user's pipeline writes).
"""

from __future__ import annotations

from pathlib import Path

from exiflang.pipeline import build_shards
from exiflang.pipeline.synth import corpus as synth


def synth_photos(
    out: Path, *, cameras: int, images: int, seed: int = 1, size: tuple[int, int] | None = None, bare: bool = False
) -> Path:
    """``images`` synthetic JPEGs of ``cameras`` cameras in ``out`` (``size``: min/max width in px).

    ``bare``: remove the corpus's manifest.csv and cameras.json, so the folder holds photos only.
    """
    argv = ["--out", str(out), "--cameras", str(cameras), "--images", str(images), "--seed", str(seed)]
    if size is not None:
        argv += ["--min-size", str(size[0]), "--max-size", str(size[1])]
    assert synth.main([*argv, "--no-progress", "--workers", "1"]) == 0
    if bare:
        for extra in ("manifest.csv", "cameras.json"):
            (out / extra).unlink()
    return out


def shards_of(source: Path, out: Path, *, rows_per_shard: int, workers: int | None = None) -> Path:
    """`exiflang shards` of the photo folder ``source`` into ``out`` (local executor, quiet)."""
    argv = ["--source", str(source), "--out", str(out), "--executor", "local", "--rows-per-shard", str(rows_per_shard)]
    if workers is not None:
        argv += ["--workers", str(workers)]
    assert build_shards.main([*argv, "-q"]) == 0
    return out


def synth_shards(
    root: Path,
    *,
    cameras: int,
    images: int,
    rows_per_shard: int,
    seed: int = 1,
    size: tuple[int, int] | None = None,
    bare: bool = False,
    workers: int | None = None,
) -> Path:
    """``root/synth`` photos (:func:`synth_photos`) -> ``root/shards`` (:func:`shards_of`); returns the shards."""
    photos = synth_photos(root / "synth", cameras=cameras, images=images, seed=seed, size=size, bare=bare)
    return shards_of(photos, root / "shards", rows_per_shard=rows_per_shard, workers=workers)
