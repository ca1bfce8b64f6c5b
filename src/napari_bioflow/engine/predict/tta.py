"""Test-time augmentation (``predict.tta``), the same for every workflow: the prediction is averaged over flips
along every spatial axis and, where the Y-X plane is square, 90-degree turns in it.

The views are the symmetries of the tile (or, for classification, of the image brought to the patch size): the
dihedral group of the Y-X plane (8 views when Y and X have the same size, else its 4 flips, since a turn would change
the shape), times a Z flip in 3D (16 or 8 views), as BiaPy's ``ensemble8_2d_predictions`` and
``ensemble16_3d_predictions``. Dense outputs (one value per voxel) are turned back before they are averaged;
per-image outputs (class probabilities) need no turning back.

No Qt / napari here: this runs in worker threads and headless scripts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

View = tuple[int, tuple[int, ...]]  # (quarter turns in Y-X, flipped axes counted from the end: -1 X, -2 Y, -3 Z)


def tta_views(spatial: Sequence[int]) -> list[View]:
    """The views of an input of this spatial shape ((Z,)Y,X), the plain one first."""
    spatial = tuple(int(s) for s in spatial)
    if spatial[-1] == spatial[-2]:
        views = [(k, f) for k in range(4) for f in ((), (-1,))]
    else:
        views = [(0, f) for f in ((), (-2,), (-1,), (-2, -1))]
    if len(spatial) == 3:
        views += [(k, (-3, *f)) for k, f in views]
    return views


def augment(x: torch.Tensor, view: View) -> torch.Tensor:
    """x (B, C, *spatial) seen in `view`: flipped, then turned in Y-X."""
    k, dims = view
    x = torch.flip(x, dims) if dims else x
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def deaugment(y: torch.Tensor, view: View) -> torch.Tensor:
    """A dense output (B, C', *spatial) of a view, back in the frame of the input: turned back, then unflipped."""
    k, dims = view
    y = torch.rot90(y, -k, dims=(-2, -1)) if k else y
    return torch.flip(y, dims) if dims else y


def tta_predict(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dense: bool = True) -> torch.Tensor:
    """The mean of ``forward`` over the views of the batch ``x`` (B, C, *spatial), as float32.

    ``dense``: the output has the spatial axes of the input (B, C', *spatial) and each view's output is turned back
    first; else it is per image (B, n), e.g. class probabilities, and the views' outputs are averaged as they are."""
    views = tta_views(tuple(x.shape[2:]))
    total = None
    for view in views:
        y = forward(augment(x, view)).float()
        if dense:
            y = deaugment(y, view)
        total = y if total is None else total + y
    return total / len(views)
