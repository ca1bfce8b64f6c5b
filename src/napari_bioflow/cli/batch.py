"""`batch`: a whole folder, resumable, in this process or on dask; exit 3 when some files failed."""

from __future__ import annotations

import sys

from .common import FAILED_FILES, _print
from .predict import output_overrides


def cmd_batch(args) -> int:
    """Predict every image of a folder into a new run (or continue one with --resume), on this machine or dask.
    Returns 3 when the batch finished with failed files (FAILED_FILES), 0 when every file was predicted."""
    from ..engine.batch import BatchRequest, BatchRun, BatchStarted, BatchSummary, FileDone, FileFailed
    from ..engine.storage import DiskFull

    request = BatchRequest(
        checkpoint=args.checkpoint,
        input_dir=args.input,
        labels_dir=args.labels,
        output_dir=args.output,
        name=args.name,
        resume=args.resume,
        device=args.device,
        overrides=[*output_overrides(args), *args.set],
        scheduler=args.scheduler,
        workers=args.workers or 0,
        block_size=args.block_size,
        halo=args.halo,
    )
    run = BatchRun(request)
    finished = 0
    total = 0
    failed = False
    try:
        for r in run.run():
            if isinstance(r, BatchStarted):
                total = len(r.to_do)
                earlier = f", {len(r.finished_earlier)} finished earlier" if r.finished_earlier else ""
                _print(f"run {r.run_dir} ({r.mode}): {total} image(s) to predict{earlier}")
                if r.unfinished_earlier is not None:
                    _print(f"note: {r.hint()}: napari-bioflow batch --resume {r.unfinished_earlier[0]}")
            elif isinstance(r, FileDone):
                finished += 1
                parts = [f"{r.seconds:.1f} s"] + [
                    f"{k}={v:.4f}" for k, v in r.metrics.items() if not k.startswith("iou_class")
                ]
                eta = f", eta {r.eta_seconds:.0f} s" if r.eta_seconds else ""
                _print(f"[{finished}/{total}] {r.name}: {' '.join(parts)} ({r.overall:.0%} done{eta})")
            elif isinstance(r, FileFailed):
                finished += 1
                _print(f"[{finished}/{total}] FAILED {r.name}: {r.reason}")
            elif isinstance(r, BatchSummary):
                _print(r.text())
                if r.predictions_csv is not None and not run.loaded.workflow.dense:
                    from ..engine.predict.classification_results import predictions_text

                    text = predictions_text(r.predictions_csv, run.loaded.config.class_names)
                    if text:  # class sub-folders: the confusion matrix and per-class values
                        _print(text)
                _print(f"throughput: {r.files_per_second:.2f} files/s, {r.megapixels_per_second:.2f} megapixels/s")
                for name, why in r.failed:
                    _print(f"failed: {name}: {why}")
                failed = bool(r.failed)
                for label, path in (
                    ("metrics", r.metrics_csv),
                    ("predictions", r.predictions_csv),
                    ("summary", r.summary_csv),
                ):
                    if path is not None:
                        _print(f"{label}: {path}")
                if r.not_run:
                    _print(f"continue with: napari-bioflow batch --resume {r.run_dir}")
    except DiskFull as e:  # the files finished so far are kept: the run goes on once there is space
        raise e.advise(f"free some space, then continue with: napari-bioflow batch --resume {run.run_dir}") from None
    except KeyboardInterrupt:
        print(
            f"napari-bioflow: interrupted; continue with: napari-bioflow batch --resume {run.run_dir}", file=sys.stderr
        )
        raise SystemExit(130) from None
    if failed:
        _print(f"finished with failures: exit status {FAILED_FILES}")
    return FAILED_FILES if failed else 0
