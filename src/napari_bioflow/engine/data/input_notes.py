"""Notes on a set of images that is valid but likely not what the user meant: shown (CLI `note:` lines, the docks'
notifications), never refused.

- images of several data types (8-bit and 16-bit files in one folder) share one normalisation, fitted on their raw
  values together, so an 8-bit image looks nearly black next to 16-bit ones;
- a training set whose every image holds a single value has nothing to learn from.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _kind(dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        return f"{dtype.itemsize * 8}-bit ({dtype.name})"
    return dtype.name


def mixed_types_note(images: Sequence[tuple[str, object]], what: str) -> str | None:
    """A note when (name, dtype) pairs hold several data types, naming one image of each; else None."""
    first: dict[np.dtype, str] = {}
    for name, dtype in images:
        first.setdefault(np.dtype(dtype), name)
    if len(first) < 2:
        return None
    listed = ", ".join(f"{_kind(dtype)} as {name}" for dtype, name in first.items())
    return (
        f"The {what} mix data types ({listed}): they share one normalisation of their raw values, so an image of "
        f"a smaller type looks dim next to the others; convert them to one type if that is not meant."
    )


def _varies(block) -> bool:
    block = np.asarray(block.compute() if hasattr(block, "compute") else block)
    return bool(block.size) and block.min() != block.max()


def _single_value(raw) -> float | None:
    """The value of an image (channel last) that holds only one, else None: a small central crop first (a chunk or
    two), then a strided sample, and the whole image only when both are uniform."""
    from .normalize import _subsample

    centre = tuple(slice(max(0, n // 2 - 32), n // 2 + 32) for n in raw.shape[:-1])
    if _varies(raw[centre]) or _varies(_subsample(raw)):
        return None
    low, high = raw.min(), raw.max()
    low, high = (float(v.compute() if hasattr(v, "compute") else v) for v in (low, high))
    return low if low == high else None


def uniform_set_note(samples: Sequence, what: str) -> str | None:
    """A note when every sample's raw image holds a single value, else None; `what` names one of them ("training
    image in FOLDER")."""
    if not samples:
        return None
    values = []
    for s in samples:
        value = _single_value(s.raw)
        if value is None:
            return None
        values.append(value)
    return (
        f"Every {what} holds a single value ({samples[0].name} is all {values[0]:g}): the model has nothing to "
        f"learn from them; check that these are the right images."
    )
