"""The Batch dock's fields and layout, and the BatchRequest they make (checked on the GUI thread, so bad input is
reported at once)."""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, LineEdit, ProgressBar, PushButton, SpinBox

from ..engine.errors import InputError
from ..engine.train.devices import device_choices
from .fields import ConfigForm, compact, config_field, dock_layout, form, group, section, status_label
from .shared import last_trained

JUST_TRAINED, FROM_FILE = "model just trained", "checkpoint file"
HERE, LOCAL_DASK, SCHEDULER = "this process", "local dask cluster", "dask scheduler"


def _text(edit: FileEdit) -> Path | None:
    text = str(edit.line_edit.value).strip()
    return Path(text) if text and text != "." else None  # a cleared FileEdit reads "."


class BatchForm:
    """Mixin of BatchWidget: its fields, what shows, and the request they make."""

    def _build_form(self) -> None:
        self.model_source = ComboBox(
            choices=[FROM_FILE, JUST_TRAINED],
            value=FROM_FILE,
            label="model",
            tooltip="A checkpoint file, or the best checkpoint of the training just done in the Train dock",
        )
        self.checkpoint = compact(
            FileEdit(
                mode="r",
                filter="*.pth *.zip",
                label="checkpoint",
                tooltip="A napari-bioflow checkpoint (.pth) or a BioImage Model Zoo package it exported (.zip)",
            )
        )
        self.trained = status_label(
            "none yet: train one in the Train dock", label="trained", tooltip="The checkpoint of the last training"
        )
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
        f.add("device", choices=device_choices())  # auto, cpu and the GPUs found
        f.add("predict.output_format", label="output format")
        f.add("predict.full_image", label="whole image in one pass")
        self.where = ComboBox(
            choices=[HERE, LOCAL_DASK, SCHEDULER],
            value=HERE,
            label="run on",
            tooltip="This process; a dask LocalCluster of worker processes on this machine; or the "
            "dask cluster behind a scheduler address (files on a shared file system)",
        )
        self.workers = SpinBox(
            value=2, min=1, max=256, label="dask workers", tooltip="Worker processes of the local dask cluster"
        )
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
        self.show_current = CheckBox(
            value=True,
            label="show each result as it is produced",
            tooltip="One layer shows the current file's result while it is computed",
        )
        self.run_button = PushButton(text="Run batch", tooltip="Predict every file of the input folder")
        self.cancel_button = PushButton(text="Cancel", enabled=False, tooltip="Stop after the current tile")
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
        self.message = status_label(tooltip="The last message of this dock, in full (select to copy)")

        self.advanced = section(
            "Advanced",
            form(
                self.tile,
                f["predict.batch_size"],
                f["device"],
                self.where,
                self.workers,
                self.scheduler,
                self.block_size,
            ),
            expanded=False,
        )
        from .classes import ResultsTable

        self.classes = ResultsTable()  # classification: a row per file as it is classified
        self.classes.setVisible(False)
        sections = [
            section(
                "Model and images",
                form(self.model_source, self.checkpoint, self.trained, self.input, self.labels, f["predict.tta"]),
            ),
            section(
                "Output",
                form(f["name"], f["output_dir"], f["predict.output_format"], f["predict.full_image"], self.resume),
            ),
            self.advanced,
            self.classes,
        ]
        buttons = Container(
            widgets=[self.run_button, self.cancel_button, self.open_button], layout="horizontal", labels=False
        )
        buttons.margins = (0, 0, 0, 0)
        run = group(
            "Run",
            buttons,
            self.show_current,
            form(self.file_progress, self.overall),
            self.status,
            self.message,
            self.summary_label,
        )
        self._scroll = dock_layout(self, sections, [run])
        self.setMinimumWidth(320)

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
            overrides += [f"predict.output_format={predict['output_format']}"]
            overrides += ["predict.full_image=true"] if predict["full_image"] else []
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
        """The fields read here (GUI thread) into `make()`, which opens the checkpoint and sets the run up (seconds):
        call it in a worker."""
        from functools import partial

        return partial(make_batch_run, self.request(), self.tile.value)


def make_batch_run(request, tile: int):
    """The engine's BatchRun for `request` (its checks, the checkpoint opened, the run folder claimed); `tile`: the
    dock's tile size per axis (0: the checkpoint's)."""
    from ..engine.batch import BatchRun
    from ..engine.train.checkpoint_info import checkpoint_ndim

    if tile and request.resume is None:  # the tile has as many axes as the model's images (a package's too)
        ndim = checkpoint_ndim(request.checkpoint) or 2
        request.overrides.append(f"predict.tile_size={[tile] * ndim}")
    return BatchRun(request)
