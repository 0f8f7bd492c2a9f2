"""Where the pipeline reads and writes: local paths and object stores (``s3://``, ...) behind one small fsspec layer.

**Paths.** A local path (``str`` or :class:`~pathlib.Path`) or a ``file://`` URL is local:
it is handled with the standard library exactly as before, and :func:`resolve` gives it
back as a ``Path``.  Any other ``protocol://`` URL is remote: it stays a ``str`` and goes
through fsspec (``s3fs`` for ``s3://``; ``gcsfs`` for ``gs://`` must be installed for it).
So code written for ``Path`` keeps working on local folders, and the same calls
(:func:`join`, :func:`read_bytes`, :func:`write_bytes`, ...) work on both.

**Commit protocol.**  A reader must never take a partly written file for a whole one.

* Local: the file is written to a temporary name beside its target, fsynced and renamed
  over it; a rename is atomic.
* Object store: there is no rename, but an object becomes visible only whole: a PUT, or a
  multipart upload, which the store assembles only when it is completed (s3fs aborts it on
  an error).  Small files (JSON) are one PUT from memory (:func:`write_bytes`).  Large ones
  (tars, tables) are *staged*: written to a local temporary file (:func:`staging_path`,
  under ``EXIFLANG_STAGING_DIR`` or the system temporary folder), hashed there, and
  uploaded once complete (:func:`commit`).  Staging keeps the worker's memory bounded
  whatever the shard's size, writes at local-disk speed, and needs no seekable remote
  file; a killed upload leaves no object, only invisible parts that a bucket's rule for
  incomplete multipart uploads removes.
* Per shard the stats file is written **last**, once the tar and the table are visible,
  and deleted **first** when a shard is redone (:mod:`exiflang.pipeline.shards.files`): on an object
  store that ordering is the commit, since a shard counts as complete only when its stats
  file exists and the tar's and table's sizes and hashes match what it records.

**Storage options** (endpoint, credentials, ...) come from the environment the store's
library reads (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), from a JSON object in
``EXIFLANG_STORAGE_OPTIONS``, or from :func:`configure` (``--storage-options``), the last
winning.  An entry whose key is a protocol and whose value is an object applies to that
protocol only (``{"s3": {"endpoint_url": ...}, "gs": {...}}``); the other entries apply to
every protocol.  Listing caches are off unless asked for: workers in other processes write
into the folders the driver lists.
"""

from __future__ import annotations

import errno
import glob as globlib
import json
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Union

PathLike = Union[str, "os.PathLike[str]"]
Location = Path | str  # a local Path, or a remote URL as str
OPTIONS_ENV = "EXIFLANG_STORAGE_OPTIONS"
STAGING_ENV = "EXIFLANG_STAGING_DIR"
_LOCAL_PROTOCOLS = ("file", "local")
_GLOB_CHARS = frozenset("*?[")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_options: dict[str, Any] = {}


class StorageError(ValueError):
    """A path that cannot be used (unknown protocol, missing driver, bad options): one line."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{path}: {self.reason}")


def parse_options(text: str | None, where: str = "--storage-options") -> dict[str, Any]:
    """A JSON object of storage options (None or blank: empty); StorageError otherwise."""
    if text is None or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise StorageError(where, f"not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise StorageError(where, f"must be a JSON object, not {type(value).__name__}")
    return value


def configure(options: dict[str, Any] | None) -> None:
    """Set this process's storage options (over those of ``EXIFLANG_STORAGE_OPTIONS``).

    Called by the command with ``--storage-options`` and by every shard worker with the
    options its config carries, so Ray and pool workers reach the same store.
    """
    global _options
    _options = dict(options or {})


def options_for(protocol: str) -> dict[str, Any]:
    """The fsspec options for ``protocol``: the environment's, then :func:`configure`'s."""
    merged: dict[str, Any] = {}
    protocols = _known()
    for layer in (parse_options(os.environ.get(OPTIONS_ENV), OPTIONS_ENV), _options):
        merged.update({k: v for k, v in layer.items() if not isinstance(v, dict) or k not in protocols})
        if isinstance(layer.get(protocol), dict):
            merged.update(layer[protocol])
    merged.setdefault("use_listings_cache", False)
    return merged


def _known() -> set[str]:
    from fsspec.registry import known_implementations

    return set(known_implementations)


def protocol_of(path: PathLike) -> str | None:
    """The protocol of a remote URL (``s3``), or None for a local path or ``file://`` URL."""
    found = _SCHEME.match(path) if isinstance(path, str) else None
    if found is None:
        return None
    protocol = found.group(1).lower()
    return None if protocol in _LOCAL_PROTOCOLS else protocol


def is_remote(path: PathLike) -> bool:
    return protocol_of(path) is not None


def resolve(path: PathLike) -> Location:
    """A local path as ``Path`` (``file://`` removed), a remote URL as ``str`` without a trailing ``/``."""
    if isinstance(path, Path):
        return path
    text = os.fspath(path)
    if is_remote(text):
        head, rest = text.split("://", 1)
        return f"{head}://{rest.rstrip('/')}" if rest.strip("/") else text
    if text.lower().startswith("file://"):
        text = text[len("file://") :]
    return Path(text)


def join(base: PathLike, *names: str) -> Location:
    """``base / name / ...`` for either kind of path."""
    loc = resolve(base)
    if isinstance(loc, Path):
        return loc.joinpath(*names)
    return "/".join([loc.rstrip("/"), *names])


def basename(path: PathLike) -> str:
    loc = resolve(path)
    return loc.name if isinstance(loc, Path) else loc.rstrip("/").rsplit("/", 1)[-1]


def filesystem(path: PathLike) -> tuple[Any, str]:
    """``(fsspec filesystem, path within it)`` for a remote URL."""
    import fsspec

    url = os.fspath(path)
    protocol = protocol_of(url)
    try:
        return fsspec.core.url_to_fs(url, **options_for(protocol or "file"))
    except ImportError as exc:
        raise StorageError(url, f"{protocol}:// needs a package that is not installed ({exc})") from exc
    except (ValueError, TypeError) as exc:
        raise StorageError(url, f"cannot open this storage: {exc}") from exc


def _remote(path: PathLike) -> tuple[Any, str, str]:
    """``(filesystem, path within it, protocol)``."""
    fs, inner = filesystem(path)
    return fs, inner, protocol_of(os.fspath(path)) or "file"


def _url(fs: Any, inner: str) -> str:
    return fs.unstrip_protocol(inner)


# -- reading --------------------------------------------------------------------------------


def open_read(path: PathLike, **kwargs: Any) -> IO[bytes]:
    """Open for reading bytes (streamed; seekable).  FileNotFoundError if there is none."""
    loc = resolve(path)
    if isinstance(loc, Path):
        return open(loc, "rb")
    fs, inner = filesystem(loc)
    return fs.open(inner, "rb", **kwargs)


def read_bytes(path: PathLike) -> bytes:
    loc = resolve(path)
    if isinstance(loc, Path):
        return loc.read_bytes()
    fs, inner = filesystem(loc)
    return fs.cat_file(inner)


def exists(path: PathLike) -> bool:
    loc = resolve(path)
    if isinstance(loc, Path):
        return loc.exists()
    fs, inner = filesystem(loc)
    return bool(fs.exists(inner))


def isdir(path: PathLike) -> bool:
    """Whether ``path`` is a folder (on an object store: a prefix holding objects)."""
    loc = resolve(path)
    if isinstance(loc, Path):
        return loc.is_dir()
    fs, inner = filesystem(loc)
    return bool(fs.isdir(inner))


def size(path: PathLike) -> int:
    """Size in bytes; FileNotFoundError if there is no such file."""
    loc = resolve(path)
    if isinstance(loc, Path):
        return loc.stat().st_size
    fs, inner = filesystem(loc)
    info = fs.info(inner)
    if info.get("type") == "directory":
        raise IsADirectoryError(21, "Is a directory", str(loc))
    return int(info["size"])


def listdir(path: PathLike) -> list[str]:
    """Names of the files directly in a folder, sorted (empty if it does not exist)."""
    loc = resolve(path)
    if isinstance(loc, Path):
        try:
            return sorted(e.name for e in os.scandir(loc) if e.is_file())
        except (FileNotFoundError, NotADirectoryError):
            return []
    fs, inner = filesystem(loc)
    try:
        entries = fs.ls(inner, detail=True)
    except FileNotFoundError:
        return []
    return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "file")


def has_glob(path: PathLike) -> bool:
    return any(c in _GLOB_CHARS for c in os.fspath(path))


def glob(pattern: PathLike) -> list[Location]:
    """The files matching a pattern (``*``, ``?``, ``[...]``, ``**``), in path order."""
    loc = os.fspath(pattern)
    if not is_remote(loc):
        local = str(resolve(loc))
        found: list[Location] = [Path(p) for p in globlib.glob(local, recursive=True) if os.path.isfile(p)]
    else:
        fs, inner = filesystem(loc)
        found = [_url(fs, p) for p, info in fs.glob(inner, detail=True).items() if info.get("type") == "file"]
    return sorted(found, key=path_order)


def path_order(path: PathLike) -> list[str]:
    """Sort key: depth-first by name, as a folder walk yields (``a/b`` before ``a.txt``)."""
    return os.fspath(path).split("/")


def walk_files(root: str) -> Iterator[str]:
    """Every file below a remote folder, depth-first in name order, one listing at a time.

    Names starting with ``.`` are not descended into or yielded (hidden, as locally).
    """
    fs, inner = filesystem(root)
    yield from _walk_remote(fs, inner)


def _walk_remote(fs: Any, folder: str) -> Iterator[str]:
    try:
        entries = fs.ls(folder, detail=True)
    except FileNotFoundError:
        return
    named = sorted(((e["name"].rstrip("/").rsplit("/", 1)[-1], e) for e in entries), key=lambda x: x[0])
    for name, entry in named:
        if name.startswith(".") or entry["name"].rstrip("/") == folder.rstrip("/"):
            continue
        if entry.get("type") == "directory":
            yield from _walk_remote(fs, entry["name"].rstrip("/"))
        else:
            yield _url(fs, entry["name"])


# -- writing --------------------------------------------------------------------------------


def makedirs(path: PathLike) -> None:
    """Create a local folder (and parents); nothing on an object store (no folders there)."""
    loc = resolve(path)
    if isinstance(loc, Path):
        loc.mkdir(parents=True, exist_ok=True)


def remove(path: PathLike) -> None:
    """Delete a file if it exists."""
    loc = resolve(path)
    if isinstance(loc, Path):
        loc.unlink(missing_ok=True)
        return
    fs, inner = filesystem(loc)
    try:
        fs.rm_file(inner)
    except FileNotFoundError:
        pass


def staging_path(path: PathLike) -> Path:
    """A fresh local temporary file name to write ``path``'s content to before :func:`commit`.

    Local: beside the target (same file system, so the rename is atomic).  Remote: under
    ``EXIFLANG_STAGING_DIR`` or the system temporary folder.
    """
    loc = resolve(path)
    tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if isinstance(loc, Path):
        return loc.with_name(loc.name + tag)
    folder = Path(os.environ.get(STAGING_ENV) or tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"exiflang-{basename(loc)}{tag}"


def commit(staged: Path, path: PathLike) -> None:
    """Make the staged file ``path``, atomically (rename, or one upload); the staged file is gone after."""
    loc = resolve(path)
    try:
        if isinstance(loc, Path):
            with open(staged, "rb+") as fh:
                os.fsync(fh.fileno())  # the data is on disk before the name says it is there
            staged.replace(loc)
            return
        fs, inner = filesystem(loc)
        try:
            fs.put_file(str(staged), inner)
        except OSError as exc:
            raise _named(exc, loc) from exc
    finally:
        staged.unlink(missing_ok=True)


def write_bytes(path: PathLike, data: bytes) -> None:
    """Write a whole file atomically: temporary file + fsync + rename, or one PUT."""
    loc = resolve(path)
    if not isinstance(loc, Path):
        fs, inner = filesystem(loc)
        try:
            fs.pipe_file(inner, data)
        except OSError as exc:
            raise _named(exc, loc) from exc
        return
    tmp = staging_path(loc)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        commit(tmp, loc)
    finally:
        tmp.unlink(missing_ok=True)


def _named(exc: OSError, path: str) -> OSError:
    """``exc`` with ``path`` as its file: an object store's errors ("The specified bucket
    does not exist") often do not say which object was being written."""
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    code = exc.errno if exc.errno is not None else errno.EIO
    try:
        return type(exc)(code, reason, path)
    except TypeError:  # a library's own OSError subclass with another signature
        return OSError(code, reason, path)
