"""Held-out numbers while training: at every run.eval_every steps in metrics.jsonl and TensorBoard,
reproducible from the saved model; wandb asked for without the package is a one-line error."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from exiflang.train.config import load_config
from exiflang.train.heldout import HeldOutEvaluator, recall_at
from exiflang.train.main import main as train_main
from exiflang.train.model import ExifClip
from tests.train.conftest import metrics, train_args

KEYS = ("eval/loss", "eval/i2t_r1", "eval/i2t_r5", "eval/t2i_r1", "eval/t2i_r5", "eval/camera_top1")


def test_heldout_numbers_at_the_interval_in_metrics_jsonl(heldout_run: Path) -> None:
    rows = [r for r in metrics(heldout_run) if "eval/loss" in r]
    assert [r["step"] for r in rows] == [2, 4]  # run.eval_every=2 of 4 steps
    for row in rows:
        assert set(KEYS) <= row.keys()
        assert row["eval/loss"] > 0 and 0 <= row["eval/i2t_r1"] <= row["eval/i2t_r5"] <= 1
        assert row["eval/images"] == 24 and row["eval/cameras"] == 3
    assert rows[0]["eval/loss"] != rows[1]["eval/loss"]  # the model moved between them


def test_heldout_numbers_in_tensorboard(heldout_run: Path) -> None:
    acc = EventAccumulator(str(heldout_run / "tb"))
    acc.Reload()
    for key in KEYS:
        assert [e.step for e in acc.Scalars(key)] == [2, 4], key
    last = {r["step"]: r for r in metrics(heldout_run) if "eval/loss" in r}[4]
    assert acc.Scalars("eval/loss")[-1].value == pytest.approx(last["eval/loss"], rel=1e-6)
    assert [e.step for e in acc.Scalars("loss")] == [1, 2, 3, 4]


def test_final_heldout_numbers_recomputed_from_the_saved_model(heldout_run: Path, tiny_shards: Path) -> None:
    """The logged step-4 numbers are the saved model's on the fixed set (nothing random)."""
    model, tokenizer, tags = ExifClip.from_pretrained(heldout_run / "model")
    cfg = load_config(str(heldout_run / "config.yaml"))
    again = HeldOutEvaluator(cfg).load()(model, tokenizer, tags)
    last = [r for r in metrics(heldout_run) if "eval/loss" in r][-1]
    for key in KEYS:
        assert again[key[5:]] == pytest.approx(last[key], abs=1e-5), key


def test_recall_counts_identical_texts_as_hits() -> None:
    import torch

    sim = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.2, 0.0], [0.0, 0.1, 0.5]])
    own = torch.eye(3, dtype=torch.bool)
    assert recall_at(sim, own, 1) == pytest.approx(1 / 3) and recall_at(sim, own, 2) == pytest.approx(1.0)
    twins = own | torch.tensor([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)  # rows 0, 1 share a text
    assert recall_at(sim, twins, 1) == pytest.approx(1.0)


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_wandb_asked_for_without_the_package_is_one_line(tiny_shards: Path, tmp_path: Path, capsys) -> None:
    rc = train_main(train_args(str(tiny_shards), tmp_path / "r", "run.wandb=offline", "run.steps=1"))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "run.wandb=offline" in err and "pip install wandb" in err
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_demo_report_draws_the_heldout_curve(heldout_run: Path) -> None:
    from exiflang.eval.report.html import training_section

    html = training_section(heldout_run)
    assert html.count("<svg") == 2  # loss (training + held-out), held-out scores
    assert "held-out loss" in html and "i2t_r1" in html and "camera_top1" in html
