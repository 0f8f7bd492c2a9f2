"""Load on `exiflang serve`: 1, 4 and 16 concurrent clients against the Python API called directly.

The service (a real ``exiflang serve`` subprocess on a free 127.0.0.1 port) answers
``POST /v1/detect`` for one photo; clients are threads, each sending its requests one after
another on new connections.  The baseline is the same work through the Python API in this
process (``model.detect(photo_bytes)``, one call at a time: the service runs one model call at a
time too, ``--workers 1``), so the ratio is what HTTP, multipart parsing, PNG/JSON encoding and
queueing cost.  Rounds alternate baseline and service (A/B); the table gives min and median over
rounds.  503s (the queue is full: ``--queue``) are counted, not retried.  Peak RSS: the server's
VmHWM after each level (it only grows) and this process's after its API calls.

Model: a random-init ``cpu-small`` saved as a model folder (weights do not change the time).
Photo: the 132 x 132 centre of a real photo from ../shared/data/photos (read only, re-encoded
in memory), a 9 x 9 splice grid: small, so the service's overhead is not hidden in the model.

    python benchmarks/serve_load.py [--rounds 3] [--requests 8] [--queue 8] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import psutil  # noqa: E402
from PIL import Image  # noqa: E402

PHOTO = REPO.parent / "shared" / "data" / "photos" / "NIKON-CORPORATION_NIKON-D70_1289898b.jpg"
LEVELS = (1, 4, 16)
BOUNDARY = "exiflangbenchboundary"


def small_model(root: Path) -> Path:
    """A random-init ``cpu-small`` model folder under ``root``."""
    import torch

    from exiflang.train.model import ExifClip, ModelConfig
    from exiflang.train.tokenizer import build_tokenizer

    torch.manual_seed(0)
    model = ExifClip(ModelConfig.preset("cpu-small"))
    model.save_pretrained(root / "model", build_tokenizer("auto", None, max_length=64), {"tags": ["Make", "Model"]})
    return root / "model"


def photo_bytes(side: int = 132) -> bytes:
    img = Image.open(PHOTO)
    w, h = img.size
    buf = io.BytesIO()
    img.crop(((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def start_server(model: Path, log: Path, queue: int, threads: int) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable,
        "-m",
        "exiflang",
        "serve",
        "--model",
        str(model),
        "--port",
        "0",
        "--workers",
        "1",
        "--queue",
        str(queue),
        "--threads",
        str(threads),
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)
    end = time.monotonic() + 300
    while time.monotonic() < end:
        m = re.search(r"(http://127\.0\.0\.1:\d+)/", log.read_text())
        if m:
            try:
                urllib.request.urlopen(m.group(1) + "/v1/health", timeout=5).read()
                return proc, m.group(1)
            except OSError:
                pass
        if proc.poll() is not None:
            raise SystemExit(f"serve exited: {log.read_text()}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"serve did not start: {log.read_text()}")


def post(url: str, body: bytes) -> tuple[int, float]:
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    )
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            resp.read()
            status = resp.status
    except urllib.error.HTTPError as err:
        err.read()
        status = err.code
    return status, time.perf_counter() - t0


def service_level(url: str, body: bytes, clients: int, per_client: int) -> dict[str, Any]:
    """``clients`` threads x ``per_client`` requests: rps of 200s, p50/p95 of 200s, 503 share."""
    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(per_client):
            r = post(url + "/v1/detect", body)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = sorted(d for s, d in results if s == 200)
    other = [s for s, _ in results if s not in (200, 503)]
    if other:
        raise SystemExit(f"unexpected statuses {other}")
    return {
        "rps": len(ok) / wall,
        "p50": percentile(ok, 50),
        "p95": percentile(ok, 95),
        "share_503": sum(s == 503 for s, _ in results) / len(results),
    }


def api_level(model: Any, data: bytes, n: int) -> dict[str, Any]:
    """``n`` direct calls, one at a time, on one pool thread as the service runs them (the same
    detect, no maps encoded, no HTTP)."""
    lat = []
    pool = ThreadPoolExecutor(1)

    def one() -> float:
        t = time.perf_counter()
        model.detect(data)
        return time.perf_counter() - t

    t0 = time.perf_counter()
    for _ in range(n):
        lat.append(pool.submit(one).result())
    pool.shutdown()
    wall = time.perf_counter() - t0
    lat.sort()
    return {"rps": n / wall, "p50": percentile(lat, 50), "p95": percentile(lat, 95), "share_503": 0.0}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[i]


def multipart(data: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="p.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=8, help="requests per client at 1 client; 16 clients send 2 each")
    ap.add_argument("--queue", type=int, default=8, help="the service's --queue (16 clients overflow 1 + 8)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()

    import torch

    from exiflang import api

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = small_model(Path(tmp))
        data = photo_bytes()
        body = multipart(data)
        model = api.load(model_dir, threads=args.threads)
        proc, url = start_server(model_dir, Path(tmp) / "serve.log", args.queue, args.threads)
        try:
            api_level(model, data, 2)  # warm-up both sides
            service_level(url, body, 1, 2)
            rows: dict[str, list[dict]] = {k: [] for k in ["api", *(f"serve c={c}" for c in LEVELS)]}
            rss: dict[str, float] = {}
            for _ in range(args.rounds):
                rows["api"].append(api_level(model, data, args.requests))
                rss["api (this process)"] = peak_rss_mb(os.getpid())
                for c in LEVELS:
                    per_client = max(1, args.requests * 1 // c) if c < 16 else 2
                    rows[f"serve c={c}"].append(service_level(url, body, c, per_client))
                    rss[f"serve c={c}"] = peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
    report(rows, rss, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "rss_mb": rss}, indent=2))
    return 0


def report(rows: dict[str, list[dict]], rss: dict[str, float], args: argparse.Namespace) -> None:
    base = statistics.median(r["rps"] for r in rows["api"])
    print(
        f"serve_load: {args.rounds} rounds (A/B alternating), /v1/detect of a 132x132 JPEG, "
        f"--workers 1 --queue {args.queue} --threads {args.threads}, {psutil.cpu_count()} CPUs"
    )
    print(
        f"{'':<12} {'req/s min':>9} {'req/s med':>9} {'x API':>6} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'503 share':>9} {'peak RSS MB':>11}"
    )
    for name, rs in rows.items():
        rps = [r["rps"] for r in rs]
        med = statistics.median(rps)
        p50 = statistics.median(r["p50"] for r in rs) * 1000
        p95 = statistics.median(r["p95"] for r in rs) * 1000
        share = statistics.median(r["share_503"] for r in rs)
        mem = rss.get(name, rss.get("api (this process)") if name == "api" else float("nan"))
        print(
            f"{name:<12} {min(rps):>9.2f} {med:>9.2f} {med / base:>6.2f} {p50:>7.0f} {p95:>7.0f} "
            f"{share:>9.2f} {mem:>11.0f}"
        )


if __name__ == "__main__":
    sys.exit(main())
