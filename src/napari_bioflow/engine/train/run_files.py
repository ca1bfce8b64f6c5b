"""What a run writes beside its checkpoints: the claimed run folder (and its removal when nothing was saved), the
per-epoch CSV log and the charts; `Nothing` stands in for the log and charts on the ranks that write nothing."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path


def claim_run(cfg, created: list | None = None):
    from ..experiment import folders_to_create, new_experiment

    if created is not None:
        created.extend(folders_to_create(cfg.output_dir, cfg.name))
    exp = new_experiment(cfg.output_dir, cfg.name)
    cfg.save(exp.config_path)
    return exp


def discard_unsaved_run(exp, created: list) -> None:
    """Take away a run that ended before any checkpoint was written (its config, its results folder and the
    folders its claim created, when empty): nothing of it would be worth keeping."""
    import shutil

    if exp.best_checkpoint.exists() or exp.last_checkpoint.exists():
        return
    exp.config_path.unlink(missing_ok=True)
    shutil.rmtree(exp.results, ignore_errors=True)
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:  # not empty (another run), or gone already
            pass


class Nothing:
    """Stands in for the log and charts on the ranks that write nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class EpochLog:
    """Per-epoch CSV log; the header is fixed by the first row."""

    def __init__(self, path: Path):
        self.path, self.fields = path, None

    def write(self, row: dict) -> None:
        from ..storage import writing

        new = self.fields is None
        if new:
            self.fields = list(row)
        with writing(self.path.parent, self.path.name), open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


class Charts:
    """Loss and metric charts (PNG), redrawn at most every `every` seconds so drawing never slows training."""

    def __init__(self, folder: Path, run_name: str, metric: str, every: float = 30.0):
        self.folder, self.run_name, self.metric, self.every = folder, run_name, metric, every
        self.rows: list[dict] = []
        self.last = -math.inf

    def update(self, row: dict) -> None:
        self.rows.append(row)
        self.draw()

    def draw(self, force: bool = False) -> None:
        if not self.rows or (not force and time.perf_counter() - self.last < self.every):
            return
        from .charts import plot_history

        plot_history(self.rows, self.folder / f"{self.run_name}_loss.png", ["train_loss", "val_loss"], "loss")
        if self.metric and self.metric in self.rows[-1]:
            plot_history(self.rows, self.folder / f"{self.run_name}_{self.metric}.png", [self.metric], self.metric)
        self.last = time.perf_counter()
