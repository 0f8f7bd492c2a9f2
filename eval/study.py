"""The small-scale study (`make study`): the paper's experimental design on a folder of real photos.

    python -m exiflang.eval.study --photos ../shared/data/photos --out runs/study [--steps 3000]

1. Split the photos **by camera model** (Make + Model; no model on both sides).
2. Shards of each side (``--executor local``), then, with the same image encoder (``cpu-small``)
   and the same number of steps: the **EXIF** model (every vocabulary tag as text), **CropCLR**
   (two crops of one photo, no metadata) and the **Model-tag-only** variant; plus an **untrained**
   encoder (random init, same architecture) and the hand-crafted **NOI** baseline as references.
3. ``make-splices`` from the held-out cameras' photos, and the ``benchmark`` harness on them
   (p-mAP, cIoU, detection AP for each model; NOI beside them).
4. ``eval-tags`` (train side vs held-out cameras): k-NN, zero-shot, linear probe, majority.
5. The radial-distortion linear probe (512-px crops, k1 ~ U[-0.4, 0], 20 bins) on frozen features,
   train photos vs held-out photos.

Writes ``OUT/results.json`` and ``OUT/results.md`` (the README's "Results at small scale" table),
with the number of photos, the steps, and the seconds each stage took.  Every stage reuses what a
previous run finished, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exiflang.errors import CommandError, check_out_dir, run_main
from exiflang.eval.forensics.settings import DetectorConfig
from exiflang.eval.images import expand_inputs

VARIANTS: dict[str, list[str]] = {
    "exif": [],  # the full method
    "cropclr": ["data.cropclr=true"],  # image-to-image, no metadata
    "model-tag": ["data.tags=[Model]"],  # single-tag supervision
}
# Full-scale YFCC numbers quoted by docs/design.md (paper Table 5 and the authors' README); not ours.
PAPER = {"tags_exif": 0.35, "tags_majority": 0.12, "columbia_p_map": 0.94, "columbia_det_map": 0.98}


class StageClock:
    """Seconds per stage, *added up* over invocations and kept in ``OUT/timings.json``.

    A stage resumed after an interruption counts the work of every invocation; a reused stage
    adds about nothing.  The file is rewritten after every stage, so a kill loses nothing.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        print(f"\n==> {name}", flush=True)
        result = fn()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - t, 1)
        self.path.write_text(json.dumps(self.seconds, indent=2) + "\n")
        return result


def training_seconds(run: Path, steps: int) -> float | None:
    """Training time of a run from its own log: median seconds per step x steps.

    The median of the logged windows (``samples_per_s``) ignores windows in which the run was
    paused or shared the machine, so a run trained across several sessions still gets a fair
    figure.  None without a log.
    """
    from exiflang.eval.report.html import read_jsonl
    from exiflang.train.config import load_config

    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    rates = sorted(r["samples_per_s"] for r in read_jsonl(path) if r.get("samples_per_s"))
    if not rates:
        return None
    batch = load_config(str(run / "config.yaml")).data.batch_size
    return round(steps * batch / rates[len(rates) // 2], 1)


def split_by_camera(photos_dir: Path, out: Path, test_fraction: float, seed: int) -> dict[str, Any]:
    """Symlink folders ``out/train`` and ``out/test`` (camera models disjoint); returns the split record.

    Links are named by a hash of the file name so a sorted folder (and every shard) mixes cameras.
    """
    from exiflang.eval.probes.distortion_probe import camera_keys, split_photos

    record_path = out / "split.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    photos = expand_inputs([str(photos_dir)])
    train, test = split_photos(photos, by="camera", test_fraction=test_fraction, seed=seed)
    keys = dict(zip(map(str, photos), camera_keys(photos)))
    for side, files in (("train", train), ("test", test)):
        folder = out / side
        folder.mkdir(parents=True, exist_ok=True)
        for p in files:
            digest = hashlib.sha1(p.name.encode()).hexdigest()[:10]
            link = folder / f"{digest}_{p.name}"
            if not link.exists():
                link.symlink_to(p.resolve())
    record: dict[str, Any] = {
        "photos": len(photos),
        "test_fraction": test_fraction,
        "seed": seed,
        "train": {"photos": len(train), "cameras": sorted({keys[str(p)] for p in train})},
        "test": {"photos": len(test), "cameras": sorted({keys[str(p)] for p in test})},
    }
    assert not set(record["train"]["cameras"]) & set(record["test"]["cameras"])
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def build_shards(source: Path, out: Path) -> None:
    from exiflang.pipeline.build_shards import main as shards_main

    if (out / "summary.json").is_file():
        return
    if shards_main(["--source", str(source), "--out", str(out), "--executor", "local", "--rows-per-shard", "64", "-q"]):
        raise RuntimeError(f"building shards from {source} failed")


def train_variant(name: str, shards: Path, runs: Path, steps: int, preset: str, seed: int) -> Path:
    """Train one variant (reused when its model folder exists); returns the model folder."""
    from exiflang.train.main import main as train_main

    run = runs / name
    if (run / "model" / "model.safetensors").is_file():
        print(f"{name}: already trained, reused")
        return run / "model"
    args = [
        "--data",
        str(shards),
        "--out",
        str(run),
        "--config",
        preset,
        f"run.steps={steps}",
        f"run.seed={seed}",
        f"run.ckpt_every={max(steps // 4, 1)}",
        *VARIANTS[name],
        "--resume",
        "latest",
    ]
    if train_main(args):
        raise RuntimeError(f"training {name} failed (see {run})")
    return run / "model"


def untrained_model(shards: Path, out: Path, preset: str, seed: int) -> Path:
    """The same architecture at random init, with the tokenizer and tags the trained models use."""
    import torch

    from exiflang.train.config import load_config
    from exiflang.train.engine import build_model, make_tokenizer, read_tags

    folder = out / "model"
    if (folder / "model.safetensors").is_file():
        return folder
    cfg = load_config(preset, [])
    cfg.data.data = str(shards)
    torch.manual_seed(seed)
    tokenizer = make_tokenizer(cfg)
    build_model(cfg, tokenizer).save_pretrained(folder, tokenizer, read_tags(cfg))
    return folder


def evaluate(name: str, model: Path, ctx: dict[str, Any], clock: StageClock) -> dict[str, Any]:
    """Splice benchmark, tag prediction and the distortion probe for one model folder."""
    from exiflang.eval.benchmark.run import run_benchmark
    from exiflang.eval.probes.distortion_probe import run_distortion_probe
    from exiflang.eval.tags.evaluate import eval_tags

    out: Path = ctx["out"] / "eval" / name
    res: dict[str, Any] = {}
    res["splices"] = clock.run(
        f"{name}: splice benchmark",
        lambda: run_benchmark(
            model,
            "folder",
            ctx["splices"],
            out / "splices",
            methods=("exif",),
            device=ctx["device"],
            per_side=ctx["per_side"],
            progress=ctx["progress"],
        ),
    )["methods"]["exif"]
    res["tags"] = clock.run(f"{name}: eval-tags", lambda: _tags(eval_tags, model, ctx, out))
    res["distortion"] = clock.run(
        f"{name}: radial-distortion probe",
        lambda: _cached(
            out / "distortion.json",
            lambda: run_distortion_probe(
                model,
                ctx["train_photos"],
                ctx["test_photos"],
                per_photo=ctx["per_photo"],
                seed=ctx["seed"],
                device=ctx["device"],
                progress=ctx["progress"],
            ),
        ),
    )
    return res


def _tags(eval_tags: Callable[..., dict], model: Path, ctx: dict[str, Any], out: Path) -> dict:
    # One vocabulary (the training shards') for every model, so the columns compare: the
    # Model-tag variant's own vocabulary is the single tag "Model", which held-out cameras
    # never share with training ones.
    vocab = json.loads((ctx["train_shards"] / "tags.json").read_text())["tags"]
    return _cached(
        out / "tags" / "tag_eval.json",
        lambda: eval_tags(
            model,
            ctx["train_shards"],
            ctx["test_shards"],
            out / "tags",
            device=ctx["device"],
            progress=ctx["progress"],
            vocab=vocab,
        ),
    )


def _cached(path: Path, make: Callable[[], dict]) -> dict:
    if path.is_file():
        return json.loads(path.read_text())
    result = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def results_markdown(results: dict[str, Any]) -> str:
    """The one table: every method side by side, then the setting it was measured in."""
    head = (
        "| method | splice p-mAP | cIoU | detection AP | tag acc. k-NN | zero-shot | probe | "
        "majority | distortion probe acc. | (majority) |"
    )
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for name, r in results["methods"].items():
        s, t, d = r.get("splices") or {}, (r.get("tags") or {}).get("average") or {}, r.get("distortion") or {}
        det = (s.get("detection") or {}).get(s.get("default_score") or "", {})
        lines.append(
            f"| {name} | {_f(s.get('p_map'))} | {_f(s.get('ciou'))} | {_f(det.get('ap'))} | "
            f"{_f(t.get('knn'))} | {_f(t.get('zero_shot'))} | {_f(t.get('probe'))} | "
            f"{_f(t.get('majority'))} | {_f(d.get('accuracy'))} | {_f(d.get('majority'))} |"
        )
    lines.append(
        f"| paper (full-scale YFCC, ResNet-50; not this run) | Columbia {PAPER['columbia_p_map']} | | "
        f"Columbia {PAPER['columbia_det_map']} | {PAPER['tags_exif']} (Table 5) | | | "
        f"{PAPER['tags_majority']} | | |"
    )
    sp = results["split"]
    lines += [
        "",
        f"{sp['photos']} photos: {sp['train']['photos']} for training "
        f"({len(sp['train']['cameras'])} camera models), {sp['test']['photos']} held out "
        f"({len(sp['test']['cameras'])} other models). Each model: `{results['preset']}`, "
        f"{results['steps']} steps. Splice set: {results['splice_count']} spliced + "
        f"{results['splice_count']} authentic. {_compute_line(results)}",
    ]
    return "\n".join(lines) + "\n"


def _compute_line(results: dict[str, Any]) -> str:
    """Training minutes per model (from each run's own step rate) and the evaluation's minutes."""
    train = results.get("training_seconds") or {}
    parts = [f"{name} {sec / 60:.0f}" for name, sec in train.items() if sec]
    evaluation = sum(v for k, v in results["timings"].items() if not k.startswith("train "))
    return (
        f"Compute: {results['cpus']} CPU cores; training "
        f"{', '.join(parts) or 'n/a'} minutes (median step time x steps); everything else "
        f"{evaluation / 60:.0f} minutes."
    )


def run_study(args: argparse.Namespace) -> dict[str, Any]:
    from exiflang.eval.benchmark.splices import make_splices

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clock = StageClock(out / "timings.json")
    split = clock.run(
        "split by camera model",
        lambda: split_by_camera(Path(args.photos), out / "split", args.test_fraction, args.seed),
    )
    ctx: dict[str, Any] = {
        "out": out,
        "device": args.device,
        "per_side": args.per_side,
        "seed": args.seed,
        "per_photo": args.per_photo,
        "progress": not args.quiet,
        "train_shards": out / "shards" / "train",
        "test_shards": out / "shards" / "test",
        "train_photos": expand_inputs([str(out / "split" / "train")]),
        "test_photos": expand_inputs([str(out / "split" / "test")]),
        "splices": out / "splices",
    }
    for side in ("train", "test"):
        build = functools.partial(build_shards, out / "split" / side, ctx[f"{side}_shards"])
        clock.run(f"shards: {side}", build)
    if not (ctx["splices"] / "manifest.csv").is_file():
        clock.run(
            "make-splices from the held-out cameras",
            lambda: make_splices(
                ctx["test_photos"], ctx["splices"], args.splices, seed=args.seed, progress=not args.quiet
            ),
        )
    models = {
        name: clock.run(
            f"train {name}",
            functools.partial(
                train_variant, name, ctx["train_shards"], out / "runs", args.steps, args.preset, args.seed
            ),
        )
        for name in VARIANTS
    }
    models["untrained"] = untrained_model(ctx["train_shards"], out / "runs" / "untrained", args.preset, args.seed)
    methods = {name: evaluate(name, model, ctx, clock) for name, model in models.items()}
    from exiflang.eval.benchmark.run import run_benchmark

    noi = clock.run(
        "NOI baseline: splice benchmark",
        lambda: run_benchmark(
            None, "folder", ctx["splices"], out / "eval" / "noi" / "splices", methods=("noi",), progress=not args.quiet
        ),
    )
    methods["NOI (hand-crafted)"] = {"splices": noi["methods"]["noi"]}
    results = {
        "split": split,
        "preset": args.preset,
        "steps": args.steps,
        "splice_count": args.splices,
        "per_side": args.per_side,
        "cpus": os.cpu_count(),
        "methods": methods,
        "timings": clock.seconds,
        "training_seconds": {name: training_seconds(out / "runs" / name, args.steps) for name in VARIANTS},
        "seconds_total": round(sum(clock.seconds.values()), 1),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.md").write_text(results_markdown(results))
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m exiflang.eval.study``: 0 done, 2 bad input (one line; :func:`exiflang.errors.run_main`)."""
    return run_main("exiflang study", _main, argv)


def _main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m exiflang.eval.study", description=__doc__.splitlines()[0])
    ap.add_argument("--photos", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"))
    ap.add_argument("--out", default="runs/study")
    ap.add_argument("--steps", type=int, default=3000, help="training steps per variant (same for all)")
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--test-fraction", type=float, default=0.3, help="share of camera models held out")
    ap.add_argument("--splices", type=int, default=30, help="spliced (and as many authentic) test images")
    ap.add_argument("--per-photo", type=int, default=8, help="distortion-probe crops per photo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--per-side",
        type=int,
        default=DetectorConfig.per_side,
        help="patches along a splice image's longest side in its benchmarks (default %(default)s, the "
        "authors' grid; fewer is faster and coarser)",
    )
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    if not Path(args.photos).is_dir():
        raise CommandError(args.photos, "photo folder not found")
    check_out_dir(args.out)
    results = run_study(args)
    print("\n" + results_markdown(results) + f"\nresults: {Path(args.out) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
