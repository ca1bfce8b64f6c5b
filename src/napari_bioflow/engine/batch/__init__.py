"""Batch prediction of a folder with a checkpoint: every file through the checkpoint's workflow, into the
experiment layout, resumable, with typed reports and a cooperative cancel. No Qt or napari here.

    run = BatchRun(BatchRequest(checkpoint=..., input_dir=..., output_dir=...))   # checks; claims the run folder
    for report in run.run():          # BatchStarted, FileStarted, FileProgress, FileDone | FileFailed, ..., BatchSummary
        ...
    run.cancel()                      # from any thread: stops after the current tile batch

Layout (a new run id per plain run; `resume=` continues an earlier run's folder in place):

    <output_dir>/<name>/config_files/<name>_<run>.yaml      the checkpoint's config with this run's predict settings
    <output_dir>/<name>/results/<name>_<run>/
        per_image/<stem>.zarr, per_image/<stem>.tif, per_image_binarized/<stem>.tif   (as the workflow writes them)
        metrics.csv              per file and over the set, when labels are given
        predictions.csv          one row per file, for workflows that predict one value per image (classification)
        batch_summary.csv        every file: done | failed (why) | cancelled | not run
        batch/manifest.json      what the run predicts (checkpoint, folders, file -> stem)
        batch/done/<stem>.json   completion marker of one file, written last and atomically (its FileRecord)

A file counts as finished only once its marker exists; a resumed run skips those and redoes the others from
scratch (their partial zarr store is removed first; TIFFs are written atomically anyway).

The per-file step dispatches on the workflow: dense workflows (every one so far) go through `ImagePrediction`;
a workflow with `dense = False` (classification) predicts one value per image through its own
`predict_file(loaded, image, name, run_dir, stem, device, target) -> {"prediction": {column: value},
"metrics": {...}}` (optional), and the rows go into predictions.csv.

The modules, each importing only those above it:

    records.py    the files, the task settings, blocks and what a task gives back (FileRecord, the marker)
    events.py     the request, the reports, and what an executor tells the run
    task.py       the work of one file or one block, the same in every executor
    plan.py       which files (whole or in blocks) a run predicts, as work units
    progress.py   executor events turned into reports, with the batch's progress and ETA
    summary.py    the tables (metrics.csv, predictions.csv, batch_summary.csv) and the BatchSummary
    executors.py  the Executor protocol and the LocalExecutor (this process, a helper thread)
    dask.py       the DaskExecutor (dask.distributed: one task per file or per block)
    run.py        BatchRun (set-up, then the generator of reports) and run_batch
    results.py    a run's results read back lazily (dask arrays)

The names below are imported from their module on first use, so that importing one module of the package (a dask
worker unpickling a task) loads only what that module needs.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "events": [
        "BatchRequest",
        "BatchStarted",
        "FileStarted",
        "FileProgress",
        "FileDone",
        "FileFailed",
        "BatchSummary",
        "TilesDone",
        "FileFinished",
    ],
    "records": [
        "FileItem",
        "TaskContext",
        "Block",
        "FileRecord",
        "BlockDone",
        "Unfinished",
        "marker_path",
        "read_record",
        "BATCH_DIR",
        "MANIFEST",
        "DONE_DIR",
        "BLOCKS_DIR",
        "BLOCK_CHUNK",
    ],
    "task": [
        "predict_item",
        "predict_block",
        "finish_blocks",
        "load_for_task",
        "open_channels_last",
        "clear_partial",
        "create_block_store",
    ],
    "plan": ["DEFAULT_BLOCK", "WorkUnit", "Plan", "plan_run", "plan_blocks", "block_shape", "splittable"],
    "summary": ["write_metrics_csv", "write_predictions_csv"],
    "executors": ["Executor", "LocalExecutor"],
    "run": ["BatchRun", "run_batch"],
    "results": ["finished_records", "lazy_results", "stacked_results", "lazy_inputs"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
