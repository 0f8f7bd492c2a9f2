"""The trainer end to end: torchrun DDP on CPU, kill-and-resume equals an uninterrupted run,
and one-line errors for bad data and configs."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from exiflang.train.main import main as train_main

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "run.tensorboard=false",
    "data.batch_size=8",
    "data.num_workers=0",
    "run.log_every=2",
    "data.crops_per_image=2",
    "data.shuffle_buffer=32",
]


@pytest.fixture(scope="module")
def data(tiny_shards: Path) -> Path:
    """The session's tiny shards (tests/train/conftest.py): 24 photos of 3 cameras in 3 tars."""
    return tiny_shards


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(data: Path, run: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "train" / "main.py"),
        "--data",
        str(data),
        "--out",
        str(run),
        "--config",
        "cpu-small",
        "run.steps=12",
        "run.ckpt_every=3",
        *SMALL,
        *extra,
    ]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


@pytest.mark.integration
def test_kill_then_resume_equals_uninterrupted(data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(_cmd(data, tmp_path / "clean"), check=True, env=env, timeout=600, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(data, killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "checkpoints" / "step-0000003").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model").exists(), "the run finished before it could be killed"
    res = subprocess.run(_cmd(data, killed, "--resume", "latest"), env=env, timeout=600, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed from" in res.stderr
    a, b = _weights(tmp_path / "clean"), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.integration
def test_torchrun_two_processes_on_cpu(data, tmp_path):
    run = tmp_path / "ddp"
    cmd = [
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
        "--config",
        "cpu-small",
        "run.steps=3",
        "run.ckpt_every=3",
        *SMALL,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, timeout=300, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (run / "model" / "model.safetensors").exists()
    assert (run / "config.yaml").exists() and (run / "metrics.jsonl").read_text().strip()
    assert (run / "checkpoints" / "latest.json").exists()


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--config", "nope"], "unknown preset"),
        (["optim.learning_rate=1"], "unknown key"),
        (["optim.crop_consistency=0.5"], "optim.crop_consistency needs data.group_crops=true"),
    ],
)
def test_bad_config_is_one_line_error(data, tmp_path, capsys, args, needle):
    assert train_main(["--data", str(data), "--out", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "\n" not in err


def test_empty_data_folder_and_bad_tags(data, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train_main(["--data", str(empty), "--out", str(tmp_path / "r"), "--config", "cpu-small"]) == 2
    assert "no shards" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in data.iterdir():
        (bad / p.name).symlink_to(p)
    (bad / "tags.json").unlink()
    (bad / "tags.json").write_text('{"tags": ["Make"], "hash": "0000"}')
    assert (
        train_main(["--data", str(bad), "--out", str(tmp_path / "r2"), "--config", "cpu-small", "run.steps=1", *SMALL])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "tags.json" in err and "hash" in err
