"""Shard files on disk: atomic tar / Parquet / stats writing, the table's schema and readers, and
the check that a shard's files are still the ones its stats file recorded.

Text that is not valid UTF-8 (a file name ``b'\\xff\\xfe.jpg'`` decoded by ``os.fsdecode``, a
list field read with ``surrogateescape``, a JSON ``"\\udcff"``) reaches this module as a
``str`` holding lone surrogates, which Parquet, JSON and UTF-8 files cannot hold.  The rule,
applied to every string written here (table cells, map keys and values, tar JSON members):

* the text column holds the value's bytes decoded as UTF-8 with ``backslashreplace``
  (``'b\\udcff'`` -> ``'b\\\\xff'``), so it is readable and always valid;
* the raw bytes go alongside for the fields that name the photo: ``url_bytes`` (the URL or
  path), ``photo_id_bytes``, and ``meta_bytes`` (raw key -> raw value, for meta entries whose
  key or value was not valid UTF-8).  They are null / empty when the text was valid, so a
  non-null ``url_bytes`` also says that ``url`` is an escape.  The bytes are
  ``str.encode("utf-8", "surrogateescape")`` -- for a file name exactly ``os.fsencode`` --
  and ``bytes.decode("utf-8", "surrogateescape")`` gives back the str; a surrogate no byte
  can stand for (a JSON ``"\\ud800"``) is stored as its ``surrogatepass`` (WTF-8) bytes.

Shard completeness: the stats file is written last and records the size and sha256 of the
tar and the table (``files``); a shard whose files are missing or differ from that record is
not complete and is redone (:func:`shard_problem`).  Every file goes through
:mod:`exiflang.pipeline.storage`, so the dataset folder may be local or on an object store; the
functions here take a local ``Path`` or a remote URL (``s3://bucket/run``) alike, and
return paths of the same kind.  On an object store the tar and table are staged in a local
temporary file and uploaded whole, and the stats file's being written last is the commit
(:mod:`exiflang.pipeline.storage` explains the protocol).
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from exiflang.errors import naming
from exiflang.pipeline import storage
from exiflang.pipeline.storage import Location, PathLike

_STR_MAP = pa.map_(pa.string(), pa.string())
SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.int32()),
        ("position", pa.int32()),
        ("source_index", pa.int64()),
        ("photo_id", pa.string()),
        ("url", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("http_status", pa.int32()),
        ("attempts", pa.int32()),
        ("seconds", pa.float32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("ext", pa.string()),
        ("n_tags", pa.int32()),
        ("exif", _STR_MAP),
        ("exif_source", _STR_MAP),
        ("meta", _STR_MAP),
        # Raw bytes of the fields above that were not valid UTF-8 (module docstring); else null.
        ("url_bytes", pa.binary()),
        ("photo_id_bytes", pa.binary()),
        ("meta_bytes", pa.map_(pa.binary(), pa.binary())),
    ]
)
RAW_COLUMNS = ("url", "photo_id")  # string columns with a ``<name>_bytes`` column alongside
RERUN_CHECKS = ("hash", "size")  # how a shard with a stats file is checked on rerun
_HASH_CHUNK = 1 << 20
_MEMBER_KEY = re.compile(r"[A-Za-z0-9_-]{1,128}")  # WebDataset __key__: ASCII, no dot
_MEMBER_EXT = re.compile(r"[A-Za-z0-9_.-]{1,32}")


def is_utf8(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8, i.e. holds no lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def raw_bytes(text: str) -> bytes:
    """The bytes ``text`` stands for: ``surrogateescape`` (exact for decoded bytes), else WTF-8."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def safe_text(text: str) -> str:
    """``text`` itself when valid UTF-8, else its bytes with each invalid one as ``\\xNN``."""
    if is_utf8(text):
        return text
    return raw_bytes(text).decode("utf-8", "backslashreplace")


def json_safe(obj: Any) -> Any:
    """``obj`` (dicts, lists, scalars) with every string, keys included, passed through :func:`safe_text`."""
    if isinstance(obj, str):
        return safe_text(obj)
    if isinstance(obj, dict):
        return {safe_text(k) if isinstance(k, str) else k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def json_bytes(obj: Any, **dumps_args: Any) -> bytes:
    """``obj`` as UTF-8 JSON that any parser accepts, whatever strings it holds."""
    if dumps_args.get("ensure_ascii") is False:
        # Without ASCII escapes a lone surrogate reaches the encoder, which refuses it: only
        # then is every string rewritten (json_safe costs as much as the dump itself).
        try:
            return json.dumps(obj, **dumps_args).encode("utf-8")
        except UnicodeEncodeError:
            pass
    return json.dumps(json_safe(obj), **dumps_args).encode("utf-8")


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


def shard_paths(out_dir: PathLike, shard: int) -> dict[str, Location]:
    """The three files of one shard (``Path``s for a local folder, URLs for a remote one)."""
    name = shard_name(shard)
    return {
        "tar": storage.join(out_dir, f"{name}.tar"),
        "parquet": storage.join(out_dir, f"{name}.parquet"),
        "stats": storage.join(out_dir, f"{name}_stats.json"),
    }


def is_complete(out_dir: PathLike, shard: int, check: str = "hash") -> bool:
    """Whether the shard's stats file exists and its tar and table match what it recorded."""
    return shard_problem(out_dir, shard, check) is None


def shard_problem(out_dir: PathLike, shard: int, check: str = "hash") -> str | None:
    """Why shard ``shard`` is not complete (one line), or None when it is.

    ``check`` is ``"size"`` (stat only) or ``"hash"`` (also the sha256 of both files, about
    one read of the shard).  A stats file from before sizes were recorded is accepted when
    both files exist and end the way a whole tar / Parquet file ends.
    """
    if check not in RERUN_CHECKS:
        raise ValueError(f"check must be one of {', '.join(RERUN_CHECKS)}, not {check!r}")
    paths = shard_paths(out_dir, shard)
    try:
        stats = json.loads(storage.read_bytes(paths["stats"]))
    except FileNotFoundError:
        return "no stats file"
    except (OSError, ValueError) as exc:
        return f"{storage.basename(paths['stats'])} unreadable ({type(exc).__name__})"
    files = stats.get("files") if isinstance(stats, dict) else None
    if not isinstance(files, dict):
        return _unrecorded_problem(paths)
    for kind in ("tar", "parquet"):
        problem = _file_problem(paths[kind], files.get(kind), check)
        if problem:
            return problem
    return None


def _file_problem(path: Location, record: Any, check: str) -> str | None:
    name = storage.basename(path)
    if not isinstance(record, dict) or not isinstance(record.get("size"), int):
        return f"{name}: no size recorded in the stats file"
    try:
        size = storage.size(path)
        if size != record["size"]:
            return f"{name} is {size} bytes, the stats file recorded {record['size']}"
        if check == "hash" and file_record(path)["sha256"] != record.get("sha256"):
            return f"{name}: sha256 differs from the one the stats file recorded"
    except OSError as exc:
        return f"{name}: {exc.strerror or type(exc).__name__}"
    return None


def _unrecorded_problem(paths: dict[str, Location]) -> str | None:
    """Cheap wholeness checks for a stats file that records no sizes (older runs)."""
    for kind in ("tar", "parquet"):
        try:
            tail = _tail(paths[kind], 1024 if kind == "tar" else 4)
        except OSError as exc:
            return f"{storage.basename(paths[kind])}: {exc.strerror or type(exc).__name__}"
        size, data = tail
        # tarfile pads an archive to whole 512-byte blocks and ends it with two zero blocks.
        if kind == "tar" and (size % 512 or size < 1024 or data.strip(b"\0")):
            return f"{storage.basename(paths['tar'])} truncated (no end-of-archive blocks)"
        if kind == "parquet" and data != b"PAR1":
            return f"{storage.basename(paths['parquet'])} truncated (no Parquet footer)"
    return None


def _tail(path: Location, n: int) -> tuple[int, bytes]:
    size = storage.size(path)
    with storage.open_read(path) as fh:
        fh.seek(max(0, size - n))
        return size, fh.read(n)


def file_record(path: PathLike) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file (local or remote), read in 1 MiB chunks."""
    digest, size = hashlib.sha256(), 0
    with storage.open_read(path) as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


def write_stats(
    out_dir: PathLike, shard: int, stats: dict[str, Any], files: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Record the tar's and table's size and sha256 in ``stats`` and write it (last, atomically).

    ``files`` are those records when the caller has them (:meth:`TarShardWriter.commit` and
    :func:`write_table` return them, hashed from the local file before any upload); else
    the stored files are read to compute them.
    """
    paths = shard_paths(out_dir, shard)
    files = files or {kind: file_record(paths[kind]) for kind in ("tar", "parquet")}
    stats = {**stats, "files": {kind: files[kind] for kind in ("tar", "parquet")}}
    atomic_write_json(paths["stats"], stats)
    return stats


def remove_partial(out_dir: PathLike, shard: int) -> None:
    """Delete every file of a shard that is not complete: the stats file first (so a kill
    mid-way never leaves a stats file beside other files), then tar, table and temporaries."""
    paths = shard_paths(out_dir, shard)
    for key in ("stats", "tar", "parquet"):
        storage.remove(paths[key])
    folder = storage.resolve(out_dir)
    if isinstance(folder, Path):  # an object store holds no temporaries: they are staged locally
        for p in folder.glob(f"{shard_name(shard)}*.tmp-*"):
            p.unlink(missing_ok=True)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    storage.write_bytes(path, data)


def atomic_write_json(path: PathLike, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj, indent=2, sort_keys=True))


class TarShardWriter:
    """Writes WebDataset members to a local temporary tar; :meth:`commit` renames or uploads it
    into place (:func:`exiflang.pipeline.storage.commit`).

    The tar is the one ``tarfile`` writes in GNU format (regular files, mode 0444, mtime 0,
    no owner names) byte for byte, but its headers are built here from a fixed template:
    ``tarfile``'s per-member ``TarInfo`` path cost ~0.15 ms a sample, a tenth of the whole
    crawl's CPU.  ``tests/pipeline/test_shard_writers.py`` checks it against ``tarfile``.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = storage.resolve(path)
        self.tmp = storage.staging_path(self.path)
        # Open for the writer's lifetime; commit() / abort() close it.
        self._fh = open(self.tmp, "wb")  # noqa: SIM115
        self._offset = 0
        self.count = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample: ``{"jpg": original bytes, "exif.json": ..., "json": ...}``.

        Raises ValueError, before writing anything, when a member name is not ASCII-safe.
        """
        for ext in members:
            if not (_MEMBER_KEY.fullmatch(key) and _MEMBER_EXT.fullmatch(ext)):
                raise ValueError(f"tar member name {key!r} + {ext!r} is not ASCII-safe")
        write = self._fh.write
        for ext, data in members.items():
            header = tar_header(f"{key}.{ext}", len(data))
            pad = -len(data) % _BLOCK
            write(header)
            write(data)
            if pad:
                write(bytes(pad))
            self._offset += len(header) + len(data) + pad
        self.count += 1

    def commit(self) -> dict[str, Any]:
        """Close the tar and put it in place; returns its ``{"size", "sha256"}``."""
        try:
            self._close()
            record = file_record(self.tmp)  # hashed locally: no second read of an upload
            storage.commit(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)
        return record

    def abort(self) -> None:
        try:
            self._fh.close()
        finally:  # even if closing fails (disk full), no temporary is left behind
            self.tmp.unlink(missing_ok=True)

    def _close(self) -> None:
        """The end-of-archive marker (two zero blocks), padded to a whole 10 KiB record, as tarfile does."""
        end = 2 * _BLOCK
        end += -(self._offset + end) % _RECORD
        self._fh.write(bytes(end))
        self._fh.close()


_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
# A GNU header of a regular file, mode 0444, uid/gid 0, mtime 0, no link or owner names, with
# name (0-100), size (124-136) and checksum (148-156) still to fill in.
_HEADER = bytearray(_BLOCK)
_HEADER[100:124] = b"0000444\x000000000\x000000000\x00"
_HEADER[136:156] = b"00000000000\x00" + b" " * 8
_HEADER[156:157] = tarfile.REGTYPE
_HEADER[257:265] = tarfile.GNU_MAGIC
_MAX_SIZE = 8**11  # larger sizes need tarfile's base-256 field


def tar_header(name: str, size: int) -> bytes:
    """The 512-byte header ``tarfile`` (GNU format) writes for a member of our kind.

    ``name``: ASCII; over 100 bytes (or a size of 8 GiB or more) it is left to ``tarfile``,
    which adds a GNU long-name block.
    """
    raw = name.encode("ascii")
    if len(raw) > 100 or size >= _MAX_SIZE:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o444, 0
        return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    head = _HEADER.copy()
    head[0 : len(raw)] = raw
    head[124:136] = b"%011o\x00" % size
    # The checksum counts its own field as eight spaces, as the template holds it.
    head[148:155] = b"%06o\x00" % sum(head)
    return bytes(head)


def write_table(path: PathLike, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Write the shard's Parquet table (one row per source row) atomically; returns its
    ``{"size", "sha256"}``.

    Any string is stored by the rule of the module docstring, so no value a row holds can
    make the table unwritable.
    """
    return write_arrow_table(path, pa.table(_columns(rows), schema=SCHEMA))


def write_arrow_table(path: PathLike, table: pa.Table) -> dict[str, Any]:
    """Write ``table`` as Parquet (zstd) atomically, staged locally; returns its file record."""
    tmp = storage.staging_path(path)
    try:
        pq.write_table(table, tmp, compression="zstd")
        record = file_record(tmp)
        storage.commit(tmp, path)
    finally:  # pq.write_table or the upload raised: the temporary goes too
        tmp.unlink(missing_ok=True)
    return record


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any] | pa.Array]:
    cols: dict[str, list[Any] | pa.Array] = {}
    for fld in SCHEMA:
        values = [r.get(fld.name) for r in rows]
        if pa.types.is_string(fld.type):
            cols[fld.name] = _text_column(values)
        elif fld.type == _STR_MAP:
            cols[fld.name] = _text_map_column(values)
        else:
            cols[fld.name] = values
    for name in RAW_COLUMNS:
        cols[f"{name}_bytes"] = [_raw_or_none(r.get(name)) for r in rows]
    cols["meta_bytes"] = [_raw_items(r.get("meta")) for r in rows]
    return cols


_TEXT, _TEXT_OR_NONE = frozenset({str}), frozenset({str, type(None)})


def _text_column(values: list[Any]) -> pa.Array:
    """A string column by the module's rule: ``str(v)`` through :func:`safe_text`, None kept.

    Fast path: when every value is a ``str`` (or None) Arrow converts the list in C; a lone
    surrogate makes it raise, and only then is each value rewritten in Python.  (Bytes or
    numbers take the slow path too: Arrow would take bytes as text where ``str()`` would not.)
    """
    if set(map(type, values)) <= _TEXT_OR_NONE:
        try:
            return pa.array(values, type=pa.string())
        except UnicodeEncodeError:
            pass
    return pa.array([None if v is None else safe_text(str(v)) for v in values], type=pa.string())


def _text_dict(d: Any) -> bool:
    """A plain dict of str keys and str-or-None values (the type test runs in C)."""
    return type(d) is dict and set(map(type, d)) <= _TEXT and set(map(type, d.values())) <= _TEXT_OR_NONE


def _text_map_column(values: list[Any]) -> pa.Array:
    """A string -> string map column by the same rule (a missing map is an empty one)."""
    maps = [{} if d is None else d for d in values]
    if all(_text_dict(d) for d in maps):
        try:
            return pa.array(maps, type=_STR_MAP)
        except UnicodeEncodeError:
            pass
    return pa.array(
        [[(safe_text(str(k)), None if v is None else safe_text(str(v))) for k, v in d.items()] for d in maps],
        type=_STR_MAP,
    )


def _raw_items(meta: dict[str, Any] | None) -> list[tuple[bytes, bytes]]:
    """(raw key, raw value) of the meta entries whose key or value is not valid UTF-8."""
    items = [(str(k), "" if v is None else str(v)) for k, v in (meta or {}).items()]
    return [(raw_bytes(k), raw_bytes(v)) for k, v in items if not (is_utf8(k) and is_utf8(v))]


def _raw_or_none(value: Any) -> bytes | None:
    return raw_bytes(value) if isinstance(value, str) and not is_utf8(value) else None


def complete_shards(out_dir: PathLike) -> list[int]:
    """Indices of the complete shards in a dataset folder, sorted."""
    return sorted(
        int(name.split("_")[0])
        for name in storage.listdir(out_dir)
        if name.endswith("_stats.json") and name.split("_")[0].isdigit()
    )


def read_parquet(path: PathLike, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file (local or remote) as a table, the named columns only when given."""
    loc = storage.resolve(path)
    with naming(loc):  # pyarrow's errors for a damaged table often do not say which file
        if isinstance(loc, Path):
            return pq.read_table(loc, columns=columns)
        with storage.open_read(loc) as fh:
            return pq.read_table(fh, columns=columns)


def parquet_metadata(path: PathLike) -> pq.FileMetaData:
    """A Parquet file's footer (schema, rows, row groups), read without its data."""
    loc = storage.resolve(path)
    with naming(loc):
        if isinstance(loc, Path):
            return pq.read_metadata(loc)
        with storage.open_read(loc) as fh:
            return pq.read_metadata(fh)


def read_tables(out_dir: PathLike, columns: Iterable[str] | None = None) -> pa.Table:
    """Concatenate the Parquet tables of all complete shards (in shard order).

    Columns a table lacks (shards written before a column was added) read as nulls.
    """
    names = list(columns) if columns is not None else SCHEMA.names
    tables = [_read_table(shard_paths(out_dir, s)["parquet"], names) for s in complete_shards(out_dir)]
    if not tables:
        return pa.table({c: pa.array([], type=SCHEMA.field(c).type) for c in names})
    return pa.concat_tables(tables)


def _read_table(path: Location, names: list[str]) -> pa.Table:
    present = set(parquet_metadata(path).schema.to_arrow_schema().names)
    table = read_parquet(path, [c for c in names if c in present])
    for name in names:
        if name not in present:
            fld = SCHEMA.field(name)
            table = table.append_column(fld, pa.nulls(table.num_rows, fld.type))
    return table.select(names)
