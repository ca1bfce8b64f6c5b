"""The live training chart of the Train dock: losses and the workflow's validation metric per epoch
(IoU of the foreground for segmentation, PSNR for image to image and self-supervision)."""

from __future__ import annotations

import math

METRICS = {"iou_foreground": ("validation IoU (foreground)", (0.0, 1.0)), "psnr": ("validation PSNR (dB)", None)}

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
        self.loss_axes, self.metric_axes = figure.subplots(1, 2)
        self.metric = "iou_foreground"  # the key of the workflow's chart metric in the epoch reports
        self.epochs: list[int] = []
        self.train_loss: list[float] = []
        self.val_loss: list[float] = []
        self.val_metric: list[float] = []
        self._draw()

    @property
    def val_iou(self) -> list[float]:  # the segmentation name of the metric series
        return self.val_metric

    def set_metric(self, metric: str) -> None:
        """Chart `metric` (a key of the epoch reports' metrics, the workflow's chart_metric) from now on."""
        if metric != self.metric:
            self.metric = metric
            self.clear()

    def clear(self) -> None:
        for series in (self.epochs, self.train_loss, self.val_loss, self.val_metric):
            series.clear()
        self._draw()

    def add(self, epoch: int, train_loss: float, val_loss: float, metric: float) -> None:
        self.epochs.append(epoch)
        self.train_loss.append(train_loss)
        self.val_loss.append(val_loss)
        self.val_metric.append(metric)
        self._draw()

    def _draw(self) -> None:
        background, foreground = self.colors
        title, limits = METRICS.get(self.metric, (f"validation {self.metric.replace('_', ' ')}", None))
        for ax, text in ((self.loss_axes, "loss per epoch"), (self.metric_axes, title)):
            ax.clear()
            ax.set_facecolor(background)
            ax.set_title(text, color=foreground, fontsize=9)
            ax.tick_params(colors=foreground, labelsize=7)
            for spine in ax.spines.values():
                spine.set_color(foreground)
            ax.xaxis.get_major_locator().set_params(integer=True)
        if self.epochs:
            self.loss_axes.plot(self.epochs, self.train_loss, "o-", ms=3, color="#4fc3f7", label="training")
            if any(not math.isnan(v) for v in self.val_loss):
                self.loss_axes.plot(self.epochs, self.val_loss, "o-", ms=3, color="#ffb74d", label="validation")
            self.loss_axes.legend(fontsize=7, facecolor=background, labelcolor=foreground, edgecolor=foreground)
            if any(not math.isnan(v) for v in self.val_metric):
                self.metric_axes.plot(self.epochs, self.val_metric, "o-", ms=3, color="#81c784")
            if limits is not None:
                self.metric_axes.set_ylim(*limits)
        self.draw_idle()


def theme_colors(viewer) -> tuple[str, str]:
    """(background, text) colours of the viewer's theme, so the chart matches the dock."""
    try:
        from napari.utils.theme import get_theme

        theme = get_theme(viewer.theme)
        return theme.background.as_hex(), theme.text.as_hex()
    except Exception:
        return "#262930", "#f0f1f2"
