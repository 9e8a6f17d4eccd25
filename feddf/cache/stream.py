"""Shuffled, resumable uint8 batches streamed from a cache (or its shards): the distillation source.

    python -c "from feddf.cache.stream import CacheStream as S; x, y = next(iter(S('cache/x.h5', 256))); print(x.shape)"

`CacheStream` is a torch IterableDataset that yields whole batches `(images uint8 (B, C, R, R), labels int64 (B,))`;
use it directly, through `stream.loader(num_workers=W)` (which also keeps `state_dict()` current), or through
`DataLoader(stream, batch_size=None, num_workers=W)`. The order is a pure function of (seed, epoch, cache shape,
buffer_size) — see shuffle.py — so W and the number of ranks never change it; `state_dict()` records the epoch and
the sample offset, and `load_state_dict()` resumes exactly there. Normalisation and augmentation are batch tensor ops
in augment.py, applied by the consumer. Labels are for audits; distillation must not use them. The reading engine
itself (plans, windows, state) is torch-free: feddf/cache/engine.py.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from feddf.cache.engine import ChunkStream, StreamConfig  # noqa: F401  (StreamConfig: re-exported)
from feddf.cache.shuffle import split_phase
from feddf.errors import FeddfError


class CacheStream(ChunkStream, IterableDataset):
    """Batches of a cache in chunk-aware shuffled order as torch tensors; see the module docstring."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        c = self.config
        worker = get_worker_info()
        if worker is not None and c.follow and worker.num_workers > 1:
            raise FeddfError("follow=True streams a growing cache in one process: use num_workers=0 or 1")
        phase, stride = split_phase(c.rank, c.world_size, worker.id if worker else 0,
                                    worker.num_workers if worker else 1)
        start = self._pos
        for imgs, labs, b in self.iter_numpy(phase, stride, copy=worker is not None):
            if worker is None:  # in the consumer's process: keep state_dict() current (see _after_batch)
                self._after_batch(start, b, len(labs))
            yield torch.from_numpy(imgs), torch.from_numpy(labs)
        if worker is None:
            self._after_epoch(start)

    def loader(self, num_workers: int = 0, multiprocessing_context: str | None = None, **kwargs) -> "StreamLoader":
        """Iterate through a DataLoader with `num_workers` processes while keeping `state_dict()` current."""
        return StreamLoader(self, num_workers, multiprocessing_context, **kwargs)


class StreamLoader:
    """`for x, y in stream.loader(num_workers=2)`: a DataLoader over the stream that advances its state per batch."""

    def __init__(self, stream: CacheStream, num_workers: int, multiprocessing_context: str | None, **kwargs):
        self.stream, self.num_workers, self.context, self.kwargs = stream, num_workers, multiprocessing_context, kwargs

    def __iter__(self):
        s = self.stream
        if self.num_workers == 0:
            yield from s
            return
        from torch.utils.data import DataLoader

        s.close()  # never hand an open HDF5 handle to forked workers; each worker opens its own
        start = s._pos
        dl = DataLoader(s, batch_size=None, num_workers=self.num_workers, persistent_workers=False,
                        multiprocessing_context=self.context, **self.kwargs)
        c = s.config
        for j, (x, y) in enumerate(dl):
            s._after_batch(start, c.rank + c.world_size * j, int(y.shape[0]))
            yield x, y
        s._after_epoch(start)

