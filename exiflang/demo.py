"""`make demo`: the main job end to end on the offline default, reusing whatever is done.

Today: a synthetic camera corpus (or ``--photos DIR``, your own photos) -> WebDataset shards
and Parquet tag tables with embedded Ray.  Later stages (training, lookup, detection) append
their steps here.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional


def _step(title: str) -> float:
    print(f"\n==> {title}", flush=True)
    return time.perf_counter()


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="exiflang demo", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/demo", help="demo folder (default runs/demo)")
    ap.add_argument("--photos", help="use this photo folder instead of the synthetic corpus")
    ap.add_argument("--cameras", type=int, default=8)
    ap.add_argument("--images", type=int, default=800)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    source = Path(args.photos).expanduser() if args.photos else out / "synth"
    if not args.photos:
        t = _step(f"synthetic camera corpus: {args.cameras} cameras, {args.images} images -> {source}")
        if (source / "manifest.csv").exists():
            print("already there, reused")
        else:
            from pipeline.synth import main as synth_main
            rc = synth_main(["--out", str(source), "--cameras", str(args.cameras),
                             "--images", str(args.images), "--seed", str(args.seed)])
            if rc:
                return rc
        print(f"({time.perf_counter() - t:.1f} s)")

    shards = out / "shards"
    t = _step(f"shards with embedded Ray: {source} -> {shards}")
    from pipeline.build_shards import main as shards_main
    rc = shards_main(["--source", str(source), "--out", str(shards), "--workers", str(args.workers),
                      "--rows-per-shard", "200", "-q"])
    if rc:
        return rc
    tags = json.loads((shards / "tags.json").read_text())
    print(f"vocabulary: {len(tags['tags'])} tags over {tags['num_images']} images "
          f"({time.perf_counter() - t:.1f} s)")
    print(f"\ndemo done: dataset in {shards} (see {shards / 'summary.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
