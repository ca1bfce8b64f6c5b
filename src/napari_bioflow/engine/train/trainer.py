"""The trainer shared by every workflow: loop, validation, early stopping, checkpoints, logs and charts.

`Trainer.run()` is a generator of typed reports. The caller (CLI, widget worker, test) decides what to do with
them; while the caller handles a report the trainer is paused, which is what lets a widget compute a preview with
the current model between epochs. Cancelling is a flag checked at batch boundaries; the best checkpoint stays valid.
The reports are in reports.py, the model's set-up in model_setup.py, optimizer and schedule in optim.py, the run's
folder, log and charts in run_files.py.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import InputError
from .accel import StepAccelerator
from .distributed import Distributed
from .ema import weight_average
from .model_setup import build_model, resolve_device, transfer_weights  # noqa: F401  (re-exported)
from .optim import build_optimizer, build_scheduler
from .reports import DoneReport, EpochReport, Report, StartReport, StepReport  # noqa: F401  (re-exported)
from .run_files import Charts, EpochLog, Nothing, claim_run, discard_unsaved_run
from .threshold import ThresholdPicker, add_images

_optimizer = build_optimizer  # the name tests and benchmarks use


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

        from ..data.normalize import normalizer_for
        from ..workflows import get_workflow
        from .distributed import setup

        cfg = self.cfg
        self.workflow = get_workflow(cfg)
        self.device = resolve_device(cfg.device)
        self.dist = setup(self.device, cfg.train.batch_size)
        self.device = self.dist.device  # under torchrun on GPUs: this process's GPU
        self.dataset = self.workflow.build_dataset(cfg, *self._given)
        torch.manual_seed(cfg.seed)
        self.normalizer = normalizer_for([s.raw for s in self.dataset.train], cfg.data)
        self.workflow.prepare(self.dataset, cfg, self.normalizer)
        self.accel = StepAccelerator(cfg, self.device)  # train.compile on the CPU is refused here
        self.model, resume = build_model(cfg, self.workflow, self.dataset.notes)
        self.accel.prepare_model(self.model.to(self.device))
        self.ema = weight_average(self.model, cfg)  # validation and checkpoints use the averaged weights
        if resume is not None and self.ema is not None and "train_state_dict" in resume:
            self.ema.load(resume["state_dict"], resume.get("ema_updates", 0))
        if self.accel.describe():
            self.dataset.notes.append(self.accel.describe())
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
            discard_unsaved_run(self.experiment, self._created)
        raise InputError(training_failure(self.cfg, getattr(self, "device", self.cfg.device)))

    def _run(self) -> Iterator[Report]:
        import torch

        from ..data.sampling import prefetch

        cfg, t = self.cfg, self.cfg.train
        resume = self._prepare()
        wf, model = self.workflow, self.model
        net, main = self.dist.wrap(model), self.dist.is_main  # DDP under torchrun; only rank 0 writes files
        acc, ema = self.accel, self.ema
        net = acc.wrap_forward(net)  # torch.compile when train.compile (GPU only)
        data = wf.training_data(self.dataset, cfg, self.normalizer)
        steps = t.steps_per_epoch or data.steps_per_epoch(t.batch_size)
        optimizer = build_optimizer(cfg, model.parameters())
        scheduler, per_step = build_scheduler(cfg, optimizer, steps)
        loss_fn = wf.loss(cfg)
        self.dist.from_main(lambda: _check_memory(self, data, loss_fn))  # refused before the run's folder exists
        self.experiment = self.dist.from_main(lambda: claim_run(cfg, self._created))  # rank 0 claims the run id
        wf.prepare_run(self.experiment.results, self.dataset, cfg)  # e.g. crappify's cached degraded copies
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
        log = EpochLog(exp.folder("train_logs") / f"{exp.run_name}_log.csv") if main else Nothing()
        charts = Charts(exp.folder("charts"), exp.run_name, wf.chart_metric) if main else Nothing()
        from .tensorboard import TensorBoardLog

        tb = TensorBoardLog(exp.results / "tensorboard", main and t.tensorboard, self.dataset.notes)
        if main and cfg.augment.samples:  # augment.samples: what the model is shown, in results/<run>/aug/
            from .aug_samples import write_aug_samples

            write_aug_samples(exp.results / "aug", data, wf, cfg, self.device)
        if main and cfg.data.save_prob_map:  # data.save_prob_map: where patches are centred, results/<run>/prob_map/
            from .prob_map import write_prob_maps

            write_prob_maps(exp.results / "prob_map", data, self.dataset.notes)
        if main:  # custom normalization: its values beside the run (normalization_*_value.npy)
            from ..data.normalize import save_normalization

            save_normalization(self.normalizer, exp.results)
        yield StartReport(
            exp.run_name, exp.root, steps, len(self.dataset.train), len(self.dataset.val), self.dataset.notes
        )

        reason, epoch, epoch_times = "finished", first_epoch - 1, []
        for epoch in range(first_epoch, t.epochs + 1):
            start = time.perf_counter()
            model.train()
            losses = []
            # the prefetch thread reads the next batches (into pinned memory on a GPU) while the model trains
            batches = self._batches = prefetch(lambda: acc.host(data.batch(t.batch_size)), steps)
            for step, (xb, yb) in enumerate(batches, 1):
                if self.dist.any(self.cancelled):  # every rank stops at the same batch
                    break
                x, y = acc.to_device(xb), acc.to_device(yb)
                if cfg.augment.enable:  # on the training device, batched (engine/data/augment.py)
                    x, y = wf.augment(x, y, cfg, gen)
                x, y = wf.make_pair(x, y, gen, cfg)
                x, y, share = self.dist.shard(x, y)  # under torchrun: this rank's part of the global batch
                optimizer.zero_grad(set_to_none=True)
                with acc.autocast():  # mixed precision on a GPU (train.amp); float32 on the CPU
                    loss = wf.training_loss(net, acc.layout(x), y, loss_fn)
                acc.backward_step(loss * self.dist.loss_weight(share), optimizer)
                if ema is not None:
                    ema.update(model)
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
            tb.write(row)
            tb.images(getattr(self, "_val_sample", None), epoch)
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
        tb.close()
        yield DoneReport(reason, epoch, best_epoch, best_loss, self.best_checkpoint, exp.root)

    def _validate(self, data, loss_fn) -> tuple[float, dict]:
        import torch

        if not data.has_validation:
            return float("nan"), {}
        self.model.eval()
        model, wf = self.predicting_model, self.workflow
        metrics = wf.metrics(self.cfg)
        picker = ThresholdPicker() if self.cfg.train.pick_threshold else None
        total, count, bs = 0.0, 0, self.cfg.train.batch_size
        gen = torch.Generator().manual_seed(self.cfg.seed + 1)  # the same masks/degradations every epoch
        with torch.inference_mode(), self.accel.autocast():
            for xb, yb in data.validation(bs):
                x, y = torch.from_numpy(xb).to(self.device), torch.from_numpy(yb).to(self.device)
                x, y = wf.make_pair(x, y, gen, self.cfg)
                loss, prediction = wf.validation_step(model, self.accel.layout(x), y, loss_fn)
                total += float(loss) * len(xb)
                count += len(xb)
                prediction, target = prediction.float().cpu().numpy(), y.cpu().numpy()
                if count == len(xb):  # the first validation patch, for TensorBoard's image samples
                    self._val_sample = (x[0].float().cpu().numpy(), target[0], prediction[0])
                metrics.update(prediction, target)
                if picker is not None and picker.applies(prediction, target):
                    picker.update(prediction, target)
        chosen = self._pick_threshold(data, picker) if picker is not None and picker.hist is not None else None
        if chosen is not None:  # saved with the checkpoints of this epoch; prediction binarizes with it
            wf.state["threshold"] = chosen[0]
        return total / count, metrics.compute()

    def _pick_threshold(self, data, picker: ThresholdPicker) -> tuple[float, float] | None:
        """The best threshold over the validation patches (as the model trained on them) together with the
        validation images predicted as prediction predicts them (threshold.py says why both)."""
        from ..predict.inference import TILE_CAP

        crops = getattr(data, "threshold_crops", None)
        if crops is not None:
            add_images(picker, self.loaded_model(), crops(TILE_CAP[self.cfg.ndim]), str(self.device))
        return picker.best()

    @property
    def predicting_model(self):
        """The weights validation, checkpoints and the model just trained use: the average when train.ema is on."""
        return self.ema.model if getattr(self, "ema", None) is not None else self.model

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
            "state_dict": _cpu(self.predicting_model.state_dict()),
            **(
                {"train_state_dict": _cpu(self.model.state_dict()), "ema_updates": self.ema.updates} if self.ema else {}
            ),
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

        model = self.predicting_model
        return LoadedModel(model, self.cfg, self.normalizer, self.best_checkpoint, workflow=self.workflow)


def _cpu(state: dict) -> dict:
    return {k: v.detach().cpu() for k, v in state.items()}


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
