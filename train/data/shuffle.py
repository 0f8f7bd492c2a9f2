"""The run's randomness: process-stable seeds from any parts, each rank's seed, and the buffered shuffle."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator
from typing import Any


def stable_seed(*parts: object) -> int:
    """A stable 64-bit seed (Python's ``hash`` is salted per process)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def rank_seed(seed: int, rank: int) -> int:
    """The seed of ``rank``'s own streams (dropout, DataLoader workers), in ``[0, 2**32)``.

    Rank 0 keeps the run's seed itself, so a one-process run draws exactly what it drew before
    ranks had seeds of their own; every other rank derives a distinct one from (seed, rank).
    """
    if rank == 0:
        return seed
    return stable_seed(seed, "rank", rank) % (1 << 32)


def shuffled(items: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Buffered shuffle: once ``size`` items are held, each new one releases a random held one."""
    buf: list[Any] = []
    for item in items:
        buf.append(item)
        if len(buf) >= max(1, size):
            j = rng.randrange(len(buf))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf
