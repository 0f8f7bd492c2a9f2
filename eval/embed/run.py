"""Embed every sample of a shards folder (or a plain photo folder) with a trained model, resumably.

The engine of ``exiflang embed`` (the command line, the output and the resume rules:
:mod:`exiflang.eval.embed.command`): :func:`embed_shards` runs one :class:`EmbedConfig`
(:mod:`exiflang.eval.embed.settings`) over a data folder into an embeddings folder
(:mod:`exiflang.eval.embed.store`), one part at a time (:mod:`exiflang.eval.embed.shard`), and under
torchrun each rank its share of the parts (:mod:`exiflang.eval.embed.distributed`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exiflang.eval.embed.distributed import Ranks, assign, decide, join, leave, wait_all, world_size
from exiflang.eval.embed.folder import chunk, list_photos, listing_hash, load_photo, photo_samples
from exiflang.eval.embed.settings import EmbedConfig
from exiflang.eval.embed.shard import Context, embed_samples, embed_shard
from exiflang.eval.embed.store import (
    FORMAT,
    FORMAT_VERSION,
    atomic_write_json,
    model_signature,
    part_paths,
    read_json,
    read_meta,
    tags_summary,
)
from exiflang.train.data.samples import open_shards

log = logging.getLogger("exiflang.eval")
# The settings that change the vectors or the rows; a rerun must match them all.
COMPARED = (
    "model_signature",
    "data",
    "patch",
    "per_side",
    "mode",
    "text",
    "text_format",
    "clean_values",
    "max_text_len",
    "limit",
)


def run_config(model_dir: Path) -> dict:
    """The ``data`` section of the training run's ``config.yaml`` next to a model folder, if any.

    ``RUN/model`` and ``RUN/checkpoints/step-N`` both find ``RUN/config.yaml``; ``{}`` otherwise.
    """
    import yaml

    for cand in (model_dir.parent / "config.yaml", model_dir.parent.parent / "config.yaml"):
        if cand.is_file():
            try:
                doc = yaml.safe_load(cand.read_text())
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(doc, dict) and isinstance(doc.get("data"), dict) and "model" in doc:
                return doc["data"]
    return {}


EXTRA = ("source", "per_part", "listing")  # folder mode only: absent from a shard run's settings


@dataclass
class Part:
    """One unit of work and of output (the files ``parts/STEM.*``): a tar shard or a chunk of a photo folder."""

    stem: str
    size: int  # samples: the shard's sizes.json count, or the chunk's photos
    tar: Path | None = None  # shard mode
    files: tuple[str, ...] = ()  # folder mode: absolute photo paths, in order


def list_parts(data: Path, images: bool, per_part: int) -> tuple[list[Part], dict]:
    """``data``'s parts in output order, and the settings folder mode adds (``{}`` for shards)."""
    if not images:
        shards = open_shards(str(data))
        return [Part(Path(n).stem, size, tar=Path(shards.root) / n) for n, size in zip(shards.names, shards.sizes)], {}
    if per_part < 1:
        raise ValueError(f"--per-part {per_part}: must be at least 1")
    files = list_photos(data)
    parts = [Part(stem, len(chunk_files), files=tuple(chunk_files)) for stem, chunk_files in chunk(files, per_part)]
    return parts, {"source": "images", "per_part": per_part, "listing": listing_hash(data, files)}


def _settings(model_dir: Path, data: Path, config: EmbedConfig, extra: dict) -> dict:
    """The compared settings (see ``COMPARED``, ``EXTRA``) plus their key."""
    text = config.text
    cfg = run_config(model_dir) if text else {}
    s = {
        "model_signature": model_signature(model_dir),
        "data": str(data.resolve()),
        "patch": config.patch,
        "per_side": 1 if config.mode == "single" else config.per_side,
        "mode": config.mode,
        "text": text,
        "text_format": (config.text_format or cfg.get("text_format") or "paper") if text else None,
        "clean_values": bool(cfg.get("clean_values", False)) if text else None,
        "max_text_len": cfg.get("max_text_len") if text else None,
        "limit": config.limit,
        **extra,
    }
    s["settings_key"] = hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:16]
    return s


def _prepare_out(out: Path, settings: dict) -> dict | None:
    """Check ``out`` can take this run; returns its existing ``meta.json`` (or ``None`` when new)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    if not (out / "meta.json").exists():
        if out.is_dir() and any(out.iterdir()):
            raise ValueError(f"{out}: not empty and not an embeddings folder (no meta.json); refusing to write into it")
        return None
    meta = read_meta(out)
    if meta.get("settings_key") != settings["settings_key"]:
        diff = [k for k in COMPARED + EXTRA if meta.get(k) != settings.get(k)]
        raise ValueError(
            f"{out / 'meta.json'}: this folder was embedded with other settings "
            f"(differs in: {', '.join(diff) or 'settings key'}); use a new --out folder"
        )
    return meta


def _tags_of(path: Path) -> dict | None:
    return tags_summary(read_json(path, "vocabulary")) if path.is_file() else None


def _check_args(config: EmbedConfig) -> None:
    """One-line ``ValueError`` for option values no run can use."""
    from exiflang.eval.embed.batch import MODES
    from exiflang.eval.embed.patches import resolve_device
    from exiflang.pipeline.exif.text import FORMATS

    mode, patch, per_side, limit = config.mode, config.patch, config.per_side, config.limit
    text_format, device = config.text_format, config.device
    if mode not in MODES or patch <= 0 or per_side <= 0 or (limit is not None and limit < 0):
        raise ValueError(
            f"bad grid: mode {mode!r} (expected {MODES}), patch {patch}, per_side {per_side}, limit {limit}"
        )
    if config.text and text_format is not None and text_format not in FORMATS:
        raise ValueError(f"text format {text_format!r}: expected one of {', '.join(FORMATS)}")
    if limit is not None and world_size() > 1:
        # A rank cannot know how many samples the parts before its own will read.
        raise ValueError(f"--limit {limit}: not available under torchrun ({world_size()} ranks); run one process")
    try:
        resolve_device(device)
    except RuntimeError as exc:
        raise ValueError(f"device {device!r}: {' '.join(str(exc).split())}") from None


def _start(model_dir: Path, data: Path, out: Path, settings: dict, parts: list[Part]) -> tuple[dict, list[str]]:
    """Rank 0's opening: check ``out``, write the unfinished ``meta.json``; returns it and the
    stems of the parts not yet done (in output order)."""
    old = _prepare_out(out, settings)
    meta = {
        **(old or {}),
        **settings,
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": str(model_dir.resolve()),
        "dim": int(settings["model_signature"]["embed_dim"]),
        "model_tags": _tags_of(model_dir / "tags.json"),
        "data_tags": _tags_of(data / "tags.json"),
        "complete": False,
        "shards": [p.stem for p in parts],
        "created": (old or {}).get("created", time.time()),
    }
    (out / "parts").mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "meta.json", meta)
    return meta, [p.stem for p in parts if not part_paths(out, p.stem)["done"].is_file()]


def embed_shards(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    config: EmbedConfig | None = None,
    **overrides: Any,
) -> Path:
    """Embed the samples of the shards in ``data`` with the model in ``model_dir`` into ``out``.

    ``config`` (default :class:`EmbedConfig`'s defaults), with ``overrides`` (field name ->
    value) applied: ``mode`` ``grid`` (``per_side**2`` patches of ``patch`` px, mean
    re-normalised) or ``single`` (the centre patch); ``limit``: at most this many samples in all
    (sorted shards, tar order; one process only); ``images``: ``data`` is a plain folder of
    photos, embedded ``per_part`` photos a part (:mod:`exiflang.eval.embed.folder`).  Under torchrun
    each rank embeds its share of the parts and the output is the one-process output
    (:mod:`exiflang.eval.embed.distributed`).  Returns ``out``.  One-line ``ValueError``/``FileNotFoundError``
    for bad input.
    """
    config = (config or EmbedConfig()).replace(**overrides)
    _check_args(config)
    model_dir, data, out = Path(model_dir), Path(data), Path(out)
    parts, extra = list_parts(data, config.images, config.per_part)
    settings = _settings(model_dir, data, config, extra)
    ranks = join(config.device)
    meta, todo = decide(ranks, lambda: _start(model_dir, data, out, settings, parts))
    if ranks.world > 1:
        pending = set(todo)
        left = [p for p in parts if p.stem in pending]
        owner = assign([p.size for p in left], ranks.world)
        parts = [p for p, r in zip(left, owner) if r == ranks.rank]
    stats = _embed_parts(model_dir, data, out, parts, settings, ranks, config)
    wait_all(ranks)  # every rank's parts are on disk
    if ranks.is_main:
        if ranks.world > 1:
            stats = [read_json(part_paths(out, stem)["done"], "part stats") for stem in meta["shards"]]
        meta.update(
            complete=True,
            shards=[s["shard"].rsplit(".", 1)[0] for s in stats],
            counts=_totals(stats),
            finished=time.time(),
        )
        atomic_write_json(out / "meta.json", meta)
    wait_all(ranks)  # nobody returns (and reads meta.json) before it is finished
    leave(ranks)
    return out


def _embed_parts(
    model_dir: Path,
    data: Path,
    out: Path,
    parts: list[Part],
    settings: dict,
    ranks: Ranks,
    config: EmbedConfig,
) -> list[dict]:
    """Load the model and embed ``parts`` (this rank's; all of them alone); their ``done.json`` stats."""
    import torch
    from tqdm import tqdm

    from exiflang.eval.embed.batch import PhotoEncoder, TextEncoder
    from exiflang.eval.embed.patches import PatchEmbedder
    from exiflang.train.model import ExifClip

    batch_size, limit = config.batch_size, config.limit
    model, tokenizer, tags = ExifClip.from_pretrained(model_dir)
    embedder = PatchEmbedder(model, device=ranks.device, batch_size=batch_size)
    texts = None
    if settings["text"]:
        if not tags or not tags.get("tags"):
            raise ValueError(f"{model_dir / 'tags.json'}: missing: --text needs the model's vocabulary")
        texts = TextEncoder(
            embedder.model,
            tokenizer,
            tags["tags"],
            settings["text_format"],
            clean=bool(settings["clean_values"]),
            max_length=settings["max_text_len"],
            device=embedder.device,
            batch_size=min(batch_size, 64),
        )
    total = sum(p.size for p in parts) if limit is None else min(limit, sum(p.size for p in parts))
    # One bar, rank 0's: several ranks drawing on one terminal garble each other.
    with tqdm(total=total, unit="photo", desc="embed", disable=not config.progress or not ranks.is_main) as bar:
        ctx = Context(
            PhotoEncoder(embedder, settings["patch"], settings["per_side"], settings["mode"]),
            texts,
            settings["settings_key"],
            max(1, config.workers),
            bar,
            str(embedder.device),
        )
        with torch.inference_mode():
            return _run_shards(data, parts, out, ctx, limit)


def _run_shards(data: Path, parts: list[Part], out: Path, ctx: Context, limit: int | None) -> list[dict]:
    """Embed (or skip, when done) each part in order; ``done.json`` stats per part."""
    stats: list[dict] = []
    read = 0
    for part in parts:
        if limit is not None and read >= limit:
            break
        paths = part_paths(out, part.stem)
        if paths["done"].is_file():
            done = read_json(paths["done"], "shard stats")
            ctx.bar.update(min(part.size, (limit - read) if limit is not None else part.size))
        else:
            for stale in paths["done"].parent.glob(f".{part.stem}.*"):
                stale.unlink()  # temporaries of an interrupted attempt
            budget = None if limit is None else limit - read
            if part.tar is not None:
                done = embed_shard(part.tar, paths, ctx, budget)
            else:
                done = embed_samples(photo_samples(data, part.files), part.stem, paths, ctx, budget, load_photo)
            atomic_write_json(paths["done"], done)
            log.info(
                "%s: %d rows, %d skipped, %.1f s (%.1f photos/s)",
                done["shard"],
                done["rows"],
                sum(done["skipped"].values()),
                done["seconds"],
                done["photos_per_s"],
            )
        read += int(done["samples_read"])
        stats.append(done)
    return stats


def _totals(stats: list[dict]) -> dict:
    skipped: dict[str, int] = {}
    for s in stats:
        for reason, n in s["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + int(n)
    return {
        "rows": sum(int(s["rows"]) for s in stats),
        "samples_read": sum(int(s["samples_read"]) for s in stats),
        "skipped": skipped,
        "shards": len(stats),
        "parts": {s["shard"]: int(s["rows"]) for s in stats},
    }
