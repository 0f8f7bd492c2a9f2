"""Reading one request's upload into memory, capped: the photo's bytes and the form's small fields.

A request body is read chunk by chunk and refused (:class:`UploadError`, status 413) as soon as
it passes the cap, or before keeping any when its ``Content-Length`` already says so; nothing is
spooled to disk (Starlette's own form parser rolls files over 1 MB into temporary files, and the
service writes nothing unless asked).  Accepted bodies: ``multipart/form-data`` with the photo in
a part named ``file`` (or ``image``) and optional small text fields (``exif``), or the raw image
bytes with an ``image/*`` or ``application/octet-stream`` content type.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header

FILE_FIELDS = ("file", "image")
MAX_FIELD_BYTES = 64 * 1024  # a text field (the claimed EXIF as JSON) is small
DRAIN_BYTES = 16 * 2**20  # at most this much of a refused body is read (and dropped) before its 413


class UploadError(Exception):
    """A request body the service refuses; ``status`` is the HTTP status (400, 413, 415)."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


@dataclass
class Upload:
    """The photo's bytes, its file name (may be empty) and the form's text fields."""

    data: bytes
    filename: str = ""
    fields: dict[str, str] = field(default_factory=dict)


async def read_body(stream: AsyncIterator[bytes], length: str | None, cap: int) -> bytes:
    """The whole body, at most ``cap`` bytes (413 past it; a declared larger length is refused
    without keeping it: see :func:`_drain`)."""
    mb = cap / 2**20
    if length is not None and length.isdigit() and int(length) > cap:
        await _drain(stream)
        raise UploadError(413, f"upload of {int(length) / 2**20:.1f} MB is over the {mb:g} MB limit (--max-upload-mb)")
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > cap:
            raise UploadError(413, f"upload is over the {mb:g} MB limit (--max-upload-mb)")
        chunks.append(chunk)
    return b"".join(chunks)


async def _drain(stream: AsyncIterator[bytes]) -> None:
    """Read and drop up to :data:`DRAIN_BYTES` of a refused body before the 413 goes out.

    A client sends its whole body before it reads the answer; a server that closes with the body
    unread resets the connection, and the client sees a broken pipe instead of the 413 (seen on a
    loaded machine).  Past the bound the rest stays unread: a refusal never costs more than this."""
    drained = 0
    async for chunk in stream:
        drained += len(chunk)
        if drained > DRAIN_BYTES:
            return


def _multipart(body: bytes, boundary: bytes) -> Upload:
    """Parse a multipart body held in memory into an :class:`Upload`."""
    parts: list[dict] = []
    current: dict = {}
    header_name = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        current.clear()
        current.update(headers={}, data=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        current["headers"][bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current["data"].extend(data[start:end])

    def on_part_end() -> None:
        parts.append(dict(current))

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # noqa: BLE001 - python-multipart's errors for a malformed body have no common base
        raise UploadError(400, f"malformed multipart body: {exc}") from None
    upload = Upload(b"")
    found = False
    for part in parts:
        _, opts = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        if name in FILE_FIELDS and not found:
            found = True
            upload.data = bytes(part["data"])
            upload.filename = opts.get(b"filename", b"").decode("utf-8", "replace")
        elif name and b"filename" not in opts:
            if len(part["data"]) > MAX_FIELD_BYTES:
                raise UploadError(413, f"form field {name!r} is over {MAX_FIELD_BYTES // 1024} KB")
            upload.fields[name] = part["data"].decode("utf-8", "replace")
    if not found:
        raise UploadError(400, "no photo in the form: send it as a file field named 'file'")
    return upload


def parse(body: bytes, content_type: str) -> Upload:
    """An :class:`Upload` from a body and its ``Content-Type`` (multipart form or raw image bytes)."""
    kind, opts = parse_options_header(content_type or "")
    kind_s = kind.decode("latin-1").lower()
    if kind_s == "multipart/form-data":
        if b"boundary" not in opts:
            raise UploadError(400, "multipart/form-data without a boundary")
        upload = _multipart(body, opts[b"boundary"])
    elif kind_s.startswith("image/") or kind_s in ("application/octet-stream", ""):
        upload = Upload(body)
    else:
        raise UploadError(
            415,
            f"unsupported content type {kind_s!r}: send multipart/form-data "
            "with a 'file' field, or the image bytes as image/* or application/octet-stream",
        )
    if not upload.data:
        raise UploadError(400, "the uploaded photo is empty (0 bytes)")
    return upload
