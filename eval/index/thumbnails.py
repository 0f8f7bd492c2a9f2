"""Small JPEG thumbnails of an index's photos: made at build time, kept in the index folder, read by row.

Files, beside ``index.faiss`` / ``rows.parquet`` (row i = index id i):

- ``thumbs.bin``: the thumbnails' JPEG bytes, concatenated;
- ``thumbs.npy``: ``int64 [N, 2]``, row i's ``(offset, length)`` in ``thumbs.bin``; length 0 =
  no thumbnail (the photo was not found, or the image policy refused it);
- ``thumbs.json``: the settings (long side, JPEG quality), counts of made and missing thumbnails
  by reason, bytes and seconds.

Why stored and not read from the shards when asked: an index already answers on its own (its
rows keep the EXIF, ``index.json`` the grid), after its embeddings folder or shards are moved or
deleted; a page that showed neighbours only while the shards sit where they were when the index
was built would break silently.  The cost, measured on the 102 real photos of
``../shared/data/photos`` (5.8 MP on average) at the defaults (128 px, quality 80): 2.8 kB per
thumbnail on average (4.8 kB at most), ~2.8 GB per million rows; 17 s per 1,000 rows on one
thread, 9.5 s on two.  One flat ``(offset, length)`` table and one ``pread`` per thumbnail, where
a Parquet column would read a whole row group to return one row.

Each photo is read as every other image is (:func:`exiflang.eval.images.open_checked`: the
pipeline's image policy on the header, so a decompression bomb or an implausible header is
refused before any pixel is decoded), then decoded at reduced scale (JPEG's DCT scaling,
``Image.draft``: a 12-MP photo decodes at 1/8 size; 3x faster than full decodes over those
photos) while holding its pixel count from the process's decode budget, turned upright by its EXIF orientation (a person
looks at it; analysis never rotates), shrunk to ``max_side`` on its longer side and saved without
metadata.  A photo that cannot be used gives no thumbnail and a count under its reason, never an
error: a missing thumbnail costs the page a picture, not the index.

Where a row's photo is: in a shard index, member ``KEY.<image ext>`` of ``DATA/SHARD`` (``SHARD``
the row's tar name, ``DATA`` the shards folder ``index.json`` records); in a photo-folder index
(``exiflang embed --images``) the file at the row's ``url`` (its absolute path), else ``DATA/KEY``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from exiflang.eval.images import ImageError, open_checked, to_rgb_array
from exiflang.pipeline.image_policy import ImagePolicy, decode
from exiflang.train.data.samples import IMAGE_EXTS, ShardError, read_groups, read_member

BIN, TABLE, SUMMARY = "thumbs.bin", "thumbs.npy", "thumbs.json"
MAX_SIDE = 128  # px, the longer side: the page shows them at up to 128 CSS px
QUALITY = 80  # 2.8 kB mean on real photos; 85 costs +15 % for no difference at this size
FORMAT = "exiflang-thumbnails"
log = logging.getLogger("exiflang.eval")


@dataclass(frozen=True)
class ThumbSettings:
    """How thumbnails are made: ``max_side`` px (16..1024), JPEG ``quality`` (1..95), decode ``workers``."""

    max_side: int = MAX_SIDE
    quality: int = QUALITY
    workers: int = 2

    def __post_init__(self) -> None:
        if not 16 <= self.max_side <= 1024 or not 1 <= self.quality <= 95 or self.workers < 1:
            raise ValueError(
                f"thumbnails: max_side {self.max_side} (16..1024), quality {self.quality} (1..95), "
                f"workers {self.workers} (>= 1)"
            )


def make_thumbnail(
    data: bytes, name: str, settings: ThumbSettings | None = None, policy: ImagePolicy | None = None
) -> bytes:
    """One photo's bytes -> a JPEG of it, upright, longer side <= ``settings.max_side`` px, no metadata.

    :class:`ImageError` naming ``name`` when the image policy refuses the header (too large,
    implausible size, pixel mode) or the pixels do not decode.  ``policy``: an
    :class:`~exiflang.pipeline.image_policy.ImagePolicy` (default: the pipeline's).
    """
    settings = settings or ThumbSettings()
    img = open_checked(data, name, policy)
    try:
        with img:
            # Decode only what a thumbnail needs: JPEG scales by 1/2..1/8 while decoding, to a size
            # still >= the request (a no-op for other formats).
            img.draft("RGB", (settings.max_side, settings.max_side))
            decode(img)
            upright = _upright(img)
            small = Image.fromarray(to_rgb_array(upright))
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure means a bad image
        raise ImageError(name, f"pixel data does not decode ({type(exc).__name__}: {exc})") from None
    small.thumbnail((settings.max_side, settings.max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=settings.quality, optimize=True)
    return buf.getvalue()


def _upright(img: Image.Image) -> Image.Image:
    """``img`` turned by its EXIF orientation; unchanged when it has none or it is unreadable."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not cost the thumbnail
        return img


# -- finding the photos ---------------------------------------------------------------------------


@dataclass
class Job:
    """One row to thumbnail: its bytes (or ``reason`` why there are none) and a name for messages."""

    row: int
    name: str
    data: bytes = b""
    reason: str = ""


def _tar_jobs(tar: Path, rows: dict[str, int]) -> Iterator[Job]:
    """The image members of ``tar`` whose keys are in ``rows`` (key -> row), in tar order; rows
    whose key is not found come last with ``reason`` set."""
    left = dict(rows)
    try:
        with open(tar, "rb") as fh:
            for key, members in read_groups(tar):
                row = left.pop(key, None)
                if row is None:
                    continue
                ext = next((e for e in IMAGE_EXTS if e in members), None)
                if ext is None:
                    yield Job(row, f"{tar.name}:{key}", reason="no_image")
                    continue
                yield Job(row, f"{tar.name}:{key}.{ext}", read_member(fh, members[ext]))
    except FileNotFoundError:
        yield from (Job(r, f"{tar}:{k}", reason="shard_missing") for k, r in left.items())
        return
    except (OSError, ShardError) as exc:
        log.warning("thumbnails: %s: unreadable from here on (%s)", tar, " ".join(str(exc).split()))
    yield from (Job(r, f"{tar.name}:{k}", reason="not_in_shard") for k, r in left.items())


def _file_job(row: int, path: Path) -> Job:
    try:
        return Job(row, str(path), path.read_bytes())
    except FileNotFoundError:
        return Job(row, str(path), reason="file_missing")
    except OSError:
        return Job(row, str(path), reason="unreadable")


def jobs(table: pd.DataFrame, data: str | Path | None) -> Iterator[Job]:
    """Every row of ``table`` (an index's ``rows.parquet``) as a :class:`Job`, shard by shard.

    ``data``: the shards or photo folder the embeddings were made from (``index.json``'s
    ``sources.data``); None or missing -> rows that need it get ``reason`` ``no_data``.
    """
    root = Path(data) if data else None
    if "key" not in table.columns or "shard" not in table.columns:
        yield from (Job(i, f"row {i}", reason="no_key") for i in range(len(table)))
        return
    urls = table["url"] if "url" in table.columns else pd.Series([None] * len(table))
    by_tar: dict[str, dict[str, int]] = {}
    for i, (key, shard, url) in enumerate(zip(table["key"], table["shard"], urls)):
        if str(shard).endswith(".tar"):
            by_tar.setdefault(str(shard), {})[str(key)] = i
        elif isinstance(url, str) and os.path.isabs(url):
            yield _file_job(i, Path(url))
        elif root is not None:
            yield _file_job(i, root / str(key))
        else:
            yield Job(i, str(key), reason="no_data")
    for shard, rows in by_tar.items():
        if root is None:
            yield from (Job(r, f"{shard}:{k}", reason="no_data") for k, r in rows.items())
        else:
            yield from _tar_jobs(root / shard, rows)


# -- writing --------------------------------------------------------------------------------------


def _in_order(fn: Callable[[Job], tuple], items: Iterable[Job], workers: int) -> Iterator[tuple]:
    """``map(fn, items)`` on ``workers`` threads (Pillow decodes without the GIL), in input order,
    at most ``2 * workers`` photos in memory at once."""
    with ThreadPoolExecutor(workers, thread_name_prefix="thumbnails") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _thumbnail_job(settings: ThumbSettings, policy: ImagePolicy | None) -> Callable[[Job], tuple[int, bytes, str]]:
    def run(job: Job) -> tuple[int, bytes, str]:
        if job.reason:
            return job.row, b"", job.reason
        try:
            return job.row, make_thumbnail(job.data, job.name, settings, policy), ""
        except ImageError as exc:
            log.warning("thumbnails: no thumbnail for %s", exc)
            return job.row, b"", "refused_or_broken"

    return run


def write_thumbnails(
    folder: str | Path,
    table: pd.DataFrame,
    data: str | Path | None,
    settings: ThumbSettings | None = None,
    policy: ImagePolicy | None = None,
) -> dict:
    """Write ``thumbs.bin`` / ``thumbs.npy`` / ``thumbs.json`` for ``table``'s rows into ``folder``.

    Nothing is written when no row's photo could be read (an index of bare arrays, a data folder
    that is gone).  Each file is written under a temporary name, then renamed.  Returns the
    summary (``thumbs.json``): ``rows``, ``made``, ``missing`` (reason -> rows), ``bytes``,
    ``kb_per_thumbnail``, ``seconds``, the settings.
    """
    settings = settings or ThumbSettings(workers=max(1, min(4, len(os.sched_getaffinity(0)))))
    folder = Path(folder)
    t0 = time.perf_counter()
    tmp = {name: folder / f".{name}.tmp-{os.getpid()}-{threading.get_ident()}" for name in (BIN, TABLE, SUMMARY)}
    try:
        spans, missing = _write_bin(tmp[BIN], table, data, settings, policy)
        made = int((spans[:, 1] > 0).sum())
        size = int(tmp[BIN].stat().st_size)
        summary = {
            "format": FORMAT,
            "rows": len(table),
            "made": made,
            "missing": dict(sorted(missing.items())),
            "bytes": size,
            "kb_per_thumbnail": round(size / max(made, 1) / 1000, 3),
            "max_side": settings.max_side,
            "quality": settings.quality,
            "seconds": round(time.perf_counter() - t0, 3),
            "data": None if data is None else str(data),
        }
        if made:
            with open(tmp[TABLE], "wb") as fh:  # a file object: np.save adds no ".npy" to the name
                np.save(fh, spans, allow_pickle=False)
            tmp[SUMMARY].write_text(json.dumps(summary, indent=2) + "\n")
            for name in (BIN, TABLE, SUMMARY):
                os.replace(tmp[name], folder / name)
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)
    log.info(
        "thumbnails: %d of %d rows (%.1f kB each, %.1f s)%s",
        made,
        len(table),
        summary["kb_per_thumbnail"],
        summary["seconds"],
        "; none for " + ", ".join(f"{n} {r}" for r, n in sorted(missing.items())) if missing else "",
    )
    return summary


def _write_bin(
    path: Path, table: pd.DataFrame, data: str | Path | None, settings: ThumbSettings, policy: ImagePolicy | None
) -> tuple[np.ndarray, Counter[str]]:
    """Write every row's thumbnail to ``path``, in the order made; ``(spans int64 [N, 2], missing by reason)``."""
    spans = np.zeros((len(table), 2), dtype=np.int64)
    missing: Counter[str] = Counter()
    offset = 0
    with open(path, "wb") as out:
        for row, jpeg, reason in _in_order(_thumbnail_job(settings, policy), jobs(table, data), settings.workers):
            if reason:
                missing[reason] += 1
                continue
            out.write(jpeg)
            spans[row] = (offset, len(jpeg))
            offset += len(jpeg)
    return spans, missing


def add_thumbnails(
    index_dir: str | Path, data: str | Path | None = None, settings: ThumbSettings | None = None
) -> dict:
    """(Re)make the thumbnails of an existing index folder, from ``data`` (default: the shards or
    photo folder its ``index.json`` records; give it when they have moved).  Returns the summary."""
    folder = Path(index_dir)
    info_path = folder / "index.json"
    try:
        info = json.loads(info_path.read_text())
        names = set(pq.read_schema(folder / "rows.parquet").names)
        table = pd.read_parquet(folder / "rows.parquet", columns=[c for c in ("key", "shard", "url") if c in names])
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc.filename}: missing (not an index folder)") from None
    except Exception as exc:  # noqa: BLE001 - damaged JSON or Parquet: several exception types
        raise ValueError(f"{folder}: not a readable index folder ({type(exc).__name__}: {exc})") from None
    data = data or (info.get("sources") or {}).get("data")
    summary = write_thumbnails(folder, table, data, settings)
    if not summary["made"]:
        reasons = ", ".join(f"{n} {r}" for r, n in summary["missing"].items())
        raise ValueError(
            f"{data}: no photo of {folder}'s rows could be read ({reasons}); pass the folder they are in now"
        )
    return summary


# -- reading --------------------------------------------------------------------------------------


class Thumbnails:
    """An index folder's thumbnails, open for reading by row (thread-safe: one ``pread`` each).

    The files are opened once: a folder rebuilt in place while this is open keeps serving the
    thumbnails it was opened with, matching the index loaded with them.
    """

    def __init__(self, folder: Path, spans: np.ndarray, fd: int, summary: dict) -> None:
        self.folder, self.spans, self.summary = folder, spans, summary
        self._fd: int | None = fd

    @classmethod
    def open(cls, folder: str | Path, rows: int) -> Thumbnails | None:
        """The thumbnails of ``folder`` for an index of ``rows`` rows; None when it has none.

        A damaged or mismatched set (another row count, spans past the end of ``thumbs.bin``)
        is logged as one warning naming the file and read as none: thumbnails are optional.
        """
        folder = Path(folder)
        if not (folder / TABLE).is_file():
            return None
        try:
            spans = np.load(folder / TABLE, mmap_mode="r", allow_pickle=False)
            summary = json.loads((folder / SUMMARY).read_text())
            size = (folder / BIN).stat().st_size
            problem = _spans_problem(spans, rows, size)
            if not problem and summary.get("bytes") != size:
                problem = f"{BIN} is {size} bytes, {SUMMARY} says {summary.get('bytes')}"
        except (OSError, ValueError) as exc:
            problem = " ".join(str(exc).split())
        if problem:
            log.warning("%s: thumbnails not used: %s", folder / TABLE, problem)
            return None
        fd = os.open(folder / BIN, os.O_RDONLY)
        if os.fstat(fd).st_size != size:  # replaced between the check and the open
            os.close(fd)
            log.warning("%s: thumbnails not used: changed while opened", folder / BIN)
            return None
        return cls(folder, spans, fd, summary)

    def __len__(self) -> int:
        """Rows that have a thumbnail."""
        return int(self.summary.get("made", 0))

    def has(self, row: int) -> bool:
        """Whether row ``row`` has a thumbnail (no file read)."""
        return 0 <= row < len(self.spans) and int(self.spans[row, 1]) > 0

    def get(self, row: int) -> bytes | None:
        """Row ``row``'s JPEG bytes, or None (no thumbnail, or no such row)."""
        if self._fd is None or not 0 <= row < len(self.spans):
            return None
        offset, length = (int(x) for x in self.spans[row])
        return os.pread(self._fd, length, offset) if length > 0 else None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


def _spans_problem(spans: np.ndarray, rows: int, size: int) -> str:
    """Why ``spans`` cannot describe a ``thumbs.bin`` of ``size`` bytes for ``rows`` rows ("" if it can)."""
    if spans.dtype != np.int64 or spans.shape != (rows, 2):
        return f"int64 [{rows}, 2] expected, found {spans.dtype} {list(spans.shape)}"
    if rows and (spans.min() < 0 or int((spans[:, 0] + spans[:, 1]).max()) > size):
        return f"spans outside {BIN} ({size} bytes)"
    return ""
