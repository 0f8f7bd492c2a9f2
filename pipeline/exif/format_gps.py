"""Describe GPS IFD values in words, as metadata-extractor's GpsDescriptor does.

Latitude/longitude read as degrees-minutes-seconds with the hemisphere folded into the sign
("-118° 6' 26.19\""), and only when both coordinates and both references are present, as
metadata-extractor requires; altitude, speed, bearings and distances in decimals with units.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from exiflang.pipeline.exif import format_enums as en
from exiflang.pipeline.exif.format import DESCRIBE_ERRORS, default_description, version_string
from exiflang.pipeline.exif.format_numbers import RawValue, decimal_format, java_int, rational_value
from exiflang.pipeline.exif.format_text import user_comment

Tags = Mapping[int, RawValue]
LAT, LAT_REF, LON, LON_REF = 0x02, 0x01, 0x04, 0x03
DEST_LAT, DEST_LAT_REF, DEST_LON, DEST_LON_REF = 0x14, 0x13, 0x16, 0x15


def describe_gps(tags: Tags) -> dict[int, str | None]:
    """Describe every tag of the GPS IFD; ``None`` for tags to drop."""
    out: dict[int, str | None] = {}
    for number in tags:
        try:
            out[number] = _describe(tags, number)
        except DESCRIBE_ERRORS:  # one odd value costs its tag, not the image
            out[number] = None
    return out


def _describe(tags: Tags, number: int) -> str | None:
    raw = tags[number]
    if number == 0x00:
        return version_string(raw.byte_values(), 1)
    if number in en.GPS_INDEXED:
        code = raw.first_int()
        return None if code is None else en.indexed(en.GPS_INDEXED[number], code)
    if number in en.GPS_LETTER_CODES:
        return _letter_code(raw, en.GPS_LETTER_CODES[number])
    if number in (LAT, LON):
        return _coordinate(tags, number)
    if number in (DEST_LAT, DEST_LON):
        ref = DEST_LAT_REF if number == DEST_LAT else DEST_LON_REF
        value = _dms_to_decimal(tags, number, ref, "S" if number == DEST_LAT else "W")
        return None if value is None else dms_string(value)
    if number == 0x07:
        return _time_stamp(raw)
    if number in (0x1B, 0x1C):
        return user_comment(raw)
    simple = _SIMPLE.get(number)
    if simple is not None:
        return _decimal_with_unit(tags, number, *simple)
    return default_description(raw)


def _letter_code(raw: RawValue, codes: dict[str, str]) -> str | None:
    if not raw.is_string:
        return default_description(raw)
    code = raw.text.strip()
    return codes.get(code.upper(), f"Unknown ({code})")


def _decimal_with_unit(tags: Tags, number: int, unit: str, unit_ref: int | None) -> str | None:
    """Altitude, speed, distances, bearings: "0.##" then a unit (from a reference tag if any)."""
    rat = tags[number].first_rational()
    if rat is None or rat[1] == 0:
        return None
    text = decimal_format(rational_value(rat), 0, 2)
    if text is None:
        return None
    if unit_ref is not None:
        ref = tags.get(unit_ref)
        described = None if ref is None else _letter_code(ref, en.GPS_LETTER_CODES[unit_ref])
        unit = "unit" if described is None else described.lower()
    return f"{text} {unit}" if unit else text


# tag -> (fixed unit, or the tag whose letter code names the unit)
_SIMPLE: dict[int, tuple[str, int | None]] = {
    0x06: ("metres", None),
    0x0B: ("", None),
    0x0D: ("", 0x0C),
    0x0F: ("degrees", None),
    0x11: ("degrees", None),
    0x18: ("degrees", None),
    0x1A: ("", 0x19),
    0x1F: ("metres", None),
}


def _dms_to_decimal(tags: Tags, number: int, ref_number: int, negative_ref: str) -> float | None:
    raw, ref = tags.get(number), tags.get(ref_number)
    rats = None if raw is None else raw.rationals()
    if rats is None or len(rats) != 3 or ref is None or not ref.is_string:
        return None
    deg, mins, secs = (rational_value(r) for r in rats)
    value = abs(deg) + mins / 60.0 + secs / 3600.0
    if not math.isfinite(value) or value > 1e6:
        return None
    return -value if ref.text.strip().upper() == negative_ref else value


def _coordinate(tags: Tags, number: int) -> str | None:
    """metadata-extractor prints a coordinate only when the whole location is known."""
    lat = _dms_to_decimal(tags, LAT, LAT_REF, "S")
    lon = _dms_to_decimal(tags, LON, LON_REF, "W")
    if lat is None or lon is None:
        return None
    return dms_string(lat if number == LAT else lon)


def dms_string(decimal: float) -> str:
    """-118.1073 -> "-118° 6' 26.19\"" (GeoLocation.decimalToDegreesMinutesSecondsString)."""
    degrees = java_int(decimal)
    minutes = abs(math.fmod(decimal, 1.0) * 60)
    seconds = math.fmod(minutes, 1.0) * 60
    parts = (
        decimal_format(float(degrees), 0, 2),
        decimal_format(float(java_int(minutes)), 0, 2),
        decimal_format(seconds, 0, 2),
    )
    return f"{parts[0]}\u00b0 {parts[1]}' {parts[2]}\""


def _time_stamp(raw: RawValue) -> str | None:
    """Three rationals -> "17:35:52.000 UTC"."""
    rats = raw.rationals()
    if rats is None or len(rats) < 3 or any(d == 0 and n != 0 for n, d in rats[:3]):
        return None
    hours, minutes = (java_int(rational_value(r)) for r in rats[:2])
    seconds = decimal_format(rational_value(rats[2]), 3, 3, min_int=2)
    return None if seconds is None else f"{hours:02d}:{minutes:02d}:{seconds} UTC"
