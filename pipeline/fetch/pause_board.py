"""Host pauses in a memory-mapped file: the job's governor writes them, worker processes on its machine read them.

When a job sets no per-host cap and no rate (``--per-host-concurrency 0 --per-host-rate 0``)
the governor has one job left, the pauses after a 429/503; asking it over its socket before
every request then costs more CPU than the pause check is worth (~0.1-0.2 ms a photo:
two messages, a thread wake-up on each side).  So the governor *publishes* each host's pause
here and a worker of the local pool reads it from shared pages, with no round trip, and
talks to the governor only to report a throttle (or an answer that ends a run of strikes).
Ray workers may run on other machines and keep asking over the socket.

Layout: ``SLOTS`` records of 24 bytes, a host's slot chosen by CRC-32 of its name.  A record
holds a second hash of the name (``tag``), the host's pause epoch and strike count, and the
``time.monotonic()`` its pause ends (CLOCK_MONOTONIC: one clock for every process of the
machine).  An all-zero record is a host never throttled.  A record with another host's tag (two
hosts in one slot, the later writer won) says nothing about this host: the reader asks the
governor, which always knows.  One writer (the governor, under its lock); a reader racing a
write may see it half done and let one request through as the pause begins, the same race as
a request already in flight.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from pathlib import Path

SLOTS = 1 << 16
_RECORD = struct.Struct("<III4xd")  # tag, epoch, strikes, (pad), paused_until
SIZE = SLOTS * _RECORD.size  # 1.5 MiB

# What a read says about a host: (paused until, epoch, strikes), or None (ask the governor).
Seen = tuple[float, int, int] | None


def _place(host: str) -> tuple[int, int]:
    """(byte offset of the host's record, its tag): two independent hashes of the name; a tag is never 0."""
    raw = host.encode("utf-8", "surrogatepass")
    return (zlib.crc32(raw) & (SLOTS - 1)) * _RECORD.size, zlib.adler32(raw) | 1


class PauseBoard:
    """One job's board: :meth:`create` by the governor's process, :meth:`open` read-only by workers."""

    def __init__(self, path: Path, writable: bool) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            self._map = mmap.mmap(fd, SIZE, access=access)
        finally:
            os.close(fd)

    @classmethod
    def create(cls, path: Path) -> PauseBoard:
        """A new, empty board at ``path`` (a file in a folder only this user can reach)."""
        with open(path, "wb") as fh:
            fh.truncate(SIZE)
        return cls(path, writable=True)

    @classmethod
    def open(cls, path: str | Path) -> PauseBoard:
        return cls(Path(path), writable=False)

    def read(self, host: str) -> Seen:
        """``(paused_until, epoch, strikes)`` of ``host``, or None when its slot holds another host."""
        offset, tag = _place(host)
        seen_tag, epoch, strikes, until = _RECORD.unpack_from(self._map, offset)
        if seen_tag == 0:
            return 0.0, 0, 0
        return (until, epoch, strikes) if seen_tag == tag else None

    def write(self, host: str, paused_until: float, epoch: int, strikes: int) -> None:
        """Publish ``host``'s state (the governor's ``on_change``)."""
        offset, tag = _place(host)
        _RECORD.pack_into(self._map, offset, tag, epoch & 0xFFFFFFFF, min(strikes, 0xFFFFFFFF), paused_until)

    def close(self) -> None:
        self._map.close()
