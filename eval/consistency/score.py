"""Scoring one claimed EXIF against a photo's pixels: similarity, rank percentile, calibrated score, per-tag support.

For a photo embedding ``v`` (``float32 [D]``, the mean of its patch embeddings, re-normalised)
and a claimed EXIF ``c`` rendered exactly as in training (:class:`exiflang.eval.embed.batch.TextEncoder`):

- ``similarity`` = cos(v, text(c)), -1..1;
- ``percentile`` = the rank of that similarity among the reference's EXIF texts ``t_j``
  (100 * share of ``cos(v, t_j)`` below it, ties counted half), 0..100;
- ``z`` = (similarity - mean_j cos(v, t_j)) / std_j cos(v, t_j): the claim's margin over a typical
  EXIF in units of this photo's own spread (a photo's raw similarities all sit in a narrow band);
- ``score`` = P(consistent | z), a logistic fitted on the reference's own photos: each with its own
  EXIF (consistent) and with another reference photo's EXIF (inconsistent), in equal numbers;
  0..1, higher = the pixels agree with the claim.  ``verdict``: ``consistent`` at or above
  ``band[1]``, ``inconsistent`` at or below ``band[0]``, ``inconclusive`` between; ``no-exif``
  when the claim has no tag of the model's vocabulary; ``inconclusive`` whatever the score when
  the claim names a Make or Model no reference photo has (``reason`` says so: the model cannot
  judge a camera it has no reference for, and genuine photos of such cameras score low).  A
  reference without photo vectors cannot be calibrated: ``score`` is then the percentile / 100
  and ``calibrated`` is False.
- ``per_tag``: for each claimed vocabulary tag, the claim with that one tag set to each of the
  reference's most common other values; ``support`` = similarity(claim) - max similarity(swaps)
  (cosine units; negative = the pixels prefer ``best_alternative``), least supported first.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exiflang.eval.consistency.reference import Reference, distinct, sample_rows

BAND = (0.25, 0.75)
CAMERA_TAGS = ("Make", "Model")
EPS = 1e-6


@dataclass
class Calibration:
    """``P(consistent) = 1 / (1 + exp(-(a * z + b)))``, fitted on ``n_pos`` + ``n_neg`` reference pairs."""

    a: float
    b: float
    n_pos: int
    n_neg: int
    auc: float  # how well z separated the fitting pairs (in-sample, 0.5 = chance)

    def __call__(self, z: np.ndarray | float) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.a * np.asarray(z, dtype=np.float64) + self.b)))

    def to_json(self) -> dict:
        return {
            "a": round(self.a, 6),
            "b": round(self.b, 6),
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
            "fit_auc": round(self.auc, 4),
        }


@dataclass
class Check:
    """One claim's result (see the module docstring for every field's meaning and range)."""

    claimed: dict
    similarity: float
    percentile: float
    z: float
    score: float
    verdict: str
    calibrated: bool
    per_tag: list[dict] = field(default_factory=list)
    tags_used: int = 0
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        def num(x: float, nd: int = 6) -> float | None:
            return None if x is None or not math.isfinite(x) else round(float(x), nd)

        return {
            "verdict": self.verdict,
            "score": num(self.score, 4),
            "percentile": num(self.percentile, 2),
            "similarity": num(self.similarity),
            "z": num(self.z, 4),
            "calibrated": self.calibrated,
            "reason": self.reason,
            "tags_used": self.tags_used,
            "per_tag": self.per_tag,
            "claimed": self.claimed,
        }


def verdict_of(score: float, band: tuple[float, float] = BAND) -> str:
    if not math.isfinite(score):
        return "inconclusive"
    return "consistent" if score >= band[1] else "inconsistent" if score <= band[0] else "inconclusive"


class Checker:
    """A text encoder + a reference, ready to score photo embeddings against claimed EXIF.

    ``text_encoder``: :class:`exiflang.eval.embed.batch.TextEncoder` (its ``vocab`` and ``render``).
    ``max_texts``: reference EXIF texts ranked against (distinct texts, a seeded sample);
    ``max_calibration``: reference photos the calibration is fitted on; ``max_alternatives``:
    swapped values tried per tag.
    """

    def __init__(
        self,
        text_encoder: Any,
        reference: Reference,
        *,
        max_texts: int = 256,
        max_calibration: int = 256,
        max_alternatives: int = 4,
        band: tuple[float, float] = BAND,
        seed: int = 0,
    ) -> None:
        if not len(reference):
            raise ValueError(f"{reference.source}: the reference has no EXIF rows")
        self.text_encoder, self.reference, self.band = text_encoder, reference, band
        self.vocab = list(text_encoder.vocab)
        # A service's worker threads share this checker; Hugging Face fast tokenizers have raised
        # "Already borrowed" on concurrent calls (not seen with the pinned version): one at a time.
        self._text_lock = threading.Lock()
        self.max_alternatives = max_alternatives
        rows = distinct(reference.exifs, self._render)
        if not rows:
            raise ValueError(f"{reference.source}: no reference EXIF has a tag of the model's vocabulary")
        self.rows = [rows[i] for i in sample_rows(len(rows), max_texts, seed)]  # reference rows ranked against
        self.texts = self.embed_claims([reference.exifs[i] for i in self.rows])  # [R, D]
        self.alternatives = self._alternatives(reference.exifs)
        self._known = {t: set(v) for t, v in self.alternatives.items()}
        self.calibration = self._calibrate(max_calibration, seed) if reference.vectors is not None else None

    def _render(self, exif: dict) -> str:
        return self.text_encoder.render(exif, "check")

    def embed_claims(self, claims: Sequence[dict]) -> np.ndarray:
        """EXIF dicts -> ``float32 [n, D]`` text embeddings, rows L2-normalised."""
        if not claims:
            return np.zeros((0, 0), np.float32)
        with self._text_lock:
            return self.text_encoder.embed(list(claims), [f"check:{i}" for i in range(len(claims))])

    def _alternatives(self, exifs: Sequence[dict]) -> dict[str, list[str]]:
        """Per vocabulary tag, its reference values, most common first (ties: string order)."""
        out = {}
        for tag in self.vocab:
            counts = Counter(str(e[tag]).strip() for e in exifs if e.get(tag) is not None)
            out[tag] = [v for v, _ in sorted(counts.items(), key=lambda vc: (-vc[1], vc[0]))]
        return out

    def stats(self, vectors: np.ndarray, claim_text: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Photos ``[n, D]`` and their claims' texts ``[n, D]`` -> (similarity, percentile, z), each ``[n]``."""
        sims = np.einsum("nd,nd->n", vectors, claim_text).astype(np.float64)
        ref = vectors.astype(np.float64) @ self.texts.T.astype(np.float64)  # [n, R]
        below = (ref < sims[:, None]).sum(1) + 0.5 * (ref == sims[:, None]).sum(1)
        pct = 100.0 * below / ref.shape[1]
        z = (sims - ref.mean(1)) / (ref.std(1) + EPS)
        return sims, pct, z

    def _calibrate(self, limit: int, seed: int) -> Calibration | None:
        """Fit the logistic on reference photos with their own EXIF vs another photo's, reusing the
        ranked texts (both claims of every pair are reference texts: no extra text embedding)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import roc_auc_score

        pick = sample_rows(len(self.rows), limit, seed + 1)
        vectors = self.reference.vectors  # present: the constructor calls this only then
        if len(pick) < 4 or vectors is None:
            return None
        vec = vectors[[self.rows[i] for i in pick]]
        other = np.random.default_rng(seed + 2).permutation(len(pick))
        other = np.where(other == np.arange(len(pick)), (other + 1) % len(pick), other)  # never itself
        _, _, z_pos = self.stats(vec, self.texts[pick])
        _, _, z_neg = self.stats(vec, self.texts[pick[other]])
        x = np.concatenate([z_pos, z_neg])[:, None]
        y = np.concatenate([np.ones(len(z_pos)), np.zeros(len(z_neg))])
        fit = LogisticRegression(C=1.0).fit(x, y)
        return Calibration(
            float(fit.coef_[0, 0]), float(fit.intercept_[0]), len(z_pos), len(z_neg), float(roc_auc_score(y, x[:, 0]))
        )

    def used_tags(self, claimed: dict) -> list[str]:
        return [t for t in self.vocab if claimed.get(t) is not None and str(claimed[t]).strip()]

    def score_many(self, vectors: np.ndarray, claims: Sequence[dict]) -> list[Check]:
        """Photos ``float32 [n, D]`` with one claim each -> one :class:`Check` each (no per-tag)."""
        claims = [{str(k): str(v) for k, v in c.items()} for c in claims]
        has = [bool(self.used_tags(c)) for c in claims]
        out: list[Check] = []
        idx = [i for i, h in enumerate(has) if h]
        if idx:
            sims, pct, z = self.stats(np.asarray(vectors)[idx], self.embed_claims([claims[i] for i in idx]))
            score = self.calibration(z) if self.calibration is not None else pct / 100.0
        results = dict(zip(idx, zip(sims, pct, z, score))) if idx else {}
        for i, c in enumerate(claims):
            if i not in results:
                out.append(
                    Check(
                        c,
                        math.nan,
                        math.nan,
                        math.nan,
                        math.nan,
                        "no-exif",
                        self.calibration is not None,
                        reason="no tag of the model's vocabulary",
                    )
                )
                continue
            s, p, zz, sc = (float(x) for x in results[i])
            verdict, reason = verdict_of(sc, self.band), self.unknown_camera(c)
            if reason:
                verdict = "inconclusive"
            out.append(
                Check(
                    c,
                    s,
                    p,
                    zz,
                    sc,
                    verdict,
                    self.calibration is not None,
                    tags_used=len(self.used_tags(c)),
                    reason=reason,
                )
            )
        return out

    def unknown_camera(self, claimed: dict) -> str:
        """Why the claim cannot be judged ("" when it can): it names a camera (Make / Model) that
        no reference photo has.  The model has learnt nothing of such a camera, so a low score
        says nothing about the claim (genuine photos of unseen cameras score low too)."""
        unknown = [
            f"{t} {str(claimed[t]).strip()!r}"
            for t in CAMERA_TAGS
            if claimed.get(t) is not None
            and self.alternatives.get(t)
            and str(claimed[t]).strip() not in self._known.get(t, set())
        ]
        if not unknown:
            return ""
        verb = "is" if len(unknown) == 1 else "are"
        return f"the claimed {' and '.join(unknown)} {verb} not among the reference's cameras: not judged"

    def visible_tags(self, claimed: dict) -> set[str]:
        """The claimed vocabulary tags whose value lies within the text tower's ``max_length`` tokens
        (a longer text is cut, as in training: the model never sees the tags past the cut)."""
        used = self.used_tags(claimed)
        tok = getattr(self.text_encoder, "tokenizer", None)
        text = self._render(claimed)
        if tok is None or not getattr(tok, "is_fast", False):
            return set(used)
        with self._text_lock:
            enc = tok(text, truncation=True, max_length=self.text_encoder.max_length, return_offsets_mapping=True)
        last = max((e for _, e in enc["offset_mapping"]), default=0)
        out, pos = set(), 0
        for tag in used:  # rendered in vocabulary order (the checker renders without shuffling)
            value = str(claimed[tag]).strip()
            at = text.find(value, text.find(tag, pos) + len(tag) if tag in text[pos:] else pos)
            if at < 0:
                continue
            pos = at + len(value)
            if at < last:
                out.add(tag)
        return out

    def per_tag(self, vector: np.ndarray, claimed: dict, similarity: float) -> list[dict]:
        """Each claimed vocabulary tag's support (see the module docstring), least supported first;
        tags cut from the text (``seen`` False) come last with ``support`` None."""
        seen = self.visible_tags(claimed)
        swaps: list[dict] = []
        owner: list[tuple[str, str]] = []
        for tag in self.used_tags(claimed):
            if tag not in seen:
                continue
            mine = str(claimed[tag]).strip()
            for alt in [v for v in self.alternatives.get(tag, []) if v != mine][: self.max_alternatives]:
                swaps.append({**claimed, tag: alt})
                owner.append((tag, alt))
        sims = self.embed_claims(swaps) @ np.asarray(vector, dtype=np.float32) if swaps else np.zeros(0)
        best: dict[str, tuple[float, str]] = {}
        for (tag, alt), s in zip(owner, sims.tolist()):
            if tag not in best or s > best[tag][0]:
                best[tag] = (s, alt)
        rows = []
        for tag in self.used_tags(claimed):
            s_alt, best_alt = best.get(tag, (math.nan, None))
            support = similarity - s_alt if math.isfinite(s_alt) else math.nan
            rows.append(
                {
                    "tag": tag,
                    "claimed": str(claimed[tag]).strip(),
                    "support": None if not math.isfinite(support) else round(support, 6),
                    "best_alternative": best_alt,
                    "seen": tag in seen,
                }
            )
        rows.sort(key=lambda r: (r["support"] is None, r["support"] if r["support"] is not None else 0.0))
        return rows

    def check(self, vector: np.ndarray, claimed: dict, *, per_tag: bool = True) -> Check:
        """One photo ``float32 [D]`` and its claim -> :class:`Check` (with ``per_tag`` when asked)."""
        result = self.score_many(np.asarray(vector, dtype=np.float32)[None], [claimed])[0]
        if per_tag and result.verdict != "no-exif":
            result.per_tag = self.per_tag(vector, result.claimed, result.similarity)
        return result

    def info(self) -> dict[str, Any]:
        """What the scores were measured against (JSON-ready)."""
        return {
            "reference": self.reference.source,
            "reference_rows": len(self.reference),
            "reference_texts": int(self.texts.shape[0]),
            "band": list(self.band),
            "calibration": None if self.calibration is None else self.calibration.to_json(),
        }
