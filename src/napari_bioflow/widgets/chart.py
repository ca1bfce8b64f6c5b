"""The live training chart of the Train dock: losses and the workflow's validation metric per epoch
(IoU of the foreground for segmentation, PSNR for image to image and self-supervision).

A pyqtgraph widget: each epoch appends a point to the curves already there (`setData` on three curves), nothing
else is redrawn, so an epoch costs a few milliseconds of the GUI thread however long the training."""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

BOUNDED = {"iou_foreground", "iou_mean", "accuracy", "ssim"}  # metrics from 0 to 1: a fixed axis
COLORS = {"training": "#4fc3f7", "validation": "#ffb74d", "metric": "#81c784"}


class TrainingChart(QWidget):
    """A widget holding a pyqtgraph GraphicsLayoutWidget (`view`) with the loss and the metric plots."""

    def __init__(self, background: str = "#262930", foreground: str = "#f0f1f2"):
        super().__init__()
        self.view = pg.GraphicsLayoutWidget()
        self.view.setBackground(background)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.view)
        self.setMinimumHeight(200)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.colors = (background, foreground)
        self.loss_plot = self.view.addPlot(row=0, col=0)
        self.metric_plot = self.view.addPlot(row=0, col=1)
        for plot in (self.loss_plot, self.metric_plot):
            plot.setMenuEnabled(False)
            plot.hideButtons()
            plot.setMouseEnabled(x=False, y=False)
            for name in ("left", "bottom"):
                axis = plot.getAxis(name)
                axis.setPen(foreground)
                axis.setTextPen(foreground)
        legend = self.loss_plot.addLegend(offset=(-4, 4), labelTextColor=foreground, labelTextSize="7pt")
        legend.setBrush(pg.mkBrush(background))

        def curve(plot, color, name=None):
            pen = pg.mkPen(color, width=1.5)
            return plot.plot(
                [], [], pen=pen, symbol="o", symbolSize=4, symbolBrush=color, symbolPen=pen, name=name, connect="finite"
            )

        self.train_curve = curve(self.loss_plot, COLORS["training"], "training")
        self.val_curve = curve(self.loss_plot, COLORS["validation"], "validation")
        self.metric_curve = curve(self.metric_plot, COLORS["metric"])
        self.metric = "iou_foreground"  # the key of the workflow's chart metric in the epoch reports
        self.epochs: list[int] = []
        self.train_loss: list[float] = []
        self.val_loss: list[float] = []
        self.val_metric: list[float] = []
        self._titles()

    @property
    def val_iou(self) -> list[float]:  # the segmentation name of the metric series
        return self.val_metric

    @property
    def metric_title(self) -> str:
        from ..engine.workflows.spec import metric

        words = metric(self.metric)
        return f"validation {words.label}" + (f" ({words.unit.strip()})" if words.unit else "")

    def set_metric(self, metric: str) -> None:
        """Chart `metric` (a key of the epoch reports' metrics, the workflow's chart_metric) from now on."""
        if metric != self.metric:
            self.metric = metric
            self.clear()

    def clear(self) -> None:
        for series in (self.epochs, self.train_loss, self.val_loss, self.val_metric):
            series.clear()
        self._titles()
        self._update()

    def add(self, epoch: int, train_loss: float, val_loss: float, metric: float) -> None:
        self.epochs.append(epoch)
        self.train_loss.append(train_loss)
        self.val_loss.append(val_loss)
        self.val_metric.append(metric)
        self._update()

    def _titles(self) -> None:
        _, foreground = self.colors
        limits = (0.0, 1.0) if self.metric in BOUNDED else None
        self.loss_plot.setTitle("loss per epoch", color=foreground, size="8pt")
        self.metric_plot.setTitle(self.metric_title, color=foreground, size="8pt")
        if limits is not None:
            self.metric_plot.setYRange(*limits, padding=0.02)
            self.metric_plot.enableAutoRange(axis="y", enable=False)
        else:
            self.metric_plot.enableAutoRange(axis="y", enable=True)

    def _update(self) -> None:
        x = np.asarray(self.epochs, dtype=float)
        self.train_curve.setData(x, np.asarray(self.train_loss, dtype=float))
        val = np.asarray(self.val_loss, dtype=float)
        self.val_curve.setData(x if np.isfinite(val).any() else [], val if np.isfinite(val).any() else [])
        metric = np.asarray(self.val_metric, dtype=float)
        shown = any(not math.isnan(v) for v in self.val_metric)
        self.metric_curve.setData(x if shown else [], metric if shown else [])

    def curve_points(self) -> dict[str, tuple[list[float], list[float]]]:
        """What each curve holds now (x, y): training, validation, metric."""
        out = {}
        for name, item in (
            ("training", self.train_curve),
            ("validation", self.val_curve),
            ("metric", self.metric_curve),
        ):
            xs, ys = item.getData()
            out[name] = ([] if xs is None else list(map(float, xs)), [] if ys is None else list(map(float, ys)))
        return out


def theme_colors(viewer) -> tuple[str, str]:
    """(background, text) colours of the viewer's theme, so the chart matches the dock."""
    try:
        from napari.utils.theme import get_theme

        theme = get_theme(viewer.theme)
        return theme.background.as_hex(), theme.text.as_hex()
    except Exception:
        return "#262930", "#f0f1f2"
