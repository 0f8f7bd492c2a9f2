"""The shared trained run's cache (tests/synth_run.py): reuse only a finished, unaltered run of
the same inputs; rebuild otherwise; two sessions take turns; pruning spares runs in use."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path

import pytest

from tests import synth_run as sr


class Builds:
    """A stand-in for ``synth_run.build`` with its reuse rule (``fresh``/``finish``): one file."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, root: Path) -> sr.SynthRun:
        if sr.fresh(root):
            self.count += 1
            (root / "run").mkdir()
            (root / "run" / "model.bin").write_bytes(b"weights %d" % self.count)
            sr.finish(root)
        return sr.SynthRun(root)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EXIFLANG_TEST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def use(build: Builds, key: str, tmp_path: Path) -> sr.SynthRun:
    temporary = tmp_path / f"temporary{build.count}"  # a new folder each session, as mktemp gives
    with sr.cached("demo_run", key, build, tmp_path / "scratch", lambda: temporary) as run:
        return run


def test_a_finished_run_is_reused_and_an_altered_or_unfinished_one_rebuilt(cache, tmp_path):
    build = Builds()
    run = use(build, "k1", tmp_path)
    assert run.root == cache / "demo_run-k1" and run.scratch == tmp_path / "scratch"
    assert use(build, "k1", tmp_path).root == run.root and build.count == 1  # reused
    (run.root / "run" / "model.bin").write_bytes(b"changed by a test")  # same size, new mtime
    use(build, "k1", tmp_path)
    assert build.count == 2 and (run.root / "run" / "model.bin").read_bytes() == b"weights 2"
    (run.root / "run" / "extra").write_text("x")  # a file the build did not make
    use(build, "k1", tmp_path)
    assert build.count == 3 and not (run.root / "run" / "extra").exists()
    (run.root / "DONE").unlink()  # a build cut off before it finished
    use(build, "k1", tmp_path)
    assert build.count == 4
    use(build, "k2", tmp_path)  # other inputs: another run
    assert build.count == 5 and (cache / "demo_run-k2" / "DONE").exists()


@pytest.mark.timeout(60)
def test_a_run_in_use_elsewhere_is_reused_at_once_and_one_being_built_is_waited_for(cache, tmp_path):
    build = Builds()
    run = use(build, "k1", tmp_path)
    with open(cache / "demo_run-k1.lock", "a") as other:  # another session or xdist worker using it
        fcntl.flock(other, fcntl.LOCK_SH)
        start = time.monotonic()
        assert use(build, "k1", tmp_path).root == run.root
        assert build.count == 1 and time.monotonic() - start < 5
    elsewhere = Builds()
    with open(cache / "demo_run-k2.lock", "a") as other:  # another process building k2
        fcntl.flock(other, fcntl.LOCK_EX)

        def finish_building() -> None:
            time.sleep(1)
            elsewhere(cache / "demo_run-k2")
            fcntl.flock(other, fcntl.LOCK_UN)

        builder = threading.Thread(target=finish_building)
        builder.start()
        assert use(build, "k2", tmp_path).root == cache / "demo_run-k2"
        builder.join()
    assert elsewhere.count == 1 and build.count == 1  # waited for, not built twice


def test_off_builds_in_the_temporary_folder_every_time(tmp_path, monkeypatch):
    monkeypatch.setenv("EXIFLANG_TEST_CACHE", "off")
    build = Builds()
    runs = [use(build, "k", tmp_path) for _ in range(2)]
    assert build.count == 2 and [r.root for r in runs] == [tmp_path / "temporary0", tmp_path / "temporary1"]
    assert not (tmp_path / "cache").exists()


def test_pruning_keeps_the_newest_and_spares_a_run_in_use(cache, tmp_path):
    build = Builds()
    for i, key in enumerate(("old", "in_use", "newer", "newest")):
        build(cache / f"demo_run-{key}")
        os.utime(cache / f"demo_run-{key}" / "DONE", (1000 + i, 1000 + i))
    with open(cache / "demo_run-in_use.lock", "a") as lock:  # another session reading it
        fcntl.flock(lock, fcntl.LOCK_SH)
        sr._prune(cache, "demo_run", keep=2)
    assert sorted(p.name for p in cache.glob("demo_run-*") if p.is_dir()) == [
        "demo_run-in_use",
        "demo_run-newer",
        "demo_run-newest",
    ]


def test_the_key_follows_the_recipe_and_the_code(tmp_path, monkeypatch):
    recipe = tmp_path / "recipe.py"
    recipe.write_text("STEPS = 1600\n")
    code = tmp_path / "train"
    code.mkdir()
    (code / "main.py").write_text("lr = 1e-3\n")
    monkeypatch.setattr(sr, "REPO", tmp_path)
    monkeypatch.setattr(sr, "BUILD_CODE", (code,))
    (tmp_path / "requirements.lock").write_text("torch==2.13.0\n")
    first = sr.input_key(recipe)
    assert sr.input_key(recipe) == first and len(first) == 16
    recipe.write_text("STEPS = 800\n")
    second = sr.input_key(recipe)
    (code / "main.py").write_text("lr = 3e-3\n")
    third = sr.input_key(recipe)
    (tmp_path / "requirements.lock").write_text("torch==2.14.0\n")
    assert len({first, second, third, sr.input_key(recipe)}) == 4


@pytest.mark.builds_shared_run
def test_the_shared_run_is_built_finished_and_intact(synth_run) -> None:
    """The real build (run first: under pytest-xdist one worker builds while the others test)."""
    assert sr.finished(synth_run.root)
    assert len(list(synth_run.train_photos.iterdir())) == sr.N_TRAIN
    assert len(list(synth_run.heldout_photos.iterdir())) == sr.N - sr.N_TRAIN
    assert len(list(synth_run.splice_photos.glob("*.jpg"))) == sr.N - sr.N_TRAIN
    assert (synth_run.model / "model.safetensors").is_file() and (synth_run.run / "result.json").is_file()
    assert list(synth_run.train_shards.glob("*.tar")) and list(synth_run.heldout_shards.glob("*.tar"))
