"""Set-ups shared by the lookup and eval-tags tests: a tiny random-model run, and embeddings of the trained synth run.

:func:`build` — a tiny, fast set-up for unit tests: 16 synthetic JPEGs from 3 cameras (256-320 px wide)
split 12 train / 4 test, shards of each (``--executor local``), a random-init ``cpu-small`` model saved
as a model folder with the train shards' ``tags.json``, the train shards embedded (2x2 grid) and indexed.  About 10 s.
Random weights are enough to check plumbing, formats and errors; whether anything is *learned*
is the "must work" tests' job (the shared trained synth run).

:func:`synth_embeddings` — the shared trained synth run's train / held-out shards embedded
(2x2 grid) into ``RUN_ROOT/eval_emb/``: embedding is resumable, so the lookup and eval-tags
tests of one session (and, with ``EXIFLANG_TEST_CACHE``, later sessions) embed them once.
A 2x2 grid predicts Make/Model of held-out photos as well as 4x4 on this run (measured: kNN
Make 0.850 vs 0.838, Model 0.456 vs 0.444 at k=10) for a quarter of the patches.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import torch

N_IMAGES, N_TRAIN, CAMERAS = 16, 12, 3
PER_SIDE = 2
SYNTH_PER_SIDE = 2


@dataclass(frozen=True)
class TinyRun:
    root: Path
    model: Path
    train_photos: Path
    test_photos: Path
    train_shards: Path
    test_shards: Path
    emb: Path
    index: Path


def build(root: Path) -> TinyRun:
    """Build every part of the tiny set-up under ``root`` (a fresh folder)."""
    from exiflang.eval.embed.run import embed_shards
    from exiflang.eval.embed.store import load_embeddings
    from exiflang.eval.index.run import build_index
    from exiflang.train.model import ExifClip, ModelConfig
    from exiflang.train.tokenizer import build_tokenizer
    from tests.shard_fixtures import shards_of, synth_photos

    corpus = synth_photos(root / "synth", cameras=CAMERAS, images=N_IMAGES, size=(256, 320))
    photos = {"train": root / "train", "test": root / "test"}
    for folder in photos.values():
        folder.mkdir()
    for row in csv.DictReader((corpus / "manifest.csv").open()):
        split = "train" if int(row["index"]) < N_TRAIN else "test"
        (photos[split] / row["file"]).symlink_to(corpus / row["file"])
    for split, folder in photos.items():
        shards_of(folder, root / f"{split}_sh", rows_per_shard=8)
    torch.manual_seed(0)
    model = ExifClip(ModelConfig.preset("cpu-small"))
    tags = json.loads((root / "train_sh" / "tags.json").read_text())
    model.save_pretrained(root / "model", build_tokenizer("auto", None, max_length=64), tags)
    emb = embed_shards(root / "model", root / "train_sh", root / "emb", per_side=PER_SIDE, progress=False)
    build_index(load_embeddings(emb), root / "index")
    return TinyRun(
        root,
        root / "model",
        photos["train"],
        photos["test"],
        root / "train_sh",
        root / "test_sh",
        root / "emb",
        root / "index",
    )


def synth_embeddings(run, split: str) -> Path:
    """``run`` (a :class:`tests.synth_run.SynthRun`)'s ``split`` (``train`` | ``heldout``) shards,
    embedded with its model into the session's scratch folder (never the cached run: embeddings
    come from eval code), resuming, so a finished folder is only checked and returned."""
    from exiflang.eval.embed.run import embed_shards

    shards = {"train": run.train_shards, "heldout": run.heldout_shards}[split]
    return embed_shards(
        run.model,
        shards,
        run.scratch / "eval_emb" / f"{split}_p{SYNTH_PER_SIDE}",
        per_side=SYNTH_PER_SIDE,
        progress=False,
    )
