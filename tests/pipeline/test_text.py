"""Text rendering: formats, vocabulary order, missing tags and the authors' cleaning."""

import random

import pytest

from exiflang.pipeline.exif.text import FORMATS, clean_value, render_text

EXIF = {
    "Make": "Canon",
    "Model": "Canon EOS 20D",
    "ISO Speed Ratings": "400 ",
    "Focal Length": "55 mm",
    "Exposure Time": "1/200 sec",
    "Extra": "x",
}
VOCAB = ["Make", "Model", "Exposure Time", "ISO Speed Ratings", "Focal Length", "Absent"]


def test_paper_and_code_formats_follow_vocab_order():
    assert render_text(EXIF, VOCAB, "paper") == (
        "Make: Canon Model: Canon EOS 20D Exposure Time: 1/200 sec ISO Speed Ratings: 400 Focal Length: 55 mm"
    )
    assert render_text(EXIF, VOCAB, "code") == (
        "Make: Canon, Model: Canon EOS 20D, Exposure Time: 1/200 sec, ISO Speed Ratings: 400, Focal Length: 55 mm"
    )
    assert render_text(EXIF, VOCAB, "values") == "Canon Canon EOS 20D 1/200 sec 400 55 mm"


def test_missing_tags_skipped_or_filled():
    assert "Absent" not in render_text(EXIF, VOCAB)
    assert render_text(EXIF, ["Absent"], missing="Unknown") == "Absent: Unknown"
    assert render_text({}, VOCAB) == ""


def test_shuffled_is_a_permutation_and_seedable():
    a = render_text(EXIF, VOCAB, "shuffled", rng=random.Random(0))
    b = render_text(EXIF, VOCAB, "shuffled", rng=random.Random(0))
    assert a == b
    pairs = {p for p in render_text(EXIF, VOCAB, "paper").split(" ") if p.endswith(":")}
    assert pairs == {p for p in a.split(" ") if p.endswith(":")}
    orders = {render_text(EXIF, VOCAB, "shuffled", rng=random.Random(s)) for s in range(20)}
    assert len(orders) > 1


def test_unknown_format_is_an_error():
    with pytest.raises(ValueError, match="unknown text format"):
        render_text(EXIF, VOCAB, "poetry")
    assert set(FORMATS) == {"paper", "code", "values", "shuffled", "values_shuffled"}


@pytest.mark.parametrize(
    "tag,value,expected",
    [
        ("ISO Speed Ratings", "100 200", "100"),
        ("Focal Length", "55 mm", "55.0mm"),
        ("Focal Length", "5.8 mm", "5.8mm"),
        ("X Resolution", "300/1 dots per inch", "300dotsperinch"),
        ("Exposure Bias Value", "-2/3 EV", "-1EV"),
        ("Exposure Time", "1/200 sec", "1/200sec"),
        ("Model", "A very long model name that goes on", "Unknown"),
        ("Make", "NIKON (Corp.)", "NIKONCorp."),
    ],
)
def test_authors_cleaning(tag, value, expected):
    assert clean_value(tag, value) == expected


def test_cleaning_applies_only_when_asked():
    assert "55.0mm" in render_text(EXIF, VOCAB, clean=True)
    assert "55 mm" in render_text(EXIF, VOCAB, clean=False)
