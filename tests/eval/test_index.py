"""`exiflang index` and VectorIndex: exact = torch.topk, approximate meets its recall target, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from exiflang.eval.embed.run import embed_shards
from exiflang.eval.embed.store import load_embeddings
from exiflang.eval.index.build import choose_kind, choose_pq_m, estimate_bytes
from exiflang.eval.index.command import main
from exiflang.eval.index.run import NotAnIndex, VectorIndex, build_index
from exiflang.eval.index.tune import exact_search, lower_bound, per_query_recall, recall_at_k, smallest_meeting
from exiflang.train.model import ExifClip, ModelConfig
from exiflang.train.tokenizer import build_tokenizer
from tests.shard_fixtures import synth_shards


def unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(n: int, d: int, centres: int, seed: int) -> np.ndarray:
    """Points around ``centres`` fixed random unit centres (the same for every seed), noise ~ 1/sqrt(2)."""
    rng = np.random.default_rng(seed)
    c = unit(centres, d, 100)
    x = c[rng.integers(0, centres, n)] + rng.standard_normal((n, d), dtype=np.float32) / np.sqrt(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_index_equals_torch_topk(tmp_path):
    x, q = unit(3000, 48, 0), unit(64, 48, 1)
    info = build_index(x, tmp_path / "idx")
    assert info["kind"] == "flat" and info["recall_at_k"] == 1.0 and info["n"] == 3000
    index = VectorIndex.load(tmp_path / "idx")
    sims, ids = index.search(q, 10)
    ref_sims, ref_ids = torch.topk(torch.from_numpy(q) @ torch.from_numpy(x).T, 10, dim=1)
    assert ids.dtype == np.int64 and sims.dtype == np.float32 and ids.shape == (64, 10)
    assert np.array_equal(ids, ref_ids.numpy())
    np.testing.assert_allclose(sims, ref_sims.numpy(), atol=1e-5)
    assert list(index.table["row"][:3]) == [0, 1, 2]


def test_fewer_results_than_k_are_padded(tmp_path):
    build_index(unit(5, 8, 0), tmp_path / "idx")
    sims, ids = VectorIndex.load(tmp_path / "idx").search(unit(2, 8, 1), 8)
    assert (ids[:, 5:] == -1).all() and np.isneginf(sims[:, 5:]).all() and (ids[:, :5] >= 0).all()
    with pytest.raises(ValueError, match=r"expected \[Q, 8\]"):
        VectorIndex.load(tmp_path / "idx").search(unit(2, 9, 1), 3)


@pytest.mark.parametrize("kind,data", [("ivf-flat", "uniform"), ("hnsw", "uniform"), ("ivf-pq", "clustered")])
def test_approximate_index_meets_recall_target_on_fresh_queries(tmp_path, kind, data):
    n, d = 12_000, 32
    x = unit(n, d, 0) if data == "uniform" else clustered(n, d, 200, 0)
    fresh = unit(400, d, 7) if data == "uniform" else clustered(400, d, 200, 7)
    info = build_index(x, tmp_path / kind, kind=kind, recall_target=0.9)
    assert info["kind"] == kind and info["recall_met"] and info["recall_at_k_lower_95"] >= 0.9
    assert info["tuning_curve"] and info["bytes"] > 0 and info["qps_batch"] > 0
    index = VectorIndex.load(tmp_path / kind)
    _, truth = exact_search(x, fresh, 10)
    _, found = index.search(fresh, 10)
    # Queries the tuning never saw meet the target too (up to the noise of 400 queries).
    assert recall_at_k(found, truth) >= 0.89
    # The tuned parameters are saved with the index and restored on load.
    param = {"ivf-flat": "nprobe", "ivf-pq": "nprobe", "hnsw": "efSearch"}[kind]
    assert param in info["params"]
    if kind != "hnsw":
        import faiss

        assert faiss.extract_index_ivf(index.index).nprobe == info["params"]["nprobe"]
        assert faiss.extract_index_ivf(index.index).nprobe < faiss.extract_index_ivf(index.index).nlist


def test_kind_rules():
    assert choose_kind(49_999, 768) == "flat"
    assert choose_kind(100_000, 768) == "ivf-flat"
    assert choose_kind(100_000, 768, memory_budget_mb=1000) == "ivf-flat"
    assert choose_kind(1_000_000, 768, memory_budget_mb=1000) == "ivf-pq"
    m = choose_pq_m(1_000_000, 768, 4000, 200)
    assert 768 % m == 0 and estimate_bytes("ivf-pq", 1_000_000, 768, nlist=4000, m=m) <= 200 * 2**20
    fitting = [
        c
        for c in range(1, 768 // 4 + 1)
        if 768 % c == 0 and estimate_bytes("ivf-pq", 10**6, 768, nlist=4000, m=c) <= 200 * 2**20
    ]
    assert m == max(fitting) < 192
    with pytest.raises(ValueError, match="memory budget 5 MB is too small"):
        choose_pq_m(1_000_000, 768, 4000, 5)


def test_smallest_meeting_matches_linear_scan():
    ladder = tuple(range(1, 41))
    for threshold in (0.0, 0.3, 0.55, 0.99, 1.01):
        calls: list[int] = []

        def score(v: int, calls: list[int] = calls) -> float:
            calls.append(v)
            return v / 40

        got = smallest_meeting(score, ladder, threshold)
        ref = next((i for i, v in enumerate(ladder) if v / 40 >= threshold), None)
        assert got == ref and len(calls) <= 12


def test_recall_at_k():
    truth, found = np.array([[1, 2, 3], [4, 5, -1]]), np.array([[3, 2, 9], [5, -1, -1]])
    assert recall_at_k(found, truth) == pytest.approx(3 / 5)
    per = per_query_recall(found, truth)
    assert per.tolist() == pytest.approx([2 / 3, 1 / 2])
    assert lower_bound(per) == pytest.approx(per.mean() - 1.645 * per.std(ddof=1) / np.sqrt(2))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    """Six synthetic photos in two shards, a random cpu-small model, and their text+image embeddings."""
    root = tmp_path_factory.mktemp("index")
    synth_shards(root, cameras=2, images=6, rows_per_shard=3, seed=2, size=(256, 288), bare=True)
    tags = json.loads((root / "shards" / "tags.json").read_text())
    tok = build_tokenizer("auto", None, max_length=64)
    models = {}
    for name, dim, vocab in (
        ("model", 128, tags),
        ("other_tags", 128, {**tags, "tags": tags["tags"][:-1]}),
        ("other_dim", 64, tags),
    ):
        torch.manual_seed(0)
        net = ExifClip(ModelConfig.preset("cpu-small", vocab_size=len(tok), embed_dim=dim))
        models[name] = net.save_pretrained(root / name, tok, vocab)
    emb = embed_shards(
        models["model"], root / "shards", root / "emb", patch=64, per_side=2, text=True, progress=False, device="cpu"
    )
    return {"root": root, "emb": emb, **models}


def test_cli_builds_from_embeddings_and_checks_models(small, tmp_path, capsys):
    out = tmp_path / "idx"
    assert main(["--emb", str(small["emb"]), "--out", str(out)]) == 0
    assert "flat index of 6 vectors (128-d; exact)" in capsys.readouterr().out
    index = VectorIndex.load(out)
    emb = load_embeddings(small["emb"])
    assert index.table.equals(emb.table) and index.info["sources"]["side"] == "image"
    _, ids = index.search(emb.image[:2], 1)
    assert ids[:, 0].tolist() == [0, 1]
    index.check_model(small["model"])
    with pytest.raises(ValueError, match=r"other_tags/tags\.json: tag vocabulary hash .* does not match .*index\.json"):
        index.check_model(small["other_tags"])
    with pytest.raises(ValueError, match=r"other_dim/config\.json: embedding dimension 64 does not match"):
        index.check_model(small["other_dim"])
    assert main(["--emb", str(small["emb"]), "--out", str(tmp_path / "text"), "--text"]) == 0
    text = VectorIndex.load(tmp_path / "text")
    assert text.info["sources"]["side"] == "text"
    np.testing.assert_allclose(text.search(emb.text[:1], 1)[0][0, 0], 1.0, atol=1e-5)


def test_bad_index_folders_are_one_line_errors(small, tmp_path, capsys):
    out = tmp_path / "idx"
    build_index(load_embeddings(small["emb"]), out)
    with pytest.raises(NotAnIndex, match=r"nope/index\.json: missing \(not an index folder"):
        VectorIndex.load(tmp_path / "nope")
    faiss_file = out / "index.faiss"
    good = faiss_file.read_bytes()
    for broken in (b"this is not a faiss index at all", good[: len(good) // 2]):
        faiss_file.write_bytes(broken)
        with pytest.raises(ValueError, match=r"index\.faiss: not a readable FAISS index") as err:
            VectorIndex.load(out)
        assert "\n" not in str(err.value)
    faiss_file.write_bytes(good)
    info = json.loads((out / "index.json").read_text())
    (out / "index.json").write_text(json.dumps({**info, "n": 7}))
    with pytest.raises(ValueError, match=r"index\.faiss: holds 6 vectors of 128 dimensions, index\.json says 7"):
        VectorIndex.load(out)
    (out / "index.json").write_text("{")
    with pytest.raises(ValueError, match=r"index\.json: not valid JSON"):
        VectorIndex.load(out)
    # The command: no embeddings, and a text index from image-only embeddings.
    assert main(["--emb", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "meta.json: missing" in capsys.readouterr().err
    image_only = embed_shards(
        small["model"],
        small["root"] / "shards",
        tmp_path / "emb_img",
        patch=64,
        per_side=2,
        progress=False,
        device="cpu",
        limit=2,
    )
    assert main(["--emb", str(image_only), "--out", str(tmp_path / "y"), "--text"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no text embeddings" in err and "\n" not in err
    assert main(["--emb", str(small["emb"]), "--out", str(small["root"] / "shards")]) == 2
    assert "not an index folder; refusing" in capsys.readouterr().err
