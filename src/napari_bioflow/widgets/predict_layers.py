"""The Predict dock's output layers: the live layers over the running sums while tiles are computed, then the
final arrays, each placed over the source layer with its declared colormap and contrast."""

from __future__ import annotations

import time

from napari.layers import Image, Labels

from .layers import (
    placement,
    prediction_colormap,
    spatial_axes,
)
from .preview import intensity_mapping, to_intensity


def format_metrics(metrics: dict) -> str:
    """'PSNR 23.41 dB · SSIM 0.712' (per-class IoUs left out)."""
    from ..engine.workflows.spec import metric

    return " · ".join(metric(key).format(value) for key, value in metrics.items() if not key.startswith("iou_class"))


def first_channel_axis(data, scale, translate):
    """A channel-first image as a layer takes it: one channel dropped to the spatial axes, several kept in front."""
    if data.shape[0] == 1:
        return data[0], scale, translate
    return data, (1.0, *scale), (0.0, *translate)


class PredictLayers:
    """Mixin of PredictWidget: its output layers."""

    def _placement(self):
        cfg = self.job.cfg
        return placement(self.source, spatial_axes(self.source, cfg.ndim, cfg.data.in_channels, cfg.data.axes))

    def _contrast(self, output):
        """Contrast limits of an image output: the source's ("source": same intensities, so degraded, restored and
        MAE check layers compare at a glance), 0 to 1 ("unit"), or the target's normalization range ("target")."""
        if output.contrast == "source":
            return tuple(self.source.contrast_limits)
        if output.contrast == "unit":
            return (0.0, 1.0)
        mapping = intensity_mapping(self.job.workflow)
        if mapping is not None and self.job.cfg.data.normalization == "percentile":
            scale, offset = float(mapping[0][0]), float(mapping[1][0])
            return (offset, offset + scale)
        return None

    def _add_layer(self, output, data, index: int | None = None, **kwargs):
        """The layer of one declared output (spec.Output) over the source layer; inserted at `index` if given.
        Channel-first image data: one channel drops to the spatial axes, several keep a channel axis in front."""
        scale, translate = self._placement()
        name = f"{self.source.name} {output.suffix}"
        if output.layer == "labels":
            layer = Labels(data, name=name, scale=scale, translate=translate, opacity=output.opacity, **kwargs)
            layer.colormap = prediction_colormap()  # not the ground truth's colours
        else:
            if output.class_axis:
                scale, translate = (1.0, *scale), (0.0, *translate)
            else:
                data, scale, translate = first_channel_axis(data, scale, translate)
            contrast = self._contrast(output)
            layer = Image(
                data,
                name=name,
                scale=scale,
                translate=translate,
                colormap=output.colormap,
                opacity=output.opacity,
                **kwargs,
                **({"contrast_limits": contrast} if contrast and contrast[1] > contrast[0] else {}),
            )
        if index is None:
            self.viewer.layers.append(layer)
        else:
            self.viewer.layers.insert(index, layer)
        self.outputs[output.key] = layer
        return layer

    def _add_live_layers(self, job, layer) -> None:
        """The layers shown while tiles are computed: dask arrays over the engine's running sums (the workflow's
        outputs declared `live`)."""
        from ..engine.predict.sliding_window import argmax_labels

        cfg, wf = job.cfg, job.workflow
        lazy = job.lazy()
        world_axes = self.viewer.dims.ndim
        for output in wf.outputs:
            if not output.live:
                continue
            if output.layer == "labels":
                data = argmax_labels(lazy, wf.state.get("threshold"))  # the checkpoint's threshold (else argmax)
            elif output.class_axis:
                data = lazy
            else:
                data = to_intensity(lazy[: wf.out_channels(cfg)], intensity_mapping(wf), cfg.ndim)
            self._add_layer(output, data, cache=False)
        if any(o.live and o.class_axis for o in wf.outputs) and self.viewer.dims.ndim > world_axes:
            # the class axis is new: name it, show the last class (not background)
            self.viewer.dims.axis_labels = ("class", *self.viewer.dims.axis_labels[1:])
            self.viewer.dims.set_current_step(0, lazy.shape[0] - 1)
        self.prob_layer, self.labels_layer = self.outputs.get("probabilities"), self.outputs.get("labels")

    def _show_outputs(self, outputs: dict) -> None:
        """The final arrays replace the running sums (which can then go); the other outputs join them, in the
        declared order from the bottom up (napari's grid view then shows them side by side in that order)."""
        import dask.array as da

        def lazy(data):
            return da.from_zarr(data) if hasattr(data, "chunks") and not hasattr(data, "dask") else data

        declared = self.job.workflow.outputs
        first_live = next((self.outputs[o.key] for o in declared if o.key in self.outputs), None)
        position = (
            self.viewer.layers.index(first_live)
            if first_live is not None and first_live in self.viewer.layers
            else len(self.viewer.layers)
        )
        for output in declared:
            layer = self.outputs.get(output.key)
            if layer is not None and layer in self.viewer.layers:
                if output.key in outputs:
                    data = lazy(outputs[output.key])
                    layer.data = (
                        data if output.class_axis or output.layer == "labels" else first_channel_axis(data, (), ())[0]
                    )
                position = self.viewer.layers.index(layer) + 1
            elif output.key in outputs:
                self._add_layer(output, lazy(outputs[output.key]), index=position)
                position += 1

    def _refresh(self) -> None:
        """Re-read the visible tiles (the layers are not cached, so new tiles show), at most every 0.3 s and
        never more than 10 % of the time, so redrawing does not slow the prediction down."""
        start = time.perf_counter()
        if start - self._last_refresh < max(0.3, 10 * self._refresh_cost):
            return
        for layer in self.outputs.values():
            if layer is not None and layer in self.viewer.layers:
                layer.refresh()
        self._last_refresh = time.perf_counter()
        self._refresh_cost = self._last_refresh - start

    def _on_progress(self, done: int, total: int) -> None:
        self.progress.max, self.progress.value = total, done
        self._refresh()
