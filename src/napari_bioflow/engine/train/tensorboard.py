"""TensorBoard logs of a run (results/<run>/tensorboard/): every number of the per-epoch CSV row as a scalar
(losses, metrics, learning rate), written with torch.utils.tensorboard when tensorboard is installed (the
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

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
