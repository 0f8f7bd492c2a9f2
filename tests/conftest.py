"""Shared fixtures: where the real data lives, and the environment every test runs in."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EXIFLANG_SHARED_DATA", REPO.parent / "shared" / "data"))

# Offline, quiet, and no Ray auth token prompts: the same settings the Makefile exports.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Ctrl-C as a terminal sends it: a suite started as a background job of a non-interactive shell
# (`make test &`, nohup) inherits SIGINT *ignored*, and so would every command a test starts --
# the tests of "Ctrl-C ends with exit 130 and leaves nothing behind" would then test nothing.
# Python's own handler here; exec resets it to the default in children, where Python installs it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _share_the_cores() -> None:
    """Under pytest-xdist (``make test``), each worker's OpenMP pool (torch's intra-op threads,
    in the worker and in the commands it starts) gets its share of the cores instead of all of
    them: on 2 cores, two workers each running a 2-thread torch would spin against each other,
    and one training thread does ~1.2x the work per CPU second of two.  Unset by hand wins."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1:
        cores = len(os.sched_getaffinity(0))
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // workers)))


_share_the_cores()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only folder of real photos, dumps and broken files (never copied, never re-encoded)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA}: shared data folder missing (set EXIFLANG_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def photos_dir(shared_data: Path) -> Path:
    return shared_data / "photos"


@pytest.fixture(scope="session")
def synth_run(tmp_path_factory):
    """The shared trained `cpu-small` run on the synthetic corpus, cached between sessions by its
    inputs (see tests/synth_run.py); read-only: derived files go under its ``scratch``."""
    from tests import synth_run as sr

    with sr.cached(
        "synth_run",
        sr.input_key(Path(sr.__file__)),
        sr.build,
        tmp_path_factory.mktemp("synth_run_scratch"),
        lambda: tmp_path_factory.mktemp("synth_run"),
    ) as run:
        yield run


def pytest_collection_modifyitems(config, items):
    """Tiers: tests on the shared trained run are ``slow``, tests marked ``ray`` are
    ``integration`` (pyproject.toml's markers; ``make test-fast`` leaves both out).

    Tests on the shared trained run get a longer limit: the first of them may pay for building
    it (~10 minutes on 2 idle cores when not cached, far more on a loaded machine), inside
    pytest-timeout's clock.

    Order: the test marked ``builds_shared_run`` first, the other tests on the shared run last.
    Under pytest-xdist the first worker builds the run while the others work through the rest
    of the suite, and no worker sits waiting for the build while other tests are left to run."""
    first, rest, last = [], [], []
    for item in items:
        on_shared_run = "synth_run" in getattr(item, "fixturenames", ())
        if on_shared_run:
            item.add_marker(pytest.mark.timeout(3600))
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("ray"):  # a Ray runtime is an integration test's
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("builds_shared_run"):
            first.append(item)
        else:
            (last if on_shared_run else rest).append(item)
    items[:] = first + rest + last
