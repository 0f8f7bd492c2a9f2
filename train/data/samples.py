"""The dataset, one sample at a time, without decoding: folder checks, tar members, header checks.

- :func:`open_shards` / :func:`load_vocabulary` check the dataset (tars, ``sizes.json``,
  ``tags.json`` and its hash) with one-line errors naming the file; the dataset is a local
  folder or a URL (:mod:`exiflang.train.data.shard_store`);
- :func:`read_groups` / :func:`read_member` walk a tar's headers and read members by offset
  (the loader can re-read an image later without holding its bytes);
- :func:`check_sample` / :func:`probe_image` look at members, ``exif.json`` and the image header
  only (for JPEG also the marker segments): microseconds.  They reject what they can see: a
  missing member, bad JSON, not an image, what the pipeline's image policy refuses (too large,
  implausible size, unsupported mode), a structurally broken JPEG, a side shorter than the patch.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from exiflang.pipeline.image_policy import ImagePolicy, PolicyError, default_policy
from exiflang.pipeline.shards.jpeg_check import jpeg_problem
from exiflang.pipeline.shards.tags import vocabulary_hash
from exiflang.train.data.shard_store import ReadPolicy, ShardStore, is_url, read_file, store_for

# Member extensions that hold the image, in the order a sample's members are searched.
IMAGE_EXTS = ("jpg", "jpeg", "png", "tif", "tiff", "webp")

Location = tuple[int, int]  # (byte offset, size) of a member's data inside its tar


class SampleError(Exception):
    """A sample the loader must skip; ``reason`` is a short counter name (e.g. ``too_small``)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class ShardSet:
    """A checked dataset: its location (a Path, or a URL str), tar names (sorted), their sample
    counts (``sizes.json``) and the store that reads them."""

    root: Path | str
    names: tuple[str, ...]
    sizes: tuple[int, ...]
    store: ShardStore = field(default=None, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.store is None:
            object.__setattr__(self, "store", store_for(self.root))


def _read_json(path: Path | str, policy: ReadPolicy | None = None, storage_options: dict | None = None) -> Any:
    """A JSON file given as a local path or a URL; one-line errors naming it."""
    if not is_url(path) and not Path(path).is_file():
        raise FileNotFoundError(f"{path}: missing")
    raw = read_file(path, policy, storage_options)
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def open_shards(data: str, policy: ReadPolicy | None = None, storage_options: dict | None = None) -> ShardSet:
    """Check a dataset folder or URL; one-line ``FileNotFoundError`` / ``ValueError`` / ``OSError``
    naming the file."""
    if not data:
        raise FileNotFoundError(f"{Path(data)}: data folder not found")
    store = store_for(data, policy, storage_options)
    names = tuple(store.tar_names())
    if not names:
        raise FileNotFoundError(f"{store.root}: no *.tar shards (build them with `exiflang shards`)")
    sizes_path = store.location("sizes.json")
    sizes = _read_json(sizes_path, store.policy, store.storage_options)
    missing = [n for n in names if not isinstance(sizes, dict) or n not in sizes]
    if missing:
        raise ValueError(f"{sizes_path}: no entry for {missing[0]} ({len(missing)} tars unlisted)")
    return ShardSet(store.root, names, tuple(int(sizes[n]) for n in names), store)


def load_vocabulary(
    path: Path | str, policy: ReadPolicy | None = None, storage_options: dict | None = None
) -> tuple[str, ...]:
    """``tags.json``'s tag list (a local path or a URL), checked against its hash."""
    doc = _read_json(path, policy, storage_options)
    tags = doc.get("tags") if isinstance(doc, dict) else None
    if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags):
        raise ValueError(f"{path}: no non-empty 'tags' list")
    if doc.get("hash") != vocabulary_hash(tags):
        raise ValueError(
            f"{path}: hash {doc.get('hash')!r} does not match its tag list (re-select with `exiflang select-tags`)"
        )
    return tuple(tags)


class ShardError(Exception):
    """A tar that cannot be read any further."""


def _open_tar(source: Path | BinaryIO) -> tarfile.TarFile:
    """The tar at a path, or in an open seekable binary file, opened for streamed reading."""
    if isinstance(source, (str, Path)):
        return tarfile.open(source, "r:")
    return tarfile.open(fileobj=source, mode="r:")


def read_groups(source: Path | BinaryIO) -> Iterator[tuple[str, dict[str, Location]]]:
    """A tar's samples in order: key and ``{ext: (offset, size)}``; reads headers, seeks past data.

    ``source``: a path, or an open seekable binary file (local or remote) that the caller may
    also read members from between samples (``tarfile`` seeks back to its next header).
    """
    try:
        with _open_tar(source) as tar:
            key: str | None = None
            members: dict[str, Location] = {}
            while (info := tar.next()) is not None:
                # TarFile keeps every header otherwise (its `members` list, missing from typeshed):
                # flat memory on big tars.
                tar.members.clear()  # type: ignore[attr-defined]
                folder, _, name = info.name.rpartition("/")
                stem, dot, ext = name.partition(".")
                if not info.isreg() or not dot:
                    continue
                base = f"{folder}/{stem}" if folder else stem
                if base != key:
                    if key is not None:
                        yield key, members
                    key, members = base, {}
                members[ext.lower()] = (info.offset_data, info.size)
            if key is not None:
                yield key, members
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ShardError(str(exc)) from None


def read_member(fh: BinaryIO, loc: Location) -> bytes:
    fh.seek(loc[0])
    data = fh.read(loc[1])
    if len(data) != loc[1]:
        raise ShardError(f"member at byte {loc[0]} truncated ({len(data)} of {loc[1]} bytes)")
    return data


def parse_exif(raw: bytes) -> dict[str, str]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SampleError("bad_json", str(exc)) from None
    if not isinstance(doc, dict):
        raise SampleError("bad_json", "exif.json is not an object")
    return {str(k): str(v) for k, v in doc.items()}


Checked = tuple[Location, dict[str, str] | None, bytes, tuple[int, int]]


def check_sample(fh: BinaryIO, members: dict[str, Location], patch: int, vocab: Sequence[str] | None) -> Checked:
    """Everything about one sample short of decoding it: ``(image location, exif, image bytes, size)``.

    ``vocab=None`` (CropCLR) needs no ``exif.json``; otherwise at least one vocabulary tag must be
    present.  Raises :class:`SampleError` for a bad sample, :class:`ShardError` for a short read.
    """
    ext = next((e for e in IMAGE_EXTS if e in members), None)
    if ext is None:
        raise SampleError("missing_image")
    exif = None
    if vocab is not None:
        if "exif.json" not in members:
            raise SampleError("missing_exif")
        exif = parse_exif(read_member(fh, members["exif.json"]))
        if not any(tag in exif for tag in vocab):
            raise SampleError("no_vocab_tags")
    data = read_member(fh, members[ext])
    return members[ext], exif, data, probe_image(data, patch)


def probe_image(data: bytes, patch: int, policy: ImagePolicy | None = None) -> tuple[int, int]:
    """Header-only check of one image; returns its ``(width, height)``.

    Raises :class:`SampleError` with reason ``not_an_image``, ``too_large`` / ``implausible_size`` /
    ``unsupported_mode`` (the pipeline's image policy, :mod:`exiflang.pipeline.image_policy`),
    ``corrupt_image`` (JPEG structure) or ``too_small`` (a side below ``patch``).
    """
    policy = policy or default_policy()
    try:
        img = policy.open(data)
    except PolicyError as exc:
        raise SampleError(exc.status, exc.reason) from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types (OSError, SyntaxError, ValueError...)
        raise SampleError("not_an_image", str(exc)) from None
    with img:
        fmt, size = img.format, img.size
    if fmt == "JPEG":
        problem = jpeg_problem(data)
        if problem:
            raise SampleError("corrupt_image", problem)
    if min(size) < patch:
        raise SampleError("too_small", f"{size[0]}x{size[1]} < {patch}")
    return size
