"""Typed settings of one shard-building job (what every worker needs to know)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from exiflang.pipeline import storage
from exiflang.pipeline.fetch.download import DownloadConfig
from exiflang.pipeline.image_policy import ImagePolicy, default_policy

VERIFY_MODES = ("structure", "draft", "full", "header")


@dataclass
class ShardConfig:
    """Everything a shard worker needs besides its rows; serialisable to JSON."""

    out_dir: str = "shards"
    rows_per_shard: int = 500  # full-resolution photos are ~1-5 MB: ~1 GB tars
    threads: int = 16  # concurrent fetches inside one worker (I/O bound)
    # Rows of a paused host (429/503) parked outside the shard's window at once, so the other
    # hosts' rows go on (exiflang.pipeline.shards.window); beyond it a row waits in its thread.
    max_parked: int = 1024
    patch_size: int = 124  # shorter side below this -> too_small
    min_tags: int = 10  # fewer EXIF tags than this -> too_few_tags
    # Image-size policy (exiflang.pipeline.image_policy): more pixels -> too_large; 1 .. 1e9,
    # default EXIFLANG_MAX_PIXELS or 200 MP, the same default the trainer and eval use.
    max_pixels: int = field(default_factory=lambda: default_policy().max_pixels)
    # How much of each image to decode to check it: "structure" (JPEG marker walk, other
    # formats fully decoded), "draft" (JPEG 1/8-scale decode), "full", or "header" only.
    verify: str = "structure"
    max_value_chars: int = 256  # longer EXIF values are truncated
    exif_prefer: str = "image"  # on disagreement keep the "image" or the "yfcc" value
    dedup: bool = True  # mark repeated bytes (same sha256) as duplicate
    yfcc_exif_db: str | None = None  # SQLite index of the YFCC side file, if given
    # fsspec options for s3:// / gs:// paths (exiflang.pipeline.storage); they travel with the config
    # so Ray and pool workers reach the same store.  Secrets are masked in config.json.
    storage_options: dict[str, Any] = field(default_factory=dict)
    download: DownloadConfig = field(default_factory=DownloadConfig)

    def __post_init__(self) -> None:
        if isinstance(self.download, dict):
            self.download = DownloadConfig(**self.download)
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {', '.join(VERIFY_MODES)}, not {self.verify!r}")
        if self.exif_prefer not in ("image", "yfcc"):
            raise ValueError(f"exif_prefer must be image or yfcc, not {self.exif_prefer!r}")
        if self.rows_per_shard < 1 or self.threads < 1:
            raise ValueError("rows_per_shard and threads must be at least 1")
        if self.max_parked < 0:
            raise ValueError(f"max_parked must be >= 0 (0: no parking), not {self.max_parked}")
        ImagePolicy(self.max_pixels)  # ValueError naming the range if out of it

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, path: storage.PathLike) -> None:
        """Write the resolved settings beside the outputs (atomically, local or remote)."""
        doc = self.to_dict()
        doc["storage_options"] = _masked(doc["storage_options"])
        storage.write_bytes(path, json.dumps(doc, indent=2, sort_keys=True).encode())


_SECRET_WORDS = ("secret", "key", "token", "password", "credential")


def _masked(options: Any) -> Any:
    """``options`` with the value of every secret-looking key replaced by ``"***"``."""
    if not isinstance(options, dict):
        return options
    return {
        k: "***" if any(w in str(k).lower() for w in _SECRET_WORDS) and not isinstance(v, dict) else _masked(v)
        for k, v in options.items()
    }
