"""Which kind of input a path is, and the one entry point that opens it as a stream of source rows.

Three formats (docs/design.md §2): a ``folder`` of images (walked here), a list of ``urls``
(txt/csv/tsv/jsonl/parquet: :mod:`exiflang.pipeline.sources.url_lists`) and a ``yfcc`` main file
(:mod:`exiflang.pipeline.sources.yfcc`).  Any file may be gzip-, bzip2- or xz-compressed; compression is
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
it escaped, with the raw bytes alongside (:mod:`exiflang.pipeline.shards.files`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from exiflang.pipeline import storage
from exiflang.pipeline.sources.base import FORMATS, IMAGE_EXTENSIONS, LIST_SUFFIXES, Source, SourceError
from exiflang.pipeline.sources.folder import FolderSource, ListFolder, MultiSource, detect_format, has_images
from exiflang.pipeline.sources.url_lists import open_url_list
from exiflang.pipeline.sources.yfcc import ORIGINAL_URL, YfccSource


def open_source(
    path: str | os.PathLike,
    fmt: str | None = None,
    *,
    url_column: str | None = None,
    yfcc_original_url: str | None = None,
) -> Source:
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
        text = str(storage.resolve(text))  # a file:// URL is a local path

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


def _open_glob(pattern: str, fmt: str | None, opener: Callable[[str, str], Source]) -> Source:
    if fmt == "folder":
        raise SourceError(pattern, "a glob names list files; give a folder of images as the folder itself")
    if not storage.glob(pattern):
        raise SourceError(pattern, "no such file or folder (the pattern matches no file)")
    return MultiSource(pattern, fmt, opener, glob=True)


def _open_folder(path: str, fmt: str | None, opener: Callable[[str, str], Source]) -> Source:
    local = not storage.is_remote(path)
    if local and not os.access(path, os.R_OK | os.X_OK):
        raise SourceError(path, "folder not readable")
    if fmt == "folder" or (fmt is None and has_images(path)):
        if not has_images(path):
            raise SourceError(
                path,
                "no image files (" + ", ".join(sorted(e[1:] for e in IMAGE_EXTENSIONS)) + ") in this folder or below",
            )
        return FolderSource(path)
    if next(ListFolder(path).files(), None) is None:
        raise SourceError(
            path,
            "no image files ("
            + ", ".join(sorted(e[1:] for e in IMAGE_EXTENSIONS))
            + ") and no list files ("
            + ", ".join(sorted(s[1:] for s in LIST_SUFFIXES))
            + ") in this folder or below",
        )
    return MultiSource(path, fmt, opener)


def _open_file(path: str, fmt: str, url_column: str | None, yfcc_original_url: str | None) -> Source:
    """One list or YFCC file as a source (checked now)."""
    if fmt == "folder":
        raise SourceError(path, "not a folder (format 'folder' needs a folder of images)")
    if fmt == "yfcc":
        return YfccSource(path, original_template=yfcc_original_url or ORIGINAL_URL)
    return open_url_list(path, url_column=url_column)
