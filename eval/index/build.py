"""Which FAISS index to build for N vectors and a memory budget, and building it from vectors read in chunks.

Rules (:func:`choose_kind`, ``kind="auto"``):

- ``N < EXACT_MAX`` (50,000): ``flat`` — ``IndexFlatIP``, exact inner product (= cosine on
  L2-normalised rows).  At 50k x 768 a batched exact search still answers thousands of queries
  per second on 2 cores, and nothing can be wrong with it.
- otherwise ``ivf-flat`` — ``IndexIVFFlat`` (full vectors in inverted lists) when its estimated
  size fits ``memory_budget_mb`` (or no budget is given);
- otherwise ``ivf-pq`` — ``IndexIVFPQ`` with the largest number of 8-bit sub-quantizers ``m``
  (a divisor of D, at least 4 dims each) whose codes fit the budget; when PQ alone cannot reach
  the recall target a re-ranking stage (``IndexRefine``: 8-bit scalar-quantized copies, or
  full vectors) is added if it fits (:mod:`exiflang.eval.index.tune` decides).
- ``hnsw`` (``IndexHNSWFlat``, M=32) only when asked: its graph costs memory and a long build
  (hours for millions of 768-d vectors on 2 cores), for low single-query latency.

IVF lists: ``nlist = round(4 * sqrt(N))``, at most ``NLIST_MAX`` (4096) and at most one list
per 40 training vectors; the coarse quantizer is k-means (10 iterations) on a random sample of
``min(pool, 40 * nlist)`` vectors drawn from the *training pool* — every vector except the
held-out tuning queries — so the queries that later measure recall never shaped the clustering.
The cap binds above ~1M vectors: assigning an added vector to its list costs ``nlist * D``
multiply-adds: on this project's 2-core CPU, 100k x 128 vectors took 6.8 s against 4√N =
12,649 centroids and 3.1 s against 4096 (11 against 5 minutes per 10M; docs/index_scale.md).

Vectors come from a :class:`VectorSource`: an array in memory (:class:`ArraySource`) or float
``.npy`` files read with plain file reads (:class:`NpySource`: one file, or an embeddings
folder's parts).  Every step reads it a chunk at a time (``CHUNK_BYTES``, 64 MiB: 131,072 rows
at D = 128), so building from disk holds the index, one chunk and the training sample — never
the N x D matrix.  File reads, not a memory map, so the pages read stay out of this process's
resident memory (a mapped file counts in RSS as it is touched).  The training sample is the
same rows in the same order from either source, and IVF/flat adds are per vector, so an index
built from a file is identical to one built from the same array in memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

KINDS = ("auto", "flat", "ivf-flat", "ivf-pq", "hnsw")
EXACT_MAX = 50_000
TRAIN_PER_LIST = 40  # faiss warns below 39 points per centroid
KMEANS_ITERS = 10
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
PQ_TRAIN = 32_768  # PQ codebooks: 256 centroids x 128 points
ID_BYTES = 8  # an inverted list stores an int64 id per vector
NLIST_MAX = 4096  # see the module docstring: the cost of assigning each added vector
CHUNK_BYTES = 64 * 2**20  # float32 rows read per step of a pass over a source


@dataclass
class Built:
    """A populated index and how it was made (``params`` and ``seconds`` go into ``index.json``)."""

    index: faiss.Index
    kind: str
    params: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def default_nlist(n: int, pool: int) -> int:
    """``round(4 * sqrt(n))``, at least 1, at most ``NLIST_MAX`` and ``pool // TRAIN_PER_LIST``."""
    return int(max(1, min(round(4 * math.sqrt(max(n, 1))), NLIST_MAX, pool // TRAIN_PER_LIST)))


def pq_m_choices(dim: int) -> list[int]:
    """Divisors of ``dim`` usable as PQ sub-quantizer counts, largest first."""
    return [m for m in range(dim, 0, -1) if dim % m == 0]


def estimate_bytes(kind: str, n: int, dim: int, *, nlist: int = 0, m: int = 0, refine: str = "") -> int:
    """Approximate in-memory size of an index (vectors, codes, ids, centroids, graph)."""
    centroids = nlist * dim * 4
    if kind == "flat":
        return n * dim * 4
    if kind == "ivf-flat":
        return n * (dim * 4 + ID_BYTES) + centroids
    if kind == "ivf-pq":
        extra = {"": 0, "sq8": dim, "flat": dim * 4}[refine]
        return n * (m + ID_BYTES + extra) + centroids + 256 * dim * 4
    if kind == "hnsw":
        return int(n * (dim * 4 + 2 * HNSW_M * 4 * 1.1))
    raise ValueError(f"index kind {kind!r}: expected one of {KINDS}")


def choose_kind(n: int, dim: int, memory_budget_mb: float | None = None) -> str:
    """The ``auto`` rule of the module docstring."""
    if n < EXACT_MAX:
        return "flat"
    nlist = default_nlist(n, n)
    if memory_budget_mb is None or estimate_bytes("ivf-flat", n, dim, nlist=nlist) <= memory_budget_mb * 2**20:
        return "ivf-flat"
    return "ivf-pq"


def choose_pq_m(n: int, dim: int, nlist: int, memory_budget_mb: float | None) -> int:
    """The largest sub-quantizer count (at most ``D/4``) whose codes fit the budget; ``D/8``
    without a budget.  (Fewer than 4 dimensions per sub-quantizer trains slowly for little gain.)"""
    choices = [m for m in pq_m_choices(dim) if m <= max(dim // 4, 1)]
    if memory_budget_mb is None:
        return next(m for m in choices if m <= max(dim // 8, 1))
    budget = memory_budget_mb * 2**20
    for m in choices:
        if estimate_bytes("ivf-pq", n, dim, nlist=nlist, m=m) <= budget:
            return m
    need = estimate_bytes("ivf-pq", n, dim, nlist=nlist, m=choices[-1]) / 2**20
    raise ValueError(
        f"memory budget {memory_budget_mb} MB is too small for {n} vectors of {dim} "
        f"dimensions (the smallest IVF-PQ needs about {need:.0f} MB)"
    )


def _checked(block: np.ndarray, start: int, where: str) -> np.ndarray:
    """``block`` (rows ``start..``) unchanged, or a one-line ``ValueError`` naming its first bad row."""
    finite = np.isfinite(block)
    if not finite.all():
        row = start + int(np.flatnonzero(~finite.all(axis=1))[0])
        raise ValueError(f"{where}vectors contain NaN or infinite values (row {row})")
    return block


class VectorSource:
    """float32 ``[N, D]`` rows handed out a chunk at a time; subclasses implement :meth:`read`."""

    shape: tuple[int, int]

    def __len__(self) -> int:
        return int(self.shape[0])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start..stop-1`` as a new C-contiguous float32 ``[stop - start, D]`` array."""
        raise NotImplementedError

    def chunk_rows(self, rows: int | None = None) -> int:
        """``rows``, or as many rows as fit ``CHUNK_BYTES`` (at least 1)."""
        return int(rows) if rows else max(1, CHUNK_BYTES // (4 * max(self.shape[1], 1)))

    def chunks(self, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, float32 [<= rows, D])`` blocks covering all rows in order."""
        step = self.chunk_rows(rows)
        for s in range(0, len(self), step):
            yield s, self.read(s, min(len(self), s + step))

    def take(self, ids: np.ndarray, rows: int | None = None) -> np.ndarray:
        """float32 ``[len(ids), D]``: the rows ``ids`` (any order, repeats allowed).

        The sorted ids are read window by window (one read of at most ``rows`` rows from the
        first id of a window to its last), so a sparse sample costs one pass and one chunk.
        """
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        sids = ids[order]
        out = np.empty((len(ids), self.shape[1]), dtype=np.float32)
        step, pos = self.chunk_rows(rows), 0
        while pos < len(sids):
            first = int(sids[pos])
            end = int(np.searchsorted(sids, first + step, side="left"))
            block = self.read(first, int(sids[end - 1]) + 1)
            out[order[pos:end]] = block[sids[pos:end] - first]
            pos = end
        return out


class ArraySource(VectorSource):
    """An array (or a memory map, read by slicing) as a :class:`VectorSource`."""

    def __init__(self, array: np.ndarray) -> None:
        self.mapped = isinstance(array, np.memmap)
        if np.ndim(array) != 2:
            raise ValueError(f"vectors of shape {list(np.shape(array))}: expected a non-empty [N, D] array")
        if not self.mapped:  # already in memory: convert and check once
            array = _checked(np.ascontiguousarray(array, dtype=np.float32), 0, "")
        self.array, self.shape = array, (int(array.shape[0]), int(array.shape[1]))

    def read(self, start: int, stop: int) -> np.ndarray:
        block = np.ascontiguousarray(self.array[start:stop], dtype=np.float32)
        return _checked(block, start, "") if self.mapped else block

    def take(self, ids: np.ndarray, rows: int | None = None) -> np.ndarray:
        if self.mapped:
            return super().take(ids, rows)
        return np.ascontiguousarray(self.array[np.asarray(ids, dtype=np.int64)])


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset in bytes)`` of a C-order ``.npy`` file; one-line ``ValueError``."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in header:
                raise ValueError(f".npy format version {version} (1.0 or 2.0 expected)")
            shape, fortran, dtype = header[version](fh)
            offset = fh.tell()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable .npy array ({' '.join(str(exc).split())})") from None
    if fortran or dtype.kind != "f":
        raise ValueError(f"{path}: expected a C-order float array, found {dtype} (fortran order: {fortran})")
    return tuple(shape), dtype, offset


class NpySource(VectorSource):
    """The rows of one or more float ``.npy`` files (concatenated in order), read with file reads.

    ``files``: paths, or ``(path, rows)`` pairs whose row counts are checked against the headers.
    """

    def __init__(self, files: Sequence[str | Path | tuple], dim: int | None = None) -> None:
        self.parts: list[tuple[Path, int, np.dtype, int]] = []  # (path, offset, dtype, first row)
        total = 0
        for item in files:
            path, expect = (Path(item[0]), int(item[1])) if isinstance(item, tuple) else (Path(item), None)
            shape, dtype, offset = npy_header(path)
            if len(shape) != 2 or (expect is not None and shape[0] != expect) or (dim and shape[1] != dim):
                raise ValueError(
                    f"{path}: expected float [{expect if expect is not None else 'N'}, "
                    f"{dim or 'D'}], found {dtype} {list(shape)}"
                )
            dim = dim or shape[1]
            self.parts.append((path, offset, dtype, total))
            total += shape[0]
        self.starts = np.array([p[3] for p in self.parts] + [total], dtype=np.int64)
        self.shape = (total, int(dim or 0))

    def read(self, start: int, stop: int) -> np.ndarray:
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"rows {start}..{stop - 1} of {len(self)}")
        out = np.empty((stop - start, self.shape[1]), dtype=np.float32)
        first = max(0, int(np.searchsorted(self.starts, start, side="right")) - 1)
        for i in range(first, len(self.parts)):
            path, offset, dtype, lo = self.parts[i]
            a, b = max(start, lo), min(stop, int(self.starts[i + 1]))
            if a >= stop:
                break
            if a < b:
                self._read_part(
                    path, offset + (a - lo) * self.shape[1] * dtype.itemsize, dtype, out[a - start : b - start]
                )
        return _checked(out, start, f"{self.parts[0][0] if len(self.parts) == 1 else 'embeddings parts'}: ")

    @staticmethod
    def _read_part(path: Path, at: int, dtype: np.dtype, into: np.ndarray) -> None:
        with open(path, "rb") as fh:
            fh.seek(at)
            if dtype == np.float32:  # straight into the output: no temporary
                # An ndarray is a buffer; numpy's stubs declare __buffer__ only for Python >= 3.12.
                got = fh.readinto(memoryview(into).cast("B"))  # type: ignore[arg-type]
                ok = got == into.nbytes
            else:
                block = np.fromfile(fh, dtype=dtype, count=into.size)
                ok = block.size == into.size
                if ok:
                    into[...] = block.reshape(into.shape)
        if not ok:
            raise ValueError(f"{path}: truncated (fewer rows than its header says)")


def as_source(vectors: np.ndarray | VectorSource | str | Path) -> VectorSource:
    """A :class:`VectorSource` for an array, a ``.npy`` path, or a memory map of a whole ``.npy``
    (``np.load(path, mmap_mode="r")``: read from its file, so its pages stay out of RSS)."""
    if isinstance(vectors, VectorSource):
        return vectors
    if isinstance(vectors, (str, Path)):
        return NpySource([vectors])
    if isinstance(vectors, np.memmap) and vectors.filename and vectors.flags.c_contiguous:
        try:
            shape, dtype, offset = npy_header(Path(vectors.filename))
        except (OSError, ValueError):
            shape, dtype, offset = (), None, -1
        # A slice keeps its parent's filename and offset: only the whole array matches the header.
        if shape == vectors.shape and dtype == vectors.dtype and offset == vectors.offset:
            return NpySource([vectors.filename])
    return ArraySource(vectors)


def _train_sample(vectors: VectorSource, pool: np.ndarray, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(pool, size=min(size, len(pool)), replace=False))
    return vectors.take(pick)


def _reserve_codes(index: faiss.Index, n: int) -> None:
    """Give an empty flat-codes index (``IndexFlatIP``, ``IndexScalarQuantizer``) room for ``n`` codes.

    Adding chunk by chunk grows its code vector by doubling, and each regrowth holds the old and
    the new copy at once: 10M sq8 codes (1.2 GiB) peaked ~2x that.  Resizing to the full size
    and back to 0 keeps the capacity, so the adds never reallocate.
    """
    codes = getattr(index, "codes", None)
    if index.ntotal == 0 and codes is not None and hasattr(codes, "resize") and hasattr(index, "code_size"):
        codes.resize(n * index.code_size)
        codes.resize(0)


def _add(index: faiss.Index, vectors: VectorSource, chunk: int | None = None) -> None:
    """Add in chunks: reading from disk, and a large ``add`` builds large temporaries (assignments, codes)."""
    _reserve_codes(index, len(vectors))
    for _, block in vectors.chunks(chunk):
        index.add(block)


def add_rows(index: faiss.Index, vectors: np.ndarray | VectorSource, rows: np.ndarray, chunk: int = 65_536) -> None:
    """Add ``vectors[rows]`` under their row ids (an ``IndexIDMap``), in chunks."""
    vectors = as_source(vectors)
    for s in range(0, len(rows), chunk):
        ids = np.ascontiguousarray(rows[s : s + chunk], dtype=np.int64)
        index.add_with_ids(vectors.take(ids), ids)


def _untrained_ivf(
    kind: str, n: int, dim: int, pool: int, memory_budget_mb: float | None, seed: int
) -> tuple[faiss.Index, dict, int]:
    """An empty IVF-Flat / IVF-PQ index for ``n`` vectors, its parameters and its training-sample size."""
    metric = faiss.METRIC_INNER_PRODUCT
    nlist = default_nlist(n, pool)
    quantizer = faiss.IndexFlatIP(dim)
    size = TRAIN_PER_LIST * nlist
    params: dict[str, int] = {}
    index: faiss.IndexIVF
    if kind == "ivf-flat":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
    else:
        size = max(size, PQ_TRAIN)
        m = choose_pq_m(n, dim, nlist, memory_budget_mb)
        # 256 centroids per sub-quantizer need >= 256 training points; tiny sets get fewer bits.
        nbits = int(min(8, max(1, np.log2(max(min(size, pool) // 4, 2)))))
        ivfpq = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, metric)
        params.update(m=m, nbits=nbits)
        ivfpq.pq.cp.min_points_per_centroid = 1
        ivfpq.pq.cp.niter = KMEANS_ITERS
        index = ivfpq
    index.cp.niter = KMEANS_ITERS
    index.cp.seed = seed
    # The sample sizes above are chosen on purpose; faiss's "too few points" warning is noise.
    index.cp.min_points_per_centroid = 1
    return index, {**params, "nlist": nlist}, size


def build(
    vectors: np.ndarray | VectorSource,
    kind: str,
    pool: np.ndarray,
    *,
    memory_budget_mb: float | None = None,
    seed: int = 0,
    chunk_rows: int | None = None,
) -> Built:
    """Construct, train (on a sample of ``pool`` row ids) and fill an index of ``kind`` (not ``auto``).

    ``vectors``: float32 ``[N, D]`` rows, L2-normalised, or a :class:`VectorSource` of them (read
    ``chunk_rows`` rows at a time).  ``pool``: int64 row ids that may be used for training (the
    caller keeps its tuning queries out).  HNSW gets only the ``pool`` rows here; the caller adds
    the others with :func:`add_rows` once it has tuned.
    """
    vectors = as_source(vectors)
    n, dim = vectors.shape
    metric = faiss.METRIC_INNER_PRODUCT
    t0 = time.perf_counter()
    params: dict = {}
    index: faiss.Index
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        graph = faiss.IndexHNSWFlat(dim, HNSW_M, metric)
        graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index = faiss.IndexIDMap2(graph)  # rows are added out of order (tuning queries last)
        params.update(hnsw_m=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION)
    elif kind in ("ivf-flat", "ivf-pq"):
        index, params, size = _untrained_ivf(kind, n, dim, len(pool), memory_budget_mb, seed)
        sample = _train_sample(vectors, pool, size, seed)
        index.train(sample)
        params.update(train_size=len(sample))
        del sample  # not held while adding
    else:
        raise ValueError(f"index kind {kind!r}: expected one of {KINDS[1:]}")
    t1 = time.perf_counter()
    if kind == "hnsw":
        add_rows(index, vectors, pool)  # the tuning queries join after tuning (exiflang.eval.index.tune)
    else:
        _add(index, vectors, chunk_rows)
    t2 = time.perf_counter()
    return Built(index, kind, params, {"train": round(t1 - t0, 3), "add": round(t2 - t1, 3)})


def add_refine(
    built: Built,
    vectors: np.ndarray | VectorSource,
    pool: np.ndarray,
    how: str,
    seed: int = 0,
    chunk_rows: int | None = None,
) -> Built:
    """Wrap a filled IVF-PQ in ``IndexRefine`` over ``sq8`` (8-bit scalar) or ``flat`` copies."""
    vectors = as_source(vectors)
    dim = vectors.shape[1]
    t0 = time.perf_counter()
    refine: faiss.Index
    if how == "flat":
        refine = faiss.IndexFlatIP(dim)
    else:
        refine = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        refine.train(_train_sample(vectors, pool, 65_536, seed))
    _add(refine, vectors, chunk_rows)
    wrapped = faiss.IndexRefine(built.index, refine)
    seconds = {**built.seconds, "refine": round(time.perf_counter() - t0, 3)}
    return Built(wrapped, built.kind, {**built.params, "refine": how}, seconds)
