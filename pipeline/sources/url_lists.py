"""Read a list of photo URLs (txt, csv, tsv, jsonl or parquet, optionally compressed) as source rows.

Every entry the list holds becomes a row, even a bad one: a URL that is not http(s) is
kept as given, so the downloader fails it with a status and the Parquet table still has its
row.  Only blank lines and ``#`` comments (txt) are not rows.  Text that is not valid UTF-8
(raw bytes in a csv/txt line, a ``"\\udcff"`` escape in JSON, a Parquet string column holding
bad bytes) is kept as surrogate-escaped str, never replaced: see :mod:`exiflang.pipeline.sources.open`.

Every reader streams: text line by line, Parquet by batches of one row group at a time, so
a list of any size is read in bounded memory.  The file may be local or on an object store
(:mod:`exiflang.pipeline.storage`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
from collections.abc import Iterator, Sequence
from typing import IO, Any, Literal

from exiflang.pipeline import storage
from exiflang.pipeline.records import SourceRow
from exiflang.pipeline.sources.base import (
    READ_ERRORS,
    EmptySourceError,
    Source,
    SourceError,
    compression_of,
    inner_suffix,
    open_binary,
    open_text,
    reason_of,
)

URL_COLUMNS = ("url", "URL", "image_url", "download_url", "photo_url")
ID_COLUMNS = ("photo_id", "id", "key")  # most specific first
KINDS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
HTTP_PREFIXES = ("http://", "https://")
PARQUET_BATCH = 4096  # rows per Arrow batch read from a Parquet list

# YFCC-sized cells would trip the csv module's 128 KiB default; the limit is process-wide.
csv.field_size_limit(max(csv.field_size_limit(), 1 << 26))


def is_http(url: str) -> bool:
    return url[:8].lower().startswith(HTTP_PREFIXES)


def pick_column(names: Sequence[str], candidates: Sequence[str], given: str | None = None) -> str | None:
    """The column to use: ``given`` if present, else the first candidate (exact, then any case)."""
    wanted = (given,) if given else tuple(candidates)
    for name in wanted:
        if name in names:
            return name
    lowered = {n.lower(): n for n in reversed(list(names))}
    for name in wanted:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def as_text(value: Any) -> str | None:
    """A JSON/Parquet cell as the string meta holds (None for a missing value)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # an id stored as float (pandas NaN-able ints) stays "123"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")  # lossless, like the text readers
    return str(value)


class UrlListSource(Source):
    """One URL list; ``kind`` is txt, csv, tsv, jsonl or parquet."""

    format = "urls"

    def __init__(self, path: str | os.PathLike, kind: str, url_column: str | None = None) -> None:
        super().__init__(path)
        self.kind = kind
        self.url_column = url_column

    def rows(self) -> Iterator[SourceRow]:
        self._reset()
        reader = {
            "txt": self._txt,
            "csv": self._delimited,
            "tsv": self._delimited,
            "jsonl": self._jsonl,
            "parquet": self._parquet,
        }[self.kind]
        for index, (url, photo_id, meta) in enumerate(reader()):
            yield self._row(index, url, photo_id, meta)

    def _row(self, index: int, url: str | None, photo_id: str | None, meta: dict[str, str]) -> SourceRow:
        url = (url or "").strip()
        if not url:
            self._flag("no_url")
            meta.setdefault("source_error", "no URL in this list entry")
        elif not is_http(url):
            self._flag("not_http")
        return SourceRow(index=index, url=url, photo_id=(photo_id or "").strip() or None, meta=meta)

    # -- the five readers: each yields (url, photo id, meta) per entry --------------------

    def _txt(self) -> Iterator[tuple[str | None, str | None, dict[str, str]]]:
        with _reading(self.path) as fh:
            for line in fh:
                text = line.strip()
                if not text:
                    self._skip("blank")
                elif text.startswith("#"):
                    self._skip("comment")
                else:
                    yield text, None, {}

    def _delimited(self) -> Iterator[tuple[str | None, str | None, dict[str, str]]]:
        with _reading(self.path) as fh:
            reader = csv.reader(fh, delimiter="\t" if self.kind == "tsv" else ",")
            header = _first_nonblank(reader, self)
            if header is None:
                return
            columns = _Columns.of(self.path, header, self.url_column)
            if columns.headerless:
                yield columns.split(header)
            for cells in reader:
                if not any(c.strip() for c in cells):
                    self._skip("blank")
                    continue
                yield columns.split(cells)

    def _jsonl(self) -> Iterator[tuple[str | None, str | None, dict[str, str]]]:
        with _reading(self.path) as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    self._skip("blank")
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    self._flag("malformed")
                    yield "", None, {"source_error": f"line {number}: invalid JSON ({_json_reason(exc)})"}
                    continue
                yield self._from_record(record, number)

    def _parquet(self) -> Iterator[tuple[str | None, str | None, dict[str, str]]]:
        with contextlib.closing(_parquet_file(self.path)) as pf:
            try:
                # Batches are cut from one row group at a time: a file of any size streams.
                for batch in pf.iter_batches(batch_size=PARQUET_BATCH):
                    for record in _unvalidated(batch).to_pylist():
                        yield self._from_record(record, None)
            except (OSError, ValueError) as exc:
                raise SourceError(self.path, f"unreadable Parquet: {reason_of(exc)}") from exc

    def _from_record(self, record: Any, number: int | None) -> tuple[str | None, str | None, dict[str, str]]:
        """A JSON object / Parquet row -> (url, id, meta); a bare JSON string is a URL."""
        if isinstance(record, str):
            return record, None, {}
        if not isinstance(record, dict):
            self._flag("malformed")
            where = f"line {number}: " if number else ""
            return "", None, {"source_error": f"{where}expected an object, got {type(record).__name__}"}
        names = list(record)
        url_key = pick_column(names, URL_COLUMNS, self.url_column)
        id_key = pick_column(names, ID_COLUMNS)
        meta = {}
        for k, v in record.items():
            text = as_text(v)
            if k not in (url_key, id_key) and text:
                meta[str(k)] = text
        url = as_text(record.get(url_key)) if url_key else None
        return url, as_text(record.get(id_key)) if id_key else None, meta


class _Columns:
    """Where the URL, id and meta cells of a csv/tsv row are."""

    def __init__(self, names: list[str], url_at: int, id_at: int | None, headerless: bool) -> None:
        self.names, self.url_at, self.id_at, self.headerless = names, url_at, id_at, headerless

    @classmethod
    def of(cls, path: str, header: list[str], url_column: str | None) -> _Columns:
        names = [h.strip() for h in header]
        # A list without a header: its first line already holds a URL.
        http_cells = [i for i, h in enumerate(names) if is_http(h)]
        if http_cells and not url_column:
            return cls([f"column_{i}" for i in range(len(names))], http_cells[0], None, True)
        url_name = pick_column(names, URL_COLUMNS, url_column)
        if url_name is None:
            looked = repr(url_column) if url_column else ", ".join(URL_COLUMNS)
            raise SourceError(
                path,
                f"no URL column (looked for {looked}; columns: "
                f"{', '.join(names) or 'none'}); name it with --url-column",
            )
        id_name = pick_column(names, ID_COLUMNS)
        return cls(names, names.index(url_name), names.index(id_name) if id_name else None, False)

    def split(self, cells: list[str]) -> tuple[str | None, str | None, dict[str, str]]:
        url = cells[self.url_at] if self.url_at < len(cells) else ""
        pid = cells[self.id_at] if self.id_at is not None and self.id_at < len(cells) else None
        meta = {}
        for i, cell in enumerate(cells):
            if i in (self.url_at, self.id_at) or not cell.strip():
                continue
            meta[self.names[i] if i < len(self.names) else f"column_{i}"] = cell
        return url, pid, meta


class _reading:
    """Open a list for text reading; any read error mid-file becomes a one-line SourceError."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> IO[str]:
        self.fh = open_text(self.path)
        return self.fh

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> Literal[False]:
        self.fh.close()
        if isinstance(exc, READ_ERRORS) and not isinstance(exc, SourceError):
            raise SourceError(self.path, f"unreadable: {reason_of(exc)}") from exc
        if isinstance(exc, csv.Error):
            raise SourceError(self.path, f"malformed csv: {exc}") from exc
        return False


def _first_nonblank(reader: Iterator[list[str]], source: Source | None = None) -> list[str] | None:
    for cells in reader:
        if any(c.strip() for c in cells):
            return cells
        if source is not None:
            source._skip("blank")
    return None


def _unvalidated(batch: Any) -> Any:
    """``batch`` with its string columns viewed as binary, so a cell of bad UTF-8 (which
    would make ``to_pylist`` raise for the whole batch) reaches :func:`as_text` as bytes."""
    import pyarrow as pa

    views = {pa.string(): pa.binary(), pa.large_string(): pa.large_binary()}
    columns = [col.view(views[col.type]) if col.type in views else col for col in batch.columns]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _parquet_file(path: str) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if compression_of(path):
            # Parquet needs random access: a compressed one is inflated into memory.
            stream, raw = open_binary(path)
            with raw, stream:
                return pq.ParquetFile(pa.BufferReader(stream.read()))
        if storage.is_remote(path):
            # Read through fsspec with ranged reads: the footer, then one row group at a time.
            fs, inner = storage.filesystem(path)
            return pq.ParquetFile(inner, filesystem=fs)
        return pq.ParquetFile(path)
    except (OSError, ValueError, EOFError) as exc:
        if isinstance(exc, SourceError):
            raise
        raise SourceError(path, f"unreadable Parquet: {reason_of(exc)}") from exc


def _check(source: UrlListSource) -> None:
    """Fail now, not mid-job, on an empty list or one without a URL column/field."""
    path, kind = source.path, source.kind
    if kind == "parquet":
        with contextlib.closing(_parquet_file(path)) as pf:
            rows, names = pf.metadata.num_rows, pf.schema_arrow.names
        if rows == 0:
            raise EmptySourceError(path, "empty list (a Parquet table with no rows)")
        if pick_column(names, URL_COLUMNS, source.url_column) is None:
            raise SourceError(path, f"no URL column (columns: {', '.join(names)}); name it with --url-column")
        return
    with _reading(path) as fh:
        if kind in ("csv", "tsv"):
            reader = csv.reader(fh, delimiter="\t" if kind == "tsv" else ",")
            header = _first_nonblank(reader)
            if header is None:
                raise EmptySourceError(path, "empty list (no header, no rows)")
            columns = _Columns.of(path, header, source.url_column)
            if not columns.headerless and _first_nonblank(reader) is None:
                raise EmptySourceError(path, "empty list (a header but no rows)")
            return
        first = next((ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")), None)
    if first is None:
        raise EmptySourceError(path, "empty list (no URLs, only blank lines or comments)")
    if kind == "jsonl":
        _check_json_line(source, first)


def _json_reason(exc: ValueError) -> str:
    """The parser's message without its position (json.loads also raises plain ValueErrors, e.g. an
    integer over the digit limit, which have no ``msg``)."""
    return exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)


def _check_json_line(source: UrlListSource, line: str) -> None:
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise SourceError(source.path, f"not JSON Lines: first line is not JSON ({_json_reason(exc)})") from exc
    if isinstance(record, dict) and pick_column(list(record), URL_COLUMNS, source.url_column) is None:
        looked = repr(source.url_column) if source.url_column else ", ".join(URL_COLUMNS)
        raise SourceError(
            source.path,
            f"no URL field in the first record (looked for {looked}; "
            f"keys: {', '.join(map(str, record)) or 'none'}); name it with --url-column",
        )


def list_kind(path: str | os.PathLike) -> str:
    """txt, csv, tsv, jsonl or parquet from the name (Parquet also from its magic bytes)."""
    kind = KINDS.get(inner_suffix(path), "txt")
    if kind == "txt" and compression_of(path) is None:
        try:
            with storage.open_read(path) as fh:
                if fh.read(4) == b"PAR1":
                    return "parquet"
        except OSError as exc:
            raise SourceError(path, f"cannot read: {reason_of(exc)}") from exc
    return kind


def open_url_list(path: str | os.PathLike, *, url_column: str | None = None) -> UrlListSource:
    """Open a URL list, checking now that it has rows and a URL column."""
    source = UrlListSource(path, list_kind(path), url_column)
    _check(source)
    return source
