"""`exiflang lookup`: the nearest training photos of each query photo and the EXIF they vote for.

    exiflang lookup --model MODEL_DIR --index INDEX [-k 10] [--weighted] [--json] [--out FILE]
                    [--tags Make,Model] [--device auto] [--batch-size 256] IMAGE_OR_FOLDER...

Each query is decoded from its pixels only (:func:`exiflang.eval.images.load_rgb`; its own EXIF, if it
has any, is never read), embedded exactly as the index's embeddings were (the patch size, grid
and mode recorded with them), and searched for its ``k`` nearest training photos.  For every tag
of the model's vocabulary the neighbours vote (:mod:`exiflang.eval.index.votes`): the predicted value, its vote
share, and how many neighbours had the tag.  A photo farther from its nearest index photos than
the index's own photos are from theirs (:mod:`exiflang.eval.index.abstain`) is ``known: false``:
the terminal says "unknown camera" instead of the votes.  The first line says what the model was
trained on (its model card).

Output: a table per photo on the terminal; ``--json`` prints JSON Lines instead (one object per
photo: ``file``, ``width``, ``height``, ``known``, ``familiarity`` {known, distance, threshold,
rank}, ``model_card`` (one line), ``neighbours`` [{rank, key, shard, similarity, exif}],
``predictions`` {tag: {value, share, votes, cast, n_with_tag, similarity}} (kept when not known:
read them as guesses); a photo that failed is ``{"file", "error"}``); ``--out FILE`` writes the
JSON Lines to a file as well.

Exit status: 0 every photo answered; 1 some photos failed (each named on stderr) and the rest
were answered; 2 bad usage, a model folder or index that is not one or does not match, an
unusable ``--out``, or no photo could be answered (one line ``exiflang lookup: error: FILE:
reason``; :mod:`exiflang.errors`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exiflang.errors import CommandError, check_out_file, run_main
from exiflang.eval.embed.batch import PhotoEncoder
from exiflang.eval.embed.patches import PatchEmbedder
from exiflang.eval.images import ImageError, expand_inputs, load_rgb
from exiflang.eval.index import abstain
from exiflang.eval.index.votes import vote_tags
from exiflang.train.card import describe, read_model_card

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


class Searcher:
    """A loaded model + index pair answering photo queries (what :func:`lookup_photos` builds once)."""

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

        self.index = VectorIndex.load(index_dir)
        # Loaded before the match check: a damaged model folder is one error, not a warning first.
        model, _, tags = ExifClip.from_pretrained(model_dir)
        self.index.check_model(model_dir)
        self.vocab: list[str] = list(tags["tags"]) if tags and tags.get("tags") else []
        self.grid = {**embedding_settings(self.index.info), **{k: v for k, v in (grid or {}).items() if v is not None}}
        self.encoder = PhotoEncoder(
            PatchEmbedder(model, device=device, batch_size=batch_size),
            int(self.grid["patch"]),
            int(self.grid["per_side"]),
            str(self.grid["mode"]),
        )
        self._exif_cache: dict[int, dict] = {}
        self.card = read_model_card(model_dir)
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="exiflang lookup",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("images", nargs="+", metavar="IMAGE", help="photos or folders (recursive)")
    ap.add_argument("--model", required=True, help="model folder (the one the index was embedded with)")
    ap.add_argument("--index", required=True, help="index folder (`exiflang index`)")
    ap.add_argument("-k", type=int, default=10, help="neighbours per photo (default 10)")
    ap.add_argument("--weighted", action="store_true", help="similarity-weighted votes")
    ap.add_argument("--json", action="store_true", help="JSON Lines on stdout instead of tables")
    ap.add_argument("--out", help="also write the JSON Lines to this file")
    ap.add_argument("--tags", help="comma-separated tags to predict (default: the model's vocabulary)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    ap.add_argument("--batch-size", type=int, default=256, help="patches per forward pass")
    ap.add_argument("--per-side", type=int, help="override the grid the index was embedded with")
    ap.add_argument("--patch-size", type=int, help="override the patch size the index was embedded with")
    ap.add_argument("--single-patch", action="store_true", help="override: embed the centre patch only")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring for the exit status (:func:`exiflang.errors.run_main`)."""
    return run_main("exiflang lookup", _main, argv)


def _main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.out:
        check_out_file(args.out)  # before any work: the answers must have somewhere to go
    files = expand_inputs(args.images)
    if not files:
        raise CommandError(None, "no images found in " + ", ".join(args.images))
    tags = [t.strip() for t in args.tags.split(",") if t.strip()] if args.tags else None
    if args.k < 1:
        raise ValueError(f"-k {args.k}: must be at least 1")
    grid = {"patch": args.patch_size, "per_side": args.per_side, "mode": "single" if args.single_patch else None}
    try:
        searcher = Searcher(args.model, args.index, device=args.device, batch_size=args.batch_size, grid=grid)
    except RuntimeError as exc:  # torch or faiss: a device it cannot use, weights that do not fit
        raise CommandError(None, str(exc)) from exc
    if not args.json:
        line = describe(searcher.card)
        print(f"model: {line}" if line else "model: no model card: what it was trained on is not recorded")
    results = searcher.lookup(files, args.k, args.weighted, tags)
    lines = [json.dumps(r, ensure_ascii=False) for r in results]
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(line + "\n" for line in lines))
    for r in results:
        if "error" in r:
            print(f"exiflang lookup: {r['error']}", file=sys.stderr)
    answered = [r for r in results if "error" not in r]
    if args.json:
        sys.stdout.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
    else:
        print("\n\n".join(format_lookup(r) for r in answered))
    if not answered:
        return 2
    return 1 if len(answered) < len(results) else 0


if __name__ == "__main__":
    sys.exit(main())
