"""The tag evaluation's settings: one typed object, built once (CLI or caller) and passed down.

Light on purpose (no numpy, no torch): ``exiflang eval-tags --help`` builds its parser from here
without importing the evaluation.  What each setting does: :func:`exiflang.eval.tags.evaluate.eval_tags`.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

from exiflang.eval.embed.settings import PATCH, PER_SIDE, EmbedConfig, grid_settings


@dataclass(frozen=True)
class TagEvalConfig:
    """How :func:`exiflang.eval.tags.evaluate.eval_tags` scores tag prediction.

    ``k``: neighbours per kNN vote (>= 1); ``weighted``: similarity-weighted votes.
    ``patch`` / ``per_side`` / ``mode``: the grid shards are embedded with (prebuilt embeddings
    keep theirs).  ``device`` / ``batch_size``: where and how many patches per forward pass.
    ``text_format``: zero-shot text rendering (None = the training run's, else ``paper``).
    ``probe_c``: the linear probe's C (None = chosen by cross-validation).  ``min_frac`` /
    ``min_count`` / ``max_bins``: how tag values become classes
    (:func:`exiflang.eval.tags.classes.fit_tag_classes`).  ``seed``: index sample and probe.
    ``progress``: progress bars.  ``vocab``: the tags to score (None = the model's vocabulary,
    else the train shards'); a study comparing models trained on different vocabularies passes
    one list to all of them (a list is kept as a tuple).
    """

    k: int = 10
    weighted: bool = False
    patch: int = PATCH
    per_side: int = PER_SIDE
    mode: str = "grid"
    device: str = "auto"
    batch_size: int = 256
    text_format: str | None = None
    probe_c: float | None = 1.0
    min_frac: float = 0.01
    min_count: int = 2
    max_bins: int = 8
    seed: int = 0
    progress: bool = True
    vocab: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k={self.k}: must be at least 1")
        if self.vocab is not None and not isinstance(self.vocab, tuple):
            object.__setattr__(self, "vocab", tuple(self.vocab))  # frozen: a caller's list stays theirs

    def replace(self, **changes: Any) -> TagEvalConfig:
        """A copy with ``changes`` (field name -> value); TypeError names an unknown field."""
        return dataclasses.replace(self, **changes)

    @property
    def grid(self) -> dict[str, Any]:
        """``patch``, ``per_side``, ``mode``: the keys train and test embeddings must agree on."""
        return {"patch": self.patch, "per_side": self.per_side, "mode": self.mode}

    def embed_config(self) -> EmbedConfig:
        """The :class:`EmbedConfig` the train and test shards are embedded with."""
        return EmbedConfig(**self.grid, device=self.device, batch_size=self.batch_size, progress=self.progress)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TagEvalConfig:
        """The settings of parsed ``exiflang eval-tags`` options (:mod:`exiflang.eval.tags.command`)."""
        return cls(
            k=args.k,
            weighted=args.weighted,
            **grid_settings(args),
            device=args.device,
            batch_size=args.batch_size,
            text_format=args.text_format,
            probe_c=args.probe_c,
            min_frac=args.min_frac,
            min_count=args.min_count,
            max_bins=args.max_bins,
            seed=args.seed,
            progress=not args.no_progress,
        )
