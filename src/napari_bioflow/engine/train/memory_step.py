"""What one training step needs: its peak of live tensors from a run on PyTorch's meta device (nothing allocated),
plus the optimizer's state and the prefetched batches; StepMemory answers for any batch (and patch) size.
See engine/train/memory.py for the check that uses it and the measurements behind the margins."""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable

# What a step takes beyond its live tensors, measured on 14 models (benchmarks/bench_memory_estimate.py, README):
# on the CPU 1.07-1.67 x the live tensors, or the live tensors + 16-1220 MB (glibc keeps freed blocks under its
# mmap threshold, up to 32 MiB, on its free lists; oneDNN's reordered weights and scratch buffers), the most for
# many mid-sized tensors (DFCAN: 1.39-1.46 x in two runs). 1.45 x + 384 MiB covers every case measured: a run that
# passes is not killed by the kernel. On CUDA (not measured here: the caching allocator's rounding and
# fragmentation, cuDNN's workspaces) a failed allocation is an exception that becomes one sentence anyway
# (train.py), so the margin is narrower.
OVERHEAD = {"cpu": 1.45, "cuda": 1.2}
RESERVE = {"cpu": 384 * 2**20, "cuda": 512 * 2**20}
REAL_RUN_VOXELS = 2**18  # a model that cannot run on the meta device is measured for real up to this patch (512^2)
PREFETCHED = 4  # training batches alive beside the step's own: the prefetch queue (2), the one being read, a copy


def _tracker_class():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Tracker(TorchDispatchMode):
        """Follows the storage of every tensor an operation returns until it is freed: `peak` is the most bytes
        alive at once. Views share their base's storage and are counted once."""

        @classmethod
        def _should_skip_dynamo(cls) -> bool:  # torch would import torch._dynamo (1-2 s) on the first call
            return False

        def __init__(self):
            super().__init__()
            self.live = self.peak = self.total = 0
            self.sizes: dict[int, int] = {}

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    key = storage._cdata
                    if key not in self.sizes:
                        size = storage.nbytes()
                        self.sizes[key] = size
                        self.live += size
                        self.total += size
                        self.peak = max(self.peak, self.live)
                        weakref.finalize(storage, self._free, key)
            return out

        def _free(self, key: int) -> None:
            self.live -= self.sizes.pop(key, 0)

    return Tracker


def meta_copy(model):
    """The model with its weights and buffers on the meta device (nothing copied but the module objects)."""
    import torch

    memo = {}
    for p in model.parameters():
        memo[id(p)] = torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def step_peak(model, loss: Callable, x_shape, x_dtype, y_shape, y_dtype, device: str = "meta") -> int | None:
    """Peak bytes of the tensors one training step creates, the batch itself included: `loss(model, x, y)` and its
    backward pass, on the meta device (nothing allocated) or, for models that cannot run there, really on the
    model's own device (zeros in). None when the step cannot run."""
    import torch

    tracker = _tracker_class()()
    make = torch.empty if device == "meta" else torch.zeros
    gpus = [torch.device(device).index or 0] if device.startswith("cuda") else []
    try:
        with torch.random.fork_rng(devices=gpus), tracker:
            x = make(x_shape, dtype=x_dtype, device=device)
            y = None if y_shape is None else make(y_shape, dtype=y_dtype, device=device)
            value = loss(model, x, y)
            value.backward()
            del value
            alive = tracker.live
            kept = x.untyped_storage().nbytes()
    except Exception:  # noqa: BLE001  (an operation without a meta kernel, a data-dependent one: no estimate here)
        return None
    finally:
        for p in model.parameters():
            p.grad = None
    if alive < kept:  # freed tensors were not followed (an older torch): every tensor created counts
        return tracker.total
    return tracker.peak


def optimizer_bytes(cfg, weights: int) -> int:
    """The optimizer's state beside `weights` bytes of trainable weights: Adam(W) two tensors each, SGD momentum one."""
    t = cfg.train
    if t.optimizer == "SGD":
        return weights if t.momentum else 0
    return 2 * weights


class StepMemory:
    """The estimate of one process's training step at any batch size (and patch size, for the models that take
    any), from meta runs of the step."""

    def __init__(self, model, workflow, cfg, example, loss_fn, distributed: bool = False):
        import torch

        self.patch = tuple(cfg.data.patch_size)
        self.divisor = int(getattr(model, "size_divisor", 1) or 1)
        self.meta = meta_copy(model).train()
        x, y = (torch.from_numpy(a) if a is not None else None for a in example)
        x, y = workflow.make_pair(x, y, torch.Generator().manual_seed(0), cfg)  # the tensors the model gets
        self.x = (tuple(x.shape[1:]), x.dtype)
        self.y = None if y is None else (tuple(y.shape[1:]), y.dtype)
        self.batch_bytes = sum(int(a.nbytes) for a in example if a is not None)  # a prefetched batch of 1
        self.loss = lambda model, xb, yb: workflow.training_loss(model, xb, yb, loss_fn)
        weights = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        self.fixed = optimizer_bytes(cfg, weights) + (weights if distributed else 0)  # DDP's gradient buckets
        self._peaks: dict[tuple, int | None] = {}
        self._model, self._real = model, None

    def _shape(self, shape: tuple, patch: tuple) -> tuple:
        """A tensor's shape (batch left out) for another patch: its trailing axes are the patch's."""
        n = len(self.patch)
        return (*shape[:-n], *patch) if shape[-n:] == self.patch else shape

    def _run(self, batch: int, patch: tuple, device: str = "meta") -> int | None:
        model = self.meta if device == "meta" else self._model
        y_shape = None if self.y is None else (batch, *self._shape(self.y[0], patch))
        return step_peak(
            model,
            self.loss,
            (batch, *self._shape(self.x[0], patch)),
            self.x[1],
            y_shape,
            None if self.y is None else self.y[1],
            device,
        )

    def peak(self, batch: int, patch: tuple | None = None) -> int | None:
        patch = tuple(patch or self.patch)
        key = (batch, patch)
        if key in self._peaks:
            return self._peaks[key]
        peak = None if self._real is not None else self._run(batch, patch)
        if peak is None and patch == self.patch and math.prod(patch) <= REAL_RUN_VOXELS:
            # a model the meta device cannot run (a step that depends on values): the steps of 1 and 2 patches run
            # for real (small enough to afford) and the line through them; the model's buffers are put back, its
            # gradients cleared, the random streams left as they were
            if self._real is None:
                device = str(next(self._model.parameters()).device)
                buffers = [(b, b.detach().clone()) for b in self._model.buffers()]
                was_training = self._model.training
                self._model.train()
                try:
                    self._real = (self._run(1, patch, device), self._run(2, patch, device))
                finally:
                    self._model.train(was_training)
                    for b, saved in buffers:
                        b.data.copy_(saved)
            one, two = self._real
            peak = None if one is None or two is None else one + (batch - 1) * max(0, two - one)
        self._peaks[key] = peak
        return peak

    def need(self, batch: int, device: str, patch: tuple | None = None) -> int | None:
        """Bytes the step needs at this batch (and patch) size; None when it cannot be estimated."""
        peak = self.peak(batch, patch)
        if peak is None:
            return None
        kind = "cuda" if device.startswith("cuda") else "cpu"
        scale = math.prod(patch) / math.prod(self.patch) if patch else 1.0
        data = int(PREFETCHED * batch * self.batch_bytes * scale)  # numpy batches in RAM (beside a CPU step)
        return int(OVERHEAD[kind] * (peak + self.fixed) + RESERVE[kind] + (data if kind == "cpu" else 0))

    def largest_batch(self, room: int, device: str, below: int) -> int:
        """The largest batch under `below` whose step fits in `room` bytes (0: not even one): from the step's
        linear growth with the batch, checked by a meta run at the answer."""
        one = self.need(1, device)
        if one is None or one > room:
            return 0
        two = self.need(2, device)
        per = max(1, (two or one) - one)
        batch = max(1, min(below - 1, 1 + (room - one) // per))
        while batch > 1 and (self.need(batch, device) or room + 1) > room:
            batch = max(1, batch * 3 // 4)
        return batch

    def smaller_patch(self, room: int, device: str, batch: int) -> tuple | None:
        """A patch of the same proportions (multiples of the model's size divisor), close to the largest whose step
        fits in `room` bytes at `batch` (memory grows about with the voxels); None when none does or the model
        takes only its own patch size."""

        def scaled(f: float) -> tuple:
            return tuple(max(self.divisor, int(p * f) // self.divisor * self.divisor) for p in self.patch)

        full = self.need(batch, device)
        if full is None:
            return None
        f, tried = 0.95 * min(0.9, (room / full) ** (1 / len(self.patch))), None
        for _ in range(12):
            patch = scaled(f)
            if patch == tried:
                return None  # at the smallest patch already
            tried = patch
            need = self.need(batch, device, patch)
            if need is None:
                return None
            if need <= room:
                return patch
            f *= max(0.3, min(0.9, (room / need) ** (1 / len(patch))))  # memory grows about with the voxels
        return None
