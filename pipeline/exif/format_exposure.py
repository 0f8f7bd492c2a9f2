"""Describe the exposure, lens and flash tags in metadata-extractor's words ("1/200 sec", "f/8.0").

Each describer takes the directory's ``{tag number: RawValue}`` and a tag number, and returns
the description or ``None`` (drop).  Arithmetic copies metadata-extractor's choices where they
show in the text: APEX shutter speeds in float32 and rounded to whole reciprocals, f-stops and
focal lengths rounded half-up, brightness and distances half-even.  Absurd inputs (zero
denominators, infinite apertures) are dropped rather than printed as metadata-extractor would.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from exiflang.pipeline.exif import format_enums as en
from exiflang.pipeline.exif.format_numbers import (
    RawValue,
    decimal_format,
    float32,
    java_int,
    rational_float32,
    rational_value,
    simple_rational,
)

Tags = Mapping[int, RawValue]
Describer = Callable[[Tags, int], str | None]
UNKNOWN_32 = 0xFFFFFFFF  # the EXIF 2.3 "unknown" marker of distances and environment tags


def f_stop(value: float | None) -> str | None:
    """ "f/5.6": one decimal, half-up; None for infinities, NaN and absurd values."""
    if value is None or not math.isfinite(value) or abs(value) > 1e6:
        return None
    text = decimal_format(value, 1, 1, half_up=True)
    return None if text is None else "f/" + text


def focal_mm(value: float | None) -> str | None:
    """ "5.8 mm", "55 mm": at most one decimal, half-up."""
    if value is None or not math.isfinite(value) or abs(value) > 1e7:
        return None
    text = decimal_format(value, 0, 1, half_up=True)
    return None if text is None else text + " mm"


def _rational(tags: Tags, number: int) -> tuple[int, int] | None:
    raw = tags.get(number)
    return None if raw is None else raw.first_rational()


def _finite_rational(tags: Tags, number: int) -> tuple[int, int] | None:
    rat = _rational(tags, number)
    return None if rat is None or rat[1] == 0 else rat


def exposure_time(tags: Tags, number: int) -> str | None:
    rat = _finite_rational(tags, number)
    if rat is None or rational_value(rat) < 0:
        return None
    return simple_rational(rat) + " sec"


def f_number(tags: Tags, number: int) -> str | None:
    rat = _finite_rational(tags, number)
    return None if rat is None else f_stop(rational_value(rat))


def apex_aperture(tags: Tags, number: int) -> str | None:
    """Aperture Value / Max Aperture Value: APEX Av -> f-number sqrt(2)^Av."""
    value = tags[number].first_number()
    if value is None or not math.isfinite(value) or abs(value) > 64:
        return None
    return f_stop(math.sqrt(2) ** value)


def shutter_speed(tags: Tags, number: int) -> str | None:
    """APEX Tv -> "1/256 sec" above 1, else "0.5 sec" / "2 sec"; float32 as in Java."""
    rat = _rational(tags, number)
    if rat is not None:
        apex = rational_float32(rat)
    else:
        value = tags[number].first_number()
        apex = float32(value) if value is not None else math.nan
    if not math.isfinite(apex) or abs(apex) > 30:  # beyond 2^30: not a real shutter
        return None
    if apex <= 1:
        power = float32(1 / math.exp(apex * math.log(2)))
        tenths = math.floor(power * 10.0 + 0.5)
        return f"{decimal_format(float32(tenths / 10.0), 0, 2, half_up=True)} sec"
    # Rounded, not truncated: 2^5.906 = 59.97 reads "1/60 sec" in metadata-extractor's dumps.
    return f"1/{java_int(math.floor(2.0**apex + 0.5))} sec"


def brightness(tags: Tags, number: int) -> str | None:
    rat = _rational(tags, number)
    if rat is None:
        return None
    if rat[0] == UNKNOWN_32:
        return "Unknown"
    return decimal_format(rational_value(rat), 1, 3)


def exposure_bias(tags: Tags, number: int) -> str | None:
    rat = _rational(tags, number)
    if rat is None or (rat[1] == 0 and rat[0] != 0):
        return None
    return simple_rational(rat) + " EV"


def subject_distance(tags: Tags, number: int) -> str | None:
    rat = _rational(tags, number)
    if rat is None:
        return None
    if rat[0] == UNKNOWN_32:
        return "Infinity"
    if rat[0] == 0:
        return "Unknown"
    text = decimal_format(rational_value(rat), 1, 3)
    return None if text is None else text + " metres"


def flash(tags: Tags, number: int) -> str | None:
    """Bit field: fired, return light, mode (auto), red-eye reduction."""
    value = tags[number].first_int()
    if value is None:
        return None
    parts = ["Flash fired" if value & 0x1 else "Flash did not fire"]
    if value & 0x4:
        parts.append("return detected" if value & 0x2 else "return not detected")
    if value & 0x10 and value & 0x0F:
        parts.append("auto")
    if value & 0x40:
        parts.append("red-eye reduction")
    return ", ".join(parts)


def focal_length(tags: Tags, number: int) -> str | None:
    rat = _finite_rational(tags, number)
    return None if rat is None else focal_mm(rational_value(rat))


def focal_length_35(tags: Tags, number: int) -> str | None:
    value = tags[number].first_int()
    if value is None:
        return None
    return "Unknown" if value == 0 else focal_mm(float(value))


def digital_zoom(tags: Tags, number: int) -> str | None:
    rat = _rational(tags, number)
    if rat is None:
        return None
    if rat[0] == 0:
        return "Digital zoom not used"
    return None if rat[1] == 0 else decimal_format(rational_value(rat), 0, 1)


def lens_specification(tags: Tags, number: int) -> str | None:
    """Four rationals (min/max focal length, min/max f-number) -> "24-70mm f/2.8"."""
    rats = tags[number].rationals()
    if rats is None or len(rats) != 4:
        return None
    zero = [n == 0 or d == 0 for n, d in rats]
    if zero[0] or zero[1]:
        return None  # no focal range: nothing a reader could use
    vals = [rational_value(r) for r in rats]
    text = simple_rational(rats[0])
    text += ("" if vals[0] == vals[1] else "-" + simple_rational(rats[1])) + "mm"
    if not zero[2]:
        if vals[2] == vals[3]:
            stop = f_stop(vals[2])
        else:
            low, high = (decimal_format(v, 1, 1, half_up=True) for v in vals[2:])
            stop = None if low is None or high is None else f"f/{low}-{high}"
        text += "" if stop is None else " " + stop
    return text


def _environment(pattern: tuple[int, int], unit: str) -> Describer:
    """Temperature, humidity, ...: a rational whose all-ones denominator means unknown."""

    def describe(tags: Tags, number: int) -> str | None:
        rat = _rational(tags, number)
        if rat is None:
            return None
        if rat[1] in (UNKNOWN_32, -1):
            return "Unknown"
        text = None if rat[1] == 0 else decimal_format(rational_value(rat), *pattern)
        return None if text is None else text + unit

    return describe


def _looked_up(table: dict[int, str]) -> Describer:
    def describe(tags: Tags, number: int) -> str | None:
        code = tags[number].first_int()
        return None if code is None else en.lookup(table, code)

    return describe


EXPOSURE_DESCRIBERS: dict[int, Describer] = {
    0x829A: exposure_time,
    0x829D: f_number,
    0x9201: shutter_speed,
    0x9202: apex_aperture,
    0x9203: brightness,
    0x9204: exposure_bias,
    0x9205: apex_aperture,
    0x9206: subject_distance,
    0x9207: _looked_up(en.METERING_MODES),
    0x9208: _looked_up(en.LIGHT_SOURCES),
    0x9209: flash,
    0x920A: focal_length,
    0xA404: digital_zoom,
    0xA405: focal_length_35,
    0xA432: lens_specification,
    0x9400: _environment((1, 1), " °C"),
    0x9401: _environment((1, 1), " %"),
    0x9402: _environment((1, 1), " hPa"),
    0x9403: _environment((1, 3), " metres"),
    0x9404: _environment((1, 3), " mGal"),
    0x9405: _environment((0, 2), " degrees"),
}
