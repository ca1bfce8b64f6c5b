"""The Batch dock's layers: the current file's result as it is produced, and every result of a run as dask-backed
layers stacked along a file axis."""

from __future__ import annotations

import time

from napari.utils.notifications import show_info

from ..engine.batch import FileDone
from .layers import prediction_colormap  # noqa: E402


class BatchLayers:
    """Mixin of BatchWidget: its result layers."""

    def _labels_output(self) -> bool:
        """Whether the run's workflow declares a Labels output (segmentation): the current file then shows as
        labels, its probabilities with a class axis."""
        return self.run is not None and any(o.layer == "labels" for o in self.run.loaded.workflow.outputs)

    def _show_current(self, data, name: str, final: bool) -> None:
        """The current file's result in one layer, replaced file after file: labels for segmentation (argmax of
        the running probabilities), else the first channels of the prediction."""
        from napari.layers import Image, Labels

        from ..engine.predict.sliding_window import argmax_labels

        segmentation = self._labels_output()
        if segmentation and not final:
            data = argmax_labels(data, self.run.loaded.workflow.state.get("threshold"))  # the checkpoint's
        elif not segmentation and data.shape[0] == 1:
            data = data[0]
        kind = Labels if segmentation else Image
        title = f"batch: {name}"
        layer = self.current_layer
        if layer is None or layer not in self.viewer.layers or not isinstance(layer, kind):
            if segmentation:
                layer = self.viewer.add_labels(data, name=title, opacity=0.6, cache=False)
                layer.colormap = prediction_colormap()
            else:
                layer = self.viewer.add_image(data, name=title, colormap="gray", cache=False)
            self.current_layer = layer
        else:
            layer.data = data
            layer.name = title
        layer.refresh()

    def _show_done(self, r: FileDone) -> None:
        import dask.array as da

        key = next((k for k in ("labels", "image", "prediction", "probabilities") if k in r.outputs), None)
        if key is None:
            return
        self._show_current(da.from_zarr(str(r.outputs[key])), r.name, final=True)

    def _refresh(self) -> None:
        """Re-read the current layer's visible tiles, at most every 0.3 s and never more than 10 % of the time."""
        layer = self.current_layer
        start = time.perf_counter()
        if (
            layer is None
            or layer not in self.viewer.layers
            or start - self._last_refresh < max(0.3, 10 * self._refresh_cost)
        ):
            return
        layer.refresh()
        self._last_refresh = time.perf_counter()
        self._refresh_cost = self._last_refresh - start

    def open_results(self, *_) -> list:
        """Every finished result of the run, with its input image, as dask-backed layers (nothing is loaded): one
        layer per output and image shape, with a file axis (the files in the order of the folder) in front of the
        spatial axes, and the class or channel axis in front of it, so that all layers share the file slider."""
        import dask.array as da

        from ..engine.batch.results import lazy_inputs, lazy_results

        if self.run is None:
            return []
        if not getattr(self.run.loaded.workflow, "dense", True):  # a class per file: the table and predictions.csv
            show_info(f"Classification writes no images: see the table and {self.run.run_dir / 'predictions.csv'}.")
            return []
        results = lazy_results(self.run.run_dir)
        inputs = lazy_inputs(self.run.run_dir, self.run.loaded.config)
        groups: dict[tuple, list[str]] = {}
        for name, arrays in results.items():
            shape = tuple(sorted((k, a.shape) for k, a in arrays.items()))
            groups.setdefault(shape, []).append(name)
        added = []
        segmentation = self._labels_output()

        def stacked(arrays):  # (C, ...) per file -> (N, ...) for one channel, else (C, N, ...)
            stack = da.stack(arrays)
            return stack[:, 0] if stack.shape[1] == 1 else da.moveaxis(stack, 1, 0)

        for names in groups.values():
            tag = f"{names[0]}" if len(names) == 1 else f"{len(names)} files like {names[0]}"
            layers = []
            if all(n in inputs for n in names):
                layers.append(
                    self.viewer.add_image(
                        stacked([inputs[n] for n in names]), name=f"batch images ({tag})", colormap="gray"
                    )
                )
            first = results[names[0]]
            for key in first:
                if key in ("labels", "labels_filtered", "labels_post_processed"):
                    layer = self.viewer.add_labels(
                        da.stack([results[n][key] for n in names]), name=f"batch {key} ({tag})", opacity=0.6
                    )
                    layer.colormap = prediction_colormap()
                elif key == "probabilities" and segmentation:
                    layer = self.viewer.add_image(
                        stacked([results[n][key] for n in names]),
                        name=f"batch {key} ({tag})",
                        colormap="magma",
                        contrast_limits=(0.0, 1.0),
                        opacity=0.7,
                        visible=False,
                    )
                else:
                    layer = self.viewer.add_image(
                        stacked([results[n][key] for n in names]), name=f"batch {key} ({tag})", colormap="gray"
                    )
                layers.append(layer)
            for layer in layers:
                layer.metadata["batch_files"] = names
            added += layers
        self.result_layers += added
        if added:  # name the file axis (and the class axis in front of it) for the slider
            spatial = self.run.loaded.config.ndim
            labels = list(self.viewer.dims.axis_labels)
            file_axis = len(labels) - spatial - 1
            if file_axis >= 0:
                labels[file_axis] = "file"
                if file_axis >= 1:
                    labels[file_axis - 1] = "class" if segmentation else "channel"
                self.viewer.dims.axis_labels = labels
                self.viewer.dims.set_current_step(file_axis, 0)
        return added
