"""The hand-over from the Train widget to the Predict widget: the best checkpoint of the last finished training."""

from __future__ import annotations

from pathlib import Path

from psygnal import Signal


class LastTrained:
    changed = Signal(object)  # the new checkpoint Path

    def __init__(self):
        self.checkpoint: Path | None = None

    def set(self, checkpoint) -> None:
        self.checkpoint = Path(checkpoint)
        self.changed.emit(self.checkpoint)


last_trained = LastTrained()


def load_triton_safely() -> None:
    """Import triton (if installed) with RTLD_DEEPBIND, before torch does it on its own.

    torch's optimizers import torch._dynamo, which imports triton, whose library bundles its own LLVM. In a viewer
    drawn by Mesa's software OpenGL (llvmpipe: Xvfb, VMs, remote desktops) Mesa's LLVM is already loaded, and the
    plain import then crashes the whole process (segmentation fault). Binding triton's symbols to its own library
    first avoids the clash; without triton, or once imported, this does nothing.
    """
    import importlib.util
    import os
    import sys

    if "triton" in sys.modules or not hasattr(os, "RTLD_DEEPBIND") or importlib.util.find_spec("triton") is None:
        return
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
    try:
        import triton  # noqa: F401
    except Exception:  # a broken triton only matters to torch.compile, which the plugin does not use
        pass
    finally:
        sys.setdlopenflags(flags)


def warm_imports() -> None:
    """Worker threads call this before their job: the modules that the GUI thread would otherwise import the first
    time it adds a prediction layer (dask.array ~0.25 s, and distributed ~0.2 s, which dask's scheduler lookup
    imports when installed) and triton (~0.13 s, see load_triton_safely) are imported here, off the GUI thread."""
    import importlib.util

    load_triton_safely()
    import dask.array  # noqa: F401

    if importlib.util.find_spec("distributed") is not None:
        import distributed  # noqa: F401
