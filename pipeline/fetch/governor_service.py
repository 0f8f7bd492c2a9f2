"""One job's :class:`~exiflang.pipeline.fetch.politeness.HostGovernor` served to its worker processes over a socket.

The server is a thread of the driver process, which is idle while the workers run: a Unix
socket for the local process pool, TCP for Ray workers (the driver node's address, so workers
on other nodes reach it).  The workers' fetch threads are its clients, each on a connection of
its own (so a blocking acquire holds nothing but itself), authenticated with a random per-job
key by :mod:`multiprocessing.connection`'s HMAC challenge.  Messages are JSON arrays sent as
bytes (never pickles: nothing a peer sends can run code, key or no key):

* ``("acquire", host, hold, wait_max[, unless_paused])`` -> a lease id, None (ask again) or,
  with ``unless_paused`` and the host paused, ``{"paused": seconds}``;
* ``("release", lease, outcome, retry_after)`` -> no reply: the fetch thread does not wait;
* ``("report", host, outcome, epoch, retry_after)`` -> no reply: what a host answered a request
  sent without a lease (below);
* ``("ping",)`` -> ``"pong"``.

A job with no per-host cap and no rate needs the governor only for pauses: the server then also
publishes them on a :class:`~exiflang.pipeline.fetch.pause_board.PauseBoard` (a file beside the
Unix socket), and a local worker sends a request to a host the board shows unpaused without
asking, and reports only throttles and the answer that ends a run of them.

A round trip costs tens of microseconds (``benchmarks/fetch_cost.py`` measures it), against
~1.4 ms for a Ray actor call.  Leases granted over a connection are given back when it closes,
so a worker that dies mid-request frees its slots at once.

The client, :class:`RemoteGovernor`, has the governor's own call signatures.  It checks the
server at construction (a worker that cannot reach it fails its shard with one clear line
instead of fetching unthrottled); if the server is lost later (the driver died mid-job) it
falls back, with a warning, to a governor of its own holding its ``share`` of the limits.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener, answer_challenge, deliver_challenge
from pathlib import Path
from typing import Any

from exiflang.pipeline.fetch.pause_board import PauseBoard
from exiflang.pipeline.fetch.politeness import ANSWERED, THROTTLED, Clock, GovernorLimits, HostGovernor, Paused

log = logging.getLogger(__name__)

_LOST = (OSError, EOFError, AuthenticationError)


class GovernorUnavailable(RuntimeError):
    """The job's host governor cannot be reached from this worker."""


def _listen_args(address: str) -> tuple[Any, str]:
    kind, _, rest = address.partition(":")
    if kind == "unix":
        return rest, "AF_UNIX"
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        return (host, int(port)), "AF_INET"
    raise ValueError(f"governor address must be unix:PATH or tcp:HOST:PORT, not {address!r}")


class GovernorServer:
    """Serves ``governor`` until :meth:`close`; ``address`` and ``key`` tell clients where and how."""

    def __init__(self, governor: HostGovernor, tcp_host: str | None = None) -> None:
        self.governor = governor
        self.key = secrets.token_hex(32)
        self._tmpdir: str | None = None
        self.board: PauseBoard | None = None  # local workers of an unlimited job read pauses here
        if tcp_host is None:
            # A private (0700) folder: only this user can even reach the socket.
            self._tmpdir = tempfile.mkdtemp(prefix="exiflang-gov-")
            self._listener = Listener(os.path.join(self._tmpdir, "s"), "AF_UNIX", backlog=512)
            self.address = f"unix:{self._listener.address}"
            if unlimited(governor.limits) and type(governor.clock) is Clock:  # the board holds real time
                self.board = PauseBoard.create(Path(self._tmpdir) / "pauses")
                governor.on_change = self.board.write
        else:
            self._listener = Listener((tcp_host, 0), "AF_INET", backlog=512)
            host, port = self._listener.address
            self.address = f"tcp:{host}:{port}"
        self._owners = itertools.count(1)
        self._conns: set[Connection] = set()
        self._lock = threading.Lock()
        self._closing = False
        self._thread = threading.Thread(target=self._accept_loop, name="governor", daemon=True)
        self._thread.start()

    def __enter__(self) -> GovernorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting, cut every client connection (waking their threads) and clean up."""
        if self._closing:
            return
        self._closing = True
        try:  # accept() is not woken by close(): connect once so the loop sees _closing
            Client(*_listen_args(self.address)).close()
        except _LOST:
            pass
        self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            _shutdown(conn)
        if self.board is not None:
            self.governor.on_change = None
            self.board.close()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                conn = self._listener.accept()
            except _LOST:
                continue
            if self._closing:
                conn.close()
                break
            threading.Thread(target=self._serve, args=(conn,), name="governor-conn", daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        owner = next(self._owners)
        _no_delay(conn)
        try:
            # Authenticated here, not in accept(): a silent peer stalls only its own thread.
            deliver_challenge(conn, bytes.fromhex(self.key))
            answer_challenge(conn, bytes.fromhex(self.key))
        except Exception:  # noqa: BLE001 - a peer without the key, or gone: just drop it
            conn.close()
            return
        with self._lock:
            self._conns.add(conn)
        try:
            self._dispatch(conn, owner)
        finally:
            with self._lock:
                self._conns.discard(conn)
            self.governor.drop_owner(owner)  # leases of a client gone mid-request
            conn.close()

    def _dispatch(self, conn: Connection, owner: int) -> None:
        gov = self.governor
        while not self._closing:
            try:
                msg = _decode(conn.recv_bytes(_MAX_MESSAGE))
            except _LOST:
                return
            except ValueError:
                log.warning("host governor: malformed message dropped; closing that connection")
                return
            op = msg[0]
            if op == "acquire":
                reply: Any = gov.acquire(msg[1], owner, msg[2], msg[3], len(msg) > 4 and bool(msg[4]))
                if isinstance(reply, Paused):
                    reply = {"paused": reply.seconds}
            elif op == "release":
                gov.release(msg[1], msg[2], msg[3])
                continue
            elif op == "report":
                gov.report(msg[1], msg[2], msg[3], msg[4])
                continue
            else:
                reply = "pong"
            try:
                conn.send_bytes(json.dumps(reply).encode())
            except _LOST:
                return


_MAX_MESSAGE = 1 << 16  # bytes; a host name and a few numbers need far less


def _decode(data: bytes) -> Any:
    """A message off the wire: JSON only; anything else is a ValueError."""
    return json.loads(data.decode("utf-8"))


def _no_delay(conn: Connection) -> None:
    """TCP_NODELAY: a release and the next acquire are two small writes in a row, which
    Nagle's algorithm would hold back for the peer's delayed ACK (~40 ms)."""
    try:
        sock = socket.socket(fileno=conn.fileno())
    except (OSError, ValueError):
        return
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    finally:
        sock.detach()


def _shutdown(conn: Connection) -> None:
    """Wake a thread blocked reading ``conn`` (close() alone does not, on Linux)."""
    try:
        sock = socket.socket(fileno=conn.fileno())
    except (OSError, ValueError):
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.detach()


def unlimited(limits: GovernorLimits) -> bool:
    """No per-host cap and no rate: the governor is needed for pauses only."""
    return limits.concurrency <= 0 and limits.rate <= 0


_UNLEASED = 1 << 62  # lease ids from here up: granted in this process off the pause board


class RemoteGovernor:
    """The job's governor as seen from a worker process: the same calls, one connection per thread.

    With ``board`` (the server's :class:`PauseBoard` path) and limits that cap nothing, a request
    to a host the board shows unpaused is granted here, without a message; its outcome goes to
    the server only when it changes the host's state (a throttle, or an answer after strikes).
    """

    def __init__(
        self, address: str, key: str, fallback: GovernorLimits, share: int = 1, board: str | None = None
    ) -> None:
        self.address, self._key = address, bytes.fromhex(key)
        self._fallback_limits = _share_of(fallback, share)
        self._fallback: HostGovernor | None = None
        self._local = threading.local()
        self._conns: list[Connection] = []
        self._lock = threading.Lock()
        self._board = PauseBoard.open(board) if board and unlimited(fallback) else None
        self._unleased: dict[int, tuple[str, int, int]] = {}  # lease -> (host, epoch, strikes)
        self._unleased_ids = itertools.count(_UNLEASED)
        try:
            self._call(("ping",), reply=True)
        except _LOST as exc:
            self.close()
            raise GovernorUnavailable(f"host governor at {address} unreachable: {type(exc).__name__}: {exc}") from None

    def acquire(
        self, host: str, owner: int, hold: float, wait_max: float, unless_paused: bool = False
    ) -> int | Paused | None:
        """As :meth:`HostGovernor.acquire`; the server knows this thread's connection as ``owner``."""
        if self._board is not None and self._fallback is None:
            seen = self._board.read(host)
            if seen is not None and seen[0] <= time.monotonic():  # not paused: no need to ask
                lease = next(self._unleased_ids)
                self._unleased[lease] = (host, seen[1], seen[2])
                return lease
        if self._fallback is None:
            try:
                got = self._call(("acquire", host, hold, wait_max, unless_paused), reply=True)
                return Paused(float(got["paused"])) if isinstance(got, dict) else got
            except _LOST as exc:
                self._lose(exc)
        assert self._fallback is not None
        mine = self._fallback.acquire(host, owner, hold, wait_max, unless_paused)
        return mine if mine is None or isinstance(mine, Paused) else -mine  # negative: the fallback's lease

    def release(self, lease: int, outcome: int, retry_after: float | None = None) -> None:
        if lease >= _UNLEASED:
            self._report(lease, outcome, retry_after)
            return
        if lease < 0:
            if self._fallback is not None:
                self._fallback.release(-lease, outcome, retry_after)
            return
        if self._fallback is None:
            try:
                self._call(("release", lease, outcome, retry_after), reply=False)
            except _LOST as exc:
                self._lose(exc)

    def _report(self, lease: int, outcome: int, retry_after: float | None) -> None:
        """A board-granted request's outcome, sent only when it changes the host's state."""
        host, epoch, strikes = self._unleased.pop(lease, ("", 0, 0))
        if not host or not (outcome == THROTTLED or (outcome == ANSWERED and strikes)):
            return
        if self._fallback is None:
            try:
                self._call(("report", host, outcome, epoch, retry_after), reply=False)
                return
            except _LOST as exc:
                self._lose(exc)
        assert self._fallback is not None
        self._fallback.report(host, outcome, epoch, retry_after)

    def drop_owner(self, owner: int) -> int:
        """Nothing to do here: the server drops a connection's leases when it closes."""
        return 0

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        if self._board is not None:
            self._board.close()
            self._board = None

    def _call(self, msg: tuple, reply: bool) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = Client(*_listen_args(self.address), authkey=self._key)
            _no_delay(conn)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        conn.send_bytes(json.dumps(msg).encode())
        return _decode(conn.recv_bytes(_MAX_MESSAGE)) if reply else None

    def _lose(self, exc: BaseException) -> None:
        with self._lock:
            if self._fallback is None:
                log.warning(
                    "host governor at %s lost (%s: %s); this worker keeps its own per-host limits from now on",
                    self.address,
                    type(exc).__name__,
                    exc,
                )
                self._fallback = HostGovernor(self._fallback_limits)


def _share_of(limits: GovernorLimits, share: int) -> GovernorLimits:
    """One of ``share`` workers' part of the job-wide limits (at least one slot)."""
    share = max(1, share)
    conc = limits.concurrency if limits.concurrency <= 0 else max(1, limits.concurrency // share)
    return GovernorLimits(conc, limits.rate / share, limits.retry_after_max, limits.pause_base)
