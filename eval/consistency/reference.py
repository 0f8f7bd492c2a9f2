"""The reference set of ``check-exif``: EXIF dicts to rank a claim against, and photos to calibrate on.

A :class:`Reference` holds ``exifs`` (the EXIF dicts of reference photos, one per photo) and, when
the source has them, ``vectors`` (``float32 [N, D]`` L2-normalised photo embeddings, row ``i``
being the photo whose EXIF is ``exifs[i]``) plus the patch grid they were embedded with.  Sources:

- an embeddings folder (``exiflang embed``: ``meta.json`` + parts): EXIF column and image vectors;
- an index folder (``exiflang index``): ``rows.parquet``'s EXIF column, and the vectors of the
  embeddings folder it was built from (``index.json`` ``sources.embeddings``) when that still
  exists, else the vectors the FAISS index can reconstruct (exact for flat indexes), else none;
- a shards folder (``exiflang shards``: ``*.tar`` + ``*.parquet``): the first ``max_photos``
  usable samples in shard order, decoded and embedded with the caller's photo encoder.

Every failure is a one-line ``FileNotFoundError`` / ``ValueError`` naming the file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("exiflang.eval")

DEFAULT_GRID = {"patch": 124, "per_side": 4, "mode": "grid"}  # `exiflang embed`'s defaults


@dataclass
class Reference:
    """EXIF dicts (``len N``) and, optionally, their photos' embeddings ``float32 [N, D]``."""

    exifs: list[dict]
    vectors: np.ndarray | None = None
    grid: dict = field(default_factory=lambda: dict(DEFAULT_GRID))
    source: str = ""

    def __post_init__(self) -> None:
        if self.vectors is not None and len(self.vectors) != len(self.exifs):
            raise ValueError(f"{self.source}: {len(self.vectors)} vectors for {len(self.exifs)} EXIF rows")

    def __len__(self) -> int:
        return len(self.exifs)


def _parse(raw: Any) -> dict:
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    if isinstance(raw, str) and raw:
        try:
            doc = json.loads(raw)
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}
    return {}


def _grid_of(doc: dict) -> dict:
    return {k: doc.get(k, DEFAULT_GRID[k]) for k in DEFAULT_GRID}


def from_embeddings(folder: Path) -> Reference:
    """An ``exiflang embed`` folder: its EXIF column and image vectors."""
    from exiflang.eval.embed.store import load_embeddings

    emb = load_embeddings(folder)
    exifs = [_parse(x) for x in emb.table["exif"].tolist()]
    return Reference(exifs, np.ascontiguousarray(emb.image, dtype=np.float32), _grid_of(emb.meta), str(folder))


def _index_vectors(index: Any, info: dict, n: int) -> tuple[np.ndarray | None, dict | None]:
    """The index's vectors: from its embeddings folder when it still exists, else reconstructed."""
    folder = (info.get("sources") or {}).get("embeddings")
    if folder and (Path(folder) / "meta.json").is_file():
        try:
            ref = from_embeddings(Path(folder))
            if len(ref) == n:
                return ref.vectors, ref.grid
        except (OSError, ValueError) as exc:
            log.warning("%s: not used for calibration (%s)", folder, exc)
    try:
        vec = index.index.reconstruct_n(0, n)
    except RuntimeError:  # IVF/PQ without a direct map: vectors cannot be read back
        return None, None
    return np.ascontiguousarray(vec, dtype=np.float32), None


def from_index(folder: Path) -> Reference:
    """An ``exiflang index`` folder: ``rows.parquet`` EXIF, vectors when they can be had."""
    from exiflang.eval.index.lookup import embedding_settings
    from exiflang.eval.index.run import VectorIndex

    index = VectorIndex.load(folder)
    exifs = [_parse(x) for x in index.table["exif"].tolist()]
    vectors, grid = _index_vectors(index, index.info, len(exifs))
    return Reference(exifs, vectors, grid or embedding_settings(index.info), str(folder))


def from_shards(
    folder: Path, embed: Callable[[list[np.ndarray]], np.ndarray], grid: dict, max_photos: int = 256
) -> Reference:
    """A shards folder: the first ``max_photos`` usable samples (shard order), embedded with ``embed``
    (decoded ``uint8 [H,W,3]`` photos -> ``float32 [n, D]``)."""
    from exiflang.eval.embed.shard import read_shard
    from exiflang.eval.images import ImageError, load_rgb_bytes

    tars = sorted(folder.glob("*.tar"))
    if not tars:
        raise FileNotFoundError(f"{folder}: no shards (*.tar) here")
    exifs: list[dict] = []
    vectors: list[np.ndarray] = []
    for tar in tars:
        for s in read_shard(tar):
            if len(exifs) >= max_photos:
                break
            if s.reason or not s.exif:
                continue
            try:
                rgb = load_rgb_bytes(s.data, s.name)
                vectors.append(embed([rgb])[0])
            except (ImageError, ValueError):
                continue  # unreadable or smaller than one patch: not a reference photo
            exifs.append(_parse(s.exif))
        if len(exifs) >= max_photos:
            break
    if not exifs:
        raise ValueError(f"{folder}: no usable samples with EXIF in its shards")
    return Reference(exifs, np.stack(vectors).astype(np.float32), dict(grid), str(folder))


def kind_of(path: Path) -> str:
    """``embeddings`` | ``index`` | ``shards`` for a reference folder; ValueError otherwise."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such reference folder")
    if (path / "index.json").is_file():
        return "index"
    if (path / "meta.json").is_file():
        return "embeddings"
    if path.is_dir() and any(path.glob("*.tar")):
        return "shards"
    raise ValueError(
        f"{path}: not a reference (an `exiflang index` folder, an `exiflang embed` "
        "folder or an `exiflang shards` folder)"
    )


def load_reference(
    path: str | Path,
    embed: Callable[[list[np.ndarray]], np.ndarray] | None = None,
    grid: dict | None = None,
    max_photos: int = 256,
) -> Reference:
    """Any reference folder (see the module docstring); shards need ``embed`` and ``grid``."""
    folder = Path(path)
    kind = kind_of(folder)
    if kind == "index":
        return from_index(folder)
    if kind == "embeddings":
        return from_embeddings(folder)
    if embed is None:
        raise ValueError(f"{folder}: a shards folder needs a model to embed its photos")
    return from_shards(folder, embed, grid or DEFAULT_GRID, max_photos)


def training_data(model_dir: Path, card: dict) -> Path | None:
    """The shards a model folder was trained on (its card's ``data.path``, else its run's
    ``config.yaml``), when that folder still exists; None otherwise."""
    cands: list[Any] = [(card.get("data") or {}).get("path")]
    try:
        from exiflang.eval.embed.run import run_config

        cands.append(run_config(model_dir).get("data"))
    except ImportError:  # pragma: no cover - yaml missing
        pass
    for c in cands:
        if isinstance(c, str) and c and Path(c).is_dir() and any(Path(c).glob("*.tar")):
            return Path(c)
    return None


def sample_rows(n: int, limit: int, seed: int = 0) -> np.ndarray:
    """``min(n, limit)`` row numbers out of ``n``, drawn without replacement (seeded), sorted."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def distinct(exifs: Sequence[dict], render: Callable[[dict], str]) -> list[int]:
    """Rows of ``exifs`` whose rendered text is new (first occurrence kept) and not empty."""
    seen: set[str] = set()
    keep = []
    for i, e in enumerate(exifs):
        t = render(e)
        if t and t not in seen:
            seen.add(t)
            keep.append(i)
    return keep
