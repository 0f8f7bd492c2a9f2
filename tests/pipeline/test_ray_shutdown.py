"""Embedded Ray is shut down on SIGINT / SIGTERM: no GCS, raylet, agent or worker process of the
session outlives the driver, and the driver exits with the status the signal calls for."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _watch(driver: subprocess.Popen, ready: Callable[[list[str]], bool], timeout: float) -> dict[int, psutil.Process]:
    """Every process below the driver, polled until ``ready(their command lines)`` holds."""
    seen: dict[int, psutil.Process] = {}
    cmdlines: dict[int, str] = {}
    root = psutil.Process(driver.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and driver.poll() is None:
        for child in root.children(recursive=True):
            try:
                cmdlines[child.pid] = " ".join(child.cmdline())
                seen.setdefault(child.pid, child)
            except psutil.Error:
                continue
        if ready(list(cmdlines.values())):
            return seen
        time.sleep(0.05)
    pytest.fail(f"the moment to signal never came (driver exit code {driver.poll()})")


def _agents_started(cmdlines: list[str]) -> bool:
    # Ray is still starting: an agent the raylet spawned has renamed itself "ray::...".
    # Stopped at this moment, ray.shutdown() alone left both agents running, every time.
    return any(c.startswith("ray::") for c in cmdlines)


@pytest.mark.parametrize(
    "sig, moment, status",
    [
        (signal.SIGINT, "starting", 130),  # the window where ray.shutdown() alone leaked agents
        (signal.SIGTERM, "running", 143),
    ],
)
def test_signal_leaves_no_ray_process_behind(tmp_path, photos_dir, sig, moment, status):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    cmd = [
        sys.executable,
        str(REPO / "pipeline" / "build_shards.py"),
        "--source",
        str(photos_dir),
        "--out",
        str(out),
        "--rows-per-shard",
        "4",
        "--workers",
        "1",
        "--threads",
        "1",
        "-q",
    ]
    driver = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen: dict[int, psutil.Process] = {}
    try:
        if moment == "starting":
            seen = _watch(driver, _agents_started, 120)
        else:
            seen = _watch(driver, lambda _: any(out.glob("*_stats.json")), 180)
            assert len(seen) >= 4, "Ray's processes were not all seen"
        driver.send_signal(sig)
        _, err = driver.communicate(timeout=90)
        assert driver.returncode == status, err.decode(errors="replace")[-2000:]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in seen.values()):
            time.sleep(0.1)
        left = [" ".join(p.cmdline())[:120] for p in seen.values() if _alive(p)]
        assert not left, f"outlived the driver: {left}"
        if sig == signal.SIGINT:
            assert "Traceback" not in err.decode(errors="replace")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for proc in seen.values():  # never leak into the rest of the suite
            if _alive(proc):
                proc.kill()
