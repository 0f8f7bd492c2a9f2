"""The 98 files of ../shared/data/malformed (49 broken or odd JPEGs from a fuzzing suite, each
beside a ``.jpg.txt`` dump) through every image entry point: one row or one line each, nothing
crashes, no traceback.

- ``exiflang shards`` on the folder itself (read in place, never copied): one Parquet row with a
  status per image file; the ``.txt`` files are not images and are counted as skipped
  (``job.json``: ``source.skipped.not_image``), not turned into rows.
- ``exiflang detect`` and ``exiflang lookup`` on the folder: one result or one error per image.
- ``exiflang embed``: the samples the pipeline kept from the folder, each one embedded or counted
  as skipped; and, where embed reads a photo folder itself (``--images``), the folder: one row or
  one "skipped FILE: reason" line per image.

Commands run as subprocesses (a decoder crash must not take pytest down with it), on the tiny
random-weight model and index of tests/eval/lookup_fixtures.py, with small patches (32 px) so
the whole module takes well under a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from exiflang.pipeline.sources.base import IMAGE_EXTENSIONS
from tests.eval import lookup_fixtures as fx

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--patch-size", "32", "--device", "cpu"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> fx.TinyRun:
    return fx.build(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def malformed(shared_data: Path) -> Path:
    folder = shared_data / "malformed"
    assert len(list(folder.iterdir())) == 98, "the shared malformed folder changed"
    return folder


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def exiflang(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("EXIFLANG_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "exiflang", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-3000:]
    assert proc.returncode in (0, 1), (proc.returncode, proc.stderr[-3000:])  # 2 would mean "nothing usable"
    return proc


def error_lines(stderr: str, prog: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"exiflang {prog}: ")]


@pytest.fixture(scope="module")
def malformed_shards(malformed: Path, tmp_path_factory) -> Path:
    """The pipeline's shards of the folder (min-tags 0, small patches: keep all it can decode)."""
    out = tmp_path_factory.mktemp("malformed") / "shards"
    exiflang(
        "shards",
        "--source",
        str(malformed),
        "--out",
        str(out),
        "--executor",
        "local",
        "-q",
        "--min-tags",
        "0",
        "--patch-size",
        "16",
    )
    return out


def test_shards_one_row_with_a_status_per_image(malformed, malformed_shards):
    images = images_in(malformed)
    table = pq.read_table(sorted(malformed_shards.glob("*.parquet"))).to_pylist()
    assert len(table) == len(images) == 49
    assert sorted(Path(r["url"]).name for r in table) == sorted(p.name for p in images)
    assert all(r["status"] for r in table)
    failed = [r for r in table if r["status"] != "success"]
    assert failed and all(r["error"] and "\n" not in r["error"] for r in failed)
    job = json.loads((malformed_shards / "job.json").read_text())
    assert job["source"]["skipped"] == {"not_image": 98 - len(images)}
    assert job["rows"] == len(images) and not job["failed_shards"]


def test_detect_one_result_or_one_error_line_per_image(tiny, malformed, tmp_path):
    images = images_in(malformed)
    out = tmp_path / "detect"
    proc = exiflang(
        "detect",
        "--model",
        str(tiny.model),
        str(malformed),
        "--out",
        str(out),
        "--patches-per-side",
        "2",
        "--no-ncuts",
        "--max-side",
        "64",
        "--no-compress",
        *SMALL,
    )
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(Path(r["path"]).name for r in records) == sorted(p.name for p in images)
    bad = [r for r in records if r["status"] == "error"]
    assert all(r["status"] in ("ok", "error") for r in records)
    lines = error_lines(proc.stderr, "detect")
    assert len(lines) == len(bad) and all(Path(r["path"]).name in r["error"] for r in bad)


def test_lookup_one_answer_or_one_error_line_per_image(tiny, malformed):
    images = images_in(malformed)
    proc = exiflang(
        "lookup",
        "--model",
        str(tiny.model),
        "--index",
        str(tiny.index),
        str(malformed),
        "--json",
        "-k",
        "3",
        "--per-side",
        "1",
        *SMALL,
    )
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["file"] for r in rows] == [str(p) for p in images]
    bad = [r for r in rows if "error" in r]
    assert all("neighbours" in r for r in rows if "error" not in r)
    assert len(error_lines(proc.stderr, "lookup")) == len(bad)
    assert all(r["error"].startswith(r["file"] + ": ") for r in bad)


@pytest.mark.slow
def test_embed_every_kept_sample_embedded_or_skipped(tiny, malformed_shards, tmp_path):
    proc = exiflang(
        "embed",
        "--model",
        str(tiny.model),
        "--data",
        str(malformed_shards),
        "--out",
        str(tmp_path / "emb"),
        "--per-side",
        "1",
        "--no-progress",
        *SMALL,
    )
    samples = sum(json.loads((malformed_shards / "sizes.json").read_text()).values())
    counts = json.loads((tmp_path / "emb" / "meta.json").read_text())["counts"]
    assert counts["samples_read"] == samples
    assert counts["rows"] + sum(counts["skipped"].values()) == samples
    assert proc.stdout.startswith(f"embedded {counts['rows']} photos")


@pytest.mark.slow
def test_embed_of_the_photo_folder_one_row_or_one_skip_line_per_image(tiny, malformed, tmp_path):
    from exiflang.eval.embed.command import COMMAND

    if "--images" not in COMMAND.parser().format_help():
        pytest.skip("this `exiflang embed` takes shards only (covered above)")
    images = images_in(malformed)
    proc = exiflang(
        "embed",
        "--model",
        str(tiny.model),
        "--images",
        str(malformed),
        "--out",
        str(tmp_path / "emb"),
        "--per-side",
        "1",
        "--no-progress",
        *SMALL,
    )
    counts = json.loads((tmp_path / "emb" / "meta.json").read_text())["counts"]
    assert counts["samples_read"] == len(images)
    assert counts["rows"] + sum(counts["skipped"].values()) == len(images)
    skipped = [line for line in proc.stderr.splitlines() if " skipped " in line]
    assert len(skipped) == sum(counts["skipped"].values())
    named = {line.split(" skipped ", 1)[1].split(": ", 1)[0] for line in skipped}
    assert len(named) == len(skipped) and named <= {str(p) for p in images}  # each a different image
