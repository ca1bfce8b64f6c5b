"""Prediction of whole images and folders with a trained model, written into the experiment layout.

`ImagePrediction` is set up first (checks, tile plan, the prediction zarr) and run second, so a viewer can add a
dask-backed layer over the prediction (`lazy()`) and watch tiles land while a worker runs it. Memory is bounded by the
tiles, not the image (see engine/predict/sliding_window.py and benchmarks/README.md section c).
"""

from __future__ import annotations

import csv
import inspect
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import Cancelled, InputError
from ..storage import writing

TILE_CAP = {2: 2048, 3: 128}  # per axis: a 2048x2048 image is one tile, so tiling costs nothing there
# voxels per forward pass: bounds activation memory whatever the tile size. 3D activations cost several hundred
# bytes per voxel on CPU (default U-Net ~500 B), so a 3D pass is one default 128^3 tile (benchmarks/bench_memory.py)
BATCH_VOXELS = {2: 4 * 2**20, 3: 2 * 2**20}


def default_tile(cfg, spatial: tuple[int, ...], divisor: int) -> list[int]:
    """The config's tile, or the largest tile up to TILE_CAP per axis (never below the patch size)."""
    if cfg.predict.tile_size:
        return list(cfg.predict.tile_size)
    cap = TILE_CAP[cfg.ndim]
    return [max(p, min(cap, -(-d // divisor) * divisor)) for p, d in zip(cfg.data.patch_size, spatial)]


def tile_batch(cfg, tile: list[int]) -> int:
    """Tiles per forward pass: the config's batch, lowered for big tiles so a pass stays within BATCH_VOXELS."""
    return max(1, min(cfg.predict.batch_size, BATCH_VOXELS[len(tile)] // int(np.prod(tile))))


@dataclass
class ImageResult:
    name: str
    outputs: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    paths: dict[str, list[Path]] = field(default_factory=dict)  # every array and file written, by output key
    notes: list[str] = field(default_factory=list)  # what the user should know (a filter that did not apply)


class ImagePrediction:
    def __init__(
        self,
        loaded,
        image,
        name: str,
        out_dir: Path,
        stem: str,
        device: str = "cpu",
        target=None,
        target_name: str = "",
        finite_checked: bool = False,
        scale=None,
    ):
        """`finite_checked`: the caller has just scanned `image` for NaN/inf (check_inputs, a dock's worker), so a
        second full read of the pixels is skipped. `scale`: the input's PhysicalScale (engine/predict/scale.py) for
        outputs that carry one."""
        from ..data.sources import check_finite, lazy_array, to_channels_last
        from .accumulator import ZarrAccumulator
        from .tiling import prediction_plan
        from .writer import OutputWriter

        cfg = loaded.config
        self.loaded, self.name, self.out_dir, self.stem, self.device = loaded, name, Path(out_dir), stem, device
        self.cfg, self.workflow = cfg, loaded.workflow
        source = f"checkpoint {loaded.path}" if loaded.path else ""
        self.image = to_channels_last(image, cfg.ndim, cfg.data.in_channels, name, source, cfg.data.axes)
        if not finite_checked:
            check_finite(self.image, name)
        spatial = tuple(self.image.shape[:-1])
        self.target = None
        if target is not None:
            target = lazy_array(target)
            notes: list[str] = []
            flags = self.workflow.check_target(target, target_name or f"the labels of {name}", spatial, cfg, notes)
            target = flags.get("label", target)
            self.target = lambda region: self.workflow.full_target(target, region, flags)
        divisor = loaded.model.size_divisor
        self.tile, self.overlap = self.workflow.tiling(cfg, spatial, divisor)
        self.full_image = bool(cfg.predict.full_image)
        if self.full_image:  # one pass over the whole image, when it fits (else one sentence)
            from .full_image import check_full_image_fits, full_image_tile

            self.tile = full_image_tile(spatial, divisor)
            check_full_image_fits(loaded, self.tile, name, device)
        # The one plan of this image: its tiles are the ones run (square with TTA) and its steps the zarr chunks.
        self.tta = bool(cfg.predict.tta)
        self.plan = prediction_plan(spatial, self.tile, self.overlap, divisor, self.tta)
        self.writer = OutputWriter(cfg, self.out_dir, stem, scale)
        self.store = self.writer.store
        for path in (self.store, *(self.writer.ome_path(o.folder) for o in self.workflow.outputs)):
            if path.exists():
                raise InputError(f"{path} exists already; results are never overwritten.")
        self.store.parent.mkdir(parents=True, exist_ok=True)
        self.out_channels = self.workflow.prediction_channels(cfg)
        # The blended result is written straight into its final array (by whole chunks, aligned with the tiles): the
        # zarr store's prediction, or the OME-Zarr image of the output it is; "accumulator" only holds overlaps
        # spilled to disk while tiles are predicted.
        as_output = next((o for o in self.workflow.outputs if o.from_prediction), None)
        with writing(self.store.parent, f"the prediction of {name}"):
            array_path = self.writer.prediction_path(
                as_output.key if as_output else None,
                (self.out_channels, *spatial),
                as_output is not None and as_output.layer == "labels",
            )
            self.accumulator = ZarrAccumulator.create(
                self.store / "accumulator",
                (self.out_channels, *spatial),
                self.plan.chunks,
                array_path=array_path,
            )
            self.prediction_path = array_path

    def lazy(self):
        """The prediction as a dask array, readable at any time while tiles are written."""
        return self.accumulator.lazy()

    def run(
        self, cancel: Callable[[], bool] | None = None, progress: Callable[[int, int], None] | None = None
    ) -> ImageResult:
        """Predict and write the outputs; a full disk is a DiskFull naming the folder (no `.part` file left)."""
        with writing(self.out_dir, f"the prediction of {self.name}"):
            return self._run(cancel, progress)

    def _run(self, cancel, progress) -> ImageResult:

        from .sliding_window import PredictionCancelled, sliding_window_predict

        start = time.perf_counter()
        model, wf = self.loaded.model, self.workflow
        model.to(self.device).eval()

        if "writer" in inspect.signature(wf.prediction_input).parameters:  # it writes files (crappify: degraded)
            image, inputs = wf.prediction_input(self.image, self.cfg, self.out_dir, self.stem, writer=self.writer)
        else:
            image, inputs = wf.prediction_input(self.image, self.cfg, self.out_dir, self.stem)
        try:
            sliding_window_predict(
                image,
                wf.prediction_forward(model, self.cfg),
                out_channels=self.out_channels,
                plan=self.plan,
                batch_size=tile_batch(self.cfg, self.tile),
                tta=self.tta,
                device=self.device,
                preprocess=self.loaded.normalizer,
                out=self.accumulator,
                cancel=cancel,
                progress=progress,
            )
        except PredictionCancelled:
            raise Cancelled(f"prediction of {self.name} cancelled") from None
        except Exception as e:  # noqa: BLE001  (a failed allocation becomes one sentence; anything else is re-raised)
            from ..train.memory import is_out_of_memory, prediction_failure

            if not is_out_of_memory(e):
                raise
            e.__traceback__ = None  # let the tiles held by its frames go
            raise InputError(
                prediction_failure(self.name, self.plan.tile_shape, tile_batch(self.cfg, self.tile), self.device)
            ) from None
        prob = self.accumulator.finalize(self.prediction_path)  # the array itself: nothing to copy
        inputs = {**(inputs or {}), "writer": self.writer}  # every output is written through it
        outputs = wf.write_outputs(prob, self.store, self.out_dir, self.stem, self.cfg, self.target, inputs)
        if not self.writer.arrays:  # outputs held in memory only (self-supervision): the blended prediction
            self.writer.arrays["prediction"] = self.prediction_path
        labels = tuple(o.key for o in wf.outputs if o.layer == "labels")
        paths = self.writer.finish(labels_keys=labels)
        notes = outputs.pop("notes", [])
        return ImageResult(self.name, outputs, outputs.pop("metrics", {}), time.perf_counter() - start, paths, notes)

    def cleanup(self) -> None:
        """Drop what the prediction spilled to disk, if anything (the final arrays stay), and the store when it
        holds nothing (OME-Zarr outputs)."""
        shutil.rmtree(self.store / "accumulator", ignore_errors=True)
        try:
            self.store.rmdir()
        except OSError:
            pass


def check_inputs(cfg, files: list[tuple[Path, Path | None]], source: str = "") -> list[str]:
    """Open and check every (raw, optional label) file as ImagePrediction will, so a bad file stops a run before
    anything is written or trained. `cfg` gives ndim, channels and classes; `source` names what fixed them
    (e.g. "checkpoint PATH"). Returns notes for the user (0/255 masks)."""
    from ..data.input_notes import mixed_types_note
    from ..data.io import open_image
    from ..data.sources import check_finite, lazy_array, to_channels_last
    from ..workflows import get_workflow

    notes: list[str] = []
    workflow = get_workflow(cfg)
    types = []
    for raw_path, label_path in files:
        image = to_channels_last(
            open_image(raw_path), cfg.ndim, cfg.data.in_channels, str(raw_path), source, cfg.data.axes
        )
        types.append((str(raw_path), image.dtype))
        check_finite(image, str(raw_path))
        if label_path is not None:
            workflow.check_target(
                lazy_array(open_image(label_path)), str(label_path), tuple(image.shape[:-1]), cfg, notes
            )
    mixed = mixed_types_note(types, "images to predict")
    return notes + ([mixed] if mixed else [])


def predict_files(
    loaded,
    files: list[tuple[Path, Path | None]],
    out_dir: Path,
    device: str = "cpu",
    cancel: Callable[[], bool] | None = None,
    finite_checked: bool = False,
) -> Iterator[ImageResult]:
    """Predict each (raw, optional label) file into `out_dir`; writes metrics.csv when labels are given.
    `finite_checked`: check_inputs has just scanned these files for NaN/inf."""
    from ..data.io import open_image
    from ..data.multi_raw import sample_view_name
    from ..data.pairing import assign_stems, image_name
    from .postprocess import stack_2d
    from .scale import resolve_scale

    # output names as a batch gives them: img.tif and img.png of one folder become img_tif and img_png, decided
    # before anything is written; views of data.multiple_raw's samples (sub-folders) may share file names: named
    # sample/view
    multi = loaded.config.data.multiple_raw and len({Path(p).parent for p, _ in files}) > 1
    name_of = sample_view_name if multi else image_name
    stems = assign_stems([name_of(raw_path) for raw_path, _ in files])
    rows, totals, done = [], {}, []
    for raw_path, label_path in files:
        if cancel is not None and cancel():
            raise Cancelled("prediction cancelled")
        target = open_image(label_path) if label_path is not None else None
        job = ImagePrediction(
            loaded,
            open_image(raw_path),
            str(raw_path),
            out_dir,
            stems[name_of(raw_path)],
            device,
            target,
            str(label_path or ""),
            finite_checked,
            scale=resolve_scale(loaded.config, path=raw_path),
        )
        result = job.run(cancel)
        job.cleanup()
        for key in ("counts", "counts_post_processing"):
            _pool(totals, key, result.outputs.pop(key, None))
        if result.metrics:
            rows.append({"image": name_of(raw_path), **result.metrics})
        if done:  # the last image waits for the set's post-processing (its notes go with it)
            yield done[-1][0]
        done.append((result, job.target, stems[name_of(raw_path)]))
    # 2D images post-processed as one 3D stack (predict.stack_2d): IoU after filtering joins each image's row
    after, notes = stack_2d(loaded.config, out_dir, done)
    by_name = {r["image"]: r for r in rows}
    for result, _, _ in done:
        extra = after.get(result.name)
        if extra is not None:
            _pool(totals, "counts_post_processing", extra.pop("_counts"))
            result.metrics.update(extra)
            by_name.get(name_of(Path(result.name)), {}).update(extra)
    if done:
        done[-1][0].notes.extend(notes)
        yield done[-1][0]
    write_metrics(out_dir, rows, totals)


def _pool(totals: dict, key: str, counts) -> None:
    if counts is not None:
        have = totals.get(key)
        totals[key] = counts if have is None else (have[0] + counts[0], have[1] + counts[1])


def write_metrics(out_dir: Path, rows: list[dict], totals: dict) -> None:
    """metrics.csv: a row per image and one over the set (IoU pools the pixels rather than averaging per-image IoUs,
    before and after post-processing; other metrics are averaged)."""
    if not rows:
        return
    from ..train.metrics import iou_from_counts

    keys = list(dict.fromkeys(k for r in rows for k in r))
    if "counts" in totals:
        total = {"image": "ALL (pixels pooled)", **iou_from_counts(*totals["counts"])}
        if "counts_post_processing" in totals:
            pooled = iou_from_counts(*totals["counts_post_processing"])
            total.update({f"{k}_post_processing": v for k, v in pooled.items()})
        rows.append(total)
    else:
        rows.append(
            {
                "image": "ALL (mean)",
                **{k: float(np.mean([r[k] for r in rows if k in r])) for k in keys if k != "image"},
            }
        )
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with writing(out_dir, "metrics.csv"), open(out_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, restval="")
        w.writeheader()
        w.writerows(rows)


def predict_array(
    loaded, image, device: str = "cpu", tile_size: list[int] | None = None, channels_last: bool = False
) -> np.ndarray:
    """Predict a small in-memory image ((Z,)Y,X[,C], any layout `to_channels_last` accepts; with channels_last,
    already (Z,)Y,X,C as samples hold it) to a numpy array (C, (Z,)Y,X): the training preview, the validation
    threshold and quick checks. Big images go through ImagePrediction instead."""

    from ..data.sources import to_channels_last
    from .sliding_window import sliding_window_predict

    cfg, wf, model = loaded.config, loaded.workflow, loaded.model
    if not channels_last:
        image = to_channels_last(image, cfg.ndim, cfg.data.in_channels, "image", axes=cfg.data.axes)
    tile, overlap = wf.tiling(cfg, tuple(image.shape[:-1]), model.size_divisor)
    tile = tile_size or tile
    was_training = model.training
    model.eval()
    try:
        return sliding_window_predict(
            image,
            wf.prediction_forward(model, cfg),
            out_channels=wf.prediction_channels(cfg),
            tile_size=tile,
            overlap=overlap,
            batch_size=tile_batch(cfg, tile),
            device=device,
            divisor=model.size_divisor,
            preprocess=loaded.normalizer,
        )
    finally:
        model.train(was_training)
