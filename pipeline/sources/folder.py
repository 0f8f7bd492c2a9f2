"""Folders as sources: a folder of images walked in a stable order, and a folder or glob of
list / Parquet / YFCC files read one after another as one source (:class:`MultiSource`).

At scale a source is many files: a folder holding no images but list files (or Parquet
shards, or YFCC main-file parts), or a glob of them (``lists/*.csv.gz``,
``s3://bucket/yfcc/part-*``): the files in path order (depth-first by name, as a folder is
walked), each streamed and never loaded whole, with row indices continuing from one file to
the next, so the shard plan, and with it resume, is the same on every run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from exiflang.pipeline import storage
from exiflang.pipeline.records import SourceRow
from exiflang.pipeline.sources.base import (
    IMAGE_EXTENSIONS,
    LIST_SUFFIXES,
    EmptySourceError,
    Source,
    SourceError,
    inner_suffix,
)
from exiflang.pipeline.sources.yfcc import looks_like_yfcc


class FolderSource(Source):
    """Every image-looking file under a folder, recursively, in sorted depth-first order."""

    format = "folder"
    _unwanted = "not_image"  # the skip reason of a file :meth:`_wanted` refuses

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
                self._skip("not_a_file")  # fifos, sockets: reading them could block


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


def has_images(folder: str) -> bool:
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

    def __init__(self, path: str, fmt: str | None, opener: Callable[[str, str], Source], glob: bool = False) -> None:
        super().__init__(path)
        self._fmt, self._opener, self._glob = fmt, opener, glob
        self.formats: set[str] = set()
        self.files_read = 0
        if self._first() is None:
            raise SourceError(
                path,
                "no list files with entries ("
                + ", ".join(sorted(s[1:] for s in LIST_SUFFIXES))
                + ", optionally compressed; or YFCC parts)",
            )

    @property
    def format(self) -> str:  # type: ignore[override]
        return "+".join(sorted(self.formats)) or (self._fmt or "urls")

    def rows(self) -> Iterator[SourceRow]:
        self._reset()
        self.files_read = index = 0
        for path in self._paths():
            source = self._open(path)
            if source is None:
                continue
            for row in source.rows():
                row.index = index  # continuous across files: the shard plan stays fixed
                index += 1
                yield row
            self.files_read += 1
            self._merge(source)

    def _paths(self) -> Iterator[str]:
        if self._glob:
            return (str(p) for p in storage.glob(self.path))
        lister = ListFolder(self.path)
        lister.skipped = self.skipped  # hidden / not-a-list files count as this source's
        return lister.files()

    def _first(self) -> Source | None:
        for path in self._paths():
            source = self._open(path)
            if source is not None:
                return source
        return None

    def _open(self, path: str) -> Source | None:
        """The file as a source, or None when it is to be skipped (counted)."""
        fmt = self._fmt or detect_format(path)
        if inner_suffix(path) == "" and fmt != "yfcc" and self._fmt is None:
            self._skip("not_a_list")  # README, LICENSE, ...: not a list without a suffix
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
        if has_images(text):
            return "folder"
        first = next((f for f in ListFolder(text).files() if inner_suffix(f) != ""), None)
        return detect_format(first) if first else "folder"
    if inner_suffix(text) in ("", ".txt", ".tsv") and looks_like_yfcc(text):
        return "yfcc"
    return "urls"
