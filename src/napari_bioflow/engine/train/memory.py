"""Memory: what a training step needs, checked against what the machine has before a run starts; and a failed
allocation (in training or prediction) turned into one sentence.

The estimate runs one training step (forward, loss, backward) of the model on PyTorch's "meta" device: tensors with
a shape and no data, so nothing is allocated whatever the batch and patch size, and the cost is that of the step's
Python dispatch (~0.1-0.5 s of CPU for a U-Net; benchmarks/bench_memory_estimate.py). A dispatch mode follows every
tensor the step creates and frees, so its peak is the step's peak of live tensors (activations kept for the backward
pass, gradients, the backward's temporaries), as the allocator sees them. Added to it: the optimizer's state (Adam
keeps two tensors per weight) and the prefetched batches. The weights themselves and the data already loaded are
left out: they are allocated before the check, so they are no longer in what is free.

Against the peak RSS of real steps in a fresh process, the CPU estimate is 1.1-1.6 x the real need for steps of
0.5-5 GB (more for smaller ones, where the fixed reserve dominates; benchmarks/README.md, issue 9), so a run that
passes is not killed for memory, and the batch the refusal suggests is within about a third of the largest that fits.

Here: the check and the sentences; memory_room.py: what the machine has free; memory_step.py: what a step needs.
"""

from __future__ import annotations

import os

from ..errors import InputError
from .memory_room import _cgroup_folders, _cgroup_room, _gpu, available, ram_available  # noqa: F401  (re-exported)
from .memory_step import OVERHEAD, RESERVE, StepMemory, meta_copy, optimizer_bytes, step_peak  # noqa: F401


def _size(n: int) -> str:
    if n >= 10 * 10**9:
        return f"{n / 10**9:.0f} GB"
    if n >= 10**9:
        return f"{n / 10**9:.1f} GB"
    return f"{max(1, round(n / 10**6))} MB"


def _dims(values) -> str:
    return "x".join(str(int(v)) for v in values)


def check_training(model, workflow, cfg, data, loss_fn, device: str, world: int = 1, local_world: int = 1) -> None:
    """Refuse (InputError, one sentence saying what would fit) a training step that cannot fit in the memory the
    device has free; `world` processes share the batch, `local_world` of them share this machine's RAM."""
    example = data.example() if hasattr(data, "example") else None
    if example is None:
        return
    free, where = available(device)
    if free is None:
        return
    batch = cfg.train.batch_size
    per_process = -(-batch // world)
    sharing = 1 if device.startswith("cuda") else max(1, local_world)  # CPU processes of one machine share its RAM
    try:
        estimate = StepMemory(model, workflow, cfg, example, loss_fn, distributed=world > 1)
        need = estimate.need(per_process, device)
    except (RuntimeError, ValueError, TypeError, NotImplementedError):  # the check only advises: never in the way
        return
    if need is None or need * sharing <= free:
        return
    room = free // sharing
    fits = estimate.largest_batch(room, device, per_process) * world
    said = f"train.batch_size {batch}" + (f" ({per_process} per process, {world} processes)" if world > 1 else "")
    free_words = f"{_size(free)} of RAM are free" if where == "of RAM" else f"{_size(free)} are free {where}"
    head = (
        f"A training step with {said} and data.patch_size {_dims(cfg.data.patch_size)} needs about "
        f"{_size(need * sharing)} but {free_words}"
    )
    if fits >= world:
        raise InputError(f"{head}; train.batch_size {fits} (or a smaller data.patch_size) would fit.")
    patch = estimate.smaller_patch(room, device, 1)
    if patch is not None:
        raise InputError(
            f"{head}; even train.batch_size {world} is too much: data.patch_size {_dims(patch)} with "
            f"train.batch_size {world} would fit."
        )
    raise InputError(
        f"{head}; even train.batch_size {world} with a small data.patch_size is too much: use a "
        f"smaller model (model.options)."
    )


# --- allocation failures --------------------------------------------------------------------------------------
_OOM_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory", "bad_alloc", "failed to allocate")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether an exception is a failed allocation (torch's OutOfMemoryError, its CPU allocator's RuntimeError,
    Python's MemoryError)."""
    if isinstance(error, MemoryError):
        return True
    if isinstance(error, RuntimeError):
        text = str(error).lower()
        return type(error).__name__ == "OutOfMemoryError" or any(w in text for w in _OOM_WORDS)
    return False


def _where(device: str) -> str:
    return f"GPU {_gpu(device)}" if str(device).startswith("cuda") else "RAM"


def training_failure(cfg, device: str) -> str:
    return (
        f"Training ran out of memory ({_where(device)}) with train.batch_size {cfg.train.batch_size} and "
        f"data.patch_size {_dims(cfg.data.patch_size)}: lower train.batch_size or data.patch_size."
    )


def prediction_failure(name: str, tile, per_pass: int, device: str) -> str:
    return (
        f"Prediction of {name} ran out of memory ({_where(device)}) with tiles of {_dims(tile)}, {per_pass} per "
        f"pass: lower predict.tile_size or predict.batch_size."
    )


def local_world_size() -> int:
    """Processes of this run on this machine (torchrun's LOCAL_WORLD_SIZE; 1 in a plain process)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    except ValueError:
        return 1
