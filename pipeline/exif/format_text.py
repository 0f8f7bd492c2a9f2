"""Text-valued EXIF tags (User Comment, Windows XP strings, CFA patterns) and string clean-up.

exiv2 has already turned a User Comment into ``charset=Ascii text`` (or plain text when the
8-byte charset header is undefined, or UTF-8 when it was UNICODE); metadata-extractor prints
only the text, trimmed.  Windows XP tags are UTF-16LE bytes.  Every string is finally trimmed
the way Java's ``String.trim`` does (all characters up to U+0020, NULs included), stripped of
control characters, and bounded in length.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from exiflang.pipeline.exif.format_enums import CFA_COLOURS
from exiflang.pipeline.exif.format_numbers import RawValue

_TRIM = "".join(chr(c) for c in range(0x21)) + "\u00a0\u3000\ufeff"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]+")
_COMMENT_HEADER = re.compile(r"^charset=(Ascii|Jis|Unicode|Undefined|\"[^\"]*\"|\S+) ?")


def clean_text(text: str, max_chars: int) -> str:
    """Java-style trim, control characters out, at most ``max_chars`` characters (then trimmed)."""
    text = text[: max_chars * 4]
    if not text.isprintable() or "\ufffd" in text:  # printable text holds none of _CONTROL
        text = _CONTROL.sub(" ", text)
    text = text.strip(_TRIM)
    return text[:max_chars].strip(_TRIM) if len(text) > max_chars else text


def user_comment(raw: RawValue) -> str | None:
    """The comment's text, without exiv2's ``charset=...`` prefix or metadata-extractor's header."""
    if raw.type_name not in ("Undefined", "Ascii"):
        return None  # a number where a comment belongs: nothing to say
    text = raw.text
    if raw.type_name == "Undefined":
        text = _COMMENT_HEADER.sub("", text, count=1)
    else:
        # A comment stored as ASCII may still carry the 8-byte header metadata-extractor skips.
        for header in ("ASCII", "UNICODE", "JIS"):
            if text.startswith(header) and len(text) >= 10:
                text = text[len(header) :]
                break
    return text.strip(_TRIM)


def windows_xp(raw: RawValue) -> str | None:
    """Windows XP Title/Comment/Author/...: UTF-16LE bytes, trimmed."""
    data = raw.byte_values()
    if data is None:
        return None
    if len(data) % 2:
        data = data[:-1]
    return data.decode("utf-16-le", errors="replace").strip(_TRIM)


def cfa_pattern(tags: Mapping[int, RawValue], number: int) -> str | None:
    """Exif 0xA302: 16-bit rows and columns, then a colour per cell: "[Red,Green][Green,Blue]"."""
    data = tags[number].byte_values()
    if data is None:
        return None
    if len(data) < 4:
        return _format_cfa([_signed(b) for b in data])
    # metadata-extractor reads the dimensions big-endian, and retries little-endian when they
    # do not fit the data (writers disagree on the byte order here).
    for order in ("big", "little"):
        rows = int.from_bytes(data[0:2], order, signed=True)
        cols = int.from_bytes(data[2:4], order, signed=True)
        if 2 + rows * cols <= len(data):
            return _format_cfa([rows, cols] + [_signed(b) for b in data[4:]])
    return _format_cfa([0] * (len(data) - 2))


def cfa_pattern_2(tags: Mapping[int, RawValue], number: int) -> str | None:
    """TIFF/EP 0x828E: colour codes only; the dimensions are in 0x828D."""
    data = tags[number].byte_values()
    dims = tags[0x828D].ints() if 0x828D in tags else None
    if data is None or not dims or len(dims) != 2 or len(data) != dims[0] * dims[1]:
        return None
    return _format_cfa(list(dims) + list(data))


def _signed(byte: int) -> int:
    return byte - 256 if byte > 127 else byte


def _format_cfa(pattern: list[int]) -> str | None:
    if len(pattern) < 2:
        return "<truncated data>"
    rows, cols = pattern[0], pattern[1]
    if rows == 0 and cols == 0:
        return "<zero pattern size>"
    end = 2 + rows * cols
    if end > len(pattern) or cols <= 0 or rows < 0 or end > 2 + 64:
        return "<invalid pattern size>"
    out = ["["]
    for pos in range(2, end):
        code = pattern[pos]
        out.append(CFA_COLOURS[code] if 0 <= code < len(CFA_COLOURS) else "Unknown")
        if (pos - 2) % cols == 0:
            out.append(",")
        elif pos != end - 1:
            out.append("][")
    out.append("]")
    return "".join(out)
