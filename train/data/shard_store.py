"""Where the shards live (a folder or an fsspec URL): listing and streamed reads, bounded retries, a per-read timeout.

``--data`` and ``--eval-data`` are either a local folder (read with ``open()``, as always) or a
URL that fsspec understands: ``s3://bucket/prefix``, ``gs://…``, ``file:///abs/path``.  A URL is
never downloaded first: a tar is opened as a seekable remote file whose blocks (``block_size``,
8 MiB) are fetched by ranged GETs, the next one in the background while the loader decodes
(fsspec's ``background`` cache: on loopback S3 on a shared 2-core box the loader went from
0.65x of local disk to 0.72-0.98x, docs/training.md), so only the block being read and the
next are held.

**Read discipline** (URLs only; local files fail fast): every call that touches the store —
listing, reading ``tags.json`` / ``sizes.json``, each ``read()`` of a tar — runs under a
per-read timeout (``timeout_s``, waited for on a helper thread, so it holds for every fsspec
backend) and is retried ``attempts`` times in all with exponential backoff (``backoff_s``,
doubled per retry, capped at 8 s), reopening the file at the same byte offset.  Missing files
and refused access are not retried.  When the attempts are spent the error is one
``OSError`` line naming the URL; the loader then skips the rest of that tar and counts it, as
for a damaged local tar.

Credentials and endpoints come from the backend's usual environment (``AWS_*``,
``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``) or ``data.storage_options``.
"""

from __future__ import annotations

import concurrent.futures as futures
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

T = TypeVar("T")
_NOT_TRANSIENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_TRANSIENT_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "google", "fsspec")
_MAX_BACKOFF_S = 8.0


def is_url(location: str | Path) -> bool:
    """True for ``scheme://…`` (fsspec), False for a local path."""
    return isinstance(location, str) and "://" in location


def join(root: str | Path, name: str) -> str | Path:
    """``root/name`` for a URL or a local path (a URL stays a str, a path a Path)."""
    if is_url(root):
        return f"{str(root).rstrip('/')}/{name}"
    return Path(root) / name


@dataclass(frozen=True)
class ReadPolicy:
    """How hard a remote read tries: ``attempts`` in all, ``timeout_s`` per read, backoff base."""

    attempts: int = 4
    timeout_s: float = 60.0
    backoff_s: float = 0.5

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.timeout_s <= 0 or self.backoff_s < 0:
            raise ValueError(
                f"bad read policy: attempts {self.attempts} (>= 1), timeout "
                f"{self.timeout_s} s (> 0), backoff {self.backoff_s} s (>= 0)"
            )


def transient(exc: BaseException) -> bool:
    """Whether a failed read is worth retrying: timeouts, connection and server errors, yes;
    a missing file or refused access, no."""
    if isinstance(exc, _NOT_TRANSIENT):
        return False
    if isinstance(exc, OSError):
        return True
    return type(exc).__module__.split(".")[0] in _TRANSIENT_MODULES


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class _Timed:
    """Runs calls on one helper thread and waits at most ``timeout_s`` for each (created lazily,
    per process: a forked DataLoader worker makes its own)."""

    def __init__(self) -> None:
        self._pool: futures.ThreadPoolExecutor | None = None
        self._pid = 0

    def __call__(self, fn: Callable[[], T], timeout_s: float) -> T:
        if self._pool is None or self._pid != os.getpid():
            self._pool, self._pid = futures.ThreadPoolExecutor(1, thread_name_prefix="shard-read"), os.getpid()
        job = self._pool.submit(fn)
        try:
            return job.result(timeout=timeout_s)
        except futures.TimeoutError:
            # The stuck call keeps its thread; a new one serves the retry.
            self._pool.shutdown(wait=False)
            self._pool = None
            raise TimeoutError(f"no answer in {timeout_s:g} s") from None

    def close(self) -> None:
        if self._pool is not None and self._pid == os.getpid():
            self._pool.shutdown(wait=False)
        self._pool = None


def with_retries(
    what: str,
    fn: Callable[[], T],
    policy: ReadPolicy,
    timed: _Timed | None = None,
    on_retry: Callable[[], None] | None = None,
) -> T:
    """``fn()`` under ``policy``: each try timed out after ``timeout_s``, transient failures
    retried with backoff (``on_retry`` runs before each retry, e.g. to reopen a file).  Raises
    one ``OSError`` line naming ``what`` when the tries are spent or the failure is permanent."""
    timed = timed or _Timed()
    for attempt in range(policy.attempts):
        try:
            return timed(fn, policy.timeout_s)
        except Exception as exc:
            if not transient(exc):
                kind = next((k for k in _NOT_TRANSIENT if isinstance(exc, k)), None)
                if kind is None:
                    raise  # not a storage failure (a bug): as it is
                raise kind(f"{what}: {'missing' if kind is FileNotFoundError else _one_line(exc)}") from exc
            if attempt + 1 == policy.attempts:
                raise OSError(
                    f"{what}: failed after {policy.attempts} attempts ({type(exc).__name__}: {_one_line(exc)})"
                ) from exc
            time.sleep(min(_MAX_BACKOFF_S, policy.backoff_s * 2**attempt))
            if on_retry is not None:
                on_retry()
    raise AssertionError("unreachable")


def _close_quietly(fh: BinaryIO) -> None:
    try:
        fh.close()
    except Exception:  # noqa: BLE001 - a broken remote file may fail to close: it is dropped anyway
        pass


class RetryingFile:
    """A seekable read-only file on a store whose every ``read`` follows the :class:`ReadPolicy`:
    after a failure the remote file is reopened and the read retried from the same offset."""

    def __init__(self, url: str, opener: Callable[[], BinaryIO], policy: ReadPolicy) -> None:
        self.name, self._opener, self._policy = url, opener, policy
        self._fh: BinaryIO | None = None
        self._pos = 0
        self._size: int | None = None
        self._timed = _Timed()

    def _file(self) -> BinaryIO:
        if self._fh is None:
            self._fh = self._opener()
        return self._fh

    def _drop(self) -> None:
        """Forget the remote file after a failed read; it is closed on a thread of its own, as
        closing waits for its stuck prefetch."""
        fh, self._fh = self._fh, None
        if fh is not None:
            threading.Thread(target=_close_quietly, args=(fh,), daemon=True).start()

    def read(self, n: int = -1) -> bytes:
        def once() -> bytes:
            fh = self._file()
            fh.seek(self._pos)
            return fh.read(n)

        data = with_retries(self.name, once, self._policy, self._timed, on_retry=self._drop)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self._pos
        elif whence == 2:
            offset += self.size()
        if offset < 0:
            raise OSError(f"{self.name}: seek to {offset}")
        self._pos = offset
        return offset

    def size(self) -> int:
        if self._size is None:
            # The opener gives an fsspec buffered file (typed here as BinaryIO): it has ``size``.
            self._size = int(
                with_retries(
                    self.name, lambda: cast(Any, self._file()).size, self._policy, self._timed, on_retry=self._drop
                )
            )
        return self._size

    def tell(self) -> int:
        return self._pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            _close_quietly(fh)
        self._timed.close()

    def __enter__(self) -> RetryingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class ShardStore:
    """One dataset location: ``root`` a local folder (Path) or a URL (str).

    ``block_size``: bytes per ranged GET when streaming a tar front to back.  Picklable (the
    filesystem object is made lazily in each process).
    """

    root: str | Path
    policy: ReadPolicy = field(default_factory=ReadPolicy)
    storage_options: dict[str, Any] = field(default_factory=dict)
    block_size: int = 8 << 20
    _fs: Any = field(default=None, repr=False, compare=False)
    _fs_pid: int = field(default=0, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.root = str(self.root).rstrip("/") if is_url(self.root) else Path(self.root)

    @property
    def remote(self) -> bool:
        return is_url(self.root)

    def location(self, name: str) -> str | Path:
        return join(self.root, name)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fs": None, "_fs_pid": 0}

    def fs(self) -> Any:
        """The fsspec filesystem of a URL root (one per process: fsspec's event loop and
        connections do not survive a fork)."""
        if self._fs is None or self._fs_pid != os.getpid():
            import fsspec

            protocol = str(self.root).split("://", 1)[0]
            self._fs = fsspec.filesystem(protocol, skip_instance_cache=True, **self.storage_options)
            self._fs_pid = os.getpid()
        return self._fs

    def _path(self, name: str = "") -> str:
        """The URL of ``name`` under the root, as the filesystem spells paths (no scheme)."""
        url = str(self.location(name)) if name else str(self.root)
        return self.fs()._strip_protocol(url)

    def tar_names(self) -> list[str]:
        """The ``*.tar`` files directly in the root, sorted by name."""
        if not self.remote:
            root = Path(self.root)
            if not root.is_dir():
                raise FileNotFoundError(f"{root}: data folder not found")
            return sorted(p.name for p in root.glob("*.tar"))
        found = with_retries(str(self.root), lambda: self.fs().glob(self._path("*.tar")), self.policy)
        return sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in found)

    def read_bytes(self, name: str) -> bytes:
        """All of file ``name`` (a JSON file); ``FileNotFoundError`` naming it when absent."""
        where = self.location(name)
        if not self.remote:
            return Path(where).read_bytes()
        return with_retries(str(where), lambda: self.fs().cat_file(self._path(name)), self.policy)

    def open(self, name: str, sequential: bool = True) -> BinaryIO:
        """``name`` for reading: a local file, or a :class:`RetryingFile` streaming the remote one
        (``sequential``: blocks of ``block_size``, the next prefetched; else exact ranged reads,
        for the few members re-read after a resume)."""
        if not self.remote:
            return open(self.location(name), "rb")
        path = self._path(name)
        # Two blocks held: the one being read and the next, fetched in the background.
        kw = (
            {"block_size": self.block_size, "cache_type": "background", "cache_options": {"maxblocks": 2}}
            if sequential
            else {"block_size": 1 << 16, "cache_type": "none"}
        )
        return RetryingFile(str(self.location(name)), lambda: self.fs().open(path, "rb", **kw), self.policy)  # type: ignore[return-value]


def store_for(
    location: str | Path, policy: ReadPolicy | None = None, storage_options: dict[str, Any] | None = None
) -> ShardStore:
    """A :class:`ShardStore` rooted at ``location`` (a folder or a URL)."""
    return ShardStore(location, policy or ReadPolicy(), dict(storage_options or {}))


def read_file(
    location: str | Path, policy: ReadPolicy | None = None, storage_options: dict[str, Any] | None = None
) -> bytes:
    """The bytes of one file given as a local path or a URL (``tags.json`` named on its own)."""
    if not is_url(location):
        return Path(location).read_bytes()
    parent, _, name = str(location).rstrip("/").rpartition("/")
    return store_for(parent, policy, storage_options).read_bytes(name)
