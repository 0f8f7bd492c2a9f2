"""The Python API (exiflang/api.py) on the tiny random-init model of tests/eval/lookup_fixtures.py:
every input kind gives the same answer, detect == the Detector's arrays, lookup == the Searcher's
answer, check-exif's fields and verdicts, one-line ImageInputErrors, and `import exiflang` stays light."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import exiflang
from exiflang import api
from tests.eval import lookup_fixtures as fx


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> fx.TinyRun:
    return fx.build(tmp_path_factory.mktemp("api_tiny"))


@pytest.fixture(scope="module")
def model(tiny):
    return exiflang.load(tiny.model, threads=2)


@pytest.fixture(scope="module")
def photo(tiny) -> Path:
    return sorted(tiny.test_photos.iterdir())[0]


def test_import_exiflang_does_not_import_torch() -> None:
    code = "import sys, exiflang; assert callable(exiflang.load); print('torch' in sys.modules)"
    # `exiflang.load` is looked up lazily: touching the name must not import the API's modules yet.
    code = "import sys, exiflang; print('torch' in sys.modules, 'exiflang.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_info_is_json(model, tiny) -> None:
    info = model.info()
    json.dumps(info)
    assert info["embed_dim"] == 128 and info["tags"] == len(model.vocab) > 0
    assert info["name"] == tiny.model.name and isinstance(info["card"], dict)
    assert model.card == info["card"]


def test_every_input_kind_reads_the_same_pixels(photo) -> None:
    ref = api.read_image(photo)
    data = photo.read_bytes()
    assert ref.dtype == np.uint8 and ref.ndim == 3 and ref.shape[2] == 3
    for other in (str(photo), data, bytearray(data), Image.open(io.BytesIO(data)), ref.copy()):
        assert np.array_equal(api.read_image(other), ref)


def test_embed_equal_on_path_bytes_pil_array(model, photo) -> None:
    data = photo.read_bytes()
    vecs = [model.embed(x) for x in (photo, data, Image.open(io.BytesIO(data)), api.read_image(photo))]
    assert vecs[0].shape == (128,) and vecs[0].dtype == np.float32
    assert abs(float(np.linalg.norm(vecs[0])) - 1.0) < 1e-5
    for v in vecs[1:]:
        np.testing.assert_array_equal(v, vecs[0])


def test_detect_equals_detector_arrays(model, tiny, photo) -> None:
    from exiflang.eval.forensics.detector import Detector

    det = model.detect(photo.read_bytes())
    rgb = api.read_image(photo)
    ref = Detector(tiny.model, device="cpu").detect(rgb)
    assert det.image_size == rgb.shape[:2] == det.heatmap.shape  # smaller than max_side: full size
    np.testing.assert_allclose(det.heatmap, ref.heatmap, atol=1e-5)
    np.testing.assert_array_equal(det.raw_mask, ref.mask)
    np.testing.assert_allclose(det.cell_map, ref.cell_map, atol=1e-5)
    np.testing.assert_allclose(det.ncuts_heatmap, ref.ncuts_heatmap, atol=1e-5)
    assert det.scores.keys() == ref.scores.keys()
    for k, v in ref.scores.items():
        assert det.scores[k] == pytest.approx(v, abs=1e-5)
    assert det.score == det.scores["score_mean_dist"]
    assert det.verdict in api.DETECT_VERDICTS
    assert det.verdict == ref.verdict and det.percentile == ref.percentile
    assert (det.mask is not None) == (det.verdict == "spliced")
    doc = det.to_json()
    json.dumps(doc)
    assert doc["image_size"] == list(rgb.shape[:2]) and doc["verdict"] == det.verdict
    png = det.heatmap_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(io.BytesIO(png)).size == rgb.shape[1::-1]
    assert det.heatmap_png(overlay_on=rgb)[:8] == b"\x89PNG\r\n\x1a\n"
    buf = io.BytesIO()
    det.save_npz(buf)
    buf.seek(0)
    with np.load(buf) as z:
        np.testing.assert_allclose(z["cell_map"], ref.cell_map, atol=1e-5)
        assert str(z["verdict"]) == det.verdict and "heatmap" not in z
    buf = io.BytesIO()
    det.save_npz(buf, full_maps=True)
    buf.seek(0)
    with np.load(buf) as z:
        np.testing.assert_allclose(z["heatmap"], ref.heatmap, atol=1e-5)


def test_max_side_bounds_the_maps_not_the_analysis(model, photo) -> None:
    """The photo is analysed at full resolution whatever max_side: the same scores, verdict and
    cell map; only the returned maps and the PNGs are bounded."""
    full = model.detect(photo, max_side=None)
    small = model.detect(photo, max_side=100)
    h, w = full.image_size
    assert full.heatmap.shape == (h, w) and max(small.heatmap.shape) == 100 < max(h, w)
    assert small.raw_mask.shape == small.ncuts_heatmap.shape == small.heatmap.shape
    assert small.scores == pytest.approx(full.scores, abs=1e-6) and small.verdict == full.verdict
    np.testing.assert_allclose(small.cell_map, full.cell_map, atol=1e-6)
    assert small.result.heatmap.shape == (h, w)  # the full-size maps are kept
    assert max(Image.open(io.BytesIO(small.heatmap_png())).size) == 100
    overlay = Image.open(io.BytesIO(small.heatmap_png(overlay_on=photo)))
    assert max(overlay.size) <= 100
    # Drawn from the full-size maps: the same picture as from a full-size detection at that bound.
    assert small.heatmap_png(overlay_on=photo) == full.heatmap_png(overlay_on=photo, max_side=100)
    with pytest.raises(ValueError, match="max_side=0"):
        model.detect(photo, max_side=0)


def test_detector_config_given_to_load(tiny, photo) -> None:
    from exiflang.eval.forensics.detector import Detector

    config = api.DetectorConfig(per_side=3, ncuts=False, device="cuda:7", batch_size=7)
    coarse = exiflang.load(tiny.model, detector=config, batch_size=32)
    assert coarse.detector_config == config.replace(device="cpu", batch_size=32)  # the model's device
    det = coarse.detect(photo)
    assert det.ncuts_heatmap is None and det.result.grid.count <= 16
    ref = Detector(tiny.model, per_side=3, ncuts=False, device="cpu").detect(api.read_image(photo))
    assert det.scores == pytest.approx(ref.scores, abs=1e-6) and det.result.settings == ref.settings
    assert coarse.detect(photo, ncuts=True).ncuts_heatmap is not None
    with pytest.raises(api.ImageInputError, match=r"^frame 7: .*smaller than one 124x124 patch"):
        coarse.detect(np.zeros((100, 100, 3), np.uint8), name="frame 7")


def test_calibrate_writes_the_reference_detect_judges_against(tiny, tmp_path) -> None:
    import shutil

    from exiflang.eval.forensics.calibration import REFERENCE

    folder = shutil.copytree(tiny.model, tmp_path / "model")
    m = exiflang.load(folder, detector=api.DetectorConfig(per_side=2))
    photos = sorted(tiny.train_photos.iterdir())
    assert m.detect(photos[0]).verdict == "unknown"
    with pytest.raises(ValueError, match="at least 10"):
        m.calibrate(photos[:3])
    assert not (folder / REFERENCE).exists()
    cal = m.calibrate([*photos, tmp_path / "gone.jpg"], source="train photos")
    assert cal.path == folder / REFERENCE and cal.path.is_file()
    assert cal.reference.photos == len(photos) and cal.reference.settings["per_side"] == 2
    assert len(cal.skipped) == 1 and "gone.jpg" in cal.skipped[0]
    doc = cal.to_json()
    json.dumps(doc)
    assert doc["edges"][0] <= doc["edges"][1] and doc["band"] == [90.0, 99.0]
    judged = m.detect(photos[0])  # judged from now on, and by a fresh load of the folder
    assert judged.verdict in ("authentic", "inconclusive", "spliced") and 0 <= judged.percentile <= 100
    again = exiflang.load(folder, detector=api.DetectorConfig(per_side=2)).detect(photos[0])
    assert again.percentile == judged.percentile
    assert exiflang.load(folder).detect(photos[0]).verdict == "unknown"  # another grid: not judged


def test_map_size_and_shrink() -> None:
    assert api.map_size(3000, 4000, 1600) == (1200, 1600)
    assert api.map_size(300, 400, 1600) == (300, 400)
    assert api.map_size(300, 400, None) == (300, 400)
    heat = np.linspace(0, 1, 400 * 300, dtype=np.float32).reshape(300, 400)
    small = api._shrink(heat, (150, 200))
    assert small.shape == (150, 200) and small.dtype == np.float32 and 0 <= small.min() <= small.max() <= 1
    mask = np.zeros((300, 400), bool)
    mask[:, 200:] = True
    assert api._shrink(mask, (150, 200)).dtype == bool and api._shrink(mask, (150, 200))[:, 100:].all()


def test_lookup_equals_searcher(model, tiny, photo) -> None:
    from exiflang.eval.index.lookup import lookup_photos

    index = exiflang.load_index(tiny.index)
    assert index.size == 12
    res = model.lookup(str(photo), index, k=3)
    ref = lookup_photos(tiny.model, tiny.index, [photo], k=3, device="cpu")[0]
    assert [n["key"] for n in res.neighbours] == [n["key"] for n in ref["neighbours"]]
    for a, b in zip(res.neighbours, ref["neighbours"]):
        assert a["similarity"] == pytest.approx(b["similarity"], abs=1e-5)
        assert 0 <= a["row"] < index.size
        assert index.vectors.table["key"].iloc[a["row"]] == a["key"]
    for values in res.votes.values():
        shares = [s for _, s in values]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
    assert res.votes["Make"][0][0] == ref["predictions"]["Make"]["value"]
    assert isinstance(res.known, bool)
    json.dumps(res.to_json())
    assert model.lookup(photo.read_bytes(), tiny.index, k=3).neighbours == res.neighbours  # a path works too
    assert res.familiarity["known"] == res.known and res.model_card == ""
    assert res.predictions == ref["predictions"] and res.familiarity == ref["familiarity"]


def test_lookup_weighted_tags_and_grid(model, tiny, photo) -> None:
    from exiflang.eval.index.lookup import lookup_photos

    res = model.lookup(photo, tiny.index, k=4, weighted=True, tags=["Make", "Model"])
    ref = lookup_photos(tiny.model, tiny.index, [photo], k=4, weighted=True, tags=["Make", "Model"], device="cpu")
    assert list(res.predictions) == ["Make", "Model"] == list(res.votes)
    assert res.predictions == ref[0]["predictions"]
    index = exiflang.load_index(tiny.index, grid={"per_side": 3, "patch": None})
    assert index.grid == {"patch": 124, "per_side": 3, "mode": "grid"}
    other = model.lookup(photo, index, k=4)
    ref = lookup_photos(tiny.model, tiny.index, [photo], k=4, grid={"per_side": 3}, device="cpu")[0]
    assert [n["key"] for n in other.neighbours] == [n["key"] for n in ref["neighbours"]]
    assert model.searcher(index) is not model.searcher(tiny.index)  # one per grid


def test_searcher_refuses_an_index_of_another_model(tiny, tmp_path) -> None:
    import shutil

    other = shutil.copytree(tiny.model, tmp_path / "other")
    tags = json.loads((other / "tags.json").read_text())
    tags["tags"] = tags["tags"][:-1]
    (other / "tags.json").write_text(json.dumps(tags))
    with pytest.raises(ValueError, match=r"tags\.json"):
        exiflang.load(other).searcher(tiny.index)


def test_check_exif_inputs_and_fields(model, tiny, photo) -> None:
    own = model.check_exif(photo, reference=tiny.emb)
    assert own.verdict in api.CHECK_VERDICTS and own.verdict != "no-exif"
    assert own.claimed["Make"] and own.exif_source == str(photo)
    assert 0 <= own.score <= 1 and 0 <= own.percentile <= 100 and own.calibrated
    by_bytes = model.check_exif(photo.read_bytes(), reference=tiny.emb)
    assert by_bytes.score == pytest.approx(own.score, abs=1e-6) and by_bytes.percentile == own.percentile
    given = model.check_exif(api.read_image(photo), own.claimed, reference=tiny.emb, per_tag=False)
    assert given.exif_source == "given" and given.score == pytest.approx(own.score, abs=1e-6)
    assert {r["tag"] for r in own.per_tag} <= set(model.vocab)
    for r in own.per_tag:
        assert r.keys() >= {"tag", "claimed", "support", "best_alternative"}
    supports = [r["support"] for r in own.per_tag if r["support"] is not None]
    assert supports == sorted(supports)  # least supported first
    doc = own.to_json()
    json.dumps(doc)
    assert doc["reference"]["reference"] == str(tiny.emb)
    # A camera no reference photo has: not judged, whatever the score (a synthetic model scored
    # genuine real photos "inconsistent" before this rule; docs/check_exif.md).
    alien = model.check_exif(photo, dict(own.claimed, Model="Nothing 1"), reference=tiny.emb, per_tag=False)
    assert alien.verdict == "inconclusive" and "Model 'Nothing 1' is not among" in alien.reason
    assert own.reason == "" and alien.to_json()["reason"] == alien.reason
    # Pixels only (an array carries no file) or an empty claim: nothing to check.
    for claim in (None, {}, {"Foo": "1"}):
        chk = model.check_exif(api.read_image(photo) if claim is None else photo, claim, reference=tiny.emb)
        assert chk.verdict == "no-exif" and chk.per_tag == [] and chk.to_json()["score"] is None


def test_check_exif_default_reference_is_the_training_shards(model, tiny, photo, tmp_path) -> None:
    with pytest.raises(ValueError, match="no reference EXIF set"):
        model.check_exif(photo)  # the tiny model has no card or run config naming its shards
    chk = exiflang.load(tiny.model, reference=tiny.train_shards).check_exif(photo, per_tag=False)
    assert chk.reference["reference"] == str(tiny.train_shards) and chk.calibrated


def test_check_exif_reference_index(model, tiny, photo) -> None:
    chk = model.check_exif(photo, reference=exiflang.load_index(tiny.index), per_tag=False)
    assert chk.calibrated and chk.reference["reference_rows"] == 12


def test_concurrent_calls_share_one_model(model, tiny, photo) -> None:
    """A service's worker threads share one Model: the same answers as one call at a time."""
    from concurrent.futures import ThreadPoolExecutor

    one = model.check_exif(photo, reference=tiny.emb, per_tag=False).score
    with ThreadPoolExecutor(4) as pool:
        scores = list(pool.map(lambda _: model.check_exif(photo, reference=tiny.emb).score, range(8)))
        vecs = list(pool.map(lambda _: model.embed(photo), range(4)))
    assert scores == pytest.approx([one] * 8, abs=1e-6)
    for v in vecs[1:]:
        np.testing.assert_allclose(v, vecs[0], atol=1e-6)


def test_reference_without_vectors_is_uncalibrated(model, tiny, photo) -> None:
    from exiflang.eval.consistency.reference import Reference, from_embeddings

    emb = from_embeddings(tiny.emb)
    bare = Reference(emb.exifs, None, emb.grid, "bare")
    chk = model.check_exif(photo, reference=bare, per_tag=False)
    assert not chk.calibrated and chk.score == pytest.approx(chk.percentile / 100)
    assert chk.reference["calibration"] is None


def test_index_reference_reads_back_its_vectors(tiny, tmp_path) -> None:
    import shutil

    from exiflang.eval.consistency.reference import from_embeddings, from_index

    emb = from_embeddings(tiny.emb)
    via_emb = from_index(tiny.index)  # its embeddings folder still exists
    moved = tmp_path / "index"
    shutil.copytree(tiny.index, moved)
    info = json.loads((moved / "index.json").read_text())
    info.setdefault("sources", {})["embeddings"] = str(tmp_path / "gone")
    (moved / "index.json").write_text(json.dumps(info))
    via_faiss = from_index(moved)  # gone: read back from the FAISS index
    for ref in (via_emb, via_faiss):
        assert ref.exifs == emb.exifs and ref.vectors is not None
        np.testing.assert_allclose(ref.vectors, emb.vectors, atol=1e-6)


@pytest.mark.parametrize(
    "bad, match",
    [
        ("missing.jpg", "missing.jpg: no such file"),
        (b"", "empty file"),
        (b"not an image at all", "not a readable image"),
        (np.zeros((64, 64), np.uint8), r"expected uint8 \[H,W,3\]"),
        (np.zeros((64, 64, 3), np.float32), r"expected uint8 \[H,W,3\]"),
        (12345, "not an image"),
    ],
)
def test_bad_inputs_are_one_line_image_input_errors(model, bad, match, tmp_path) -> None:
    with pytest.raises(api.ImageInputError, match=match) as err:
        model.embed(str(tmp_path / bad) if isinstance(bad, str) else bad)
    assert "\n" not in str(err.value) and isinstance(err.value, ValueError)


def test_too_small_and_truncated_images(model, photo, tmp_path) -> None:
    small = io.BytesIO()
    Image.new("RGB", (100, 80)).save(small, "PNG")
    for call in (model.detect, model.embed):
        with pytest.raises(api.ImageInputError, match="smaller than one 124x124 patch"):
            call(small.getvalue())
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(photo.read_bytes()[:200])
    with pytest.raises(api.ImageInputError, match=r"cut\.jpg"):
        model.detect(cut)


def test_not_a_model_or_index(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"config\.json: missing"):
        exiflang.load(tmp_path)
    with pytest.raises(ValueError, match=r"index\.json: missing"):
        exiflang.load_index(tmp_path)


# -- the check-exif command (same tiny model) ------------------------------------------------------


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from exiflang.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_check_exif_command(tiny, photo, tmp_path, capsys) -> None:
    code, out, err = run_cli(
        [
            "check-exif",
            str(photo),
            str(tiny.test_photos),
            "--model",
            str(tiny.model),
            "--reference",
            str(tiny.emb),
            "--out",
            str(tmp_path / "out"),
        ],
        capsys,
    )
    assert code == 0, err
    lines = out.strip().splitlines()
    n = 1 + len(list(tiny.test_photos.iterdir()))
    assert len(lines) == n and lines[0].startswith(f"{photo}: ") and "percentile" in lines[0]
    recs = [json.loads(x) for x in (tmp_path / "out" / "check_exif.jsonl").read_text().splitlines()]
    assert len(recs) == n and recs[0]["file"] == str(photo) and recs[0]["verdict"] in api.CHECK_VERDICTS
    assert recs[0]["per_tag"] and recs[0]["calibrated"]


def test_check_exif_command_given_claim_and_failures(tiny, photo, tmp_path, capsys) -> None:
    claim = tmp_path / "claim.json"
    claim.write_text(json.dumps({"Make": "Nobody", "Model": "Nothing 1"}))
    base = ["--model", str(tiny.model), "--reference", str(tiny.emb), "--no-per-tag"]
    code, out, err = run_cli(
        ["check-exif", str(photo), str(tmp_path / "gone.jpg"), "--exif", str(claim), *base], capsys
    )
    assert code == 1 and out.count("\n") == 1 and "gone.jpg: no such file" in err  # one answered, one failed
    code, _, err = run_cli(["check-exif", str(tmp_path / "gone.jpg"), *base], capsys)
    assert code == 2 and "gone.jpg" in err  # nothing answered
    claim.write_text("[1, 2]")
    code, _, err = run_cli(["check-exif", str(photo), "--exif", str(claim), *base], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "claim.json: expected a non-empty JSON object" in err


@pytest.mark.parametrize("what", ["model", "reference", "out"])
def test_check_exif_command_bad_folders_exit_2(tiny, photo, tmp_path, capsys, what) -> None:
    (tmp_path / "file").write_text("x")
    args = {"model": str(tiny.model), "reference": str(tiny.emb), "out": str(tmp_path / "o")}
    args[what] = str(tmp_path / "file") if what == "out" else str(tmp_path)
    code, _, err = run_cli(["check-exif", str(photo), *(f"--{k}={v}" for k, v in args.items())], capsys)
    assert code == 2, err
    assert err.startswith("exiflang check-exif: error: ") and err.strip().count("\n") == 0


# -- docs/api.md's examples ------------------------------------------------------------------------


def test_docs_api_examples_run(tiny, photo, monkeypatch, capsys) -> None:
    """Every ```python block of docs/api.md, in order, in one namespace, on the tiny model."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) >= 5
    for name, value in {
        "EXIFLANG_MODEL": tiny.model,
        "EXIFLANG_INDEX": tiny.index,
        "EXIFLANG_PHOTO": photo,
        "EXIFLANG_REFERENCE": tiny.emb,
        "EXIFLANG_AUTHENTIC": tiny.train_photos,
    }.items():
        monkeypatch.setenv(name, str(value))
    namespace: dict = {"__name__": "docs_api"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/api.md[python block {i + 1}]", "exec"), namespace)
    out = capsys.readouterr().out
    assert "not a readable image" in out and namespace["chk"].verdict != "no-exif"
    assert namespace["cal"].reference.photos == 12 and namespace["cal"].path is None  # save=False: nothing written
