"""Training: the Trainer loop (trainer), checkpoints (checkpoint, checkpoint_info), torchrun (distributed), memory
checks (memory), validation metrics (metrics) and loss charts (charts).

Re-exports what callers use; importing this package does not import torch (trainer imports it inside functions)."""

from .trainer import DoneReport, EpochReport, StartReport, StepReport, Trainer, resolve_device, transfer_weights

__all__ = ["DoneReport", "EpochReport", "StartReport", "StepReport", "Trainer", "resolve_device", "transfer_weights"]
