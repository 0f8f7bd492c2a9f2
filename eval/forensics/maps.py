"""The detect npz's maps: kept on the grid's cells by default, expanded to image size as the detector reads them.

Every full-size map the detector makes is a function of a cell map and the patch grid
(:func:`exiflang.eval.forensics.localize.cells_to_image`): the mean-shift ``heatmap`` of
``cell_map``, ``mask = heatmap > 0.5``, the soft ``ncuts_heatmap`` of ``ncuts_cell_map`` and
``ncuts_mask`` of ``ncuts_cells``.  So the npz keeps the cell maps (a few kB) and the grid, and
:func:`full_maps` rebuilds the image-size maps on demand.  The rebuilt heatmap equals the
detector's to float32 rounding (within 1e-6: where the detector flipped its map to put the splice
on the smaller side it subtracted after resizing, the cells are stored already flipped), so a
mask pixel can differ only where the heatmap is within 1e-6 of 0.5.  ``detect --full-maps``
stores the detector's own full-size arrays as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from exiflang.eval.embed.patches import Grid

FULL_KEYS = ("heatmap", "mask", "ncuts_heatmap", "ncuts_mask")


def grid_of(arrays: Mapping[str, Any]) -> Grid:
    """The patch grid recorded in a detect npz (``image_size``, ``patch``, ``grid_ys``, ``grid_xs``)."""
    h, w = (int(v) for v in np.asarray(arrays["image_size"]).reshape(2))
    return Grid(
        h, w, int(arrays["patch"]), tuple(int(y) for y in arrays["grid_ys"]), tuple(int(x) for x in arrays["grid_xs"])
    )


def full_maps(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A detect npz (an ``np.load`` result or dict) -> its image-size maps.

    ``heatmap`` float32 [H,W] 0..1 and ``mask`` bool [H,W]; ``ncuts_heatmap`` float32 [H,W] and
    ``ncuts_mask`` bool [H,W] when the npz has ncuts cells.  Arrays stored at full size
    (``--full-maps``) are returned as stored; the rest are rebuilt from the cells.
    """
    files = set(arrays.keys()) if not hasattr(arrays, "files") else set(arrays.files)
    if all(k in files for k in ("heatmap", "mask")):
        return {k: np.asarray(arrays[k]) for k in FULL_KEYS if k in files}
    from exiflang.eval.forensics.affinity import coverage
    from exiflang.eval.forensics.localize import cells_to_image

    grid = grid_of(arrays)
    cov = coverage(grid)
    heat = cells_to_image(np.asarray(arrays["cell_map"], dtype=np.float32), cov, grid.height, grid.width)
    out = {"heatmap": heat, "mask": heat > 0.5}
    if "ncuts_cell_map" in files:
        out["ncuts_heatmap"] = cells_to_image(
            np.asarray(arrays["ncuts_cell_map"], np.float32), cov, grid.height, grid.width
        )
    if "ncuts_cells" in files:
        cut = np.asarray(arrays["ncuts_cells"]).astype(np.float32)
        out["ncuts_mask"] = cells_to_image(cut, cov, grid.height, grid.width) > 0.5
    return out
