"""The whole crawl at scale on the YFCC-like simulator, checked against its ground truth, and
the same loopback photos through img2dataset side by side.

Part 1 -- the simulated YFCC crawl (``benchmarks/yfcc_sim.py``: farm1..farm9 on 127.0.0.11..19,
the failure mix of a real crawl, two throttling farms, ground truth in ``truth.parquet``),
crawled by ``exiflang shards --source yfcc100m_dataset --yfcc-exif yfcc100m_exif
--yfcc-original-url ...`` with embedded Ray (``--executor ray``, 2 workers):

* ``full``: one uninterrupted run of ``--rows`` lines.  Checked: every photo row of the
  truth is exactly one Parquet row with the expected status (and HTTP status, source index,
  duplicate-of), mismatches listed by kind; no host above its limit, from the simulator's own
  counters (429s for going over a throttling farm's 4-in-flight / 20-per-s limit, the job's
  ``--per-host-concurrency`` / ``--per-host-rate``, retries before Retry-After); and a **429
  storm**: at ``--storm-at`` of the run one unthrottled farm answers every request with 429 and
  ``Retry-After`` for ``--storm-seconds``; per-host completions per second before / during /
  after it show whether only that host slowed.
* ``kill``: the same crawl (``--kill-rows`` lines, default ``min(--rows, 10000)``) killed with
  SIGKILL to the driver's process group once half its shards are complete, then rerun to the
  end; its tars (sha256) and tables (all columns but ``seconds`` and ``attempts``, which are
  timing, and the timing notes in ``error``: see :func:`_untimed`) must equal an uninterrupted
  run's (``full`` when the sizes agree, else a ``ref`` run of ``--kill-rows``).  Reports the
  processes left alive by the kill and the resume time.

Part 2 -- ``compare``: ``--compare-rows`` photos (every one a success: a second simulated
world with no failures and no throttling, so both tools do the same work) as one Parquet URL
list, fetched by exiflang (Ray and the local process pool, 2 workers x ``--compare-threads``) and by
img2dataset (installed from PyPI into its own venv by this script, ``--img2dataset-venv``;
``resize_mode=no``, ``disable_all_reencoding=True``, ``extract_exif=True``, webdataset,
``processes_count=2``, ``thread_count=--compare-threads``), alternating, ``--runs`` rounds; both
outputs are checked byte-exact against the served bytes (sha256).

Measurement: every run is a subprocess of a small wrapper that puts it in a cgroup of its own
(cgroup v1 ``cpuacct``): the cgroup's CPU is exact for the whole tree -- Ray's GCS, raylet,
agents and workers, pool workers -- however each process ends (``RUSAGE_CHILDREN`` misses about
half of a Ray job: the raylet's workers are reaped automatically; it is the fallback where no
cgroup can be made, and reported as ``cpu_rusage_s``).  The wrapper is a child subreaper and
reports what outlived the command.  A sampler reads RSS and VmHWM of every process of the run
every 0.5 s: peak RSS of the driver, of the largest worker and of Ray's daemons, and a series
every 5 s.  The simulators run in their own process; their CPU is not counted.  Part 1 uses
``--threads 128`` and ``--row-deadline 5`` by default (a stalled row holds a thread and, at the
head of the task's in-order window of 2 x threads rows, the whole task; a row waiting for a
paused host is parked out of the window instead: see docs/scale.md); part 2 uses ``--compare-threads`` (16, exiflang's
default) for both tools.  ``--profile`` adds one exiflang-local and one img2dataset run under
py-spy (GIL-holding samples, by category).

``--no-crawl`` runs part 2 alone; ``--variants`` picks its tools.

    python benchmarks/scale.py --rows 10000 [--compare-rows 10000,20000] [--runs 2] [--profile]
        [--dir DIR] [--json FILE] [--no-img2dataset] [--no-kill] [--no-compare] [--no-crawl]
        [--variants exiflang-ray,exiflang-local,img2dataset]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import math
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.yfcc_sim import (  # noqa: E402
    DEFAULT_SHARES,
    HostStats,
    SimConfig,
    SimWorld,
    YfccSimulator,
    host_of,
    original_url_template,
    write_files,
)

IMG2DATASET = "img2dataset==1.47.0"
DEFAULT_VENV = Path.home() / ".cache" / "exiflang-bench" / "img2dataset-venv"
TIMING_COLUMNS = ("seconds", "attempts")  # differ between runs of the same job by nature
SAMPLE_S = 0.5
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


# =========================================================================== the simulator side


class TimedHostStats(HostStats):
    """HostStats plus 200s per second (completions), storm refusals and retries inside a storm."""

    def __init__(self, t0: float) -> None:
        super().__init__(t0)
        self.ok_per_second: Counter[int] = Counter()
        self.storm_429 = self.storm_early = 0
        self.last_ok = 0.0

    def answered(self, code: int, nbytes: int, throttled: bool = False, early: bool = False) -> None:
        super().answered(code, nbytes, throttled, early)
        if code == 200:
            now = time.monotonic() - self._t0
            with self._lock:
                self.ok_per_second[int(now)] += 1
                self.last_ok = max(self.last_ok, now)

    def snapshot(self) -> dict[str, Any]:
        snap = super().snapshot()
        with self._lock:
            top = max(self.ok_per_second, default=-1) + 1
            snap.update(
                ok_per_second=[self.ok_per_second[s] for s in range(top)],
                storm_429=self.storm_429,
                storm_early=self.storm_early,
                last_ok=round(self.last_ok, 3),
            )
        return snap


class BenchSimulator(YfccSimulator):
    """The simulator with control paths for the benchmark (all GET, on any farm):

    ``/_ctl/reset`` zero the counters and forget past refusals; ``/_ctl/throttle?on=0|1``;
    ``/_ctl/storm?farm=F&seconds=T``: from now on, for T s, farm F answers every photo request
    429 with ``Retry-After`` = the storm's remaining seconds (rounded up); a request for a path
    arriving before the Retry-After that path was given counts as ``storm_early`` (requests
    already in flight when the first 429 was sent are refused too, but are not early); ``/_ctl/stats``: the
    counters, seconds since the reset and the storm's window.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.throttle_on = True
        self.storm: dict[str, float] | None = None
        self._storm_told: dict[str, float] = {}  # path -> the Retry-After end it was given
        super().__init__(*args, **kwargs)

    def reset_stats(self) -> None:
        self._t0 = t0 = time.monotonic()
        old = getattr(self, "_stats", {})
        fresh = {f: TimedHostStats(t0) for f in range(1, self.config.n_hosts + 1)}
        for farm, stats in old.items():
            fresh[farm].open_connections = stats.open_connections
        self._stats = fresh
        self.storm, self._storm_told = None, {}
        if hasattr(self, "_refused"):
            with self._lock:
                self._refused.clear()

    def _over_limit(self, farm: int, in_flight: int, last_second: int) -> bool:
        return self.throttle_on and super()._over_limit(farm, in_flight, last_second)

    def _handle(self, h: Any, farm: int) -> None:
        path = h.path
        if path.startswith("/_ctl/"):
            self._control(h, path)
            return
        storm, now = self.storm, time.monotonic()
        if storm is None or farm != storm["farm"] or not storm["start"] <= now < storm["end"] or path == "/_sim/stats":
            super()._handle(h, farm)
            return
        h.stats, h.answered = self._stats[farm], False
        h.stats.begin(now)
        try:
            with self._lock:
                early = now < self._storm_told.get(path, 0.0)
                left = max(1, math.ceil(storm["end"] - now))
                self._storm_told[path] = now + left
            with h.stats._lock:
                h.stats.storm_429 += 1
                h.stats.storm_early += early
            h.reply(429, b"storm\n", headers={"Retry-After": str(left)})
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
        finally:
            h.stats.end(h.answered)
            h.stats = None

    def _control(self, h: Any, path: str) -> None:
        parts = urlsplit(path)
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        now = time.monotonic()
        if parts.path == "/_ctl/reset":
            self.reset_stats()
            body: Any = {"ok": True}
        elif parts.path == "/_ctl/throttle":
            self.throttle_on = q.get("on", "1") == "1"
            body = {"throttle": self.throttle_on}
        elif parts.path == "/_ctl/storm":
            farm, seconds = int(q["farm"]), float(q["seconds"])
            self.storm = {"farm": farm, "start": now, "end": now + seconds}
            body = {"storm": farm}
        elif parts.path == "/_ctl/stats":
            storm = self.storm
            body = {
                "t": round(now - self._t0, 3),
                "hosts": self.stats(),
                "storm": None
                if storm is None
                else {
                    "farm": storm["farm"],
                    "start": round(storm["start"] - self._t0, 3),
                    "end": round(storm["end"] - self._t0, 3),
                },
                # Paths that got a storm 429: a row whose last try of a URL met the storm.
                "storm_paths": sorted(self._storm_told),
            }
        else:
            h.reply(404, b"no such control\n")
            return
        h.reply(200, json.dumps(body).encode(), "application/json")


def _serve(spec: dict[str, Any]) -> None:
    """The simulator process: build the world, bind, write the files if asked, then serve until
    stdin closes (the benchmark's end) or ``lifetime`` passes."""
    cfg = SimConfig(**spec["config"])
    world = SimWorld(cfg)
    with BenchSimulator(world, lifetime=spec.get("lifetime", 4 * 3600.0)) as sim:
        if spec.get("files"):
            write_files(world, spec["files"], sim.port, layouts=("2016",))
        if spec.get("url_list"):
            _write_url_list(world, sim.port, Path(spec["url_list"]), Path(spec["url_list"] + ".sha256"))
        print(f"READY {sim.port}", flush=True)
        sys.stdin.read()


def _write_url_list(world: SimWorld, port: int, path: Path, sha_path: Path) -> None:
    """Every photo's original URL as a Parquet list (column ``url``), and the sha256 of the bytes
    each will be served as, one per line, for the byte-exactness check."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    template = original_url_template(port)
    urls, shas = [], []
    for ln in world.lines():
        if ln.video:
            continue
        urls.append(
            template.format(
                farm=ln.farm, server=ln.server, id=ln.photo_id, original_secret=ln.original_secret, ext="jpg"
            )
        )
        shas.append(hashlib.sha256(world.photo_bytes(ln)).hexdigest())
    pq.write_table(pa.table({"url": urls}), str(path))
    sha_path.write_text("\n".join(shas) + "\n")


class SimProcess:
    """A simulator in its own process (its CPU is not the crawler's)."""

    def __init__(self, spec: dict[str, Any], log: Path) -> None:
        self._log = open(log, "ab")  # noqa: SIM115 -- the child's stderr for its lifetime; close() closes it
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--_serve", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("READY "):
            self.close()
            raise RuntimeError(f"simulator did not start: {line!r} (see {log})")
        self.port = int(line.split()[1])

    def ctl(self, what: str) -> Any:
        with _OPENER.open(f"http://{host_of(1)}:{self.port}/_ctl/{what}", timeout=30) as resp:
            return json.loads(resp.read())

    def cpu_seconds(self) -> float:
        import psutil

        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# =========================================================================== measured runs

CGROUP_ROOT = Path("/sys/fs/cgroup/cpuacct")  # cgroup v1 CPU accounting (this machine)


def cgroup_of(wrapper_pid: int) -> Path:
    return CGROUP_ROOT / f"exiflang-bench-{wrapper_pid}"


def _members(cg: Path | None) -> list[int]:
    """Pids in the run's cgroup, or (no cgroup) below this process."""
    if cg is not None:
        try:
            return [int(x) for x in (cg / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []
    import psutil

    return [p.pid for p in psutil.Process().children(recursive=True)]


def _reap() -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def _wrap(out_json: str, cmd: list[str]) -> int:
    """Run ``cmd`` in a new process group and a CPU-accounting cgroup of its own; write its wall
    time, the CPU of every process it started and what outlived it.

    The cgroup counts every process of the run however it ends; Ray's raylet lets its workers
    be reaped automatically (SIGCHLD ignored), so their CPU never reaches anyone's
    RUSAGE_CHILDREN (measured: about half of a Ray job's CPU is missing there).  Without a
    cgroup, RUSAGE_CHILDREN of this process, a child subreaper, is the fallback (and also
    reported: ``cpu_rusage``).
    """
    import psutil

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans of the tree come here
    cg: Path | None = cgroup_of(os.getpid())
    try:
        cg.mkdir()
    except OSError:
        cg = None

    def enter() -> None:  # in the child, before exec: the run starts in the cgroup
        if cg is not None:
            (cg / "cgroup.procs").write_text(str(os.getpid()))

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=enter)
    Path(out_json + ".pid").write_text(str(proc.pid))
    rc = proc.wait()
    wall = time.perf_counter() - t0
    left: dict[str, float] = {}  # pid:name -> seconds it outlived the command
    deadline = time.monotonic() + 20.0
    while True:
        _reap()
        pids = _members(cg)
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                left[f"{pid}:{psutil.Process(pid).name()}"] = round(time.perf_counter() - t0 - wall, 2)
        if not pids:
            break
        if time.monotonic() > deadline:
            for pid in pids:  # a process of the run this wrapper started
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(1.0)
            _reap()
            break
        time.sleep(0.1)
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = {
        "rc": rc,
        "wall": wall,
        "cpu_rusage": ru.ru_utime + ru.ru_stime,
        "maxrss_mb": ru.ru_maxrss / 1024,
        "outlived": left,
        "cpu_method": "rusage",
    }
    res["cpu"] = res["cpu_rusage"]
    if cg is not None:
        usage = int((cg / "cpuacct.usage").read_text()) / 1e9
        ticks = dict(line.split() for line in (cg / "cpuacct.stat").read_text().splitlines())
        hz = os.sysconf("SC_CLK_TCK")
        res.update(
            cpu=usage, cpu_method="cgroup cpuacct", cpu_user=int(ticks["user"]) / hz, cpu_sys=int(ticks["system"]) / hz
        )
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    Path(out_json).write_text(json.dumps(res))
    return 0


def _classify(proc: Any, driver: int) -> str:
    if proc.pid == driver:
        return "driver"
    try:
        cmd = proc.cmdline()
        name = proc.name()
    except Exception:  # noqa: BLE001 - gone
        return "gone"
    first = cmd[0] if cmd else name
    joined = " ".join(cmd)
    if (first.startswith("ray::") and "Agent" not in first) or "default_worker.py" in joined:
        return "worker"  # ray::IDLE / ray::process_shard, or one not yet renamed
    if first.startswith("ray::") or name in ("gcs_server", "raylet") or "/ray/" in joined:
        return "ray"  # GCS, raylet, dashboard / runtime-env agents, log monitor
    return "worker"  # local pool and img2dataset processes


def _hwm_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class TreeSampler(threading.Thread):
    """Every SAMPLE_S: RSS and VmHWM of every process under the wrapper, by role; tree RSS sum."""

    def __init__(self, wrapper_pid: int, pid_file: Path) -> None:
        super().__init__(daemon=True)
        self.wrapper, self.pid_file = wrapper_pid, pid_file
        self.driver = 0
        self.stop = threading.Event()
        self.peak: dict[str, float] = {}  # role -> largest single-process peak (MB)
        self.peak_sum = 0.0  # largest RSS sum of the tree (MB)
        self.roles: dict[int, str] = {}
        self.cpu: dict[int, float] = {}  # pid -> last seen CPU s
        self.names: dict[int, str] = {}
        self.samples = 0
        self.t0 = time.monotonic()
        self.series: list[list[int]] = []  # [s, driver MB, largest worker MB, largest ray MB]

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            if not self.driver and self.pid_file.exists():
                with contextlib.suppress(ValueError):
                    self.driver = int(self.pid_file.read_text())
            cg = cgroup_of(self.wrapper)
            try:
                if cg.exists():
                    procs = [psutil.Process(pid) for pid in _members(cg) if psutil.pid_exists(pid)]
                else:
                    procs = psutil.Process(self.wrapper).children(recursive=True)
            except psutil.Error:
                procs = []
                if not psutil.pid_exists(self.wrapper):
                    break
            total = 0.0
            for p in procs:
                try:
                    rss = p.memory_info().rss / 2**20
                    t = p.cpu_times()
                except psutil.Error:
                    continue
                role = _classify(p, self.driver)
                if role == "gone":
                    continue
                self.roles[p.pid] = role
                hwm = _hwm_mb(p.pid) or rss
                self.peak[role] = max(self.peak.get(role, 0.0), rss, hwm)
                self.cpu[p.pid] = t.user + t.system
                if p.pid not in self.names:
                    with contextlib.suppress(psutil.Error):
                        cmd = p.cmdline()
                        self.names[p.pid] = (cmd[0] if cmd else p.name())[:60]
                total += rss
            self.peak_sum = max(self.peak_sum, total)
            self.samples += 1
            if self.samples % 10 == 1:  # every 5 s: RSS by role, for "flat in time and N"
                by: Counter[str] = Counter()
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        role = self.roles.get(p.pid)
                        if role:
                            by[role] = max(by[role], p.memory_info().rss / 2**20)
                self.series.append(
                    [round(time.monotonic() - self.t0)] + [round(by.get(r, 0)) for r in ("driver", "worker", "ray")]
                )
            self.stop.wait(SAMPLE_S)

    def cpu_by_role(self) -> dict[str, float]:
        out: Counter[str] = Counter()
        for pid, cpu in self.cpu.items():
            out[self.roles.get(pid, "?")] += cpu
        return {k: round(v, 1) for k, v in out.items()}


def measured(
    cmd: list[str],
    work: Path,
    name: str,
    env: dict[str, str],
    watch: Callable[[float, RunHandle], None] | None = None,
    timeout: float = 7200.0,
) -> dict[str, Any]:
    """Run ``cmd`` under the wrapper; ``watch(elapsed, handle)`` is called every 0.5 s."""
    out_json = work / f"{name}.rusage.json"
    pid_file = Path(str(out_json) + ".pid")
    for p in (out_json, pid_file):
        p.unlink(missing_ok=True)
    log = open(work / f"{name}.log", "wb")  # noqa: SIM115 -- the wrapper's stdout until it exits; closed below
    wrapper = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--_wrap", str(out_json), "--", *cmd],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    sampler = TreeSampler(wrapper.pid, pid_file)
    sampler.start()
    handle = RunHandle(pid_file)
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    try:
        while wrapper.poll() is None:
            elapsed = time.perf_counter() - t0
            if elapsed > timeout:
                handle.kill()
            if watch is not None:
                watch(elapsed, handle)
            time.sleep(SAMPLE_S)
    finally:
        if wrapper.poll() is None:
            handle.kill()
        wrapper.wait()
        sampler.stop.set()
        sampler.join()
        log.close()
    res = json.loads(out_json.read_text())
    res.update(
        peak_rss_mb={k: round(v) for k, v in sampler.peak.items()},
        peak_tree_rss_mb=round(sampler.peak_sum),
        cpu_by_role=sampler.cpu_by_role(),
        cpu_sampled=round(sum(sampler.cpu.values()), 2),
        rss_series=sampler.series,
        killed_at=handle.killed_at,
        samples=sampler.samples,
        loadavg=[[round(x, 2) for x in load0], [round(x, 2) for x in os.getloadavg()]],
        processes=Counter(sampler.roles.values()),
    )
    if res["rc"] != 0 and handle.killed_at is None:
        tail = (work / f"{name}.log").read_bytes()[-3000:].decode(errors="replace")
        raise RuntimeError(f"{name}: exit {res['rc']}\n{tail}")
    return res


class RunHandle:
    """What a watcher may do to a running command: SIGKILL its process group (once)."""

    def __init__(self, pid_file: Path) -> None:
        self.pid_file = pid_file
        self.killed_at: float | None = None
        self._t0 = time.perf_counter()

    def kill(self) -> None:
        if self.killed_at is not None or not self.pid_file.exists():
            return
        pid = int(self.pid_file.read_text())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # the driver's group: it was started as its leader
        self.killed_at = round(time.perf_counter() - self._t0, 2)


def bench_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
        NO_ALBUMENTATIONS_UPDATE="1",
        NO_PROXY="*",
        no_proxy="*",
    )
    env.pop("RAY_ADDRESS", None)
    return env


# =========================================================================== outputs


def folder_bytes(folder: Path) -> dict[str, int]:
    """Bytes on disk by kind: tar, parquet, sqlite (the side-join index), other."""
    out: Counter[str] = Counter()
    for p in folder.rglob("*"):
        if p.is_file():
            kind = p.suffix.lstrip(".") if p.suffix in (".tar", ".parquet", ".sqlite") else "other"
            out[kind] += p.stat().st_size
    out["total"] = sum(out.values())
    return dict(out)


def completed_shards(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*_stats.json"))


def parking_totals(folder: Path) -> dict[str, int]:
    """Rows parked for a paused host and results spilled behind them, summed over the shards' stats."""
    total: Counter[str] = Counter()
    for p in folder.glob("*_stats.json"):
        total.update(json.loads(p.read_text()).get("parking", {}))
    return dict(total)


def tar_hashes(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.glob("*.tar")):
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        out[p.name] = h.hexdigest()
    return out


_ATTEMPT_NOTES = re.compile(r" \(after \d+ attempts?[^)]*\)|(?<=timed out) after \d+ attempts?")


def _untimed(table: Any) -> list[dict[str, Any]]:
    """Table rows without the timing columns, ``error`` without its attempt count (how many
    tries a row took depends on the run: a 429 storm, a stale connection), and no error text
    for rows that timed out (which attempt the row deadline cut, and whether a fallback was
    still tried, depends on timing and on the backoff's jitter; the status is compared)."""
    rows = table.select([c for c in table.column_names if c not in TIMING_COLUMNS]).to_pylist()
    for r in rows:
        if r.get("status") == "timeout":
            r["error"] = "(timed out)"
        elif r.get("error"):
            r["error"] = _ATTEMPT_NOTES.sub("", r["error"])
    return rows


def compare_outputs(a: Path, b: Path) -> dict[str, Any]:
    """Tars by sha256 and tables minus timing columns, shard by shard; ``rows_error_attempts_only``
    counts rows equal but for the timing in their error text (attempt counts, timeouts)."""
    import pyarrow.parquet as pq

    ta, tb = tar_hashes(a), tar_hashes(b)
    tar_diff = sorted(k for k in set(ta) | set(tb) if ta.get(k) != tb.get(k))
    pa_, pb = sorted(p.name for p in a.glob("*.parquet")), sorted(p.name for p in b.glob("*.parquet"))
    table_diff, rows_diff, attempts_diff, error_attempts = [], 0, 0, 0
    for name in sorted(set(pa_) | set(pb)):
        if name not in pa_ or name not in pb:
            table_diff.append(name)
            continue
        x, y = pq.read_table(a / name), pq.read_table(b / name)
        if x.num_rows == y.num_rows:
            attempts_diff += sum(u != v for u, v in zip(x["attempts"].to_pylist(), y["attempts"].to_pylist()))
            error_attempts += sum(u != v for u, v in zip(x["error"].to_pylist(), y["error"].to_pylist()))
        xs, ys = _untimed(x), _untimed(y)
        if xs != ys:
            table_diff.append(name)
            rows_diff += sum(u != v for u, v in zip(xs, ys)) + abs(len(xs) - len(ys))
    error_attempts -= rows_diff
    return {
        "tars": len(ta),
        "tars_differ": tar_diff[:20],
        "n_tars_differ": len(tar_diff),
        "tables": len(pa_),
        "tables_differ": table_diff[:20],
        "n_tables_differ": len(table_diff),
        "rows_differ": rows_diff,
        "rows_attempts_differ": attempts_diff,
        "rows_error_attempts_only": max(0, error_attempts),
        "same": not tar_diff and not table_diff and len(ta) == len(tb) > 0,
    }


def check_truth(
    out: Path, truth_path: Path, max_rows: int | None = None, storm_paths: Iterable[str] = ()
) -> dict[str, Any]:
    """Every truth row exactly once in the tables with its expected status; mismatches by kind.

    The truth knows nothing of the storm: a row whose URL was answered a storm 429 on its last
    attempt ends as ``http_error`` 429, which is what happened.  Such rows (a path of their photo
    in ``storm_paths``, the simulator's list) are counted as ``storm_attributed``, not as mismatches.
    """
    import pyarrow.parquet as pq

    from exiflang.pipeline.shards.files import read_tables

    truth = pq.read_table(truth_path).to_pylist()
    if max_rows is not None:
        truth = [t for t in truth if t["source_index"] < max_rows]
    got = read_tables(out, ["key", "photo_id", "source_index", "status", "http_status", "error"]).to_pylist()
    by_id: dict[str, list[dict]] = {}
    for r in got:
        by_id.setdefault(r["photo_id"], []).append(r)
    key_to_id = {r["key"]: r["photo_id"] for r in got}
    want = {t["photo_id"]: t for t in truth}
    lost = [p for p in want if p not in by_id]
    extra = [p for p in by_id if p not in want]
    dup = [p for p, rs in by_id.items() if len(rs) > 1]
    kinds: Counter[str] = Counter()
    examples: dict[str, str] = {}
    statuses: Counter[str] = Counter()
    # A photo's paths (original and listed size) are ".../<photo id>_<secret>...".
    stormed = {path.rpartition("/")[2].partition("_")[0] for path in storm_paths}
    storm_attributed: list[str] = []
    for pid, t in want.items():
        rs = by_id.get(pid)
        if not rs:
            continue
        r = rs[0]
        statuses[r["status"]] += 1
        if r["status"] != t["expected_status"] and _met_the_storm(r, t, stormed):
            storm_attributed.append(f"{pid}: {t['fate']}: {t['expected_status']} -> {(r['error'] or '')[:160]}")
            continue
        problems = []
        if r["source_index"] != t["source_index"]:
            problems.append("source_index")
        if r["status"] != t["expected_status"]:
            problems.append(f"{t['fate']}: {t['expected_status']} -> {r['status']}")
        elif t["expected_http_status"] is not None and r["http_status"] != t["expected_http_status"]:
            problems.append(f"{t['fate']}: http {t['expected_http_status']} -> {r['http_status']}")
        elif t["duplicate_of"] is not None:
            first = (r["error"] or "").rpartition("duplicate of ")[2].strip()
            if key_to_id.get(first) != t["duplicate_of"]:
                problems.append(f"duplicate: of {t['duplicate_of']} -> {r['error']}")
        for p in problems:
            kind = p.split(" -> ")[0] if "->" in p else p
            kinds[kind] += 1
            examples.setdefault(kind, f"{pid}: {p} ({(r['error'] or '')[:160]})")
    return {
        "truth_rows": len(want),
        "table_rows": len(got),
        "lost": len(lost),
        "extra": len(extra),
        "duplicated": len(dup),
        "mismatches": sum(kinds.values()),
        "mismatch_kinds": dict(kinds),
        "examples": examples,
        "statuses": dict(statuses),
        "storm_attributed": len(storm_attributed),
        "storm_attributed_examples": storm_attributed[:5],
        "pass": not lost and not extra and not dup and not kinds and len(got) == len(want),
    }


def _met_the_storm(row: dict[str, Any], truth: dict[str, Any], stormed: set[str]) -> bool:
    """A table row that ended on a storm 429: http_error 429, for a photo the storm answered."""
    return row["status"] == "http_error" and row["http_status"] == 429 and truth["photo_id"] in stormed


# =========================================================================== politeness


def politeness(
    stats: dict[str, Any], truth_path: Path, conc: int, rate: float, storm_farm: int | None, throttle: tuple[int, int]
) -> dict[str, Any]:
    """The server's counters against the limits: per host, and whether any was exceeded."""
    import pyarrow.parquet as pq

    truth = pq.read_table(truth_path, columns=["host", "fate"]).to_pylist()
    stalled = {t["host"] for t in truth if t["fate"] == "stall"}
    # The host's own limit is the farm's (throttle[1] requests in any 1-s window; its 429
    # counter says whether it was ever exceeded).  The job's --per-host-rate spaces request
    # *grants* 1/rate apart; a loaded machine delays some sends after their grant and bunches
    # them, so the server may see a little more than rate+1 in a window: reported, and
    # checked against the farm's limit.
    rps_ok = max(throttle[1], math.floor(rate) + 1) if rate > 0 else 0
    rows, problems = {}, []
    for host, h in stats["hosts"].items():
        conc_ok = conc + (host in stalled)  # a stalled request leaves the server's count late
        row = {
            "requests": h["requests"],
            "max_in_flight": h["max_in_flight"],
            "max_rps": h["max_rps"],
            "throttled_429": h["throttled_429"],
            "early_retries": h["early_retries"],
            "storm_429": h["storm_429"],
            "storm_early": h["storm_early"],
            "max_connections": h["max_connections"],
        }
        rows[host] = row
        if h["throttled_429"]:
            problems.append(
                f"{host}: {h['throttled_429']} x 429 for exceeding the farm's limit "
                f"({throttle[0]} in flight / {throttle[1]} per s)"
            )
        if h["early_retries"] or h["storm_early"]:
            problems.append(f"{host}: {h['early_retries'] + h['storm_early']} requests before Retry-After")
        if conc > 0 and h["max_in_flight"] > conc_ok:
            problems.append(f"{host}: {h['max_in_flight']} in flight > {conc_ok}")
        if rate > 0 and h["max_rps"] > rps_ok:
            problems.append(f"{host}: {h['max_rps']} requests in 1 s > {rps_ok}")
        row["max_rps_over_job_rate"] = round(h["max_rps"] / rate, 2) if rate > 0 else None
    return {
        "hosts": rows,
        "problems": problems,
        "pass": not problems,
        "limits": {"concurrency": conc, "rate": rate, "rps_tolerated": rps_ok, "farm_throttle": list(throttle)},
    }


def storm_effect(stats: dict[str, Any]) -> dict[str, Any] | None:
    """Completions (200s) per second per host before, during and after the storm."""
    storm = stats.get("storm")
    if not storm:
        return None
    # Whole seconds inside the storm only (the counters are per whole second since the reset).
    s0, s1 = int(math.ceil(storm["start"])), int(storm["end"])
    width = max(3, s1 - s0)

    def rate(series: list[int], a: int, b: int) -> float:
        a = max(0, a)
        return sum(series[a:b]) / max(1, b - a)

    rows = {}
    for host, h in stats["hosts"].items():
        ops = h["ok_per_second"]
        before, during, after = rate(ops, s0 - width, s0), rate(ops, s0, s1), rate(ops, s1, s1 + width)
        rows[host] = {
            "before": round(before, 1),
            "during": round(during, 1),
            "after": round(after, 1),
            "during_over_before": round(during / before, 2) if before else None,
            "last_ok_s": h["last_ok"],
        }
    storm_host = host_of(storm["farm"])
    others = [
        r["during_over_before"] for h, r in rows.items() if h != storm_host and r["during_over_before"] is not None
    ]
    total_before = sum(r["before"] for h, r in rows.items() if h != storm_host)
    total_during = sum(r["during"] for h, r in rows.items() if h != storm_host)
    return {
        "farm": storm["farm"],
        "host": storm_host,
        "start_s": storm["start"],
        "end_s": storm["end"],
        "hosts": rows,
        "others_during_over_before_min": min(others) if others else None,
        "others_total_during_over_before": round(total_during / total_before, 2) if total_before else None,
        "storm_host_during": rows[storm_host]["during"],
        # "Slows that host only": the storm host stops, the others keep >= 70% of their pace.
        "pass": bool(others)
        and rows[storm_host]["during"] == 0
        and total_before > 0
        and total_during / total_before >= 0.7,
    }


# =========================================================================== part 1


def shards_cmd(
    source: list[str], out: Path, args: argparse.Namespace, executor: str = "ray", extra: tuple[str, ...] = ()
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "exiflang",
        "shards",
        *source,
        "--out",
        str(out),
        "--executor",
        executor,
        "--workers",
        str(args.workers),
        "--threads",
        str(args.threads),
        "--rows-per-shard",
        str(args.rows_per_shard),
        "-q",
        *extra,
    ]


def yfcc_cmd(files: Path, port: int, out: Path, args: argparse.Namespace, max_rows: int | None = None) -> list[str]:
    extra = [
        "--timeout",
        str(args.timeout),
        "--retries",
        str(args.retries),
        "--row-deadline",
        str(args.row_deadline),
        "--per-host-concurrency",
        str(args.per_host_concurrency),
        "--per-host-rate",
        str(args.per_host_rate),
    ]
    if max_rows is not None:
        extra += ["--max-rows", str(max_rows)]
    if args.max_parked is not None:  # 0 with --shards-per-task 1: the in-order window before parking
        extra += ["--max-parked", str(args.max_parked)]
    if args.shards_per_task is not None:
        extra += ["--shards-per-task", str(args.shards_per_task)]
    return shards_cmd(
        [
            "--source",
            str(files / "yfcc100m_dataset"),
            "--yfcc-exif",
            str(files / "yfcc100m_exif"),
            "--yfcc-original-url",
            original_url_template(port),
        ],
        out,
        args,
        "ray",
        tuple(extra),
    )


def summarize_run(res: dict[str, Any], out: Path, rows: int) -> dict[str, Any]:
    disk = folder_bytes(out)
    job = json.loads((out / "job.json").read_text()) if (out / "job.json").exists() else {}
    ok = (job.get("status_counts") or {}).get("success", 0)
    return {
        "rows": rows,
        "parking": parking_totals(out),
        "wall_s": round(res["wall"], 1),
        "rows_per_s": round(rows / res["wall"], 1),
        "cpu_s": round(res["cpu"], 1),
        "cpu_ms_per_row": round(1000 * res["cpu"] / rows, 2),
        "cpu_ms_per_success": round(1000 * res["cpu"] / ok, 2) if ok else None,
        "successes": ok,
        "cpu_by_role": res["cpu_by_role"],
        "peak_rss_mb": res["peak_rss_mb"],
        "peak_tree_rss_mb": res["peak_tree_rss_mb"],
        "processes": dict(res["processes"]),
        "disk_mb": {k: round(v / 2**20, 1) for k, v in disk.items()},
        "disk_kb_per_row": round(disk["total"] / 1024 / rows, 2),
        "outlived": res["outlived"],
        "job_seconds": job.get("seconds"),
        "cpu_method": res["cpu_method"],
        "cpu_rusage_s": round(res["cpu_rusage"], 1),
        "cpu_sampled_s": res["cpu_sampled"],
        "rss_series": res["rss_series"],
        "loadavg_start_end": res["loadavg"],
    }


def part1(
    args: argparse.Namespace, work: Path, log: Callable[[str], None], result: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Fills ``result`` as it goes (the caller keeps what was measured if a later step fails)."""
    files = work / "world"
    shutil.rmtree(files, ignore_errors=True)
    spec = {"config": {"n_rows": args.rows, "seed": args.seed}, "files": str(files)}
    t0 = time.perf_counter()
    sim = SimProcess(spec, work / "sim_yfcc.log")
    log(f"simulator: {args.rows} lines written in {time.perf_counter() - t0:.1f} s, port {sim.port}")
    truth = files / "truth.parquet"
    summary = json.loads((files / "summary.json").read_text())
    photos = summary["photos"]
    env = bench_env()
    cfg = SimConfig()
    throttle = (cfg.throttle_concurrency, int(cfg.throttle_rate))
    result = {} if result is None else result
    result["world"] = {"rows": args.rows, "photos": photos, "fates": summary["fates"]}
    try:
        # -- full run, with a 429 storm on one farm ------------------------------------------
        out_full = work / "full"
        shutil.rmtree(out_full, ignore_errors=True)
        sim.ctl("reset")
        expected_ok = sum(
            v
            for k, v in summary["fates"].items()
            if k in ("ok", "retry429", "retry503", "redirect", "fallback", "duplicate", "noexif", "short", "cut")
        )
        storm = {"fired": False}

        def watch_full(elapsed: float, handle: RunHandle) -> None:
            if storm["fired"] or args.storm_seconds <= 0:
                return
            if elapsed - storm.get("polled", -9) < 1.0:
                return
            storm["polled"] = elapsed
            st_ = sim.ctl("stats")
            done = sum(sum(h["ok_per_second"]) for h in st_["hosts"].values())
            if done >= args.storm_at * expected_ok:
                sim.ctl(f"storm?farm={args.storm_farm}&seconds={args.storm_seconds}")
                storm["fired"] = True
                log(f"  storm on farm{args.storm_farm} at {elapsed:.0f} s ({done} photos served)")

        log(f"full: {args.rows} rows, embedded Ray, {args.workers} workers x {args.threads} threads")
        res = measured(yfcc_cmd(files, sim.port, out_full, args), work, "full", env, watch_full)
        stats = sim.ctl("stats")
        (work / "full.sim_stats.json").write_text(json.dumps(stats))
        full = summarize_run(res, out_full, args.rows)
        full["photos"] = photos
        full["truth"] = check_truth(out_full, truth, storm_paths=stats.get("storm_paths", ()))
        full["politeness"] = politeness(
            stats, truth, args.per_host_concurrency, args.per_host_rate, args.storm_farm, throttle
        )
        full["storm"] = storm_effect(stats)
        full["requests"] = sum(h["requests"] for h in stats["hosts"].values())
        result["full"] = full
        log(
            f"  {full['wall_s']} s, {full['rows_per_s']} rows/s, {full['cpu_ms_per_row']} ms CPU/row, "
            f"truth {'PASS' if full['truth']['pass'] else 'FAIL'}, politeness "
            f"{'PASS' if full['politeness']['pass'] else 'FAIL'}, storm "
            f"{'PASS' if (full['storm'] or {}).get('pass') else 'FAIL/none'}"
        )
        if args.no_kill:
            return result
        try:
            _kill_and_resume(args, work, log, sim, files, truth, photos, env, out_full, result)
        except RuntimeError as exc:  # a run failed: keep the full run's numbers, say why
            result["kill_error"] = str(exc)[-3000:]
            log(f"  kill/resume failed: {str(exc)[:300]}")
    finally:
        result["sim_cpu_s"] = round(sim.cpu_seconds(), 1)
        sim.close()
    return result


def _kill_and_resume(
    args: argparse.Namespace,
    work: Path,
    log: Callable[[str], None],
    sim: SimProcess,
    files: Path,
    truth: Path,
    photos: int,
    env: dict[str, str],
    out_full: Path,
    result: dict[str, Any],
) -> None:
    # -- kill -9 at ~50% and rerun --------------------------------------------------------
    k = min(args.kill_rows or min(args.rows, 10_000), args.rows)
    max_rows = None if k >= args.rows else k
    k_photos = photos if max_rows is None else min(photos, k)
    n_shards = math.ceil(k_photos / args.rows_per_shard)
    ref = out_full
    if max_rows is not None:
        ref = work / "ref"
        shutil.rmtree(ref, ignore_errors=True)
        sim.ctl("reset")
        log(f"ref: uninterrupted run of the first {k} photo rows")
        rres = measured(yfcc_cmd(files, sim.port, ref, args, max_rows), work, "ref", env)
        result["ref"] = summarize_run(rres, ref, k_photos)
        result["ref"]["truth"] = check_truth(ref, truth, k)
    out_kill = work / "kill"
    shutil.rmtree(out_kill, ignore_errors=True)
    sim.ctl("reset")
    target = max(1, n_shards // 2)

    def watch_kill(elapsed: float, handle: RunHandle) -> None:
        if handle.killed_at is None and completed_shards(out_kill) >= target:
            handle.kill()

    log(f"kill: {k} rows, SIGKILL to the driver's group at {target}/{n_shards} shards")
    kres = measured(yfcc_cmd(files, sim.port, out_kill, args, max_rows), work, "kill", env, watch_kill)
    done_at_kill = completed_shards(out_kill)
    sim.ctl("reset")
    log("resume: the same command again")
    rres2 = measured(yfcc_cmd(files, sim.port, out_kill, args, max_rows), work, "resume", env)
    job = json.loads((out_kill / "job.json").read_text())
    kill = {
        "rows": k_photos if max_rows is None else k,
        "shards": n_shards,
        "killed_at_s": kres["killed_at"],
        "shards_complete_at_kill": done_at_kill,
        "outlived_kill": kres["outlived"],
        "kill_run_cpu_s": round(kres["cpu"], 1),
        "resume": summarize_run(rres2, out_kill, k_photos),
        "skipped_complete_shards": job.get("skipped_complete_shards"),
        "same_as_uninterrupted": compare_outputs(ref if max_rows is not None else out_full, out_kill),
        "truth": check_truth(out_kill, truth, max_rows),
    }
    kill["resume_wall_s"] = kill["resume"]["wall_s"]
    result["kill"] = kill
    log(
        f"  killed at {kres['killed_at']} s with {done_at_kill}/{n_shards} shards; resume "
        f"{kill['resume_wall_s']} s; same shards: {kill['same_as_uninterrupted']['same']}; "
        f"truth {'PASS' if kill['truth']['pass'] else 'FAIL'}"
    )


# =========================================================================== part 2


def ensure_img2dataset(venv: Path, log: Callable[[str], None]) -> tuple[Path | None, str]:
    """The venv's python with img2dataset, installed from PyPI if missing; else (None, why)."""
    py = venv / "bin" / "python"
    check = [str(py), "-c", "import img2dataset, importlib.metadata as m; print(m.version('img2dataset'))"]
    env = bench_env()
    if py.exists():
        r = subprocess.run(check, capture_output=True, text=True, env=env)
        if r.returncode == 0:
            return py, r.stdout.strip()
    log(f"installing {IMG2DATASET} into {venv}")
    venv.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if r.returncode != 0:
        return None, f"venv: {r.stderr.strip()[-500:]}"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", IMG2DATASET], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return None, f"pip install {IMG2DATASET}: {(r.stderr or r.stdout).strip()[-1500:]}"
    r = subprocess.run(check, capture_output=True, text=True, env=env)
    return (py, r.stdout.strip()) if r.returncode == 0 else (None, r.stderr.strip()[-800:])


I2D_SCRIPT = """
import sys
from img2dataset import download
url_list, out, procs, threads, per_shard = sys.argv[1:6]
download(url_list=url_list, output_folder=out, processes_count=int(procs),
         thread_count=int(threads), resize_mode="no", disable_all_reencoding=True,
         extract_exif=True, output_format="webdataset", input_format="parquet", url_col="url",
         number_sample_per_shard=int(per_shard), timeout=10, retries=1, enable_wandb=False,
         compute_hash="sha256", distributor="multiprocessing")
"""


def i2d_outcome(out: Path) -> tuple[int, list[str]]:
    import pyarrow.parquet as pq

    ok, shas = 0, []
    for p in sorted(out.glob("*.parquet")):
        t = pq.read_table(p, columns=["status", "sha256"]).to_pylist()
        for r in t:
            if r["status"] == "success":
                ok += 1
                shas.append(r["sha256"])
    return ok, shas


def exiflang_outcome(out: Path) -> tuple[int, list[str]]:
    from exiflang.pipeline.shards.files import read_tables

    t = read_tables(out, ["status", "sha256"]).to_pylist()
    shas = [r["sha256"] for r in t if r["status"] == "success"]
    return len(shas), shas


PROFILE_CATEGORIES = (  # (category, substrings of a frame; the first category matched wins)
    ("imports (fixed per process)", ("_find_and_load",)),
    (
        "fetch (HTTP, politeness)",
        ("Downloader.proceed", "Downloader.fetch", "download_image", "RemoteGovernor", "HostLimiter"),
    ),
    ("EXIF (parse + render)", ("read_exif", "exifread", "ExifHeader")),
    ("image check (header, JPEG walk)", ("_check_image", "ImagePolicy", "jpeg_problem", "resizer.py")),
    ("tar members (json + tarfile)", ("TarShardWriter", "_members", "webdataset", "tarfile.py", "writer.py")),
    ("Parquet table", ("write_table", "_columns", "write_arrow_table")),
    ("dedup + tags + sizes (driver, end)", ("remove_cross_shard_duplicates", "write_tags", "write_sizes_and_summary")),
    (
        "other per-photo (sha256, bookkeeping)",
        ("process_bytes", "_handle_row", "_Accumulator", "download_shard", "Window."),
    ),
)


def profile_summary(raw: Path) -> dict[str, Any]:
    """Categories of GIL-holding samples (py-spy --gil raw output): where Python's CPU goes."""
    counts: Counter[str] = Counter()
    top: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        total += int(n)
        top[frames[-1] if frames else "?"] += int(n)
        cat = next((c for c, keys in PROFILE_CATEGORIES if any(k in f for f in frames for k in keys)), "other")
        counts[cat] += int(n)
    return {
        "samples": total,
        "categories": {c: round(100 * v / total, 1) for c, v in counts.most_common()} if total else {},
        "top_self": [[f[:120], round(100 * v / total, 1)] for f, v in top.most_common(12)] if total else [],
    }


def part2(args: argparse.Namespace, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    import pyarrow.parquet as pq

    sizes = sorted({int(x) for x in str(args.compare_rows or min(args.rows, 10_000)).split(",")})
    threads = args.compare_threads
    result: dict[str, Any] = {"sizes": sizes, "threads": threads, "workers": args.workers}
    chosen = [v.strip() for v in str(args.variants).split(",") if v.strip()]
    variants = [v for v in ("exiflang-ray", "exiflang-local") if v in chosen]
    py: Path | None = None
    if not args.no_img2dataset and "img2dataset" in chosen:
        py, version = ensure_img2dataset(args.img2dataset_venv, log)
        if py is None:
            result["img2dataset_error"] = version
            log(f"img2dataset unavailable: {version}")
        else:
            result["img2dataset_version"] = version
            variants.append("img2dataset")
    shares = dict.fromkeys(DEFAULT_SHARES, 0.0)
    all_urls = work / "urls.parquet"
    spec = {
        "config": {
            "n_rows": max(sizes),
            "seed": args.seed + 1,
            "shares": shares,
            "video_share": 0.0,
            "throttle_farms": [],
        },
        "url_list": str(all_urls),
    }
    sim = SimProcess(spec, work / "sim_list.log")
    all_shas = Path(str(all_urls) + ".sha256").read_text().split()
    lists = {}
    for n in sizes:  # the first n photos, the same list for every tool
        lists[n] = work / f"urls_{n}.parquet"
        pq.write_table(pq.read_table(all_urls).slice(0, n), str(lists[n]))
    env = bench_env()
    runs: dict[tuple[int, str], list[dict[str, Any]]] = {}

    def command(v: str, n: int, out: Path) -> list[str]:
        if v == "img2dataset":
            assert py is not None
            return [
                str(py),
                "-c",
                I2D_SCRIPT,
                str(lists[n]),
                str(out),
                str(args.workers),
                str(threads),
                str(args.rows_per_shard),
            ]
        return [
            sys.executable,
            "-m",
            "exiflang",
            "shards",
            "--source",
            str(lists[n]),
            "--url-column",
            "url",
            "--out",
            str(out),
            "--executor",
            v.split("-")[1],
            "--workers",
            str(args.workers),
            "--threads",
            str(threads),
            "--rows-per-shard",
            str(args.rows_per_shard),
            "-q",
            "--per-host-concurrency",
            "0",
            "--per-host-rate",
            "0",
            "--timeout",
            "10",
            "--retries",
            "1",
        ]

    try:
        for n in sizes:
            expected = sorted(all_shas[:n])
            for r in range(args.runs):
                for v in variants:
                    out = work / f"cmp_{v}"
                    shutil.rmtree(out, ignore_errors=True)
                    sim.ctl("reset")
                    res = measured(command(v, n, out), work, f"cmp_{v}_{n}_{r}", env)
                    ok, shas = (i2d_outcome if v == "img2dataset" else exiflang_outcome)(out)
                    row = {
                        "round": r,
                        "wall_s": round(res["wall"], 2),
                        "cpu_s": round(res["cpu"], 2),
                        "cpu_user_s": round(res.get("cpu_user", 0), 1),
                        "cpu_sys_s": round(res.get("cpu_sys", 0), 1),
                        "successes": ok,
                        "photos_per_s": round(ok / res["wall"], 1),
                        "cpu_ms_per_photo": round(1000 * res["cpu"] / max(1, ok), 3),
                        "byte_exact": sorted(shas) == expected,
                        "peak_rss_mb": res["peak_rss_mb"],
                        "cpu_by_role": res["cpu_by_role"],
                        "loadavg_start_end": res["loadavg"],
                        "disk_mb": round(folder_bytes(out)["total"] / 2**20, 1),
                    }
                    runs.setdefault((n, v), []).append(row)
                    log(
                        f"  {n} photos, {v} round {r}: {row['wall_s']} s, {row['photos_per_s']} "
                        f"photos/s, {row['cpu_ms_per_photo']} ms CPU/photo, {ok}/{n} ok, "
                        f"byte-exact {row['byte_exact']}"
                    )
        if args.profile and py is not None:
            result["profile"] = profile_runs(args, work, py, sizes[0], command, env, log)
    finally:
        result["sim_cpu_s"] = round(sim.cpu_seconds(), 1)
        sim.close()
    table: dict[str, dict[str, Any]] = {}
    for (n, v), rows in runs.items():
        pps = [r["photos_per_s"] for r in rows]
        cpp = [r["cpu_ms_per_photo"] for r in rows]
        table.setdefault(str(n), {})[v] = {
            "photos_per_s_max": max(pps),
            "photos_per_s_median": statistics.median(pps),
            "cpu_ms_per_photo_min": min(cpp),
            "cpu_ms_per_photo_median": statistics.median(cpp),
            "cpu_s_median": statistics.median(r["cpu_s"] for r in rows),
            "all_byte_exact": all(r["byte_exact"] for r in rows),
            "runs": rows,
        }
    for t in table.values():
        base = t.get("img2dataset")
        for v in ("exiflang-ray", "exiflang-local"):
            if base and v in t:
                # photos per CPU-second, exiflang over img2dataset (> 1: exiflang cheaper)
                t[v]["ratio_photos_per_cpu_s"] = {
                    "best": round(base["cpu_ms_per_photo_min"] / t[v]["cpu_ms_per_photo_min"], 2),
                    "median": round(base["cpu_ms_per_photo_median"] / t[v]["cpu_ms_per_photo_median"], 2),
                }
                t[v]["ratio_photos_per_s"] = {
                    "best": round(t[v]["photos_per_s_max"] / base["photos_per_s_max"], 2),
                    "median": round(t[v]["photos_per_s_median"] / base["photos_per_s_median"], 2),
                }
    if len(sizes) > 1:  # marginal CPU per photo: the fixed costs (start-up, imports) cancel
        lo, hi = str(sizes[0]), str(sizes[-1])
        marginal = {
            v: round(1000 * (table[hi][v]["cpu_s_median"] - table[lo][v]["cpu_s_median"]) / (sizes[-1] - sizes[0]), 3)
            for v in variants
            if v in table[lo] and v in table[hi]
        }
        fixed = {v: round(table[lo][v]["cpu_s_median"] - marginal[v] * sizes[0] / 1000, 1) for v in marginal}
        result["marginal_cpu_ms_per_photo"] = marginal
        result["fixed_cpu_s"] = fixed
        if "img2dataset" in marginal:
            result["marginal_ratio"] = {
                v: round(marginal["img2dataset"] / m, 2) for v, m in marginal.items() if v != "img2dataset" and m > 0
            }
    result["variants"] = table
    return result


def profile_runs(
    args: argparse.Namespace,
    work: Path,
    py: Path,
    n: int,
    command: Callable[[str, int, Path], list[str]],
    env: dict[str, str],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """One exiflang-local and one img2dataset run under py-spy (GIL-holding samples, all processes)."""
    spy = py.parent / "py-spy"
    if not spy.exists():
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", "py-spy"], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            return {"error": f"pip install py-spy: {r.stderr.strip()[-500:]}"}
    out: dict[str, Any] = {
        "photos": n,
        "how": "py-spy record --gil --nonblocking --subprocesses "
        "--rate 100: samples of threads holding the GIL (Python; C code that "
        "releases the GIL -- sha256 of large buffers, socket I/O, zstd -- is not seen)",
    }
    for v in ("exiflang-local", "img2dataset"):
        dest = work / f"prof_{v}"
        shutil.rmtree(dest, ignore_errors=True)
        raw = work / f"prof_{v}.txt"
        cmd = [
            str(spy),
            "record",
            "--gil",
            "--nonblocking",
            "--subprocesses",
            "--rate",
            "100",
            "--format",
            "raw",
            "-o",
            str(raw),
            "--",
            *command(v, n, dest),
        ]
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        out[v] = profile_summary(raw) if raw.exists() else {"error": r.stderr[-500:]}
        log(f"  profile {v}: {out[v].get('categories')}")
    return out


# =========================================================================== main


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000, help="lines of the simulated YFCC file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", type=Path, help="work folder (default: a new one under /tmp)")
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--threads",
        type=int,
        default=128,
        help="fetch threads per worker in part 1 (a stalled row holds one, and its place in the "
        "task's in-order window of 2 x threads rows; a row of a paused host is parked instead)",
    )
    ap.add_argument(
        "--compare-threads",
        type=int,
        default=16,
        help="threads per worker of both tools in part 2 (exiflang's default)",
    )
    ap.add_argument("--rows-per-shard", type=int, default=500)
    ap.add_argument("--timeout", type=float, default=2.0, help="per-read timeout (stalls)")
    ap.add_argument(
        "--row-deadline",
        type=float,
        default=5.0,
        help="seconds for one row, all attempts and fallbacks (a stall costs this much)",
    )
    ap.add_argument(
        "--retries",
        type=int,
        default=2,
        help="a storm's 429 costs a retry: 1 is not enough for a retry429 photo in a storm",
    )
    ap.add_argument(
        "--per-host-concurrency", type=int, default=4, help="job-wide cap; the throttling farms refuse above 4"
    )
    ap.add_argument(
        "--per-host-rate",
        type=float,
        default=15.0,
        help="job-wide requests/s per host; the throttling farms refuse above 20",
    )
    ap.add_argument(
        "--max-parked",
        type=int,
        help="exiflang's --max-parked (rows of a paused host set aside per task; 0: none; default: its own)",
    )
    ap.add_argument(
        "--shards-per-task", type=int, help="exiflang's --shards-per-task (shards per fetch window; default: its own)"
    )
    ap.add_argument("--storm-farm", type=int, default=5)
    ap.add_argument("--storm-at", type=float, default=0.3, help="fraction of photos served")
    ap.add_argument("--storm-seconds", type=float, default=15.0, help="0: no storm")
    ap.add_argument("--kill-rows", type=int, help="rows of the kill/resume run (default min(rows, 10000))")
    ap.add_argument("--no-kill", action="store_true")
    ap.add_argument("--no-compare", action="store_true", help="skip part 2")
    ap.add_argument(
        "--compare-rows",
        help="photos in part 2, or a comma list of sizes (then the "
        "marginal CPU per photo too); default min(rows, 10000)",
    )
    ap.add_argument(
        "--profile", action="store_true", help="part 2: one exiflang-local and one img2dataset run under py-spy"
    )
    ap.add_argument("--runs", type=int, default=2, help="alternating rounds of part 2")
    ap.add_argument(
        "--variants",
        default="exiflang-ray,exiflang-local,img2dataset",
        help="part 2: which of exiflang-ray, exiflang-local, img2dataset to run (comma list)",
    )
    ap.add_argument("--no-crawl", action="store_true", help="skip part 1 (the simulated crawl): part 2 only")
    ap.add_argument("--no-img2dataset", action="store_true", help="part 2 without img2dataset")
    ap.add_argument("--img2dataset-venv", type=Path, default=DEFAULT_VENV)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--_serve"]:
        _serve(json.loads(argv[1]))
        return 0
    if argv[:1] == ["--_wrap"]:
        return _wrap(argv[1], argv[3:])
    args = parser().parse_args(argv)
    import tempfile

    work = args.dir or Path(tempfile.mkdtemp(prefix="exiflang-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f} s] {msg}", flush=True)

    load = os.getloadavg()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpus": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in load],
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    try:
        if not args.no_crawl:
            results["part1"] = {}
            part1(args, work, log, results["part1"])
        if not args.no_compare:
            try:
                results["part2"] = part2(args, work, log)
            except RuntimeError as exc:  # a run failed: keep part 1, say why
                results["part2_error"] = str(exc)[-3000:]
                log(f"part 2 failed: {str(exc)[:300]}")
    finally:
        results["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        results["total_s"] = round(time.perf_counter() - t0, 1)
        text = json.dumps(results, indent=1, sort_keys=True, default=str)
        (work / "results.json").write_text(text)
        if args.json:
            args.json.write_text(text)
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report(results), indent=1, default=str))
    ok = verdict(results)
    log(f"verdict: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def verdict(results: dict[str, Any]) -> bool:
    """The ground-truth part of the contract: truth, politeness, storm, kill/resume."""
    p1 = results.get("part1", {})
    checks: list[Any] = []
    if "part1" in results:  # not with --no-crawl
        full = p1.get("full", {})
        checks += [full.get("truth", {}).get("pass"), full.get("politeness", {}).get("pass")]
    if p1.get("full", {}).get("storm"):
        checks.append(p1["full"]["storm"]["pass"])
    if "kill" in p1:
        checks += [p1["kill"]["truth"]["pass"], p1["kill"]["same_as_uninterrupted"]["same"]]
    checks += [not p1.get("kill_error"), not results.get("part2_error")]
    for by_tool in results.get("part2", {}).get("variants", {}).values():
        checks += [t["all_byte_exact"] for t in by_tool.values()]
    return all(bool(c) for c in checks)


def report(results: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers (the whole record is in results.json / --json)."""
    p1, p2 = results.get("part1", {}), results.get("part2", {})
    full = p1.get("full", {})
    out: dict[str, Any] = {
        "full": {
            k: full.get(k)
            for k in ("rows", "wall_s", "rows_per_s", "cpu_ms_per_row", "cpu_by_role", "peak_rss_mb", "disk_kb_per_row")
        },
        "truth": {
            k: full.get("truth", {}).get(k) for k in ("pass", "lost", "duplicated", "mismatch_kinds", "examples")
        },
        "politeness": {
            "pass": full.get("politeness", {}).get("pass"),
            "problems": full.get("politeness", {}).get("problems"),
        },
        "storm": {
            k: (full.get("storm") or {}).get(k)
            for k in (
                "pass",
                "host",
                "storm_host_during",
                "others_total_during_over_before",
                "others_during_over_before_min",
            )
        },
    }
    if "kill" in p1:
        kill = p1["kill"]
        out["kill"] = {
            "rows": kill["rows"],
            "killed_at_s": kill["killed_at_s"],
            "shards_complete_at_kill": f"{kill['shards_complete_at_kill']}/{kill['shards']}",
            "resume_wall_s": kill["resume_wall_s"],
            "outlived_kill": kill["outlived_kill"],
            "same": kill["same_as_uninterrupted"],
            "truth_pass": kill["truth"]["pass"],
        }
    if p2:
        out["compare"] = {
            n: {v: {k: t.get(k) for k in t if k != "runs"} for v, t in vs.items()}
            for n, vs in p2.get("variants", {}).items()
        }
        for k in ("img2dataset_error", "marginal_cpu_ms_per_photo", "fixed_cpu_s", "marginal_ratio"):
            if k in p2:
                out["compare"][k] = p2[k]
        if "profile" in p2:
            out["profile"] = {
                v: p2["profile"][v].get("categories") for v in ("exiflang-local", "img2dataset") if v in p2["profile"]
            }
    return out


if __name__ == "__main__":
    sys.exit(main())
