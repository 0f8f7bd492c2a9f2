"""Read the EXIF of JPEG/TIFF/PNG bytes with pyexiv2, as ``{tag name: human-readable value}``.

Names and values are metadata-extractor's (see docs/design.md §3 and exif_format*), keyed by
:func:`exiflang.pipeline.exif.names.canonical_tag_name`, so they line up with YFCC100M's side file.

What is kept: the standard directories only -- IFD0 ("Exif IFD0"), the Exif SubIFD,
Interoperability, GPS and IFD1 ("Exif Thumbnail").  What is dropped, and why:

- maker notes (exiv2 groups ``Exif.CanonCs``, ``Exif.Nikon3``, ... and ``Exif.MakerNote``):
  exiv2 decodes them with its own tables and numbering, so their values cannot be rendered the
  way metadata-extractor renders its maker-note directories; a half-match would only make the
  two sources disagree;
- binary blobs: the maker note bytes, thumbnails, ICC/IPTC/XMP packets, PrintIM, padding and
  any other undefined-type value longer than 16 bytes without a meaning of its own;
- values that are absurd (zero denominators where a number is needed, infinite f-numbers);
- empty values (after trimming), as the YFCC side-file parser drops them too.

Tags metadata-extractor has no name for are kept as it prints them, "Unknown tag (0x9103)".
A malformed UNICODE User Comment (which makes exiv2 fail the whole listing) costs only the
comment tags: they are erased and the rest is read again.

Strings longer than ``max_value_chars`` are truncated to that many characters (not dropped:
a long Software or Image Description still says something in its first characters).

pyexiv2 raises plain ``RuntimeError``s on corrupt files; they become :class:`ExifReadError`.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import pyexiv2

from exiflang.pipeline.exif.format import describe_directory
from exiflang.pipeline.exif.format_gps import describe_gps
from exiflang.pipeline.exif.format_numbers import RawValue
from exiflang.pipeline.exif.format_text import clean_text
from exiflang.pipeline.exif.names import canonical_tag_name, directory_precedence, tag_display_name

# exiv2 group -> metadata-extractor directory.  Anything else (maker notes, SubImage IFDs of
# raw files, IFD2+) is dropped.
DIRECTORIES: dict[str, str] = {
    "Image": "Exif IFD0",
    "Photo": "Exif SubIFD",
    "Iop": "Interoperability",
    "GPSInfo": "GPS",
    "Thumbnail": "Exif Thumbnail",
}
# Tags exiv2 decodes by their charset header when listing them (CommentValue).
COMMENT_KEYS = ("Exif.Photo.UserComment", "Exif.GPSInfo.GPSProcessingMethod", "Exif.GPSInfo.GPSAreaInformation")
MAX_INPUT_BYTES = 2**31 - 1  # pyexiv2's own limit for in-memory images
_JPEG_EXIF_PREAMBLE = 6  # "Exif\0\0" before the TIFF header inside APP1

_log_lock = threading.Lock()
_log_muted = False


class ExifReadError(ValueError):
    """The bytes could not be parsed for EXIF; the message says why, in one line."""


def read_exif(data: bytes, *, max_value_chars: int = 256) -> dict[str, str]:
    """EXIF of an image's bytes as ``{canonical tag name: description}``.

    Returns ``{}`` for an image without EXIF; raises :class:`ExifReadError` (only) when exiv2
    cannot read the bytes at all.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ExifReadError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ExifReadError("no data")
    if len(data) > MAX_INPUT_BYTES:
        raise ExifReadError(f"{len(data)} bytes is more than pyexiv2 can open")
    rows, mime = _exiv2_rows(_jpeg_metadata_prefix(data))
    directories = _group(rows)
    offset_base = _JPEG_EXIF_PREAMBLE if mime == "image/jpeg" else 0
    return _render(directories, offset_base, max(1, max_value_chars))


def _jpeg_metadata_prefix(data: bytes) -> bytes:
    """For a JPEG, only its leading APPn/COM segments (where EXIF lives) plus an EOI.

    exiv2 copies and scans whatever it is given; handing it the few KB of metadata instead
    of a multi-MB photo halves the parse cost.  Offsets inside APP1 are unchanged because the
    segments keep their positions.  Anything unexpected returns the bytes untouched.
    """
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return data
    i, n = 2, len(data)
    while i + 4 <= n and data[i] == 0xFF and (0xE0 <= data[i + 1] <= 0xEF or data[i + 1] == 0xFE):
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
    if i > n or i == 2:
        return data
    return data[:i] + b"\xff\xd9"


def _mute_exiv2() -> None:
    """Silence exiv2 once per process: at pyexiv2's default level its warnings go to stdout,
    and at "error" level a mere warning-worthy file would raise instead of being read."""
    global _log_muted
    with _log_lock:
        if not _log_muted:
            pyexiv2.set_log_level(4)
            _log_muted = True


class _ImageData(pyexiv2.ImageData):
    """pyexiv2.ImageData that frees its copy of the bytes even when opening them fails.

    pyexiv2 copies the bytes into a C buffer before exiv2 parses them; if parsing raises, the
    constructor never returns, ``__exit__`` never runs, and the copy leaks (a whole photo per
    corrupt file).
    """

    def __init__(self, data: bytes) -> None:
        try:
            super().__init__(data)
        except BaseException:
            buffer = getattr(self, "buffer", None)
            if buffer is not None:
                buffer.destroy()
            raise

    def close(self) -> None:
        """Free exiv2's image and the copy of the bytes.  pyexiv2's own close() then replaces
        every attribute with a stub (a ``dir()`` walk: ~2 % of a crawl's CPU); this object is
        never used again, so that part is skipped."""
        self.buffer.destroy()
        self._exiv2api_image.close_image()


def _exiv2_rows(data: bytes) -> tuple[list[dict[str, Any]], str]:
    """exiv2's EXIF rows (key, tagNumber, typeName, value bytes) and the image's MIME type."""
    _mute_exiv2()
    try:
        with _ImageData(data) as img:
            mime = img.get_mime_type()
            # The raw binding, not read_exif_detail(): pyexiv2's wrapper decodes every value as
            # UTF-8 and re-decodes Windows XP tags, and one odd byte there would lose the lot.
            api = img._exiv2api_image
            try:
                rows = api.read_exif_detail()
            except Exception:  # noqa: BLE001 - exiv2's C++ exceptions arrive as several types
                # exiv2 converts UNICODE comments to UTF-8 while listing, and one malformed
                # comment makes the whole listing throw: drop the comment tags, list again.
                _drop_comment_tags(api)
                rows = api.read_exif_detail()
    except Exception as exc:  # noqa: BLE001 - pybind11 maps exiv2's C++ exceptions onto several Python types
        raise ExifReadError(_one_line(exc)) from None
    return rows, mime


def _drop_comment_tags(api: Any) -> None:
    """Erase the charset-prefixed text tags from exiv2's in-memory EXIF (best effort).

    ``modify_exif`` erases them first and only then rewrites the in-memory image; that rewrite
    may fail on a damaged file, which is fine: the erased tags are gone either way.
    """
    try:
        api.modify_exif([[key, "", "_delete"] for key in COMMENT_KEYS], "utf-8")
    except Exception:  # noqa: BLE001 - the rewrite after the erase failed; the listing is retried anyway
        pass


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _decode(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")  # old cameras write Latin-1; never fails


def _group(rows: list[dict[str, Any]]) -> dict[str, dict[int, RawValue]]:
    """exiv2 rows -> {metadata-extractor directory: {tag number: RawValue}}, first one wins."""
    directories: dict[str, dict[int, RawValue]] = {}
    for row in rows:
        try:
            directory = _directory_of(row["tag"])
            value = row["value"]
            if directory is None or not isinstance(value, bytes):
                continue
            number = int(row["tagNumber"])
            type_name = str(row["typeName"])
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        tags = directories.setdefault(directory, {})
        if number not in tags:  # a tag repeated within one IFD (broken writers): first wins
            tags[number] = RawValue(type_name, _decode(value))
    return directories


@functools.lru_cache(maxsize=4096)
def _directory_of(key: bytes) -> str | None:
    """The metadata-extractor directory of an exiv2 key (``b"Exif.Photo.FNumber"``), or None.

    Cached: a photo has ~50 keys and a crawl a few hundred distinct ones (5 us a row uncached).
    """
    parts = key.decode("ascii", "replace").split(".")
    return DIRECTORIES.get(parts[1]) if len(parts) == 3 and parts[0] == "Exif" else None


def _render(directories: dict[str, dict[int, RawValue]], offset_base: int, max_chars: int) -> dict[str, str]:
    out: dict[str, str] = {}
    rank: dict[str, int] = {}
    for directory, tags in directories.items():
        described = _describe(directory, tags, offset_base)
        precedence = directory_precedence(directory)
        for number, text in described.items():
            if text is None:
                continue
            text = clean_text(text, max_chars)
            if not text:
                continue
            name = _tag_name(directory, number)
            if name not in out or precedence < rank[name]:
                out[name], rank[name] = text, precedence
    return out


@functools.lru_cache(maxsize=8192)
def _tag_name(directory: str, number: int) -> str:
    """exiflang's key for a tag number of a directory (a pure function of both: cached)."""
    return canonical_tag_name(directory, tag_display_name(directory, number))


def _describe(directory: str, tags: dict[int, RawValue], offset_base: int) -> dict[int, str | None]:
    if directory == "GPS":
        return describe_gps(tags)
    thumbnail = directory == "Exif Thumbnail"
    return describe_directory(tags, thumbnail=thumbnail, thumbnail_offset_base=offset_base if thumbnail else 0)
