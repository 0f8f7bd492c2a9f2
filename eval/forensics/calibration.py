"""Detection verdicts: a model's reference detection scores on authentic photos, and where a new score falls.

``MODEL_DIR/calibration.json`` (written by ``exiflang calibrate --model M --photos AUTHENTIC_DIR``,
and by ``make demo`` on its held-out authentic photos) holds the detection scores of photos known
to be authentic, with the detector settings that produced them::

    {"format": "exiflang-detection-reference", "format_version": 1,
     "scores": {"score_mean_dist": [float, ...], "score_exp": [...]},   # one per photo, sorted
     "score": "score_mean_dist", "photos": int, "source": str,
     "settings": {"patch", "per_side", "tau", "legacy_negative", ...}, "band": [90.0, 99.0]}

A detection's ``percentile`` (0..100) is the share of reference scores below its score (ties
count half).  Its ``verdict``: ``"spliced"`` at or above the band's upper edge (99: more
inconsistent than 99 % of authentic photos), ``"inconclusive"`` inside the band (90..99),
``"authentic"`` below it, and ``"unknown"`` when the model has no reference, the reference is
too small (< :data:`MIN_PHOTOS`), or it was measured with other detector settings (another
grid measures another score).  The band is a choice, not a fit: 90 % of authentic photos come
out "authentic", about 1 % "spliced".
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REFERENCE = "calibration.json"
FORMAT = "exiflang-detection-reference"
FORMAT_VERSION = 1
BAND = (90.0, 99.0)  # percentiles: [authentic | inconclusive | spliced]
MIN_PHOTOS = 10  # fewer reference photos than this give no verdict
# Settings that change what a score measures; a reference only applies to detections made with the same.
MATCHED = ("patch", "per_side", "legacy_negative")
VERDICTS = ("spliced", "authentic", "inconclusive", "unknown")


@dataclass(frozen=True)
class Reference:
    """Sorted authentic-photo scores per score key, and what produced them."""

    scores: dict[str, np.ndarray]  # key -> float64 [n] ascending
    score: str = "score_mean_dist"  # the key verdicts use
    settings: dict[str, Any] = field(default_factory=dict)
    band: tuple[float, float] = BAND
    source: str = ""

    @property
    def photos(self) -> int:
        return int(len(self.scores.get(self.score, ())))

    def percentile(self, value: float, key: str | None = None) -> float:
        """0..100: the share of reference scores (of ``key``, default :attr:`score`) below ``value``, ties half."""
        ref = self.scores[key or self.score]
        below = np.searchsorted(ref, value, side="left")
        upto = np.searchsorted(ref, value, side="right")
        return float(100.0 * (below + 0.5 * (upto - below)) / len(ref))

    def applies_to(self, settings: dict[str, Any]) -> str | None:
        """``None`` when detections made with ``settings`` can be judged by this reference, else why not."""
        if self.photos < MIN_PHOTOS:
            return f"the reference has {self.photos} photos (at least {MIN_PHOTOS} needed)"
        keys = MATCHED + (("tau",) if self.score == "score_exp" else ())
        for k in keys:
            if k in self.settings and k in settings and not _same(self.settings[k], settings[k]):
                return f"the reference was measured with {k}={self.settings[k]}, this detection used {settings[k]}"
        return None

    def info(self) -> dict[str, Any]:
        """JSON-ready description (no score arrays)."""
        return {"photos": self.photos, "score": self.score, "band": list(self.band), "source": self.source}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-6)
    return a == b


def judge(scores: dict[str, float], ref: Reference | None, settings: dict[str, Any]) -> tuple[float | None, str, str]:
    """(percentile or None, verdict, why) for one detection's ``scores`` made with ``settings``."""
    if ref is None:
        return None, "unknown", "the model has no reference distribution (exiflang calibrate)"
    reason = ref.applies_to(settings)
    if reason is None and ref.score not in scores:
        reason = f"the detection has no {ref.score}"
    if reason is not None:
        return None, "unknown", reason
    p = ref.percentile(float(scores[ref.score]))
    lo, hi = ref.band
    verdict = "spliced" if p >= hi else "inconclusive" if p >= lo else "authentic"
    return round(p, 3), verdict, f"percentile {p:.1f} among {ref.photos} authentic photos"


def reference_from_scores(
    per_photo: Iterable[dict[str, float]],
    settings: dict[str, Any],
    source: str = "",
    score: str = "score_mean_dist",
    band: tuple[float, float] = BAND,
) -> Reference:
    """A :class:`Reference` from the score dicts of authentic photos (non-finite scores dropped)."""
    rows = list(per_photo)
    keys = sorted({k for r in rows for k in r})
    scores = {
        k: np.sort(np.asarray([r[k] for r in rows if k in r and math.isfinite(r[k])], dtype=np.float64)) for k in keys
    }
    if score not in scores:
        raise ValueError(f"no {score} among the reference scores ({', '.join(keys) or 'none'})")
    if not 0 <= band[0] <= band[1] <= 100:
        raise ValueError(f"band {band}: expected 0 <= low <= high <= 100")
    return Reference(scores, score, dict(settings), (float(band[0]), float(band[1])), source)


def save_reference(model_dir: str | os.PathLike[str], ref: Reference) -> Path:
    """Write ``MODEL_DIR/calibration.json`` atomically; returns its path."""
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "score": ref.score,
        "scores": {k: [float(x) for x in v] for k, v in ref.scores.items()},
        "photos": ref.photos,
        "settings": ref.settings,
        "band": list(ref.band),
        "source": ref.source,
        "created": time.time(),
    }
    folder = Path(model_dir)
    fd, tmp = tempfile.mkstemp(prefix=f".{REFERENCE}.", dir=folder)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, folder / REFERENCE)
    return folder / REFERENCE


def load_reference(model_dir: str | os.PathLike[str] | None) -> Reference | None:
    """``MODEL_DIR/calibration.json`` -> :class:`Reference`; None when there is none.

    A file that is there but unreadable is a one-line ``ValueError`` naming it (a damaged
    reference must not quietly turn every verdict into "unknown").
    """
    if model_dir is None:
        return None
    path = Path(model_dir) / REFERENCE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not an {FORMAT} file")
        scores = {str(k): np.sort(np.asarray(v, dtype=np.float64)) for k, v in doc["scores"].items()}
        band = tuple(float(b) for b in doc.get("band", BAND))
        ref = Reference(
            scores,
            str(doc.get("score", "score_mean_dist")),
            dict(doc.get("settings") or {}),
            (band[0], band[1]),
            str(doc.get("source", "")),
        )
        ref.scores[ref.score]
    except (OSError, ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a usable detection reference ({' '.join(str(exc).split())[:120]})") from None
    return ref
