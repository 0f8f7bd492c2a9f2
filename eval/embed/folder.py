"""A plain folder of photos as ``exiflang embed`` parts: the walk, its chunks, and each photo read with its EXIF.

``exiflang embed --images FOLDER`` embeds the photos under ``FOLDER`` without building shards.
The walk is the shard builder's (:class:`exiflang.pipeline.sources.folder.FolderSource`: every image-looking
file, recursively, sorted depth-first, hidden names skipped), cut into parts of ``per_part``
photos named ``images-00000``, ``images-00001``, ...  Each photo's EXIF is read as the shard
builder reads it (:func:`exiflang.pipeline.exif.parse.read_exif`, values cut at the builder's
``max_value_chars``; unreadable EXIF -> ``{}``), keys sorted as the builder's ``exif.json`` stores
them.  A row's ``key`` is the photo's path relative to ``FOLDER`` (POSIX separators), its
``url`` the absolute path (what a shard built from the same folder records), ``shard`` the part.

Same bytes, same vectors: built with ``exiflang shards --rows-per-shard K`` from the same folder
and embedded with ``--per-part K``, every photo the builder kept lands in the same part, at the
same place in the same batches, so its vector is byte-identical.  The builder drops photos the
folder mode keeps (fewer than its ``min_tags`` EXIF tags, duplicates); a part holding one of
them batches differently, and its vectors may then differ in the last float bits (~1e-7:
CPU matrix kernels can round differently with the batch's size).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from exiflang.eval.embed.shard import Sample
from exiflang.pipeline.config import ShardConfig
from exiflang.pipeline.exif.parse import ExifReadError, read_exif
from exiflang.pipeline.sources.folder import FolderSource

PREFIX = "images"


def list_photos(folder: Path) -> list[str]:
    """Absolute paths of the photos under ``folder``, in the shard builder's order.

    One-line ``FileNotFoundError`` when the folder is missing or holds no photo.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: photo folder not found")
    files = list(FolderSource(folder).files())
    if not files:
        raise FileNotFoundError(f"{folder}: no photos (.jpg, .png, .tif, ...) in this folder or below")
    return files


def listing_hash(folder: Path, files: Sequence[str]) -> str:
    """A hash of the walk (relative paths and sizes): a rerun into the same output must see the same photos."""
    h = hashlib.sha256()
    for path in files:
        try:
            size = os.stat(path).st_size
        except OSError:
            size = -1  # a dangling link is a row too (skipped as unreadable when embedded)
        h.update(f"{relative_key(folder, path)}\0{size}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def chunk(files: Sequence[str], per_part: int) -> list[tuple[str, list[str]]]:
    """``(stem, files)`` of each part: ``per_part`` consecutive photos (the last may hold fewer)."""
    if per_part < 1:
        raise ValueError(f"--per-part {per_part}: must be at least 1")
    return [(f"{PREFIX}-{i // per_part:05d}", list(files[i : i + per_part])) for i in range(0, len(files), per_part)]


def relative_key(folder: Path, path: str) -> str:
    """The row key of a photo: its path below ``folder``, with ``/`` separators."""
    return Path(os.path.relpath(path, os.path.abspath(folder))).as_posix()


def photo_samples(folder: Path, files: Sequence[str]) -> Iterator[Sample]:
    """One undecoded :class:`Sample` per file, to be filled by :func:`load_photo` on a worker thread."""
    for path in files:
        yield Sample(relative_key(folder, path), path, info={"url": path}, path=path)


def load_photo(s: Sample) -> Sample:
    """Read ``s.path``'s bytes and EXIF into ``s``; an unreadable file sets ``reason="unreadable"``."""
    try:
        with open(os.fsencode(s.path), "rb") as fh:  # bytes path: names that are not valid UTF-8
            s.data = fh.read()
    except OSError as exc:
        s.reason, s.detail = "unreadable", exc.strerror or type(exc).__name__
        return s
    try:
        exif = read_exif(s.data, max_value_chars=ShardConfig.max_value_chars)
    except ExifReadError:
        exif = {}  # as the builder: a photo without readable EXIF is still a photo
    s.exif = dict(sorted(exif.items()))
    return s
