"""The radial-distortion linear probe: frozen image features of distorted crops -> k1 bin.

The paper's probe (issue 6): 512x512 crops distorted with k1 ~ U[-0.4, 0] (see
:mod:`exiflang.eval.probes.distortion`), k1 quantised into 20 bins, a linear classifier on frozen features,
accuracy against the majority baseline.  Photos are split before any crop is cut, so no photo
has crops on both sides.

Features (``features=``):

- ``embed`` (default): the joint-space embedding the model was trained for — the mean of a
  4x4 :func:`exiflang.eval.embed.patches.even_grid` of 124-px patch embeddings over the crop, re-normalised
  (:meth:`exiflang.eval.embed.patches.PatchEmbedder.embed_photo`); ``[D]`` (128 for cpu-small, 768 for paper);
- ``pooled``: the ResNet's global-average-pooled feature of the whole 512-px crop, before the
  projection (``model.image.backbone(...).pooler_output``); ``[C]`` (256 / 2048).

Classifier: scikit-learn ``LogisticRegression`` (multinomial, L2, ``C`` = 1.0 unless given) on
features standardised with the training set's mean and deviation.  Majority baseline: the most
frequent training bin, scored on the test crops.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exiflang.command import Command
from exiflang.errors import CommandError
from exiflang.eval.embed.patches import PatchEmbedder, cut_patches, even_grid, normalise_image
from exiflang.eval.images import expand_inputs, open_checked
from exiflang.eval.probes import distortion as dist

log = logging.getLogger("exiflang.eval")
FEATURES = ("embed", "pooled")
FeatureFn = Callable[[np.ndarray], np.ndarray]  # uint8 [B, crop, crop, 3] -> float32 [B, F]


def feature_function(model: Any, features: str = "embed", device: str = "auto", batch_size: int = 32) -> FeatureFn:
    """``crops uint8 [B,S,S,3] -> float32 [B,F]`` from an :class:`exiflang.train.model.ExifClip` (see module doc)."""
    if features not in FEATURES:
        raise ValueError(f"features {features!r}: expected one of {FEATURES}")
    embedder = PatchEmbedder(model, device=device, batch_size=256)
    if features == "embed":
        return lambda crops: grid_embeddings(embedder, crops)

    backbone = embedder.model.image.backbone

    @torch.no_grad()
    def pooled(crops: np.ndarray) -> np.ndarray:
        parts = []
        for start in range(0, len(crops), batch_size):
            x = torch.stack([normalise_image(c) for c in crops[start : start + batch_size]])
            out = backbone(x.to(embedder.device), return_dict=True).pooler_output
            parts.append(out.flatten(1).float().cpu().numpy())
        return np.concatenate(parts).astype(np.float32)

    return pooled


def grid_embeddings(embedder: PatchEmbedder, crops: np.ndarray, patch: int = 124, per_side: int = 4) -> np.ndarray:
    """``uint8 [B,S,S,3]`` -> ``float32 [B,D]``: per crop the re-normalised mean of its
    ``per_side**2`` even-grid patch embeddings — :meth:`PatchEmbedder.embed_photo` for a whole
    batch of crops at once (all patches of all crops share the model's batches)."""
    grid = even_grid(crops.shape[1], crops.shape[2], patch, per_side)
    patches = torch.cat([cut_patches(normalise_image(c), grid.corners(), patch) for c in crops])
    emb = torch.cat(
        [
            embedder.embed_tensor(patches[i : i + embedder.batch_size])
            for i in range(0, len(patches), embedder.batch_size)
        ]
    )
    mean = emb.view(len(crops), grid.count, -1).mean(1)
    return torch.nn.functional.normalize(mean, dim=-1).numpy().astype(np.float32)


def probe(
    features_train: np.ndarray,
    y_train: np.ndarray,
    features_test: np.ndarray,
    y_test: np.ndarray,
    *,
    k1_test: np.ndarray | None = None,
    n_bins: int = dist.N_BINS,
    k1_range: tuple[float, float] = dist.K1_RANGE,
    C: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit the linear probe on ``[N,F]`` features and bins ``int [N]``; score it on the test set.

    Returns ``accuracy``, ``majority`` (accuracy of always answering the most frequent training
    bin), ``chance`` (1 / n_bins), ``within_one_bin`` (|predicted - true bin| <= 1), ``mae_k1``
    and ``mae_k1_majority`` (mean |bin centre - true k1|; true k1 = ``k1_test`` when given, else
    the true bin's centre), ``n_train``, ``n_test``, ``feature_dim``, ``per_bin_accuracy``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    y_train, y_test = np.asarray(y_train, dtype=np.int64), np.asarray(y_test, dtype=np.int64)
    if len(y_train) == 0 or len(y_test) == 0:
        raise ValueError(f"the probe needs training and test crops (got {len(y_train)} and {len(y_test)})")
    values, counts = np.unique(y_train, return_counts=True)
    majority_bin = int(values[np.argmax(counts)])  # ties: the lowest bin, deterministically
    if len(values) < 2:  # one class: nothing to learn, the probe is the majority answer
        pred = np.full(len(y_test), majority_bin)
    else:
        scaler = StandardScaler().fit(features_train)
        clf = LogisticRegression(C=C, max_iter=3000, random_state=seed)
        clf.fit(scaler.transform(features_train), y_train)
        pred = clf.predict(scaler.transform(features_test))
    centres = dist.bin_centres(n_bins, k1_range)
    truth = centres[y_test] if k1_test is None else np.asarray(k1_test, dtype=np.float64)
    per_bin = {int(b): float(np.mean(pred[y_test == b] == b)) for b in np.unique(y_test)}
    return {
        "accuracy": float(np.mean(pred == y_test)),
        "majority": float(np.mean(y_test == majority_bin)),
        "chance": 1.0 / n_bins,
        "within_one_bin": float(np.mean(np.abs(pred - y_test) <= 1)),
        "mae_k1": float(np.mean(np.abs(centres[pred] - truth))),
        "mae_k1_majority": float(np.mean(np.abs(centres[majority_bin] - truth))),
        "majority_bin": majority_bin,
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "feature_dim": int(np.asarray(features_train).shape[1]),
        "C": C,
        "per_bin_accuracy": per_bin,
    }


def _features_of(
    photos: Sequence[Path],
    fn: FeatureFn,
    per_photo: int,
    seed: int,
    crop: int,
    skipped: list[str],
    desc: str,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features ``[N,F]``, k1 ``[N]`` and photo index ``[N]`` of one split, one photo in memory at a time."""
    from tqdm import tqdm

    feats, k1s, idx = [], [], []
    for index, crops, k1, reason in tqdm(
        dist.iter_probe_crops(photos, per_photo, seed, crop),
        total=len(photos),
        desc=desc,
        disable=not progress,
        unit="photo",
        dynamic_ncols=True,
    ):
        if crops is None:
            log.warning("skipped %s", reason)
            skipped.append(reason)
            continue
        feats.append(fn(crops))
        k1s.append(k1)
        idx.append(np.full(len(k1), index, dtype=np.int64))
    if not feats:
        return np.zeros((0, 0), np.float32), np.zeros(0), np.zeros(0, np.int64)
    return np.concatenate(feats), np.concatenate(k1s), np.concatenate(idx)


def run_distortion_probe(
    model: str | Path | torch.nn.Module | FeatureFn,
    photos_train: Sequence[Path],
    photos_test: Sequence[Path],
    *,
    per_photo: int = 8,
    seed: int = 0,
    crop: int = 512,
    features: str = "embed",
    C: float = 1.0,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """The whole probe: crops -> frozen features -> logistic regression -> scores (a JSON-able dict).

    ``model``: a model folder, a loaded :class:`exiflang.train.model.ExifClip`, or a feature function
    ``uint8 [B,crop,crop,3] -> float32 [B,F]``.  ``photos_train``/``photos_test`` must not share a
    photo (``ValueError`` otherwise).  The result holds :func:`probe`'s scores plus counts, the
    skipped photos with reasons, the settings, and seconds spent.
    """
    overlap = {Path(p).resolve() for p in photos_train} & {Path(p).resolve() for p in photos_test}
    if overlap:
        raise ValueError(f"{len(overlap)} photos are in both splits, e.g. {sorted(overlap)[0]}")
    t0 = time.perf_counter()
    if isinstance(model, (str, Path)):
        from exiflang.train.model import ExifClip

        model = ExifClip.from_pretrained(model).model
    fn = model if not isinstance(model, torch.nn.Module) else feature_function(model, features, device)
    skipped: list[str] = []
    f_tr, k_tr, i_tr = _features_of(photos_train, fn, per_photo, seed, crop, skipped, "probe train", progress)
    f_te, k_te, i_te = _features_of(photos_test, fn, per_photo, seed, crop, skipped, "probe test", progress)
    t_feat = time.perf_counter() - t0
    if len(k_tr) == 0 or len(k_te) == 0:
        raise ValueError(
            f"no usable photos in the {'training' if len(k_tr) == 0 else 'test'} split ({len(skipped)} skipped)"
        )
    scores = probe(f_tr, dist.k1_bins(k_tr), f_te, dist.k1_bins(k_te), k1_test=k_te, C=C, seed=seed)
    return {
        **scores,
        "features": features if isinstance(model, torch.nn.Module) else "custom",
        "per_photo": per_photo,
        "seed": seed,
        "crop": crop,
        "k1_range": list(dist.K1_RANGE),
        "bins": dist.N_BINS,
        "photos_train": int(len(np.unique(i_tr))),
        "photos_test": int(len(np.unique(i_te))),
        "skipped": skipped,
        "seconds": {"features": round(t_feat, 3), "total": round(time.perf_counter() - t0, 3)},
    }


def camera_keys(photos: Sequence[Path]) -> list[str]:
    """Make + Model per photo: from a ``manifest.csv`` beside it (columns file, make, model), else
    from the photo's own EXIF (Pillow), else the file name (a camera of its own)."""
    manifests: dict[Path, dict[str, str]] = {}
    keys = []
    for p in map(Path, photos):
        if p.parent not in manifests:
            table = p.parent / "manifest.csv"
            rows = list(csv.DictReader(table.open(newline=""))) if table.is_file() else []
            manifests[p.parent] = {
                r["file"]: f"{r.get('make', '')} {r.get('model', '')}".strip() for r in rows if r.get("file")
            }
        key = manifests[p.parent].get(p.name, "")
        if not key:
            try:
                with open_checked(p.read_bytes(), p) as img:  # the image policy, header only
                    exif = img.getexif()
                key = f"{exif.get(0x010F, '')} {exif.get(0x0110, '')}".strip()  # Make, Model
            except Exception:  # noqa: BLE001 - unreadable: the probe reports it later; here it is its own group
                key = ""
        keys.append(key or f"file:{p.name}")
    return keys


def split_photos(
    photos: Sequence[Path], by: str = "camera", test_fraction: float = 0.5, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """``(train, test)``: ``by="camera"`` puts whole camera models (:func:`camera_keys`) on one side
    (``test_fraction`` of the models, rounded, at least one each side); ``by="photo"`` splits photos."""
    if by not in ("camera", "photo"):
        raise ValueError(f"split {by!r}: expected camera or photo")
    photos = [Path(p) for p in photos]
    keys = camera_keys(photos) if by == "camera" else [str(p) for p in photos]
    groups = sorted(set(keys))
    if len(groups) < 2:
        raise ValueError(
            f"need at least 2 {'camera models' if by == 'camera' else 'photos'} to split, found {len(groups)}"
        )
    order = np.random.default_rng(seed).permutation(len(groups))
    n_test = min(max(1, int(round(test_fraction * len(groups)))), len(groups) - 1)
    test_groups = {groups[i] for i in order[:n_test]}
    train = [p for p, k in zip(photos, keys) if k not in test_groups]
    test = [p for p, k in zip(photos, keys) if k in test_groups]
    return train, test


PROG = "python -m exiflang.eval.probes.distortion_probe"
COMMAND_DOC = """Radial-distortion linear probe: distorted 512-px crops (k1 ~ U[-0.4, 0], 20 bins) -> frozen
image features -> logistic regression; accuracy vs the majority baseline.

Writes OUT/distortion.json (the scores, counts, skipped photos and settings) and prints one summary
line.  Exit status: 0 done (skipped photos are listed in the JSON and on stderr); 2 bad usage or
input (one line on stderr, naming the file).
"""


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Declare the probe command's arguments."""
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model folder (exiflang format)")
    src.add_argument(
        "--random-init",
        metavar="PRESET",
        help="an untrained model of this preset (e.g. cpu-small), seeded with --seed: the untrained-encoder reference",
    )
    ap.add_argument("--photos", nargs="+", required=True, help="photo files or folders")
    ap.add_argument("--out", required=True, help="output folder (distortion.json)")
    ap.add_argument("--per-photo", type=int, default=8, help="crops per photo (default 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--features", choices=FEATURES, default="embed")
    ap.add_argument(
        "--split",
        choices=("camera", "photo"),
        default="camera",
        help="camera: no camera model on both sides (default); photo: by photo",
    )
    ap.add_argument("--test-fraction", type=float, default=0.5)
    ap.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the classifier")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-progress", action="store_true")


def _load_model(args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    from exiflang.train.model import ExifClip, ModelConfig

    if args.model:
        return ExifClip.from_pretrained(args.model).model, str(args.model)
    torch.manual_seed(args.seed)
    return ExifClip(ModelConfig.preset(args.random_init)).eval(), f"random-init {args.random_init}"


def run(args: argparse.Namespace) -> int:
    """Run the probe, write OUT/distortion.json, print the summary; bad input raises (exit 2)."""
    if args.per_photo < 1 or args.crop < 124 or not 0 < args.test_fraction < 1:
        raise CommandError(None, "need --per-photo >= 1, --crop >= 124 and 0 < --test-fraction < 1")
    photos = expand_inputs(args.photos)
    if not photos:
        raise CommandError(None, f"{' '.join(args.photos)}: no photos found")
    train, test = split_photos(photos, args.split, args.test_fraction, args.seed)
    model, name = _load_model(args)
    result = run_distortion_probe(
        model,
        train,
        test,
        per_photo=args.per_photo,
        seed=args.seed,
        crop=args.crop,
        features=args.features,
        C=args.C,
        device=args.device,
        progress=not args.no_progress,
    )
    result.update(model=name, split=args.split, photos=[str(p) for p in args.photos])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distortion.json").write_text(json.dumps(result, indent=2) + "\n")
    for reason in result["skipped"]:
        print(f"skipped {reason}", file=sys.stderr)
    print(
        f"distortion probe ({result['features']}, {result['photos_train']}+{result['photos_test']} photos, "
        f"{result['n_train']}+{result['n_test']} crops): accuracy {result['accuracy']:.3f}, "
        f"majority {result['majority']:.3f}, chance {result['chance']:.3f}, "
        f"k1 MAE {result['mae_k1']:.3f} (majority {result['mae_k1_majority']:.3f})"
    )
    print(f"wrote {out / 'distortion.json'}")
    return 0


COMMAND = Command(prog=PROG, doc=COMMAND_DOC, add_arguments=add_arguments, run=run, log_level=logging.INFO)
main = COMMAND.main

if __name__ == "__main__":
    sys.exit(main())
