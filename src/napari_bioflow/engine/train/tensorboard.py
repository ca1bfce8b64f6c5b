"""TensorBoard logs of a run (results/<run>/tensorboard/): every number of the per-epoch CSV row as a scalar
(losses, metrics, learning rate) and, per epoch, the first validation patch as images (raw, target, prediction:
channel 0, min-max scaled; the middle Z slice in 3D), written with torch.utils.tensorboard when tensorboard is installed (the
`tensorboard` extra) and train.tensorboard is on; without tensorboard, a note says so and training goes on."""

from __future__ import annotations

import math
from pathlib import Path


def tensorboard_installed() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoardLog:
    """Scalars per epoch; `notes` receives one line when the log cannot be written."""

    def __init__(self, folder: Path, enabled: bool, notes: list[str]):
        self.writer = None
        if not enabled:
            return
        if not tensorboard_installed():
            notes.append("TensorBoard logs are not written: tensorboard is not installed (pip install tensorboard).")
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def write(self, row: dict) -> None:
        if self.writer is None:
            return
        epoch = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and math.isfinite(value):
                group = (
                    "loss" if key.endswith("loss") else "train" if key in ("learning_rate", "seconds") else "metrics"
                )
                self.writer.add_scalar(f"{group}/{key}", float(value), epoch)
        self.writer.flush()

    def images(self, sample, epoch: int) -> None:
        """`sample`: (raw, target, prediction) arrays of one patch, channel first; parts that are not images of the
        patch's shape (a class index) are left out; a label map without a channel axis is one channel."""
        if self.writer is None or sample is None:
            return
        raw = sample[0]
        for name, array in zip(("raw", "target", "prediction"), sample):
            picture = _picture(array, raw.ndim)
            if picture is not None:
                self.writer.add_image(f"samples/{name}", picture, epoch, dataformats="CHW")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _picture(array, ndim: int):
    """Channel 0 of a (C,(Z),Y,X) array as a (1,Y,X) float32 image in [0, 1] (3D: the middle Z slice)."""
    import numpy as np

    a = np.asarray(array, np.float32)
    if a.ndim == ndim - 1 and a.ndim >= 2:  # a label map without a channel axis
        a = a[None]
    if a.ndim != ndim or a.ndim < 3:
        return None
    a = a[0]
    if a.ndim == 3:
        a = a[a.shape[0] // 2]
    low, high = float(a.min()), float(a.max())
    return ((a - low) / (high - low if high > low else 1.0))[None]
