"""Per-tag accuracy of predicting EXIF from pixels, averaged over tags (paper Table 5, "EXIF"): the evaluation.

The engine of ``exiflang eval-tags`` (the command line, the four predictors and the files written:
:mod:`exiflang.eval.tags.command`): :func:`eval_tags` embeds the train and test shards (or takes
embeddings already made), builds or reuses the train index, fits the tag classes
(:mod:`exiflang.eval.tags.classes`) and scores kNN, zero-shot, linear probe and majority per tag, as one
:class:`exiflang.eval.tags.settings.TagEvalConfig` says.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from exiflang.eval.embed.settings import EmbedConfig
from exiflang.eval.embed.store import Embeddings, check_model_against, load_embeddings
from exiflang.eval.index.votes import vote_classes
from exiflang.eval.tags.classes import TagClasses, fit_tag_classes
from exiflang.eval.tags.probe import probe_predict
from exiflang.eval.tags.report import averages, write_report
from exiflang.eval.tags.settings import TagEvalConfig
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
    config: EmbedConfig,
) -> Embeddings:
    """The given embeddings folder, or the ``split`` shards embedded into ``out/emb_SPLIT`` (resuming)."""
    if emb is None:
        if shards is None:
            raise ValueError(f"--{split} SHARDS or --{split}-emb EMB is required")
        from exiflang.eval.embed.run import embed_shards

        emb = str(embed_shards(model_dir, shards, out / f"emb_{split}", config))
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
    config: TagEvalConfig | None = None,
    *,
    train_emb: str | None = None,
    test_emb: str | None = None,
    index: str | None = None,
    **overrides: Any,
) -> dict:
    """Evaluate tag prediction; writes ``out/tag_eval.json`` + ``.md`` and returns the report dict.

    The data: the model folder, the ``train`` and ``test`` shards (or ``train_emb`` /
    ``test_emb`` embeddings already made, and an ``index`` of the train ones), the output folder.
    How: ``config`` (default :class:`TagEvalConfig`'s defaults) with ``overrides`` (field name ->
    value) applied.  Bad input: one-line ``FileNotFoundError``/``ValueError`` naming the file.
    """
    from exiflang.train.model import read_config

    config = (config or TagEvalConfig()).replace(**overrides)  # checks the values before any work
    model_dir, out = Path(model_dir), Path(out)
    k, seed, grid = config.k, config.seed, config.grid
    read_config(model_dir / "config.json")
    tr = load_or_embed(model_dir, train, train_emb, out, "train", config.embed_config())
    te = load_or_embed(model_dir, test, test_emb, out, "test", config.embed_config())
    for key in grid:
        if tr.meta.get(key) != te.meta.get(key):
            raise ValueError(f"train and test embeddings differ in {key}: {tr.meta.get(key)} vs {te.meta.get(key)}")
    if len(tr) == 0 or len(te) == 0:
        raise ValueError(f"no samples to evaluate ({len(tr)} train, {len(te)} test)")
    idx = load_or_build_index(model_dir, tr, index, out, k, seed)
    vocab = list(config.vocab) if config.vocab else _vocabulary(model_dir, train)
    train_exifs, test_exifs = _exifs(tr), _exifs(te)
    classes = fit_tag_classes(
        train_exifs, vocab, min_frac=config.min_frac, min_count=config.min_count, max_bins=config.max_bins
    )
    text = text_setup(model_dir, config.text_format)
    zero = zero_shot_predictor(model_dir, vocab, train_exifs, text, config.device)
    sims, ids = idx.search(np.ascontiguousarray(te.image, dtype=np.float32), min(k, len(tr)))
    tags, skipped = {}, {}
    for tag in tqdm(vocab, desc="tags", unit="tag", disable=not config.progress):
        tc = classes[tag]
        if not tc.evaluable:
            skipped[tag] = tc.reason
            continue
        y_train = tc.classify_many(e.get(tag) for e in train_exifs)
        y_test = tc.classify_many(e.get(tag) for e in test_exifs)
        if not (y_test >= 0).any():
            skipped[tag] = "no test photo has a value in a class"
            continue
        tags[tag] = score_tag(tc, y_train, y_test, tr, te, (sims, ids), zero, config.probe_c, config.weighted, seed)
    report = {
        "model": str(model_dir),
        "train": str(train_emb or train),
        "test": str(test_emb or test),
        "n_train": len(tr),
        "n_test": len(te),
        "k": k,
        "weighted": config.weighted,
        **{key: tr.meta.get(key) for key in grid},  # as embedded (prebuilt ones keep theirs)
        "text_format": text["requested"] if zero is not None else None,
        "probe_c": "cv" if config.probe_c is None else config.probe_c,
        "classes": {"min_frac": config.min_frac, "min_count": config.min_count, "max_bins": config.max_bins},
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
