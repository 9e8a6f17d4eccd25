"""Chunk-aware shuffling as pure functions: which sample comes at which position of an epoch, and who reads it.

    python -c "from feddf.cache.shuffle import *; p = epoch_plan(chunk_bounds(1000, 100), 0, 0, 3); print(p.order[:8])"

Why chunk-aware: a cache is stored in HDF5 chunks of whole images (~1 MiB, format.chunk_images) and the only fast way to
read it is a whole chunk at a time. A global random permutation would touch one chunk per sample. So an epoch is:

  1. permute the chunk order with `np.random.default_rng(seed + epoch)`;
  2. cut that order into windows of `window_chunks` chunks (the shuffle buffer: at most that many chunks in memory);
  3. read a window's chunks contiguously and emit its samples in a random order drawn from the same generator.

Everything here is a pure function of (chunk bounds, seed, epoch, window size), so the order does not depend on the
number of DataLoader workers or distributed ranks: those only decide *who* materialises a given batch
(`split_phase`, `owned_mask`), never *what* is in it. Positions are counted in one "stream coordinate" from the
point where iteration (re)started, which is what makes resuming from a sample offset exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class EpochPlan:
    """The order of one epoch over samples [0, n) and how it maps onto window buffers.

    Position p of the epoch is sample `order[p]`; it lies in window w = `window_of(p)`, whose buffer holds the chunks
    `chunks[window_chunk[w]:window_chunk[w+1]]` back to back in that order, and the sample sits at buffer row
    `rows[p]`."""

    order: np.ndarray         # int64 (n,): global sample index at each epoch position
    rows: np.ndarray          # int64 (n,): row of that sample inside its window buffer
    chunks: np.ndarray        # int64 (n_chunks,): chunk ids in read order
    window_pos: np.ndarray    # int64 (n_windows + 1,): first epoch position of each window (last = n)
    window_chunk: np.ndarray  # int64 (n_windows + 1,): first index into `chunks` of each window
    bounds: np.ndarray        # int64 (n_chunks + 1,): chunk c holds samples [bounds[c], bounds[c + 1])

    @property
    def n(self) -> int:
        return int(self.order.shape[0])

    @property
    def n_windows(self) -> int:
        return int(self.window_pos.shape[0] - 1)

    def window_of(self, pos: int) -> int:
        return int(np.searchsorted(self.window_pos, pos, side="right") - 1)

    def window_slots(self, w: int) -> tuple[np.ndarray, np.ndarray]:
        """(chunk ids, first buffer row of each) for window w; the buffer needs `window_pos[w+1]-window_pos[w]` rows."""
        ids = self.chunks[self.window_chunk[w]:self.window_chunk[w + 1]]
        sizes = self.bounds[ids + 1] - self.bounds[ids]
        return ids, np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def chunk_bounds(n: int, chunk_len: int, start: int = 0) -> np.ndarray:
    """Bounds of the chunks covering samples [start, start + n): [start, start+k, ..., start+n] (last may be short)."""
    if chunk_len < 1:
        raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
    inner = np.arange(start, start + n, chunk_len, dtype=np.int64)
    return np.concatenate([inner, np.array([start + n], dtype=np.int64)]) if n > 0 else np.array([start], np.int64)


def concat_bounds(parts: Sequence[np.ndarray]) -> np.ndarray:
    """Join per-shard bounds (each starting where the previous one ends) into one global table; no chunk spans two
    shards."""
    if not parts:
        return np.zeros(1, np.int64)
    out = [np.asarray(parts[0], np.int64)]
    for p in parts[1:]:
        p = np.asarray(p, np.int64)
        if p[0] != out[-1][-1]:
            raise ValueError(f"shard bounds are not contiguous: {out[-1][-1]} then {p[0]}")
        out.append(p[1:])
    return np.concatenate(out)


def window_chunks_for(buffer_size: int, chunk_len: int) -> int:
    """Chunks per shuffle window so that a window holds at most `buffer_size` images (but always >= 1 chunk)."""
    return max(1, int(buffer_size) // max(1, int(chunk_len)))


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + k) for each (s, k), vectorised: (sum(sizes),) int64."""
    total = int(sizes.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return np.repeat(starts - first, sizes) + np.arange(total, dtype=np.int64)


def epoch_plan(bounds: np.ndarray, seed: int, epoch: int, window_chunks: int, shuffle: bool = True) -> EpochPlan:
    """The order of one epoch. shuffle=False gives the identity order (windows still bound the memory)."""
    bounds = np.asarray(bounds, np.int64)
    n_chunks = int(bounds.shape[0] - 1)
    rng = np.random.default_rng(int(seed) + int(epoch))
    chunks = rng.permutation(n_chunks).astype(np.int64) if shuffle else np.arange(n_chunks, dtype=np.int64)
    sizes = bounds[chunks + 1] - bounds[chunks]
    cat = _ranges(bounds[chunks], sizes)  # (n,) samples in chunk-read order == buffer order within each window
    window_chunk = np.concatenate([np.arange(0, n_chunks, max(1, window_chunks)), [n_chunks]]).astype(np.int64)
    ends = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    window_pos = ends[window_chunk]
    rows = np.empty_like(cat)
    order = np.empty_like(cat)
    for w in range(window_chunk.shape[0] - 1):
        a, b = int(window_pos[w]), int(window_pos[w + 1])
        rows[a:b] = rng.permutation(b - a) if shuffle else np.arange(b - a)
        order[a:b] = cat[a + rows[a:b]]
    return EpochPlan(order=order, rows=rows, chunks=chunks, window_pos=window_pos, window_chunk=window_chunk,
                     bounds=bounds)


def split_phase(rank: int = 0, world_size: int = 1, worker: int = 0, num_workers: int = 1) -> tuple[int, int]:
    """(phase, stride): global batch b belongs to this (rank, worker) iff b % stride == phase.

    Batches go round-robin to ranks (rank r gets r, r+R, ...), and a rank's k-th batch to its worker k % W — exactly
    the order in which torch's DataLoader collects batches from its workers, so the batches a rank sees arrive in the
    global order whatever W is."""
    world_size, num_workers = max(1, world_size), max(1, num_workers)
    if not (0 <= rank < world_size and 0 <= worker < num_workers):
        raise ValueError(f"rank {rank}/{world_size}, worker {worker}/{num_workers} out of range")
    return rank + world_size * worker, world_size * num_workers


def owned_mask(coords: np.ndarray, batch_size: int, phase: int, stride: int) -> np.ndarray:
    """Which stream coordinates (>= 0) fall in batches owned by (phase, stride)."""
    coords = np.asarray(coords, np.int64)
    return (coords >= 0) & ((coords // batch_size) % stride == phase)


def advance(epoch: int, offset: int, k: int, n: int) -> tuple[int, int]:
    """(epoch, offset) after consuming k more samples of epochs that all have n samples."""
    if n <= 0:
        return epoch, offset
    total = offset + k
    return epoch + total // n, total % n
