"""The GPU path of a training step: mixed precision (bfloat16 where the GPU has it, else float16 with a gradient
scaler), channels-last memory order for 2D models, cuDNN's autotuner, pinned host batches copied without blocking,
and an optional torch.compile. On the CPU every part is off (float32, plain copies), so CPU runs are unchanged;
train.compile is refused there with one sentence."""

from __future__ import annotations

import contextlib

import numpy as np

from ..errors import InputError


class StepAccelerator:
    def __init__(self, cfg, device: str):
        import torch

        t = cfg.train
        self.cuda = str(device).startswith("cuda")
        self.device = device
        if getattr(t, "compile", False) and not self.cuda:
            raise InputError(
                "train.compile needs a CUDA GPU (device is the CPU here): set train.compile to false or device to cuda."
            )
        self.dtype = None
        if self.cuda and getattr(t, "amp", "off") == "auto":
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None
        self.channels_last = self.cuda and getattr(t, "channels_last", False) and cfg.ndim == 2
        self.compile = self.cuda and getattr(t, "compile", False)
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # fixed patch shapes: the fastest kernels are found once

    def describe(self) -> str:
        """In words, for the run's notes: '' on the CPU."""
        if not self.cuda:
            return ""
        parts = [f"mixed precision {str(self.dtype).split('.')[-1]}" if self.dtype else "float32"]
        parts += ["gradient scaler"] * (self.scaler is not None)
        parts += ["channels-last"] * self.channels_last + ["torch.compile"] * self.compile
        return "GPU training: " + ", ".join(parts) + "."

    def prepare_model(self, model):
        import torch

        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def wrap_forward(self, net):
        """The network the training step calls: compiled when train.compile is on (on a GPU)."""
        import torch

        return torch.compile(net) if self.compile else net

    def host(self, batch: tuple) -> tuple:
        """Numpy batch -> torch tensors in page-locked memory (on a GPU: the copy to the device can then overlap the
        step; run in the prefetch thread). On the CPU: the tensors share the numpy arrays' memory."""
        import torch

        out = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in batch)
        return tuple(t.pin_memory() for t in out) if self.cuda else out

    def to_device(self, tensor):
        return tensor.to(self.device, non_blocking=True)

    def layout(self, x):
        """The model's input in channels-last order where that is on (2D on a GPU)."""
        import torch

        if self.channels_last and x.ndim == 4 and x.is_floating_point():
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self):
        import torch

        return torch.autocast("cuda", dtype=self.dtype) if self.dtype is not None else contextlib.nullcontext()

    def backward_step(self, loss, optimizer) -> None:
        """Backward pass and optimizer step (through the gradient scaler with float16)."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
