"""A batch run: set up by BatchRun's constructor (every global check, before anything is written; then the run
folder is claimed, or the resumed one read), run by `run()`, a generator of reports: the planner (plan.py) says
what to predict, the executor the run picks (executors.py: this process; dask.py: dask.distributed) runs it, the
progress (progress.py) turns what it tells into reports, and the summary (summary.py) writes the tables."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..storage import remove_parts
from .events import BatchRequest, BatchStarted
from .executors import Executor, LocalExecutor
from .plan import plan_run
from .progress import Progress
from .records import BATCH_DIR, MANIFEST, FileItem, TaskContext, marker_path, write_json
from .summary import summarize


def _same(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()


class BatchRun:
    """A batch run, set up by the constructor (every global check, before anything is written; then the run
    folder is claimed, or the resumed one read) and run by `run()`, a generator of reports."""

    def __init__(self, request: BatchRequest, loaded=None):
        from ..data.io import check_writable
        from ..data.pairing import assign_stems, image_name
        from ..experiment import new_experiment
        from ..predict.predictor import Predictor
        from ..train.trainer import resolve_device

        self.request = req = replace(request)
        self._cancel = threading.Event()
        manifest = None
        if req.resume is not None:
            manifest = self._read_manifest(Path(req.resume))
            for key, given in (
                ("checkpoint", req.checkpoint),
                ("input_dir", req.input_dir),
                ("labels_dir", req.labels_dir),
            ):
                earlier = manifest.get(key)
                if given is not None and (earlier is None or not _same(given, earlier)):
                    what = {"checkpoint": "checkpoint", "input_dir": "input folder", "labels_dir": "labels folder"}[key]
                    raise InputError(
                        f"Batch run {req.resume} was started with {what} {earlier or 'none'}, not {given}; "
                        f"resume it with the same {what} or start a new run."
                    )
            req.checkpoint = Path(manifest["checkpoint"])
            req.input_dir = Path(manifest["input_dir"])
            req.labels_dir = Path(manifest["labels_dir"]) if manifest.get("labels_dir") else None
            if req.overrides and list(req.overrides) != list(manifest.get("overrides", [])):
                raise InputError(
                    f"Batch run {req.resume} keeps the prediction settings it was started with "
                    f"({', '.join(manifest.get('overrides', [])) or 'the checkpoint defaults'}); "
                    f"start a new run to change them."
                )
            req.overrides = list(manifest.get("overrides", []))
        if req.checkpoint is None:
            raise InputError("No checkpoint: choose the checkpoint (.pth) to predict with.")
        if req.input_dir is None:
            raise InputError("No input folder: choose the folder of images to predict.")
        if req.scheduler and req.workers:
            raise InputError("Give either a dask scheduler address or a number of local workers, not both.")
        if req.workers < 0:
            raise InputError(f"The number of dask workers must be positive, not {req.workers}.")
        # on dask the workers resolve the device (a GPU node's "cuda" need not exist where the batch is started);
        # here the model is only read for its settings
        self.device = "cpu" if req.distributed else resolve_device(req.device)
        bad = [o for o in req.overrides if not o.startswith("predict.")]
        if bad:
            raise InputError(
                f"Only prediction settings (predict.FIELD=VALUE) can be changed for a batch, not {bad[0]}."
            )
        settings = {
            "name": req.name,
            "output_dir": str(req.output_dir),
            "data": {
                "test_raw": str(Path(req.input_dir).absolute()),
                "test_label": str(Path(req.labels_dir).absolute()) if req.labels_dir else None,
            },
            "predict": {"checkpoint": str(Path(req.checkpoint).absolute())},
        }
        predictor = Predictor(
            req.checkpoint, self.device, settings, req.overrides, source="batch settings", loaded=loaded
        )
        self.loaded, self.cfg = predictor.loaded, predictor.config
        # dense: raw images paired with label files by name; one class per file: a flat folder or class sub-folders
        # (then the metrics and the confusion matrix), and no labels folder
        found = predictor.folder_items(
            Path(req.input_dir), Path(req.labels_dir) if req.labels_dir else None, "the labels folder", "input"
        )
        pairs = found if self.loaded.workflow.dense else [(p, None) for p, _ in found]
        classes = {} if self.loaded.workflow.dense else {str(p): c for p, c in found if c is not None}
        cfg = self.cfg
        # class sub-folders may repeat file names: name the files by their path inside the input folder
        nested = Path(req.input_dir).is_dir() and (  # any layout without classes too; data.multiple_raw's samples
            not self.loaded.workflow.dense or (cfg.data.multiple_raw and len({Path(p).parent for p, _ in pairs}) > 1)
        )
        names = [str(Path(p).relative_to(req.input_dir)) if classes or nested else image_name(p) for p, _ in pairs]
        stems = assign_stems(names, manifest.get("stems") if manifest else None)
        self.items = [
            FileItem(
                i,
                str(Path(raw).absolute()),
                str(Path(label).absolute()) if label else None,
                name,
                stems[name],
                true_class=classes.get(str(raw)),
            )
            for i, ((raw, label), name) in enumerate(zip(pairs, names))
        ]
        if manifest is not None:
            self.run_dir = Path(req.resume)
            self.config_path = Path(manifest["config_path"])
            check_writable(self.run_dir)
            remove_parts(self.run_dir)  # what the interrupted run was writing: redone from scratch
        else:
            self.unfinished_earlier = self._unfinished_earlier(req)
            experiment = new_experiment(Path(req.output_dir), req.name)
            self.run_dir = experiment.results
            self.config_path = experiment.config_path
            cfg.save(self.config_path)
        write_json(
            self.run_dir / BATCH_DIR / MANIFEST,
            {
                "format": "napari-bioflow-batch/1",
                "checkpoint": str(Path(req.checkpoint).absolute()),
                "input_dir": str(Path(req.input_dir).absolute()),
                "labels_dir": str(Path(req.labels_dir).absolute()) if req.labels_dir else None,
                "overrides": list(req.overrides),
                "config_path": str(self.config_path.absolute()),
                "stems": {**(manifest.get("stems", {}) if manifest else {}), **stems},
            },
        )
        self.resumed = manifest is not None

    def _unfinished_earlier(self, req: BatchRequest) -> tuple[Path, int, int] | None:
        """The newest earlier run in the same experiment with this checkpoint, these folders and settings that did
        not finish every file of the folder as it is now: (its folder, files finished, files in all)."""
        found = []
        for path in Path(req.output_dir, req.name, "results").glob(f"*/{BATCH_DIR}/{MANIFEST}"):
            try:
                m = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            same = (
                _same(m.get("checkpoint", ""), req.checkpoint)
                and _same(m.get("input_dir", ""), req.input_dir)
                and (m.get("labels_dir") is None) == (req.labels_dir is None)
                and (req.labels_dir is None or _same(m["labels_dir"], req.labels_dir))
                and list(m.get("overrides", [])) == list(req.overrides)
            )
            if not same:
                continue
            run_dir = path.parent.parent
            stems = m.get("stems", {})
            done = sum(marker_path(run_dir, stems[it.name]).is_file() for it in self.items if it.name in stems)
            if done < len(self.items):
                found.append((path.stat().st_mtime, run_dir, done))
        if not found:
            return None
        _, run_dir, done = max(found, key=lambda f: f[0])
        return run_dir, done, len(self.items)

    @staticmethod
    def _read_manifest(run_dir: Path) -> dict:
        path = run_dir / BATCH_DIR / MANIFEST
        if not run_dir.is_dir():
            raise InputError(f"The batch run folder {run_dir} to resume does not exist.")
        if not path.is_file():
            raise InputError(
                f"{run_dir} is not a batch run folder (it has no {BATCH_DIR}/{MANIFEST}); "
                f"resume the results folder of a batch run (such as bioflow_runs/batch/results/batch_1)."
            )
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"The batch manifest {path} cannot be read: {e}.") from None

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def context(self, torch_threads: int = 0, topic: str = "", cancel_event: str = "") -> TaskContext:
        return TaskContext(
            str(Path(self.request.checkpoint).absolute()),
            self.loaded.config.model_dump(mode="json"),
            str(self.run_dir.absolute()),
            self.request.device if self.request.distributed else self.device,
            torch_threads,
            topic,
            cancel_event,
        )

    def _executor(self) -> Executor:
        """This process, or dask (a scheduler address, local workers). No cluster: a new run folder with nothing in
        it goes again, and the InputError says why."""
        if not self.request.distributed:
            return LocalExecutor()
        from .dask import DaskExecutor

        try:
            return DaskExecutor(self.request.scheduler, self.request.workers)
        except InputError:
            if not self.resumed:
                shutil.rmtree(self.run_dir, ignore_errors=True)
                self.config_path.unlink(missing_ok=True)
            raise

    # --- the generator -----------------------------------------------------------------------------------
    def run(self) -> Iterator[Any]:
        start = time.perf_counter()
        work = plan_run(self.items, self.run_dir, self.request, self.loaded, self.resumed)
        progress = Progress(self.run_dir, work.todo, start)
        executor = self._executor()
        yield BatchStarted(
            self.run_dir,
            self.config_path,
            [it.name for it in self.items],
            [it.name for it in work.todo],
            [it.name for it in work.earlier],
            self.resumed,
            executor.describe(),
            getattr(self, "unfinished_earlier", None),
        )
        for it in work.unreadable:
            yield progress.unreadable(it)
        try:
            for event in executor.run(self, work.units):
                report = progress.report(event)
                if report is not None:
                    yield report
        finally:
            executor.close()
            remove_parts(self.run_dir)  # a write cut short (a full disk, Ctrl-C) leaves no .part file
        yield summarize(self.run_dir, self.items, work, progress, self.loaded, self.cancelled, start)


def run_batch(request: BatchRequest, loaded=None) -> Iterator[Any]:
    """Set up and run a batch: the reports, ending with a BatchSummary."""
    yield from BatchRun(request, loaded).run()
