"""Full-image prediction (`predict.full_image`): each image in one forward pass, no tiles, when it fits.

Whether it fits is estimated as training's memory check does (engine/train/memory.py): the forward pass runs on
PyTorch's meta device (nothing allocated) under a dispatch mode that follows every tensor, and its peak, with the
same overhead and reserve, is compared with the free RAM or GPU memory. An image that does not fit is refused with
one sentence naming it, the memory needed and the memory free."""

from __future__ import annotations

from ..errors import InputError


def full_image_tile(spatial, divisor: int) -> list[int]:
    """The one tile covering the whole image: each axis rounded up to the model's size divisor."""
    return [-(-int(d) // divisor) * divisor for d in spatial]


def forward_peak(loaded, tile, channels: int) -> int | None:
    """Peak bytes of the tensors one forward pass of a (1, channels, *tile) input creates (the input included), on
    the meta device; None when the model cannot run there."""
    import torch

    from ..train import memory

    _tracker_class = getattr(memory, "_tracker_class", None)
    if _tracker_class is None:  # the step's memory in its own module
        from ..train.memory_step import _tracker_class
    meta_copy = memory.meta_copy

    model = meta_copy(loaded.model).eval()
    forward = loaded.workflow.prediction_forward(model, loaded.config)
    tracker = _tracker_class()()
    try:
        with torch.inference_mode(), tracker:
            x = torch.empty((1, channels, *tile), device="meta")
            y = forward(x)
            del x, y
    except Exception:  # noqa: BLE001  (an operation without a meta kernel: no estimate, the pass is tried)
        return None
    return tracker.peak


def check_full_image_fits(loaded, tile, name: str, device: str) -> None:
    """Refuse (InputError, one sentence) an image whose one-pass prediction would not fit in memory."""
    from ..train.memory import OVERHEAD, RESERVE, _size, available

    peak = forward_peak(loaded, tile, loaded.config.data.in_channels)
    if peak is None:
        return
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    need = int(peak * OVERHEAD[kind]) + RESERVE[kind]
    free, where = available(str(device))
    if free is not None and need > free:
        raise InputError(
            f"{name} does not fit in one pass (predict.full_image): its {'x'.join(map(str, tile))} forward pass needs "
            f"about {_size(need)} and {_size(free)} {where} is free; turn predict.full_image off to predict it tile "
            f"by tile."
        )
