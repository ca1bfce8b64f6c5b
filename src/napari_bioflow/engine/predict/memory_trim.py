"""glibc's freed pages returned to the system while a big prediction runs (its RSS stays near the live memory)."""

from __future__ import annotations

import os

TRIM_SLACK = 64 * 2**20  # RSS allowed above its level after the last malloc_trim before trimming again


def _libc_malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return None


_MALLOC_TRIM = _libc_malloc_trim()
try:
    _PAGE = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):
    _PAGE = 4096


def _rss() -> int:
    """Resident set size in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


class _Trimmer:
    """Returns the free pages of every malloc arena to the system when the RSS has grown TRIM_SLACK above
    its level after the last trim. glibc serves tile-sized buffers (tens of MB) from its heaps once such
    sizes have been freed a few times, and keeps what is freed in the middle of a heap (every thread has
    its own): without this the RSS of a long prediction creeps up by hundreds of MB. Trimming after every
    batch would cost page faults on every new buffer; this trims only when garbage has piled up."""

    def __init__(self):
        self.enabled = _MALLOC_TRIM is not None and _rss() > 0
        self.level = _rss()

    def __call__(self) -> None:
        if self.enabled and _rss() > self.level + TRIM_SLACK:
            _MALLOC_TRIM(0)
            self.level = _rss()
