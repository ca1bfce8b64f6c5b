"""Writing finished output chunks: the writer thread of a ZarrAccumulator, its codec and the chunk grid."""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Sequence

WRITE_QUEUE = 2  # finished chunks waiting for the writer thread (each is one output chunk)


def _fast_codec():
    """Blosc LZ4 with byte shuffle: costs less CPU than writing the raw bytes (fewer of them), shrinks noisy
    probabilities by ~1.3x and the flat background of real predictions by 100x or more (zstd would compress
    better but costs ~8x the CPU of the whole write)."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


class _Writer:
    """Writes finished chunks to the accumulator's zarr array on a thread, at most WRITE_QUEUE waiting."""

    def __init__(self, acc):
        self.acc = acc
        self.queue: queue.Queue = queue.Queue(maxsize=WRITE_QUEUE)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, daemon=True, name="bioflow-chunk-writer")
        self.thread.start()

    def _work(self) -> None:
        acc = self.acc
        while True:
            item = self.queue.get()
            if item is None:
                return
            key, data = item
            try:
                if self.error is None:
                    acc.sum[(slice(None), *acc._region(key))] = data
            except BaseException as e:  # handed to the predicting thread at its next put / close
                self.error = e
            finally:
                with acc._lock:
                    if acc._writing.get(key) is data:
                        del acc._writing[key]

    def put(self, key, data) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((key, data))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def chunk_regions(shape: Sequence[int], chunks: Sequence[int]):
    """Slices of the chunks of an array of `shape`, in C order."""
    for origin in itertools.product(*(range(0, s, c) for s, c in zip(shape, chunks))):
        yield tuple(slice(o, min(o + c, s)) for o, c, s in zip(origin, chunks, shape))
