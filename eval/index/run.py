"""A FAISS index over embeddings, tuned to a recall target: building, writing, loading and searching it.

The engine of ``exiflang index`` (the command line and the files written:
:mod:`exiflang.eval.index.command`): :func:`build_index` builds, tunes and writes an index folder;
:class:`VectorIndex` loads and searches one.  Which index (:mod:`exiflang.eval.index.build`) and how
recall is measured and tuned (:mod:`exiflang.eval.index.tune`) are documented there.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from exiflang.eval.embed.store import TABLE_COLUMNS, Embeddings, check_model_against, part_paths, read_json, read_meta
from exiflang.eval.index.build import (
    KINDS,
    NpySource,
    VectorSource,
    add_refine,
    add_rows,
    as_source,
    build,
    choose_kind,
    estimate_bytes,
)
from exiflang.eval.index.thumbnails import write_thumbnails
from exiflang.eval.index.tune import RecallProbe, holdout, set_param, tune

FORMAT = "exiflang-index"
FORMAT_VERSION = 1
SEARCH_PARAMS = ("nprobe", "efSearch", "k_factor")
log = logging.getLogger("exiflang.eval")


class NotAnIndex(ValueError):
    """A folder or file that is not a usable exiflang index; one line naming the file."""


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None = None) -> int:
    """FAISS's OpenMP threads: ``threads`` or the cores this process may use; returns the count."""
    n = max(1, int(threads or available_cores()))
    faiss.omp_set_num_threads(n)
    return n


class VectorIndex:
    """A loaded index: ``search`` answers cosine top-k; ``table`` row i describes id i."""

    def __init__(self, index: faiss.Index, info: dict, table: pd.DataFrame, folder: Path | None = None) -> None:
        self.index, self.info, self.table, self.folder = index, info, table, folder

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @classmethod
    def load(cls, folder: str | Path) -> VectorIndex:
        """Read ``index.json``, ``index.faiss`` and ``rows.parquet``; :class:`NotAnIndex` (a
        ``ValueError``) naming the file when any is missing, damaged or inconsistent."""
        root = Path(folder)
        info_path, faiss_path, rows_path = root / "index.json", root / "index.faiss", root / "rows.parquet"
        if not info_path.is_file():
            raise NotAnIndex(f"{info_path}: missing (not an index folder; make one with `exiflang index`)")
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            raise NotAnIndex(f"{info_path}: not valid JSON ({' '.join(str(exc).split())})") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise NotAnIndex(f"{info_path}: not an exiflang index.json (format != {FORMAT!r})")
        if not faiss_path.is_file():
            raise NotAnIndex(f"{faiss_path}: missing")
        try:
            index = faiss.read_index(str(faiss_path))
        except RuntimeError as exc:
            reason = next((ln for ln in str(exc).splitlines() if ln.strip()), "unreadable")
            raise NotAnIndex(f"{faiss_path}: not a readable FAISS index ({' '.join(reason.split())[:200]})") from None
        if index.ntotal != info.get("n") or index.d != info.get("dim"):
            raise NotAnIndex(
                f"{faiss_path}: holds {index.ntotal} vectors of {index.d} dimensions, "
                f"{info_path.name} says {info.get('n')} of {info.get('dim')}"
            )
        try:
            table = pd.read_parquet(rows_path)
        except Exception as exc:  # noqa: BLE001 - missing or damaged: pyarrow raises several types
            raise NotAnIndex(f"{rows_path}: not a readable Parquet table ({type(exc).__name__})") from None
        if len(table) != index.ntotal:
            raise NotAnIndex(f"{rows_path}: {len(table)} rows for {index.ntotal} vectors")
        for name, value in info.get("params", {}).items():
            if name in SEARCH_PARAMS:
                set_param(index, name, value)
        return cls(index, info, table, root)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """float32 ``[Q, D]`` L2-normalised queries -> ``(similarities float32 [Q,k], ids int64 [Q,k])``.

        Similarity is the inner product (= cosine), best first; where fewer than ``k`` results
        exist, ids are ``-1`` and similarities ``-inf``.  A 1-D query is taken as ``[1, D]``.
        """
        q = np.asarray(queries, dtype=np.float32)
        q = q[None] if q.ndim == 1 else q
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries of shape {list(np.shape(queries))}: expected [Q, {self.dim}]")
        if k <= 0:
            raise ValueError(f"k = {k}: must be positive")
        sims = np.full((len(q), k), -np.inf, dtype=np.float32)
        ids = np.full((len(q), k), -1, dtype=np.int64)
        kk = min(k, len(self))
        if kk and len(q):
            d, i = self.index.search(np.ascontiguousarray(q), kk)
            sims[:, :kk], ids[:, :kk] = d, i
            sims[ids < 0] = -np.inf
        return sims, ids

    def check_model(self, model_dir: str | Path) -> None:
        """One-line ``ValueError`` naming the files when ``model_dir``'s tags hash or dimension
        differ from the model the index was built from (other weights: a logged warning)."""
        source = (self.folder or Path(".")) / "index.json"
        signature = self.info.get("model_signature")
        if signature:
            check_model_against(signature, model_dir, source)
            return
        from exiflang.eval.embed.store import model_signature

        own = model_signature(model_dir)
        if own["embed_dim"] != self.dim:  # an index of bare arrays: only the dimension is known
            raise ValueError(
                f"{Path(model_dir) / 'config.json'}: embedding dimension {own['embed_dim']} "
                f"does not match {source} ({self.dim})"
            )


def _folder_source(folder: Path, side: str) -> tuple[NpySource, pd.DataFrame, dict]:
    """An embeddings folder's ``side`` vectors, streamed from its parts (never loaded whole), with
    its table and meta; the checks of :func:`exiflang.eval.embed.store.load_embeddings`, one line each."""
    meta = {**read_meta(folder), "path": str(folder.resolve())}
    if not meta.get("complete"):
        raise ValueError(
            f"{folder / 'meta.json'}: embedding not finished; rerun `exiflang embed` with the same arguments"
        )
    if side == "text" and not meta.get("text"):
        raise ValueError(f"{folder}: no text embeddings (embed with --text)")
    files, tables = [], []
    for stem in meta.get("shards", []):
        paths = part_paths(folder, stem)
        done = read_json(paths["done"], "shard not embedded; rerun `exiflang embed`")
        if done.get("settings_key") != meta.get("settings_key"):
            raise ValueError(
                f"{paths['done']}: embedded with other settings or another model than "
                f"{folder / 'meta.json'} says; re-embed into a new folder"
            )
        files.append((paths[side], int(done["rows"])))
        try:
            tables.append(pd.read_parquet(paths["table"]))
        except Exception as exc:  # noqa: BLE001 - missing or damaged: pyarrow raises several types
            raise ValueError(f"{paths['table']}: not a readable Parquet table ({type(exc).__name__})") from None
        if len(tables[-1]) != files[-1][1]:
            raise ValueError(f"{paths['table']}: {len(tables[-1])} rows for {files[-1][1]} vectors")
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame({c: [] for c in TABLE_COLUMNS})
    return NpySource(files, dim=int(meta["dim"])), table, meta


def _vectors(
    emb: Embeddings | np.ndarray | str | Path, side: str, table: pd.DataFrame | None, meta: dict | None
) -> tuple[VectorSource, pd.DataFrame, dict]:
    """Pick the vectors (as a chunked source), table and meta out of the arguments of :func:`build_index`, checked."""
    if isinstance(emb, Embeddings):
        vec = emb.image if side == "image" else emb.text
        if vec is None:
            raise ValueError(f"{emb.meta.get('path', 'embeddings')}: no text embeddings (embed with --text)")
        table, meta = emb.table if table is None else table, {**emb.meta, **(meta or {})}
        source = as_source(vec)
    elif isinstance(emb, (str, Path)) and Path(emb).is_dir():
        source, own, folder_meta = _folder_source(Path(emb), side)
        table, meta = own if table is None else table, {**folder_meta, **(meta or {})}
    else:
        source = as_source(emb)
        if isinstance(emb, (str, Path)):
            meta = {"path": str(Path(emb).resolve()), **(meta or {})}
    n, dim = source.shape
    if n == 0 or dim == 0:
        raise ValueError(f"vectors of shape {[n, dim]}: expected a non-empty [N, D] array")
    norms = np.linalg.norm(source.read(0, min(n, 10_000)), axis=1)
    if np.abs(norms - 1).max() > 1e-3:
        log.warning(
            "vectors are not L2-normalised (norms %.3f..%.3f): inner product is not cosine", norms.min(), norms.max()
        )
    if table is None:
        table = pd.DataFrame({"row": np.arange(n, dtype=np.int64)})
    if len(table) != n:
        raise ValueError(f"table has {len(table)} rows for {n} vectors")
    return source, table.reset_index(drop=True), meta or {}


def _approximate(
    vec: VectorSource,
    kind: str,
    probe: RecallProbe,
    pool: np.ndarray,
    recall_target: float,
    memory_budget_mb: float | None,
    seed: int,
    chunk_rows: int | None = None,
) -> tuple:
    """Build and tune; IVF-PQ that misses the target gets a re-ranking stage when it fits."""
    n, dim = vec.shape
    built = build(vec, kind, pool, memory_budget_mb=memory_budget_mb, seed=seed, chunk_rows=chunk_rows)
    t0 = time.perf_counter()
    tuned = tune(built.index, kind, probe, recall_target, n)
    if kind == "ivf-pq" and not tuned["met"]:
        nlist, m = built.params["nlist"], built.params["m"]
        budget = None if memory_budget_mb is None else memory_budget_mb * 2**20
        fits = [
            r
            for r in ("sq8", "flat")
            if budget is None or estimate_bytes("ivf-pq", n, dim, nlist=nlist, m=m, refine=r) <= budget
        ]
        if fits:
            log.info(
                "IVF-PQ reaches recall %.3f (lower bound %.3f) < %.2f: adding %s re-ranking",
                tuned["recall"],
                tuned["recall_lcb"],
                recall_target,
                fits[0],
            )
            built = add_refine(built, vec, pool, fits[0], seed, chunk_rows)
            tuned = tune(built.index, kind, probe, recall_target, n, refine=True)
    built.seconds["tune"] = round(time.perf_counter() - t0, 3)
    if kind == "hnsw":
        add_rows(built.index, vec, probe.query_ids)
    return built, tuned


def build_index(
    emb: Embeddings | np.ndarray | str | Path,
    out: str | Path,
    *,
    kind: str = "auto",
    recall_target: float = 0.9,
    memory_budget_mb: float | None = None,
    k: int = 10,
    seed: int = 0,
    table: pd.DataFrame | None = None,
    meta: dict | None = None,
    side: str = "image",
    threads: int | None = None,
    chunk_rows: int | None = None,
    thumbnails: bool = True,
) -> dict:
    """Build, tune and write an index folder over ``emb`` (its ``side`` vectors); returns ``index.json``.

    ``emb``: an :class:`Embeddings`; float32 ``[N, D]`` L2-normalised rows (then ``table``,
    default a ``row`` column, and ``meta`` describe them); or, streamed from disk and never held
    whole, a ``.npy`` path, ``np.load(path, mmap_mode="r")``, or an embeddings folder's path.
    Every pass reads ``chunk_rows`` rows at a time (default 64 MiB of them): peak memory is the
    index, one chunk and the training sample.  ``kind``: see :data:`KINDS`.  ``thumbnails``: also
    write small JPEGs of the photos (:mod:`exiflang.eval.index.thumbnails`; needs the data folder).
    """
    if kind not in KINDS:
        raise ValueError(f"index kind {kind!r}: expected one of {', '.join(KINDS)}")
    if not 0 < recall_target <= 1 or k <= 0 or side not in ("image", "text"):
        raise ValueError(f"recall target {recall_target} (0..1], k {k} (> 0), side {side!r} (image|text)")
    vec, table, meta = _vectors(emb, side, table, meta)
    n, dim = vec.shape
    used_threads = set_threads(threads)
    t0 = time.perf_counter()
    chosen = choose_kind(n, dim, memory_budget_mb) if kind == "auto" else kind
    query_ids, pool = holdout(n, seed)
    probe = RecallProbe(vec, query_ids, k, in_index=chosen != "hnsw", chunk_rows=chunk_rows)
    try:
        built, tuned = _approximate(vec, chosen, probe, pool, recall_target, memory_budget_mb, seed, chunk_rows)
    except RuntimeError as exc:  # faiss's C++ checks, e.g. too few training points for a kind
        raise ValueError(
            f"faiss could not build a {chosen} index of {n} vectors: {' '.join(str(exc).split())[-200:]}"
        ) from None
    latency = probe.latency_ms(built.index)
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": chosen,
        "requested_kind": kind,
        "params": {**built.params, **tuned["params"]},
        "n": n,
        "dim": dim,
        "metric": "inner_product",
        "k": probe.k,
        "recall_target": recall_target,
        "recall_at_k": tuned["recall"],
        "recall_at_k_lower_95": tuned["recall_lcb"],
        "recall_met": tuned["met"],
        "recall_queries": len(query_ids),
        "recall_method": (
            "held-out rows, kept out of training, "
            + ("leave-one-out" if probe.in_index else "kept out of the graph while tuning")
            + ", against exact inner-product search"
        ),
        "qps_batch": tuned["qps"],
        "latency_ms_batch1": round(latency, 3),
        "tuning_curve": tuned["curve"],
        "memory_budget_mb": memory_budget_mb,
        "threads": used_threads,
        "faiss_version": faiss.__version__,
        "model_signature": meta.get("model_signature"),
        # The grid queries must be embedded with (lookup reads it here first, so an index
        # still answers right after its embeddings folder is moved or deleted).
        "embedding": {k: meta[k] for k in ("patch", "per_side", "mode") if k in meta} or None,
        "sources": {
            "embeddings": meta.get("path"),
            "side": side,
            "model": meta.get("model"),
            "data": meta.get("data"),
            "settings_key": meta.get("settings_key"),
        },
        "created": time.time(),
    }
    info["build_seconds"] = {**built.seconds, "total": round(time.perf_counter() - t0, 3)}
    _write(Path(out), built.index, info, table, thumbnails)
    return info


def _write(out: Path, index: faiss.Index, info: dict, table: pd.DataFrame, thumbnails: bool = True) -> None:
    """Write the three files into a temporary folder beside ``out``, then swap it into place."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "index.json").is_file())):
        raise ValueError(f"{out}: exists and is not an index folder; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        faiss.write_index(index, str(tmp / "index.faiss"))
        info["bytes"] = (tmp / "index.faiss").stat().st_size
        table.to_parquet(tmp / "rows.parquet", index=False)
        if thumbnails:
            write_thumbnails(tmp, table, info["sources"]["data"])
        (tmp / "index.json").write_text(json.dumps(info, indent=2) + "\n")
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
