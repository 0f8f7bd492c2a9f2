"""Naive references for the shard writer's fast paths: tarfile itself, and the table's per-string sanitising."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from exiflang.pipeline.shards.files import _STR_MAP, RAW_COLUMNS, SCHEMA, _raw_items, _raw_or_none, safe_text


def tarfile_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """The tar as Python's ``tarfile`` writes it: GNU format, mode 0444, mtime 0."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mode, info.mtime = len(data), 0o444, 0
                tar.addfile(info, io.BytesIO(data))


def sanitised_table(rows: list[dict[str, Any]]) -> pa.Table:
    """The shard table with every string passed through ``safe_text(str(v))`` one by one."""
    cols: dict[str, list[Any]] = {}
    for fld in SCHEMA:
        values = [r.get(fld.name) for r in rows]
        if pa.types.is_string(fld.type):
            values = [None if v is None else safe_text(str(v)) for v in values]
        elif fld.type == _STR_MAP:
            values = [
                [(safe_text(str(k)), None if v is None else safe_text(str(v))) for k, v in (d or {}).items()]
                for d in values
            ]
        cols[fld.name] = values
    for name in RAW_COLUMNS:
        cols[f"{name}_bytes"] = [_raw_or_none(r.get(name)) for r in rows]
    cols["meta_bytes"] = [_raw_items(r.get("meta")) for r in rows]
    return pa.table(cols, schema=SCHEMA)
