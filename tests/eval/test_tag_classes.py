"""Tag classes: number parsing, categorical classes with rare values dropped, quantile bins; on
hand-made values and on the EXIF of the real photos in ../shared/data/photos."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from exiflang.eval.tags.classes import fit_one, fit_tag_classes, format_number, parse_number


@pytest.mark.parametrize(
    "value, expected",
    [
        ("1/200 sec", 0.005),
        ("f/8.0", 8.0),
        ("55 mm", 55.0),
        ("100", 100.0),
        ("0 EV", 0.0),
        ("-2/3 EV", -2 / 3),
        ("72 dots per inch", 72.0),
        ("4.0", 4.0),
        ("2 sec", 2.0),
        ("3008 pixels", 3008.0),
        (" 5.8 mm ", 5.8),
        ("+1 EV", 1.0),
    ],
)
def test_parse_number(value, expected):
    assert parse_number(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value",
    [
        "2009:01:12 21:14:28",
        "Ver.1.00",
        "Auto",
        "Digital zoom not used",
        "",
        "1/0 sec",
        "JPEG (old-style)",
        "320 x 240 pixels",
        None,
        "1.2.3",
    ],
)
def test_parse_number_rejects(value):
    assert parse_number(value) is None


def test_format_number():
    assert format_number(0.004, fractions=True) == "1/250"
    assert format_number(0.004, fractions=False) == "0.004"
    assert format_number(55.0, fractions=False) == "55"
    assert format_number(13590.5, fractions=False) == "13590"  # no exponent in labels
    assert format_number(2.8, fractions=True) == "2.8"


def test_categorical_drops_rare_values():
    raw = ["Auto"] * 60 + ["Manual"] * 30 + ["Odd"] * 1 + [None] * 9
    tc = fit_one("White Balance Mode", raw, min_frac=0.01, min_count=2)
    assert tc.kind == "categorical"
    assert tc.labels == ["Auto", "Manual"] and tc.counts == [60, 30]
    assert tc.representative == ["Auto", "Manual"]
    assert (tc.n_present, tc.n_images, tc.n_rare) == (91, 100, 1)
    assert tc.classify("Auto") == 0 and tc.classify(" Manual ") == 1
    assert tc.classify("Odd") is None and tc.classify(None) is None and tc.classify("Never seen") is None
    np.testing.assert_array_equal(tc.classify_many(["Manual", None, "Odd", "Auto"]), [1, -1, -1, 0])


def test_min_frac_applies_to_images_with_the_tag():
    raw = ["a"] * 95 + ["b"] * 5
    assert fit_one("t", raw, min_frac=0.06, min_count=1).labels == ["a"]
    assert fit_one("t", raw, min_frac=0.05, min_count=1).labels == ["a", "b"]
    assert fit_one("t", raw, min_frac=0.0, min_count=6).labels == ["a"]


def test_one_class_or_no_values_is_not_evaluable():
    one = fit_one("Resolution Unit", ["Inch"] * 50 + ["cm"])
    assert not one.evaluable and "one class" in one.reason
    assert fit_one("Date/Time", ["2009:01:12 21:14:28", "2009:01:12 21:14:30"]).reason == "every value is rare"
    none = fit_one("Missing", [None] * 10)
    assert none.kind == "none" and not none.evaluable and "no train image" in none.reason
    assert none.classify("x") is None


def test_numeric_tag_with_few_values_is_categorical():
    raw = ["72 dots per inch"] * 10 + ["300 dots per inch"] * 8 + ["180 dots per inch"] * 5
    tc = fit_one("X Resolution", raw, max_bins=8)
    assert tc.kind == "categorical" and tc.labels[0] == "72 dots per inch"


def test_exposure_time_bins():
    # 12 distinct shutter speeds over three decades, 1/1000 to 1 second.
    speeds = [1000, 800, 500, 320, 250, 200, 125, 60, 30, 15, 4, 1]
    raw = [f"1/{s} sec" if s > 1 else "1 sec" for s in speeds for _ in range(10)]
    raw += ["Bulb", "Bulb", "Bulb", "weird"]  # 3 % not numeric: still a numeric tag
    tc = fit_one("Exposure Time", raw, max_bins=4, min_count=3)
    assert tc.kind == "numeric" and tc.n_bins == 4
    assert sorted(tc.edges) == tc.edges and len(set(tc.edges)) == len(tc.edges)
    assert sum(tc.counts[:4]) == 120
    assert max(tc.counts[:4]) - min(tc.counts[:4]) <= 10  # quantile bins are balanced
    # A frequent non-numeric value is its own class after the bins; a rare one is dropped.
    assert tc.labels[4] == "Bulb" and tc.classify("Bulb") == 4 and tc.classify("weird") is None
    assert tc.n_rare == 1
    assert tc.labels[0].startswith("< 1/") and tc.labels[0].endswith(" sec")
    assert tc.labels[3].startswith(">= 1/")
    # Values never seen in training still fall in a bin; the ends are open.
    assert tc.classify("1/8000 sec") == 0 and tc.classify("30 sec") == 3
    assert tc.classify("1/1000 sec") == 0 and tc.classify("1 sec") == 3
    # Each bin's representative is its most common raw value, and is classified into it.
    for i, rep in enumerate(tc.representative):
        assert tc.classify(rep) == i


def test_bins_against_a_naive_assignment():
    rng = np.random.default_rng(1)
    focal = np.round(rng.lognormal(3.5, 0.8, size=500), 1)
    raw = [f"{x} mm" for x in focal]
    tc = fit_one("Focal Length", raw, max_bins=8)
    assert tc.kind == "numeric"
    edges = tc.edges
    for value, x in zip(raw[:200], focal[:200]):
        naive = sum(1 for e in edges if x >= e)  # bin = number of edges at or below the value
        assert tc.classify(value) == naive
    assert sum(tc.counts) == 500 and all(c > 0 for c in tc.counts)


def test_fit_tag_classes_keeps_vocabulary_order():
    exifs = [{"Make": "A", "Model": "A1"}, {"Make": "B", "Model": "B1"}] * 5
    tcs = fit_tag_classes(exifs, ["Model", "Make", "Software"])
    assert list(tcs) == ["Model", "Make", "Software"]
    assert tcs["Make"].labels == ["A", "B"] and not tcs["Software"].evaluable


@pytest.fixture(scope="module")
def photo_exifs(photos_dir: Path) -> list[dict[str, str]]:
    from exiflang.pipeline.exif.parse import read_exif

    return [read_exif(p.read_bytes()) for p in sorted(photos_dir.glob("*.jpg"))]


def test_real_photos(photo_exifs):
    assert len(photo_exifs) >= 100
    tags = [
        "Make",
        "Model",
        "Exposure Time",
        "F-Number",
        "Focal Length",
        "ISO Speed Ratings",
        "Flash",
        "Date/Time",
        "Resolution Unit",
        "Exposure Bias Value",
    ]
    tcs = fit_tag_classes(photo_exifs, tags)
    kinds = {t: tcs[t].kind for t in tags}
    assert kinds["Exposure Time"] == kinds["F-Number"] == kinds["Focal Length"] == "numeric"
    assert kinds["Make"] == kinds["Flash"] == "categorical"
    assert kinds["Date/Time"] == "categorical"  # dates are not numbers
    assert not tcs["Resolution Unit"].evaluable  # every photo says "Inch"
    make = tcs["Make"]
    assert make.labels[:2] == ["Canon", "NIKON CORPORATION"]
    # Model: 80 models on 102 photos, so most are rare; the Dresden Nikons (8-9 each) are kept.
    assert {"NIKON D70", "NIKON D200", "NIKON D70s"} <= set(tcs["Model"].labels)
    assert tcs["Model"].n_rare > 50
    for tag in tags:
        tc = tcs[tag]
        ids = tc.classify_many(e.get(tag) for e in photo_exifs)
        # Every train value is either in a class or counted as rare/absent: nothing lost.
        assert (ids >= 0).sum() == sum(tc.counts)
        assert (ids >= 0).sum() + tc.n_rare == tc.n_present
        if tc.evaluable:
            assert Counter(ids[ids >= 0].tolist()) == dict(enumerate(tc.counts))
            for i, rep in enumerate(tc.representative):
                assert tc.classify(rep) == i
    exposure = tcs["Exposure Time"]
    assert 2 <= exposure.n_bins <= 8 and exposure.labels[0].endswith("sec")
