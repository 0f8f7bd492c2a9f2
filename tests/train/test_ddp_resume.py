"""Exact DDP resume: a 2-process gloo run (torchrun) killed mid-epoch and resumed with
``--resume latest`` ends with exactly the weights of the uninterrupted 2-process run; the ranks'
saved RNG streams differ, so they draw different dropout masks at the same step."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from exiflang.train import checkpoint

pytestmark = pytest.mark.integration  # torchrun, 2 processes

REPO = Path(__file__).resolve().parents[2]
# 24 photos x 2 crops / (4 a rank x 2 ranks) = 6 batches an epoch: the checkpoint at step 3 is
# mid-epoch, and the resumed run crosses into epoch 1 at step 6.  Text dropout stays on, and
# each rank forks a DataLoader worker.
RECIPE = [
    "--config",
    "cpu-small",
    "run.steps=8",
    "run.ckpt_every=3",
    "run.keep_last=5",
    "run.log_every=1",
    "run.tensorboard=false",
    "data.batch_size=4",
    "data.crops_per_image=2",
    "data.shuffle_buffer=16",
    "data.patch_size=64",
    "data.num_workers=1",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(data: Path, run: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        str(REPO / "train" / "main.py"),
        "--data",
        str(data),
        "--out",
        str(run),
        *extra,
        *RECIPE,
    ]


ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def clean(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ddp") / "clean"
    res = subprocess.run(_torchrun(tiny_shards, run), env=ENV, timeout=600, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return run


def _kill_everything(launcher: subprocess.Popen) -> None:
    """SIGKILL to the launcher's process group, and to its workers: torchrun starts each worker
    in a session of its own, which a signal to the launcher's group alone would leave running
    (a pre-empted node loses them all)."""
    descendants = psutil.Process(launcher.pid).children(recursive=True)
    os.killpg(launcher.pid, signal.SIGKILL)
    for proc in descendants:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    launcher.wait()
    psutil.wait_procs(descendants, timeout=30)


def test_two_process_kill_mid_epoch_then_resume_equals_uninterrupted(tiny_shards, clean, tmp_path):
    killed = tmp_path / "killed"
    launcher = subprocess.Popen(
        _torchrun(tiny_shards, killed),
        env=ENV,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "checkpoints" / "step-0000003").exists():
        time.sleep(0.02)
    _kill_everything(launcher)
    assert not (killed / "model").exists(), "the run finished before it could be killed"
    latest = checkpoint.resolve(killed, "latest")
    assert latest is not None and latest.name == "step-0000003"
    position = checkpoint.load_state(latest)["position"]
    assert (position["epoch"], position["batch"]) == (0, 3)  # mid-epoch (6 batches an epoch)

    res = subprocess.run(
        _torchrun(tiny_shards, killed, "--resume", "latest"), env=ENV, timeout=600, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stderr
    a = load_file(str(clean / "model" / "model.safetensors"))
    b = load_file(str(killed / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bit for bit, not merely close


def test_each_rank_saves_its_own_rng_and_draws_its_own_dropout_masks(clean):
    state = checkpoint.load_state(clean / "checkpoints" / "step-0000003")
    assert set(state["rng"]) == {"0", "1"}
    masks = []
    for rank in ("0", "1"):
        checkpoint.set_rng_state(checkpoint.rng_for_rank(state, rank=int(rank)))
        # What the text tower's dropout (p = 0.1) draws next on that rank: [8 tokens, 128 features].
        masks.append(torch.nn.functional.dropout(torch.ones(8, 128), p=0.1, training=True) == 0)
    assert not torch.equal(state["rng"]["0"]["torch"], state["rng"]["1"]["torch"])
    assert not torch.equal(masks[0], masks[1])
    assert state["rng"]["0"]["python"] != state["rng"]["1"]["python"]
