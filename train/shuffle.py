"""The loader's randomness: process-stable seeds from any parts, and the buffered shuffle."""
from __future__ import annotations

import hashlib
import random
from typing import Any, Iterable, Iterator


def stable_seed(*parts: object) -> int:
    """A stable 64-bit seed (Python's ``hash`` is salted per process)."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


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
