"""Lookup: the nearest index photos of query photos, the EXIF they vote for, and whether to trust the votes.

A query is decoded from its pixels only (its own EXIF, if it has any, is never read), embedded
exactly as the index's embeddings were (the patch size, grid and mode recorded with them:
:func:`embedding_settings`), and searched for its ``k`` nearest index photos.  For every tag
of the model's vocabulary the neighbours vote (:mod:`exiflang.eval.index.votes`): the predicted
value, its vote share, and how many neighbours had the tag.  A photo farther from its nearest
index photos than the index's own photos are from theirs (:mod:`exiflang.eval.index.abstain`)
is ``known: false``.

:class:`Searcher` is a model + index pair answering queries; :func:`lookup_photos` looks up
files in one call (batched); :func:`format_lookup` is the terminal table.  ``exiflang lookup``
(:mod:`exiflang.commands.lookup`) runs through :meth:`exiflang.api.Model.lookup`, which uses a
:class:`Searcher` built from the loaded model and index (:meth:`Searcher.from_parts`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exiflang.eval.embed.batch import PhotoEncoder
from exiflang.eval.embed.patches import PatchEmbedder
from exiflang.eval.images import ImageError, expand_inputs, load_rgb
from exiflang.eval.index import abstain
from exiflang.eval.index.votes import vote_tags
from exiflang.train.card import describe, read_model_card

if TYPE_CHECKING:
    from exiflang.eval.index.run import VectorIndex

log = logging.getLogger("exiflang.eval")


GRID_KEYS = ("patch", "per_side", "mode")
DEFAULT_GRID = {"patch": 124, "per_side": 4, "mode": "grid"}  # `exiflang embed`'s defaults


def embedding_settings(info: dict) -> dict:
    """``{"patch", "per_side", "mode"}`` the index's vectors were embedded with.

    Looked up in ``index.json`` itself (an ``embedding`` section or top-level keys), else in the
    ``meta.json`` of the embeddings folder it names (``sources.embeddings``); when neither is
    there, ``exiflang embed``'s defaults with a warning (``--per-side`` etc. override).
    """
    for cand in (info.get("embedding"), info):
        if isinstance(cand, dict) and all(k in cand for k in GRID_KEYS[:2]):
            return {k: cand.get(k, DEFAULT_GRID[k]) for k in GRID_KEYS}
    folder = (info.get("sources") or {}).get("embeddings")
    if folder and (Path(folder) / "meta.json").is_file():
        try:
            meta = json.loads((Path(folder) / "meta.json").read_text())
            return {k: meta.get(k, DEFAULT_GRID[k]) for k in GRID_KEYS}
        except (OSError, ValueError):
            pass
    log.warning("the index does not record its embedding grid; assuming %s", DEFAULT_GRID)
    return dict(DEFAULT_GRID)


def query_grid(info: dict, overrides: dict | None = None) -> dict:
    """The grid queries of an index are embedded on: :func:`embedding_settings` of its ``index.json``
    with the non-None values of ``overrides`` (``patch``/``per_side``/``mode``) put over it."""
    return {**embedding_settings(info), **{k: v for k, v in (overrides or {}).items() if v is not None}}


class Searcher:
    """A loaded model + index pair answering photo queries (what :func:`lookup_photos` builds once).

    ``Searcher(model_dir, index_dir)`` loads both and checks that the index was built with this
    model (one-line ValueError naming the files otherwise); :meth:`from_parts` wraps ones already
    loaded.  ``grid`` overrides the embedding grid the index records (:func:`query_grid`).
    """

    index: VectorIndex

    def __init__(
        self,
        model_dir: str | Path,
        index_dir: str | Path,
        *,
        device: str = "auto",
        batch_size: int = 256,
        grid: dict | None = None,
    ) -> None:
        from exiflang.eval.index.run import VectorIndex
        from exiflang.train.model import ExifClip

        index = VectorIndex.load(index_dir)
        # Loaded before the match check: a damaged model folder is one error, not a warning first.
        model, _, tags = ExifClip.from_pretrained(model_dir)
        index.check_model(model_dir)
        vocab = list(tags["tags"]) if tags and tags.get("tags") else []
        embedder = PatchEmbedder(model, device=device, batch_size=batch_size)
        self._setup(index, embedder, vocab, read_model_card(model_dir), query_grid(index.info, grid))

    @classmethod
    def from_parts(
        cls, index: VectorIndex, embedder: PatchEmbedder, vocab: list[str], card: dict, grid: dict
    ) -> Searcher:
        """A searcher over a loaded index and a model's embedder (no check that they belong
        together: the caller ran ``index.check_model``).  ``grid``: the full query grid."""
        self = cls.__new__(cls)
        self._setup(index, embedder, vocab, card, grid)
        return self

    def _setup(self, index: VectorIndex, embedder: PatchEmbedder, vocab: list[str], card: dict, grid: dict) -> None:
        self.index, self.vocab, self.card, self.grid = index, vocab, card, dict(grid)
        self.encoder = PhotoEncoder(embedder, int(grid["patch"]), int(grid["per_side"]), str(grid["mode"]))
        self._exif_cache: dict[int, dict] = {}
        self._familiarity: abstain.Familiarity | None = None
        self._fitted = False

    @property
    def familiarity(self) -> abstain.Familiarity | None:
        """The index's own neighbour distances (:func:`exiflang.eval.index.abstain.fit`), measured on first use."""
        if not self._fitted:
            self._familiarity, self._fitted = abstain.fit(self.index.index), True
        return self._familiarity

    def exif(self, row: int) -> dict:
        """The EXIF dict of index row ``row`` (parsed once)."""
        if row not in self._exif_cache:
            raw = self.index.table["exif"].iloc[row]
            self._exif_cache[row] = json.loads(raw) if isinstance(raw, str) and raw else {}
        return self._exif_cache[row]

    def embed_files(self, paths: Sequence[Path]) -> tuple[np.ndarray, list[dict]]:
        """Query photos -> (float32 ``[n_ok, D]``, one dict per path: file/size or file/error)."""
        out: list[dict] = []
        patches: list[np.ndarray] = []
        vectors: list[np.ndarray] = []
        for path in paths:
            try:
                rgb = load_rgb(path)
                patches.append(self.encoder.patches(rgb))
            except ImageError as exc:
                out.append({"file": str(path), "error": str(exc)})
                continue
            except ValueError as exc:  # smaller than one patch
                out.append({"file": str(path), "error": f"{path}: {exc}"})
                continue
            out.append({"file": str(path), "height": int(rgb.shape[0]), "width": int(rgb.shape[1])})
            if len(patches) >= self.encoder.photos_per_batch:
                vectors.append(self.encoder.embed_patches(patches))
                patches = []
        if patches:
            vectors.append(self.encoder.embed_patches(patches))
        dim = int(self.encoder.embedder.model.config.embed_dim)
        return (np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)), out

    def answer(self, query: np.ndarray, k: int, weighted: bool, tags: Sequence[str]) -> list[dict]:
        """``float32 [Q, D]`` -> per query ``{"neighbours": [...], "predictions": {...}}``."""
        if len(query) == 0:
            return []
        query = np.ascontiguousarray(query, dtype=np.float32)
        fam = self.familiarity
        # One search serves both: the first k for the votes, the abstention's candidates.
        sims, ids = self.index.search(query, max(k, fam.candidates if fam else 0))
        dist = abstain.kth_distances(fam, self.index.index, query, ids) if fam else np.full(len(query), np.nan)
        sims, ids = sims[:, :k], ids[:, :k]
        table = self.index.table
        card = describe(self.card)
        results = []
        for srow, irow, d in zip(sims, ids, dist):
            neighbours: list[dict[str, Any]] = []
            for rank, (s, i) in enumerate(((float(s), int(i)) for s, i in zip(srow, irow) if i >= 0), 1):
                neighbours.append(
                    {
                        "rank": rank,
                        "key": str(table["key"].iloc[i]),
                        "shard": str(table["shard"].iloc[i]) if "shard" in table else None,
                        "similarity": round(s, 6),
                        "exif": self.exif(i),
                    }
                )
            votes = vote_tags([n["exif"] for n in neighbours], [n["similarity"] for n in neighbours], tags, weighted)
            judged = abstain.judge(fam, float(d))
            results.append(
                {
                    "known": judged["known"],
                    "familiarity": judged,
                    "model_card": card,
                    "neighbours": neighbours,
                    "predictions": {t: _rounded(v.to_dict()) for t, v in votes.items()},
                }
            )
        return results

    def lookup(
        self, paths: Sequence[Path], k: int = 10, weighted: bool = False, tags: Sequence[str] | None = None
    ) -> list[dict]:
        """See :func:`lookup_photos`."""
        if k < 1:
            raise ValueError(f"k={k}: must be at least 1")
        query, rows = self.embed_files(paths)
        answers = iter(self.answer(query, k, weighted, list(tags) if tags else self.vocab))
        return [row if "error" in row else {**row, **next(answers)} for row in rows]


def _rounded(d: dict) -> dict:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in d.items()}


def lookup_photos(
    model_dir: str | Path,
    index_dir: str | Path,
    paths: Sequence[str | Path],
    k: int = 10,
    weighted: bool = False,
    device: str = "auto",
    tags: Sequence[str] | None = None,
    batch_size: int = 256,
    grid: dict | None = None,
) -> list[dict]:
    """Look up photos: one dict per path, in order (folders expanded).

    Answered: ``{"file", "width", "height", "neighbours": [{"rank", "key", "shard",
    "similarity" (cosine, -1..1), "exif"}] (most similar first), "predictions": {tag: {"value",
    "share" (0..1), "votes", "cast", "n_with_tag", "similarity"}}}``, tags in vocabulary order
    (or ``tags``).  Failed: ``{"file", "error": "PATH: reason"}``.  ``grid`` overrides the
    embedding grid the index records (``patch``/``per_side``/``mode``).  A bad model folder or
    index raises a one-line ``FileNotFoundError``/``ValueError`` naming the file.
    """
    files = expand_inputs([str(p) for p in paths])
    searcher = Searcher(model_dir, index_dir, device=device, batch_size=batch_size, grid=grid)
    return searcher.lookup(files, k, weighted, tags)


def _make(exif: dict) -> str:
    make, model = exif.get("Make", "").strip(), exif.get("Model", "").strip()
    return f"{make} / {model}" if make or model else "-"


def _cut(text: Any, width: int) -> str:
    text = "-" if text is None else str(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def format_lookup(result: dict, max_neighbours: int = 10) -> str:
    """One photo's result as a readable table (neighbours, then tag | predicted | share)."""
    if "error" in result:
        return f"{result['file']}\n  error: {result['error']}"
    nb = result["neighbours"]
    lines = [
        f"{result['file']}  ({result['width']}x{result['height']}, {len(nb)} neighbours)",
        f"  {'rank':>4}  {'sim':>7}  {'key':<24}  Make / Model",
    ]
    for n in nb[:max_neighbours]:
        lines.append(
            f"  {n['rank']:>4}  {n['similarity']:>7.4f}  {_cut(n['key'], 24):<24}  {_cut(_make(n['exif']), 48)}"
        )
    preds = result["predictions"]
    if not result.get("known", True):
        fam = result.get("familiarity", {})
        lines.append(
            f"  unknown camera: this photo is farther from its nearest index photos (distance "
            f"{fam.get('distance', float('nan')):.3g}) than {fam.get('rank', 100):.1f}% of the index's "
            f"photos are from theirs (threshold {fam.get('threshold', float('nan')):.3g}); "
            "no tag is predicted"
        )
        return "\n".join(lines)
    if preds:
        width = min(max(len(t) for t in preds), 32)
        lines.append(f"  {'tag':<{width}}  {'predicted':<40}  {'share':>5}  with tag")
        for tag, p in preds.items():
            share = f"{p['share']:.2f}" if p["value"] is not None else "-"
            lines.append(
                f"  {_cut(tag, width):<{width}}  {_cut(p['value'], 40):<40}  {share:>5}  {p['n_with_tag']}/{len(nb)}"
            )
    return "\n".join(lines)
