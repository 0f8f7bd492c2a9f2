"""`exiflang eval-tags`: per-tag accuracy of predicting EXIF from pixels, averaged over tags (paper Table 5, "EXIF").

    exiflang eval-tags --model MODEL_DIR --train SHARDS --test SHARDS --out DIR [-k 10]
                       [--train-emb EMB --test-emb EMB --index INDEX] [--per-side 4]
                       [--single-patch] [--patch-size 124] [--text-format F] [--probe-c 1.0|cv]
                       [--weighted] [--min-frac 0.01] [--min-count 2] [--max-bins 8]

Tag values are quantised into classes fitted on the train set (:mod:`exiflang.eval.tags.classes`: rare
values dropped, numeric tags binned); a test photo counts for a tag when its true value falls in
a class.  Four predictors, all from the image embedding alone:

(a) **kNN** — the ``k`` nearest train photos through the FAISS index vote with their classes
    (:func:`exiflang.eval.index.votes.vote_classes`; neighbours whose value is rare or absent do not vote; when
    none votes, the majority class is predicted);
(b) **zero-shot** — one candidate EXIF sentence per class ranked through the text encoder
    (:mod:`exiflang.eval.tags.zero_shot`); ``n/a`` for a CropCLR model (no text tower);
(c) **linear probe** — logistic regression on the frozen train embeddings (:mod:`exiflang.eval.tags.probe`);
(d) **majority** — the most frequent train class.

The train and test shards are embedded into ``OUT/emb_train`` and ``OUT/emb_test`` (resumable:
a rerun reuses finished shards) and the index is built into ``OUT/index`` (reused when it holds
exactly the train embeddings); ``--train-emb``/``--test-emb``/``--index`` take ones already built
(their grid is used, whatever ``--per-side``/``--patch-size`` say; train and test must agree).
Results: ``OUT/tag_eval.json`` and ``OUT/tag_eval.md`` (:mod:`exiflang.eval.tags.report`); the Markdown
is printed.  Exit status: 0 done, 2 bad input or usage (one line on stderr, ``exiflang eval-tags:
error: FILE: reason``; :mod:`exiflang.errors`).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from exiflang.errors import CommandError, check_out_dir, run_main
from exiflang.eval.embed.store import Embeddings, check_model_against, load_embeddings
from exiflang.eval.index.votes import vote_classes
from exiflang.eval.tags.classes import TagClasses, fit_tag_classes
from exiflang.eval.tags.probe import probe_predict
from exiflang.eval.tags.report import averages, markdown, write_report
from exiflang.eval.tags.zero_shot import ZeroShot, template_exif

log = logging.getLogger("exiflang.eval")


def _exifs(emb: Embeddings) -> list[dict[str, str]]:
    return [json.loads(s) if isinstance(s, str) and s else {} for s in emb.table["exif"]]


def _same_rows(a: Any, b: Any) -> bool:
    """Do two tables list the same samples in the same order (key and shard)?"""
    if len(a) != len(b):
        return False
    cols = [c for c in ("key", "shard") if c in a.columns and c in b.columns]
    return all((a[c].astype(str).to_numpy() == b[c].astype(str).to_numpy()).all() for c in cols)


def load_or_embed(
    model_dir: Path,
    shards: str | Path | None,
    emb: str | None,
    out: Path,
    split: str,
    grid: dict,
    device: str,
    batch_size: int,
    progress: bool,
) -> Embeddings:
    """The given embeddings folder, or the ``split`` shards embedded into ``out/emb_SPLIT`` (resuming)."""
    if emb is None:
        if shards is None:
            raise ValueError(f"--{split} SHARDS or --{split}-emb EMB is required")
        from exiflang.eval.embed.run import embed_shards

        emb = str(
            embed_shards(
                model_dir, shards, out / f"emb_{split}", device=device, batch_size=batch_size, progress=progress, **grid
            )
        )
    loaded = load_embeddings(emb)
    check_model_against(loaded.meta.get("model_signature", {}), model_dir, Path(emb) / "meta.json")
    return loaded


def load_or_build_index(model_dir: Path, train: Embeddings, index: str | None, out: Path, k: int, seed: int) -> Any:
    """The given index (which must hold exactly ``train``), or one built into ``out/index``."""
    from exiflang.eval.index.run import VectorIndex, build_index

    if index is None:
        folder = out / "index"
        try:
            idx = VectorIndex.load(folder)
            if _same_rows(idx.table, train.table):
                idx.check_model(model_dir)
                return idx
        except (FileNotFoundError, ValueError):
            pass  # absent or stale: rebuilt below
        build_index(train, folder, k=k, seed=seed)
        index = str(folder)
    idx = VectorIndex.load(index)
    idx.check_model(model_dir)
    if not _same_rows(idx.table, train.table):
        raise ValueError(
            f"{index}: the index does not hold the train embeddings ({len(idx.table)} "
            f"rows vs {len(train)}); build it from them with `exiflang index`"
        )
    return idx


def text_setup(model_dir: Path, text_format: str | None) -> dict:
    """Text rendering for zero-shot: explicit ``text_format``, else the training run's, else ``paper``."""
    from exiflang.eval.embed.run import run_config

    cfg = run_config(model_dir)
    fmt = text_format or cfg.get("text_format") or "paper"
    # A model trained on shuffled pairs saw every order; vocabulary order is one of them.
    return {
        "fmt": "paper" if fmt == "shuffled" else fmt,
        "requested": fmt,
        "clean": bool(cfg.get("clean_values", False)),
        "max_length": cfg.get("max_text_len"),
    }


def zero_shot_predictor(
    model_dir: Path, vocab: list[str], train_exifs: list[dict], text: dict, device: str
) -> ZeroShot | None:
    """A :class:`ZeroShot` over the model's text tower, or ``None`` for a model without one."""
    from exiflang.eval.embed.batch import TextEncoder
    from exiflang.eval.embed.patches import resolve_device
    from exiflang.train.model import ExifClip

    model, tokenizer, _ = ExifClip.from_pretrained(model_dir)
    if model.text is None or tokenizer is None:
        return None
    dev = resolve_device(device)
    encoder = TextEncoder(
        model.to(dev), tokenizer, vocab, text["fmt"], clean=text["clean"], max_length=text["max_length"], device=dev
    )
    return ZeroShot(encoder, template_exif(train_exifs, vocab))


def _accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    return float((pred == truth).mean()) if len(truth) else float("nan")


def score_tag(
    tc: TagClasses,
    y_train: np.ndarray,
    y_test: np.ndarray,
    train: Embeddings,
    test: Embeddings,
    knn: tuple[np.ndarray, np.ndarray],
    zero: ZeroShot | None,
    probe_c: float | None,
    weighted: bool,
    seed: int,
) -> dict:
    """One tag's four accuracies over the test rows with a class (``y_test >= 0``)."""
    n_cls = len(tc.labels)
    scored = y_test >= 0
    truth = y_test[scored]
    has = y_train >= 0
    majority = int(np.bincount(y_train[has], minlength=n_cls).argmax())
    sims, ids = knn
    neighbour_cls = np.where(ids >= 0, y_train[np.maximum(ids, 0)], -1)
    knn_pred, _ = vote_classes(neighbour_cls[scored], sims[scored], n_cls, weighted=weighted)
    knn_pred[knn_pred < 0] = majority
    zs = None if zero is None else _accuracy(zero.predict(test.image[scored], tc), truth)
    probe_pred, c_used = probe_predict(train.image[has], y_train[has], test.image[scored], probe_c, seed)
    return {
        "kind": tc.kind,
        "n_classes": n_cls,
        "n_train": int(has.sum()),
        "n_test": int(scored.sum()),
        "labels": tc.labels,
        "majority_class": tc.labels[majority],
        "probe_c": c_used,
        "accuracy": {
            "knn": _accuracy(knn_pred, truth),
            "zero_shot": zs,
            "probe": _accuracy(probe_pred, truth),
            "majority": _accuracy(np.full(len(truth), majority), truth),
        },
    }


def eval_tags(
    model_dir: str | Path,
    train: str | Path | None,
    test: str | Path | None,
    out: str | Path,
    k: int = 10,
    *,
    train_emb: str | None = None,
    test_emb: str | None = None,
    index: str | None = None,
    patch: int = 124,
    per_side: int = 4,
    mode: str = "grid",
    device: str = "auto",
    batch_size: int = 256,
    text_format: str | None = None,
    probe_c: float | None = 1.0,
    weighted: bool = False,
    min_frac: float = 0.01,
    min_count: int = 2,
    max_bins: int = 8,
    seed: int = 0,
    progress: bool = True,
    vocab: list[str] | None = None,
) -> dict:
    """Evaluate tag prediction; writes ``out/tag_eval.json`` + ``.md`` and returns the report dict.

    ``vocab``: the tags to score (default: the model's vocabulary, else the train shards'); a
    study comparing models trained on different vocabularies passes one list to all of them.

    ``probe_c=None`` chooses the probe's C by cross-validation.  Bad input: one-line
    ``FileNotFoundError``/``ValueError`` naming the file.
    """
    from exiflang.train.model import read_config

    model_dir, out = Path(model_dir), Path(out)
    if k < 1:
        raise ValueError(f"k={k}: must be at least 1")
    read_config(model_dir / "config.json")
    grid = {"patch": patch, "per_side": per_side, "mode": mode}
    tr = load_or_embed(model_dir, train, train_emb, out, "train", grid, device, batch_size, progress)
    te = load_or_embed(model_dir, test, test_emb, out, "test", grid, device, batch_size, progress)
    for key in ("patch", "per_side", "mode"):
        if tr.meta.get(key) != te.meta.get(key):
            raise ValueError(f"train and test embeddings differ in {key}: {tr.meta.get(key)} vs {te.meta.get(key)}")
    if len(tr) == 0 or len(te) == 0:
        raise ValueError(f"no samples to evaluate ({len(tr)} train, {len(te)} test)")
    idx = load_or_build_index(model_dir, tr, index, out, k, seed)
    vocab = list(vocab) if vocab else _vocabulary(model_dir, train)
    train_exifs, test_exifs = _exifs(tr), _exifs(te)
    classes = fit_tag_classes(train_exifs, vocab, min_frac=min_frac, min_count=min_count, max_bins=max_bins)
    text = text_setup(model_dir, text_format)
    zero = zero_shot_predictor(model_dir, vocab, train_exifs, text, device)
    sims, ids = idx.search(np.ascontiguousarray(te.image, dtype=np.float32), min(k, len(tr)))
    tags, skipped = {}, {}
    for tag in tqdm(vocab, desc="tags", unit="tag", disable=not progress):
        tc = classes[tag]
        if not tc.evaluable:
            skipped[tag] = tc.reason
            continue
        y_train = tc.classify_many(e.get(tag) for e in train_exifs)
        y_test = tc.classify_many(e.get(tag) for e in test_exifs)
        if not (y_test >= 0).any():
            skipped[tag] = "no test photo has a value in a class"
            continue
        tags[tag] = score_tag(tc, y_train, y_test, tr, te, (sims, ids), zero, probe_c, weighted, seed)
    report = {
        "model": str(model_dir),
        "train": str(train_emb or train),
        "test": str(test_emb or test),
        "n_train": len(tr),
        "n_test": len(te),
        "k": k,
        "weighted": weighted,
        **{key: tr.meta.get(key) for key in grid},  # as embedded (prebuilt ones keep theirs)
        "text_format": text["requested"] if zero is not None else None,
        "probe_c": "cv" if probe_c is None else probe_c,
        "classes": {"min_frac": min_frac, "min_count": min_count, "max_bins": max_bins},
        "tags": tags,
        "average": averages(tags),
        "n_tags_evaluated": len(tags),
        "skipped": skipped,
    }
    write_report(report, out)
    return report


def _vocabulary(model_dir: Path, train: str | Path | None) -> list[str]:
    """The model's ``tags.json`` tag list (as trained: it may be a single-tag override); else the
    train shards' ``tags.json`` (checked against its hash)."""
    from exiflang.eval.embed.store import read_json
    from exiflang.train.data.samples import load_vocabulary

    path = model_dir / "tags.json"
    if path.is_file():
        doc = read_json(path, "model vocabulary")
        tags = doc.get("tags") if isinstance(doc, dict) else None
        if not isinstance(tags, list) or not tags:
            raise ValueError(f"{path}: no non-empty 'tags' list")
        return [str(t) for t in tags]
    if train is None:
        raise FileNotFoundError(f"{path}: missing, and no --train shards to take the vocabulary from")
    return list(load_vocabulary(Path(train) / "tags.json"))


def _probe_c(text: str) -> float | None:
    if text.lower() == "cv":
        return None
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: C must be positive")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="exiflang eval-tags",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--model", required=True, help="model folder")
    ap.add_argument("--train", help="train shards (the index and the classes are built from them)")
    ap.add_argument("--test", help="held-out shards")
    ap.add_argument("--out", required=True, help="output folder (embeddings, index, tag_eval.json/.md)")
    ap.add_argument("--train-emb", help="train embeddings already made (`exiflang embed`)")
    ap.add_argument("--test-emb", help="test embeddings already made")
    ap.add_argument("--index", help="index of the train embeddings already built (`exiflang index`)")
    ap.add_argument("-k", type=int, default=10, help="neighbours per vote (default 10)")
    ap.add_argument("--weighted", action="store_true", help="similarity-weighted kNN votes")
    ap.add_argument("--patch-size", type=int, default=124)
    ap.add_argument("--per-side", type=int, default=4, help="grid of per_side^2 patches per photo (default 4)")
    ap.add_argument("--single-patch", action="store_true", help="embed the centre patch only")
    ap.add_argument(
        "--text-format",
        choices=("paper", "code", "values", "shuffled"),
        help="zero-shot text format (default: the training run's config.yaml, else paper)",
    )
    ap.add_argument("--probe-c", type=_probe_c, default=1.0, help="probe's C, or 'cv' (default 1.0)")
    ap.add_argument("--min-frac", type=float, default=0.01, help="a class needs this share of train images")
    ap.add_argument("--min-count", type=int, default=2, help="... and at least this many (default 2)")
    ap.add_argument("--max-bins", type=int, default=8, help="bins per numeric tag (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point; prints the Markdown table.  0 done, 2 bad input or usage (:func:`exiflang.errors.run_main`)."""
    return run_main("exiflang eval-tags", _main, argv)


def _main(argv: list[str]) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    check_out_dir(args.out)  # before anything is embedded: a bad --out costs nothing
    try:
        report = eval_tags(
            args.model,
            args.train,
            args.test,
            args.out,
            args.k,
            train_emb=args.train_emb,
            test_emb=args.test_emb,
            index=args.index,
            patch=args.patch_size,
            per_side=args.per_side,
            mode="single" if args.single_patch else "grid",
            device=args.device,
            batch_size=args.batch_size,
            text_format=args.text_format,
            probe_c=args.probe_c,
            weighted=args.weighted,
            min_frac=args.min_frac,
            min_count=args.min_count,
            max_bins=args.max_bins,
            seed=args.seed,
            progress=not args.no_progress,
        )
    except RuntimeError as exc:  # torch or faiss: a device it cannot use, weights that do not fit
        raise CommandError(None, str(exc)) from exc
    print(markdown(report), end="")
    print(f"written: {Path(args.out) / 'tag_eval.json'}, {Path(args.out) / 'tag_eval.md'}")
    return 0
