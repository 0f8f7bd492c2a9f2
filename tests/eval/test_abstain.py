"""Lookup abstention on constructed embeddings: a query inside a cluster of the index is known,
one far from every index photo is not; the reference is the index's own leave-one-out distances."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exiflang.eval.index import abstain
from exiflang.eval.index.run import VectorIndex, build_index

D, CLUSTERS, PER = 16, 4, 60


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(centres [C, D], rows [C*PER, D]): tight clusters all within a narrow cone (raw cosines ~0.99)."""
    base = np.zeros(D)
    base[0] = 1.0
    centres = unit(base + 0.1 * rng.normal(size=(CLUSTERS, D)))
    rows = unit(np.repeat(centres, PER, 0) + 0.01 * rng.normal(size=(CLUSTERS * PER, D)))
    return centres, rows


def test_known_inside_a_cluster_unknown_between_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centres, rows = clustered(rng)
    build_index(rows, tmp_path / "index", kind="flat")
    index = VectorIndex.load(tmp_path / "index")
    fam = abstain.fit(index.index, k=5, candidates=20)
    assert fam is not None and len(fam.reference) == len(rows) and fam.info()["percentile"] == 95.0
    near = unit(np.repeat(centres, 3, 0) + 0.004 * rng.normal(size=(3 * CLUSTERS, D)))  # typical new photos
    far = unit(centres[:2].mean(0, keepdims=True) + 0.03 * rng.normal(size=(8, D)))  # between two cameras
    raw = index.search(far, 1)[0]
    assert raw.min() > 0.97  # raw cosine alone would call them close
    for queries, want in ((near, True), (far, False)):
        _, ids = index.search(queries, fam.candidates)
        dist = abstain.kth_distances(fam, index.index, queries, ids)
        verdicts = [abstain.judge(fam, d) for d in dist]
        assert all(v["known"] is want for v in verdicts), (want, dist, fam.threshold)
        assert all(0 <= v["rank"] <= 100 for v in verdicts)


def test_leave_one_out_excludes_the_photo_itself(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    _, rows = clustered(rng)
    build_index(rows, tmp_path / "index", kind="flat")
    index = VectorIndex.load(tmp_path / "index")
    fam = abstain.fit(index.index, k=1, candidates=10)
    assert fam.reference.min() > 0  # a photo's own distance (0) never counts as its neighbour's


def test_no_reference_answers_known_with_a_reason() -> None:
    v = abstain.judge(None, 3.0)
    assert v["known"] is True and "no reference" in v["reason"]
