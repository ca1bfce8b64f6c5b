"""Executors: what runs a batch's work units and tells the run about them (FileStarted, TilesDone,
FileFinished), whatever runs them. The run picks one (run.py): LocalExecutor here, in this process, or the
DaskExecutor (dask.py) on dask.distributed. Both run the same tasks (task.py), so the outputs are the same."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from .events import ExecutorEvent, FileFinished, FileStarted, TilesDone
from .plan import WorkUnit
from .records import TaskContext
from .task import clear_partial, create_block_store, finish_blocks, predict_block, predict_item


class RunView(Protocol):
    """What an executor needs of the run (engine/batch/run.py's BatchRun)."""

    run_dir: Path
    loaded: object  # the model with the run's config (this process)

    @property
    def cancelled(self) -> bool: ...

    def cancel(self) -> None: ...

    def context(self, torch_threads: int = 0, topic: str = "", cancel_event: str = "") -> TaskContext: ...


class Executor(Protocol):
    def describe(self) -> str:
        """Where the files run, for BatchStarted.mode."""

    def run(self, run: RunView, units: list[WorkUnit]) -> Iterator[ExecutorEvent]:
        """Run the units, telling the run as files start, progress and finish; stop soon after run.cancel()."""

    def close(self) -> None:
        """Let go of what the executor holds (a cluster); called once the run is over, however it ended."""


class LocalExecutor:
    """In this process: a helper thread predicts, the generator relays its events as they come (so tile progress
    is told while the consumer waits)."""

    def describe(self) -> str:
        return "this process"

    def close(self) -> None:
        pass

    def run(self, run: RunView, units: list[WorkUnit]) -> Iterator[ExecutorEvent]:
        events: queue.Queue = queue.Queue()
        end = object()

        def cancelled() -> bool:
            return run.cancelled

        def work():
            try:
                ctx = run.context()
                for unit in units:
                    if run.cancelled:
                        break
                    events.put(FileFinished(unit.item, _run_unit(run, ctx, unit, events.put, cancelled)))
            except BaseException as e:  # a bug outside any file: re-raised in the generator
                events.put(e)
            finally:
                events.put(end)

        thread = threading.Thread(target=work, name="bioflow-batch", daemon=True)
        thread.start()
        try:
            while True:
                event = events.get()
                if event is end:
                    break
                if isinstance(event, BaseException):
                    raise event
                yield event
        finally:
            if thread.is_alive():  # the consumer stopped early: stop the helper too
                run.cancel()
                thread.join()


def _run_unit(run: RunView, ctx: TaskContext, unit: WorkUnit, tell, cancelled):
    """One unit in this process: the file whole, or its blocks one after the other, then its outputs."""
    item = unit.item
    if unit.blocks is None:

        def started(job):
            tiles = len(job.plan.tiles) if job is not None else 0
            tell(FileStarted(item.index, item.name, item.stem, tiles, job.lazy if job is not None else None))

        def progress(done, total):
            tell(TilesDone(item, done, total))

        return predict_item(ctx, item, run.loaded, cancelled, progress, started)
    import dask.array as da

    clear_partial(run.run_dir, item.stem)
    arr = create_block_store(run.run_dir, item, run.loaded, unit.block_shape)
    tell(FileStarted(item.index, item.name, item.stem, len(unit.blocks), lambda: da.from_zarr(arr)))
    results = []
    for blk in unit.blocks:
        results.append(predict_block(ctx, item, blk, run.loaded, cancelled))
        if results[-1].status != "done":
            break
        tell(TilesDone(item, len(results), len(unit.blocks)))
    return finish_blocks(ctx, item, results, run.loaded)
