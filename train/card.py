"""Model cards: what a model folder was trained on, as ``model_card.json`` beside its weights, read back as plain JSON.

A card is a JSON object (every key optional; readers must cope with any subset)::

    {"format": "exiflang-model-card", "format_version": 1,
     "source": "exiflang train" | "authors' release (converted)",
     "data": {"photos": int, "real": bool | null, "synthetic": bool | null, "kind": str,
              "cameras": int | null, "makes": int | null, "camera_names": [str] (when <= 12),
              "path": str | null, "counted_from": "N of M shard tables"},
     "training": {"steps": int, "preset": str, "text_format": str, "patch_size": int, "seed": int},
     "heldout": {metric: float} (the run's ``eval/*`` numbers, when it evaluated),
     "summary": str}                        # one line a person reads: see :func:`describe`

The card is written once, by the trainer at the end of a run (:func:`training_card`) and by
``convert-authors`` (:func:`authors_card`); :func:`read_model_card` never runs code (``json`` only)
and answers ``{}`` for a folder without one.  Whether a corpus is synthetic is decided from
facts, not names: the photos' folder (or the folder their files link to) holds the
``cameras.json`` that ``exiflang synth`` writes beside its manifest.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, Union

log = logging.getLogger("exiflang.train")

CARD = "model_card.json"
FORMAT = "exiflang-model-card"
FORMAT_VERSION = 1
NAMES_SHOWN = 12  # camera names listed in the card up to this many cameras
MAX_TABLES = 256  # shard tables read to count cameras (a YFCC-sized corpus is sampled)

PathLike = Union[str, "os.PathLike[str]"]


def read_model_card(model_dir: PathLike) -> dict[str, Any]:
    """``MODEL_DIR/model_card.json`` as a dict; ``{}`` when absent or not a JSON object (logged)."""
    path = Path(model_dir) / CARD
    if not path.is_file():
        return {}
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        log.warning("%s: unreadable model card, ignored (%s)", path, " ".join(str(exc).split())[:120])
        return {}
    if not isinstance(card, dict):
        log.warning("%s: not a JSON object, ignored", path)
        return {}
    return card


def write_model_card(model_dir: PathLike, card: dict[str, Any]) -> Path:
    """Write ``card`` (its ``summary`` filled in when missing) as ``MODEL_DIR/model_card.json`` atomically."""
    folder = Path(model_dir)
    card = {"format": FORMAT, "format_version": FORMAT_VERSION, **card}
    card.setdefault("summary", describe(card))
    fd, tmp = tempfile.mkstemp(prefix=f".{CARD}.", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, folder / CARD)
    return folder / CARD


def describe(card: dict[str, Any]) -> str:
    """One line saying what the model knows, e.g. ``model trained on 1440 synthetic photos of 8
    cameras (1600 steps); answers about real cameras are unreliable``; ``""`` for an empty card."""
    if not card:
        return ""
    if card.get("summary"):
        return str(card["summary"])
    data = card.get("data") or {}
    photos, cams = data.get("photos"), data.get("cameras")
    kind = "synthetic " if data.get("synthetic") else "real " if data.get("real") else ""
    what = f"{photos} {kind}photos" if photos else f"{kind}photos".strip() or "unknown data"
    if cams:
        what += f" of {cams} camera model{'s' if cams != 1 else ''}"
    steps = (card.get("training") or {}).get("steps")
    line = f"model trained on {what}" + (f" ({steps} steps)" if steps else "")
    if data.get("synthetic"):
        line += "; answers about real cameras are unreliable"
    elif cams is not None and cams < 20:
        line += f"; only {cams} camera model(s) known: answers about others are unreliable"
    return line


def authors_card() -> dict[str, Any]:
    """The card of the authors' released checkpoint (facts from the paper, docs/design.md)."""
    return {
        "source": "authors' release (converted)",
        "data": {
            "kind": "YFCC100M photos with EXIF (Zheng et al., CVPR 2023)",
            "real": True,
            "synthetic": False,
            "photos": None,
            "cameras": None,
            "note": "trained by the paper's authors on real Flickr photos; counts per the paper, not re-measured here",
        },
        "training": {"preset": "paper", "text_format": "code"},
        "heldout": {},
        "numbers_from": "the paper (Zheng, Shrivastava, Owens, CVPR 2023)",
        "summary": "the authors' released model, trained on real YFCC100M photos per the paper",
    }


def training_card(cfg: Any, tags: dict[str, Any] | None, result: dict[str, Any]) -> dict[str, Any]:
    """The card of a finished ``exiflang train`` run: its config ``cfg`` (a TrainConfig), the
    shards' ``tags`` (tags.json) and the trainer's final ``result`` (``eval/*`` = held-out numbers)."""
    data = dict(_facts(str(cfg.data.data)))
    if data.get("photos") is None and tags and tags.get("num_images") is not None:
        data["photos"] = int(tags["num_images"])
    training = {
        "steps": result.get("step", cfg.run.steps),
        "preset": getattr(cfg, "preset", None),
        "text_format": cfg.data.text_format,
        "patch_size": cfg.data.patch_size,
        "batch_size": cfg.data.batch_size,
        "seed": cfg.run.seed,
        "tags": len(tags.get("tags", [])) if tags else None,
    }
    heldout = {
        k.split("/", 1)[1]: v for k, v in result.items() if k.startswith("eval/") and isinstance(v, (int, float))
    }
    return {
        "source": "exiflang train",
        "data": data,
        "training": training,
        "heldout": heldout,
        "heldout_set": getattr(cfg.run, "eval_data", None),
    }


def corpus_facts(data: str) -> dict[str, Any]:
    """Photos, cameras and real/synthetic of a local shards folder (``{"path"}`` only for a URL)."""
    root = Path(data)
    facts: dict[str, Any] = {"path": data, "photos": None, "cameras": None, "synthetic": None, "real": None}
    if not root.is_dir():
        return facts
    job = _json(root / "job.json") or {}
    summary = _json(root / "summary.json") or job
    if isinstance(summary.get("num_images"), int):
        facts["photos"] = summary["num_images"]
    cameras, makes, counted = _count_cameras(root)
    if cameras:
        facts["cameras"], facts["makes"] = len(cameras), len(makes)
        facts["counted_from"] = counted
        if len(cameras) <= NAMES_SHOWN:
            facts["camera_names"] = sorted(cameras)
    synth = _synth_manifest((job.get("source") or {}).get("path"))
    if synth is not None:
        facts.update(synthetic=True, real=False, kind="synthetic (exiflang synth)", synth_cameras=str(synth))
    else:  # not made by `exiflang synth`; whether it is camera output is not known from here
        facts.update(synthetic=False, kind="photos not made by exiflang synth")
    return facts


@lru_cache(maxsize=4)
def _facts(data: str) -> dict[str, Any]:
    """:func:`corpus_facts`, once per process and corpus (every checkpoint writes a card)."""
    return corpus_facts(data)


def _json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _count_cameras(root: Path) -> tuple[Counter, set, str]:
    """(``"Make Model"`` -> photos, makes, "N of M shard tables") from the shards' ``exif`` column."""
    tables = sorted(root.glob("*.parquet"))
    if not tables:
        return Counter(), set(), "0 of 0 shard tables"
    import pyarrow.parquet as pq  # here: the trainer imports this module, pyarrow only at a run's end

    step = max(1, len(tables) // MAX_TABLES)
    picked = tables[::step][:MAX_TABLES]
    cameras: Counter = Counter()
    makes: set = set()
    for path in picked:  # one table at a time: memory stays one shard's EXIF
        try:
            column = pq.read_table(path, columns=["exif"]).column("exif").to_pylist()
        except Exception as exc:  # noqa: BLE001 - a damaged table costs the count, not the card
            log.warning("%s: skipped while counting cameras (%s)", path, type(exc).__name__)
            continue
        for pairs in column:
            exif = dict(pairs or [])
            make, model = str(exif.get("Make", "")).strip(), str(exif.get("Model", "")).strip()
            if make or model:
                cameras[f"{make} {model}".strip()] += 1
                makes.add(make)
    return cameras, makes, f"{len(picked)} of {len(tables)} shard tables"


def _synth_manifest(source: str | None) -> Path | None:
    """The ``cameras.json`` of ``exiflang synth`` behind a photo folder (directly or via its links)."""
    if not source or not Path(source).is_dir():
        return None
    folder = Path(source)
    candidates = [folder]
    first = next((p for p in sorted(folder.iterdir()) if p.is_file()), None)
    if first is not None:
        candidates.append(first.resolve().parent)  # a split folder of symlinks into the corpus
    for cand in candidates:
        doc = _json(cand / "cameras.json")
        if doc and isinstance(doc.get("cameras"), list) and "settings" in doc and (cand / "manifest.csv").is_file():
            return cand / "cameras.json"
    return None
