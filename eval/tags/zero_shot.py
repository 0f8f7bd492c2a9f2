"""Zero-shot tag prediction: rank one candidate EXIF sentence per class through the text encoder.

A test photo's EXIF is unknown at test time, so the candidates cannot be built from it (the
held-out camera check in :mod:`exiflang.train.retrieval` may; here that would leak the answer).  Instead:

- a **template** EXIF holds, for every vocabulary tag, the train set's most common value;
- for tag ``t`` and each of its classes ``c``, the candidate is the template with ``t`` set to
  ``c``'s representative value (its most common raw train value, :mod:`exiflang.eval.tags.classes`);
- each candidate is rendered with :func:`exiflang.pipeline.exif.text.render_text` exactly as in training (the
  run's text format, value cleaning and maximum length; ``shuffled`` is rendered in vocabulary
  order, since a model trained on shuffled pairs saw every order) and embedded by the text tower;
- the prediction is the class whose candidate has the highest inner product with the photo's
  image embedding (both L2-normalised: cosine similarity).

Only the tag being predicted differs between a tag's candidates, so the ranking asks the model
which value of that tag fits the photo, everything else held at the most typical setting.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from exiflang.eval.tags.classes import TagClasses


def template_exif(exifs: Sequence[Mapping[str, str]], vocab: Sequence[str]) -> dict[str, str]:
    """Per vocabulary tag, its most common train value (ties: the smaller string); absent tags left out."""
    out: dict[str, str] = {}
    for tag in vocab:
        counts = Counter(str(e[tag]).strip() for e in exifs if e.get(tag) is not None)
        if counts:
            out[tag] = min(counts.items(), key=lambda vc: (-vc[1], vc[0]))[0]
    return out


def candidate_exifs(template: Mapping[str, str], classes: TagClasses) -> list[dict[str, str]]:
    """One EXIF dict per class of ``classes.tag``: the template with that tag set to the class's representative."""
    return [{**template, classes.tag: rep} for rep in classes.representative]


def candidate_keys(tag: str, n: int) -> list[str]:
    """Stable names for the candidates (the text encoder seeds ``shuffled`` rendering by key)."""
    return [f"zero-shot:{tag}:{i}" for i in range(n)]


class ZeroShot:
    """Candidate text embeddings per tag, and argmax predictions for image embeddings.

    ``text_encoder``: an :class:`exiflang.eval.embed.batch.TextEncoder` (or anything with
    ``embed(exifs, keys) -> float32 [n, D]``, rows L2-normalised).
    """

    def __init__(self, text_encoder: Any, template: Mapping[str, str]) -> None:
        self.text_encoder = text_encoder
        self.template = dict(template)

    def text_embeddings(self, classes: TagClasses) -> np.ndarray:
        """``float32 [C, D]``: one row per class of the tag."""
        cands = candidate_exifs(self.template, classes)
        return np.asarray(self.text_encoder.embed(cands, candidate_keys(classes.tag, len(cands))), dtype=np.float32)

    def predict(self, image: np.ndarray, classes: TagClasses, texts: np.ndarray | None = None) -> np.ndarray:
        """``float32 [N, D]`` image embeddings -> ``int64 [N]`` class ids (argmax of cosine similarity)."""
        texts = self.text_embeddings(classes) if texts is None else texts
        scores = np.asarray(image, dtype=np.float32) @ texts.T  # [N, C]
        return scores.argmax(1).astype(np.int64)
