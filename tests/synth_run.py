"""One trained `cpu-small` model on the synthetic camera corpus, built once per test session.

The "it must work" tests of the trainer (held-out camera retrieval), of lookup (Make/Model of
held-out photos) and of splice detection (held-out synthetic splices) all ask the same question
of the same kind of model, so they share one training run instead of three:

synth corpus (8 cameras, 1600 photos, seed 0) -> split by image index (the last 10 % held out,
same cameras) -> shards (`--executor local`) -> `exiflang train --config cpu-small` with 64-px
training crops and no text dropout, 1600 steps, seed 0 (:data:`TRAIN_OVERRIDES`): ~6 minutes on
2 idle CPU cores.  Against the preset's own recipe at 800 steps (124-px crops, ~8 minutes) it
retrieves and looks up as well (held-out camera top-1 0.488 vs 0.475; k-NN Make 0.838 vs 0.850,
Model 0.463 vs 0.456) and localizes splices better (p-mAP 0.740 vs 0.710, soft ncuts map 0.885
vs 0.821); README, "Splice benchmarks".  The detector still embeds 124-px patches: the image
tower ends in global average pooling, so it runs at any patch size.

The splice tests use ``splice_photos``: the same 160 held-out shots by the same cameras at a
larger image-size setting (768-1024 px wide instead of 384-640; ``synth --indices``).  At the
training size a 124-px patch spans up to a third of the photo's height and even perfect patch
embeddings localize these splices with p-mAP 0.80 at most; at the larger size, 0.97.

Set ``EXIFLANG_TEST_CACHE=/some/dir`` to keep the run between pytest sessions (development only:
CI builds it fresh); a finished run there (``DONE`` file) is reused as is.
"""
from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

K = 8              # cameras; chance = 1/K
N = 1600           # images; the last 10 % (by index) are held out
N_TRAIN = 1440
STEPS = 1600
TRAIN_OVERRIDES = ("data.patch_size=64",
                   "model.text_overrides={dropout: 0.0, attention_dropout: 0.0}")
SPLICE_SIZES = ("768", "1024")   # --min-size, --max-size of the splice tests' photos


@dataclass(frozen=True)
class SynthRun:
    """Paths of the shared run: corpus, split photo folders, shards, model."""

    root: Path

    corpus = property(lambda self: self.root / "synth")
    train_photos = property(lambda self: self.root / "train")
    heldout_photos = property(lambda self: self.root / "heldout")
    splice_photos = property(lambda self: self.root / "splice_heldout")
    train_shards = property(lambda self: self.root / "train_sh")
    heldout_shards = property(lambda self: self.root / "heldout_sh")
    run = property(lambda self: self.root / "run")
    model = property(lambda self: self.root / "run" / "model")


def _split(corpus: Path, root: Path) -> None:
    rows = list(csv.DictReader((corpus / "manifest.csv").open()))
    assert len(rows) == N
    for split in ("train", "heldout"):
        (root / split).mkdir()
    for r in rows:
        i = int(r["index"])
        split = "train" if i < N_TRAIN else "heldout"
        # Named by index, so the shard builder's sorted order mixes cameras in every shard.
        (root / split / f"img{i:06d}.jpg").symlink_to(corpus / r["file"])


def fresh(root: Path) -> bool:
    """False when ``root/DONE`` marks a finished build (reuse it); else ``root`` is emptied: True."""
    if (root / "DONE").exists():
        return False
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    return True


def synthesise(out: Path, *options: str) -> None:
    """``exiflang synth`` of the corpus's cameras and scenes (K, N, seed 0) into ``out``."""
    from exiflang.pipeline.synth import corpus as synth
    assert synth.main(["--out", str(out), "--cameras", str(K), "--images", str(N), "--seed", "0",
                       *options, "--no-progress", "--workers", "2"]) == 0


def shards(source: Path, out: Path, per_shard: int) -> None:
    from exiflang.pipeline import build_shards
    assert build_shards.main(["--source", str(source), "--out", str(out), "--executor", "local",
                              "--rows-per-shard", str(per_shard), "-q"]) == 0


def train(run: SynthRun, steps: int, overrides: tuple[str, ...]) -> None:
    """Train `cpu-small` on ``run.train_shards`` (seed 0, one worker), then mark the build done."""
    from exiflang.train.main import main as train_main
    torch.manual_seed(0)
    assert train_main(["--data", str(run.train_shards), "--out", str(run.run), "--config", "cpu-small",
                       f"run.steps={steps}", "run.seed=0", "data.num_workers=1",
                       "run.tensorboard=false", f"run.ckpt_every={steps}", *overrides]) == 0
    (run.root / "DONE").write_text("ok\n")


def build(root: Path) -> SynthRun:
    """Build (or reuse, when ``root/DONE`` exists) the shared run under ``root``."""
    run = SynthRun(root)
    if not fresh(root):
        return run
    synthesise(run.corpus)
    _split(run.corpus, root)
    synthesise(run.splice_photos, "--indices", f"{N_TRAIN}:{N}", "--min-size", SPLICE_SIZES[0],
               "--max-size", SPLICE_SIZES[1])
    for split, per_shard in (("train", 200), ("heldout", 1000)):
        shards(root / split, root / f"{split}_sh", per_shard)
    train(run, STEPS, TRAIN_OVERRIDES)
    return run


def cache_dir(name: str = "synth_run") -> Path | None:
    """``$EXIFLANG_TEST_CACHE/name`` when that variable is set (development only), else None."""
    value = os.environ.get("EXIFLANG_TEST_CACHE")
    return Path(value) / name if value else None
