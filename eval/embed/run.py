"""`exiflang embed`: embed every sample of a shards folder (or a plain photo folder) with a trained model, resumably.

    exiflang embed --model MODEL_DIR (--data SHARDS | --images FOLDER [--per-part 500]) --out EMB
                   [--per-side 4] [--single-patch] [--patch-size 124] [--text] [--text-format F]
                   [--device auto] [--batch-size 256] [--workers 2] [--limit N] [--no-progress]
    torchrun --nproc_per_node N -m exiflang embed ...      (the same output, N ranks; no --limit)

``--images``: the photos under FOLDER, without building shards (:mod:`exiflang.eval.embed.folder`);
rows are keyed by the path below FOLDER.  Under torchrun each rank embeds its share of the parts
and rank 0 finishes ``meta.json`` (:mod:`exiflang.eval.embed.distributed`); the parts are the bytes one process
writes, because batches never span two parts.

Image side: per photo, the mean of the L2-normalised embeddings of a ``per_side x per_side``
grid of full-resolution patches spread evenly over the photo, re-normalised (``--single-patch``:
the centre patch alone).  Text side (``--text``): the photo's EXIF rendered as the model was
trained (``data.text_format`` / ``clean_values`` / ``max_text_len`` from the run's
``config.yaml`` beside the model folder when there is one; ``--text-format`` overrides) through
the text tower.  Output: :mod:`exiflang.eval.embed.store`; one shard: :mod:`exiflang.eval.embed.shard`.

Resume: parts (shards) whose ``done.json`` exists are skipped, the rest redone from scratch,
whatever the number of ranks, and rows come back in sorted-shard, tar order either way.
Rerunning into an ``EMB`` made with another model (weights, dimension or vocabulary), grid, text
setting, data folder (photo listing, ``--per-part``) or ``--limit`` is a one-line error.  The data
folder's ``tags.json`` may differ from the model's (a test set keeps its own vocabulary); both are
recorded in ``meta.json``.

Exit status: 0 done; 2 bad input or usage, an unusable model or output folder (one line on
stderr, ``exiflang embed: error: FILE: reason``; :mod:`exiflang.errors`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from exiflang.errors import check_out_dir, run_main
from exiflang.eval.embed.distributed import Ranks, assign, decide, join, leave, wait_all, world_size
from exiflang.eval.embed.folder import PER_PART, chunk, list_photos, listing_hash, load_photo, photo_samples
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


def _settings(
    model_dir: Path,
    data: Path,
    patch: int,
    per_side: int,
    mode: str,
    text: bool,
    text_format: str | None,
    limit: int | None,
    extra: dict,
) -> dict:
    """The compared settings (see ``COMPARED``, ``EXTRA``) plus their key."""
    cfg = run_config(model_dir) if text else {}
    s = {
        "model_signature": model_signature(model_dir),
        "data": str(data.resolve()),
        "patch": patch,
        "per_side": 1 if mode == "single" else per_side,
        "mode": mode,
        "text": text,
        "text_format": (text_format or cfg.get("text_format") or "paper") if text else None,
        "clean_values": bool(cfg.get("clean_values", False)) if text else None,
        "max_text_len": cfg.get("max_text_len") if text else None,
        "limit": limit,
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


def _check_args(
    mode: str, patch: int, per_side: int, limit: int | None, text: bool, text_format: str | None, device: str
) -> None:
    """One-line ``ValueError`` for option values no run can use."""
    from exiflang.eval.embed.batch import MODES
    from exiflang.eval.embed.patches import resolve_device
    from exiflang.pipeline.exif.text import FORMATS

    if mode not in MODES or patch <= 0 or per_side <= 0 or (limit is not None and limit < 0):
        raise ValueError(
            f"bad grid: mode {mode!r} (expected {MODES}), patch {patch}, per_side {per_side}, limit {limit}"
        )
    if text and text_format is not None and text_format not in FORMATS:
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
    *,
    patch: int = 124,
    per_side: int = 4,
    mode: str = "grid",
    text: bool = False,
    device: str = "auto",
    batch_size: int = 256,
    progress: bool = True,
    limit: int | None = None,
    text_format: str | None = None,
    workers: int = 2,
    images: bool = False,
    per_part: int = PER_PART,
) -> Path:
    """Embed the samples of the shards in ``data`` with the model in ``model_dir`` into ``out``.

    ``mode``: ``grid`` (``per_side**2`` patches of ``patch`` px, mean re-normalised) or
    ``single`` (the centre patch).  ``limit``: at most this many samples in all (sorted shards,
    tar order; one process only).  ``images``: ``data`` is a plain folder of photos, embedded
    ``per_part`` photos a part (:mod:`exiflang.eval.embed.folder`).  Under torchrun each rank embeds its
    share of the parts and the output is the one-process output (:mod:`exiflang.eval.embed.distributed`).
    Returns ``out``.  One-line ``ValueError``/``FileNotFoundError`` for bad input.
    """
    _check_args(mode, patch, per_side, limit, text, text_format, device)
    model_dir, data, out = Path(model_dir), Path(data), Path(out)
    parts, extra = list_parts(data, images, per_part)
    settings = _settings(model_dir, data, patch, per_side, mode, text, text_format, limit, extra)
    ranks = join(device)
    meta, todo = decide(ranks, lambda: _start(model_dir, data, out, settings, parts))
    if ranks.world > 1:
        pending = set(todo)
        left = [p for p in parts if p.stem in pending]
        owner = assign([p.size for p in left], ranks.world)
        parts = [p for p, r in zip(left, owner) if r == ranks.rank]
    stats = _embed_parts(
        model_dir,
        data,
        out,
        parts,
        settings,
        ranks,
        batch_size=batch_size,
        progress=progress,
        limit=limit,
        workers=workers,
    )
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
    *,
    batch_size: int,
    progress: bool,
    limit: int | None,
    workers: int,
) -> list[dict]:
    """Load the model and embed ``parts`` (this rank's; all of them alone); their ``done.json`` stats."""
    import torch
    from tqdm import tqdm

    from exiflang.eval.embed.batch import PhotoEncoder, TextEncoder
    from exiflang.eval.embed.patches import PatchEmbedder
    from exiflang.train.model import ExifClip

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
    with tqdm(total=total, unit="photo", desc="embed", disable=not progress or not ranks.is_main) as bar:
        ctx = Context(
            PhotoEncoder(embedder, settings["patch"], settings["per_side"], settings["mode"]),
            texts,
            settings["settings_key"],
            max(1, workers),
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


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="exiflang embed", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model folder (from `exiflang train`)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="shards folder (from `exiflang shards`)")
    src.add_argument("--images", help="a plain folder of photos (walked recursively), embedded without shards")
    ap.add_argument(
        "--per-part",
        type=int,
        default=PER_PART,
        help=f"--images: photos per part (default {PER_PART}, as `exiflang shards --rows-per-shard`)",
    )
    ap.add_argument("--out", required=True, help="embeddings folder to write (resumable)")
    ap.add_argument("--per-side", type=int, default=4, help="grid of N x N patches per photo (default 4)")
    ap.add_argument("--single-patch", action="store_true", help="embed the centre patch only")
    ap.add_argument("--patch-size", type=int, default=124, help="patch side in pixels (default 124)")
    ap.add_argument("--text", action="store_true", help="also embed the EXIF text with the text tower")
    ap.add_argument("--text-format", help="text format (default: the training run's, else paper)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--batch-size", type=int, default=256, help="patches per forward pass (default 256)")
    ap.add_argument("--workers", type=int, default=2, help="decoding threads (default 2)")
    ap.add_argument("--limit", type=int, help="embed at most N samples (sorted shards, tar order)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point (exit status in the module docstring), under :func:`exiflang.errors.run_main`."""
    return run_main("exiflang embed", _main, argv)


def _main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_out_dir(args.out)  # before the model loads: a bad --out costs nothing
    out = embed_shards(
        args.model,
        args.data or args.images,
        args.out,
        patch=args.patch_size,
        per_side=args.per_side,
        mode="single" if args.single_patch else "grid",
        text=args.text,
        device=args.device,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        limit=args.limit,
        text_format=args.text_format,
        workers=args.workers,
        images=args.images is not None,
        per_part=args.per_part,
    )
    counts = read_meta(out)["counts"]
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(counts["skipped"].items())) or "none"
    print(f"embedded {counts['rows']} photos from {counts['shards']} shards (skipped: {skipped}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
