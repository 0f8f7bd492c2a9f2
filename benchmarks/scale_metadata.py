"""Metadata phases at 10^5-10^6 rows: cross-shard dedup and the YFCC side-file join, time, peak RSS, disk.

Dedup (the find pass, which is what grows with N; the rewrite is per shard in both):
``reference`` is the naive in-memory pass kept in tests/pipeline/dedup_reference.py,
``spill`` is exiflang.pipeline.shards.dedup (hash partitions on disk).  Input: fake shard tables with the
real schema, 10,000 rows per shard, 90% successful, 5% of rows a copy of an earlier row's
sha256 (any shard).

Side-file join: ``full`` is YfccExifIndex.build (the whole side file into SQLite before the
first download), ``full-old`` the same with the table layout it had before issue 19 (the id
as a WITHOUT ROWID primary key; rebuilt here), ``stream`` is YfccSideJoin over the whole job,
``stream-10%`` over the first tenth (as with --max-rows), ``shuffled`` the stream join with the
side file's lines shuffled (its worst case), ``source`` only reads the main file (work the job does anyway).  Input: a
2016-layout main file (1% videos) and a side file in its order, one line per main line as
YFCC publishes it; 25% of lines empty (no EXIF), the others the first 30 items of a real
metadata-extractor dump from shared/data (about 1.2 KB), each under its own photo id.

Every measurement runs in a fresh subprocess (clean peak RSS: VmHWM, with the peak after
imports as ``base``); variants alternate within each round; min and median over the rounds.

    python benchmarks/scale_metadata.py [--sizes 100000,1000000] [--runs 2] [--dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from exiflang.pipeline.shards.files import SCHEMA, atomic_write_json, shard_paths  # noqa: E402
from exiflang.pipeline.sources.yfcc import FIELDS_2016  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "photos" / "yfcc100m_exif_sample.tsv"
ROWS_PER_SHARD = 10_000
DEDUP = ("reference", "spill")
JOIN = ("full", "full-old", "stream", "stream-10%", "source", "shuffled")


# -- inputs ------------------------------------------------------------------------------------


def make_shards(folder: Path, n: int, seed: int = 0) -> None:
    """Complete shard tables (no tars: the find pass reads tables only) of ``n`` rows."""
    rng = np.random.default_rng(seed)
    shas = np.array([hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)], dtype=object)
    copies = np.flatnonzero(rng.random(n) < 0.05)
    copies = copies[copies > 0]
    shas[copies] = shas[(rng.random(len(copies)) * copies).astype(np.int64)]
    success = rng.random(n) < 0.9
    folder.mkdir(parents=True, exist_ok=True)
    for shard, start in enumerate(range(0, n, ROWS_PER_SHARD)):
        m = min(ROWS_PER_SHARD, n - start)
        cols = {
            "key": [f"{shard:05d}_{p:05d}" for p in range(m)],
            "shard": np.full(m, shard, np.int32),
            "position": np.arange(m, dtype=np.int32),
            "status": np.where(success[start : start + m], "success", "http_error").tolist(),
            "sha256": shas[start : start + m].tolist(),
        }
        table = pa.table(
            {f.name: pa.array(cols[f.name], f.type) if f.name in cols else pa.nulls(m, f.type) for f in SCHEMA},
            schema=SCHEMA,
        )
        paths = shard_paths(folder, shard)
        pq.write_table(table, paths["parquet"], compression="zstd")
        atomic_write_json(paths["stats"], {"shard": shard, "rows": m})


def _photo_id(i: int) -> str:
    return str(5_000_000_000 + (i * 2_654_435_761) % 4_294_967_296)  # unique for i < 2**32


def _side_line(i: int, pool: list[str]) -> str:
    return f"{_photo_id(i)}\t{'' if i % 4 == 3 else pool[i % len(pool)]}\n"


def make_yfcc(folder: Path, n: int) -> dict[str, Path]:
    """Main file, side file in its order, and the same side file shuffled."""
    pool = [",".join(line.rstrip("\n").split("\t", 1)[1].split(",")[:30]) for line in SAMPLE.open(encoding="utf-8")]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        k: folder / name
        for k, name in (("main", "yfcc100m_dataset"), ("side", "yfcc100m_exif"), ("shuffled", "yfcc100m_exif_shuffled"))
    }
    base = dict.fromkeys(FIELDS_2016, "")
    base.update(
        server_id="2087",
        farm_id="3",
        secret="5ecf2c5be4",
        original_secret="9c41e0ca5a",
        original_extension="jpg",
        title="a+title",
        user_tags="sea,sun",
    )
    with paths["main"].open("w") as main, paths["side"].open("w") as side:
        for i in range(n):
            pid = _photo_id(i)
            base.update(
                line_number=str(i),
                photo_id=pid,
                marker="1" if i % 100 == 99 else "0",
                download_url=f"http://farm3.staticflickr.com/2087/{pid}_5ecf2c5be4.jpg",
            )
            main.write("\t".join(base[f] for f in FIELDS_2016) + "\n")
            side.write(_side_line(i, pool))
    order = list(range(n))
    random.Random(1).shuffle(order)
    with paths["shuffled"].open("w") as out:
        out.writelines(_side_line(i, pool) for i in order)
    return paths


# -- children (one measurement per process) ---------------------------------------------------


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class _PeakDisk(threading.Thread):
    """Polls the size of the spill folders under ``root`` every 20 ms; ``peak`` in bytes."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root, self.peak, self.stop = root, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            try:
                size = sum(_folder_bytes(p) for p in self.root.glob(".dedup-*"))
            except OSError:  # a spill file removed while listed
                continue
            self.peak = max(self.peak, size)


def child_dedup(variant: str, data: Path) -> dict[str, Any]:
    if variant == "reference":
        from tests.pipeline.dedup_reference import find_cross_shard_duplicates

        def run() -> int:
            return sum(map(len, find_cross_shard_duplicates(data).values()))
    else:
        from exiflang.pipeline.shards.dedup import iter_cross_shard_duplicates

        def run() -> int:
            return sum(len(d) for _, d in iter_cross_shard_duplicates(data))

    base = _maxrss_mb()
    disk = _PeakDisk(data)
    disk.start()
    t0 = time.perf_counter()
    dups = run()
    seconds = time.perf_counter() - t0
    disk.stop.set()
    disk.join()
    return {"seconds": seconds, "rss_mb": _maxrss_mb(), "base_mb": base, "dups": dups, "disk_mb": disk.peak / 2**20}


def child_join(variant: str, data: Path, n: int) -> dict[str, Any]:
    from exiflang.pipeline.sources.open import open_source
    from exiflang.pipeline.sources.yfcc_exif import YfccExifIndex, YfccSideJoin

    db = data / f"bench-{os.getpid()}.sqlite"
    base = _maxrss_mb()
    t0 = time.perf_counter()
    first = None
    if variant == "full":
        YfccExifIndex.build(str(data / "yfcc100m_exif"), str(db)).close()
        rows = 0
    elif variant == "full-old":
        rows = old_layout_build(data / "yfcc100m_exif", db)
    else:
        source = open_source(data / "yfcc100m_dataset").rows()
        if variant != "source":
            side = data / ("yfcc100m_exif_shuffled" if variant == "shuffled" else "yfcc100m_exif")
            source = YfccSideJoin(str(side), str(db)).rows(source)
        limit = n // 10 if variant == "stream-10%" else None
        rows = 0
        for _ in itertools.islice(source, limit):
            rows += 1
            if first is None:
                first = time.perf_counter() - t0
        source.close()
    seconds = time.perf_counter() - t0
    size = db.stat().st_size if db.exists() else 0
    db.unlink(missing_ok=True)
    return {
        "seconds": seconds,
        "first_row_s": seconds if variant.startswith("full") else first,
        "rss_mb": _maxrss_mb(),
        "base_mb": base,
        "rows": rows,
        "disk_mb": size / 2**20,
    }


def old_layout_build(side: Path, db: Path) -> int:
    """The full index as built before issue 19: the id a WITHOUT ROWID primary key, rows
    inserted in file order (random id order) with a 256 MB page cache."""
    import sqlite3

    from exiflang.pipeline.sources.yfcc_exif import split_line

    conn = sqlite3.connect(db)
    for pragma in ("journal_mode = OFF", "synchronous = OFF", "cache_size = -262144"):
        conn.execute(f"PRAGMA {pragma}")
    conn.execute("CREATE TABLE exif (photo_id TEXT PRIMARY KEY, items TEXT NOT NULL) WITHOUT ROWID")
    with side.open(encoding="utf-8", errors="replace") as fh:
        lines = (split_line(line) for line in fh if line.strip())
        while batch := list(itertools.islice(lines, 20_000)):
            conn.executemany("INSERT OR IGNORE INTO exif VALUES (?, ?)", batch)
    conn.commit()
    conn.close()
    return 0


def _maxrss_mb() -> float:
    """Peak RSS of this process image.  VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    from the forked parent (this driver, holding the generated data) across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- driver ------------------------------------------------------------------------------------


def measure(kind: str, variant: str, data: Path, n: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", kind, variant, str(data), str(n)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if out.returncode:
        raise RuntimeError(f"{kind} {variant} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def rounds(kind: str, variants: tuple[str, ...], data: Path, n: int, runs: int) -> dict[str, list[dict[str, Any]]]:
    """Each variant ``runs`` times, alternating, the order reversed every other round."""
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for r in range(runs):
        for v in variants if r % 2 == 0 else variants[::-1]:
            results[v].append(measure(kind, v, data, n))
            print(f"  {kind} n={n} {v} run {r + 1}: {results[v][-1]}", file=sys.stderr)
    return results


def summarise(n: int, kind: str, results: dict[str, list[dict[str, Any]]], baseline: str) -> list[dict[str, Any]]:
    def stat(v: str, key: str, f: Callable) -> float:
        return f([r[key] for r in results[v] if r.get(key) is not None] or [float("nan")])

    rows = []
    for v in results:
        row = {"phase": kind, "n": n, "variant": v}
        for key in ("seconds", "rss_mb", "base_mb", "disk_mb", "first_row_s"):
            row[f"{key}_min"], row[f"{key}_med"] = stat(v, key, min), stat(v, key, statistics.median)
        row["time_ratio"] = row["seconds_med"] / stat(baseline, "seconds", statistics.median)
        row["rss_ratio"] = row["rss_mb_med"] / stat(baseline, "rss_mb", statistics.median)
        row["disk_mb_per_1m"] = row["disk_mb_med"] * 1e6 / n
        row["extra"] = results[v][0].get("dups", results[v][0].get("rows"))
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'phase':6} {'N':>9} {'variant':11} {'s min':>8} {'s med':>8} {'x base':>7} "
        f"{'1st row s':>9} {'RSS MB':>7} {'(base)':>6} {'x base':>7} {'disk MB':>8} "
        f"{'MB/1M':>8} {'out':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        first = f"{r['first_row_s_med']:9.2f}" if r["first_row_s_med"] == r["first_row_s_med"] else f"{'':9}"
        print(
            f"{r['phase']:6} {r['n']:>9} {r['variant']:11} {r['seconds_min']:8.2f} "
            f"{r['seconds_med']:8.2f} {r['time_ratio']:7.2f} {first} {r['rss_mb_med']:7.0f} "
            f"{r['base_mb_med']:6.0f} {r['rss_ratio']:7.2f} {r['disk_mb_med']:8.1f} "
            f"{r['disk_mb_per_1m']:8.1f} {r['extra']:>8}"
        )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, variant, data, n = sys.argv[2], sys.argv[3], Path(sys.argv[4]), int(sys.argv[5])
        res = child_dedup(variant, data) if kind == "dedup" else child_join(variant, data, n)
        print(json.dumps(res))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/exiflang_scale_metadata")
    ap.add_argument("--join-variants", default=",".join(JOIN))
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    table: list[dict[str, Any]] = []
    for n in (int(s) for s in args.sizes.split(",")):
        data = Path(args.dir) / str(n)
        shutil.rmtree(data, ignore_errors=True)
        try:
            make_shards(data / "shards", n)
            table += summarise(n, "dedup", rounds("dedup", DEDUP, data / "shards", n, args.runs), "reference")
            make_yfcc(data / "yfcc", n)
            side_mb = (data / "yfcc" / "yfcc100m_exif").stat().st_size / 2**20
            print(f"  n={n}: side file {side_mb:.1f} MB", file=sys.stderr)
            variants = tuple(args.join_variants.split(","))
            table += summarise(n, "join", rounds("join", variants, data / "yfcc", n, args.runs), variants[0])
        finally:
            shutil.rmtree(data, ignore_errors=True)
        print_table(table)
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
