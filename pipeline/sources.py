"""Which kind of input a path is, and the one entry point that opens it as a stream of source rows.

Three formats (DESIGN.md §2): a local ``folder`` of images (walked here), a list of ``urls``
(txt/csv/tsv/jsonl/parquet: :mod:`pipeline.url_lists`) and a ``yfcc`` main file
(:mod:`pipeline.yfcc`).  Any file may be gzip-, bzip2- or xz-compressed; compression is
recognised from the file's first bytes, so a misnamed file still opens.  Also here: the
shared opener for possibly compressed files and :class:`SourceError`, the one-line error
every unusable input raises.

Bytes that are not valid UTF-8 are never replaced or refused here: file names come as
``os.fsdecode`` gives them and text files are decoded with ``surrogateescape``, so a bad
byte ``0xff`` arrives as the lone surrogate ``"\\udcff"`` and the exact bytes can be had back
(``os.fsencode`` / ``.encode("utf-8", "surrogateescape")``).  What one row then holds is
that row's business: the worker reads or fetches it by its bytes and the shard table stores
it escaped, with the raw bytes alongside (:mod:`pipeline.shard_io`).
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import zlib
from pathlib import Path
from typing import IO, BinaryIO, Iterator, Optional

from pipeline.records import SourceRow

FORMATS = ("folder", "urls", "yfcc")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".heic", ".bmp"})
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


def reason_of(exc: BaseException) -> str:
    """A short human reason for an I/O or decoding exception."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def compression_of(path: str | os.PathLike) -> Optional[str]:
    """``gzip``/``bzip2``/``xz`` from the file's magic bytes, else None (plain)."""
    try:
        with open(path, "rb") as fh:
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
        raw: BinaryIO = open(path, "rb")
    except OSError as exc:
        raise SourceError(path, f"cannot read: {reason_of(exc)}") from exc
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
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


class FolderSource(Source):
    """Every image-looking file under a folder, recursively, in sorted depth-first order."""

    format = "folder"

    def rows(self) -> Iterator[SourceRow]:
        self._reset()
        # Absolute paths: shard workers (Ray tasks) may run in another working directory.
        for index, path in enumerate(self._walk(os.path.abspath(self.path), set())):
            yield SourceRow(index=index, path=path)

    def _walk(self, folder: str, seen: set[tuple[int, int]]) -> Iterator[str]:
        try:
            st = os.stat(folder)
            # A symlink back up the tree would otherwise be walked forever; a folder
            # reached twice (through an alias) is walked once, so no photo is listed twice.
            if (st.st_dev, st.st_ino) in seen:
                self._skip("folder_seen")
                return
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            self._skip("unreadable_folder")
            return
        for entry in entries:
            if entry.name.startswith("."):
                self._skip("hidden")
            elif _is_dir(entry):
                yield from self._walk(entry.path, seen)
            elif os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
                self._skip("not_image")
            elif _is_file_or_dangling(entry):
                # A dangling link is still a row: its read fails with a status, not silently.
                yield entry.path
            else:
                self._skip("not_a_file")   # fifos, sockets: reading them could block


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _is_file_or_dangling(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path))
    except OSError:
        return True


def _has_image(folder: str) -> bool:
    """Whether any image file exists below ``folder`` (stops at the first one found)."""
    return next(FolderSource(folder)._walk(folder, set()), None) is not None


def detect_format(path: str | os.PathLike) -> str:
    """``folder``, ``yfcc`` or ``urls`` for an existing path; reads at most a few lines."""
    p = Path(path)
    if not p.exists():
        raise SourceError(path, "no such file or folder")
    if p.is_dir():
        return "folder"
    from pipeline.yfcc import looks_like_yfcc
    if inner_suffix(p) in ("", ".txt", ".tsv") and looks_like_yfcc(p):
        return "yfcc"
    return "urls"


def open_source(path: str | os.PathLike, fmt: Optional[str] = None, *,
                url_column: Optional[str] = None,
                yfcc_original_url: Optional[str] = None) -> Source:
    """Open ``path`` as a :class:`Source` (format detected unless given).

    Cheap checks run now, so a wrong path, an empty list or a list without a URL column
    fails before any work starts, with a :class:`SourceError`.
    """
    if fmt is not None and fmt not in FORMATS:
        raise SourceError(path, f"unknown source format {fmt!r} (choose from {', '.join(FORMATS)})")
    p = Path(path)
    if not p.exists():
        raise SourceError(path, "no such file or folder")
    fmt = fmt or detect_format(p)
    if fmt == "folder":
        if not p.is_dir():
            raise SourceError(path, "not a folder (format 'folder' needs a folder of images)")
        if not os.access(p, os.R_OK | os.X_OK):
            raise SourceError(path, "folder not readable")
        if not _has_image(str(p)):
            raise SourceError(path, "no image files (" + ", ".join(
                sorted(e[1:] for e in IMAGE_EXTENSIONS)) + ") in this folder or below")
        return FolderSource(p)
    if p.is_dir():
        raise SourceError(path, f"is a folder, not a {fmt} file")
    if fmt == "yfcc":
        from pipeline.yfcc import ORIGINAL_URL, YfccSource
        return YfccSource(p, original_template=yfcc_original_url or ORIGINAL_URL)
    from pipeline.url_lists import open_url_list
    return open_url_list(p, url_column=url_column)
