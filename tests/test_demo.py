"""A shortened `make demo`: synthetic corpus -> shards with embedded Ray, then a rerun reuses it."""
import json

import pytest

from exiflang.cli import main as cli_main


@pytest.mark.ray
def test_demo_end_to_end_and_rerun(tmp_path, capsys):
    import ray
    args = ["demo", "--out", str(tmp_path), "--cameras", "3", "--images", "24", "--workers", "1"]
    try:
        assert cli_main(args) == 0
        first = json.loads((tmp_path / "shards" / "summary.json").read_text())
        assert first["status_counts"]["success"] == 24
        tags = json.loads((tmp_path / "shards" / "tags.json").read_text())
        assert {"Make", "Model", "ISO Speed Ratings", "Exposure Time"} <= set(tags["tags"])
        assert cli_main(args) == 0
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    assert "already there, reused" in out and "demo done" in out


def test_cli_usage_and_unknown_command(capsys):
    assert cli_main([]) == 0
    assert "shards" in capsys.readouterr().out
    assert cli_main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
