"""Parse YFCC100M's EXIF side file and index it by photo id in SQLite, for joins without loading it.

Line format: ``photo_id<TAB>item,item,...``; each item ``Directory.Tag Name:value`` with
every part URL-encoded (``+`` for space, ``%2C`` for a comma inside a value), e.g.
``Exif+SubIFD.Focal+Length:50.0+mm``.  Parsing choices, each forced by the format:

- items are split on the literal ``,`` (a value's own commas are encoded);
- the key is split from the value on the first ``:`` (dates and times contain more);
- the directory is split from the tag on the first ``.`` of the still-encoded key:
  metadata-extractor's directory names ("Exif SubIFD", "Canon Makernote") hold no dot,
  while a tag name might, so the first dot is the only safe boundary;
- a piece holding no ``:`` at all is a value's unencoded comma, and is glued back on.

The side file is tens of GB.  :meth:`YfccExifIndex.build` streams all of it (or the lines of
given ids) into a table of raw item strings, parsed only on lookup; :class:`YfccSideJoin`
instead fills such a table while the job's rows stream past, with only what they need
(docs/scale_metadata.md measures both).  Workers open the database read-only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Generator, Iterable, Iterator, Sequence
from pathlib import Path
from urllib.parse import unquote_plus

from tqdm import tqdm

from exiflang.pipeline.exif.names import canonical_tag_name, directory_precedence
from exiflang.pipeline.records import SourceRow
from exiflang.pipeline.shards.files import is_utf8
from exiflang.pipeline.sources.base import READ_ERRORS, SourceError, open_binary, reason_of

log = logging.getLogger(__name__)
SCHEMA_VERSION = "1"
BATCH = 20_000  # rows per executemany: large enough to amortise, small in memory
LOOKUP_CHUNK = 500  # ids per "IN (...)" query, well under SQLite's variable limit
BLOCK_ROWS = 10_000  # source rows joined per commit by YfccSideJoin (~0.1 s)
WINDOW = 10_000  # side lines YfccSideJoin holds unasked before spilling them (~1 KB each)


def parse_items(items: str, *, keep_empty: bool = False) -> dict[str, str]:
    """``Dir.Tag:value,...`` -> ``{canonical tag: value}``, decoded.

    Two directories giving the same canonical name: the one with the lower
    :func:`directory_precedence` wins (first seen on a tie).  Empty values are dropped
    unless ``keep_empty`` (metadata-extractor lists e.g. an empty "User Comment").
    """
    out: dict[str, str] = {}
    rank: dict[str, int] = {}
    for key, value in _pairs(items):
        directory, dot, tag = key.partition(".")
        if not dot:  # no directory given: the whole key is the tag name
            directory, tag = "", directory
        directory, tag = unquote_plus(directory).strip(), unquote_plus(tag).strip()
        value = unquote_plus(value).strip()
        if not tag or (not value and not keep_empty):
            continue
        name = canonical_tag_name(directory, tag) if directory else tag
        prec = directory_precedence(directory)
        if name not in out or prec < rank[name]:
            out[name], rank[name] = value, prec
    return out


def _pairs(items: str) -> Iterator[tuple[str, str]]:
    """Raw (key, value) pairs; a piece without ':' continues the previous value."""
    pending: list[str] | None = None
    for piece in items.split(","):
        key, colon, value = piece.partition(":")
        if colon:
            if pending is not None:
                yield pending[0], pending[1]
            pending = [key, value]
        elif pending is not None and piece:
            pending[1] += "," + piece
    if pending is not None:
        yield pending[0], pending[1]


def split_line(line: str) -> tuple[str, str]:
    """``photo_id<TAB>items`` -> (photo id, raw items); ValueError when malformed."""
    text = line.rstrip("\r\n")
    photo_id, tab, items = text.partition("\t")
    photo_id = photo_id.strip()
    # isdigit() first: YFCC's ids are digits, and the per-character test cost ~7 us a line.
    if not tab or not photo_id or (not photo_id.isdigit() and any(c.isspace() for c in photo_id)):
        raise ValueError(f"not a YFCC EXIF line: {text[:60]!r}")
    return photo_id, items


def parse_exif_line(line: str) -> tuple[str, dict[str, str]]:
    """One side-file line -> (photo id, ``{canonical tag: value}``); ValueError when malformed."""
    photo_id, items = split_line(line)
    return photo_id, parse_items(items)


def _signature(photo_ids: set[str] | None) -> str:
    """Identifies the id filter a database was built with ("all" for none)."""
    if photo_ids is None:
        return "all"
    digest = hashlib.sha256("\n".join(sorted(photo_ids)).encode()).hexdigest()
    return f"ids:{len(photo_ids)}:{digest[:32]}"


def _source_stamp(side_file: str) -> str:
    st = os.stat(side_file)
    return f"{os.path.abspath(side_file)}|{st.st_size}|{st.st_mtime_ns}"


class YfccExifIndex:
    """A read-only SQLite index of the side file: photo id -> parsed EXIF."""

    def __init__(self, db_path: str, conn: sqlite3.Connection, info: dict[str, str]) -> None:
        self.db_path = db_path
        self._conn = conn
        self.info = info  # build facts: lines, rows, malformed, duplicates, source

    # -- building ------------------------------------------------------------------------

    @classmethod
    def build(cls, side_file: str, db_path: str, *, photo_ids: set[str] | None = None) -> YfccExifIndex:
        """Index ``side_file`` into ``db_path`` (atomic), or reuse a complete matching one."""
        if not os.path.isfile(side_file):
            raise SourceError(side_file, "no such YFCC EXIF side file")
        stamp, wanted = _source_stamp(side_file), _signature(photo_ids)
        reused = cls._reusable(db_path, stamp, wanted)
        if reused is not None:
            return reused
        os.makedirs(os.path.dirname(os.path.abspath(db_path)), exist_ok=True)
        tmp = f"{db_path}.tmp-{os.getpid()}"
        for leftover in (tmp, tmp + "-journal"):
            if os.path.exists(leftover):
                os.remove(leftover)
        try:
            info = _fill(side_file, tmp, photo_ids)
            info.update(source=stamp, filter=wanted, schema=SCHEMA_VERSION, complete="1")
            _write_info(tmp, info)
            os.replace(tmp, db_path)
        except sqlite3.Error as exc:
            raise SourceError(db_path, f"cannot write the YFCC EXIF index: {exc}") from exc
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        log.info(
            "indexed %s: %s photos (%s malformed lines, %s duplicate ids) in %s",
            side_file,
            info["rows"],
            info["malformed"],
            info["duplicates"],
            db_path,
        )
        return cls.open(db_path)

    @classmethod
    def _reusable(cls, db_path: str, stamp: str, wanted: str) -> YfccExifIndex | None:
        if not os.path.exists(db_path):
            return None
        try:
            index = cls.open(db_path)
        except SourceError:
            return None
        info = index.info
        # An index of every id answers any filtered request; otherwise the filter must match.
        if info.get("source") == stamp and info.get("filter") in ("all", wanted):
            log.info("reusing YFCC EXIF index %s (%s photos)", db_path, info.get("rows"))
            return index
        index.close()
        return None

    # -- reading -------------------------------------------------------------------------

    @classmethod
    def open(cls, db_path: str) -> YfccExifIndex:
        """Open a complete index read-only (each process opens its own)."""
        path = Path(db_path)
        if not path.is_file():
            raise SourceError(db_path, "no such YFCC EXIF index")
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            info = dict(conn.execute("SELECT key, value FROM info").fetchall())
        except sqlite3.Error as exc:
            raise SourceError(db_path, f"not a YFCC EXIF index: {exc}") from exc
        if info.get("complete") != "1" or info.get("schema") != SCHEMA_VERSION:
            conn.close()
            raise SourceError(db_path, "incomplete or outdated YFCC EXIF index; rebuild it")
        return cls(str(db_path), conn, info)

    def get(self, photo_id: str) -> dict[str, str] | None:
        """The photo's EXIF from the side file, or None when the file has no line for it."""
        row = self._conn.execute("SELECT items FROM exif WHERE photo_id = ?", (str(photo_id),)).fetchone()
        return None if row is None else parse_items(row[0])

    def get_many(self, photo_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """``{photo id: EXIF}`` for those of ``photo_ids`` the side file has."""
        ids = list(dict.fromkeys(str(p) for p in photo_ids if p))
        out: dict[str, dict[str, str]] = {}
        for start in range(0, len(ids), LOOKUP_CHUNK):
            chunk = ids[start : start + LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            for pid, items in self._conn.execute(
                f"SELECT photo_id, items FROM exif WHERE photo_id IN ({marks})", chunk
            ):
                out[pid] = parse_items(items)
        return out

    def __len__(self) -> int:
        return int(self.info.get("rows", 0))

    def __contains__(self, photo_id: object) -> bool:
        return self._conn.execute("SELECT 1 FROM exif WHERE photo_id = ?", (str(photo_id),)).fetchone() is not None

    def close(self) -> None:
        self._conn.close()

    # A connection cannot cross processes: pickling (e.g. to a Ray task) carries the path.
    def __getstate__(self) -> dict[str, str]:
        return {"db_path": self.db_path}

    def __setstate__(self, state: dict[str, str]) -> None:
        other = type(self).open(state["db_path"])
        self.__dict__.update(other.__dict__)

    def __enter__(self) -> YfccExifIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class YfccSideJoin:
    """Joins source rows with the side file as they stream past, indexing only what they need.

    :meth:`rows` passes the rows through in blocks; before a block is passed on, the side
    lines of its photo ids are in the database at ``db_path`` (committed, so workers that
    open it read-only see them).  One forward cursor reads the side file: lines nobody asked
    for yet wait in a window of ``window`` lines, then are spilled into the database too.
    Correct in any order (an id's first line wins, as in :meth:`YfccExifIndex.build`); the
    order only sets the cost.  Side file in the source's order: the database holds about the
    job's rows, built as they are fetched.  Any other order, or an id the side file lacks:
    the cursor reads on (to the end, at worst) and the database grows into the full index,
    which a rerun then reuses.  Memory: ``block_rows`` ids plus ``window`` lines.
    """

    def __init__(self, side_file: str, db_path: str, *, block_rows: int = BLOCK_ROWS, window: int = WINDOW) -> None:
        if not os.path.isfile(side_file):
            raise SourceError(side_file, "no such YFCC EXIF side file")
        self.side_file, self.db_path = side_file, os.path.abspath(db_path)
        self.block_rows, self.window = max(1, block_rows), max(0, window)
        self.counts = {
            "lines": 0,
            "malformed": 0,
            "filtered": 0,
            "matched": 0,
            "missing": 0,
            "spilled": 0,
            "duplicates": 0,
            "rows": 0,
        }
        self._conn: sqlite3.Connection | None = None
        self._lines: Generator[tuple[str, str], None, None] | None = None
        self._pending: OrderedDict[str, str] = OrderedDict()
        self._eof = False

    def rows(self, rows: Iterable[SourceRow]) -> Iterator[SourceRow]:
        """``rows`` unchanged, each block once its side lines are committed."""
        full = self._start()
        try:
            for block in _batches(rows, self.block_rows):
                if not full:
                    self._resolve([r.photo_id for r in block if r.photo_id])
                yield from block
        finally:
            self.close()

    def _start(self) -> bool:
        """Reuse a full index of this side file (True), or start an empty one."""
        stamp = _source_stamp(self.side_file)
        reused = YfccExifIndex._reusable(self.db_path, stamp, "all")
        if reused is not None:
            reused.close()
            return True
        os.makedirs(os.path.dirname(self.db_path), exist_ok=True)
        for path in (self.db_path, self.db_path + "-journal"):
            if os.path.exists(path):
                os.remove(path)
        # Workers read while this writes: a commit waits for their short reads to end.
        self._conn = sqlite3.connect(self.db_path, timeout=120)
        self._conn.execute("PRAGMA journal_mode = MEMORY")
        self._conn.execute("PRAGMA synchronous = OFF")
        # A bounded page cache (64 MB) for the id index's random inserts.
        self._conn.execute("PRAGMA cache_size = -65536")
        _create_tables(self._conn)
        # Complete for every row already passed on; "stream" keeps build() from reusing it.
        self._write_info({"source": stamp, "filter": "stream", "schema": SCHEMA_VERSION, "complete": "1"})
        self._lines = _records(self.side_file, None, self.counts)
        return False

    def _resolve(self, ids: list[str]) -> None:
        """Put the side lines of ``ids`` (if the file has them) into the database and commit.

        An id that is not valid UTF-8 (lone surrogates, from a csv/json list) cannot be in the
        side file, and SQLite would refuse it: such a row just gets no side-file EXIF.
        """
        wanted = dict.fromkeys(str(i) for i in ids if is_utf8(str(i)))
        for pid in self._in_db(list(wanted)):
            del wanted[pid]
        out = [(pid, self._pending.pop(pid)) for pid in list(wanted) if pid in self._pending]
        for pid, _ in out:
            del wanted[pid]
        self.counts["matched"] += len(out)
        assert self._lines is not None, "_resolve() before _start()"
        while wanted and not self._eof:
            record = next(self._lines, None)
            if record is None:
                self._eof = True
                self.counts["spilled"] += len(self._pending)
                out.extend(self._pending.items())  # in file order: first line wins
                self._pending.clear()
                break
            out.extend(self._take(record, wanted))
            if len(out) >= BATCH:
                self._insert(out)
                out = []
        self._insert(out)
        self.counts["missing"] += len(wanted)

    def _take(self, record: tuple[str, str], wanted: dict) -> list[tuple[str, str]]:
        """What to insert now for one side line: itself if asked for, else a spilled line."""
        pid, items = record
        if pid in wanted:
            del wanted[pid]
            self.counts["matched"] += 1
            return [record]
        if pid in self._pending:
            self.counts["duplicates"] += 1  # a later line of a waiting id
            return []
        self._pending[pid] = items
        if len(self._pending) <= self.window:
            return []
        self.counts["spilled"] += 1
        return [self._pending.popitem(last=False)]

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None, "used before _start()"
        return self._conn

    def _in_db(self, ids: list[str]) -> list[str]:
        ids = [i for i in ids if is_utf8(i)]  # SQLite cannot bind a lone surrogate
        found: list[str] = []
        for start in range(0, len(ids), LOOKUP_CHUNK):
            chunk = ids[start : start + LOOKUP_CHUNK]
            found += [
                r[0]
                for r in self._db.execute(
                    f"SELECT photo_id FROM exif WHERE photo_id IN ({','.join('?' * len(chunk))})", chunk
                )
            ]
        return found

    def _insert(self, records: list[tuple[str, str]]) -> None:
        before = self._db.total_changes
        # OR IGNORE: a line spilled earlier is an earlier line of the same id, and wins.
        self._db.executemany("INSERT OR IGNORE INTO exif VALUES (?, ?)", records)
        self.counts["rows"] += self._db.total_changes - before
        self._db.commit()

    def _write_info(self, info: dict[str, str]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO info VALUES (?, ?)", sorted(info.items()))
        self._db.commit()

    def close(self) -> None:
        """Record the counts in the database (a full index once the file was read to its end)."""
        if self._conn is None:
            return
        if self._lines is not None:
            self._lines.close()
        info = {k: str(v) for k, v in self.counts.items()}
        if self._eof:
            info["filter"] = "all"
        self._write_info(info)
        self._conn.close()
        self._conn = None
        log.info("YFCC EXIF join: %s", ", ".join(f"{k} {v}" for k, v in self.counts.items()))
        if self.counts["spilled"] > max(self.window, self.counts["matched"]):
            log.warning(
                "the YFCC EXIF side file is not in the source's order (or lacks ids): "
                "%d side lines were indexed that no row asked for",
                self.counts["spilled"],
            )


def _fill(side_file: str, db_path: str, photo_ids: set[str] | None) -> dict[str, str]:
    """Stream the side file into a fresh database; returns the counts."""
    conn = sqlite3.connect(db_path)
    # A temporary file renamed only when whole: no journal or fsync is worth paying for.
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    # A big page cache keeps primary-key inserts in memory far longer as the table grows.
    conn.execute("PRAGMA cache_size = -262144")
    _create_tables(conn)
    counts = {"lines": 0, "rows": 0, "malformed": 0, "duplicates": 0, "filtered": 0}
    t0 = time.perf_counter()
    try:
        conn.execute("BEGIN")
        for batch in _batches(_records(side_file, photo_ids, counts)):
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO exif VALUES (?, ?)", batch)
            added = conn.total_changes - before
            counts["rows"] += added
            counts["duplicates"] += len(batch) - added  # first line of an id wins
        conn.commit()
    finally:
        conn.close()
    info = {k: str(v) for k, v in counts.items()}
    info["seconds"] = f"{time.perf_counter() - t0:.1f}"
    return info


def _create_tables(conn: sqlite3.Connection) -> None:
    """The index's tables.  Lines are appended in file order to a rowid table (pages filled
    densely) and found through a small unique index on the id, which also makes the first
    line of an id win under INSERT OR IGNORE.  Measured on 10^5 lines of ~0.9 KB against
    the id as a WITHOUT ROWID primary key: 7x faster to fill, 3.4x smaller, 11x faster
    lookups (docs/scale_metadata.md)."""
    conn.execute("CREATE TABLE exif (photo_id TEXT NOT NULL, items TEXT NOT NULL)")
    conn.execute("CREATE UNIQUE INDEX exif_photo_id ON exif (photo_id)")
    conn.execute("CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


def _records(
    side_file: str, photo_ids: set[str] | None, counts: dict[str, int]
) -> Generator[tuple[str, str], None, None]:
    """(photo id, raw items) per good line, with a progress bar over on-disk bytes."""
    stream, raw = open_binary(side_file)
    total = os.path.getsize(side_file)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="YFCC EXIF index", disable=None)
    try:
        with raw, stream:
            for line in stream:
                counts["lines"] += 1
                if counts["lines"] % 100_000 == 0:
                    bar.update(raw.tell() - bar.n)
                if not line.strip():
                    continue
                try:
                    photo_id, items = split_line(line.decode("utf-8", "replace"))
                except ValueError:
                    counts["malformed"] += 1
                    continue
                if photo_ids is not None and photo_id not in photo_ids:
                    counts["filtered"] += 1
                    continue
                yield photo_id, items
        bar.update(total - bar.n)
    except READ_ERRORS as exc:
        raise SourceError(side_file, f"unreadable after line {counts['lines']}: {reason_of(exc)}") from exc
    finally:
        bar.close()


def _batches(records: Iterable, size: int = BATCH) -> Iterator[list]:
    batch: list = []
    for record in records:
        batch.append(record)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_info(db_path: str, info: dict[str, str]) -> None:
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            conn.executemany("INSERT OR REPLACE INTO info VALUES (?, ?)", sorted(info.items()))
    finally:
        conn.close()
