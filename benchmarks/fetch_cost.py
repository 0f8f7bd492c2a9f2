"""CPU cost of one photo fetch on loopback: the pipeline's downloader against plain urllib.

The server runs in its own process, so only the client's CPU is counted.  Each run fetches
``--n`` distinct URLs of one ~100 KB JPEG, one after another on one thread; the fetchers
are run alternately ``--repeats`` times each, and the min and median CPU per fetch are
reported.  ``exiflang`` has a host governor of its own (one process); ``exiflang+gov``
asks a job governor served on a Unix socket by another process (exiflang.pipeline.fetch.governor_service)
for every slot, as a worker of a multi-process job does; that server's CPU is reported too.  ``--baseline
FILE`` adds a frozen copy of an older ``pipeline/fetch/download.py`` (a module defining
``Downloader`` and ``DownloadConfig``) for before/after comparisons.  Then the grant round
trip alone: acquire + release of a slot through the governor's socket, Unix and TCP.

    python benchmarks/fetch_cost.py [--n 1000] [--repeats 5] [--baseline /tmp/old_download.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PHOTO = "Canon_Canon-DIGITAL-IXUS-400_237b3a39.jpg"  # 94 KB, one of the shared dev photos


def _serve(root: str, q: mp.Queue[int]) -> None:
    from tests.http_server import LoopbackServer

    with LoopbackServer(Path(root)) as srv:
        q.put(srv.port)
        while True:
            time.sleep(3600)


def _govern(q: mp.Queue[tuple[str, str]]) -> None:
    from exiflang.pipeline.fetch.governor_service import GovernorServer
    from exiflang.pipeline.fetch.politeness import HostGovernor

    with GovernorServer(HostGovernor()) as gov:
        q.put((gov.address, gov.key))
        while True:
            time.sleep(3600)


def _downloader_run(module: object, **cfg: object) -> Callable[[list[str]], int]:
    def run(urls: list[str]) -> int:
        dl = module.Downloader(module.DownloadConfig(**cfg))  # type: ignore[attr-defined]
        try:
            return sum(len(dl.fetch(u).data or b"") for u in urls)
        finally:
            dl.close()

    return run


def _urllib_run(urls: list[str]) -> int:
    # What img2dataset does per photo: urllib.request.urlopen, body read whole.
    total = 0
    for u in urls:
        req = urllib.request.Request(u, headers={"User-Agent": "bench"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            total += len(resp.read())
    return total


def _load(path: str) -> object:
    spec = importlib.util.spec_from_file_location("baseline_download", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    sys.path.insert(0, str(Path(path).parent))
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--photos", default=str(REPO.parent / "shared" / "data" / "photos"))
    ap.add_argument("--baseline", help="a frozen older pipeline/fetch/download.py to compare with")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    q: mp.Queue[int] = ctx.Queue()
    server = ctx.Process(target=_serve, args=(args.photos, q), daemon=True)
    server.start()
    port = q.get(timeout=60)
    gq: mp.Queue[tuple[str, str]] = ctx.Queue()
    governor = ctx.Process(target=_govern, args=(gq,), daemon=True)
    governor.start()
    address, key = gq.get(timeout=60)
    import psutil

    gov_proc = psutil.Process(governor.pid)
    import exiflang.pipeline.fetch.download as current

    fetchers: dict[str, Callable[[list[str]], int]] = {
        "exiflang": _downloader_run(current),
        "exiflang+gov": _downloader_run(current, governor_address=address, governor_key=key),
    }
    gov_cpu: list[float] = []
    if args.baseline:
        fetchers["baseline"] = _downloader_run(_load(args.baseline))
    fetchers["urllib"] = _urllib_run
    cpu: dict[str, list[float]] = {k: [] for k in fetchers}
    try:
        for rep in range(args.repeats + 1):
            for name, run in fetchers.items():
                urls = [f"http://127.0.0.1:{port}/files/{PHOTO}?r={rep}&i={i}" for i in range(args.n)]
                c0, g0 = time.process_time(), sum(gov_proc.cpu_times()[:2])
                got = run(urls)
                spent = time.process_time() - c0
                if rep and name == "exiflang+gov":
                    gov_cpu.append((sum(gov_proc.cpu_times()[:2]) - g0) / args.n * 1e3)
                assert got > 90_000 * args.n, (name, got)
                if rep:  # the first round warms caches and imports
                    cpu[name].append(spent / args.n * 1e3)
    finally:
        server.terminate()
        governor.terminate()
    for name, ms in cpu.items():
        print(
            f"{name:12s} CPU per fetch: min {min(ms):.3f} ms, median {statistics.median(ms):.3f} ms "
            f"({len(ms)} runs of {args.n})"
        )
    print(
        f"{'(governor)':12s} CPU per fetch: min {min(gov_cpu):.3f} ms, median "
        f"{statistics.median(gov_cpu):.3f} ms in the governor's process"
    )
    for tcp in (None, "127.0.0.1"):
        _grant_round_trip(tcp, args.n * 5)


def _grant_round_trip(tcp_host: object, n: int) -> None:
    """Wall and CPU (client + server thread) of one acquire + release through the socket."""
    from exiflang.pipeline.fetch.governor_service import GovernorServer, RemoteGovernor
    from exiflang.pipeline.fetch.politeness import GovernorLimits, HostGovernor

    with GovernorServer(HostGovernor(), tcp_host=tcp_host) as srv:  # type: ignore[arg-type]
        client = RemoteGovernor(srv.address, srv.key, GovernorLimits())
        for _ in range(200):
            client.release(client.acquire("h", 0, 60.0, 1.0), 0)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            client.release(client.acquire("h", 0, 60.0, 1.0), 0)
        wall, cpu = (time.perf_counter() - t0) / n * 1e6, (time.process_time() - c0) / n * 1e6
        client.close()
    print(
        f"grant round trip ({srv.address.split(':')[0]}): {wall:.0f} us wall, {cpu:.0f} us CPU "
        f"(acquire + release, {n} times)"
    )


if __name__ == "__main__":
    main()
