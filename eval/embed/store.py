"""The on-disk embeddings folder (``exiflang embed``'s output): its layout, signatures, and reading it back.

Layout of an embeddings folder ``EMB``::

    EMB/meta.json                  settings, model signature, vocabularies; "complete" + counts at the end
    EMB/parts/SHARD.image.npy      float32 [n, D] image embeddings, rows L2-normalised
    EMB/parts/SHARD.text.npy       float32 [n, D] text embeddings (only with --text)
    EMB/parts/SHARD.parquet        n rows, row-aligned: key, shard, photo_id, url, width, height,
                                   exif (JSON string of the {tag: value} dict), n_tags
    EMB/parts/SHARD.done.json      the shard's stats; written last, so its presence means "done"

``SHARD`` is the tar's name without ``.tar``.  :func:`load_embeddings` concatenates the parts in
the order ``meta.json`` lists the shards (sorted tar names, samples in tar order), so rows come
back in the same order however often the embedding was interrupted and resumed.  No consolidated
copy is written: the parts are the arrays (a 1.5M-photo set would otherwise be stored twice).

Model checks, and where they matter: every part records the settings key of the run that wrote
it and :func:`load_embeddings` refuses a part whose key differs from ``meta.json`` (parts of two
models must never be mixed).  Comparing the embeddings with *another* model (the one a query is
embedded with) is :func:`check_model_against`: a different dimension or tag vocabulary is an
error (the vectors or the predicted tags would not line up); different weights with the same
dimension and vocabulary is only a warning (a retrained checkpoint of the same setup is a
legitimate, if degraded, query model).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from exiflang.pipeline.shards.tags import vocabulary_hash

FORMAT = "exiflang-embeddings"
FORMAT_VERSION = 1
TABLE_COLUMNS = ("key", "shard", "photo_id", "url", "width", "height", "exif", "n_tags")
log = logging.getLogger("exiflang.eval")


@dataclass
class Embeddings:
    """One embeddings folder in memory; ``image``/``text``/``table`` rows are aligned.

    ``image``: float32 ``[N, D]``, rows L2-normalised (cosine = inner product).
    ``text``: float32 ``[N, D]`` or ``None`` (only when embedded with ``--text``).
    ``table``: N rows — key, shard (tar name), photo_id, url, width, height (pixels), exif (JSON
    string of the ``{tag: value}`` dict), n_tags (tags in that dict).
    ``meta``: ``meta.json`` (model dir, model signature, patch, per_side, mode, dim, counts, ...).
    """

    image: np.ndarray
    text: np.ndarray | None
    table: pd.DataFrame
    meta: dict

    def __len__(self) -> int:
        return int(self.image.shape[0])


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path`` and rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_json(path: Path, doc: Any) -> None:
    atomic_write_bytes(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path, what: str) -> Any:
    """Parse a JSON file; one-line ``FileNotFoundError`` / ``ValueError`` naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing ({what})")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({' '.join(str(exc).split())})") from None


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, cached per (path, size, mtime) in this process (weights are large)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def tags_summary(doc: dict | None) -> dict | None:
    """``{"hash", "n"}`` of a ``tags.json`` document; the hash is of its tag list as it stands.

    The list's own hash (not the stored ``hash`` field) is used because a trainer's tag override
    (single-tag supervision) keeps the dataset's stored hash beside a different list.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("tags"), list):
        return None
    return {"hash": vocabulary_hash([str(t) for t in doc["tags"]]), "n": len(doc["tags"])}


def model_signature(model_dir: str | Path) -> dict:
    """``{"embed_dim": int, "tags_hash": str | None, "weights_sha256": str}`` of a model folder.

    Reads ``config.json``, ``tags.json`` (hash of its tag list; ``None`` when the folder has none)
    and hashes ``model.safetensors``.  One-line ``FileNotFoundError``/``ValueError`` naming the file.
    """
    from exiflang.train.model import read_config

    folder = Path(model_dir)
    config = read_config(folder / "config.json")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing (not an exiflang model folder)")
    tags_path = folder / "tags.json"
    tags = tags_summary(read_json(tags_path, "model vocabulary")) if tags_path.is_file() else None
    return {
        "embed_dim": int(config.embed_dim),
        "tags_hash": tags["hash"] if tags else None,
        "weights_sha256": file_sha256(weights),
    }


def check_model_against(signature: dict, model_dir: str | Path, source: Path, *, strict: bool = False) -> None:
    """Raise a one-line ``ValueError`` naming both files when ``model_dir`` cannot query vectors
    described by ``signature`` (read from ``source``): another dimension or tag vocabulary.

    Other weights (same dimension and vocabulary) log a warning, or raise with ``strict``.
    """
    own = model_signature(model_dir)
    folder = Path(model_dir)
    if own["embed_dim"] != signature.get("embed_dim"):
        raise ValueError(
            f"{folder / 'config.json'}: embedding dimension {own['embed_dim']} does not "
            f"match {source} ({signature.get('embed_dim')})"
        )
    if own["tags_hash"] != signature.get("tags_hash"):
        raise ValueError(
            f"{folder / 'tags.json'}: tag vocabulary hash {own['tags_hash']} does not "
            f"match {source} ({signature.get('tags_hash')}): another model's vectors"
        )
    if own["weights_sha256"] != signature.get("weights_sha256"):
        msg = (
            f"{folder / 'model.safetensors'}: other weights than the model {source} was "
            "embedded with (same dimension and vocabulary); similarities will be degraded"
        )
        if strict:
            raise ValueError(msg)
        log.warning(msg)


def read_meta(folder: Path) -> dict:
    """``EMB/meta.json``, checked to be an embeddings folder's."""
    path = folder / "meta.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: embeddings folder not found")
    doc = read_json(path, "not an embeddings folder; make one with `exiflang embed`")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not an exiflang embeddings meta.json (format != {FORMAT!r})")
    if int(doc.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {doc['format_version']} is newer than this exiflang")
    return doc


def part_paths(folder: Path, stem: str) -> dict[str, Path]:
    """The files of one shard's part (see the module docstring)."""
    parts = folder / "parts"
    return {
        "image": parts / f"{stem}.image.npy",
        "text": parts / f"{stem}.text.npy",
        "table": parts / f"{stem}.parquet",
        "done": parts / f"{stem}.done.json",
    }


def _load_array(path: Path, rows: int, dim: int) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (embeddings part)") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable .npy array ({' '.join(str(exc).split())})") from None
    if arr.dtype != np.float32 or arr.ndim != 2 or arr.shape != (rows, dim):
        raise ValueError(f"{path}: expected float32 [{rows}, {dim}], found {arr.dtype} {list(arr.shape)}")
    return arr


def _load_part(folder: Path, stem: str, meta: dict) -> tuple[np.ndarray, np.ndarray | None, pd.DataFrame]:
    paths = part_paths(folder, stem)
    done = read_json(paths["done"], "shard not embedded; rerun `exiflang embed`")
    if done.get("settings_key") != meta.get("settings_key"):
        raise ValueError(
            f"{paths['done']}: embedded with other settings or another model than "
            f"{folder / 'meta.json'} says; re-embed into a new folder"
        )
    rows, dim = int(done["rows"]), int(meta["dim"])
    image = _load_array(paths["image"], rows, dim)
    text = _load_array(paths["text"], rows, dim) if meta.get("text") else None
    try:
        table = pd.read_parquet(paths["table"])
    except FileNotFoundError:
        raise FileNotFoundError(f"{paths['table']}: missing (embeddings part)") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise ValueError(f"{paths['table']}: not a readable Parquet table ({type(exc).__name__})") from None
    if len(table) != rows or list(table.columns) != list(TABLE_COLUMNS):
        raise ValueError(f"{paths['table']}: expected {rows} rows with columns {list(TABLE_COLUMNS)}")
    return image, text, table


def load_embeddings(folder: str | Path) -> Embeddings:
    """Read a finished embeddings folder: parts concatenated in ``meta.json``'s shard order.

    One-line ``FileNotFoundError``/``ValueError`` naming the file for a folder that is not one,
    an unfinished embedding, a part made with other settings, or a damaged/misaligned part.
    """
    root = Path(folder)
    meta = {**read_meta(root), "path": str(root.resolve())}  # "path": in memory only, for sources
    if not meta.get("complete"):
        done = sum(part_paths(root, s)["done"].is_file() for s in meta.get("shards", []))
        raise ValueError(
            f"{root / 'meta.json'}: embedding not finished ({done} of "
            f"{len(meta.get('shards', []))} shards done); rerun `exiflang embed` with the same arguments"
        )
    parts = [_load_part(root, stem, meta) for stem in meta["shards"]]
    dim = int(meta["dim"])
    if not parts:
        image = np.zeros((0, dim), np.float32)
        return Embeddings(
            image, image.copy() if meta.get("text") else None, pd.DataFrame({c: [] for c in TABLE_COLUMNS}), meta
        )
    image = np.concatenate([p[0] for p in parts])
    text = np.concatenate([p[1] for p in parts]) if meta.get("text") else None
    table = pd.concat([p[2] for p in parts], ignore_index=True)
    return Embeddings(image, text, table, meta)
