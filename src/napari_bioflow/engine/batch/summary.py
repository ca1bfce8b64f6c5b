"""The end of a batch run: its tables (metrics.csv, predictions.csv, batch_summary.csv), written atomically from
the records of every finished file of the run folder (earlier runs' included), and the BatchSummary."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np

from ..storage import discard
from .events import BatchSummary
from .plan import Plan
from .progress import Progress
from .records import FileItem, FileRecord, marker_path, read_record


def write_csv(path: Path, rows: list[dict]) -> Path:
    tmp = path.with_name(path.name + ".part")
    try:
        with open(tmp, "w", newline="") as f:
            fields: list[str] = []
            for r in rows:
                fields += [k for k in r if k not in fields]
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise
    return path


def write_metrics_csv(run_dir: Path, records: list[tuple[FileItem, FileRecord]]) -> Path | None:
    """metrics.csv as predict_files writes it: one row per file, then the set (IoU from pooled pixel counts)."""
    rows = [{"image": it.name, **rec.metrics} for it, rec in records if rec.metrics]
    if not rows:
        return None
    counts = [rec.counts for it, rec in records if rec.metrics]
    if all(c is not None for c in counts):
        from ..train.metrics import iou_from_counts

        inter = sum(np.asarray(c[0], np.int64) for c in counts)
        union = sum(np.asarray(c[1], np.int64) for c in counts)
        rows.append({"image": "ALL (pixels pooled)", **iou_from_counts(inter, union)})
    else:
        keys = [k for k in rows[0] if k != "image"]
        rows.append({"image": "ALL (mean)", **{k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}})
    return write_csv(run_dir / "metrics.csv", rows)


def write_predictions_csv(
    run_dir: Path, records: list[tuple[FileItem, FileRecord]], column: str = "image"
) -> Path | None:
    """predictions.csv of a per-image workflow: a row per file, named in `column` by its path inside the input folder."""
    rows = [{column: it.name, **rec.prediction} for it, rec in records if rec.prediction]
    return write_csv(run_dir / "predictions.csv", rows) if rows else None


def summarize(
    run_dir: Path, items: list[FileItem], plan: Plan, progress: Progress, loaded, cancelled: bool, start: float
) -> BatchSummary:
    """Write the run's tables and return its summary."""
    done_here = progress.records
    failed_names = {n for n, _ in progress.failed}
    not_run = [it.name for it in plan.todo if it.name not in failed_names and it.stem not in done_here]
    records = []
    for it in items:  # every finished file of the run folder, earlier ones included
        rec = done_here.get(it.stem)
        if rec is None and it in plan.earlier:
            rec = read_record(marker_path(run_dir, it.stem))
        if rec is not None:
            records.append((it, rec))
    metrics_csv = write_metrics_csv(run_dir, records)
    wf = loaded.workflow  # e.g. classification: rows named "file", metrics and confusion matrix over the set
    predictions_csv = write_predictions_csv(run_dir, records, wf.rows_column)
    metrics_csv = (
        wf.write_set_metrics(run_dir, [rec.prediction for _, rec in records if rec.prediction], loaded.config)
        or metrics_csv
    )
    reasons = dict(progress.failed)
    rows = []
    for it in items:
        if it.name in reasons:
            rows.append({"image": it.name, "status": "failed", "seconds": "", "reason": reasons[it.name]})
        elif it.stem in done_here:
            rows.append(
                {"image": it.name, "status": "done", "seconds": f"{done_here[it.stem].seconds:.3f}", "reason": ""}
            )
        elif it in plan.earlier:
            rows.append({"image": it.name, "status": "done earlier", "seconds": "", "reason": ""})
        else:
            rows.append(
                {"image": it.name, "status": "not run", "seconds": "", "reason": "cancelled: a resumed run predicts it"}
            )
    summary_csv = write_csv(run_dir / "batch_summary.csv", rows)
    megapixels = sum(it.pixels for it in plan.todo if it.stem in done_here) / 1e6
    return BatchSummary(
        run_dir,
        list(progress.done),
        [it.name for it in plan.earlier],
        list(progress.failed),
        not_run,
        cancelled and bool(not_run),
        time.perf_counter() - start,
        megapixels,
        metrics_csv,
        predictions_csv,
        summary_csv,
    )
