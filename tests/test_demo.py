"""A shortened `make demo`: synthetic corpus -> shards with embedded Ray -> training -> lookup ->
splices, benchmark and a detection overlay -> report.html; then a rerun reuses it."""

import csv
import json

import pytest

from exiflang.cli import main as cli_main


@pytest.mark.slow
@pytest.mark.ray
def test_demo_end_to_end_and_rerun(tmp_path, capsys):
    import ray

    args = [
        "demo",
        "--out",
        str(tmp_path),
        "--cameras",
        "3",
        "--images",
        "40",
        "--workers",
        "1",
        "--steps",
        "3",
        "--splices",
        "2",
        "--per-side",  # a coarse grid: the chain is what is checked here, not the maps
        "8",
    ]
    try:
        assert cli_main(args) == 0
        first = json.loads((tmp_path / "shards" / "summary.json").read_text())
        assert first["status_counts"]["success"] == 36  # every 10th photo is held out
        assert (tmp_path / "run" / "model" / "model.safetensors").exists()
        tags = json.loads((tmp_path / "shards" / "tags.json").read_text())
        assert {"Make", "Model", "ISO Speed Ratings", "Exposure Time"} <= set(tags["tags"])
        lookups = [json.loads(line) for line in (tmp_path / "lookup.jsonl").read_text().splitlines()]
        assert len(lookups) == 4 and all("Model" in r["predictions"] for r in lookups)
        assert (tmp_path / "index" / "index.faiss").is_file()
        bench = json.loads((tmp_path / "benchmark" / "metrics.json").read_text())
        assert set(bench["methods"]) == {"exif", "noi"} and bench["images"] == 4
        assert bench["settings"]["per_side"] == 8
        # Splices come from new shots of the same cameras at 768-1024 px, not the small corpus.
        with (tmp_path / "splices" / "manifest.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert rows and all("splice_photos" in r["host_file"] for r in rows)
        assert all(768 <= int(r["width"]) <= 1024 for r in rows)
        assert list((tmp_path / "detect").glob("*.png"))
        html = (tmp_path / "report.html").read_text()
        assert "<svg" in html and "data:image/" in html
        assert cli_main(args) == 0
        # A splice set cut from other photos (an older demo's) is rebuilt, not reused.
        text = (tmp_path / "splices" / "manifest.csv").read_text()
        (tmp_path / "splices" / "manifest.csv").write_text(text.replace(str(tmp_path / "splice_photos"), "/elsewhere"))
        assert cli_main(args) == 0
        assert "splice_photos" in (tmp_path / "splices" / "manifest.csv").read_text()
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    assert "already there, reused" in out and "already trained, reused" in out
    assert "held-out camera retrieval top-1" in out and "demo done" in out
    assert "held-out Make accuracy" in out and "splice overlay:" in out and "report.html" in out
    assert out.count("the splice set there was cut from other photos: rebuilt") == 1


def test_cli_usage_and_unknown_command(capsys):
    assert cli_main([]) == 0
    assert "shards" in capsys.readouterr().out
    assert cli_main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_split_folder_holds_out_every_tenth_image_the_shard_builder_reads(tmp_path):
    from exiflang.demo import split_folder
    from exiflang.pipeline.sources.base import IMAGE_EXTENSIONS

    src = tmp_path / "photos"
    (src / "cam_b").mkdir(parents=True)
    names = (
        [f"cam_a_{i:02d}.jpg" for i in range(12)]
        + [f"cam_b/{i:02d}.png" for i in range(6)]
        + ["cam_b/raw.tif", "notes.txt", "cam_b/list.csv"]
    )
    for n in names:
        (src / n).write_bytes(b"x")
    train, held = split_folder(src, tmp_path / "split")
    linked = sorted(p.resolve() for p in [*train.iterdir(), *held.iterdir()])
    images = sorted(p.resolve() for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    assert linked == images and len(images) == 19  # every image once, nothing else
    assert len(list(held.iterdir())) == 1  # every 10th of 19
    # Links are ordered by a hash of the path, so sorted link names do not follow the cameras.
    order = [p.resolve().parent.name for p in sorted(train.iterdir())]
    assert order != sorted(order)
    again = split_folder(src, tmp_path / "split")  # a second call reuses the split
    assert again == (train, held) and len(list(train.iterdir())) == 18
