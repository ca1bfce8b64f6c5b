"""The typed reports Trainer.run() yields: the run's start, each step, each epoch and its end."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union


@dataclass
class StartReport:
    run_name: str
    experiment_dir: Path
    steps_per_epoch: int
    n_train: int
    n_val: int
    notes: list[str] = field(default_factory=list)


@dataclass
class StepReport:
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    eta_seconds: float


@dataclass
class EpochReport:
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float
    metrics: dict[str, float]
    learning_rate: float
    seconds: float
    eta_seconds: float
    improved: bool


@dataclass
class DoneReport:
    reason: str  # finished | early_stopped | cancelled
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    checkpoint: Path | None
    experiment_dir: Path


Report = Union[StartReport, StepReport, EpochReport, DoneReport]
