"""One wall-clock deadline over every blocking step of an HTTP exchange: DNS, connect, TLS, headers, body.

A per-read socket timeout alone does not bound an exchange: a server that sends one header
byte every few seconds never lets a single read wait long enough to trip it, and http.client
reads the status line and headers inside one call we cannot interrupt.  So the deadline is
enforced *below* http.client, at every socket operation, by the thread doing it:

* **Reads** (status line, headers, body, chunk framing, a proxy's CONNECT reply): the response
  class of our connections reads its socket through :class:`_BoundedReader`, which sets the
  socket timeout to ``min(per-read timeout, time left)`` before *each* ``recv`` and raises
  :class:`TimeoutError` once no time is left.  A trickle therefore ends within one read of the
  deadline; urllib3 reports it as a read timeout like any other.
* **DNS**: ``getaddrinfo`` cannot be interrupted, so a name is resolved on a short-lived daemon
  thread that the caller waits for at most ``min(connect timeout, time left)``; a resolver stuck
  past that is abandoned (it ends by itself at the system resolver's own timeout).
* **Connect and TLS handshake**: the socket timeout is ``min(connect timeout, time left)`` for
  ``connect`` and again just before the handshake (CPython bounds a whole handshake by the
  socket timeout it starts with).

Why not a watchdog thread that shuts sockets down at the deadline: the socket object it holds
may be closed by the owning thread and its descriptor reused by another connection in the
meantime.  Here nothing crosses threads: each thread only ever sets timeouts on the socket it is
itself reading, and the deadline comes from that thread (:func:`applied`, thread-local), so
keep-alive connections shared through the pool always run under the deadline of the thread
currently using them.  Request writes (a few hundred bytes, absorbed by the socket buffer) stay
bounded by the per-read timeout only.

:class:`Deadline` is plain arithmetic on ``time.monotonic()``; nothing here knows about
politeness limits, retries or statuses (exiflang.pipeline.fetch.download does).
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from urllib3 import PoolManager, ProxyManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family


class Deadline:
    """A point on the monotonic clock ``seconds`` from now (seconds > 0), with a label for messages.

    Not shared between threads: each fetch thread owns its deadlines.
    """

    def __init__(self, seconds: float, label: str = "deadline") -> None:
        self.seconds = seconds
        self.label = label
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds remaining; negative once passed."""
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0

    def extend(self, seconds: float) -> None:
        """Push the end back (time spent queued for politeness is not the server's fault)."""
        self.end += max(0.0, seconds)

    def within(self, outer: Deadline) -> Deadline:
        """This deadline, or a copy of ``outer`` (label and all) when that one ends first."""
        if self.end <= outer.end:
            return self
        inner = Deadline(outer.seconds, outer.label)
        inner.end = outer.end
        return inner

    def clamp(self, timeout: float | None) -> float:
        """``min(timeout, time left)`` for one blocking call (timeout None: no own limit).

        Raises TimeoutError when no time is left, so a spent deadline never becomes a
        zero timeout, which sockets would take to mean non-blocking.
        """
        left = self.left()
        if left <= 0:
            raise TimeoutError(f"{self.describe()} exceeded")
        return left if timeout is None else min(timeout, left)

    def describe(self) -> str:
        return f"{self.label} {self.seconds:g} s"


_local = threading.local()


@contextmanager
def applied(deadline: Deadline) -> Iterator[Deadline]:
    """Run the body with ``deadline`` bounding this thread's connections and responses."""
    previous = getattr(_local, "deadline", None)
    _local.deadline = deadline
    try:
        yield deadline
    finally:
        _local.deadline = previous


def current() -> Deadline | None:
    """The deadline :func:`applied` set for this thread, or None (then nothing is bounded here)."""
    return getattr(_local, "deadline", None)


def resolve(host: str, port: int, seconds: float) -> list[Any]:
    """``getaddrinfo`` for a TCP connection, given up after ``seconds`` (> 0) with TimeoutError."""
    family = allowed_gai_family()
    try:
        ipaddress.ip_address(host)
        return socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)  # a literal: no lookup
    except ValueError:
        pass
    done = threading.Event()
    box: dict[str, Any] = {}

    def lookup() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=lookup, name="dns", daemon=True).start()
    if not done.wait(seconds):
        raise TimeoutError(f"DNS lookup of {host} took over {seconds:.3g} s")
    if "error" in box:
        raise box["error"]
    return box["infos"]


def open_connection(
    host: str,
    port: int,
    timeout: float | None,
    deadline: Deadline,
    source_address: tuple[str, int] | None = None,
    socket_options: list[tuple[int, int, Any]] | None = None,
) -> socket.socket:
    """A connected TCP socket, DNS and connect within ``min(timeout, deadline)``; raises OSError."""
    host = host.strip("[]")  # an IPv6 literal as it appears in a URL
    infos = resolve(host, port, deadline.clamp(timeout))
    if not infos:
        raise socket.gaierror(f"no address for {host}")
    error: OSError | None = None
    for family, kind, proto, _, addr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            for opt in socket_options or ():
                sock.setsockopt(*opt)
            if source_address:
                sock.bind(source_address)
            sock.settimeout(deadline.clamp(timeout))
            sock.connect(addr)
            sock.settimeout(deadline.clamp(timeout))  # the TLS handshake, if any, starts next
            return sock
        except OSError as exc:
            sock.close()
            error = exc
            if isinstance(exc, TimeoutError) and deadline.expired():
                break  # no time for the next address
    assert error is not None
    raise error


class _BoundedReader(io.RawIOBase):
    """A response's socket stream; every read waits at most ``min(per-read, time left)``."""

    def __init__(self, sock: socket.socket, deadline: Deadline | None) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)  # keeps the socket open until we close
        self._per_read = sock.gettimeout()  # urllib3 set the read timeout just before
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        if self._deadline is not None:
            timeout = self._deadline.clamp(self._per_read)
            if timeout != self._sock.gettimeout():  # settimeout costs syscalls; skip no-ops
                self._sock.settimeout(timeout)
        return self._raw.readinto(buffer)

    def fileno(self) -> int:
        return self._raw.fileno()

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class BoundedHTTPResponse(http.client.HTTPResponse):
    """http.client's response, reading through :class:`_BoundedReader` under this thread's deadline."""

    def __init__(
        self, sock: socket.socket, debuglevel: int = 0, method: str | None = None, url: str | None = None
    ) -> None:
        super().__init__(sock, debuglevel, method, url)
        deadline = current()
        if deadline is not None:
            plain, self.fp = self.fp, io.BufferedReader(_BoundedReader(sock, deadline))
            plain.close()


class _BoundedConnect:
    """Mixin for urllib3 connections: bounded DNS + connect, bounded responses."""

    response_class: type[http.client.HTTPResponse] = BoundedHTTPResponse

    def _new_conn(self) -> socket.socket:
        deadline = current()
        if deadline is None:
            return super()._new_conn()  # type: ignore[misc]
        conn = cast(HTTPConnection, self)  # this mixin is only ever mixed into urllib3's connections
        timeout = conn.timeout if isinstance(conn.timeout, (int, float)) else None
        try:
            return open_connection(
                conn._dns_host, conn.port, timeout, deadline, conn.source_address, conn.socket_options
            )
        except socket.gaierror as exc:
            raise NameResolutionError(conn.host, conn, exc) from exc
        except TimeoutError as exc:
            raise ConnectTimeoutError(conn, f"connection to {conn.host} timed out: {exc}") from exc
        except OSError as exc:
            raise NewConnectionError(conn, f"Failed to establish a new connection: {exc}") from exc


class BoundedHTTPConnection(_BoundedConnect, HTTPConnection):
    """urllib3's HTTP connection under the calling thread's :class:`Deadline`."""


class BoundedHTTPSConnection(_BoundedConnect, HTTPSConnection):
    """urllib3's HTTPS connection under the calling thread's :class:`Deadline`."""


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = BoundedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = BoundedHTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


def bounded_pool_manager(**kwargs: Any) -> PoolManager:
    """A urllib3 :class:`PoolManager` whose connections obey :func:`applied`."""
    manager = PoolManager(**kwargs)
    manager.pool_classes_by_scheme = dict(_POOLS)
    return manager


def bounded_proxy_manager(proxy_url: str, **kwargs: Any) -> PoolManager:
    """A urllib3 manager through ``proxy_url`` (HTTP/HTTPS proxies bounded, SOCKS as urllib3 has it)."""
    if proxy_url.lower().startswith("socks"):
        from urllib3.contrib.socks import SOCKSProxyManager  # needs PySocks, as requests did

        return SOCKSProxyManager(proxy_url, **kwargs)
    manager = ProxyManager(proxy_url, **kwargs)
    manager.pool_classes_by_scheme = dict(_POOLS)
    return manager
