"""Which kind of input a path is, and the one entry point that opens it as a stream of source rows.

Three formats (DESIGN.md §2): a ``folder`` of images (walked here), a list of ``urls``
(txt/csv/tsv/jsonl/parquet: :mod:`exiflang.pipeline.url_lists`) and a ``yfcc`` main file
(:mod:`exiflang.pipeline.yfcc`).  Any file may be gzip-, bzip2- or xz-compressed; compression is
recognised from the file's first bytes, so a misnamed file still opens.  Also here: the
shared opener for possibly compressed files and :class:`SourceError`, the one-line error
every unusable input raises.

At scale a source is many files: a folder holding no images but list files (or Parquet
shards, or YFCC main-file parts), or a glob of them (``lists/*.csv.gz``,
``s3://bucket/yfcc/part-*``), is :class:`MultiSource`: the files in path order
(depth-first by name, as a folder is walked), each streamed (text line by line, Parquet
by batches) and never loaded whole, with row indices continuing from one file to the
next, so the shard plan, and with it resume, is the same on every run.  Every path may be
local, ``file://`` or on an object store (:mod:`exiflang.pipeline.storage`).

Bytes that are not valid UTF-8 are never replaced or refused here: file names come as
``os.fsdecode`` gives them and text files are decoded with ``surrogateescape``, so a bad
byte ``0xff`` arrives as the lone surrogate ``"\\udcff"`` and the exact bytes can be had back
(``os.fsencode`` / ``.encode("utf-8", "surrogateescape")``).  What one row then holds is
that row's business: the worker reads or fetches it by its bytes and the shard table stores
it escaped, with the raw bytes alongside (:mod:`exiflang.pipeline.shard_io`).
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import zlib
from pathlib import Path
from typing import IO, BinaryIO, Callable, Iterator, Optional

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


def compression_of(path: str | os.PathLike) -> Optional[str]:
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
        raw: BinaryIO = storage.open_read(path)   # type: ignore[assignment]
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
    _unwanted = "not_image"          # the skip reason of a file :meth:`_wanted` refuses

    def rows(self) -> Iterator[SourceRow]:
        self._reset()
        for index, path in enumerate(self.files()):
            yield SourceRow(index=index, path=path)

    def files(self) -> Iterator[str]:
        """The wanted files, in order: local paths (absolute) or object-store URLs."""
        if storage.is_remote(self.path):
            return self._remote_files()
        # Absolute paths: shard workers (Ray tasks) may run in another working directory.
        return self._walk(os.path.abspath(self.path), set())

    @staticmethod
    def _wanted(name: str) -> bool:
        return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS

    def _remote_files(self) -> Iterator[str]:
        for url in storage.walk_files(self.path):
            if self._wanted(storage.basename(url)):
                yield url
            else:
                self._skip(self._unwanted)

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
            elif not self._wanted(entry.name):
                self._skip(self._unwanted)
            elif _is_file_or_dangling(entry):
                # A dangling link is still a row: its read fails with a status, not silently.
                yield entry.path
            else:
                self._skip("not_a_file")   # fifos, sockets: reading them could block


class ListFolder(FolderSource):
    """The list files under a folder (the walk of :class:`FolderSource`, another filter)."""

    _unwanted = "not_a_list"

    @staticmethod
    def _wanted(name: str) -> bool:
        # "_SUCCESS", "_metadata": the bookkeeping files Spark and Hadoop write beside shards.
        return not name.startswith("_") and inner_suffix(name) in LIST_SUFFIXES | {""}


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
    return next(FolderSource(folder).files(), None) is not None


class MultiSource(Source):
    """Several list / YFCC files read one after another as one source, indices continuing.

    ``path`` is a folder (walked as :class:`ListFolder` does) or, with ``glob``, a pattern;
    the files are listed again at each :meth:`rows`, in path order, and only their names are
    held.  Each file's format is ``fmt`` or detected on its own; a file with no entries, or
    with no suffix that is not a YFCC part, is skipped and counted.  The first usable file
    is checked when the source is opened; a later unusable one (no URL column, unreadable)
    stops the job with its :class:`SourceError` when it is reached.
    """

    def __init__(self, path: str, fmt: Optional[str], opener: Callable[[str, str], Source],
                 glob: bool = False) -> None:
        super().__init__(path)
        self._fmt, self._opener, self._glob = fmt, opener, glob
        self.formats: set[str] = set()
        self.files_read = 0
        if self._first() is None:
            raise SourceError(path, "no list files with entries (" + ", ".join(
                sorted(s[1:] for s in LIST_SUFFIXES)) + ", optionally compressed; or YFCC parts)")

    @property
    def format(self) -> str:   # type: ignore[override]
        return "+".join(sorted(self.formats)) or (self._fmt or "urls")

    def rows(self) -> Iterator[SourceRow]:
        self._reset()
        self.files_read = index = 0
        for path in self._paths():
            source = self._open(path)
            if source is None:
                continue
            for row in source.rows():
                row.index = index      # continuous across files: the shard plan stays fixed
                index += 1
                yield row
            self.files_read += 1
            self._merge(source)

    def _paths(self) -> Iterator[str]:
        if self._glob:
            return (str(p) for p in storage.glob(self.path))
        lister = ListFolder(self.path)
        lister.skipped = self.skipped        # hidden / not-a-list files count as this source's
        return lister.files()

    def _first(self) -> Optional[Source]:
        for path in self._paths():
            source = self._open(path)
            if source is not None:
                return source
        return None

    def _open(self, path: str) -> Optional[Source]:
        """The file as a source, or None when it is to be skipped (counted)."""
        fmt = self._fmt or detect_format(path)
        if inner_suffix(path) == "" and fmt != "yfcc" and self._fmt is None:
            self._skip("not_a_list")           # README, LICENSE, ...: not a list without a suffix
            return None
        try:
            source = self._opener(path, fmt)
        except EmptySourceError:
            self._skip("empty_file")
            return None
        self.formats.add(source.format)
        return source

    def _merge(self, source: Source) -> None:
        for mine, theirs in ((self.skipped, source.skipped), (self.flagged, source.flagged)):
            for reason, n in theirs.items():
                mine[reason] = mine.get(reason, 0) + n


def detect_format(path: str | os.PathLike) -> str:
    """``folder``, ``yfcc`` or ``urls`` for an existing path; reads at most a few lines.

    A folder is ``folder`` (of images) when it holds an image, else the format of its lists.
    """
    text = os.fspath(path)
    if not storage.exists(text):
        raise SourceError(path, "no such file or folder")
    if storage.isdir(text):
        if _has_image(text):
            return "folder"
        first = next((f for f in ListFolder(text).files() if inner_suffix(f) != ""), None)
        return detect_format(first) if first else "folder"
    from exiflang.pipeline.yfcc import looks_like_yfcc
    if inner_suffix(text) in ("", ".txt", ".tsv") and looks_like_yfcc(text):
        return "yfcc"
    return "urls"


def open_source(path: str | os.PathLike, fmt: Optional[str] = None, *,
                url_column: Optional[str] = None,
                yfcc_original_url: Optional[str] = None) -> Source:
    """Open ``path`` as a :class:`Source` (format detected unless given).

    ``path``: a file, a folder (of images; or of lists, then a :class:`MultiSource`) or a
    glob of list files, local or remote.  Cheap checks run now, so a wrong path, an empty
    list or a list without a URL column fails before any work starts, with a
    :class:`SourceError`.
    """
    if fmt is not None and fmt not in FORMATS:
        raise SourceError(path, f"unknown source format {fmt!r} (choose from {', '.join(FORMATS)})")
    text = os.fspath(path)
    if not storage.is_remote(text):
        text = str(storage.resolve(text))     # a file:// URL is a local path

    def opener(file: str, file_fmt: str) -> Source:
        return _open_file(file, file_fmt, url_column, yfcc_original_url)

    if storage.has_glob(text) and not storage.exists(text):
        return _open_glob(text, fmt, opener)
    if not storage.exists(text):
        raise SourceError(path, "no such file or folder")
    if storage.isdir(text):
        return _open_folder(text, fmt, opener)
    if fmt == "folder":
        raise SourceError(path, "not a folder (format 'folder' needs a folder of images)")
    return opener(text, fmt or detect_format(text))


def _open_glob(pattern: str, fmt: Optional[str], opener: Callable[[str, str], Source]) -> Source:
    if fmt == "folder":
        raise SourceError(pattern, "a glob names list files; give a folder of images as the folder itself")
    if not storage.glob(pattern):
        raise SourceError(pattern, "no such file or folder (the pattern matches no file)")
    return MultiSource(pattern, fmt, opener, glob=True)


def _open_folder(path: str, fmt: Optional[str], opener: Callable[[str, str], Source]) -> Source:
    local = not storage.is_remote(path)
    if local and not os.access(path, os.R_OK | os.X_OK):
        raise SourceError(path, "folder not readable")
    if fmt == "folder" or (fmt is None and _has_image(path)):
        if not _has_image(path):
            raise SourceError(path, "no image files (" + ", ".join(
                sorted(e[1:] for e in IMAGE_EXTENSIONS)) + ") in this folder or below")
        return FolderSource(path)
    if next(ListFolder(path).files(), None) is None:
        raise SourceError(path, "no image files (" + ", ".join(sorted(e[1:] for e in IMAGE_EXTENSIONS))
                          + ") and no list files (" + ", ".join(sorted(s[1:] for s in LIST_SUFFIXES))
                          + ") in this folder or below")
    return MultiSource(path, fmt, opener)


def _open_file(path: str, fmt: str, url_column: Optional[str],
               yfcc_original_url: Optional[str]) -> Source:
    """One list or YFCC file as a source (checked now)."""
    if fmt == "folder":
        raise SourceError(path, "not a folder (format 'folder' needs a folder of images)")
    if fmt == "yfcc":
        from exiflang.pipeline.yfcc import ORIGINAL_URL, YfccSource
        return YfccSource(path, original_template=yfcc_original_url or ORIGINAL_URL)
    from exiflang.pipeline.url_lists import open_url_list
    return open_url_list(path, url_column=url_column)
