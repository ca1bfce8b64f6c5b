"""Training on several processes (GPUs, machines) with torch.distributed: DistributedDataParallel under `torchrun`.

Nothing changes in the config: `torchrun ... -m napari_bioflow.cli train my.yaml` runs the same run on every
process. The context is read from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/MASTER_PORT);
without it (a plain run, the napari widgets) everything here is a no-op and the trainer runs as before.

How one run is split so that its result matches the single-process run of the same config:

* every rank draws the *same* global batch (config `train.batch_size`) from the same seeded stream as a single
  process would, augments it with the same generator, and keeps its elements `rank::world_size`. The model's forward
  and backward pass (the expensive part) run on that share only.
* each rank's loss is scaled by `world_size * share / batch`, so DistributedDataParallel's gradient average equals
  the gradient of the global batch's mean loss (exactly, even when the batch does not divide by the world size).
* validation runs on rank 0 alone (the same patches as a single process) and its numbers are broadcast, so the
  learning-rate schedule and early stopping decide the same on every rank; a cancel on any rank stops all of them
  at the same batch boundary.
* rank 0 alone creates the experiment folder (run id), writes the config, checkpoints (the unwrapped model's
  state_dict: the same tensor names as a single-process run), the CSV log and the charts; it broadcasts the run.
"""

from __future__ import annotations

import atexit
import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InputError


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) in a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main_process() -> bool:
    """True on rank 0 (and in a plain process): the one that prints and writes."""
    return env_world()[0] == 0


@dataclass
class Distributed:
    """The process's place in the run. `world_size == 1`: a plain single-process run (all methods no-ops)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str = ""
    # this rank's own share of the work, for its progress line (`napari-bioflow train` prints it per rank)
    steps: int = 0
    samples: int = 0
    local_loss: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- model --------------------------------------------------------------------------------------
    def wrap(self, model):
        """The module to train with: DistributedDataParallel around `model` when distributed, else `model`."""
        if not self.enabled:
            return model
        return _ddp_class()(model, device_ids=[self.local_rank] if self.device.startswith("cuda") else None)

    # --- batches and losses ---------------------------------------------------------------------------
    def shard(self, x, y):
        """This rank's elements rank::world_size of a global batch, and their share of it (a fraction)."""
        if not self.enabled:
            return x, y, 1.0
        n = x.shape[0]
        x = x[self.rank :: self.world_size]
        if y is not None:
            y = y[self.rank :: self.world_size]
        self.steps += 1
        self.samples += x.shape[0]
        return x, y, x.shape[0] / n

    def loss_weight(self, share: float) -> float:
        """Factor on this rank's mean loss so that DDP's gradient average is the global batch's mean gradient."""
        return share * self.world_size

    def global_loss(self, loss, share: float) -> float:
        """The global batch's mean loss from every rank's mean loss over its share (all ranks get it)."""
        value = loss.detach()
        if not self.enabled:
            return float(value)
        import torch.distributed as dist

        self.local_loss += float(value)
        t = (value.float() * share).reshape(1)
        dist.all_reduce(t)
        return float(t)

    # --- agreement between ranks ----------------------------------------------------------------------
    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank (cancelling keeps the ranks in step)."""
        if not self.enabled:
            return bool(flag)
        import torch
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def from_main(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on rank 0 only and give its result to every rank. An InputError raised there is raised on
        every rank (so no rank waits forever for a result that never comes); any other error is re-raised on
        rank 0 and reported as an error on the others."""
        if not self.enabled:
            return fn()
        import torch.distributed as dist

        box: list = [None]
        error: BaseException | None = None
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except BaseException as e:  # noqa: BLE001  (handed to the other ranks, re-raised below)
                error = e
                box[0] = ("input_error" if isinstance(e, InputError) else "error", str(e))
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if error is not None:
            raise error
        if kind == "input_error":
            raise InputError(value)
        if kind == "error":
            raise RuntimeError(f"rank 0 failed: {value}")
        return value

    def summary(self) -> str:
        mean = self.local_loss / self.steps if self.steps else float("nan")
        return (
            f"[rank {self.rank}/{self.world_size}] trained {self.steps} steps on {self.samples} patches "
            f"({self.backend}, {self.device}); mean loss of its own patches {mean:.6f}"
        )


@functools.cache
def _ddp_class():
    from torch.nn.parallel import DistributedDataParallel

    class DDP(DistributedDataParallel):
        """DistributedDataParallel that also runs the wrapped model's other `forward_*` methods (e.g. the masked
        autoencoder's `forward_mae`, which a workflow looks up with hasattr) through DDP's forward, so their
        gradients are synchronised too."""

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                module = super().__getattr__("module")
                attr = getattr(module, name)
                if name.startswith("forward_") and callable(attr):
                    return lambda *args, **kwargs: self._as_forward(attr, *args, **kwargs)
                return attr

        def _as_forward(self, method, *args, **kwargs):
            module = self.module
            module.forward = method  # an instance attribute shadows the class's forward during this call
            try:
                return self(*args, **kwargs)
            finally:
                del module.forward

    return DDP


def setup(device: str, batch_size: int) -> Distributed:
    """The process's context; under torchrun, joins the process group (once per process): NCCL on CUDA, one GPU
    per local rank, else gloo. `device` is the resolved config device ('cuda' or 'cpu')."""
    rank, world, local = env_world()
    if world <= 1:
        return Distributed(device=device)
    if batch_size < world:
        raise InputError(
            f"train.batch_size is {batch_size} but there are {world} processes: each process needs at "
            f"least one patch of the batch (the batch is split across the processes)."
        )
    import torch
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    if cuda:
        if local >= torch.cuda.device_count():
            raise InputError(
                f"Process {rank} has LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} "
                f"CUDA GPU(s); start at most one process per GPU (torchrun --nproc_per_node)."
            )
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)  # env://: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
        atexit.register(shutdown)  # whoever drives the trainer (the CLI, a script, a test), the group is left
    return Distributed(rank, world, local, device, dist.get_backend())


def shutdown() -> None:
    """Leave the process group: the CLI's last step, and at exit in any process that joined one (`setup`, whoever
    drives the trainer), before the interpreter shuts down. Does nothing a second time.

    gloo's worker threads outlive the group once DistributedDataParallel has used it (torch keeps it alive), and
    each drops the tensors of the last collective it ran a moment after the collective returns. A tensor made in
    Python needs the interpreter to be let go; during the interpreter's shutdown the thread is stopped instead,
    inside a C++ destructor, and the process aborts ("terminate called without an active exception", exit -6).
    So the group is left, and the threads are waited for, while the interpreter still runs."""
    dist = sys.modules.get("torch.distributed")  # never imports torch (the CLI calls this after every command)
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        _wait_for_idle_threads("pt_gloo_runloop")


def _thread_states(name: str) -> list[str] | None:
    """The scheduler states (R, S, D, ...) of this process's threads called `name`; None where /proc cannot tell."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    states = []
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # the thread has just ended
            continue
        comm, _, rest = stat.partition("(")[2].rpartition(")")
        if comm == name:
            states.append(rest.split()[0])
    return states


def _wait_for_idle_threads(name: str, calm: int = 3, timeout: float = 10.0) -> None:
    """Sleep (the interpreter free for other threads) until every thread called `name` has been asleep `calm`
    looks in a row, 10 ms apart: gloo's threads are then waiting for work, done with the tensors of the last one."""
    import time

    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < calm and time.monotonic() < deadline:
        time.sleep(0.01)
        states = _thread_states(name)
        if states is None:
            return
        quiet = quiet + 1 if all(s == "S" for s in states) else 0
