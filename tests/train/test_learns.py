"""Issue 3, "It must learn": `cpu-small` training of a few minutes on the synthetic camera corpus
reaches held-out image -> EXIF-text camera retrieval well above chance (top-1 >= 3x chance).

End to end with fixed seeds: synth corpus -> split by image index into train / held-out folders
(same cameras, different photos) -> shards -> `exiflang train --config cpu-small` -> camera top-1
of the saved model on the held-out shards.  Not timed; about 4-5 minutes on 2 CPU cores.

The split folders hold symlinks named by image index, so the shard builder's sorted file order
(and with it each shard's content) mixes the cameras the way a real photo stream does; shards of
one or two cameras (a folder sorted by camera) leave the loader's bounded shuffle buffer batches
with nothing to contrast.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from pipeline import build_shards, synth
from train.main import main as train_main
from train.model import ExifClip
from train.retrieval import camera_top1

K = 8              # cameras; chance = 1/K
N = 1600           # images; the last 10 % (by index) are held out
N_TRAIN = 1440
STEPS = 800


@pytest.mark.slow
def test_cpu_small_learns_camera_traces(tmp_path: Path) -> None:
    corpus = tmp_path / "synth"
    assert synth.main(["--out", str(corpus), "--cameras", str(K), "--images", str(N),
                       "--seed", "0", "--no-progress", "--workers", "2"]) == 0
    rows = list(csv.DictReader((corpus / "manifest.csv").open()))
    assert len(rows) == N
    for split in ("train", "heldout"):
        (tmp_path / split).mkdir()
    for r in rows:
        i = int(r["index"])
        split = "train" if i < N_TRAIN else "heldout"
        (tmp_path / split / f"img{i:06d}.jpg").symlink_to(corpus / r["file"])
    # Both splits see every camera: the held-out question is "which of the K", not a new camera.
    assert {r["camera"] for r in rows[:N_TRAIN]} == {r["camera"] for r in rows[N_TRAIN:]} \
        == {str(c) for c in range(K)}
    for split, per_shard in (("train", 200), ("heldout", 1000)):
        assert build_shards.main(["--source", str(tmp_path / split), "--out", str(tmp_path / f"{split}_sh"),
                                  "--executor", "local", "--rows-per-shard", str(per_shard), "-q"]) == 0

    run = tmp_path / "run"
    torch.manual_seed(0)
    assert train_main(["--data", str(tmp_path / "train_sh"), "--out", str(run), "--config", "cpu-small",
                       f"run.steps={STEPS}", "run.seed=0", "data.num_workers=1",
                       "run.tensorboard=false", f"run.ckpt_every={STEPS}"]) == 0

    model, tokenizer, tags = ExifClip.from_pretrained(run / "model")
    res = camera_top1(model, tokenizer, tags["tags"], tmp_path / "heldout_sh")
    print(json.dumps(res))  # visible with -s; this seed/config: see the report in the commit
    assert res["cameras"] == K and res["images"] == N - N_TRAIN
    assert res["chance"] == pytest.approx(1 / K)
    assert res["camera_top1"] >= 3 / K, res
