"""The live training chart of the Train dock: losses and validation IoU (foreground) per epoch."""
from __future__ import annotations

import math

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import QSizePolicy


class TrainingChart(FigureCanvasQTAgg):
    def __init__(self, background: str = "#262930", foreground: str = "#f0f1f2"):
        figure = Figure(figsize=(3.6, 2.4), dpi=80, facecolor=background, layout="constrained")
        figure.get_layout_engine().set(w_pad=0.08, h_pad=0.04)  # room for the last tick labels
        super().__init__(figure)
        self.setMinimumHeight(200)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.colors = (background, foreground)
        self.loss_axes, self.iou_axes = figure.subplots(1, 2)
        self.epochs: list[int] = []
        self.train_loss: list[float] = []
        self.val_loss: list[float] = []
        self.val_iou: list[float] = []
        self._draw()

    def clear(self) -> None:
        for series in (self.epochs, self.train_loss, self.val_loss, self.val_iou):
            series.clear()
        self._draw()

    def add(self, epoch: int, train_loss: float, val_loss: float, val_iou: float) -> None:
        self.epochs.append(epoch)
        self.train_loss.append(train_loss)
        self.val_loss.append(val_loss)
        self.val_iou.append(val_iou)
        self._draw()

    def _draw(self) -> None:
        background, foreground = self.colors
        for ax, title in ((self.loss_axes, "loss per epoch"), (self.iou_axes, "validation IoU (foreground)")):
            ax.clear()
            ax.set_facecolor(background)
            ax.set_title(title, color=foreground, fontsize=9)
            ax.tick_params(colors=foreground, labelsize=7)
            for spine in ax.spines.values():
                spine.set_color(foreground)
            ax.xaxis.get_major_locator().set_params(integer=True)
        if self.epochs:
            self.loss_axes.plot(self.epochs, self.train_loss, "o-", ms=3, color="#4fc3f7", label="training")
            if any(not math.isnan(v) for v in self.val_loss):
                self.loss_axes.plot(self.epochs, self.val_loss, "o-", ms=3, color="#ffb74d", label="validation")
            self.loss_axes.legend(fontsize=7, facecolor=background, labelcolor=foreground, edgecolor=foreground)
            if any(not math.isnan(v) for v in self.val_iou):
                self.iou_axes.plot(self.epochs, self.val_iou, "o-", ms=3, color="#81c784")
            self.iou_axes.set_ylim(0, 1)
        self.draw_idle()


def theme_colors(viewer) -> tuple[str, str]:
    """(background, text) colours of the viewer's theme, so the chart matches the dock."""
    try:
        from napari.utils.theme import get_theme

        theme = get_theme(viewer.theme)
        return theme.background.as_hex(), theme.text.as_hex()
    except Exception:
        return "#262930", "#f0f1f2"
