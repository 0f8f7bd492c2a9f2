"""The trainer's data loader: dataset shards -> shuffled batches of crops + tokenised EXIF text.

One stream per *slot* (rank r, DataLoader worker role w; slot = r*W + w of S = world*W): tar
samples -> checks without decoding -> K crop boxes -> K items -> shuffle buffer -> batches of B
-> decode once per image, crop, normalise, render and tokenise the text.

**Which samples a slot reads.**  Epoch mode: the sorted ``*.tar`` list is shuffled by (seed,
epoch), alike on every rank.  With at least S shards slot s takes shards ``s, s+S, ...``; with
fewer, every slot walks every tar's headers (seeking past data) and keeps the samples whose
running index i has ``i % S == s``.  Resampled mode: each slot draws shards with replacement.

**Equal batch counts.**  Every rank yields exactly ``batches_per_epoch = samples*K // (B*world)``
batches (``samples`` from ``sizes.json``) whatever the shard sizes and skips.  Batch g comes
from role ``g % W``; each role makes its share and stops: with too few samples it starts
another pass over its shards (new shuffle and boxes: wrap), with surplus it leaves them (drop).

**Skipped samples** (missing member, bad JSON, no vocabulary tag, not an image, broken JPEG
structure, unsupported mode, smaller than the patch) are found from headers, before the
shuffle, and counted.  An image that passes those checks but fails the full decode keeps its
place — batch boundaries must not depend on decoding — and is replaced by a copy of the batch's
previous good item, or its first (counted as ``substituted``; rare: libjpeg-turbo decodes most
damage, truncated PNGs are the usual case).

**Where the shards are.**  ``data`` is a local folder or an fsspec URL (``s3://…``, ``gs://…``,
``file://…``; :mod:`exiflang.train.data.shard_store`): each tar is streamed through one seekable handle that
serves both its headers and its members, with bounded retries and a per-read timeout
(``read_attempts``, ``read_timeout``).  The batches are the same bytes for bytes either way.

**Exact resume.**  All randomness (shard order, shuffle, boxes, shuffled text) is seeded from
(seed, epoch, world, W, slot, pass, key) — so every rank and worker draws its own — and a
sample's fate and boxes are known before
decoding, so ``start_batch=N`` replays the bookkeeping up to batch N and decodes nothing it
throws away: a tar header, exif.json and image header per skipped sample, ~75x cheaper than a
decode.  Items still buffered at the resume point are decoded as they come out (re-read from
the tar by offset).  Same batch size, K, num_workers, world size and data required.

Memory per worker: the buffer holds crops (3*P*P bytes, 46 kB at P=124), never encoded images.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from exiflang.pipeline.exif.text import FORMATS
from exiflang.train.config import DataConfig
from exiflang.train.data.batch_text import batch_text
from exiflang.train.data.crops import crop_boxes, decode_crops, normalise
from exiflang.train.data.samples import (
    Location,
    SampleError,
    ShardError,
    ShardSet,
    check_sample,
    load_vocabulary,
    open_shards,
    read_groups,
    read_member,
)
from exiflang.train.data.shuffle import rank_seed, shuffled, stable_seed

log = logging.getLogger("exiflang.train.data.loader")
_LOGGED_SKIPS = 5  # per stream: the first few skips are warnings, the rest debug lines
_ERROR = "_data_error"  # key of the batch a worker sends instead of raising a DataError


class DataError(ValueError):
    """The shards cannot make a batch (no usable sample, no decodable image); one line naming
    the data folder, raised in the trainer's process even when a DataLoader worker found it."""


@dataclass(slots=True, eq=False)
class _Sample:
    """One checked image: where its bytes are, EXIF, boxes; then crops, text and token ids, made
    once and shared by its K items."""

    key: str
    path: str  # the tar's name in the shard set
    loc: Location
    exif: dict[str, str] | None
    seed: int
    boxes: list
    crops: list | None = None
    failed: bool = False
    text: str | None = None
    ids: list[int] | None = None


def _crop(sample: _Sample, j: int) -> Any:
    """Crop ``j`` of a sample that _collate decoded (failed ones were replaced by a decoded one)."""
    assert sample.crops is not None, sample.key
    return sample.crops[j]


class _SlotStream:
    """The item stream and batches of one slot (rank, worker role)."""

    def __init__(self, ds: _SlotDataset, role: int) -> None:
        self.ds, self.cfg, self.role = ds, ds.cfg, role
        self.n_slots = ds.world_size * ds.workers
        self.slot = ds.rank * ds.workers + role
        self.per_image = self.cfg.crops_per_image * (2 if self.cfg.cropclr else 1)
        self.counts: Counter = Counter()
        self.emitted = 0
        self.resume_items = 0

    def batches(self, first: int, end: int) -> Iterator[dict]:
        """This role's local batches ``first .. end-1``; those before ``first`` are replayed undecoded."""
        size = self.cfg.batch_size
        self.resume_items = first * size
        batch: list = []
        for item in self._items():
            self.emitted += 1
            if self.emitted <= self.resume_items:
                continue
            batch.append(item)
            if len(batch) == size:
                yield self._collate(batch)
                batch, first = [], first + 1
                if first == end:
                    return

    def _key(self, *parts: object) -> int:
        ds = self.ds
        return stable_seed(self.cfg.seed, ds.epoch, ds.world_size, ds.workers, self.slot, *parts)

    def _items(self) -> Iterator[tuple[_Sample, int]]:
        """(sample, crop index) in shuffled order: one endless shuffle when resampled, else one
        shuffle per pass (passes beyond 0 only when this slot must wrap)."""
        k, size = self.cfg.crops_per_image, self.cfg.shuffle_buffer
        for p in itertools.count():
            samples = self._resampled() if self.cfg.resampled else self._one_pass(p)
            rng, n = random.Random(self._key("shuffle", p)), 0
            items: Iterator[tuple[_Sample, int]]
            if self.cfg.group_crops:  # shuffle images, then emit each one's K crops in a row
                items = ((s, i) for s in shuffled(samples, max(1, size // k), rng) for i in range(k))
            else:
                items = shuffled(((s, i) for s in samples for i in range(k)), size, rng)
            for n, item in enumerate(items, 1):  # noqa: B007 -- `n` counts the pass, checked below
                yield item
            if n == 0:
                raise DataError(
                    f"{self.ds.shards.root}: no usable sample in the shards of rank "
                    f"{self.ds.rank} worker {self.role} ({self._skip_summary()})"
                )

    def _one_pass(self, p: int) -> Iterator[_Sample]:
        names = list(self.ds.shards.names)
        random.Random(stable_seed(self.cfg.seed, self.ds.epoch, "shards")).shuffle(names)
        if len(names) >= self.n_slots:
            for name in names[self.slot :: self.n_slots]:
                yield from self._shard(name, f"p{p}", lambda i: True)
            return
        index = itertools.count()  # running sample index over all shards: split by modulo
        for name in names:
            yield from self._shard(name, f"p{p}", lambda i: next(index) % self.n_slots == self.slot)

    def _resampled(self) -> Iterator[_Sample]:
        rng, names, empty = random.Random(self._key("resample")), self.ds.shards.names, 0
        for visit in itertools.count():
            got = False
            for sample in self._shard(rng.choice(names), f"v{visit}", lambda i: True):
                got = True
                yield sample
            empty = 0 if got else empty + 1
            if empty > 2 * len(names) + 8:
                raise DataError(
                    f"{self.ds.shards.root}: no usable sample in {empty} shard draws ({self._skip_summary()})"
                )

    def _shard(self, name: str, visit: str, keep: Callable[[int], bool]) -> Iterator[_Sample]:
        """Checked samples of one tar that ``keep(index)`` selects; a read failure ends the tar.

        One handle serves headers and members: a remote tar is then read front to back once."""
        path, seen = self.ds.shards.store.location(name), 0
        try:
            with self.ds.shards.store.open(name) as fh:
                for key, members in read_groups(fh):
                    seen += 1
                    if keep(seen - 1):
                        sample = self._check(fh, name, key, members, visit)
                        if sample is not None:
                            yield sample
        except (ShardError, OSError) as exc:
            self.counts["shard_errors"] += 1
            log.warning("%s: read failed after %d samples, rest of the tar skipped: %s", path, seen, exc)
            return
        expected = self.ds.shards.sizes[self.ds.shards.names.index(name)]
        if seen < expected:
            self.counts["shard_errors"] += 1
            log.warning("%s: %d samples, sizes.json says %d (truncated tar?)", path, seen, expected)

    def _check(self, fh: BinaryIO, name: str, key: str, members: dict[str, Location], visit: str) -> _Sample | None:
        """A sample ready for the shuffle, or None (skipped and counted).  Never decodes before
        the resume point; after it, decodes now so that only crops sit in the buffer."""
        cfg = self.cfg
        try:
            loc, exif, data, size = check_sample(fh, members, cfg.patch_size, None if cfg.cropclr else self.ds.vocab)
        except SampleError as exc:
            self._skip(name, key, exc)
            return None
        seed = self._key(visit, key)
        boxes = crop_boxes(size, cfg.patch_size, self.per_image, random.Random(seed))
        sample = _Sample(key, name, loc, exif, seed, boxes)
        if self.emitted >= self.resume_items:
            self._decode(sample, data)
        return sample

    def _decode(self, sample: _Sample, data: bytes | None = None) -> None:
        try:
            if data is None:  # lazily, for an item inserted before the resume point
                with self.ds.shards.store.open(sample.path, sequential=False) as fh:
                    data = read_member(fh, sample.loc)
            sample.crops = decode_crops(data, sample.boxes)
        except (SampleError, ShardError, OSError) as exc:
            sample.failed = True
            self._skip(
                sample.path, sample.key, exc if isinstance(exc, SampleError) else SampleError("decode_failed", str(exc))
            )

    def _skip(self, name: str, key: str, exc: SampleError) -> None:
        self.counts[f"skip:{exc.reason}"] += 1
        self.counts["skipped"] += 1
        (log.warning if self.counts["skipped"] <= _LOGGED_SKIPS else log.debug)(
            "%s: sample %s skipped: %s", name, key, exc
        )

    def _skip_summary(self) -> str:
        """``"skipped N: reason x n, ..."`` of this stream so far (why nothing was usable)."""
        reasons = sorted(((v, k[5:]) for k, v in self.counts.items() if k.startswith("skip:")), reverse=True)
        return f"skipped {self.counts['skipped']}: " + ", ".join(f"{r} x {n}" for n, r in reasons[:4])

    def _collate(self, items: list[tuple[_Sample, int]]) -> dict:
        for sample, _ in items:
            if sample.crops is None and not sample.failed:
                self._decode(sample)
        last = next((it for it in items if not it[0].failed), None)
        if last is None:
            raise DataError(
                f"{self.ds.shards.root}: rank {self.ds.rank} worker {self.role}: no "
                f"decodable image in a whole batch ({self._skip_summary()})"
            )
        picked = []
        for it in items:
            self.counts["substituted"] += it[0].failed
            last = last if it[0].failed else it
            picked.append(last)
        return self._tensors(picked)

    def _tensors(self, items: list[tuple[_Sample, int]]) -> dict:
        n = 2 if self.cfg.cropclr else 1
        out: dict[str, Any] = {
            "keys": [s.key for s, _ in items],
            "images": normalise([_crop(s, n * i) for s, i in items]),
        }
        if self.cfg.cropclr:
            out["images2"] = normalise([_crop(s, n * i + 1) for s, i in items])
        else:
            out.update(
                batch_text(
                    items,
                    self.ds.vocab,
                    self.ds.tokenizer,
                    fmt=self.cfg.text_format,
                    clean=self.cfg.clean_values,
                    max_len=self.cfg.max_text_len,
                )
            )
        out["_stats"] = {"role": self.role, **self.counts}
        return out


class _SlotDataset(IterableDataset):
    """What each DataLoader worker runs: worker j plays role ``(start_batch + j) % W``, so that
    the DataLoader's round-robin over workers yields the rank's batches in order from
    ``start_batch`` on."""

    def __init__(
        self,
        cfg: DataConfig,
        shards: ShardSet,
        vocab: tuple[str, ...],
        tokenizer: Any,
        rank: int,
        world_size: int,
        epoch: int,
        start_batch: int,
        total: int,
    ) -> None:
        self.cfg, self.shards, self.vocab, self.tokenizer = cfg, shards, vocab, tokenizer
        self.rank, self.world_size, self.epoch = rank, world_size, epoch
        self.start_batch, self.total, self.workers = start_batch, total, max(1, cfg.num_workers)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        j = info.id if info is not None else 0
        role = (self.start_batch + j) % self.workers
        first, end = (self.start_batch + j) // self.workers, len(range(role, self.total, self.workers))
        if first >= end:
            return
        try:
            yield from _SlotStream(self, role).batches(first, end)
        except DataError as exc:
            if info is None:
                raise
            # Raised in a DataLoader worker it would reach the trainer wrapped in the worker's
            # traceback: hand it over as a batch, and ExifLoader raises it in the main process.
            yield {_ERROR: str(exc)}


class ExifLoader:
    """Iterable of one epoch's batches for one rank, from ``start_batch`` on.

    Each batch: ``images`` float32 ``[B,3,P,P]`` CLIP-normalised (about [-1.79, 2.15]);
    ``keys`` list[str]; text mode: ``input_ids`` / ``attention_mask`` int64 ``[B,T]`` (T = longest
    in the batch, at most ``max_text_len``), ``text_ids`` int64 ``[B]`` (equal <=> same text),
    ``texts`` list[str]; CropCLR mode: ``images2`` ``[B,3,P,P]`` (a second crop of each image)
    instead of the text fields.
    """

    def __init__(self, dataset: _SlotDataset, batches_per_epoch: int) -> None:
        self._ds, self.cfg = dataset, dataset.cfg
        self.batches_per_epoch, self.start_batch = batches_per_epoch, dataset.start_batch
        self._by_role: dict[int, dict[str, int]] = {}
        self._yielded = 0

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[dict]:
        self._by_role, self._yielded = {}, 0
        workers = self.cfg.num_workers
        # Its own generator: a DataLoader otherwise draws its workers' base seed from the global
        # torch RNG, which would shift the model's dropout draws between a resumed run and an
        # uninterrupted one (where the draw happened at another step).  Seeded by rank too, so
        # that workers of different ranks never share a stream (rank 0's seed is as before).
        seed = stable_seed(rank_seed(self.cfg.seed, self._ds.rank), self._ds.epoch) >> 1
        source: Iterable[dict] = (
            self._ds
            if workers == 0
            else DataLoader(
                self._ds,
                batch_size=None,
                num_workers=workers,
                pin_memory=torch.cuda.is_available(),
                generator=torch.Generator().manual_seed(seed),
            )
        )
        for batch in source:
            if _ERROR in batch:
                raise DataError(batch[_ERROR])
            stats = batch.pop("_stats")
            self._by_role[stats.pop("role")] = stats
            self._yielded += 1
            yield batch
        if self._yielded != len(self):  # unequal counts would hang DDP: fail loudly instead
            raise RuntimeError(f"rank {self._ds.rank}: {self._yielded} batches, expected {len(self)}")

    @property
    def skipped(self) -> int:
        return self.stats()["skipped"]

    def stats(self) -> dict[str, Any]:
        """Counts this iteration so far: ``skipped`` samples (``reasons``), ``shard_errors``,
        ``substituted`` items, ``batches`` yielded.  Fast-forwarded samples are included."""
        total: Counter = Counter()
        for counts in self._by_role.values():
            total.update(counts)
        return {
            "skipped": total["skipped"],
            "batches": self._yielded,
            "shard_errors": total["shard_errors"],
            "substituted": total["substituted"],
            "reasons": {k[5:]: v for k, v in total.items() if k.startswith("skip:")},
        }


def build_loader(
    cfg: DataConfig, tokenizer: Any, *, rank: int = 0, world_size: int = 1, epoch: int = 0, start_batch: int = 0
) -> ExifLoader:
    """The loader of one rank for one epoch, resuming at ``start_batch`` (see the module docstring).

    ``tokenizer``: a Hugging Face tokenizer (unused, may be None, with ``cfg.cropclr``).
    """
    if cfg.text_format not in FORMATS:
        raise ValueError(f"data.text_format {cfg.text_format!r}: choose from {', '.join(FORMATS)}")
    for name in ("batch_size", "patch_size", "crops_per_image", "max_text_len"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"data.{name} must be >= 1, not {getattr(cfg, name)}")
    if not 0 <= rank < world_size or cfg.num_workers < 0 or start_batch < 0:
        raise ValueError(
            f"bad rank {rank} / world_size {world_size} / num_workers {cfg.num_workers} / start_batch {start_batch}"
        )
    if tokenizer is None and not cfg.cropclr:
        raise ValueError("a tokenizer is required unless data.cropclr is set")
    shards = open_shards(cfg.data, cfg.read_policy(), cfg.storage_options)
    vocab = (
        ()
        if cfg.cropclr
        else tuple(cfg.tags)
        if cfg.tags
        else load_vocabulary(
            cfg.tags_file or shards.store.location("tags.json"), shards.store.policy, cfg.storage_options
        )
    )
    samples = sum(shards.sizes)
    total = samples * cfg.crops_per_image // (cfg.batch_size * world_size)
    if total == 0:
        raise ValueError(
            f"{shards.root}: {samples} samples x {cfg.crops_per_image} crops is less "
            f"than one global batch ({cfg.batch_size} x {world_size} ranks)"
        )
    if start_batch > total:
        raise ValueError(f"start_batch {start_batch} is past the epoch's {total} batches")
    if cfg.shuffle_buffer < cfg.crops_per_image * cfg.batch_size:
        log.info(
            "shuffle_buffer %d < crops_per_image x batch_size: crops of one image will often share a batch",
            cfg.shuffle_buffer,
        )
    # Workers are forked after the tokenizer may have run here; its thread pool does not survive.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ds = _SlotDataset(cfg, shards, vocab, tokenizer, rank, world_size, epoch, start_batch, total)
    return ExifLoader(ds, total)
