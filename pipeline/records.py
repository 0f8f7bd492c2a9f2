"""Plain records shared by every pipeline stage: a source row, a sample's status and outcome."""

from __future__ import annotations

from dataclasses import dataclass, field

# Status values of docs/design.md §3, one per source row in the shard's Parquet table.
SUCCESS = "success"
DOWNLOAD_FAILED = "download_failed"
HTTP_ERROR = "http_error"
TIMEOUT = "timeout"
NOT_AN_IMAGE = "not_an_image"
DECODE_FAILED = "decode_failed"
TOO_SMALL = "too_small"
TOO_FEW_TAGS = "too_few_tags"
DUPLICATE = "duplicate"
TOO_LARGE = "too_large"  # header claims more pixels than the image-size policy allows
IMPLAUSIBLE_SIZE = "implausible_size"  # file far too small for the pixel count its header claims
UNSUPPORTED_MODE = "unsupported_mode"  # float / 32-bit / exotic pixel modes (one policy everywhere)
BAD_SOURCE_ROW = "bad_source_row"  # the source row itself could not be used (name, fields)
OPTED_OUT = "opted_out"  # the server's X-Robots-Tag opts the photo out (noai, ...)
STATUSES = (
    SUCCESS,
    DOWNLOAD_FAILED,
    HTTP_ERROR,
    TIMEOUT,
    NOT_AN_IMAGE,
    DECODE_FAILED,
    TOO_SMALL,
    TOO_FEW_TAGS,
    DUPLICATE,
    TOO_LARGE,
    IMPLAUSIBLE_SIZE,
    UNSUPPORTED_MODE,
    BAD_SOURCE_ROW,
    OPTED_OUT,
)


@dataclass
class SourceRow:
    """One photo named by a source: a URL to fetch or a local file to read.

    Exactly one of ``url`` / ``path`` is set.  ``fallback_urls`` are tried in order when
    ``url`` fails (YFCC: the listed reduced-size URL behind the full-resolution original).
    ``meta`` carries source columns worth keeping (YFCC user id, license, ...), all strings.
    """

    index: int
    url: str | None = None
    path: str | None = None
    photo_id: str | None = None
    fallback_urls: tuple[str, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def location(self) -> str:
        """The URL or path, for messages and the Parquet ``url`` column."""
        return self.url if self.url is not None else (self.path or "")
