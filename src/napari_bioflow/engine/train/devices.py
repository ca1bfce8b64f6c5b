"""Which device a run uses: `auto`, `cpu`, `cuda` (the current GPU) or `cuda:N` (GPU N), checked against the GPUs
this machine has, and the choices the docks list (the GPUs found, by number and name)."""

from __future__ import annotations

import re

from ..errors import InputError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DEVICE_RULE = "auto, cpu, cuda or cuda:N (N: a GPU's number, from 0)"


def device_problem(name: str) -> str | None:
    """Why `name` is not a device a config may name (its form only: the GPUs are checked when the run starts)."""
    return None if DEVICE_PATTERN.match(str(name)) else f"device '{name}' must be {DEVICE_RULE}"


def resolve_device(name: str) -> str:
    """The torch device of a config's `device`; a GPU this machine does not have is one sentence (InputError)."""
    import torch

    problem = device_problem(name)
    if problem:
        raise InputError(problem + ".")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device is 'cuda' but no CUDA GPU is available; use 'auto' or 'cpu'.")
    if name.startswith("cuda:"):
        index, count = int(name.split(":")[1]), torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= count:
            has = "no CUDA GPU" if not count else f"{count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
            raise InputError(f"device is '{name}' but this machine has {has}; use 'auto', 'cpu' or a GPU it has.")
    return name


def device_choices() -> list[tuple[str, str]]:
    """(label, value) of the devices a dock offers: auto, cpu, and each GPU found ('cuda:0 (NVIDIA H200)')."""
    out = [("auto (a GPU when there is one)", "auto"), ("cpu", "cpu")]
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        for i in range(count):
            out.append((f"cuda:{i} ({torch.cuda.get_device_name(i)})", f"cuda:{i}"))
    except Exception:  # noqa: BLE001  (a broken driver: no GPU to offer, the CPU still works)
        pass
    return out
