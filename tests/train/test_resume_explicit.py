"""`--resume latest` resumes from the newest complete checkpoint, whatever latest.json says, or
fails with one line; it never starts from step 0 over existing checkpoints."""

import json
import logging
import shutil
from pathlib import Path

import pytest

from exiflang.train import checkpoint
from exiflang.train.main import main as train_main
from tests.train.conftest import CKPT_TINY, checkpointed_run

TINY = CKPT_TINY


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path]:
    """(shards, a 4-step run with checkpoints step-0000002 and step-0000004)."""
    return checkpointed_run(tmp_path_factory.mktemp("resume"), steps=4)


@pytest.fixture
def run(made, tmp_path) -> Path:
    """A private copy of the 4-step run."""
    shutil.copytree(made[1], tmp_path / "run")
    return tmp_path / "run"


def ck(run: Path, step: int) -> Path:
    return checkpoint.step_dir(run, step)


@pytest.mark.parametrize(
    "index", ['{"latest": "step-0000099"}', '{"best": "step-0000002"}', '{"latest": ', '["step-0000004"]', None]
)
def test_broken_index_falls_back_to_the_newest_complete(run, caplog, index):
    path = run / "checkpoints" / "latest.json"
    if index is None:
        path.unlink()
    else:
        path.write_text(index)
    with caplog.at_level(logging.WARNING, logger="exiflang.train"):
        assert checkpoint.resolve(run, "latest") == ck(run, 4)
    assert "step-0000004" in caplog.text


@pytest.mark.parametrize("remove", [checkpoint.STATE, checkpoint.WEIGHTS, "config.json"])
def test_incomplete_newest_falls_back_to_an_older_complete(run, remove):
    (ck(run, 4) / remove).unlink()
    assert checkpoint.resolve(run, "latest") == ck(run, 2)


def test_newer_complete_than_the_index_wins(run):
    (run / "checkpoints" / "latest.json").write_text('{"latest": "step-0000002"}')
    assert checkpoint.resolve(run, "latest") == ck(run, 4)


def test_fresh_or_tmp_only_folder_starts_from_zero(tmp_path):
    assert checkpoint.resolve(tmp_path / "new", "latest") is None
    (tmp_path / "r" / "checkpoints" / ".step-0000002.tmp").mkdir(parents=True)  # killed mid-write
    assert checkpoint.resolve(tmp_path / "r", "latest") is None


def test_index_naming_a_vanished_checkpoint_is_an_error(run):
    for p in (ck(run, 2), ck(run, 4)):
        shutil.rmtree(p)
    with pytest.raises(checkpoint.CheckpointError, match=r"latest.json: names step-0000004, but no checkpoint"):
        checkpoint.resolve(run, "latest")


def test_explicit_incomplete_checkpoint_is_an_error(run):
    (ck(run, 2) / checkpoint.STATE).unlink()
    with pytest.raises(checkpoint.CheckpointError, match=r"step-0000002: not a complete checkpoint \(no train_state"):
        checkpoint.resolve(run, str(ck(run, 2)))
    with pytest.raises(FileNotFoundError, match="step-0000077: checkpoint folder not found"):
        checkpoint.resolve(run, str(ck(run, 77)))


def test_index_pointing_nowhere_resumes_at_the_newest_step(made, run, caplog):
    (run / "checkpoints" / "latest.json").write_text('{"latest": "step-0000099"}')
    metrics = (run / "metrics.jsonl").read_text()
    with caplog.at_level(logging.INFO, logger="exiflang.train"):
        assert (
            train_main(
                [
                    "--data",
                    str(made[0]),
                    "--out",
                    str(run),
                    "--resume",
                    "latest",
                    *TINY,
                    "run.steps=6",
                    "run.ckpt_every=2",
                ]
            )
            == 0
        )
    assert f"resumed from {ck(run, 4)} at step 4" in caplog.text
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert (run / "metrics.jsonl").read_text().startswith(metrics) and steps[-1] == 6
    assert json.loads((run / "result.json").read_text())["step"] == 6
    assert 2 not in steps[len(metrics.splitlines()) :]  # steps 1..4 were not trained again


def test_all_checkpoints_incomplete_is_one_line_exit_2(made, run, capsys):
    for step in (2, 4):
        (ck(run, step) / checkpoint.STATE).unlink()
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    rc = train_main(
        ["--data", str(made[0]), "--out", str(run), "--resume", "latest", *TINY, "run.steps=6", "run.ckpt_every=2"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "none complete" in err[-1] and str(run / "checkpoints") in err[-1]
    assert not any("Traceback" in line for line in err)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # nothing overwritten
