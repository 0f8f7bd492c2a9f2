"""The shared ground of every source: the row stream base class, its one-line error, and the
opener for possibly compressed files (gzip, bzip2, xz; recognised from the first bytes, so a
misnamed file still opens).

Bytes that are not valid UTF-8 are never replaced or refused here: file names come as
``os.fsdecode`` gives them and text files are decoded with ``surrogateescape``, so a bad
byte ``0xff`` arrives as the lone surrogate ``"\\udcff"`` and the exact bytes can be had back
(``os.fsencode`` / ``.encode("utf-8", "surrogateescape")``).  What one row then holds is
that row's business: the worker reads or fetches it by its bytes and the shard table stores
it escaped, with the raw bytes alongside (:mod:`exiflang.pipeline.shards.files`).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, BinaryIO, cast

from exiflang.pipeline import storage
from exiflang.pipeline.records import SourceRow

FORMATS = ("folder", "urls", "yfcc")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".heic", ".bmp"})
# Files a folder or glob of lists may hold; "" (no suffix) only counts when it is a YFCC part.
LIST_SUFFIXES = frozenset({".txt", ".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet", ".pq"})
COMPRESSION_SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".bz2": "bzip2", ".xz": "xz"}
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))
# Errors a truncated or corrupt (compressed) stream raises part-way through a read.
READ_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, UnicodeError)


class SourceError(ValueError):
    """An input that cannot be used; the message is one line naming the file and the reason."""

    def __init__(self, path: object, reason: str) -> None:
        reason = " ".join(str(reason).split())  # one line, whatever the reason carried
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class EmptySourceError(SourceError):
    """A list with no entries: an error alone, one file skipped among many."""


def reason_of(exc: BaseException) -> str:
    """A short human reason for an I/O or decoding exception."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def compression_of(path: str | os.PathLike) -> str | None:
    """``gzip``/``bzip2``/``xz`` from the file's magic bytes, else None (plain)."""
    try:
        with storage.open_read(path) as fh:
            head = fh.read(6)
    except OSError as exc:
        raise SourceError(path, f"cannot read: {reason_of(exc)}") from exc
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def inner_suffix(path: str | os.PathLike) -> str:
    """The lower-case format suffix once a compression suffix is removed (``list.csv.gz`` -> ``.csv``)."""
    p = Path(path)
    if p.suffix.lower() in COMPRESSION_SUFFIXES:
        p = p.with_suffix("")
    return p.suffix.lower()


def open_binary(path: str | os.PathLike) -> tuple[IO[bytes], BinaryIO]:
    """Open a possibly compressed file; returns (decompressed stream, raw file).

    The raw file is returned too so callers can report progress in on-disk bytes.
    """
    kind = compression_of(path)
    try:
        raw: BinaryIO = storage.open_read(path)  # type: ignore[assignment]
    except OSError as exc:
        raise SourceError(path, f"cannot read: {reason_of(exc)}") from exc
    if kind == "gzip":
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb")), raw  # a BufferedIOBase: IO[bytes] at run time
    if kind == "bzip2":
        return bz2.BZ2File(raw, mode="rb"), raw
    if kind == "xz":
        return lzma.LZMAFile(raw, mode="rb"), raw
    return raw, raw


def open_text(path: str | os.PathLike) -> IO[str]:
    """Open a possibly compressed file as UTF-8 text (a BOM is dropped, bad bytes kept as
    lone surrogates by ``surrogateescape``, so each row keeps its exact bytes)."""
    stream, _ = open_binary(path)
    # newline="" keeps "\r\n" intact for the csv module; line readers strip it themselves.
    return io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")


class Source:
    """A stream of :class:`SourceRow`, numbered 0, 1, 2, ... in a deterministic source order.

    ``skipped`` counts entries deliberately not turned into rows (videos, blank lines, hidden
    files, ...); ``flagged`` counts rows emitted but known to be bad (a non-http URL, a
    malformed line), which the downloader then fails with a status.  Both are reset and
    refilled by every call to :meth:`rows`.
    """

    format: str = ""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self.skipped: dict[str, int] = {}
        self.flagged: dict[str, int] = {}

    def rows(self) -> Iterator[SourceRow]:
        raise NotImplementedError

    def _skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def _flag(self, reason: str) -> None:
        self.flagged[reason] = self.flagged.get(reason, 0) + 1

    def _reset(self) -> None:
        self.skipped = {}
        self.flagged = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"
