"""One shard of ``exiflang embed``: read a tar in order, decode on threads, embed, write its part files.

Samples are read in tar order, decoded and cut into grid patches by ``workers`` threads (Pillow
releases the GIL while decoding) and the patches of several photos share each forward batch
(:mod:`exiflang.eval.embed.batch`).  The part's arrays and table are written under temporary names and
renamed; the caller writes ``done.json`` last.  A sample that cannot be used (no image member,
EXIF JSON that does not parse, pixels that do not decode, smaller than one patch) gets no row:
one log line naming it and a count under its reason; a tar that breaks mid-way keeps the rows
read before the break and counts the break as ``tar_error``.  :func:`embed_samples` is the same
loop over any sample stream (a photo folder's: :mod:`exiflang.eval.embed.folder`).

Batches never span two parts: a part's rows depend only on its own samples, which is what lets
ranks embed parts separately and still write the bytes one process would (:mod:`exiflang.eval.embed.distributed`).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from exiflang.eval.embed.batch import PhotoEncoder, TextEncoder
from exiflang.eval.embed.store import TABLE_COLUMNS
from exiflang.eval.images import ImageError, load_rgb_bytes
from exiflang.train.data.samples import IMAGE_EXTS, ShardError, read_groups, read_member

log = logging.getLogger("exiflang.eval")
SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("photo_id", pa.string()),
        ("url", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("exif", pa.string()),
        ("n_tags", pa.int64()),
    ]
)
assert tuple(SCHEMA.names) == TABLE_COLUMNS


@dataclass
class Sample:
    """One sample read from a tar (undecoded), or a skip: ``reason`` set and ``detail`` says why."""

    key: str
    name: str  # "TAR:KEY.ext", for messages
    data: bytes = b""
    exif: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    reason: str = ""
    detail: str = ""
    patches: np.ndarray | None = None  # uint8 [N,P,P,3] once prepared
    size: tuple[int, int] = (0, 0)  # (height, width)
    path: str = ""  # a photo file the worker reads (folder mode), else ""


def read_shard(tar: Path) -> Iterator[Sample]:
    """The tar's samples in order; unusable ones come back with ``reason`` set."""
    with open(tar, "rb") as fh:
        groups = read_groups(tar)
        while True:
            try:
                key, members = next(groups)
            except StopIteration:
                return
            except ShardError as exc:
                yield Sample("", f"{tar}", reason="tar_error", detail=str(exc))
                return
            ext = next((e for e in IMAGE_EXTS if e in members), None)
            if ext is None:
                yield Sample(key, f"{tar.name}:{key}", reason="missing_image", detail="no image member")
                continue
            s = Sample(key, f"{tar.name}:{key}.{ext}")
            try:
                s.data = read_member(fh, members[ext])
                if "exif.json" in members:
                    s.exif = json.loads(read_member(fh, members["exif.json"]))
                if "json" in members:
                    s.info = json.loads(read_member(fh, members["json"]))
                if not isinstance(s.exif, dict) or not isinstance(s.info, dict):
                    raise ValueError("exif.json / json is not an object")
            except ShardError as exc:
                yield Sample(key, s.name, reason="tar_error", detail=str(exc))
                return
            except (ValueError, UnicodeDecodeError) as exc:
                s.reason, s.detail = "bad_json", " ".join(str(exc).split())
            yield s


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int, ahead: int) -> Iterator[Any]:
    """``map(fn, items)`` on ``workers`` threads, results in input order, at most ``ahead`` in flight."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="embed-decode") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


Loader = Callable[[Sample], Sample]


def prepare(encoder: PhotoEncoder, load: Loader | None = None) -> Callable[[Sample], Sample]:
    """A worker function: decode one sample and cut its patches (the full image is dropped at once).

    ``load``: fills ``data``/``exif`` first, on the same worker thread (reading a photo file).
    """

    def run(s: Sample) -> Sample:
        if load is not None and not s.reason:
            s = load(s)
        if s.reason:
            return s
        try:
            rgb = load_rgb_bytes(s.data, s.name)
            s.size = (int(rgb.shape[0]), int(rgb.shape[1]))
            s.patches = encoder.patches(rgb)
        except ImageError as exc:
            s.reason, s.detail = "decode_failed", exc.reason
        except ValueError as exc:  # the grid's "smaller than one patch"
            s.reason, s.detail = "too_small", str(exc)
        s.data = b""
        return s

    return run


@dataclass
class Context:
    """What every shard needs: the encoders, the settings key, and the shared progress bar."""

    photos: PhotoEncoder
    texts: TextEncoder | None
    settings_key: str
    workers: int
    bar: Any
    device: str


def _write_part(paths: dict[str, Path], image: np.ndarray, text: np.ndarray | None, rows: list[dict]) -> None:
    """Arrays and table under temporary names, then renamed (``done.json`` is the caller's, last)."""
    staged = []
    for name, arr in (("image", image), ("text", text)):
        if arr is not None:
            tmp = paths[name].with_name(f".{paths[name].name}.tmp")
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(arr, dtype=np.float32))
            staged.append((tmp, paths[name]))
    tmp = paths["table"].with_name(f".{paths['table'].name}.tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), tmp)
    staged.append((tmp, paths["table"]))
    for src, dst in staged:
        src.replace(dst)


def embed_shard(tar: Path, paths: dict[str, Path], ctx: Context, budget: int | None) -> dict:
    """Embed one tar into its part files; returns the stats written to its ``done.json``."""
    return embed_samples(read_shard(tar), tar.name, paths, ctx, budget)


def embed_samples(
    samples: Iterable[Sample],
    shard: str,
    paths: dict[str, Path],
    ctx: Context,
    budget: int | None,
    load: Loader | None = None,
) -> dict:
    """Embed one part's samples (in order) into its part files; ``shard`` labels its rows.

    At most ``budget`` samples are read (``None``: all); returns the ``done.json`` stats.
    """
    t0, skipped = time.perf_counter(), Counter[str]()
    images, texts, rows, read = [], [], [], 0
    buffer: list[Sample] = []

    def flush() -> None:
        if not buffer:
            return
        images.append(ctx.photos.embed_patches([_patches(s) for s in buffer]))
        if ctx.texts is not None:
            texts.append(ctx.texts.embed([s.exif for s in buffer], [s.key for s in buffer]))
        for s in buffer:
            rows.append(
                {
                    "key": s.key,
                    "shard": shard,
                    "photo_id": _opt_str(s.info.get("photo_id")),
                    "url": _opt_str(s.info.get("url")),
                    "height": s.size[0],
                    "width": s.size[1],
                    "exif": json.dumps(s.exif, ensure_ascii=False),
                    "n_tags": len(s.exif),
                }
            )
        buffer.clear()

    if budget is not None:
        samples = itertools.islice(samples, budget)
    ahead = max(2 * ctx.workers, ctx.photos.photos_per_batch + ctx.workers)
    for s in ordered_map(prepare(ctx.photos, load), samples, ctx.workers, ahead):
        read += 1
        ctx.bar.update(1)
        if s.reason:
            skipped[s.reason] += 1
            log.warning("skipped %s: %s: %s", s.name, s.reason, s.detail)
            continue
        buffer.append(s)
        if len(buffer) >= ctx.photos.photos_per_batch:
            flush()
    flush()
    dim = ctx.photos.embedder.model.config.embed_dim
    image = np.concatenate(images) if images else np.zeros((0, dim), np.float32)
    text = (np.concatenate(texts) if texts else np.zeros((0, dim), np.float32)) if ctx.texts else None
    _write_part(paths, image, text, rows)
    seconds = time.perf_counter() - t0
    return {
        "shard": shard,
        "rows": len(rows),
        "samples_read": read,
        "skipped": dict(skipped),
        "seconds": round(seconds, 3),
        "photos_per_s": round(len(rows) / max(seconds, 1e-9), 2),
        "device": ctx.device,
        "settings_key": ctx.settings_key,
    }


def _patches(s: Sample) -> np.ndarray:
    """The patches of a sample that ``prepare`` cut (only those reach the buffer)."""
    assert s.patches is not None, s.name
    return s.patches


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)
