"""Batch prediction on dask.distributed: one task per file, or one task per block of an image bigger than the
block size (the chunks of one huge volume), on a LocalCluster of worker processes or on the cluster behind a
scheduler address. The tasks are the same functions the in-process batch runs (task.py), so the outputs
are the same; every worker loads the checkpoint once and reads and writes the files itself (on a cluster the
input, checkpoint and output paths must be the same on every machine: a shared file system).

Workers report tile progress through dask's event log (`log_event` / `subscribe_topic`), and a cancel is a
`distributed.Event` the tasks check between tile batches, so a cancel stops every worker after its current tile.
"""

from __future__ import annotations

import logging
import os
import queue
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError
from ..storage import raise_if_disk_full
from .events import ExecutorEvent, FileFinished, FileStarted, TilesDone
from .executors import RunView
from .plan import WorkUnit
from .records import Block, BlockResult, FileItem, TaskContext, TaskResult, Unfinished
from .task import clear_partial, create_block_store, finish_blocks, predict_block, predict_item

log = logging.getLogger(__name__)
CANCEL_POLL_S = 0.3  # a task asks the scheduler whether the batch was cancelled at most this often
PROGRESS_EVERY_S = 0.25  # and reports its tile progress at most this often


def connect(scheduler: str | None = None, workers: int = 2, threads_per_worker: int = 1):
    """(client, cluster): a client of the scheduler at `scheduler`, or of a new LocalCluster of `workers`
    processes (cluster is then returned, to close after the client)."""
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="5s", set_as_default=False), None
        except (OSError, TimeoutError, ValueError) as e:
            raise InputError(
                f"Cannot reach the dask scheduler at {scheduler}: {str(e).splitlines()[0] if str(e) else type(e).__name__}."
            ) from None
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=threads_per_worker,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    # not the default scheduler: the viewer's dask arrays keep computing in this process, before and after the batch
    return Client(cluster, set_as_default=False), cluster


# --------------------------------------------------------------------------------------------------
# What the workers run
# --------------------------------------------------------------------------------------------------


def _cancel_check(name: str):
    """A cancel callable for ImagePrediction.run: the batch's distributed.Event, polled at most every 0.3 s."""
    from distributed import Event

    event = Event(name)
    state = {"at": 0.0, "set": False}

    def cancelled() -> bool:
        now = time.monotonic()
        if now - state["at"] >= CANCEL_POLL_S:
            state["at"], state["set"] = now, bool(event.is_set())
        return state["set"]

    return cancelled


def _publish(topic: str, msg: dict) -> None:
    from distributed import get_worker

    try:
        get_worker().log_event(topic, msg)
    except Exception:  # progress is best effort
        pass


def file_task(ctx: TaskContext, item: FileItem) -> TaskResult:
    cancel = _cancel_check(ctx.cancel_event)
    if cancel():
        return Unfinished.cancelled(item.name)
    last = {"at": 0.0}

    def started(job) -> None:
        _publish(
            ctx.topic,
            {
                "kind": "start",
                "index": item.index,
                "tiles": len(job.plan.tiles) if job is not None else 0,
                "accumulator": str(job.accumulator.root) if job is not None else "",
            },
        )

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last["at"] >= PROGRESS_EVERY_S:
            last["at"] = now
            _publish(ctx.topic, {"kind": "progress", "index": item.index, "done": done, "total": total})

    return predict_item(ctx, item, None, cancel, progress, started)


def block_task(ctx: TaskContext, item: FileItem, block: Block) -> BlockResult:
    cancel = _cancel_check(ctx.cancel_event)
    if cancel():
        return Unfinished.cancelled(item.name)
    return predict_block(ctx, item, block, None, cancel)


def finish_task(ctx: TaskContext, item: FileItem, results: list[BlockResult]) -> TaskResult:
    return finish_blocks(ctx, item, results)


# --------------------------------------------------------------------------------------------------
# The driver (the batch generator's side)
# --------------------------------------------------------------------------------------------------


class DaskExecutor:
    """The Executor on dask.distributed: one task per file, or per block and then one to finish the image."""

    def __init__(self, scheduler: str | None = None, workers: int = 0):
        self.scheduler = scheduler
        self.client, self.cluster = connect(scheduler, workers)
        self.uid = uuid.uuid4().hex[:10]
        self.topic = f"bioflow-batch-{self.uid}"
        self.events: queue.Queue = queue.Queue()
        self.client.subscribe_topic(self.topic, lambda event: self.events.put(("topic", event[1])))
        from distributed import Event

        self.cancel_event = Event(f"bioflow-cancel-{self.uid}", client=self.client)
        n = len(self.client.scheduler_info().get("workers", {}))
        self.n_workers = n
        self.unfinished = False
        # local workers share this machine's cores: each takes its share for torch (dask sets 1 thread otherwise)
        self.torch_threads = max(1, (os.cpu_count() or 1) // max(1, workers)) if self.cluster is not None else 0

    def describe(self) -> str:
        if self.cluster is not None:
            return f"dask LocalCluster of {self.n_workers} worker process(es)"
        return f"dask scheduler {self.scheduler} ({self.n_workers} worker(s))"

    def close(self) -> None:
        """Leave the cluster; tasks still running (the batch interrupted, e.g. by Ctrl-C) stop after their tile."""
        try:
            if self.unfinished:
                self.cancel_event.set()
            self.client.unsubscribe_topic(self.topic)
        except Exception:
            pass
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def _submit(self, run: RunView, ctx: TaskContext, unit: WorkUnit):
        """Submit a unit's tasks: the future of its result, and the FileStarted of a split image (None otherwise)."""
        import dask.array as da

        item = unit.item
        if unit.blocks is None:
            return self.client.submit(
                file_task, ctx, item, key=f"bioflow-file-{item.index}-{self.uid}", pure=False
            ), None
        clear_partial(run.run_dir, item.stem)
        arr = create_block_store(run.run_dir, item, run.loaded, unit.block_shape)
        parts = []
        for blk in unit.blocks:
            part = self.client.submit(
                block_task, ctx, item, blk, pure=False, key=f"bioflow-block-{item.index}-{blk.index}-{self.uid}"
            )
            part.add_done_callback(lambda f, i=item.index: self.events.put(("block", i)))
            parts.append(part)
        fut = self.client.submit(
            finish_task, ctx, item, parts, key=f"bioflow-finish-{item.index}-{self.uid}", pure=False
        )
        return fut, FileStarted(item.index, item.name, item.stem, len(unit.blocks), lambda: da.from_zarr(arr))

    def run(self, run: RunView, units: list[WorkUnit]) -> Iterator[ExecutorEvent]:
        ctx = run.context(self.torch_threads, self.topic, self.cancel_event.name)
        by_index = {u.item.index: u for u in units}
        blocks_done: dict[int, int] = {}
        finished: set[int] = set()
        for unit in units:
            fut, started = self._submit(run, ctx, unit)
            if started is not None:
                blocks_done[unit.item.index] = 0
                yield started
            fut.add_done_callback(lambda f, i=unit.item.index: self.events.put(("done", i, f)))
        cancelling = False
        self.unfinished = bool(units)
        while len(finished) < len(units):
            if run.cancelled and not cancelling:
                cancelling = True
                self.cancel_event.set()  # running tasks stop after their tile batch, waiting ones at once
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            kind = event[0]
            if kind == "done":
                _, index, fut = event
                finished.add(index)
                item = by_index[index].item
                try:
                    result = fut.result()
                except Exception as e:  # the task itself died (a worker lost, a pickling error): that file fails
                    raise_if_disk_full(e, run.run_dir, f"the results of {item.raw}")
                    result = Unfinished.failed(item.name, f"{item.raw} failed on the cluster: {type(e).__name__}: {e}")
                yield FileFinished(item, result)
            elif kind == "block":
                index = event[1]
                if index in finished:
                    continue
                blocks_done[index] += 1
                unit = by_index[index]
                yield TilesDone(unit.item, blocks_done[index], len(unit.blocks))
            else:
                msg = event[1]
                index = msg.get("index")
                if index in finished or index not in by_index:
                    continue
                item = by_index[index].item
                if msg.get("kind") == "start":
                    path = msg.get("accumulator")
                    yield FileStarted(index, item.name, item.stem, int(msg.get("tiles", 0)), lambda p=path: _live(p))
                elif msg.get("kind") == "progress":
                    yield TilesDone(item, int(msg["done"]), int(msg["total"]))
        self.unfinished = False


def _live(accumulator: str | None):
    """A dask array over a worker's running prediction (shared file system), or None."""
    if not accumulator or not Path(accumulator).exists():
        return None
    try:
        from ..predict.accumulator import ZarrAccumulator

        return ZarrAccumulator.open(accumulator).lazy()
    except Exception:
        return None
