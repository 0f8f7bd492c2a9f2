"""Loader throughput: crops per CPU-second from shards of the dev photos, against a decode-only floor.

Rows: the floor (read each image from its tar and decode it at full resolution, nothing else);
the loader with K = 1, 4, 16 crops per decoded image (header checks, decode, crop, normalise,
render and tokenise the text, shuffle, batch); and the resume fast-forward (samples replayed per
second by ``start_batch`` without decoding).  One process, ``num_workers=0``, torch on one
thread: the rates are per core (CPU seconds); wall seconds are shown beside them.  The ratio
column is crops/s over the floor's decodes/s: K crops per decode approaches K.

The object-storage row reads the same shards from a real S3 server on loopback (moto, in a
process of its own) and from local disk with the loader at K = 4: ``--reps`` alternating runs of
one epoch each (local, S3, S3, local, ...), crops per *wall* second (the server's work and the
network wait are the point), min and median of each, and the ratio of the medians.

    python benchmarks/loader_throughput.py [--photos DIR] [--epochs 2] [--batch-size 32]
                                           [--reps 5] [--only all|s3]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from exiflang.train.data.loader import DataConfig, _SlotStream, build_loader  # noqa: E402
from exiflang.train.data.samples import IMAGE_EXTS  # noqa: E402
from exiflang.train.tokenizer import build_tokenizer  # noqa: E402


def build_shards(photos: Path, out: Path) -> None:
    """``exiflang shards --executor local`` on the photo folder."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "exiflang.cli",
            "shards",
            "--source",
            str(photos),
            "--out",
            str(out),
            "--executor",
            "local",
            "--rows-per-shard",
            "16",
            "-q",
        ],
        check=True,
        cwd=REPO,
    )


def timed(fn) -> tuple[int, float, float]:
    """``fn() -> count``; returns (count, CPU s, wall s)."""
    c0, t0 = time.process_time(), time.perf_counter()
    n = fn()
    return n, time.process_time() - c0, time.perf_counter() - t0


def floor(shards: Path, epochs: int) -> int:
    """Decode every image of every tar ``epochs`` times; returns the number of decodes."""
    n = 0
    for _ in range(epochs):
        for path in sorted(shards.glob("*.tar")):
            with tarfile.open(path) as tar:
                for m in tar:
                    if m.name.rpartition(".")[2].lower() in IMAGE_EXTS:
                        with Image.open(io.BytesIO(tar.extractfile(m).read())) as img:
                            img.load()
                        n += 1
    return n


def loader_crops(cfg: DataConfig, tokenizer, epochs: int) -> int:
    n = 0
    for epoch in range(epochs):
        for batch in build_loader(cfg, tokenizer, epoch=epoch):
            n += len(batch["images"])
    return n


def fast_forward(cfg: DataConfig, tokenizer, epochs: int) -> int:
    """Replay ``epochs`` epochs of one stream the way ``start_batch`` does before its resume point
    (tar headers, exif.json, image header probe, crop boxes; no decode); returns the samples.
    Reaches into the loader's private stream: the public API only replays up to a batch that it
    then decodes, which would time the decode too."""
    n = 0
    for epoch in range(epochs):
        stream = _SlotStream(build_loader(cfg, tokenizer, epoch=epoch)._ds, role=0)
        stream.resume_items = 1 << 62  # everything lies before the resume point: nothing decoded
        n += sum(1 for _ in stream._one_pass(0))
    return n


def s3_server_process() -> tuple[subprocess.Popen, str]:
    """A loopback S3 server (tests/s3_server.py, bucket ``exiflang``) in its own process; its endpoint."""
    code = (
        "import sys; from tests.s3_server import s3_server\n"
        "with s3_server() as ep:\n    print(ep, flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def s3_vs_local(shards: Path, tokenizer, batch: int, reps: int) -> list[tuple[str, list[float], int]]:
    """(source, crops per wall second of each run, crops a run) for local disk and loopback S3,
    alternating A B B A ... so that drift in the machine's load falls on both alike."""
    import fsspec

    from tests.s3_server import s3_env

    server, endpoint = s3_server_process()
    try:
        os.environ.update(s3_env(endpoint))
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        for path in sorted(shards.iterdir()):
            fs.put_file(str(path), f"exiflang/bench/{path.name}")
        sources = {"local disk": str(shards), "loopback S3 (moto)": "s3://exiflang/bench"}
        rates: dict[str, list[float]] = {name: [] for name in sources}
        crops = 0
        for r in range(reps):
            for name in list(sources) if r % 2 == 0 else list(sources)[::-1]:
                cfg = DataConfig(
                    data=sources[name],
                    batch_size=batch,
                    crops_per_image=4,
                    num_workers=0,
                    shuffle_buffer=max(256, 16 * batch),
                )
                crops, _, wall = timed(lambda cfg=cfg: loader_crops(cfg, tokenizer, 1))
                rates[name].append(crops / wall)
        return [(name, rates[name], crops) for name in sources]
    finally:
        server.communicate("", timeout=30)


def print_s3_rows(rows: list[tuple[str, list[float], int]], reps: int) -> None:
    print(f"\nK=4 crops per decode, one epoch a run, {reps} runs each, alternating; crops per wall second\n")
    print("| source | crops a run | median crops/s | min crops/s |")
    print("|---|---:|---:|---:|")
    for name, rates, crops in rows:
        print(f"| {name} | {crops} | {statistics.median(rates):.1f} | {min(rates):.1f} |")
    (_, local, _), (_, s3, _) = rows
    print(
        f"\nS3 / local: median {statistics.median(s3) / statistics.median(local):.3f}, min {min(s3) / min(local):.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=Path, default=REPO.parent / "shared" / "data" / "photos")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5, help="runs per source of the S3-vs-local row")
    ap.add_argument("--only", choices=("all", "s3"), default="all", help="s3: the S3-vs-local row alone")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tokenizer = build_tokenizer("bert-uncased")
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        build_shards(args.photos, shards)
        s3_rows = s3_vs_local(shards, tokenizer, args.batch_size, args.reps)
        if args.only == "s3":
            print_s3_rows(s3_rows, args.reps)
            return 0
        n, cpu, wall = timed(lambda: floor(shards, args.epochs))
        base = n / cpu
        rows = [("floor: read + full decode", n, cpu, wall, "decodes")]
        for k in (1, 4, 16):
            cfg = DataConfig(
                data=str(shards),
                batch_size=args.batch_size,
                crops_per_image=k,
                num_workers=0,
                shuffle_buffer=max(256, 4 * k * args.batch_size),
            )
            count = timed(lambda cfg=cfg: loader_crops(cfg, tokenizer, args.epochs))
            rows.append((f"loader, K={k} crops per decode", *count, "crops"))
        cfg = DataConfig(data=str(shards), batch_size=args.batch_size, num_workers=0)
        count = timed(lambda: fast_forward(cfg, tokenizer, args.epochs))
        rows.append(("resume fast-forward (no decode)", *count, "samples"))
    mp = sum(1 for _ in args.photos.glob("*.jpg"))
    print(f"\n{mp} dev photos, batch {args.batch_size}, {args.epochs} epochs, one core\n")
    print("| path | items | per CPU-s | wall s | ratio to floor |")
    print("|---|---:|---:|---:|---:|")
    for name, count, c, w, unit in rows:
        print(f"| {name} | {count} {unit} | {count / c:.1f} | {w:.2f} | {count / c / base:.2f}x |")
    print_s3_rows(s3_rows, args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
