"""Shard files on disk: atomic tar / Parquet / stats writing, and the table's schema and readers."""
from __future__ import annotations

import io
import json
import os
import tarfile
import uuid
from pathlib import Path
from typing import Any, Iterable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

_STR_MAP = pa.map_(pa.string(), pa.string())
SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.int32()), ("position", pa.int32()),
    ("source_index", pa.int64()), ("photo_id", pa.string()), ("url", pa.string()),
    ("status", pa.string()), ("error", pa.string()), ("http_status", pa.int32()),
    ("attempts", pa.int32()), ("seconds", pa.float32()), ("width", pa.int32()),
    ("height", pa.int32()), ("bytes", pa.int64()), ("sha256", pa.string()),
    ("ext", pa.string()), ("n_tags", pa.int32()), ("exif", _STR_MAP),
    ("exif_source", _STR_MAP), ("meta", _STR_MAP),
])


def shard_name(shard: int) -> str:
    return f"{shard:05d}"


def shard_paths(out_dir: Path, shard: int) -> dict[str, Path]:
    """The three files of one shard."""
    base = out_dir / shard_name(shard)
    return {"tar": base.with_suffix(".tar"), "parquet": base.with_suffix(".parquet"),
            "stats": out_dir / f"{shard_name(shard)}_stats.json"}


def is_complete(out_dir: Path, shard: int) -> bool:
    """A shard is complete once its stats file exists: it is renamed into place last."""
    return shard_paths(out_dir, shard)["stats"].exists()


def remove_partial(out_dir: Path, shard: int) -> None:
    """Delete what a killed attempt at this shard left behind (temps and unfinished files)."""
    for p in out_dir.glob(f"{shard_name(shard)}*.tmp-*"):
        p.unlink(missing_ok=True)
    if not is_complete(out_dir, shard):
        for key in ("tar", "parquet"):
            shard_paths(out_dir, shard)[key].unlink(missing_ok=True)


def _tmp(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = _tmp(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())


class TarShardWriter:
    """Writes WebDataset members to a temporary tar; :meth:`commit` renames it into place."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = _tmp(path)
        self._tar = tarfile.open(self.tmp, "w", format=tarfile.GNU_FORMAT)
        self.count = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        """Add one sample: ``{"jpg": original bytes, "exif.json": ..., "json": ...}``."""
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mode = 0o444
            info.mtime = 0  # fixed, so a rebuilt shard is byte-identical
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def commit(self) -> None:
        self._tar.close()
        with open(self.tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        self.tmp.replace(self.path)

    def abort(self) -> None:
        self._tar.close()
        self.tmp.unlink(missing_ok=True)


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write the shard's Parquet table (one row per source row) atomically."""
    cols = {name: [r.get(name) for r in rows] for name in SCHEMA.names}
    for name in ("exif", "exif_source", "meta"):
        cols[name] = [list((d or {}).items()) for d in cols[name]]
    table = pa.table(cols, schema=SCHEMA)
    tmp = _tmp(path)
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(path)


def complete_shards(out_dir: Path) -> list[int]:
    """Indices of the complete shards in a dataset folder, sorted."""
    return sorted(int(p.name.split("_")[0]) for p in out_dir.glob("*_stats.json")
                  if p.name.split("_")[0].isdigit())


def read_tables(out_dir: Path, columns: Optional[Iterable[str]] = None) -> pa.Table:
    """Concatenate the Parquet tables of all complete shards (in shard order)."""
    shards = complete_shards(out_dir)
    tables = [pq.read_table(shard_paths(out_dir, s)["parquet"],
                            columns=list(columns) if columns else None) for s in shards]
    if not tables:
        return SCHEMA.empty_table() if columns is None else pa.table(
            {c: pa.array([], type=SCHEMA.field(c).type) for c in columns})
    return pa.concat_tables(tables)
