"""Entry point of the dataset pipeline: `exiflang shards` / `python pipeline/build_shards.py`.

Starts Ray embedded, or joins a cluster with ``--address`` / ``RAY_ADDRESS`` (as under
``ray job submit``), and writes WebDataset shards plus Parquet tag tables (docs/design.md §3).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (`python pipeline/build_shards.py`, e.g. under `ray job submit`):
    # make the repository root importable so `pipeline.*` resolves without an install.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exiflang.command import Command
from exiflang.pipeline import storage
from exiflang.pipeline.config import VERIFY_MODES, ShardConfig
from exiflang.pipeline.driver import JobOptions, build
from exiflang.pipeline.fetch.download import DownloadConfig
from exiflang.pipeline.shards.files import RERUN_CHECKS, safe_text
from exiflang.pipeline.sources.base import FORMATS
from exiflang.pipeline.sources.open import open_source


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``exiflang shards``."""
    d, s = DownloadConfig(), ShardConfig()
    src = ap.add_argument_group("source")
    src.add_argument(
        "--source",
        required=True,
        help="photo folder, URL list or YFCC100M main file; or a folder or glob of "
        "list files / Parquet shards; local, file://, s3:// or gs://",
    )
    src.add_argument("--source-format", choices=FORMATS, help="force the format (default: detected)")
    src.add_argument("--url-column", help="URL column of a csv/tsv/jsonl/parquet list")
    src.add_argument("--yfcc-exif", help="YFCC100M EXIF side file, joined by photo id")
    src.add_argument(
        "--yfcc-original-url",
        help="template of the full-resolution URL, e.g. a mirror: fields {farm} {server} {id} {original_secret} {ext}",
    )
    src.add_argument("--max-rows", type=int, help="stop after this many source rows")
    out = ap.add_argument_group("output")
    out.add_argument("--out", default="shards", help="dataset folder, local or s3:// / gs:// (default: shards)")
    out.add_argument(
        "--storage-options",
        metavar="JSON",
        help='fsspec options for s3:// / gs:// paths, e.g. \'{"endpoint_url": '
        '"http://host:9000"}\' (default: the environment: AWS_ENDPOINT_URL, '
        f"AWS_ACCESS_KEY_ID, ..., {storage.OPTIONS_ENV})",
    )
    out.add_argument("--rows-per-shard", type=int, default=s.rows_per_shard)
    out.add_argument("--min-tags", type=int, default=s.min_tags, help="fewer tags -> too_few_tags")
    out.add_argument(
        "--tag-threshold", type=float, default=0.5, help="keep tags present in more than this fraction of kept images"
    )
    out.add_argument("--patch-size", type=int, default=s.patch_size, help="shorter side minimum")
    out.add_argument(
        "--verify", choices=VERIFY_MODES, default=s.verify, help="how much of each image to decode to check it"
    )
    out.add_argument("--exif-prefer", choices=("image", "yfcc"), default=s.exif_prefer)
    run = ap.add_argument_group("execution")
    run.add_argument("--executor", choices=("ray", "local"), default="ray")
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else embedded)")
    run.add_argument(
        "--workers",
        type=int,
        help="concurrent shards: Ray tasks, or local worker processes "
        "(default: the cluster's CPUs / this machine's CPUs)",
    )
    run.add_argument("--threads", type=int, default=s.threads, help="fetch threads per worker")
    run.add_argument(
        "--max-parked",
        type=int,
        default=s.max_parked,
        help="rows of a paused host (429/503) a shard sets aside so its other rows go on; beyond "
        f"this a row waits for its host in its thread (0: no parking; default: {s.max_parked})",
    )
    run.add_argument(
        "--shards-per-task",
        type=int,
        default=JobOptions.shards_per_task,
        help="consecutive shards a worker builds through one fetch window, so that it goes on with "
        "the next while one waits for a paused host (fewer towards the end; "
        f"default: {JobOptions.shards_per_task})",
    )
    run.add_argument("--shard-retries", type=int, default=2)
    run.add_argument(
        "--rerun-check",
        choices=RERUN_CHECKS,
        default=JobOptions.rerun_check,
        help="how a shard with a stats file is checked before it is skipped: "
        "sizes and sha256 of its tar and table, or sizes only (default: hash)",
    )
    net = ap.add_argument_group("download")
    net.add_argument(
        "--timeout",
        type=float,
        default=d.timeout,
        metavar="SECONDS",
        help=f"connect and per-read timeout (default: {d.timeout:g})",
    )
    net.add_argument(
        "--deadline",
        type=float,
        default=d.deadline,
        metavar="SECONDS",
        help=f"total time for one attempt: DNS, connect, headers and body (default: {d.deadline:g})",
    )
    net.add_argument(
        "--row-deadline",
        type=float,
        default=d.row_deadline,
        metavar="SECONDS",
        help="total time for one row: all retries and fallback URLs, not counting "
        f"the wait for a per-host slot (default: {d.row_deadline:g})",
    )
    net.add_argument("--retries", type=int, default=d.retries)
    net.add_argument("--max-bytes", type=int, default=d.max_bytes)
    net.add_argument("--max-redirects", type=int, default=d.max_redirects)
    net.add_argument(
        "--per-host-concurrency",
        type=int,
        default=d.per_host_concurrency,
        help="requests in flight to one host, for the whole job across all workers "
        f"(<= 0: no cap; default: {d.per_host_concurrency})",
    )
    net.add_argument(
        "--per-host-rate",
        type=float,
        default=d.per_host_rate,
        help="requests/s to one host for the whole job (0 = unlimited)",
    )
    net.add_argument(
        "--retry-after-max",
        type=float,
        default=d.retry_after_max,
        metavar="SECONDS",
        help=f"longest pause of a host after a 429/503, whatever its Retry-After says (default: {d.retry_after_max:g})",
    )
    net.add_argument(
        "--ignore-opt-out",
        action="store_true",
        help="fetch photos whose X-Robots-Tag opts them out (default: they are "
        f"skipped as opted_out: {', '.join(d.opt_out_directives)})",
    )
    net.add_argument(
        "--user-agent",
        default=d.user_agent,
        help="User-Agent header; its product token is the crawler name X-Robots-Tag directives are matched against",
    )
    ap.add_argument("-q", "--quiet", action="store_true")


def _configs(args: argparse.Namespace) -> tuple[ShardConfig, JobOptions]:
    dl = DownloadConfig(
        timeout=args.timeout,
        deadline=args.deadline,
        row_deadline=args.row_deadline,
        retries=args.retries,
        max_bytes=args.max_bytes,
        max_redirects=args.max_redirects,
        per_host_concurrency=args.per_host_concurrency,
        per_host_rate=args.per_host_rate,
        retry_after_max=args.retry_after_max,
        respect_opt_out=not args.ignore_opt_out,
        user_agent=args.user_agent,
    )
    cfg = ShardConfig(
        out_dir=str(storage.resolve(args.out)),
        rows_per_shard=args.rows_per_shard,
        threads=args.threads,
        max_parked=args.max_parked,
        patch_size=args.patch_size,
        min_tags=args.min_tags,
        verify=args.verify,
        exif_prefer=args.exif_prefer,
        download=dl,
        storage_options=storage.parse_options(args.storage_options),
    )
    opts = JobOptions(
        executor=args.executor,
        workers=args.workers,
        address=args.address,
        shard_retries=args.shard_retries,
        shards_per_task=args.shards_per_task,
        tag_threshold=args.tag_threshold,
        max_rows=args.max_rows,
        progress=not args.quiet,
        rerun_check=args.rerun_check,
    )
    if opts.workers is not None and opts.workers < 1:
        raise ValueError(f"--workers must be at least 1, not {opts.workers}")
    if opts.shards_per_task < 1:
        raise ValueError(f"--shards-per-task must be at least 1, not {opts.shards_per_task}")
    return cfg, opts


def _side_db(out_dir: storage.Location) -> Path:
    """Where the YFCC side-file index lives: in the dataset folder, or for one on an object
    store (SQLite needs a local file) in the local temporary folder, named after it."""
    if isinstance(out_dir, Path):
        return out_dir / "yfcc_exif.sqlite"
    tag = hashlib.sha256(str(out_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"exiflang-yfcc-exif-{tag}.sqlite"


def run(args: argparse.Namespace) -> int:
    """Build the shards; 0 when every shard is complete, 1 when some failed all their retries."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cfg, opts = _configs(args)
    storage.configure(cfg.storage_options)
    source = open_source(
        args.source, args.source_format, url_column=args.url_column, yfcc_original_url=args.yfcc_original_url
    )
    out_dir = storage.resolve(cfg.out_dir)
    storage.makedirs(out_dir)
    rows = source.rows()
    if args.yfcc_exif:
        from exiflang.pipeline.sources.yfcc_exif import YfccSideJoin

        # Indexed as the rows stream past, with only their ids: no full build up front.
        join = YfccSideJoin(args.yfcc_exif, str(_side_db(out_dir)))
        rows, cfg.yfcc_exif_db = join.rows(rows), join.db_path
    cfg.write(storage.join(out_dir, "config.json"))
    summary = build(rows, cfg, opts)
    summary["source"] = {
        "path": str(args.source),
        "format": source.format,
        "skipped": dict(source.skipped),
        "flagged": dict(getattr(source, "flagged", {})),
    }
    storage.write_bytes(storage.join(out_dir, "job.json"), json.dumps(summary, indent=2, sort_keys=True).encode())
    counts = ", ".join(f"{k} {v}" for k, v in summary["status_counts"].items() if v)
    # safe_text: stdout is strict UTF-8, and the folder's name need not be.
    print(
        f"{summary.get('rows', 0)} rows -> {summary.get('samples', 0)} samples in "
        f"{summary['shards']} shards ({counts}); {summary['vocabulary_size']} tags; "
        f"{safe_text(str(out_dir))}"
    )
    if summary["failed_shards"]:
        print(
            f"exiflang: {len(summary['failed_shards'])} shards failed "
            f"({summary['failed_shards'][:10]}); rerun the same command to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


PROG = "exiflang shards"
# Ctrl-C: embedded Ray is already stopped (exiflang.pipeline.driver); finished shards are kept.
COMMAND = Command(
    prog=PROG, doc=__doc__, add_arguments=add_arguments, run=run, interrupt_hint="rerun the same command to resume"
)
main = COMMAND.main


if __name__ == "__main__":
    sys.exit(main())
