"""The ranks of a torchrun ``exiflang embed``: join the job, split the parts among ranks, follow rank 0's decisions.

    torchrun --nproc_per_node N -m exiflang embed --model M --data SHARDS --out EMB ...

Outside torchrun (``WORLD_SIZE`` unset or 1) every function here is the one-process no-op.
Under it, rank 0 alone checks and prepares the output folder and lists the parts still to do
(:func:`decide` hands its answer, or its error, to every rank); :func:`assign` gives each rank
a share balanced by sample count, the same on every rank; each rank writes its parts exactly as
one process would (a part's bytes depend only on that part); :func:`wait_all` holds every rank
until all parts are written, then rank 0 writes the finished ``meta.json``.

The waits use their own gloo group with a long timeout: ranks wait at the end for the slowest
rank's whole share, which on a large set is far longer than torch's 30-minute default.  A rank
that dies makes torchrun stop the others, so nothing waits forever.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch.distributed as dist

from exiflang.train.distributed import DistEnv, init_distributed, shutdown

T = TypeVar("T")
WAIT = timedelta(days=7)


@dataclass
class Ranks:
    """This process's place in the embedding job; ``device``: the device its model runs on."""

    env: DistEnv
    device: str
    group: Any | None = None  # the gloo group the waits use (None alone)

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.is_main


def world_size() -> int:
    """How many ranks torchrun started (1 outside torchrun)."""
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def join(device: str) -> Ranks:
    """Join torchrun's job, if any.  Alone, ``device`` is kept as given; under torchrun, ``auto``
    and ``cuda`` become this rank's own GPU (``cuda:LOCAL_RANK``) and ``cpu`` stays the CPU."""
    if world_size() == 1:
        return Ranks(DistEnv(), device)
    env = init_distributed("cpu" if device == "cpu" else ("auto" if device == "auto" else "cuda"))
    return Ranks(env, str(env.device), dist.new_group(backend="gloo", timeout=WAIT))


def decide(ranks: Ranks, fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 only; every rank returns its result or raises its exception."""
    result: Any = None
    error: BaseException | None = None
    if ranks.is_main:
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - handed to every rank, which all end with the same one-line error
            error = exc
    if ranks.world > 1:
        box = [(result, error)]
        dist.broadcast_object_list(box, src=0, group=ranks.group)
        result, error = box[0]
    if error is not None:
        raise error
    return result


def assign(sizes: Sequence[int], world: int) -> list[int]:
    """The rank of each part: largest first, each to the least-loaded rank (ties: the lower rank).

    Deterministic (every rank computes the same answer) and balanced by sample count, so a rerun
    that has only a few parts left still spreads them over every rank.
    """
    load = [0] * max(1, world)
    owner = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(len(load)), key=lambda r: (load[r], r))
        owner[i] = rank
        load[rank] += max(1, int(sizes[i]))  # an empty part still costs a file write
    return owner


def wait_all(ranks: Ranks) -> None:
    """Block until every rank gets here (no-op alone)."""
    if ranks.world > 1:
        dist.barrier(group=ranks.group)


def leave(ranks: Ranks) -> None:
    """Leave the job's process group after a successful run (no-op alone)."""
    shutdown(ranks.env)
