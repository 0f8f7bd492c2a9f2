"""`exiflang embed` under torchrun (2 CPU ranks) equals one process, resumes per part; `--images` equals shards."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from exiflang.eval.embed.command import main
from exiflang.eval.embed.distributed import assign
from exiflang.eval.embed.run import embed_shards
from exiflang.eval.embed.store import load_embeddings, part_paths
from exiflang.eval.index.command import main as index_main
from exiflang.eval.index.lookup import lookup_photos
from exiflang.pipeline import build_shards
from exiflang.pipeline.synth import corpus as synth
from tests.eval.test_embed import make_model

REPO = Path(__file__).resolve().parents[2]
# Small grids and batches keep the random cpu-small model fast; batch 8 = two photos' 2x2 grids,
# so every part holds several forward batches.
GRID = {"patch": 64, "per_side": 2, "batch_size": 8}
PER_SHARD = 4
FILES = ("image.npy", "text.npy", "parquet")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """14 synthetic photos (in a sub-folder too), their shards (4, 4, 4, 2 samples), a random model,
    and their one-process embedding (the reference)."""
    root = tmp_path_factory.mktemp("embed_dist")
    photos = root / "photos"
    assert (
        synth.main(
            [
                "--out",
                str(photos),
                "--cameras",
                "3",
                "--images",
                "14",
                "--seed",
                "2",
                "--min-size",
                "200",
                "--max-size",
                "260",
                "--no-progress",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    (photos / "sub").mkdir()
    for jpg in sorted(photos.glob("*.jpg"))[:3]:  # keys are paths below the folder, walked depth-first
        jpg.rename(photos / "sub" / jpg.name)
    assert (
        build_shards.main(
            [
                "--source",
                str(photos),
                "--out",
                str(root / "shards"),
                "--executor",
                "local",
                "--rows-per-shard",
                str(PER_SHARD),
                "--workers",
                "1",
                "-q",
            ]
        )
        == 0
    )
    sizes = json.loads((root / "shards" / "sizes.json").read_text())
    assert sorted(sizes.values()) == [2, 4, 4, 4]  # every photo kept: parts and shards line up
    model = make_model(root / "model", json.loads((root / "shards" / "tags.json").read_text()))
    one = embed_shards(model, root / "shards", root / "one", text=True, device="cpu", progress=False, **GRID)
    return {"root": root, "photos": photos, "shards": root / "shards", "model": model, "one": one}


def torchrun(corpus: dict, out: Path, *extra: str, ok: bool = True) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m exiflang embed ...` on the CPU (gloo), as a user runs it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        "-m",
        "exiflang",
        "embed",
        "--model",
        str(corpus["model"]),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--patch-size",
        str(GRID["patch"]),
        "--per-side",
        str(GRID["per_side"]),
        "--batch-size",
        str(GRID["batch_size"]),
        "--no-progress",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, timeout=300, capture_output=True, text=True, cwd=REPO)
    assert (res.returncode == 0) == ok, res.stderr[-3000:]
    return res


def assert_same_output(a: Path, b: Path) -> None:
    """Byte-identical part files, the same rows, and meta.json equal but for its timestamps."""
    meta_a, meta_b = (json.loads((d / "meta.json").read_text()) for d in (a, b))
    assert meta_a["complete"] and meta_b["complete"]
    for stem in meta_a["shards"]:
        for name in FILES:
            pa, pb = (d / "parts" / f"{stem}.{name}" for d in (a, b))
            assert pa.read_bytes() == pb.read_bytes(), pa.name
    ea, eb = load_embeddings(a), load_embeddings(b)
    assert np.array_equal(ea.image, eb.image) and np.array_equal(ea.text, eb.text)
    assert ea.table.equals(eb.table)
    for meta in (meta_a, meta_b):
        for moment in ("created", "finished"):
            meta.pop(moment)
    assert meta_a == meta_b


def test_assignment_is_balanced_and_deterministic():
    assert assign([4, 4, 4, 2], 2) == [0, 1, 0, 1]
    assert assign([1, 9, 1, 1], 2) == [1, 0, 1, 1]  # the big part alone on one rank
    assert assign([5, 5], 3) == [0, 1] and assign([], 2) == []


@pytest.mark.integration
def test_two_ranks_equal_one_process_and_resume_redoes_only_the_lost_part(corpus, tmp_path):
    out = tmp_path / "two"
    res = torchrun(corpus, out, "--data", str(corpus["shards"]), "--text")
    assert_same_output(corpus["one"], out)
    assert res.stdout.count("embedded 14 photos from 4 shards") == 2  # each rank reports the finished run
    # Lose one part (as if its rank died writing it): the rerun redoes that part and nothing else.
    lost = part_paths(out, "00002")
    lost["done"].unlink()
    lost["image"].write_bytes(b"half-written")
    kept = {s: part_paths(out, s)["done"].stat().st_mtime_ns for s in ("00000", "00001", "00003")}
    torchrun(corpus, out, "--data", str(corpus["shards"]), "--text")
    assert {s: part_paths(out, s)["done"].stat().st_mtime_ns for s in kept} == kept
    assert lost["done"].is_file()
    assert_same_output(corpus["one"], out)


@pytest.mark.integration
def test_rank_zero_refusal_reaches_every_rank(corpus, tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    res = torchrun(corpus, junk, "--data", str(corpus["shards"]), ok=False)
    line = f"exiflang embed: error: {junk}: not empty and not an embeddings folder"
    assert res.stderr.count(line) == 2  # both ranks end with rank 0's one-line error, none hangs
    assert sorted(p.name for p in junk.iterdir()) == ["notes.txt"]


@pytest.mark.integration
def test_limit_is_refused_under_torchrun(corpus, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "WORLD_SIZE": "2",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "exiflang",
            "embed",
            "--model",
            str(corpus["model"]),
            "--data",
            str(corpus["shards"]),
            "--out",
            str(tmp_path / "e"),
            "--limit",
            "3",
        ],
        env=env,
        timeout=120,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert res.returncode == 2 and "--limit 3: not available under torchrun" in res.stderr
    assert not (tmp_path / "e").exists()


def test_photo_folder_equals_its_shards(corpus, tmp_path):
    out = tmp_path / "folder"
    argv = [
        "--model",
        str(corpus["model"]),
        "--images",
        str(corpus["photos"]),
        "--out",
        str(out),
        "--per-part",
        str(PER_SHARD),
        "--text",
        "--device",
        "cpu",
        "--no-progress",
        "--patch-size",
        str(GRID["patch"]),
        "--per-side",
        str(GRID["per_side"]),
        "--batch-size",
        str(GRID["batch_size"]),
    ]
    assert main(argv) == 0
    folder, shards = load_embeddings(out), load_embeddings(corpus["one"])
    # The shard builder stored the photos' own bytes: same pixels, grid, parts and batches -> same floats.
    assert np.array_equal(folder.image, shards.image)
    for col in ("url", "width", "height", "exif", "n_tags"):
        assert folder.table[col].tolist() == shards.table[col].tolist(), col
    assert folder.table["key"].tolist() == [
        Path(u).relative_to(corpus["photos"]).as_posix() for u in shards.table["url"]
    ]
    assert folder.meta["shards"] == ["images-00000", "images-00001", "images-00002", "images-00003"]
    # Text vectors: the same rendered EXIF ("paper" format does not depend on the key).
    assert np.array_equal(folder.text, shards.text)
    # Usable by `exiflang index` and `lookup`: a photo finds itself, by its path.
    assert index_main(["--emb", str(out), "--out", str(tmp_path / "idx"), "--kind", "flat"]) == 0
    photo = Path(folder.table["url"].iloc[5])
    found = lookup_photos(corpus["model"], tmp_path / "idx", [photo], k=1, device="cpu")[0]
    assert found["neighbours"][0]["key"] == folder.table["key"].iloc[5]
    assert found["neighbours"][0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    # A changed folder is another listing: refused, not mixed into the old parts.
    (corpus["photos"] / "late.jpg").write_bytes(photo.read_bytes())
    try:
        assert main(argv) == 2
    finally:
        (corpus["photos"] / "late.jpg").unlink()
