"""A simulated YFCC100M crawl target: the metadata files, the photo hosts and the ground truth of a crawl.

Everything is a pure function of ``(seed, line)``, so the files, the served bytes and the
expected pipeline status of every row agree without any shared table:

- :class:`SimWorld` decides each line of a synthetic ``yfcc100m_dataset``: photo id, farm
  (host), secrets, video or photo, and the photo's *fate* (served fine, gone, throttled once,
  stalled, truncated, redirected, an HTML page, opted out, a duplicate, ...), and from the fate
  the status the pipeline should give the row (:meth:`SimWorld.expected`).
- :func:`write_files` streams the main file in the 2016 (25 columns) and 2014 (23 columns)
  layouts, the ``yfcc100m_exif`` side file, the ground truth as Parquet and a summary; memory
  is flat in N.
- :class:`YfccSimulator` serves the photos from farm1..farm9, each on its own loopback address
  ``127.0.0.1<farm>`` (127.0.0.11..19) and one shared port, and counts per host: requests,
  status codes, the most requests in any sliding 1-s window, the most requests in flight and
  open connections, 429s (throttle or fate) and retries that came before Retry-After.  The
  counters are :meth:`YfccSimulator.stats` and ``GET /_sim/stats`` (JSON) on any host.

The pipeline crawls the simulated hosts with (PORT from :attr:`YfccSimulator.port`)::

    exiflang shards --source DIR/yfcc100m_dataset --yfcc-exif DIR/yfcc100m_exif \\
        --yfcc-original-url 'http://127.0.0.1{farm}:PORT/{server}/{id}_{original_secret}_o.{ext}'

The listed (reduced) URL of each line, the pipeline's fallback, already points at the same
host.  The ground truth assumes a client that retries at least once, honours Retry-After,
times out before ``stall_seconds`` and stays under the throttled hosts' limits.

    python benchmarks/yfcc_sim.py --rows 100000 --out /tmp/yfcc_sim --serve-seconds 600
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import select
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

if __package__ in (None, ""):
    # `python benchmarks/yfcc_sim.py`: make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exiflang.pipeline import records as st

OPTED_OUT = getattr(st, "OPTED_OUT", "opted_out")  # the status honouring X-Robots-Tag opt-outs

# Fate -> share of photo lines.  "ok" takes what the others leave (about 60%).
DEFAULT_SHARES: dict[str, float] = {
    "gone404": 0.20,
    "gone410": 0.10,  # ~30% of a 2014 photo list is gone today
    "retry429": 0.01,  # 429 + Retry-After once, then the photo
    "retry503": 0.0025,  # 503 once, then the photo
    "error5xx": 0.0025,  # 500 or 502 on every try
    "stall": 0.002,  # no status line within stall_seconds
    "cut": 0.005,  # Content-Length of the whole, half sent, closed
    "short": 0.005,  # a stored file cut in the scan, served whole
    "html": 0.01,  # a 200 text/html error page
    "redirect": 0.01,  # 302 to /moved/ on the same or another host
    "optout": 0.005,  # the photo, with X-Robots-Tag: noai, noimageai
    "fallback": 0.01,  # original 404, listed reduced size served
    "duplicate": 0.01,  # exact bytes of an earlier "ok" photo
    "noexif": 0.01,  # a JPEG without EXIF (no side-file line either)
}
FATES = ("ok", *DEFAULT_SHARES)
# Fate -> (pipeline status, http_status of the pipeline's row).
EXPECTED: dict[str, tuple[str, int | None]] = {
    "ok": (st.SUCCESS, 200),
    "gone404": (st.HTTP_ERROR, 404),
    "gone410": (st.HTTP_ERROR, 410),
    "retry429": (st.SUCCESS, 200),
    "retry503": (st.SUCCESS, 200),
    "error5xx": (st.HTTP_ERROR, None),  # 500 or 502: SimWorld.expected says which
    "stall": (st.TIMEOUT, None),
    "cut": (st.DOWNLOAD_FAILED, 200),
    "short": (st.DECODE_FAILED, 200),
    "html": (st.NOT_AN_IMAGE, 200),
    "redirect": (st.SUCCESS, 200),
    "optout": (OPTED_OUT, 200),
    "fallback": (st.SUCCESS, 200),
    "duplicate": (st.DUPLICATE, 200),
    "noexif": (st.TOO_FEW_TAGS, 200),
}
ID_STRIDE = 8  # photo id = id_base + line * 8 + (0..7): sparse like Flickr's, invertible
DUP_LOOKBACK = 64  # a duplicate copies the nearest "ok" photo at most this many lines back
MAX_HOSTS = 9  # farm1..farm9 -> 127.0.0.11..127.0.0.19
ORIGINAL_PATH = "/{server}/{id}_{original_secret}_o.{ext}"
STATS_PATH = "/_sim/stats"
HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>Flickr: Page Not Found</title></head>"
    b"<body><h1>This page is private or no longer exists.</h1></body></html>\n"
)
_U64 = float(1 << 64)


@dataclass
class SimConfig:
    """The simulated world's parameters; everything else follows from them.

    ``n_rows`` >= 0 lines (videos included); ``n_hosts`` 1..9 farms; ``shares`` overrides
    :data:`DEFAULT_SHARES` (fractions of photo lines, summing to <= 1); ``video_share`` 0..1;
    ``pool_size`` >= 1 distinct synthetic JPEGs (~50 ms each to make, 256-384 px wide).
    """

    n_rows: int = 1000
    seed: int = 0
    n_hosts: int = MAX_HOSTS
    shares: dict[str, float] = field(default_factory=dict)
    video_share: float = 0.02
    pool_size: int = 64
    id_base: int = 3_000_000_000
    stall_seconds: float = 30.0  # a stalled request is dropped after this (client gone sooner)
    retry_after: float = 1.0  # seconds a "retry429" photo refuses, sent as Retry-After
    throttle_farms: tuple[int, ...] = (3, 7)
    throttle_concurrency: int = 4  # throttled farms: 429 above this many requests in flight
    throttle_rate: float = 20.0  # ... or above this many requests in the last second

    def __post_init__(self) -> None:
        if not 1 <= self.n_hosts <= MAX_HOSTS:
            raise ValueError(f"n_hosts must be 1..{MAX_HOSTS}, not {self.n_hosts}")
        unknown = set(self.shares) - set(DEFAULT_SHARES)
        if unknown:
            raise ValueError(f"unknown fates in shares: {sorted(unknown)}")
        if sum(self.fate_shares().values()) > 1.0 + 1e-9 or self.pool_size < 1:
            raise ValueError("fate shares must sum to at most 1 and pool_size be at least 1")
        self.throttle_farms = tuple(self.throttle_farms)

    def fate_shares(self) -> dict[str, float]:
        """Every fate but "ok" -> its share, defaults overridden by ``shares``."""
        return {**DEFAULT_SHARES, **self.shares}


@dataclass(frozen=True)
class Line:
    """One line of the main file, as decided by the seed."""

    line: int
    photo_id: int
    video: bool
    farm: int
    server: int
    secret: str
    original_secret: str
    fate: str  # one of FATES ("ok" for videos)
    pool: int  # which pooled JPEG the photo is
    source: int  # line whose bytes are served (itself, or a duplicate's original)
    misc: int  # 64 random bits for the free-text fields and variants


@dataclass(frozen=True)
class Expectation:
    """What the pipeline should make of one photo row."""

    status: str
    fate: str
    http_status: int | None
    duplicate_of: str | None  # photo id of the first copy, for "duplicate"


def host_of(farm: int) -> str:
    """The loopback address of farm 1..9: 127.0.0.11..127.0.0.19."""
    return f"127.0.0.1{farm}"


def original_url_template(port: int) -> str:
    """The ``--yfcc-original-url`` value that sends the pipeline to the simulator on ``port``."""
    return "http://127.0.0.1{farm}:" + str(port) + ORIGINAL_PATH


class SimWorld:
    """The deterministic world: lines, fates, expectations and photo bytes."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = cfg = config or SimConfig()
        self._key = hashlib.blake2b(f"yfcc-sim:{cfg.seed}".encode(), digest_size=32).digest()
        shares = cfg.fate_shares()
        self._cuts: list[tuple[float, str]] = []
        total = 0.0
        for fate in FATES[1:]:
            total += shares[fate]
            self._cuts.append((total, fate))
        self._pool: PhotoPool | None = None
        self._pool_lock = threading.Lock()

    @property
    def pool(self) -> PhotoPool:
        """The pooled JPEGs, made on first use (``pool_size`` x ~50 ms)."""
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = PhotoPool(self.config.seed, self.config.pool_size)
        return self._pool

    def _digest(self, line: int) -> bytes:
        return hashlib.blake2b(line.to_bytes(8, "little"), digest_size=48, key=self._key).digest()

    def _base(self, line: int) -> tuple[bool, str, bytes]:
        """(video, fate before duplicate resolution, digest) of a line."""
        d = self._digest(line)
        video = int.from_bytes(d[8:12], "little") / 4294967296.0 < self.config.video_share
        if video:
            return True, "ok", d
        u = int.from_bytes(d[0:8], "little") / _U64
        fate = next((f for cut, f in self._cuts if u < cut), "ok")
        return False, fate, d

    def line(self, line: int) -> Line:
        """The line ``line`` (0-based) of the main file."""
        cfg = self.config
        video, fate, d = self._base(line)
        c, e = int.from_bytes(d[16:24], "little"), int.from_bytes(d[24:32], "little")
        o = int.from_bytes(d[40:48], "little")
        source = line
        if fate == "duplicate":
            source = self._duplicate_source(line)
            fate = "duplicate" if source != line else "ok"
        return Line(
            line=line,
            photo_id=cfg.id_base + line * ID_STRIDE + (c >> 40) % ID_STRIDE,
            video=video,
            farm=1 + c % cfg.n_hosts,
            server=1000 + (c >> 8) % 9000,
            secret=f"{e & 0xFFFFFFFFFF:010x}",
            original_secret=f"{o & 0xFFFFFFFFFF:010x}",
            fate=fate,
            pool=int.from_bytes(d[12:16], "little") % cfg.pool_size,
            source=source,
            misc=int.from_bytes(d[32:40], "little"),
        )

    def _duplicate_source(self, line: int) -> int:
        """The nearest earlier "ok" photo line, or ``line`` itself when there is none."""
        for earlier in range(line - 1, max(-1, line - 1 - DUP_LOOKBACK), -1):
            video, fate, _ = self._base(earlier)
            if not video and fate == "ok":
                return earlier
        return line

    def line_of(self, photo_id: int | str) -> Line | None:
        """The line a photo id belongs to, or None for an id the world never made."""
        try:
            pid = int(photo_id)
        except (TypeError, ValueError):
            return None
        n = (pid - self.config.id_base) // ID_STRIDE
        if pid < self.config.id_base or n >= self.config.n_rows:
            return None
        ln = self.line(n)
        return ln if ln.photo_id == pid else None

    def expected(self, photo_id: int | str, honour_opt_out: bool = True) -> Expectation | None:
        """The pipeline status the photo's row should end with; None for videos and unknown ids.

        ``honour_opt_out=False`` gives the expectation of a crawler that ignores opt-outs.
        """
        ln = self.line_of(photo_id)
        return None if ln is None else self.expected_for(ln, honour_opt_out)

    def expected_for(self, ln: Line, honour_opt_out: bool = True) -> Expectation | None:
        """:meth:`expected` for a line already at hand (None for a video)."""
        if ln.video:
            return None
        status, code = EXPECTED[ln.fate]
        if ln.fate == "error5xx":
            code = self.error_code(ln)
        if ln.fate == "optout" and not honour_opt_out:
            status = st.SUCCESS
        dup = str(self.line(ln.source).photo_id) if ln.fate == "duplicate" else None
        return Expectation(status, ln.fate, code, dup)

    @staticmethod
    def error_code(ln: Line) -> int:
        """The status code an "error5xx" line always answers (500 or 502)."""
        return 502 if (ln.misc >> 60) & 1 else 500

    def redirect_farm(self, ln: Line) -> int:
        """The farm a "redirect" line's 302 points at: half the same host, half the next one."""
        if (ln.misc >> 61) & 1:
            return ln.farm
        return ln.farm % self.config.n_hosts + 1

    def photo_bytes(self, ln: Line, variant: str = "o") -> bytes:
        """The JPEG served for a line: ``o`` original, ``r`` the reduced (listed) size.

        A duplicate gets its source's original bytes exactly; "noexif" lines a JPEG without
        APP segments; "short" lines a file cut inside the scan.
        """
        src = self.line(ln.source) if ln.source != ln.line else ln
        if ln.fate == "duplicate":
            variant = "o"
        tag = f"exiflang-yfcc-sim photo {src.photo_id} {variant}"
        return self.pool.render(src.pool, tag, exif=ln.fate != "noexif", cut=ln.fate == "short")

    def lines(self, start: int = 0, stop: int | None = None) -> Iterator[Line]:
        """Lines ``start``..``stop - 1`` (default: all ``n_rows``), in order."""
        for i in range(start, self.config.n_rows if stop is None else stop):
            yield self.line(i)


# --------------------------------------------------------------------------- the photo pool


def _app_end(jpeg: bytes) -> int:
    """Offset just past SOI and the APPn segments that follow it."""
    i = 2
    while i + 4 <= len(jpeg) and jpeg[i] == 0xFF and 0xE0 <= jpeg[i + 1] <= 0xEF:
        i += 2 + int.from_bytes(jpeg[i + 2 : i + 4], "big")
    return i


def _comment(text: str) -> bytes:
    """A JPEG COM segment holding ``text`` (the per-photo patch that makes sha256 unique)."""
    body = text.encode("ascii")
    return b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body


class PhotoPool:
    """``size`` distinct synthetic camera JPEGs (real EXIF), split for per-photo patching."""

    IFD0 = frozenset(
        {
            "Make",
            "Model",
            "Orientation",
            "X Resolution",
            "Y Resolution",
            "Resolution Unit",
            "Software",
            "Date/Time",
            "YCbCr Positioning",
            "Image Description",
            "Artist",
            "Copyright",
        }
    )

    def __init__(self, seed: int, size: int, n_cameras: int = 8) -> None:
        from exiflang.pipeline.exif.parse import read_exif
        from exiflang.pipeline.synth.corpus import make_image
        from exiflang.pipeline.synth.params import make_cameras

        cams = make_cameras(seed, min(n_cameras, size), min_width=256, max_width=512)
        self.heads: list[bytes] = []  # SOI + APP segments (EXIF)
        self.tails: list[bytes] = []  # tables, frame, scan, EOI
        self.cuts: list[int] = []  # offset in the tail halfway through the scan
        self.devices: list[str] = []  # "Make Model", for the capture_device column
        self.side_items: list[str] = []  # the photo's yfcc100m_exif items, encoded
        for i in range(size):
            cam = cams[i % len(cams)]
            data, _, _ = make_image(cam, seed, i)
            end = _app_end(data)
            tail = data[end:]
            sos = tail.find(b"\xff\xda")
            self.heads.append(data[:end])
            self.tails.append(tail)
            self.cuts.append(sos + (len(tail) - sos) // 2)
            self.devices.append(f"{cam.make} {cam.model}")
            self.side_items.append(self._items(read_exif(data)))
        self.devices_encoded = [quote_plus(d) for d in self.devices]

    def _items(self, tags: dict[str, str]) -> str:
        """metadata-extractor style ``Dir.Tag:value`` items, every part URL-encoded."""
        items = []
        for name, value in tags.items():
            if name.startswith("Thumbnail "):  # metadata-extractor: "Exif Thumbnail.Compression"
                directory, name = "Exif Thumbnail", name[len("Thumbnail ") :]
            else:
                directory = "Exif IFD0" if name in self.IFD0 else "Exif SubIFD"
            items.append(f"{quote_plus(directory)}.{quote_plus(name)}:{quote_plus(value)}")
        return ",".join(items)

    def render(self, index: int, tag: str, exif: bool = True, cut: bool = False) -> bytes:
        """Pool photo ``index`` with a COM segment ``tag`` after its APP segments."""
        head = self.heads[index] if exif else b"\xff\xd8"
        tail = self.tails[index][: self.cuts[index]] if cut else self.tails[index]
        return head + _comment(tag) + tail


# --------------------------------------------------------------------------- the files


@dataclass(frozen=True)
class SimFiles:
    """Paths written by :func:`write_files` (a layout not asked for is None)."""

    dataset_2016: Path | None
    dataset_2014: Path | None
    exif: Path | None
    truth: Path
    summary: Path


_TITLES = (
    "At the beach, again",
    "Sunset",
    "Grandma's 80th",
    "DSC_0042",
    "Tokyo: day 3",
    "Snow & ice",
    "untitled",
    "100% cotton",
)
_TAGS = ("sea,sun", "", "family,birthday", "", "travel,japan,tokyo", "winter", "", "macro")
_LICENSES = (
    ("Attribution License", "http://creativecommons.org/licenses/by/2.0/"),
    ("Attribution-NonCommercial-ShareAlike License", "http://creativecommons.org/licenses/by-nc-sa/2.0/"),
    ("All Rights Reserved", ""),
)
_ENC_TITLES = tuple(quote_plus(t) for t in _TITLES)
_ENC_TAGS = tuple(",".join(quote_plus(x) for x in t.split(",")) if t else "" for t in _TAGS)
_ENC_LICENSES = tuple((quote_plus(n), u) for n, u in _LICENSES)


def _fields(ln: Line, world: SimWorld, port: int) -> list[str]:
    """The 23 fields of the 2014 layout for a line, free text URL-encoded as published."""
    m = ln.misc
    taken = time.gmtime(1_104_537_600 + m % 283_996_800)  # 2005..2013
    user = f"{(m >> 20) % 90_000_000 + 10_000_000}@N0{(m >> 50) % 8}"
    geo = (
        ("", "", "")
        if (m >> 40) & 3
        else (f"{(m % 360_000) / 1000 - 180:.6f}", f"{((m >> 8) % 170_000) / 1000 - 85:.6f}", "16")
    )
    lic_name, lic_url = _ENC_LICENSES[(m >> 44) % len(_LICENSES)]
    device = "" if ln.video or ln.fate == "noexif" else world.pool.devices_encoded[ln.pool]
    listed = f"http://{host_of(ln.farm)}:{port}/{ln.server}/{ln.photo_id}_{ln.secret}.jpg"
    return [
        str(ln.photo_id),
        user,
        f"user{(m >> 30) % 1000}",
        time.strftime("%Y-%m-%d+%H%%3A%M%%3A%S.0", taken),
        str(1_230_768_000 + m % 300_000_000),
        device,
        _ENC_TITLES[(m >> 4) % len(_TITLES)],
        "a+photo%2C+described",
        _ENC_TAGS[(m >> 12) % len(_TAGS)],
        "",
        *geo,
        f"http://www.flickr.com/photos/{user}/{ln.photo_id}/",
        listed,
        lic_name,
        lic_url,
        str(ln.server),
        str(ln.farm),
        ln.secret,
        ln.original_secret,
        "jpg",
        "1" if ln.video else "0",
    ]


_TRUTH_COLUMNS = (
    "line",
    "source_index",
    "photo_id",
    "fate",
    "expected_status",
    "expected_http_status",
    "duplicate_of",
    "farm",
    "host",
    "url",
)


def _truth_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("line", pa.int64()),
            ("source_index", pa.int64()),
            ("photo_id", pa.string()),
            ("fate", pa.string()),
            ("expected_status", pa.string()),
            ("expected_http_status", pa.int32()),
            ("duplicate_of", pa.string()),
            ("farm", pa.int32()),
            ("host", pa.string()),
            ("url", pa.string()),
        ]
    )


class _TruthWriter:
    """Ground-truth rows, written to Parquet in batches (memory flat in N)."""

    BATCH = 65_536

    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        self.path, self._schema = path, _truth_schema()
        self._writer = pq.ParquetWriter(str(path), self._schema, compression="zstd")
        self._cols: dict[str, list[Any]] = {c: [] for c in _TRUTH_COLUMNS}

    def add(self, **row: Any) -> None:
        for name, value in row.items():
            self._cols[name].append(value)
        if len(self._cols["line"]) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self._cols["line"]:
            self._writer.write_table(pa.table(self._cols, schema=self._schema))
            self._cols = {c: [] for c in _TRUTH_COLUMNS}

    def close(self) -> None:
        self.flush()
        self._writer.close()


def write_files(
    world: SimWorld, out_dir: str | Path, port: int, layouts: tuple[str, ...] = ("2016", "2014"), side_file: bool = True
) -> SimFiles:
    """Stream the main file(s), the EXIF side file, the ground truth and a summary into ``out_dir``.

    Names: ``yfcc100m_dataset`` (2016 layout), ``yfcc100m_dataset_2014``, ``yfcc100m_exif``,
    ``truth.parquet`` (one row per photo line: the pipeline's rows), ``summary.json``.
    URLs name ``port``, so write after the simulator has bound it (or fix it in advance).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"2016": out / "yfcc100m_dataset", "2014": out / "yfcc100m_dataset_2014"}
    # Several files open at once, closed together in the finally below (one `with` per file cannot
    # be written for a variable set of layouts).
    mains = {
        k: open(paths[k], "w", encoding="ascii", newline="\n", buffering=1 << 20)  # noqa: SIM115
        for k in layouts
    }
    exif = open(out / "yfcc100m_exif", "w", encoding="ascii", buffering=1 << 20) if side_file else None  # noqa: SIM115
    truth = _TruthWriter(out / "truth.parquet")
    counts: Counter[str] = Counter()
    t0 = time.perf_counter()
    try:
        index = 0
        for ln in world.lines():
            index += _write_line(world, ln, port, index, mains, exif, truth, counts)
    finally:
        for fh in mains.values():
            fh.close()
        if exif is not None:
            exif.close()
        truth.close()
    summary = _summary(world, port, counts, time.perf_counter() - t0)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return SimFiles(
        paths["2016"] if "2016" in layouts else None,
        paths["2014"] if "2014" in layouts else None,
        out / "yfcc100m_exif" if side_file else None,
        out / "truth.parquet",
        out / "summary.json",
    )


def _write_line(
    world: SimWorld,
    ln: Line,
    port: int,
    index: int,
    mains: dict[str, Any],
    exif: Any,
    truth: _TruthWriter,
    counts: Counter[str],
) -> int:
    """Write one line everywhere it goes; returns 1 if it is a photo row (0 for a video)."""
    fields = _fields(ln, world, port)
    if "2016" in mains:
        hashed = hashlib.md5(fields[0].encode()).hexdigest()
        mains["2016"].write(f"{ln.line}\t{fields[0]}\t{hashed}\t" + "\t".join(fields[1:]) + "\n")
    if "2014" in mains:
        mains["2014"].write("\t".join(fields) + "\n")
    if ln.video:
        counts["video"] += 1
        return 0
    if exif is not None and ln.fate != "noexif":
        pool = ln.pool if ln.source == ln.line else world.line(ln.source).pool
        exif.write(f"{ln.photo_id}\t{world.pool.side_items[pool]}\n")
    exp = world.expected_for(ln)
    assert exp is not None
    counts[ln.fate] += 1
    truth.add(
        line=ln.line,
        source_index=index,
        photo_id=str(ln.photo_id),
        fate=ln.fate,
        expected_status=exp.status,
        expected_http_status=exp.http_status,
        duplicate_of=exp.duplicate_of,
        farm=ln.farm,
        host=host_of(ln.farm),
        url=original_url_template(port).format(
            farm=ln.farm, server=ln.server, id=ln.photo_id, original_secret=ln.original_secret, ext="jpg"
        ),
    )
    return 1


def _summary(world: SimWorld, port: int, counts: Counter[str], seconds: float) -> dict[str, Any]:
    cfg = world.config
    photos = sum(v for k, v in counts.items() if k != "video")
    return {
        "rows": cfg.n_rows,
        "photos": photos,
        "videos": counts["video"],
        "seed": cfg.seed,
        "fates": {f: counts[f] for f in FATES},
        "port": port,
        "original_url_template": original_url_template(port),
        "hosts": {str(f): host_of(f) for f in range(1, cfg.n_hosts + 1)},
        "throttle_farms": list(cfg.throttle_farms),
        "write_seconds": round(seconds, 3),
        "rows_per_second": round(cfg.n_rows / seconds) if seconds > 0 else None,
    }


# --------------------------------------------------------------------------- the photo hosts


class HostStats:
    """One host's counters, as the server saw them (thread-safe)."""

    def __init__(self, t0: float) -> None:
        self._lock = threading.Lock()
        self._t0 = t0
        self._window: deque[float] = deque()  # arrival times within the last second
        self.requests = self.max_rps = self.in_flight = self.max_in_flight = 0
        self.connections = self.open_connections = self.max_connections = 0
        self.throttled = self.early_retries = self.bytes_sent = 0
        self.codes: Counter[int] = Counter()
        self.per_second: Counter[int] = Counter()  # requests per whole second since start

    def begin(self, now: float) -> tuple[int, int]:
        """Count an arriving request; returns (requests in flight, requests in the last 1 s)."""
        with self._lock:
            self.requests += 1
            self.per_second[int(now - self._t0)] += 1
            window = self._window
            window.append(now)
            while window[0] <= now - 1.0:
                window.popleft()
            self.max_rps = max(self.max_rps, len(window))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self.in_flight, len(window)

    def answered(self, code: int, nbytes: int, throttled: bool = False, early: bool = False) -> None:
        """A response is about to be written: the request leaves the in-flight count here, before
        the client can see the answer and send its next request, so a client holding N slots is
        seen with at most N in flight."""
        with self._lock:
            self.in_flight -= 1
            self.codes[code] += 1
            self.bytes_sent += nbytes
            self.throttled += throttled
            self.early_retries += early

    def end(self, answered: bool) -> None:
        """A request is done; one never answered (a stall, a hang-up) leaves the in-flight
        count only now and counts under code 0."""
        if not answered:
            with self._lock:
                self.in_flight -= 1
                self.codes[0] += 1

    def connection(self, delta: int) -> None:
        """A connection opened (+1) or closed (-1)."""
        with self._lock:
            self.open_connections += delta
            self.connections += delta > 0
            self.max_connections = max(self.max_connections, self.open_connections)

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain JSON-able values."""
        with self._lock:
            return {
                "requests": self.requests,
                "max_rps": self.max_rps,
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "connections": self.connections,
                "max_connections": self.max_connections,
                "open_connections": self.open_connections,
                "sent_429": self.codes[429],
                "throttled_429": self.throttled,
                "early_retries": self.early_retries,
                "bytes_sent": self.bytes_sent,
                "codes": {str(k): v for k, v in sorted(self.codes.items())},
                "per_second": [self.per_second[s] for s in range(max(self.per_second, default=-1) + 1)],
            }


_REASONS = {
    200: "OK",
    302: "Found",
    404: "Not Found",
    410: "Gone",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a crawler's connection pool expects
    timeout = 30  # an idle keep-alive connection frees its thread
    server: _HostServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.sim._opened(self.server.farm, self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.sim._closed(self.server.farm, self.connection)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - a quiet server
        pass

    def do_GET(self) -> None:
        self.server.sim._handle(self, self.server.farm)

    stats: HostStats | None = None  # the counters of the request being answered
    answered = False

    def reply(
        self,
        code: int,
        body: bytes,
        ctype: str = "text/plain",
        headers: dict[str, str] | None = None,
        send: int | None = None,
        throttled: bool = False,
        early: bool = False,
    ) -> None:
        """Status line, headers and (the first ``send`` bytes of) the body in one write."""
        head = [
            f"HTTP/1.1 {code} {_REASONS.get(code, 'Status')}",
            "Server: yfcc-sim",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
        ]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        out = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body[:send]
        if self.stats is not None:
            self.stats.answered(code, len(out), throttled, early)
            self.answered = True
        self.wfile.write(out)


class _HostServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256  # a crawler opens many connections at once

    def __init__(self, address: tuple[str, int], sim: YfccSimulator, farm: int) -> None:
        self.sim, self.farm = sim, farm
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A crawler resetting an idle keep-alive connection is normal, not worth a traceback.
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn): a DNS wait with no network.
        import socketserver

        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class YfccSimulator:
    """The farms' HTTP servers (one thread each, a thread per connection); a context manager.

    ``port`` 0 picks a port free on every farm's address.  The servers stop themselves after
    ``lifetime`` seconds (None: never), so a forgotten simulator does not outlive its job.
    """

    def __init__(self, world: SimWorld, port: int = 0, lifetime: float | None = 600.0) -> None:
        self.world = world
        self.config = world.config
        self.lifetime = lifetime
        self._port = port
        self._servers: dict[int, _HostServer] = {}
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._refused: dict[int, float] = {}  # photo id -> first refusal (retry429/503)
        self._timer: threading.Timer | None = None
        self.reset_stats()

    # lifecycle -----------------------------------------------------------------------
    def start(self) -> YfccSimulator:
        """Make the photo pool, bind every farm and serve; returns self."""
        _ = self.world.pool
        self._bind()
        for farm, srv in self._servers.items():
            t = threading.Thread(
                target=srv.serve_forever, kwargs={"poll_interval": 0.1}, name=f"yfcc-sim-farm{farm}", daemon=True
            )
            t.start()
            self._threads.append(t)
        if self.lifetime is not None:
            self._timer = threading.Timer(self.lifetime, self.stop)
            self._timer.daemon = True
            self._timer.start()
        return self

    def _bind(self) -> None:
        """One port on every farm address; with port 0, retry until one is free on all."""
        for _ in range(20):
            try:
                first = _HostServer((host_of(1), self._port), self, 1)
            except OSError:
                if self._port:
                    raise
                continue
            port = first.server_address[1]
            self._servers = {1: first}
            try:
                for farm in range(2, self.config.n_hosts + 1):
                    self._servers[farm] = _HostServer((host_of(farm), port), self, farm)
            except OSError:
                self._close_servers()
                if self._port:
                    raise
                continue
            self._port = port
            return
        raise OSError("no port free on all of 127.0.0.11..19 after 20 tries")

    def _close_servers(self) -> None:
        for srv in self._servers.values():
            srv.server_close()
        self._servers = {}

    def stop(self) -> None:
        """Stop serving; wakes stalled requests and cuts open keep-alive connections."""
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._threads:  # shutdown() waits for serve_forever: only for servers started
            for srv in self._servers.values():
                srv.shutdown()
        self._threads = []
        self._close_servers()
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> YfccSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # addresses -----------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The port every farm listens on (0 before :meth:`start`)."""
        return self._port

    @property
    def original_url_template(self) -> str:
        """The pipeline's ``--yfcc-original-url`` for this simulator."""
        return original_url_template(self._port)

    def url(self, photo_id: int | str, original: bool = True) -> str:
        """The original (or listed) URL of a photo, as the pipeline will ask for it."""
        ln = self.world.line_of(photo_id)
        if ln is None:
            raise KeyError(f"photo id {photo_id} is not in the simulated world")
        if original:
            return self.original_url_template.format(
                farm=ln.farm, server=ln.server, id=ln.photo_id, original_secret=ln.original_secret, ext="jpg"
            )
        return f"http://{host_of(ln.farm)}:{self._port}/{ln.server}/{ln.photo_id}_{ln.secret}.jpg"

    @property
    def stats_url(self) -> str:
        return f"http://{host_of(1)}:{self._port}{STATS_PATH}"

    # counters ------------------------------------------------------------------------
    def reset_stats(self) -> None:
        """Zero every host's counters (connections still open keep being counted)."""
        t0 = time.monotonic()
        old = getattr(self, "_stats", {})
        fresh = {f: HostStats(t0) for f in range(1, self.config.n_hosts + 1)}
        for farm, stats in old.items():  # connections opened before still close later
            fresh[farm].open_connections = stats.open_connections
        self._stats = fresh

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per host address: requests, max_rps, max_in_flight, connections, 429s, ... (see HostStats)."""
        return {host_of(f): s.snapshot() for f, s in self._stats.items()}

    def _opened(self, farm: int, conn: socket.socket) -> None:
        with self._lock:
            self._open.add(conn)
        self._stats[farm].connection(+1)

    def _closed(self, farm: int, conn: socket.socket) -> None:
        with self._lock:
            self._open.discard(conn)
        self._stats[farm].connection(-1)

    # requests ------------------------------------------------------------------------
    def _handle(self, h: _Handler, farm: int) -> None:
        """Count, throttle, then answer as the photo's fate says."""
        if h.path == STATS_PATH:
            h.reply(200, json.dumps(self.stats(), sort_keys=True).encode(), "application/json")
            return
        h.stats, h.answered = self._stats[farm], False
        in_flight, last_second = h.stats.begin(time.monotonic())
        try:
            if self._over_limit(farm, in_flight, last_second):
                h.reply(429, b"slow down\n", headers={"Retry-After": "1"}, throttled=True)
            else:
                self._answer(h)
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True  # the client gave up (its timeout): expected
        finally:
            h.stats.end(h.answered)
            h.stats = None

    def _over_limit(self, farm: int, in_flight: int, last_second: int) -> bool:
        """Whether a throttling farm refuses this request (too many in flight or too fast)."""
        cfg = self.config
        return farm in cfg.throttle_farms and (in_flight > cfg.throttle_concurrency or last_second > cfg.throttle_rate)

    def _answer(self, h: _Handler) -> None:
        """Answer a photo path as its line's fate says (original, listed or moved)."""
        ln, variant = self._parse(h.path)
        if ln is None:
            h.reply(404, b"Not Found\n")
            return
        fate = ln.fate
        if variant == "m" or (variant == "r" and fate in ("fallback", "retry429", "retry503", "redirect")):
            self._photo(h, ln, "o" if variant == "m" else "r")
        elif fate in ("gone404", "gone410") or fate == "fallback":
            code = 410 if fate == "gone410" else 404
            h.reply(code, _REASONS[code].encode() + b"\n")
        elif fate == "error5xx":
            h.reply(self.world.error_code(ln), b"server error\n")
        elif fate in ("retry429", "retry503"):
            self._transient(h, ln)
        elif fate == "stall":
            self._stall(h)
        elif fate == "html":
            h.reply(200, HTML_PAGE, "text/html; charset=utf-8")
        elif fate == "redirect":
            where = f"http://{host_of(self.world.redirect_farm(ln))}:{self._port}/moved/{ln.photo_id}.jpg"
            h.reply(302, b"moved\n", headers={"Location": where})
        elif fate == "cut":
            data = self.world.photo_bytes(ln, variant)
            h.reply(200, data, "image/jpeg", send=len(data) // 2)
            h.close_connection = True
        else:  # ok, short, optout, duplicate, noexif
            self._photo(h, ln, variant)

    def _parse(self, path: str) -> tuple[Line | None, str]:
        """(line, variant) of a photo path: ``o`` original, ``r`` listed size, ``m`` moved."""
        path = path.split("?", 1)[0]
        parts = path.split("/")
        if len(parts) == 3 and parts[1] == "moved" and parts[2].endswith(".jpg"):
            ln = self.world.line_of(parts[2][:-4])
            return (ln, "m") if ln is not None and not ln.video else (None, "")
        if len(parts) != 3 or not parts[1].isdigit():
            return None, ""
        name, _, ext = parts[2].rpartition(".")
        pid, _, secret = name.partition("_")
        original = secret.endswith("_o")
        ln = self.world.line_of(pid)
        if ln is None or ln.video or str(ln.server) != parts[1]:
            return None, ""
        if original and secret[:-2] == ln.original_secret and ext == "jpg":
            return ln, "o"
        if not original and secret == ln.secret and ext == "jpg":
            return ln, "r"
        return None, ""

    def _photo(self, h: _Handler, ln: Line, variant: str) -> None:
        headers = {"X-Robots-Tag": "noai, noimageai"} if ln.fate == "optout" else None
        h.reply(200, self.world.photo_bytes(ln, variant), "image/jpeg", headers)

    def _transient(self, h: _Handler, ln: Line) -> None:
        """retry429: 429 until Retry-After has passed since the first refusal; retry503: once."""
        now = time.monotonic()
        with self._lock:
            first = self._refused.setdefault(ln.photo_id, now)
        if ln.fate == "retry503":
            if first == now:
                h.reply(503, b"try again\n")
            else:
                self._photo(h, ln, "o")
            return
        wait = first + self.config.retry_after - now
        if wait > 0:
            h.reply(429, b"rate limited\n", headers={"Retry-After": str(max(1, math.ceil(wait)))}, early=first != now)
        else:
            self._photo(h, ln, "o")

    def _stall(self, h: _Handler) -> None:
        """Answer nothing until ``stall_seconds`` pass, the client hangs up or the server stops."""
        sock, deadline = h.connection, time.monotonic() + self.config.stall_seconds
        h.close_connection = True
        while not self._stop.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([sock], [], [], 0.05)
            if readable:
                try:
                    if not sock.recv(1, socket.MSG_PEEK):
                        return  # the client closed: its timeout fired
                except OSError:
                    return


# --------------------------------------------------------------------------- load test and CLI


def _load_client(urls: list[str], seconds: float, threads: int) -> int:
    """Fetch ``urls`` round-robin over keep-alive connections for ``seconds``; returns 200s."""
    import http.client
    from urllib.parse import urlsplit

    done = [0] * threads
    stop_at = time.monotonic() + seconds

    def worker(k: int) -> None:
        conns: dict[str, http.client.HTTPConnection] = {}
        i = k
        while time.monotonic() < stop_at:
            parts = urlsplit(urls[i % len(urls)])
            conn = conns.get(parts.netloc) or conns.setdefault(
                parts.netloc, http.client.HTTPConnection(parts.netloc, timeout=10)
            )
            conn.request("GET", parts.path)
            resp = conn.getresponse()
            resp.read()
            done[k] += resp.status == 200
            i += threads

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(done)


def load_test(sim: YfccSimulator, seconds: float = 5.0, processes: int = 2, threads: int = 8) -> dict[str, float]:
    """Photo requests/s the simulator sustains against keep-alive clients, and its CPU per request.

    The clients run in ``processes`` other processes on the same machine, so on few cores
    requests/s is a lower bound of what the server alone could do; ``server_cpu_ms`` (this
    process's CPU time per request) gives the capacity per core.  Only unthrottled "ok" photos.
    """
    import multiprocessing as mp

    urls = [
        sim.url(ln.photo_id)
        for ln in sim.world.lines(0, min(sim.config.n_rows, 20_000))
        if not ln.video and ln.fate == "ok" and ln.farm not in sim.config.throttle_farms
    ]
    if not urls:
        raise ValueError("no unthrottled ok photos to fetch")
    with mp.get_context("spawn").Pool(processes) as pool:
        cpu0, t0 = time.process_time(), time.perf_counter()
        counts = pool.starmap(_load_client, [(urls[k::processes] or urls, seconds, threads) for k in range(processes)])
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    done = max(1, sum(counts))
    return {
        "requests_per_s": round(done / max(wall, seconds)),
        "requests": done,
        "server_cpu_ms": round(1000 * cpu / done, 3),
    }


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1000, help="lines of the main file, videos included")
    ap.add_argument("--out", type=Path, help="folder for the files (default: serve only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=0, help="port of every farm (default: a free one)")
    ap.add_argument("--hosts", type=int, default=MAX_HOSTS, help="farms, 1..9")
    ap.add_argument("--pool", type=int, default=64, help="distinct JPEGs (~50 ms each to make)")
    ap.add_argument("--layouts", default="2016,2014", help="main-file layouts to write")
    ap.add_argument("--no-exif-file", action="store_true", help="do not write yfcc100m_exif")
    ap.add_argument("--video-share", type=float, default=0.02)
    ap.add_argument("--stall-seconds", type=float, default=30.0)
    ap.add_argument("--retry-after", type=float, default=1.0)
    ap.add_argument("--throttle-farms", default="3,7", help="comma-separated farms ('' for none)")
    ap.add_argument("--throttle-concurrency", type=int, default=4)
    ap.add_argument("--throttle-rate", type=float, default=20.0)
    ap.add_argument(
        "--serve-seconds",
        type=float,
        default=0.0,
        help="serve this long after writing, then print the counters (0: exit)",
    )
    ap.add_argument(
        "--load-test",
        type=float,
        default=0.0,
        help="seconds of a keep-alive load test (2 client processes); prints requests/s",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    farms = tuple(int(f) for f in args.throttle_farms.split(",") if f.strip())
    cfg = SimConfig(
        n_rows=args.rows,
        seed=args.seed,
        n_hosts=args.hosts,
        pool_size=args.pool,
        video_share=args.video_share,
        stall_seconds=args.stall_seconds,
        retry_after=args.retry_after,
        throttle_farms=farms,
        throttle_concurrency=args.throttle_concurrency,
        throttle_rate=args.throttle_rate,
    )
    world = SimWorld(cfg)
    lifetime = args.serve_seconds + args.load_test + 3600.0  # writing 10^6 rows takes a while
    with YfccSimulator(world, port=args.port, lifetime=lifetime) as sim:
        print(f"serving farm1..farm{cfg.n_hosts} on 127.0.0.11..1{cfg.n_hosts}:{sim.port}")
        print(f"--yfcc-original-url '{sim.original_url_template}'")
        if args.out:
            layouts = tuple(x.strip() for x in args.layouts.split(",") if x.strip())
            files = write_files(world, args.out, sim.port, layouts, not args.no_exif_file)
            summary = json.loads(files.summary.read_text())
            print(
                f"wrote {cfg.n_rows} lines in {summary['write_seconds']} s "
                f"({summary['rows_per_second']} rows/s) to {args.out}: {summary['fates']}"
            )
        if args.load_test > 0:
            print(f"load test: {load_test(sim, args.load_test)}")
        if args.serve_seconds > 0:
            try:
                sim._stop.wait(args.serve_seconds)
            except KeyboardInterrupt:
                pass
            print(json.dumps(sim.stats(), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
