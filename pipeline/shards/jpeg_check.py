"""Cheap JPEG structure reading: walk the marker segments, find the end of the scan and the frame header.

Decoding a 12-megapixel JPEG costs 10-20 ms even at 1/8 scale, an order of magnitude more
than everything else the pipeline does to a photo, and the trainer decodes it anyway.  This
check costs microseconds and catches what breaks files in practice: a wrong signature,
corrupt segment lengths, a missing frame header, and truncation (no EOI after the scan).
:func:`jpeg_frame` gives the frame header's coding process and sampling factors, which
:mod:`exiflang.pipeline.image_policy` needs for the least number of bytes a JPEG of a size can have.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

# Markers without a length field: SOI, EOI, RST0-7, TEM.
_STANDALONE = {0xD8, 0xD9, 0x01, *range(0xD0, 0xD8)}
# Start-of-frame markers (C4 DHT, C8 JPG and CC DAC share the range but are not frames).
_SOF = {m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC)}


class JpegFrame(NamedTuple):
    """The frame header (SOF segment) of a JPEG: what its scans must cover."""

    marker: int  # 0xC0..0xCF: which coding process (0xC9+ arithmetic)
    width: int
    height: int
    sampling: tuple[tuple[int, int], ...]  # (horizontal, vertical) factor per component, 1..4


def _segments(data: bytes) -> Iterator[tuple[int, int, int]]:
    """``(marker, offset after the marker, length)`` per marker after SOI (length 0 if it has none).

    Stops where the bytes end; the caller checks each length against ``len(data)`` before use.
    """
    n, i = len(data), 2
    while i < n:
        if data[i] != 0xFF:
            # Extraneous bytes before a marker: libjpeg warns and skips to the next 0xFF,
            # so a decoder reads these files; so do we.
            i = data.find(b"\xff", i)
            if i < 0:
                return
        while i < n and data[i] == 0xFF:  # fill bytes may pad markers
            i += 1
        if i >= n:
            return
        marker = data[i]
        i += 1
        if marker in _STANDALONE:
            yield marker, i, 0
            continue
        if i + 2 > n:
            return
        length = (data[i] << 8) | data[i + 1]
        yield marker, i, length
        i += length


def jpeg_problem(data: bytes) -> str | None:
    """``None`` if ``data`` is a structurally whole JPEG, else a one-line reason."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return "not a JPEG (no SOI marker)"
    frame = False
    for marker, i, length in _segments(data):
        if marker in _STANDALONE:
            if marker == 0xD9:
                return "EOI before any scan"
            continue
        if length < 2 or i + length > n:
            return f"segment 0x{marker:02X} length {length} runs past the end of the file"
        if marker in _SOF:
            if length < 8 or not ((data[i + 3] << 8 | data[i + 4]) and (data[i + 5] << 8 | data[i + 6])):
                return "frame header with zero size"
            frame = True
        if marker == 0xDA:  # SOS: entropy-coded data follows
            if not frame:
                return "scan before any frame header"
            end = data.rfind(b"\xff\xd9", i + length)
            return None if end >= 0 else "truncated: no EOI marker after the scan"
    return "truncated: file ends before the scan"


def jpeg_frame(data: bytes) -> JpegFrame | None:
    """The first frame header before the first scan, or ``None`` if there is no whole one."""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return None
    for marker, i, length in _segments(data):
        if marker == 0xDA or (marker not in _STANDALONE and (length < 2 or i + length > len(data))):
            return None
        if marker in _SOF and length >= 8:
            seg = data[i + 2 : i + length]  # P, Y(2), X(2), Nf, then 3 bytes per component
            count = min(seg[5], (len(seg) - 6) // 3)
            sampling = tuple((seg[6 + 3 * c + 1] >> 4, seg[6 + 3 * c + 1] & 15) for c in range(count))
            return JpegFrame(marker, seg[3] << 8 | seg[4], seg[1] << 8 | seg[2], sampling)
    return None
