"""The runs of an output folder, read back from what the engine wrote (no Qt here): each run's kind, workflow, date,
best metric and status, and its files. The layout is engine/experiment.py's:

<output_dir>/<name>/config_files/<run>.yaml, checkpoints/<run>-checkpoint-{best,last}.pth, results/<run>/
(train_logs/<run>_log.csv, per_image/<stem>.zarr, per_image_binarized/, metrics.csv, batch/manifest.json,
batch_summary.csv)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass
class RunInfo:
    name: str  # <experiment>_<id>
    experiment: Path  # the experiment folder <output_dir>/<name>
    kind: str  # training | prediction | batch
    workflow: str
    date: datetime
    best: str  # e.g. "IoU 0.812 (epoch 3)"; "" when none
    status: str

    @property
    def results(self) -> Path:
        return self.experiment / "results" / self.name

    @property
    def config(self) -> Path:
        return self.experiment / "config_files" / f"{self.name}.yaml"

    @property
    def log(self) -> Path:
        return self.results / "train_logs" / f"{self.name}_log.csv"

    @property
    def checkpoint(self) -> Path | None:
        for which in ("best", "last"):
            path = self.experiment / "checkpoints" / f"{self.name}-checkpoint-{which}.pth"
            if path.is_file():
                return path
        return None

    def stores(self) -> list[Path]:
        """The zarr stores of its predictions (per image or per batch file), in name order."""
        folder = self.results / "per_image"
        return sorted(folder.glob("*.zarr")) if folder.is_dir() else []


def read_rows(path: Path) -> list[dict]:
    """The rows of a CSV file (numbers as floats where they parse); [] when it is missing or unreadable."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return []

    def number(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return v

    return [{k: number(v) for k, v in row.items()} for row in rows]


def _config(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def workflow_of(cfg: dict):
    """The workflow class a saved config names (its variant too); None when unknown."""
    from ..config import RunConfig
    from ..engine.workflows.base import workflow_class

    try:
        cls = workflow_class(cfg.get("workflow", RunConfig.model_fields["workflow"].default))
        if cls.variant:
            section, key = cls.variant[0].split(".")
            cls = workflow_class(cls.name, (cfg.get(section) or {}).get(key))
        return cls
    except (KeyError, ValueError, AttributeError):
        return None


def best_of(rows: list[dict], metric: str) -> str:
    """The best value of the workflow's chart metric over the epochs (higher is better), or the lowest validation
    loss when the log has no such column."""
    from ..engine.workflows.spec import metric as metric_spec

    scored = [
        (r[metric], int(r["epoch"])) for r in rows if isinstance(r.get(metric), float) and not math.isnan(r[metric])
    ]
    if scored:
        value, epoch = max(scored)
        return f"{metric_spec(metric).format(value)} (epoch {epoch})"
    losses = [(r["val_loss"], int(r["epoch"])) for r in rows if isinstance(r.get("val_loss"), float)]
    losses = [(v, e) for v, e in losses if not math.isnan(v)]
    if losses:
        value, epoch = min(losses)
        return f"val loss {value:.4f} (epoch {epoch})"
    return ""


def _batch_status(results: Path) -> str:
    rows = read_rows(results / "batch_summary.csv")
    if not rows:
        return "unfinished"
    counts: dict[str, int] = {}
    for row in rows:
        status = str(row.get("status", "")).split(" ")[0] or "?"
        counts[status] = counts.get(status, 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def run_info(experiment: Path, results: Path) -> RunInfo:
    name = results.name
    cfg = _config(experiment / "config_files" / f"{name}.yaml")
    wf = workflow_of(cfg)
    workflow = wf.full_title() if wf is not None else str(cfg.get("workflow", "?"))
    date = datetime.fromtimestamp(results.stat().st_mtime)
    info = RunInfo(name, experiment, "prediction", workflow, date, "", "")
    if (results / "batch" / "manifest.json").is_file():
        info.kind, info.status = "batch", _batch_status(results)
    elif info.log.is_file() or info.checkpoint is not None:
        info.kind = "training"
        rows = read_rows(info.log)
        epochs = int((cfg.get("train") or {}).get("epochs", 0) or 0)
        done = int(rows[-1]["epoch"]) if rows and isinstance(rows[-1].get("epoch"), float) else 0
        info.best = best_of(rows, wf.chart_metric if wf is not None else "")
        info.status = "finished" if epochs and done >= epochs else f"stopped at epoch {done}/{epochs or '?'}"
    else:
        info.status = f"{len(info.stores())} image(s)" if info.stores() else "no result"
    if info.kind != "training":
        metrics = [r for r in read_rows(results / "metrics.csv") if str(r.get("image", "")).startswith("ALL")]
        if metrics:
            from ..engine.workflows.spec import metric as metric_spec

            info.best = " · ".join(
                metric_spec(k).format(v) for k, v in metrics[0].items() if isinstance(v, float) and "class" not in k
            )
    return info


def list_runs(output_dir: Path) -> list[RunInfo]:
    """Every run under `output_dir`, newest first."""
    output_dir = Path(output_dir)
    runs = []
    if not output_dir.is_dir():
        return runs
    for experiment in sorted(p for p in output_dir.iterdir() if (p / "results").is_dir()):
        for results in sorted(p for p in (experiment / "results").iterdir() if p.is_dir()):
            runs.append(run_info(experiment, results))
    return sorted(runs, key=lambda r: r.date, reverse=True)


def lazy_arrays(store: Path) -> dict[str, object]:
    """{array name: dask array} of a prediction's zarr store (its arrays are sub-folders; working arrays such as the
    accumulator left out); nothing is read."""
    import dask.array as da
    import zarr

    out = {}
    for folder in sorted(p for p in Path(store).iterdir() if p.is_dir()):
        if folder.name == "accumulator" or not any((folder / m).is_file() for m in ("zarr.json", ".zarray")):
            continue
        try:
            out[folder.name] = da.from_zarr(zarr.open_array(str(folder), mode="r"))
        except Exception:  # an unfinished or foreign array: not shown
            continue
    return out
