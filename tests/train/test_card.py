"""Model cards: the trainer writes one saying what the model was trained on; reading never runs code."""

from __future__ import annotations

import json
from pathlib import Path

from exiflang.train.card import CARD, describe, read_model_card, write_model_card


def test_training_writes_a_card_naming_the_synthetic_cameras(heldout_run: Path) -> None:
    card = read_model_card(heldout_run / "model")
    data = card["data"]
    # tiny_shards: 24 photos of 3 synthetic cameras (exiflang synth), 4 steps, held-out every 2.
    assert data["synthetic"] is True and data["real"] is False and data["photos"] == 24
    assert data["cameras"] == 3 and len(data["camera_names"]) == 3
    assert card["training"]["steps"] == 4 and card["training"]["preset"] == "cpu-small"
    assert card["training"]["text_format"] == "values_shuffled"
    assert set(card["heldout"]) >= {"loss", "i2t_r1", "camera_top1"}
    assert card["summary"] == (
        "model trained on 24 synthetic photos of 3 camera models (4 steps); answers about real cameras are unreliable"
    )
    # The checkpoint folder (a model folder too) carries its own card, steps at that point.
    ckpt = read_model_card(heldout_run / "checkpoints" / "step-0000004")
    assert ckpt["training"]["steps"] == 4 and ckpt["data"]["cameras"] == 3


def test_absent_or_broken_card_reads_as_empty(tmp_path: Path) -> None:
    assert read_model_card(tmp_path) == {}
    (tmp_path / CARD).write_text("{not json")
    assert read_model_card(tmp_path) == {}
    (tmp_path / CARD).write_text("[1, 2]")
    assert read_model_card(tmp_path) == {}
    assert describe({}) == ""


def test_card_round_trip_and_summary(tmp_path: Path) -> None:
    write_model_card(
        tmp_path, {"data": {"photos": 10, "cameras": 2, "real": True, "synthetic": False}, "training": {"steps": 5}}
    )
    card = json.loads((tmp_path / CARD).read_text())
    assert card["format"] == "exiflang-model-card" and read_model_card(tmp_path) == card
    assert card["summary"] == (
        "model trained on 10 real photos of 2 camera models (5 steps); "
        "only 2 camera model(s) known: answers about others are unreliable"
    )
