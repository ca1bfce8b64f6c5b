"""The hand-over from the Train widget to the Predict widget: the best checkpoint of the last finished training."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from psygnal import Signal


class LastTrained:
    changed = Signal(object)  # the new checkpoint Path

    def __init__(self):
        self.checkpoint: Optional[Path] = None

    def set(self, checkpoint) -> None:
        self.checkpoint = Path(checkpoint)
        self.changed.emit(self.checkpoint)


last_trained = LastTrained()
