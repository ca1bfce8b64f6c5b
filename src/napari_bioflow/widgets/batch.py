"""The Batch dock: a checkpoint (or the model just trained), an input folder (TIFF, PNG, zarr, OME-Zarr), optional
labels and an output folder in; every file predicted by the engine's BatchRun (engine/batch/) into a new run of
the experiment layout, or into an earlier run it continues (resume), here or on dask.distributed.

The dock only turns fields into a BatchRequest, runs the BatchRun generator in a napari thread worker and turns its
reports into progress bars (the current file's tiles, the batch with its ETA), notifications (a file that fails:
one sentence naming it; the summary) and layers: the current file's result as it is produced (a dask array over the
zarr being written), and, on request, every result of the run (dask arrays over the written files, stacked along a
file axis where the shapes agree)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, LineEdit, ProgressBar, PushButton, SpinBox
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QVBoxLayout, QWidget
from superqt import QCollapsible

from ..engine.batch import BatchStarted, BatchSummary, FileDone, FileFailed, FileProgress, FileStarted
from ..engine.errors import InputError
from .fields import ConfigForm, compact, config_field, form, format_seconds, group, status_label
from .jobs import TrainingFailed, batch_job
from .layers import connect_while_alive
from .shared import last_trained, load_triton_safely

log = logging.getLogger(__name__)
JUST_TRAINED, FROM_FILE = "model just trained", "checkpoint file"
HERE, LOCAL_DASK, SCHEDULER = "this process", "local dask cluster", "dask scheduler"
MAX_ERROR_NOTES = 5  # failed files shown one by one; beyond, the summary lists them


def _text(edit: FileEdit) -> Path | None:
    text = str(edit.line_edit.value).strip()
    return Path(text) if text and text != "." else None  # a cleared FileEdit reads "."


class BatchWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.run = None  # the engine's BatchRun
        self.started: BatchStarted | None = None
        self.summary: BatchSummary | None = None
        self.failures: list[FileFailed] = []
        self.current_layer = None  # the current file's result, as it is produced
        self.result_layers: list = []
        self._worker = None
        self._errors_shown = 0
        self._last_refresh = self._refresh_cost = 0.0
        self._closed = threading.Event()
        self.destroyed.connect(self._on_destroyed)

        self.model_source = ComboBox(choices=[FROM_FILE, JUST_TRAINED], value=FROM_FILE, label="model")
        self.checkpoint = compact(
            FileEdit(mode="r", filter="*.pth", label="checkpoint", tooltip="A napari-bioflow checkpoint (.pth)")
        )
        self.trained = status_label("none yet: train one in the Train dock", label="trained")
        self.input = compact(
            FileEdit(
                mode="d", label="input folder", tooltip="The folder of images to predict: TIFF, PNG, zarr and OME-Zarr"
            )
        )
        self.labels = compact(
            FileEdit(
                mode="d",
                label="labels folder",
                tooltip="Optional: ground truth paired with the images by file name (img_1 with img_01 or img_1_mask); "
                "gives metrics.csv",
            )
        )
        f = self.form = ConfigForm()
        f.add("name", label="experiment", value="batch")
        f.add("output_dir", label="output folder", value=Path.home() / "bioflow_runs")
        self.resume = compact(
            FileEdit(
                mode="d",
                label="resume run",
                tooltip="Optional: the results folder of an earlier batch run to continue in place "
                "(its finished files are skipped; it keeps its checkpoint, folders and "
                "settings). Empty: a new run, which never touches an earlier one.",
            )
        )
        f.add("predict.tta", label="test-time augmentation")
        self.tile = SpinBox(
            value=0,
            min=0,
            max=8192,
            step=16,
            label="tile size (0 = auto)",
            tooltip=config_field("predict.tile_size").description,
        )
        f.add("predict.batch_size", label="tiles per batch", max=1024)
        f.add("device")
        self.where = ComboBox(
            choices=[HERE, LOCAL_DASK, SCHEDULER],
            value=HERE,
            label="run on",
            tooltip="This process; a dask LocalCluster of worker processes on this machine; or the "
            "dask cluster behind a scheduler address (files on a shared file system)",
        )
        self.workers = SpinBox(value=2, min=1, max=256, label="dask workers")
        self.scheduler = LineEdit(value="", label="scheduler address", tooltip="e.g. tcp://head-node:8786")
        self.block_size = SpinBox(
            value=0,
            min=0,
            max=65536,
            step=64,
            label="block size (0 = auto)",
            tooltip="dask: images larger than this per axis are split into blocks predicted in "
            "parallel (auto: 2048 in 2D, 256 in 3D)",
        )
        self.show_current = CheckBox(value=True, label="show each result as it is produced")
        self.run_button = PushButton(text="Run batch")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.open_button = PushButton(
            text="Open results",
            enabled=False,
            tooltip="Add every result of the run as layers (dask arrays over the written files)",
        )
        self.file_progress = ProgressBar(value=0, min=0, max=1, label="file")
        self.overall = ProgressBar(value=0, min=0, max=1000, label="batch")
        self.overall.native.setFormat("%p%")
        self.status = status_label()
        self.summary_label = status_label()

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(
            group(
                "Model and images",
                form(self.model_source, self.checkpoint, self.trained, self.input, self.labels, f["predict.tta"]),
            )
        )
        layout.addWidget(group("Output", form(f["name"], f["output_dir"], self.resume)))
        self.advanced = QCollapsible("Advanced")
        self.advanced.addWidget(
            form(
                self.tile,
                f["predict.batch_size"],
                f["device"],
                self.where,
                self.workers,
                self.scheduler,
                self.block_size,
            ).native
        )
        layout.addWidget(self.advanced)
        buttons = Container(
            widgets=[self.run_button, self.cancel_button, self.open_button], layout="horizontal", labels=False
        )
        layout.addWidget(
            group(
                "Run",
                buttons,
                self.show_current,
                form(self.file_progress, self.overall),
                self.status,
                self.summary_label,
            )
        )
        from .classes import ResultsTable

        self.classes = ResultsTable()  # classification: a row per file as it is classified
        self.classes.setVisible(False)
        layout.addWidget(self.classes)
        layout.addStretch(1)
        self.setMinimumWidth(320)

        self.model_source.changed.connect(self._update_visibility)
        self.where.changed.connect(self._update_visibility)
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.open_button.changed.connect(self.open_results)
        connect_while_alive(self, [(last_trained.changed, self._on_trained)])
        if last_trained.checkpoint is not None:
            self._on_trained(last_trained.checkpoint)
        self._update_visibility()

    @property
    def running(self) -> bool:
        return self._worker is not None

    def _update_visibility(self, *_) -> None:
        from_file = self.model_source.value == FROM_FILE
        self.checkpoint.visible, self.trained.visible = from_file, not from_file
        self.workers.visible = self.where.value == LOCAL_DASK
        self.scheduler.visible = self.where.value == SCHEDULER
        self.block_size.visible = self.where.value != HERE

    def _on_trained(self, checkpoint: Path) -> None:
        self.trained.value = Path(checkpoint).name
        self.trained.tooltip = str(checkpoint)
        self.model_source.value = JUST_TRAINED
        self._update_visibility()

    # --- set-up on the GUI thread: the engine's checks run here, so bad input is reported at once --------------
    def request(self):
        from ..engine.batch import BatchRequest

        values = self.form.values()
        resume = _text(self.resume)
        checkpoint = None
        if resume is None:
            if self.model_source.value == JUST_TRAINED:
                if last_trained.checkpoint is None:
                    raise InputError(
                        "No model has been trained yet: train one in the Train dock or choose a checkpoint file."
                    )
                checkpoint = last_trained.checkpoint
            else:
                checkpoint = _text(self.checkpoint)
                if checkpoint is None:
                    raise InputError("Choose a checkpoint file (.pth) to predict with.")
            if _text(self.input) is None:
                raise InputError("Choose the input folder of images to predict.")
        overrides = []
        if resume is None:
            predict = values["predict"]
            overrides = [f"predict.tta={str(predict['tta']).lower()}", f"predict.batch_size={predict['batch_size']}"]
        scheduler = self.scheduler.value.strip() if self.where.value == SCHEDULER else None
        if self.where.value == SCHEDULER and not scheduler:
            raise InputError("Give the dask scheduler address (e.g. tcp://head-node:8786) or run on this machine.")
        return BatchRequest(
            checkpoint=checkpoint,
            input_dir=None if resume else _text(self.input),
            labels_dir=None if resume else _text(self.labels),
            output_dir=Path(values["output_dir"] or "bioflow_runs"),
            name=values["name"],
            resume=resume,
            device=values["device"],
            overrides=overrides,
            scheduler=scheduler,
            workers=self.workers.value if self.where.value == LOCAL_DASK else 0,
            block_size=self.block_size.value or None,
        )

    def _make_run(self):
        from ..engine.batch import BatchRun
        from ..engine.train.checkpoint import read_checkpoint

        request = self.request()
        if self.tile.value and request.resume is None:  # the tile has as many axes as the checkpoint's images
            ndim = int(read_checkpoint(request.checkpoint).get("config", {}).get("ndim", 2))
            request.overrides.append(f"predict.tile_size={[self.tile.value] * ndim}")
        return BatchRun(request)

    # --- run ----------------------------------------------------------------------------------------------
    def start(self, *_) -> None:
        from napari.qt.threading import create_worker

        if self.running:
            return
        load_triton_safely()
        try:
            run = self._make_run()
        except InputError as e:
            show_error(str(e))
            return
        self.run, self.started, self.summary, self.failures, self._errors_shown = run, None, None, [], 0
        self.status.value, self.summary_label.value = f"starting: {run.run_dir}", ""
        self.file_progress.value, self.overall.value = 0, 0
        self.classes.setRowCount(0)
        self.classes.setVisible(not getattr(run.loaded.workflow, "dense", True))
        worker = create_worker(batch_job, run, _start_thread=False, _ignore_errors=True)
        worker.yielded.connect(self._on_report)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self.run_button.enabled, self.cancel_button.enabled, self.open_button.enabled = False, True, False
        worker.start()

    def cancel(self, *_) -> None:
        if self.running and self.run is not None:
            self.run.cancel()
            self.cancel_button.enabled = False
            self.status.value = "cancelling after the current tile…"

    def _on_destroyed(self, *_) -> None:
        if self.run is not None:
            self.run.cancel()  # a closed dock stops its batch

    def _on_report(self, r) -> None:
        if isinstance(r, BatchStarted):
            self.started = r
            earlier = f" ({len(r.finished_earlier)} finished earlier)" if r.finished_earlier else ""
            self.status.value = f"{len(r.to_do)} file(s) to predict on {r.mode}{earlier}"
            if r.unfinished_earlier is not None:
                show_info(f"Note: {r.hint()}: choose its folder as 'resume run'.")
            self.open_button.enabled = True
        elif isinstance(r, FileStarted):
            self.file_progress.max, self.file_progress.value = max(1, r.tiles), 0
            self.status.value = f"{self._position(r.index)}: {r.name}"
            if self.show_current.value and r.live is not None:
                self._show_current(r.live, r.name, final=False)
        elif isinstance(r, FileProgress):
            self.file_progress.max, self.file_progress.value = r.total, r.done
            self._show_overall(r.overall, r.eta_seconds, r.name, r.index)
            self._refresh()
        elif isinstance(r, FileDone):
            self.file_progress.value = self.file_progress.max
            self._show_overall(r.overall, r.eta_seconds, r.name, r.index)
            if r.prediction:  # classification: the file's class and confidence
                self.classes.add(r.name, str(r.prediction["class"]), float(r.prediction["confidence"]))
            if self.show_current.value:
                self._show_done(r)
        elif isinstance(r, FileFailed):
            self.failures.append(r)
            self._show_overall(r.overall, r.eta_seconds, r.name, r.index)
            if self._errors_shown < MAX_ERROR_NOTES:
                self._errors_shown += 1
                show_error(r.reason)
        elif isinstance(r, BatchSummary):
            self._on_summary(r)
        elif isinstance(r, TrainingFailed):
            self.status.value = "failed: see the message"
            show_error(str(r))

    def _position(self, index: int) -> str:
        names = self.started.names if self.started else []
        return f"file {index + 1}/{len(names)}" if names else f"file {index + 1}"

    def _show_overall(self, fraction: float, eta: float | None, name: str, index: int) -> None:
        self.overall.value = int(round(1000 * fraction))
        eta_text = f", ETA {format_seconds(eta)}" if eta is not None and fraction < 1 else ""
        self.status.value = f"{self._position(index)}: {name} · {fraction:.0%} of the batch{eta_text}"

    def _on_summary(self, s: BatchSummary) -> None:
        self.summary = s
        self.overall.value = 1000 if not s.cancelled else self.overall.value
        lines = [s.text() + "."]
        lines.append(f"{s.files_per_second:.2f} files/s, {s.megapixels_per_second:.2f} megapixels/s")
        for name, why in s.failed:
            lines.append(f"failed: {name}: {why}")
        if s.cancelled:
            self.resume.value = str(s.run_dir)  # Run batch again continues this run
            lines.append("Run batch again to continue this run (resume run is set); clear it for a new run.")
        self.summary_label.value = "\n".join(lines)
        self.status.value = "cancelled" if s.cancelled else f"done: {s.run_dir}"
        if s.failed:
            show_warning(f"{s.text()}; see {s.summary_csv}.")
        else:
            show_info(s.text() + ".")

    def _on_error(self, e: BaseException) -> None:
        log.error("batch failed", exc_info=(type(e), e, e.__traceback__))
        self.status.value = f"failed: {type(e).__name__}: {e}"

    def _on_finished(self) -> None:
        self._worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
        self.open_button.enabled = self.run is not None

    # --- layers ---------------------------------------------------------------------------------------------
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
            data = argmax_labels(data)
        elif not segmentation and data.shape[0] == 1:
            data = data[0]
        kind = Labels if segmentation else Image
        title = f"batch: {name}"
        layer = self.current_layer
        if layer is None or layer not in self.viewer.layers or not isinstance(layer, kind):
            if segmentation:
                layer = self.viewer.add_labels(data, name=title, opacity=0.6, cache=False)
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
                if key in ("labels", "labels_filtered"):
                    layer = self.viewer.add_labels(
                        da.stack([results[n][key] for n in names]), name=f"batch {key} ({tag})", opacity=0.6
                    )
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
