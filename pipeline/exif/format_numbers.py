"""Raw EXIF values as exiv2 prints them, and number formatting that reproduces metadata-extractor's.

pyexiv2 hands every value over as exiv2's text: integers and rationals space-separated
("72/1", "8 8 8"), undefined bytes as decimals ("48 50 50 49"), strings as they are.
:class:`RawValue` parses that text back into numbers; the functions below then format numbers
the way metadata-extractor's Java code does (``Rational.toSimpleString``, ``DecimalFormat``
with half-even or half-up rounding, ``(int)`` casts that saturate, float32 arithmetic), since
the whole point is that text built from image bytes equals text built from YFCC's side file.
"""

from __future__ import annotations

import math
import struct
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, InvalidOperation

INT_TYPES = frozenset({"Byte", "SByte", "Short", "SShort", "Long", "SLong", "Undefined", "Ifd"})
RATIONAL_TYPES = frozenset({"Rational", "SRational"})
FLOAT_TYPES = frozenset({"Float", "Double"})
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
Rational = tuple[int, int]


class RawValue:
    """One tag's value: exiv2's type name and its text (``datum.value().toString()``); not changed after creation.

    A slotted class, not a frozen dataclass: ~50 are made per photo, and a frozen dataclass's
    ``__init__`` (``object.__setattr__`` per field) cost ~2 % of a crawl's CPU.
    """

    __slots__ = ("text", "type_name")

    def __init__(self, type_name: str, text: str) -> None:
        self.type_name = type_name
        self.text = text

    def __repr__(self) -> str:
        return f"RawValue({self.type_name!r}, {self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawValue) and (self.type_name, self.text) == (other.type_name, other.text)

    def __hash__(self) -> int:
        return hash((self.type_name, self.text))

    @property
    def is_string(self) -> bool:
        return self.type_name == "Ascii"

    def count(self) -> int:
        """Number of components (characters for a string)."""
        return len(self.text) if self.is_string else len(self.text.split())

    def ints(self) -> list[int] | None:
        """Integer components; a numeric string counts too (metadata-extractor parses those)."""
        if self.is_string:
            text = self.text.strip()
            return [int(text)] if _is_int(text) else None
        if self.type_name in RATIONAL_TYPES:
            rats = self.rationals()
            return None if rats is None else [java_int(rational_value(r)) for r in rats]
        try:
            return [
                int(tok) if self.type_name in INT_TYPES else java_int(float(tok)) for tok in self.text.split()
            ] or None
        except ValueError:
            return None

    def first_int(self) -> int | None:
        values = self.ints()
        return values[0] if values else None

    def rationals(self) -> list[Rational] | None:
        """Rational components; plain integers read as n/1, as metadata-extractor's getRational."""
        if self.type_name in RATIONAL_TYPES:
            out = []
            for tok in self.text.split():
                num, slash, den = tok.partition("/")
                if not (slash and _is_int(num) and _is_int(den)):
                    return None
                out.append((int(num), int(den)))
            return out or None
        if self.type_name in INT_TYPES - {"Undefined"}:
            values = self.ints()
            return None if values is None else [(v, 1) for v in values]
        return None

    def first_rational(self) -> Rational | None:
        values = self.rationals()
        return values[0] if values else None

    def first_number(self) -> float | None:
        """First component as a double (rationals divided out, floats parsed)."""
        if self.type_name in FLOAT_TYPES:
            try:
                return float(self.text.split()[0])
            except (ValueError, IndexError):
                return None
        rat = self.first_rational()
        if rat is not None:
            return rational_value(rat)
        value = self.first_int()
        return None if value is None else float(value)

    def byte_values(self) -> bytes | None:
        """Bytes of an undefined/byte value (or a string's characters): versions, text tags."""
        if self.is_string:
            return self.text.encode("utf-8", "surrogateescape")
        if self.type_name not in INT_TYPES:
            return None
        try:
            return bytes(int(tok) & 0xFF for tok in self.text.split())
        except ValueError:
            return None


def _is_int(text: str) -> bool:
    return text.lstrip("+-").isdigit() and len(text) < 40


def java_int(value: float) -> int:
    """Java's ``(int) double``: truncates, NaN becomes 0, out-of-range values saturate."""
    if math.isnan(value):
        return 0
    if value >= _INT_MAX:
        return _INT_MAX
    if value <= _INT_MIN:
        return _INT_MIN
    return int(value)


def rational_value(rat: Rational) -> float:
    """metadata-extractor's ``Rational.doubleValue``: 0 when the numerator is 0, else n/d."""
    num, den = rat
    if num == 0:
        return 0.0
    if den == 0:
        return math.copysign(math.inf, num)
    return num / den


def float32(value: float) -> float:
    """Round a double to the nearest float32, as Java's ``(float)`` cast does."""
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def rational_float32(rat: Rational) -> float:
    """``Rational.floatValue``: float32(n) / float32(d) in float32 arithmetic."""
    num, den = rat
    if num == 0:
        return 0.0
    if den == 0:
        return math.copysign(math.inf, num)
    return float32(float32(num) / float32(den))


def is_integer(rat: Rational) -> bool:
    num, den = rat
    return den == 1 or (den != 0 and num % den == 0) or (den == 0 and num == 0)


def _java_div(a: int, b: int) -> int:
    """Java long division: truncates toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def simple_rational(rat: Rational, allow_decimal: bool = True) -> str:
    """``Rational.toSimpleString``: "1/200", "2", "0.5", "-33/50"; n/0 stays as written."""
    num, den = rat
    if den == 0 and num != 0:
        return f"{num}/{den}"
    if is_integer(rat):
        return str(java_int(rational_value(rat)))
    if num != 1 and den % num == 0:
        return simple_rational((1, _java_div(den, num)), allow_decimal)
    gcd = math.gcd(num, den) or 1
    num, den = _java_div(num, gcd), _java_div(den, gcd)
    if den < 0:  # the sign goes on the numerator: "-1/3 EV", never "1/-3 EV"
        num, den = -num, -den
    if allow_decimal:
        text = repr(rational_value((num, den)))
        if len(text) < 5:  # Java's Double.toString agrees with repr for such short ones
            return text
    return f"{num}/{den}"


def decimal_format(
    value: float, min_frac: int, max_frac: int, *, half_up: bool = False, min_int: int = 1
) -> str | None:
    """Java ``DecimalFormat`` for patterns like "0.#", "0.0##", "00.000".

    Rounds the exact binary value (half-even by default, as Java does); keeps a "-" on values
    that round to zero, as Java does.  None for NaN and infinities, which have no sane text.
    """
    if not math.isfinite(value):
        return None
    try:
        exact = Decimal(value).quantize(
            Decimal(1).scaleb(-max_frac), rounding=ROUND_HALF_UP if half_up else ROUND_HALF_EVEN
        )
    except InvalidOperation:
        return None
    negative = value < 0 or (value == 0 and math.copysign(1.0, value) < 0)
    int_part, _, frac_part = f"{abs(exact):f}".partition(".")
    frac_part = frac_part.rstrip("0")
    frac_part = frac_part + "0" * (min_frac - len(frac_part))
    int_part = int_part.zfill(min_int)
    text = int_part + ("." + frac_part if frac_part else "")
    return ("-" if negative else "") + text
