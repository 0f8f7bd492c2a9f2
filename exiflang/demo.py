"""`make demo`: the main job end to end on the offline default, reusing whatever is done.

A synthetic camera corpus (or ``--photos DIR``, your own photos) -> WebDataset shards and
Parquet tag tables with embedded Ray (a held-out tenth in its own shards) -> ``cpu-small``
training with held-out numbers (loss, retrieval, camera top-1) every ``--eval-every`` steps, drawn
as curves in the report -> embeddings, FAISS index and a lookup of every held-out
photo -> splices between held-out photos of different cameras, the splice benchmark (the model
and the NOI baseline) and one detection overlay -> ``report.html`` (self-contained).

On the synthetic corpus the splices are cut from new shots by the same cameras at 768-1024 px
(as many as are held out; scenes the training never saw): at the corpus's 384-640 px a 124-px
patch spans a third of the photo and no embedding can outline a splice (README, "Held-out
synthetic splices").  With ``--photos`` they are cut from the held-out tenth.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from exiflang.command import Command
from exiflang.eval.forensics.settings import DetectorConfig

SPLICE_SIZE = (768, 1024)  # width range of the synthetic splice photos (the tests' setting)


def _step(title: str) -> float:
    print(f"\n==> {title}", flush=True)
    return time.perf_counter()


def split_folder(source: Path, out: Path, every: int = 10) -> tuple[Path, Path]:
    """Symlink every ``every``-th photo into ``out/heldout``, the rest into ``out/train``.

    Links are named by a hash of the photo's path, so the shard builder's sorted order mixes
    cameras: photo folders are usually grouped by camera (and the synthetic corpus is named
    by camera), and shards of one camera leave the loader's shuffle buffer batches with no
    other camera to contrast against.
    """
    train, held = out / "train", out / "heldout"
    if held.exists() and any(held.iterdir()):
        return train, held
    train.mkdir(parents=True, exist_ok=True)
    held.mkdir(parents=True, exist_ok=True)
    from exiflang.pipeline.sources.base import IMAGE_EXTENSIONS  # what the shard builder reads

    photos = sorted(
        (p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: hashlib.sha1(str(p.relative_to(source)).encode()).hexdigest(),
    )
    for i, p in enumerate(photos):
        dest = (held if i % every == every - 1 else train) / f"{i:06d}_{p.name}"
        if not dest.exists():
            dest.symlink_to(p.resolve())
    return train, held


def _shards(source: Path, out: Path, workers: int) -> int:
    from exiflang.pipeline.build_shards import main as shards_main

    return shards_main(
        ["--source", str(source), "--out", str(out), "--workers", str(workers), "--rows-per-shard", "200", "-q"]
    )


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Declare the demo's arguments."""
    ap.add_argument("--out", default="runs/demo", help="demo folder (default runs/demo)")
    ap.add_argument("--photos", help="use this photo folder instead of the synthetic corpus")
    ap.add_argument("--cameras", type=int, default=8)
    ap.add_argument("--images", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=700, help="cpu-small training steps")
    ap.add_argument(
        "--eval-every", type=int, default=0, help="held-out numbers every N steps (default: 7 points over the run)"
    )
    ap.add_argument("--splices", type=int, default=12, help="generated spliced (and authentic) test images")
    ap.add_argument(
        "--per-side",
        type=int,
        default=DetectorConfig.per_side,
        help="patches along a photo's longest side in the splice benchmark, calibration and overlay "
        "(default %(default)s, the authors' grid; fewer is faster and coarser)",
    )


def run(args: argparse.Namespace) -> int:
    """Every step of the demo, reusing what is done; the first failing step's exit code."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    source = Path(args.photos).expanduser() if args.photos else out / "synth"
    if not args.photos:
        rc = _synthesise(
            source,
            f"synthetic camera corpus: {args.cameras} cameras, {args.images} images",
            ["--cameras", str(args.cameras), "--images", str(args.images), "--seed", str(args.seed)],
        )
        if rc:
            return rc

    train_src, held_src = split_folder(source, out / "split")
    t = _step(f"shards with embedded Ray: {train_src} -> {out / 'shards'}, held out -> {out / 'heldout'}")
    if _shards(train_src, out / "shards", args.workers) or _shards(held_src, out / "heldout", args.workers):
        return 1
    tags = json.loads((out / "shards" / "tags.json").read_text())
    print(f"vocabulary: {len(tags['tags'])} tags over {tags['num_images']} images ({time.perf_counter() - t:.1f} s)")

    run = out / "run"
    t = _step(f"cpu-small training, {args.steps} steps -> {run}")
    if (run / "model" / "model.safetensors").exists():
        print("already trained, reused")
    else:
        from exiflang.train.main import main as train_main

        rc = train_main(
            [
                "--data",
                str(out / "shards"),
                "--out",
                str(run),
                "--config",
                "cpu-small",
                "--eval-data",
                str(out / "heldout"),
                "--resume",
                "latest",
                f"run.steps={args.steps}",
                f"run.eval_every={args.eval_every or max(1, args.steps // 7)}",
            ]
        )
        if rc:
            return rc
    result = json.loads((run / "result.json").read_text())
    top1, chance = result.get("eval/camera_top1"), result.get("eval/chance")
    if top1 is not None:
        print(f"held-out camera retrieval top-1 {top1:.3f} (chance {chance:.3f}) ({time.perf_counter() - t:.1f} s)")
    return _evaluate(out, run, train_src, held_src, args)


def _evaluate(out: Path, run: Path, train_src: Path, held_src: Path, args: argparse.Namespace) -> int:
    from exiflang import demo_eval
    from exiflang.eval.images import expand_inputs

    held = expand_inputs([str(held_src)])
    lookup, acc = demo_eval.lookup_step(out, run / "model", out / "shards", held)
    splice_src = held if args.photos else _splice_photos(out / "splice_photos", args, len(held))
    if splice_src is None:
        return 1
    detections, bench = demo_eval.splice_step(
        out, run / "model", splice_src, args.splices, args.seed, per_side=args.per_side
    )
    report = demo_eval.report_step(out, run, lookup, acc, detections, bench)
    print(
        f"\ndemo done: dataset {out / 'shards'}, model {run / 'model'}, "
        f"metrics {run / 'metrics.jsonl'} (TensorBoard: {run / 'tb'})"
    )
    if detections:
        print(f"splice overlay: {detections[0]['overlay_png']}")
    print(f"report: {report}")
    # The analyst's page on this model and index (docs/serve.md); --reference makes check-exif
    # rank claims among the index's EXIF instead of embedding the training shards at start.
    print(
        f"\nopen the page: exiflang serve --model {run / 'model'} --index {out / 'index'} "
        f"--reference {out / 'index'}   # then http://127.0.0.1:8000/"
    )
    return 0


def _synthesise(dest: Path, title: str, synth_args: list[str]) -> int:
    """`exiflang synth --out dest synth_args...` as a demo step (reused when ``dest`` has its
    manifest); the exit code."""
    t = _step(f"{title} -> {dest}")
    if (dest / "manifest.csv").exists():
        print("already there, reused")
    else:
        from exiflang.pipeline.synth.corpus import main as synth_main

        rc = synth_main(["--out", str(dest), *synth_args])
        if rc:
            return rc
    print(f"({time.perf_counter() - t:.1f} s)")
    return 0


def _splice_photos(dest: Path, args: argparse.Namespace, count: int) -> list[Path] | None:
    """``count`` new synthetic shots (corpus indices N..N+count-1) at :data:`SPLICE_SIZE`; None on failure."""
    from exiflang.eval.images import expand_inputs

    end = args.images + count
    rc = _synthesise(
        dest,
        f"{count} new shots by the same cameras at {SPLICE_SIZE[0]}-{SPLICE_SIZE[1]} px for the splice test",
        [
            "--cameras",
            str(args.cameras),
            "--images",
            str(end),
            "--seed",
            str(args.seed),
            "--indices",
            f"{args.images}:{end}",
            "--min-size",
            str(SPLICE_SIZE[0]),
            "--max-size",
            str(SPLICE_SIZE[1]),
            "--workers",
            str(args.workers),
        ],
    )
    return None if rc else expand_inputs([str(dest)])


COMMAND = Command(prog="exiflang demo", doc=__doc__, add_arguments=add_arguments, run=run)
main = COMMAND.main

if __name__ == "__main__":
    sys.exit(main())
