"""`exiflang synth`: write a synthetic camera corpus (real JPEGs with EXIF, manifest, camera table).

Layout of ``--out DIR`` (flat)::

    DIR/{i:06d}_cam{c:02d}.jpg   image i (0..N-1), shot by camera c (index first, so sorted
                                 order mixes the cameras, as a photo stream does: shards of
                                 one camera would leave training batches nothing to contrast)
    DIR/cameras.json             the run's settings and every camera's full parameter set
    DIR/manifest.csv             one row per image, written last: its presence means complete

Image i's scene depends only on (seed, i); its camera comes from a separate balanced stream
(round-robin, shuffled), so only low-level statistics tie an image to its camera.  Output is
byte-identical for a given seed and options, whatever ``--workers``.

``--indices START:END`` writes only images START..END-1 of the N-image corpus (the same files
a full run writes there).  The camera parameters other than the sensor size do not depend on
``--min-size/--max-size``, so a slice written with larger sizes is the same cameras at a
larger image-size setting, shooting the same scenes — the tests' held-out splice photos are
made so, since at 384-640 px a 124-px patch is too coarse to outline a splice.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # `python pipeline/synth/corpus.py`: make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
from tqdm import tqdm

from exiflang.command import Command
from exiflang.pipeline.synth.camera import SUBSAMPLING, CameraModel, capture, encode_jpeg
from exiflang.pipeline.synth.exif import Shot, choose_shot, exif_dict, thumbnail, write_exif
from exiflang.pipeline.synth.params import make_cameras
from exiflang.pipeline.synth.scene import render_scene

STREAM_ASSIGN = 5
STREAM_NOISE = 6
MIN_SHORT_SIDE = 128
MANIFEST_FIELDS = (
    "file",
    "index",
    "camera",
    "make",
    "model",
    "software",
    "iso",
    "exposure_time",
    "f_number",
    "focal_length",
    "exposure_bias",
    "quality",
    "subsampling",
    "width",
    "height",
    "bytes",
    "scene_ev",
    "seed",
)


def assign_cameras(seed: int, n: int, k: int) -> np.ndarray:
    """Camera index of each of N images: balanced (counts differ by at most one), shuffled."""
    return np.random.default_rng([seed, STREAM_ASSIGN]).permutation(np.arange(n) % k)


def make_image(cam: CameraModel, seed: int, index: int) -> tuple[bytes, Shot, np.ndarray]:
    """Shoot image ``index`` with ``cam``: (JPEG bytes with EXIF, its settings, uint8 HxWx3).

    The scene is rendered at twice the sensor resolution in linear light; any camera can be
    handed any index (tests shoot one scene with two cameras).
    """
    radiance, info = render_scene(seed, index, 2 * cam.height, 2 * cam.width)
    shot = choose_shot(cam, info, seed, index)
    noise = np.random.default_rng([seed, index, STREAM_NOISE])
    rgb = capture(cam, radiance, shot.iso, shot.gain, noise)
    data = write_exif(encode_jpeg(cam, rgb), exif_dict(cam, shot), thumbnail(cam, rgb))
    return data, shot, rgb


def file_name(camera: int, index: int) -> str:
    return f"{index:06d}_cam{camera:02d}.jpg"


_CTX: dict[str, Any] = {}


def _init_worker(cams: list[CameraModel], seed: int, out: str) -> None:
    """Per-process state; one BLAS thread each, since the parallelism is across processes."""
    _CTX.update(cams=cams, seed=seed, out=Path(out))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # optional: only affects speed
        pass


def _write_one(job: tuple[int, int]) -> dict[str, Any]:
    """Write one image file; return its manifest row."""
    index, c = job
    cam, seed = _CTX["cams"][c], _CTX["seed"]
    data, shot, _ = make_image(cam, seed, index)
    name = file_name(c, index)
    (_CTX["out"] / name).write_bytes(data)
    return {
        "file": name,
        "index": index,
        "camera": c,
        "make": cam.make,
        "model": cam.model,
        "software": cam.software,
        "iso": shot.iso,
        "exposure_time": f"{shot.exposure_time.numerator}/{shot.exposure_time.denominator}",
        "f_number": shot.f_number,
        "focal_length": shot.focal_length,
        "exposure_bias": f"{shot.bias_steps}/3",
        "quality": cam.jpeg_quality,
        "subsampling": SUBSAMPLING[cam.subsampling],
        "width": cam.width,
        "height": cam.height,
        "bytes": len(data),
        "scene_ev": round(shot.scene_ev, 3),
        "seed": seed,
    }


def _run(
    jobs: list[tuple[int, int]], cams: list[CameraModel], seed: int, out: Path, workers: int
) -> Iterator[dict[str, Any]]:
    """Manifest rows in image order, from one process or a pool (same bytes either way)."""
    if workers <= 1:
        _init_worker(cams, seed, str(out))
        yield from map(_write_one, jobs)
        return
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(cams, seed, str(out))) as ex:
        yield from ex.map(_write_one, jobs, chunksize=4)


def write_corpus(
    out: Path,
    n_cameras: int,
    n_images: int,
    seed: int,
    size: tuple[int, int] | None = None,
    min_width: int = 384,
    max_width: int = 640,
    workers: int = 1,
    progress: bool = True,
    indices: range | None = None,
) -> list[dict[str, Any]]:
    """Write the corpus to ``out`` (only ``indices`` of its N images when given); returns the manifest rows."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.csv").unlink(missing_ok=True)  # absent until this run is complete
    cams = make_cameras(seed, n_cameras, size, min_width, max_width)
    indices = range(n_images) if indices is None else indices
    settings = dict(
        seed=seed,
        cameras=n_cameras,
        images=n_images,
        size=size,
        min_width=min_width,
        max_width=max_width,
        layout="DIR/{i:06d}_cam{c:02d}.jpg",
        indices=[indices.start, indices.stop],
    )
    _atomic_write(
        out / "cameras.json", json.dumps({"settings": settings, "cameras": [c.to_dict() for c in cams]}, indent=1)
    )
    cam_of = assign_cameras(seed, n_images, n_cameras)
    jobs = [(i, int(cam_of[i])) for i in indices]
    rows = list(
        tqdm(_run(jobs, cams, seed, out, workers), total=len(jobs), unit="img", desc="synth", disable=not progress)
    )
    tmp = out / "manifest.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out / "manifest.csv")
    return rows


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512x384, not {text!r}") from None
    return w, h


def _indices(text: str) -> range:
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"indices must look like 1440:1600, not {text!r}") from None
    return range(start, stop)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``exiflang synth``."""
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--cameras", type=int, default=10, help="number of simulated cameras K")
    p.add_argument("--images", type=int, default=400, help="number of images N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--size", type=_size, default=None, help="one sensor size WxH for every camera (default: per-camera 4:3 sizes)"
    )
    p.add_argument("--min-size", type=int, default=384, help="smallest sensor width (4:3)")
    p.add_argument("--max-size", type=int, default=640, help="largest sensor width (4:3)")
    p.add_argument(
        "--indices",
        type=_indices,
        default=None,
        metavar="START:END",
        help="write only images START..END-1 of the N (default: all)",
    )
    p.add_argument(
        "--workers", type=int, default=len(os.sched_getaffinity(0)), help="processes (output does not depend on it)"
    )
    p.add_argument("--no-progress", action="store_true")


def _check(args: argparse.Namespace) -> None:
    """ValueError (exit 2, one line) for sizes, counts or indices no corpus can have."""
    short = min(args.size) if args.size else round(args.min_size * 3 / 4)
    if short < MIN_SHORT_SIDE or (args.size is None and args.max_size < args.min_size):
        raise ValueError(f"images need a short side >= {MIN_SHORT_SIDE} px and min-size <= max-size")
    if args.cameras < 1 or args.images < 0:
        raise ValueError("--cameras must be >= 1 and --images >= 0")
    if args.indices is not None and not 0 <= args.indices.start < args.indices.stop <= args.images:
        raise ValueError(
            f"--indices {args.indices.start}:{args.indices.stop} must lie within 0:{args.images} and not be empty"
        )


def run(args: argparse.Namespace) -> int:
    """Write the corpus ``args`` describe; 0 when written (bad options raise ValueError)."""
    _check(args)
    rows = write_corpus(
        args.out,
        args.cameras,
        args.images,
        args.seed,
        args.size,
        args.min_size,
        args.max_size,
        max(1, args.workers),
        not args.no_progress,
        args.indices,
    )
    print(f"wrote {len(rows)} images from {args.cameras} cameras to {args.out}")
    return 0


COMMAND = Command(prog="exiflang synth", doc=__doc__, add_arguments=add_arguments, run=run)
main = COMMAND.main


if __name__ == "__main__":
    sys.exit(main())
