"""Memory a device has free: RAM (MemAvailable, or the closest cgroup limit, v1 and v2) or a GPU's free memory."""

from __future__ import annotations

from pathlib import Path


def _stat(path: Path, key: str) -> int | None:
    """The number after `key` in a '/proc/meminfo' or 'memory.stat' style file; None when absent."""
    try:
        for line in path.read_text().splitlines():
            name, *values = line.split()
            if name.rstrip(":") == key and values:
                return int(values[0])
    except (OSError, ValueError):
        pass
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def _cgroup_folders(root: Path) -> list[tuple[Path, str]]:
    """(folder, version) of this process's memory cgroup and of its parents, as /proc/self/cgroup names them."""
    out: list[tuple[Path, str]] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            mount, version = root, "v2"
        elif "memory" in controllers.split(","):
            mount, version = root / "memory", "v1"
        else:
            continue
        own = mount / path.strip().lstrip("/")
        out += [(f, version) for f in (own, *own.parents) if f == mount or mount in f.parents]
    return out


def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes this process's memory cgroups still allow (the closest limit minus what is used, reclaimable page
    cache counted as free); None without a limit. cgroup v2 and v1."""
    rooms = []
    for folder, version in _cgroup_folders(root):
        if version == "v2":
            limit, used = _read_int(folder / "memory.max"), _read_int(folder / "memory.current")
            cache = "inactive_file"
        else:
            limit, used = _read_int(folder / "memory.limit_in_bytes"), _read_int(folder / "memory.usage_in_bytes")
            cache = "total_inactive_file"
        if limit is not None and used is not None and limit < 2**60:  # v1 writes "no limit" as a huge number
            rooms.append(limit - used + (_stat(folder / "memory.stat", cache) or 0))
    return max(0, min(rooms)) if rooms else None


def ram_available() -> int | None:
    """Bytes of RAM a process can still take: MemAvailable, or less when a cgroup limit is closer."""
    free = _stat(Path("/proc/meminfo"), "MemAvailable")  # kB
    free = None if free is None else free * 1024
    room = _cgroup_room()
    if free is None:
        return room
    return free if room is None else min(free, room)


def available(device: str) -> tuple[int | None, str]:
    """(free bytes, where in words) of a device: 'of RAM' or 'on GPU cuda:0'."""
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # reusable by this process
        return free + cached, f"on GPU {_gpu(device)}"
    return ram_available(), "of RAM"


def _gpu(device: str) -> str:
    """'cuda:0' for 'cuda' (the current GPU), as the user would name it."""
    import torch

    d = torch.device(device)
    return f"cuda:{torch.cuda.current_device() if d.index is None else d.index}"
