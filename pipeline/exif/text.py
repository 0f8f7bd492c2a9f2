"""EXIF-to-text rendering: the sentence the text encoder reads for one photo.

Formats (ablations of the paper's Table 5):

- ``paper``    — ``Tag: value`` pairs in vocabulary order joined by a space;
- ``code``     — the same pairs joined by ", " (the authors' training code);
- ``values``   — values only, joined by a space;
- ``shuffled`` — ``paper`` with the pairs in a random order per call;
- ``values_shuffled`` — ``values`` in a random order per call (no tag names, no order): with the
  three above, the four cells of the tag-format ablation (names x order).

``clean=True`` applies the authors' value cleaning (off by default, docs/design.md §3).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence

FORMATS = ("paper", "code", "values", "shuffled", "values_shuffled")
RANDOM_ORDER = ("shuffled", "values_shuffled")  # formats whose order is drawn per call

_ISO_TAGS = {"ISO Speed Ratings", "ISO Speed", "Photographic Sensitivity"}
_FOCAL_TAGS = {"Focal Length", "Focal Length 35"}
# Tags whose rational values the authors' code reduced by integer division.
_INT_DIV_TAGS = {
    "X Resolution",
    "Y Resolution",
    "Focal Plane X Resolution",
    "Focal Plane Y Resolution",
    "Exposure Bias Value",
    "Thumbnail X Resolution",
    "Thumbnail Y Resolution",
}
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9.,/\-]")
_RATIONAL = re.compile(r"(-?\d+)/(\d+)")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_MAX_CLEAN_CHARS = 20


def clean_value(tag: str, value: str) -> str:
    """The authors' cleaning of one value: shortened, reduced, stripped to ``[A-Za-z0-9.,/-]``.

    ISO keeps its first token, focal length one decimal, resolutions and exposure bias the
    integer (floor) division of their rational, values over 20 characters become "Unknown".
    """
    value = value.strip()
    if tag in _ISO_TAGS and value:
        value = value.split()[0]
    elif tag in _FOCAL_TAGS:
        m = _NUMBER.search(value)
        if m:
            value = f"{float(m.group()):.1f}{value[m.end() :]}"
    elif tag in _INT_DIV_TAGS:
        m = _RATIONAL.search(value)
        if m and int(m.group(2)) != 0:
            value = f"{value[: m.start()]}{int(m.group(1)) // int(m.group(2))}{value[m.end() :]}"
    if len(value) > _MAX_CLEAN_CHARS:
        value = "Unknown"
    return _NOT_ALLOWED.sub("", value)


def render_text(
    exif: Mapping[str, str],
    vocab: Sequence[str],
    fmt: str = "paper",
    *,
    clean: bool = False,
    missing: str | None = None,
    rng: random.Random | None = None,
) -> str:
    """Render one photo's EXIF as text over a tag vocabulary.

    Args:
        exif: ``{"Tag Name": "value"}`` as stored in a sample's ``exif.json``.
        vocab: the tags to render, in order (``tags.json``'s ``tags``).
        fmt: one of :data:`FORMATS`.
        clean: apply :func:`clean_value` (the authors' cleaning).
        missing: text for a vocabulary tag the photo lacks; ``None`` leaves the tag out.
        rng: randomness for the :data:`RANDOM_ORDER` formats (a fresh unseeded one if not given).
    Returns:
        The sentence; empty when no vocabulary tag is present.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown text format {fmt!r}; choose from {', '.join(FORMATS)}")
    pairs: list[tuple[str, str]] = []
    for tag in vocab:
        value = exif.get(tag)
        if value is None:
            if missing is None:
                continue
            value = missing
        pairs.append((tag, clean_value(tag, value) if clean else value.strip()))
    if fmt in RANDOM_ORDER:
        (rng or random.Random()).shuffle(pairs)
    if fmt in ("values", "values_shuffled"):
        return " ".join(v for _, v in pairs)
    joined = [f"{t}: {v}" for t, v in pairs]
    return ", ".join(joined) if fmt == "code" else " ".join(joined)
