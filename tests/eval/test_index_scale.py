"""Building an index streamed from disk in chunks equals building it in memory; chunked exact search = IndexFlatIP."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pandas as pd
import pytest

from exiflang.eval.embed.store import TABLE_COLUMNS, load_embeddings
from exiflang.eval.index.build import ArraySource, NpySource, as_source, default_nlist
from exiflang.eval.index.run import VectorIndex, build_index
from exiflang.eval.index.tune import exact_search


def unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n: int, d: int, centres: int, seed: int) -> np.ndarray:
    """Points around ``centres`` fixed random unit centres (the same for every seed), cosine ~0.7 to theirs."""
    rng = np.random.default_rng(seed)
    x = unit(centres, d, 100)[rng.integers(0, centres, n)] + rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_search(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The naive reference: one IndexFlatIP over the whole matrix in memory."""
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    return index.search(queries, k)


@pytest.mark.parametrize("chunk_rows", [3, 7, 256, 2999, 5000])
def test_chunked_exact_search_equals_index_flat(chunk_rows):
    x, q = unit(3000, 24, 0), unit(50, 24, 1)
    sims, ids = exact_search(x, q, 10, chunk_rows=chunk_rows)
    ref_sims, ref_ids = reference_search(x, q, 10)
    assert np.array_equal(ids, ref_ids)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-6)


def test_chunked_exact_search_from_disk_and_padding(tmp_path):
    x, q = unit(40, 8, 2), unit(5, 8, 3)
    np.save(tmp_path / "x.npy", x)
    sims, ids = exact_search(NpySource([tmp_path / "x.npy"]), q, 50, chunk_rows=16)
    ref_sims, ref_ids = reference_search(x, q, 40)
    assert np.array_equal(ids[:, :40], ref_ids) and (ids[:, 40:] == -1).all() and np.isneginf(sims[:, 40:]).all()
    np.testing.assert_allclose(sims[:, :40], ref_sims, atol=1e-6)


def test_sources_read_and_take_like_fancy_indexing(tmp_path):
    x = unit(1000, 16, 4)
    np.save(tmp_path / "a.npy", x[:300])
    np.save(tmp_path / "b.npy", x[300:300])  # an empty part is skipped
    np.save(tmp_path / "c.npy", x[300:].astype(np.float64))  # other float types are cast per chunk
    parts = NpySource([(tmp_path / "a.npy", 300), tmp_path / "b.npy", tmp_path / "c.npy"])
    assert parts.shape == (1000, 16)
    ids = np.random.default_rng(0).integers(0, 1000, 500)  # unsorted, with repeats
    for source in (parts, ArraySource(x)):
        assert np.array_equal(source.take(ids, rows=37), x[ids])
        assert np.array_equal(source.read(250, 350), x[250:350])
        blocks = list(source.chunks(333))
        assert [s for s, _ in blocks] == [0, 333, 666, 999]
        assert np.array_equal(np.concatenate([b for _, b in blocks]), x)
    with pytest.raises(ValueError, match=r"a\.npy: expected float \[299, 16\]"):
        NpySource([(tmp_path / "a.npy", 299)], dim=16)


def test_memory_map_is_read_from_its_file_and_bad_rows_are_named(tmp_path):
    x = unit(100, 8, 5)
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert isinstance(as_source(mapped), NpySource)
    assert isinstance(as_source(mapped[10:]), ArraySource)  # a slice: read through the map
    assert np.array_equal(as_source(mapped[10:]).take(np.array([5, 0])), x[[15, 10]])
    x[42, 3] = np.nan
    np.save(tmp_path / "bad.npy", x)
    with pytest.raises(ValueError, match=r"bad\.npy: vectors contain NaN or infinite values \(row 42\)"):
        build_index(tmp_path / "bad.npy", tmp_path / "idx", chunk_rows=16)
    assert not (tmp_path / "idx").exists()


def test_flat_from_disk_in_small_chunks_is_identical(tmp_path):
    x, q = unit(3000, 32, 0), unit(40, 32, 1)
    np.save(tmp_path / "x.npy", x)
    mem = build_index(x, tmp_path / "mem")
    disk = build_index(tmp_path / "x.npy", tmp_path / "disk", chunk_rows=97)
    assert disk["kind"] == mem["kind"] == "flat" and disk["recall_at_k"] == 1.0
    assert disk["sources"]["embeddings"] == str((tmp_path / "x.npy").resolve())
    assert (tmp_path / "mem" / "index.faiss").read_bytes() == (tmp_path / "disk" / "index.faiss").read_bytes()
    a, b = VectorIndex.load(tmp_path / "mem").search(q, 10), VectorIndex.load(tmp_path / "disk").search(q, 10)
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])


@pytest.mark.parametrize("kind", ["ivf-pq", "hnsw"])
def test_approximate_from_memory_map_in_small_chunks_matches_memory(tmp_path, kind):
    n, d = 12_000, 32
    x, q = clustered(n, d, 200, 0), clustered(200, d, 200, 9)
    np.save(tmp_path / "x.npy", x)
    mem = build_index(x, tmp_path / "mem", kind=kind, threads=1)
    # 1,000-row chunks: 12 per pass, and the 7,680-vector IVF training sample spans all of them.
    disk = build_index(
        np.load(tmp_path / "x.npy", mmap_mode="r"), tmp_path / "disk", kind=kind, threads=1, chunk_rows=1000
    )
    assert disk["recall_met"] and disk["n"] == n
    a, b = VectorIndex.load(tmp_path / "mem"), VectorIndex.load(tmp_path / "disk")
    _, truth = exact_search(x, q, 10)
    if kind == "ivf-pq":
        # Same training rows in the same order, per-vector adds: the same index, byte for byte.
        assert disk["params"] == mem["params"] and disk["recall_at_k"] == mem["recall_at_k"]
        assert faiss.serialize_index(a.index).tobytes() == faiss.serialize_index(b.index).tobytes()
        assert np.array_equal(a.search(q, 10)[1], b.search(q, 10)[1])
    else:
        # An HNSW graph depends on insertion batches; its recall on fresh queries is what must hold.
        recall = [np.mean([len(set(f) & set(t)) / 10 for f, t in zip(ix.search(q, 10)[1], truth)]) for ix in (a, b)]
        assert abs(recall[0] - recall[1]) <= 0.03 and min(recall) >= 0.85


def test_embeddings_folder_streamed_equals_loaded(tmp_path):
    folder, x = tmp_path / "emb", unit(24_000, 8, 6)
    (folder / "parts").mkdir(parents=True)
    key, shards, start = "k1", ["s0", "s1", "s2"], 0
    for stem, rows in zip(shards, (10_000, 0, 14_000)):
        np.save(folder / "parts" / f"{stem}.image.npy", x[start : start + rows])
        table = pd.DataFrame(
            {
                c: [f"{stem}-{i}" for i in range(rows)]
                if c in ("key", "shard", "url", "exif")
                else np.arange(start, start + rows)
                for c in TABLE_COLUMNS
            }
        )
        table.to_parquet(folder / "parts" / f"{stem}.parquet", index=False)
        (folder / "parts" / f"{stem}.done.json").write_text(json.dumps({"rows": rows, "settings_key": key}))
        start += rows
    (folder / "meta.json").write_text(
        json.dumps(
            {
                "format": "exiflang-embeddings",
                "format_version": 1,
                "dim": 8,
                "shards": shards,
                "settings_key": key,
                "complete": True,
            }
        )
    )
    mem = build_index(load_embeddings(folder), tmp_path / "mem", kind="ivf-flat")
    disk = build_index(folder, tmp_path / "disk", kind="ivf-flat", chunk_rows=4096)
    assert disk["params"] == mem["params"] and disk["n"] == 24_000
    assert disk["sources"] == mem["sources"] and disk["recall_at_k"] == mem["recall_at_k"]
    a, b = VectorIndex.load(tmp_path / "mem"), VectorIndex.load(tmp_path / "disk")
    assert a.table.equals(b.table) and b.table["photo_id"].tolist() == list(range(24_000))
    assert faiss.serialize_index(a.index).tobytes() == faiss.serialize_index(b.index).tobytes()
    with pytest.raises(ValueError, match="no text embeddings"):
        build_index(folder, tmp_path / "text", side="text")


def test_nlist_is_capped_above_a_million():
    assert default_nlist(1_000_000, 1_000_000) == 4000
    assert default_nlist(10_000_000, 10_000_000) == 4096
    assert default_nlist(100, 100) == 2
