"""Fixtures of the trainer's tests: tiny shards (24 synthetic photos, 3 cameras, 3 tars of 8) and
one short local training run with held-out numbers every 2 steps, shared by the tests that
compare against it (object storage, held-out logging)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.shard_fixtures import synth_shards

# The smallest useful recipe: cpu-small on 64-px patches, batch 8, 2 crops per photo (6 batches
# an epoch), text dropout left on so that the run draws from the RNG every step.
TINY = [
    "run.log_every=1",
    "data.batch_size=8",
    "data.crops_per_image=2",
    "data.shuffle_buffer=32",
    "data.patch_size=64",
]
HELDOUT = [
    "run.steps=4",
    "run.eval_every=2",
    "run.ckpt_every=4",
    "data.num_workers=1",
    "data.text_format=values_shuffled",
]


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_shards")
    synth_shards(root, cameras=3, images=24, rows_per_shard=8)
    return root / "shards"


def train_args(data: str, run: Path, *extra: str, eval_data: str | None = None) -> list[str]:
    """``train/main.py`` arguments for a tiny run (options before the key=value overrides)."""
    head = ["--data", data, "--out", str(run), "--config", "cpu-small"]
    if eval_data:
        head += ["--eval-data", eval_data]
    return [*head, *TINY, *extra]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def heldout_run(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 steps from local shards, held-out numbers (the same shards) every 2 steps, TensorBoard on."""
    from exiflang.train.main import main as train_main

    run = tmp_path_factory.mktemp("heldout_run") / "run"
    assert train_main(train_args(str(tiny_shards), run, *HELDOUT, eval_data=str(tiny_shards))) == 0
    return run


# The checkpoint-handling tests (safe loading, explicit resume, one-line errors) share one recipe:
# 12 photos of 2 cameras in 2 tars, a cpu-small run of a few steps checkpointed every 2.
CKPT_TINY = [
    "--config",
    "cpu-small",
    "run.tensorboard=false",
    "data.batch_size=8",
    "data.num_workers=0",
    "run.log_every=2",
    "data.crops_per_image=2",
    "data.shuffle_buffer=32",
]


def checkpointed_run(root: Path, steps: int) -> tuple[Path, Path]:
    """(shards, RUN) under ``root``: a ``steps``-step run with a checkpoint every 2 steps."""
    from exiflang.train.main import main as train_main

    synth_shards(root, cameras=2, images=12, rows_per_shard=6, workers=1)
    assert (
        train_main(
            [
                "--data",
                str(root / "shards"),
                "--out",
                str(root / "run"),
                *CKPT_TINY,
                f"run.steps={steps}",
                "run.ckpt_every=2",
            ]
        )
        == 0
    )
    return root / "shards", root / "run"
