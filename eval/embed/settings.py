"""The embedding run's settings: one typed object, built once (CLI or caller) and passed down.

Light on purpose (no torch, no numpy): ``exiflang embed --help`` and the argument defaults read
the constants here without importing the model code.  What each setting does to the output:
:func:`exiflang.eval.embed.run.embed_shards`.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

from exiflang.pipeline.config import ShardConfig

PATCH = 124
PER_SIDE = 4
PER_PART = ShardConfig.rows_per_shard  # the shard builder's default, so default parts match default shards


@dataclass(frozen=True)
class EmbedConfig:
    """How :func:`exiflang.eval.embed.run.embed_shards` embeds a data folder.

    ``patch``: patch side in pixels.  ``per_side``: a ``per_side x per_side`` grid of patches per
    photo (``mode="grid"``, their mean re-normalised); ``mode="single"``: the centre patch alone.
    ``text``: also embed the EXIF text with the text tower, rendered in ``text_format`` (None = the
    training run's, else ``paper``).  ``device``: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
    ``batch_size``: patches per forward pass.  ``workers``: decoding threads.  ``limit``: at most
    this many samples in all (sorted shards, tar order; one process only).  ``images``: the data
    folder is a plain folder of photos, ``per_part`` photos a part.  ``progress``: a progress bar.
    Values are checked when the run starts (one-line ``ValueError``), where the model code is loaded.
    """

    patch: int = PATCH
    per_side: int = PER_SIDE
    mode: str = "grid"
    text: bool = False
    text_format: str | None = None
    device: str = "auto"
    batch_size: int = 256
    workers: int = 2
    limit: int | None = None
    images: bool = False
    per_part: int = PER_PART
    progress: bool = True

    def replace(self, **changes: Any) -> EmbedConfig:
        """A copy with ``changes`` (field name -> value); TypeError names an unknown field."""
        return dataclasses.replace(self, **changes)

    @property
    def grid(self) -> dict[str, Any]:
        """The settings that decide the image vectors' geometry: ``patch``, ``per_side``, ``mode``."""
        return {"patch": self.patch, "per_side": self.per_side, "mode": self.mode}


def add_grid_arguments(p: argparse.ArgumentParser) -> None:
    """Declare the patch-grid options (``--per-side``, ``--single-patch``, ``--patch-size``)."""
    p.add_argument(
        "--per-side", type=int, default=PER_SIDE, help=f"grid of N x N patches per photo (default {PER_SIDE})"
    )
    p.add_argument("--single-patch", action="store_true", help="embed the centre patch only")
    p.add_argument("--patch-size", type=int, default=PATCH, help=f"patch side in pixels (default {PATCH})")


def grid_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The :class:`EmbedConfig` fields of parsed :func:`add_grid_arguments` options."""
    return {"patch": args.patch_size, "per_side": args.per_side, "mode": "single" if args.single_patch else "grid"}
