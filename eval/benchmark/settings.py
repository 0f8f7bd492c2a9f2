"""The forensic benchmark's settings: one typed object, built once (CLI or caller) and passed down.

Light on purpose (no numpy, no torch): ``exiflang benchmark --help`` builds its parser from here
without importing the detectors.  What each setting does: :func:`exiflang.eval.benchmark.run.run_benchmark`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from exiflang.eval.forensics.settings import DetectorConfig

METHODS = ("exif", "noi")
_DETECTOR_FIELDS = frozenset(f.name for f in dataclasses.fields(DetectorConfig))


@dataclass(frozen=True)
class BenchmarkConfig:
    """How :func:`exiflang.eval.benchmark.run.run_benchmark` runs a dataset.

    ``methods``: which of ``exif`` (the model's zero-shot detector, run as ``detector`` says) and
    ``noi`` (the noise-inconsistency baseline, blocks of ``noi_block`` wavelet samples) to run
    (a list is kept as a tuple; unknown names are refused when the run starts).  ``limit``: only
    the first N images of the interleaved spliced/authentic order.  ``save_maps``: write each
    map as ``.npz`` + ``.png``.  ``force``: redo the (image, method) pairs already in the output
    folder.  ``progress``: a progress bar.
    """

    methods: tuple[str, ...] = METHODS
    limit: int | None = None
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    noi_block: int = 8
    save_maps: bool = False
    force: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.methods, tuple):
            object.__setattr__(self, "methods", tuple(self.methods))  # frozen: a caller's list stays theirs

    def replace(self, **changes: Any) -> BenchmarkConfig:
        """A copy with ``changes`` (field name -> value); a :class:`DetectorConfig` field name
        (``per_side``, ``patch``, ``device``, ``batch_size``, ``ncuts``, ...) changes ``detector``.
        TypeError names an unknown field."""
        own = {k: v for k, v in changes.items() if k not in _DETECTOR_FIELDS}
        detector = {k: v for k, v in changes.items() if k in _DETECTOR_FIELDS}
        if detector:
            own["detector"] = own.get("detector", self.detector).replace(**detector)
        return dataclasses.replace(self, **own)
