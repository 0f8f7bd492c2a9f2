"""Describe standard EXIF tag values in words, as metadata-extractor's ExifDescriptorBase does.

Input is one directory (IFD0, SubIFD, IFD1, Interoperability) as ``{tag number: RawValue}``;
output is ``{tag number: description}``, ``None`` meaning "drop this tag".  Descriptions follow
metadata-extractor ("1/200 sec", "f/8.0", "72 dots per inch", "YCbCr", "2.21"), which is what
YFCC100M's side file holds.  This module has the structural (TIFF) tags, the generic fallback
and the dispatch; exposure/lens tags are in exif_format_exposure, text tags in
exif_format_text, code tables in exif_format_enums, GPS in exif_format_gps.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping

from exiflang.pipeline.exif import format_enums as en
from exiflang.pipeline.exif.format_exposure import EXPOSURE_DESCRIBERS
from exiflang.pipeline.exif.format_numbers import (
    RATIONAL_TYPES,
    RawValue,
    float32,
    is_integer,
    java_int,
    rational_value,
    simple_rational,
)
from exiflang.pipeline.exif.format_text import cfa_pattern, cfa_pattern_2, user_comment, windows_xp

Tags = Mapping[int, RawValue]
Describer = Callable[[Tags, int], str | None]
MAX_ARRAY = 16  # metadata-extractor prints longer arrays as "[N values]"
# A bug or an unforeseen value shape in one describer must cost that tag, not the image.
DESCRIBE_ERRORS = (ArithmeticError, ValueError, IndexError, KeyError, TypeError, struct.error)

# Never described: blobs and pointers (maker note, ICC/IPTC/XMP/Photoshop packets, PrintIM,
# padding, OECF/SFR tables, sub-IFD offsets).  Their bytes are not text and would only bloat.
DROPPED_TAGS = frozenset(
    {
        0x014A,
        0x015B,
        0x02BC,
        0x83BB,
        0x8649,
        0x8769,
        0x8773,
        0x8825,
        0x927C,
        0xA005,
        0xA40B,
        0xC4A5,
        0xC6D2,
        0xC6D3,
        0xEA1C,
        0x8828,
        0x920C,
        0xA20C,
    }
)
THUMBNAIL_OFFSET, THUMBNAIL_LENGTH = 0x0201, 0x0202


def describe_directory(tags: Tags, *, thumbnail_offset_base: int = 0, thumbnail: bool = False) -> dict[int, str | None]:
    """Describe every tag of one IFD; ``None`` for tags to drop.

    ``thumbnail_offset_base`` is added to IFD1's thumbnail offset: metadata-extractor counts it
    from the start of the APP1 payload ("Exif\\0\\0" = 6 bytes in a JPEG), exiv2 from the TIFF
    header.
    """
    out: dict[int, str | None] = {}
    for number in tags:
        try:
            if number in DROPPED_TAGS:
                out[number] = None
            elif thumbnail and number in (THUMBNAIL_OFFSET, THUMBNAIL_LENGTH):
                value = tags[number].first_int()
                base = thumbnail_offset_base if number == THUMBNAIL_OFFSET else 0
                out[number] = None if value is None else f"{value + base} bytes"
            else:
                out[number] = describe_tag(tags, number)
        except DESCRIBE_ERRORS:
            out[number] = None
    return out


def describe_tag(tags: Tags, number: int) -> str | None:
    """One tag's description, with metadata-extractor's generic fallback."""
    table = en.INDEXED.get(number)
    if table is not None:
        code = tags[number].first_int()
        return None if code is None else en.indexed(table, code)
    special = _DESCRIBERS.get(number)
    if special is not None:
        return special(tags, number)
    return default_description(tags[number])


def default_description(raw: RawValue) -> str | None:
    """TagDescriptor's fallback: the value as a string, long arrays summarised."""
    if raw.is_string:
        return raw.text
    count = raw.count()
    if count > MAX_ARRAY:
        # An undefined blob has no meaning as numbers; other long arrays get the summary.
        return None if raw.type_name in ("Undefined", "unknown") else f"[{count} values]"
    if raw.type_name in RATIONAL_TYPES:
        rats = raw.rationals()
        if not rats:
            return None
        if len(rats) == 1:  # "n/0" (metadata-extractor prints it) is no value at all
            return simple_rational(rats[0]) if rats[0][1] != 0 or rats[0][0] == 0 else None
        return " ".join(f"{n}/{d}" for n, d in rats)
    if raw.type_name in ("Float", "Double"):
        return _java_floats(raw)
    values = raw.ints()
    if values is None:
        return None
    if raw.type_name in ("Undefined", "SByte") and len(values) > 1:
        values = [v - 256 if v > 127 else v for v in values]  # Java bytes are signed
    return " ".join(str(v) for v in values)


def _java_floats(raw: RawValue) -> str | None:
    parts = []
    for tok in raw.text.split():
        value = float(tok)
        if not math.isfinite(value):
            return None
        parts.append(repr(float32(value) if raw.type_name == "Float" else value))
    return " ".join(parts) or None


def version_string(components: bytes | None, major_digits: int) -> str | None:
    """TagDescriptor.convertBytesToVersionString: [48 50 50 49] -> "2.21", [2 2 0 0] -> "2.200"."""
    if components is None:
        return None
    out = []
    for i, value in enumerate(components[:4]):
        if i == major_digits:
            out.append(".")
        if value < 0x30:
            value += 0x30
        if i == 0 and value == 0x30:
            continue
        if 0x20 <= value < 0x7F:
            out.append(chr(value))
    return "".join(out)


def _code(tags: Tags, number: int) -> int | None:
    raw = tags.get(number)
    return None if raw is None else raw.first_int()


def _suffixed(suffix: str) -> Describer:
    def describe(tags: Tags, number: int) -> str | None:
        text = default_description(tags[number])
        return None if text is None else text + suffix

    return describe


def _looked_up(table: dict[int, str], unknown: str | None = None) -> Describer:
    def describe(tags: Tags, number: int) -> str | None:
        code = _code(tags, number)
        if code is None:
            return None
        return table.get(code, unknown) if unknown is not None else en.lookup(table, code)

    return describe


def _interop_index(tags: Tags, number: int) -> str | None:
    text = default_description(tags[number])
    if text is None:
        return None
    if text.strip().upper() == "R98":
        return "Recommended Exif Interoperability Rules (ExifR98)"
    return f"Unknown ({text.strip()})"


def _version(tags: Tags, number: int) -> str | None:
    return version_string(tags[number].byte_values(), 2)


def _resolution(tags: Tags, number: int) -> str | None:
    rat = tags[number].first_rational()
    if rat is None or rat[1] == 0:
        return None
    unit_code = _code(tags, 0x0128)
    unit = "unit" if unit_code is None else en.indexed(en.INDEXED[0x0128], unit_code).lower()
    return f"{simple_rational(rat)} dots per {unit}"


def _focal_plane_resolution(tags: Tags, number: int) -> str | None:
    rat = tags[number].first_rational()
    if rat is None or rat[0] == 0 or rat[1] == 0:
        return None
    unit_code = _code(tags, 0xA210)
    unit = "" if unit_code is None else " " + en.indexed(en.INDEXED[0xA210], unit_code).lower()
    return simple_rational((rat[1], rat[0])) + unit  # shown as size per pixel: the reciprocal


def _sample_format(tags: Tags, number: int) -> str | None:
    values = tags[number].ints()
    if not values:
        return None
    return ", ".join(en.SAMPLE_FORMATS.get(v, f"Unknown ({v})") for v in values[:MAX_ARRAY])


def _ycbcr_subsampling(tags: Tags, number: int) -> str | None:
    values = tags[number].ints()
    if not values or len(values) < 2:
        return None
    return {(2, 1): "YCbCr4:2:2", (2, 2): "YCbCr4:2:0"}.get((values[0], values[1]), "(Unknown)")


def _reference_black_white(tags: Tags, number: int) -> str | None:
    v = tags[number].ints()
    if not v or len(v) < 6:
        return None
    return f"[{v[0]},{v[2]},{v[4]}] [{v[1]},{v[3]},{v[5]}]"


def _components(tags: Tags, number: int) -> str | None:
    values = tags[number].byte_values()
    if values is None:
        return None
    return "".join(en.COMPONENTS[v] for v in values[:4] if 0 < v < len(en.COMPONENTS))


def _compressed_bpp(tags: Tags, number: int) -> str | None:
    rat = tags[number].first_rational()
    if rat is None or rat[1] == 0:
        return None
    one = is_integer(rat) and java_int(rational_value(rat)) == 1
    return simple_rational(rat) + (" bit/pixel" if one else " bits/pixel")


def _colour_space(tags: Tags, number: int) -> str | None:
    code = _code(tags, number)
    if code is None:
        return None
    return {1: "sRGB", 65535: "Undefined"}.get(code, f"Unknown ({code})")


def _integer(suffix: str = "") -> Describer:
    def describe(tags: Tags, number: int) -> str | None:
        code = _code(tags, number)
        return None if code is None else f"{code}{suffix}"

    return describe


def _text(function: Callable[[RawValue], str | None]) -> Describer:
    return lambda tags, number: function(tags[number])


_DESCRIBERS: dict[int, Describer] = {
    0x0001: _interop_index,
    0x0002: _version,
    0x9000: _version,
    0xA000: _version,
    0x0100: _suffixed(" pixels"),
    0x0101: _suffixed(" pixels"),
    0x0102: _suffixed(" bits/component/pixel"),
    0x0103: _looked_up(en.COMPRESSIONS),
    0x0106: _looked_up(en.PHOTOMETRIC, "Unknown colour space"),
    0x0115: _suffixed(" samples/pixel"),
    0x0116: _suffixed(" rows/strip"),
    0x0117: _suffixed(" bytes"),
    0x011A: _resolution,
    0x011B: _resolution,
    0x0153: _sample_format,
    0x0200: _looked_up(en.JPEG_PROCS),
    0x0212: _ycbcr_subsampling,
    0x0214: _reference_black_white,
    0x8827: _integer(),
    0x9101: _components,
    0x9102: _compressed_bpp,
    0xA001: _colour_space,
    0xA002: _integer(" pixels"),
    0xA003: _integer(" pixels"),
    0xA20E: _focal_plane_resolution,
    0xA20F: _focal_plane_resolution,
    0x9286: _text(user_comment),
    0xA302: cfa_pattern,
    0x828E: cfa_pattern_2,
    **{n: _text(windows_xp) for n in range(0x9C9B, 0x9CA0)},
    **EXPOSURE_DESCRIBERS,
}
