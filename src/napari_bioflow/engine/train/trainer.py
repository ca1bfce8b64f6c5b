"""The trainer shared by every workflow: loop, validation, early stopping, checkpoints, logs and charts.

`Trainer.run()` is a generator of typed reports. The caller (CLI, widget worker, test) decides what to do with
them; while the caller handles a report the trainer is paused, which is what lets a widget compute a preview with
the current model between epochs. Cancelling is a flag checked at batch boundaries; the best checkpoint stays valid.
"""

from __future__ import annotations

import csv
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from ..errors import InputError
from .distributed import Distributed


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


def resolve_device(name: str) -> str:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device is 'cuda' but no CUDA GPU is available; use 'auto' or 'cpu'.")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def transfer_weights(model, path: Path, unused: list[str] | None = None) -> tuple[int, list[str]]:
    """Load the tensors of a checkpoint whose names and shapes match; return (loaded count, names of the model's
    tensors left initialised). `unused`, when given, receives the checkpoint's tensors that were not loaded."""
    from .checkpoint import read_weights

    source, source_name = read_weights(path)
    own = model.state_dict()
    matched = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    if not matched:
        same = next((k for k in source if k in own), None)
        dims = lambda t: "x".join(map(str, t.shape)) or "scalar"  # noqa: E731
        why = (
            f"its tensor names match but not their shapes ({same} is {dims(source[same])} there, {dims(own[same])} here)"
            if same
            else "no tensor name matches"
        )
        raise InputError(
            f"Checkpoint {path} shares no weights with model '{model.model_name}' (it holds a "
            f"'{source_name}' model): {why}."
        )
    model.load_state_dict(matched, strict=False)
    if unused is not None:
        unused.extend(sorted(k for k in source if k not in matched))
    return len(matched), sorted(k for k in own if k not in matched)


def _names(names: list[str], shown: int = 8) -> str:
    """': a, b, c ...' for a note (the first `shown` names), '' for none."""
    return (": " + ", ".join(names[:shown]) + (" ..." if len(names) > shown else "")) if names else ""


def _optimizer(cfg, params):
    import torch

    t = cfg.train
    if t.optimizer == "SGD":
        return torch.optim.SGD(params, lr=t.learning_rate, momentum=t.momentum, weight_decay=t.weight_decay)
    cls = torch.optim.AdamW if t.optimizer == "ADAMW" else torch.optim.Adam
    return cls(params, lr=t.learning_rate, weight_decay=t.weight_decay)


def _scheduler(cfg, optimizer, steps_per_epoch: int):
    """Return (scheduler, per_step): per-step schedules advance every batch, reduce-on-plateau every epoch."""
    import torch

    t = cfg.train
    total = t.epochs * steps_per_epoch
    if t.scheduler == "reduce_on_plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=0.5, patience=max(1, t.patience // 2)
        ), False
    if t.scheduler == "one_cycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=t.learning_rate, total_steps=total), True
    if t.scheduler == "warmup_cosine":
        warm = t.warmup_epochs * steps_per_epoch

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True
    return None, False


class Trainer:
    def __init__(self, cfg, train=None, val=None):
        """cfg: RunConfig. train/val: lists of Samples (from layers); None reads the config's folders."""
        self.cfg = cfg
        self._given = (train, val)
        self._cancel = threading.Event()
        self.model = None
        self.normalizer = None
        self.experiment = None
        self.dist = Distributed()  # under torchrun: this process's rank (engine/train/distributed.py)
        self.best_checkpoint: Path | None = None

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    # --- set-up: everything that can fail on bad input runs here, before any training step --------------
    def _prepare(self):
        import torch

        from ..data.normalize import fit_normalizer
        from ..models import create_model
        from ..workflows import get_workflow
        from .distributed import setup

        cfg = self.cfg
        self.workflow = get_workflow(cfg)
        self.device = resolve_device(cfg.device)
        self.dist = setup(self.device, cfg.train.batch_size)
        self.device = self.dist.device  # under torchrun on GPUs: this process's GPU
        self.dataset = self.workflow.build_dataset(cfg, *self._given)
        torch.manual_seed(cfg.seed)
        self.normalizer = fit_normalizer(
            [s.raw for s in self.dataset.train],
            cfg.data.normalization,
            cfg.data.percentile_low,
            cfg.data.percentile_high,
        )
        self.workflow.prepare(self.dataset, cfg, self.normalizer)
        try:
            self.model = create_model(
                cfg.model.name,
                ndim=cfg.ndim,
                in_channels=cfg.data.in_channels,
                out_channels=self.workflow.out_channels(cfg),
                **{**self.workflow.model_defaults(cfg), **cfg.model.options},
            )
        except (KeyError, ValueError) as e:
            raise InputError(f"model: {e.args[0] if e.args else e}") from None
        if any(p % self.model.size_divisor for p in cfg.data.patch_size):
            raise InputError(
                f"The patch size {'x'.join(map(str, cfg.data.patch_size))} must be a multiple of "
                f"{self.model.size_divisor} for model '{cfg.model.name}'."
            )
        resume = None
        if cfg.train.resume is not None:
            from .checkpoint import read_checkpoint

            resume = read_checkpoint(cfg.train.resume)
            if resume["config"]["workflow"] != cfg.workflow or resume["model"]["name"] != cfg.model.name:
                raise InputError(
                    f"Checkpoint {cfg.train.resume} is a {resume['model']['name']} for "
                    f"{resume['config']['workflow']}; it cannot resume this run."
                )
            channels = resume["config"]["data"]["in_channels"]
            if channels != cfg.data.in_channels:
                raise InputError(
                    f"Checkpoint {cfg.train.resume} was trained on {channels} input channel(s), but this run "
                    f"has {cfg.data.in_channels} (data.in_channels); it cannot resume this run."
                )
            try:
                self.model.load_state_dict(resume["state_dict"])
            except RuntimeError:
                raise InputError(
                    f"Checkpoint {cfg.train.resume} does not fit this run's model (other classes or model "
                    f"options); it cannot resume this run."
                ) from None
        elif cfg.model.start_from is not None:
            unused: list[str] = []
            loaded, skipped = transfer_weights(self.model, cfg.model.start_from, unused)
            self.dataset.notes.append(
                f"Started from {cfg.model.start_from}: {loaded} tensors loaded, "
                f"{len(skipped)} initialised{_names(skipped)}; {len(unused)} of the "
                f"checkpoint's tensors skipped{_names(unused)}."
            )
        self.model.to(self.device)
        return resume

    # --- the loop -------------------------------------------------------------------------------------
    def run(self) -> Iterator[Report]:
        """The run's reports. A failed allocation (a batch or patch too big for the memory) ends it with one
        sentence (InputError) instead of torch's traceback; the run's folder goes too when no epoch was saved."""
        from .memory import is_out_of_memory, training_failure

        self._batches, self._created = None, []
        try:
            yield from self._run()
            return
        except Exception as e:  # noqa: BLE001  (re-raised below unless it is a failed allocation)
            if not is_out_of_memory(e):
                raise
        finally:
            if self._batches is not None:
                self._batches.close()  # stops and joins the prefetch thread
        if self.experiment is not None and self.dist.is_main:
            _discard_unsaved_run(self.experiment, self._created)
        raise InputError(training_failure(self.cfg, getattr(self, "device", self.cfg.device)))

    def _run(self) -> Iterator[Report]:
        import torch

        from ..data.sampling import prefetch

        cfg, t = self.cfg, self.cfg.train
        resume = self._prepare()
        wf, model, device = self.workflow, self.model, self.device
        net, main = self.dist.wrap(model), self.dist.is_main  # DDP under torchrun; only rank 0 writes files
        data = wf.training_data(self.dataset, cfg, self.normalizer)
        steps = t.steps_per_epoch or data.steps_per_epoch(t.batch_size)
        optimizer = _optimizer(cfg, model.parameters())
        scheduler, per_step = _scheduler(cfg, optimizer, steps)
        loss_fn = wf.loss(cfg)
        self.dist.from_main(lambda: _check_memory(self, data, loss_fn))  # refused before the run's folder exists
        self.experiment = self.dist.from_main(lambda: _claim_run(cfg, self._created))  # rank 0 claims the run id
        gen = torch.Generator().manual_seed(cfg.seed)
        first_epoch, best_loss, best_epoch, since_best = 1, math.inf, 0, 0
        if resume is not None:
            optimizer.load_state_dict(resume["optimizer"])
            if scheduler is not None and resume.get("scheduler"):
                state, own = dict(resume["scheduler"]), scheduler.state_dict()
                for key in ("total_steps", "_schedule_phases"):  # one_cycle: this run's length (epochs may have grown)
                    if key in own:
                        state[key] = own[key]
                scheduler.load_state_dict(state)
            first_epoch = resume["epoch"] + 1
            best_loss, best_epoch = resume.get("best_val_loss", math.inf), resume.get("best_epoch", 0)
        exp = self.experiment
        log = _Log(exp.folder("train_logs") / f"{exp.run_name}_log.csv") if main else _Nothing()
        charts = _Charts(exp.folder("charts"), exp.run_name, wf.chart_metric) if main else _Nothing()
        yield StartReport(
            exp.run_name, exp.root, steps, len(self.dataset.train), len(self.dataset.val), self.dataset.notes
        )

        reason, epoch, epoch_times = "finished", first_epoch - 1, []
        for epoch in range(first_epoch, t.epochs + 1):
            start = time.perf_counter()
            model.train()
            losses = []
            batches = self._batches = prefetch(lambda: data.batch(t.batch_size), steps)
            for step, (xb, yb) in enumerate(batches, 1):
                if self.dist.any(self.cancelled):  # every rank stops at the same batch
                    break
                x = torch.from_numpy(xb).to(device, non_blocking=True)
                y = torch.from_numpy(yb).to(device, non_blocking=True)
                if cfg.augment.enable:  # on the training device, batched (engine/data/augment.py)
                    x, y = wf.augment(x, y, cfg, gen)
                x, y = wf.make_pair(x, y, gen, cfg)
                x, y, share = self.dist.shard(x, y)  # under torchrun: this rank's part of the global batch
                optimizer.zero_grad(set_to_none=True)
                loss = wf.training_loss(net, x, y, loss_fn)
                (loss * self.dist.loss_weight(share)).backward()
                optimizer.step()
                if per_step:
                    scheduler.step()
                losses.append(self.dist.global_loss(loss, share))
                elapsed = time.perf_counter() - start
                remaining_epochs = t.epochs - epoch
                per_epoch = np.median(epoch_times) if epoch_times else elapsed / step * steps
                yield StepReport(
                    epoch,
                    t.epochs,
                    step,
                    steps,
                    losses[-1],
                    elapsed / step * (steps - step) + remaining_epochs * per_epoch,
                )
            batches.close()
            if self.dist.any(self.cancelled):
                reason = "cancelled"
                epoch -= 1
                break
            val_loss, metrics = self.dist.from_main(lambda: self._validate(data, loss_fn))
            train_loss = float(np.mean(losses))
            monitor = val_loss if data.has_validation else train_loss
            if scheduler is not None and not per_step:
                scheduler.step(monitor)
            improved = monitor < best_loss
            if improved:
                best_loss, best_epoch, since_best = monitor, epoch, 0
            else:
                since_best += 1
            payload = self._payload(epoch, optimizer, scheduler, best_loss, best_epoch) if main else None
            if improved:
                self.best_checkpoint = self._save(exp.best_checkpoint, payload)
            self._save(exp.last_checkpoint, payload)
            seconds = time.perf_counter() - start
            epoch_times.append(seconds)
            lr = optimizer.param_groups[0]["lr"]
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "learning_rate": lr,
                "seconds": seconds,
                **metrics,
            }
            log.write(row)
            charts.update(row)
            yield EpochReport(
                epoch,
                t.epochs,
                train_loss,
                val_loss,
                metrics,
                lr,
                seconds,
                float(np.median(epoch_times)) * (t.epochs - epoch),
                improved,
            )
            if t.patience and since_best >= t.patience:
                reason = "early_stopped"
                break
        charts.draw(force=True)
        yield DoneReport(reason, epoch, best_epoch, best_loss, self.best_checkpoint, exp.root)

    def _validate(self, data, loss_fn) -> tuple[float, dict]:
        import torch

        if not data.has_validation:
            return float("nan"), {}
        model, wf = self.model, self.workflow
        model.eval()
        metrics = wf.metrics(self.cfg)
        total, count, bs = 0.0, 0, self.cfg.train.batch_size
        gen = torch.Generator().manual_seed(self.cfg.seed + 1)  # the same masks/degradations every epoch
        with torch.inference_mode():
            for xb, yb in data.validation(bs):
                x, y = torch.from_numpy(xb).to(self.device), torch.from_numpy(yb).to(self.device)
                x, y = wf.make_pair(x, y, gen, self.cfg)
                loss, prediction = wf.validation_step(model, x, y, loss_fn)
                total += float(loss) * len(xb)
                count += len(xb)
                metrics.update(prediction.float().cpu().numpy(), y.cpu().numpy())
        return total / count, metrics.compute()

    def _payload(self, epoch, optimizer, scheduler, best_loss, best_epoch) -> dict:
        cfg = self.cfg
        return {
            "workflow": cfg.workflow,
            "config": cfg.model_dump(mode="json"),
            "model": {
                "name": self.model.model_name,
                "options": self.model.model_options,
                "out_channels": self.workflow.out_channels(cfg),
            },
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "normalization": self.normalizer.to_dict(),
            "workflow_state": self.workflow.state,
            "class_names": [cfg.class_label(i) for i in range(cfg.n_classes)],
            "epoch": epoch,
            "best_epoch": best_epoch,
            "best_val_loss": best_loss,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
        }

    @staticmethod
    def _save(path: Path, payload: dict | None) -> Path:
        from .checkpoint import save_checkpoint

        return path if payload is None else save_checkpoint(path, payload)  # None: not rank 0, writes nothing

    def loaded_model(self):
        """The model as trained so far, wrapped for prediction (the widget's 'model just trained')."""
        from .checkpoint import LoadedModel

        return LoadedModel(self.model, self.cfg, self.normalizer, self.best_checkpoint, workflow=self.workflow)


def _check_memory(trainer, data, loss_fn) -> None:
    from .memory import check_training, local_world_size

    dist = trainer.dist
    check_training(
        trainer.model,
        trainer.workflow,
        trainer.cfg,
        data,
        loss_fn,
        trainer.device,
        dist.world_size,
        local_world_size() if dist.enabled else 1,
    )


def _claim_run(cfg, created: list | None = None):
    from ..experiment import folders_to_create, new_experiment

    if created is not None:
        created.extend(folders_to_create(cfg.output_dir, cfg.name))
    exp = new_experiment(cfg.output_dir, cfg.name)
    cfg.save(exp.config_path)
    return exp


def _discard_unsaved_run(exp, created: list) -> None:
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


class _Nothing:
    """Stands in for the log and charts on the ranks that write nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class _Log:
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


class _Charts:
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
