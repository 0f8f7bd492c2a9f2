"""Read the YFCC100M main file (``yfcc100m_dataset``, 2014 or 2016 layout) as rows of full-resolution photo URLs.

The layout is decided per line from its column count (23: 2014, 25: 2016), so a file that
mixes them, or has a damaged line, still reads.  Videos are skipped.  A malformed line is
still a row (its URL empty unless an image URL can be found in it), so the job's table
accounts for every line.  The file (local or on an object store, compressed or not) is
streamed one line at a time: a 100M-line file is never held, only the current line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from urllib.parse import unquote_plus

from exiflang.pipeline.records import SourceRow
from exiflang.pipeline.sources.base import READ_ERRORS, Source, SourceError, open_text, reason_of

FIELDS_2014 = (
    "photo_id",
    "user_id",
    "user_nickname",
    "date_taken",
    "date_uploaded",
    "capture_device",
    "title",
    "description",
    "user_tags",
    "machine_tags",
    "longitude",
    "latitude",
    "accuracy",
    "page_url",
    "download_url",
    "license_name",
    "license_url",
    "server_id",
    "farm_id",
    "secret",
    "original_secret",
    "original_extension",
    "marker",
)
FIELDS_2016 = ("line_number", "photo_id", "photo_hash") + FIELDS_2014[1:]
LAYOUTS = {len(FIELDS_2014): FIELDS_2014, len(FIELDS_2016): FIELDS_2016}

# Kept in each row's meta.  Description and tags are left out by default: long free text
# that would bloat every shard's table and says nothing about the camera.
META_FIELDS = (
    "line_number",
    "photo_hash",
    "user_id",
    "user_nickname",
    "date_taken",
    "date_uploaded",
    "capture_device",
    "title",
    "longitude",
    "latitude",
    "accuracy",
    "page_url",
    "download_url",
    "license_name",
    "license_url",
    "original_extension",
)
# Fields that are URLs or identifiers: never URL-decoded ("+" may be meaningful there).
NOT_ENCODED = frozenset({"page_url", "download_url", "license_url", "photo_hash"})
VIDEO_MARKER = "1"
_IMAGE_URL = re.compile(r"^https?://\S*(staticflickr\.com/|\.(jpe?g|png|gif|tiff?)$)", re.I)
_TOKEN = re.compile(r"^[A-Za-z0-9]+$")
DETECT_LINES = 5
DETECT_LINE_LIMIT = 1 << 20  # a binary file with no newline must not be read whole


def split_record(line: str) -> dict[str, str] | None:
    """The named fields of one main-file line, or None when it is not a valid YFCC line."""
    fields = line.rstrip("\r\n").split("\t")
    names = LAYOUTS.get(len(fields))
    if names is None:
        return None
    record = dict(zip(names, fields))
    if not record["photo_id"].strip().isdigit():
        return None
    return record


def looks_like_yfcc(path: str | os.PathLike) -> bool:
    """Whether one of the first few non-empty lines is a YFCC main-file line (cheap)."""
    try:
        with open_text(path) as fh:
            seen = 0
            while seen < DETECT_LINES:
                line = fh.readline(DETECT_LINE_LIMIT)
                if not line:
                    return False
                if not line.strip():
                    continue
                seen += 1
                record = split_record(line)
                if record is not None and record["marker"].strip() in ("0", "1"):
                    return True
    except READ_ERRORS:
        return False
    return False


ORIGINAL_URL = "https://farm{farm}.staticflickr.com/{server}/{id}_{original_secret}_o.{ext}"


def photo_urls(record: dict[str, str], original_template: str = ORIGINAL_URL) -> tuple[str, tuple[str, ...]]:
    """(full-resolution original URL, fallbacks) for a photo; the listed URL is the fallback.

    Column 16 is a reduced size; the original is rebuilt from farm, server, id and the
    original secret and extension when all are present.  ``original_template`` may point
    at a mirror (fields: farm, server, id, original_secret, ext).
    """
    pid = record["photo_id"].strip()
    farm, server = record["farm_id"].strip(), record["server_id"].strip()
    secret = record["secret"].strip()
    osecret, oext = record["original_secret"].strip(), record["original_extension"].strip()
    listed = record["download_url"].strip()
    if not listed and farm.isdigit() and server.isdigit() and _TOKEN.match(secret):
        listed = f"https://farm{farm}.staticflickr.com/{server}/{pid}_{secret}.jpg"
    if farm.isdigit() and server.isdigit() and _TOKEN.match(osecret) and _TOKEN.match(oext):
        original = original_template.format(farm=farm, server=server, id=pid, original_secret=osecret, ext=oext.lower())
        return original, ((listed,) if listed and listed != original else ())
    return listed, ()


def record_meta(record: dict[str, str], fields: Sequence[str] = META_FIELDS) -> dict[str, str]:
    """The record's kept fields, free text URL-decoded, empty ones left out.

    A ``%XX`` escape of bytes that are not UTF-8 decodes to lone surrogates (kept losslessly
    in the shard table), not to U+FFFD.
    """
    meta = {}
    for name in fields:
        value = record.get(name, "")
        if name not in NOT_ENCODED:
            value = unquote_plus(value, errors="surrogateescape")
        if value.strip():
            meta[name] = value
    return meta


def malformed_row(index: int, line: str) -> SourceRow:
    """A row for a line that is not YFCC: the downloader fails it, the table keeps it."""
    fields = line.rstrip("\r\n").split("\t")
    urls = [f.strip() for f in fields if _IMAGE_URL.match(f.strip())]
    meta = {
        "source_error": f"malformed YFCC line: {len(fields)} tab-separated fields "
        f"(expected {len(FIELDS_2014)} or {len(FIELDS_2016)})"
    }
    return SourceRow(index=index, url=urls[-1] if urls else "", meta=meta)


class YfccSource(Source):
    """The YFCC100M main file: one row per photo line, videos skipped."""

    format = "yfcc"

    def __init__(
        self, path: str | os.PathLike, meta_fields: Sequence[str] = META_FIELDS, original_template: str = ORIGINAL_URL
    ) -> None:
        super().__init__(path)
        self.meta_fields = tuple(meta_fields)
        self.original_template = original_template
        self.layouts: dict[int, int] = {}  # column count -> lines, for the job summary

    def rows(self) -> Iterator[SourceRow]:
        self._reset()
        self.layouts = {}
        index = number = 0
        try:
            with open_text(self.path) as fh:
                for number, line in enumerate(fh, 1):  # noqa: B007 -- `number` is read by the error below
                    row = self._parse(index, line)
                    if row is not None:
                        yield row
                        index += 1
        except READ_ERRORS as exc:
            if isinstance(exc, SourceError):
                raise
            raise SourceError(self.path, f"unreadable after line {number}: {reason_of(exc)}") from exc

    def _parse(self, index: int, line: str) -> SourceRow | None:
        if not line.strip():
            self._skip("blank")
            return None
        record = split_record(line)
        if record is None:
            self._flag("malformed")
            return malformed_row(index, line)
        n = len(FIELDS_2016) if "photo_hash" in record else len(FIELDS_2014)
        self.layouts[n] = self.layouts.get(n, 0) + 1
        if record["marker"].strip() == VIDEO_MARKER:
            self._skip("video")
            return None
        url, fallbacks = photo_urls(record, self.original_template)
        meta = record_meta(record, self.meta_fields)
        if not url:
            self._flag("no_url")
            meta["source_error"] = "YFCC line without a download URL"
        return SourceRow(index=index, url=url, photo_id=record["photo_id"].strip(), fallback_urls=fallbacks, meta=meta)
