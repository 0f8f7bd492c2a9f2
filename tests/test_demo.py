"""A shortened `make demo`: synthetic corpus -> shards with embedded Ray, then a rerun reuses it."""
import json

import pytest

from exiflang.cli import main as cli_main


@pytest.mark.ray
def test_demo_end_to_end_and_rerun(tmp_path, capsys):
    import ray
    args = ["demo", "--out", str(tmp_path), "--cameras", "3", "--images", "40", "--workers", "1",
            "--steps", "3"]
    try:
        assert cli_main(args) == 0
        first = json.loads((tmp_path / "shards" / "summary.json").read_text())
        assert first["status_counts"]["success"] == 36      # every 10th photo is held out
        assert (tmp_path / "run" / "model" / "model.safetensors").exists()
        tags = json.loads((tmp_path / "shards" / "tags.json").read_text())
        assert {"Make", "Model", "ISO Speed Ratings", "Exposure Time"} <= set(tags["tags"])
        assert cli_main(args) == 0
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    assert "already there, reused" in out and "already trained, reused" in out
    assert "held-out camera retrieval top-1" in out and "demo done" in out


def test_cli_usage_and_unknown_command(capsys):
    assert cli_main([]) == 0
    assert "shards" in capsys.readouterr().out
    assert cli_main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
