"""The torch-free engine behind CacheStream: chunk-aware shuffled, resumable uint8 batches of a cache as numpy.

    python -c "from feddf.cache.engine import ChunkStream as S; x, y = next(iter(S('cache/x.h5', 256))); print(x.shape)"

`ChunkStream` holds everything but the torch glue (see stream.py): the config, the resumable state, the epoch plans
(pure functions in shuffle.py) and `iter_numpy`, which reads each shuffle window's chunks and gathers batches out
of it. Iterating it yields `(images uint8 (B, C, R, R), labels int64 (B,))` numpy arrays. It imports no torch, so a
numpy/JAX consumer, or a process measuring the stream's own memory, does not pay torch's ~0.5 GB import.
"""
from __future__ import annotations

import time
import warnings
from bisect import bisect_right
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np

from feddf.cache import format as fmt
from feddf.cache.reader import check_compatible
from feddf.cache.source import ChunkSource
from feddf.cache.shuffle import EpochPlan, epoch_plan, owned_mask, window_chunks_for
from feddf.errors import FeddfError

@dataclass
class StreamConfig:
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    infinite: bool = False
    drop_last: bool = False
    buffer_size: int = 8192        # images in one shuffle window (resident memory ~ 1-2 windows of C*R*R bytes)
    follow: bool = False           # keep reading a cache that a writer is still filling (SWMR)
    follow_timeout: float = 60.0   # give up waiting for new commits after this many seconds
    poll_interval: float = 0.2
    label_key: str = fmt.LABELS    # "labels" or "targets"
    verify_checksums: bool = False  # True: HDF5 checks each chunk's fletcher32 while streaming (slower)
    rank: int = 0
    world_size: int = 1


class _Window:
    """One shuffle window, in epoch order: positions [start, start + m) of its epoch. Either the images themselves
    (HDF5 path) or, on the fast path, each position's (shard, file offset) to gather from the mapped file."""

    def __init__(self, labels: np.ndarray, start: int, end_coord: int, images: np.ndarray | None = None,
                 src: tuple[np.ndarray, np.ndarray] | None = None, chunks=None):
        self.labels, self.start, self.end_coord = labels, start, end_coord
        self.images, self.src, self.chunks = images, src, chunks

    def take(self, source: ChunkSource, a: int, b: int, copy: bool) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of window positions [a, b) (epoch coordinates); copy=True never returns views."""
        i, j = a - self.start, b - self.start
        labels = self.labels[i:j].copy() if copy else self.labels[i:j]
        if self.images is not None:
            return (self.images[i:j].copy() if copy else self.images[i:j]), labels
        return source.gather(self.src[0][i:j], self.src[1][i:j]), labels  # a gather is always a fresh array


class ChunkStream:
    """Batches of a cache in chunk-aware shuffled order, as numpy; see the module docstring."""

    def __init__(self, path, batch_size: int, seed: int = 0, shuffle: bool = True, infinite: bool = False, *,
                 channels: int | None = None, resolution: int | None = None, **kwargs):
        self.config = StreamConfig(batch_size=batch_size, seed=seed, shuffle=shuffle, infinite=infinite, **kwargs)
        c = self.config
        if c.batch_size < 1 or c.buffer_size < 1:
            raise FeddfError(f"batch_size ({c.batch_size}) and buffer_size ({c.buffer_size}) must be >= 1")
        if not 0 <= c.rank < max(1, c.world_size):
            raise FeddfError(f"rank {c.rank} is outside 0..{c.world_size - 1}")
        if c.follow and c.world_size > 1:
            raise FeddfError("follow=True cannot be split across ranks (each would see a different committed count): "
                             "use world_size=1")
        self.source = ChunkSource(path, follow=c.follow, verify_checksums=c.verify_checksums, label_key=c.label_key)
        check_compatible(self.source.infos[0], channels, resolution, consumer="this stream's consumer")
        if self.source.n == 0 and not c.follow:
            raise FeddfError(f"{self.source.paths[0]} has no committed images yet: wait for `feddf gen`, or pass "
                             "follow=True to stream it while it is written")
        self.window_chunks = window_chunks_for(c.buffer_size, self.source.chunk_len)
        self._at: tuple[int, int] = (0, 0)  # (epoch, offset) of the next sample; see _pos
        self._pending: tuple[tuple[int, int], int] | None = None  # (start, k): _at = start + k, not yet resolved
        self._lengths: dict[int, int] = {}  # epoch -> its n, when it differs from source.n (resume, follow)
        self._plans: dict[int, EpochPlan] = {}
        self._fast: tuple | None = None  # (plan, its _epoch_offsets) of the epoch being read

    # ---- state ---------------------------------------------------------------------------------------------
    def _n_of(self, epoch: int) -> int:
        return self._lengths.get(epoch, self.source.n)

    def _resolve(self, epoch: int, offset: int, k: int) -> tuple[int, int]:
        """(epoch, offset) after k more samples from (epoch, offset)."""
        offset += k
        while self._n_of(epoch) > 0 and offset >= self._n_of(epoch):
            offset -= self._n_of(epoch)
            epoch += 1
        return epoch, offset

    @property
    def _pos(self) -> tuple[int, int]:
        """(epoch, offset) of the next sample. Batches only record (start, k) (see _after_batch); resolving it here,
        when someone asks, keeps the per-batch cost of an exact state at a tuple store."""
        if self._pending is not None:
            start, k = self._pending
            self._pending, self._at = None, self._resolve(*start, k)
        return self._at

    def _set_pos(self, epoch: int, offset: int) -> None:
        self._pending, self._at = None, (int(epoch), int(offset))

    def state_dict(self) -> dict:
        c = self.config
        epoch, offset = self._pos
        return {"epoch": epoch, "offset": offset, "epoch_n": self._n_of(epoch), "seed": c.seed,
                "shuffle": c.shuffle, "buffer_size": c.buffer_size, "batch_size": c.batch_size,
                "world_size": c.world_size, "paths": list(self.source.paths)}

    def load_state_dict(self, state: dict) -> None:
        c = self.config
        for key in ("seed", "shuffle", "buffer_size"):
            if key in state and state[key] != getattr(c, key):
                raise FeddfError(f"stream state was saved with {key}={state[key]!r} but this stream has "
                                 f"{key}={getattr(c, key)!r}: resume with the same setting")
        epoch, offset = int(state["epoch"]), int(state["offset"])
        n = int(state.get("epoch_n", self.source.n))
        if n > self.source.n and not c.follow:
            raise FeddfError(f"stream state covers {n} images but {self.source.paths[0]} has only "
                             f"{self.source.n} committed: resume on the same cache")
        if not 0 <= offset <= n:
            raise FeddfError(f"stream state offset {offset} is outside 0..{n}")
        self._set_pos(epoch, offset)
        self._lengths = {epoch: n} if n != self.source.n else {}
        self._plans.clear()

    def set_epoch(self, epoch: int) -> None:
        self._set_pos(epoch, 0)

    def num_batches(self) -> int:
        """Batches left in the current epoch for this rank (finite mode)."""
        c = self.config
        epoch, offset = self._pos
        left = self._n_of(epoch) - offset
        total = left // c.batch_size if c.drop_last else -(-left // c.batch_size)
        return len(range(c.rank, total, c.world_size))

    # ---- planning and reading ------------------------------------------------------------------------------
    def _plan(self, epoch: int) -> EpochPlan:
        if epoch not in self._plans:
            from feddf.cache.shuffle import chunk_bounds

            n = self._n_of(epoch)
            if len(self.source.paths) > 1 and n != self.source.n:
                raise FeddfError("resuming a sharded stream needs the same committed counts as when it was saved")
            bounds = self.source.bounds() if n == self.source.n else chunk_bounds(n, self.source.chunk_len)
            self._plans = {e: p for e, p in self._plans.items() if e >= epoch - 1}
            self._plans[epoch] = epoch_plan(bounds, self.config.seed, epoch, self.window_chunks, self.config.shuffle)
        return self._plans[epoch]

    def _plan_view(self, epoch: int) -> tuple[EpochPlan, int, list[int]]:
        """The plan plus what the per-batch loop reads as plain Python ints (numpy scalars cost ~10x more)."""
        plan = self._plan(epoch)
        return plan, plan.n, plan.window_pos.tolist()

    def _epoch_offsets(self, plan: EpochPlan):
        """Fast path, whole epoch at once: (shard (n,), file offset (n,)) of the image at every epoch position, and
        (shard, offset) of every chunk in read order; None unless every chunk is a plain chunk of a finished file.
        One vectorised pass per epoch instead of one per window (the per-window numpy calls cost ~3% of a stream).
        Offset of position p = its chunk's offset + (its row in the epoch's chunk-read order - the chunk's first
        row) * image bytes, where that row is window_pos[w] + rows[p]."""
        if self.source.follow:
            return None
        if self._fast is not None and self._fast[0] is plan:
            return self._fast[1]
        raw = self.source.raw_window(plan.chunks, plan.bounds)
        out = None
        if raw is not None:
            ib = self.source.image_bytes
            sizes = plan.bounds[plan.chunks + 1] - plan.bounds[plan.chunks]
            first = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
            g = plan.rows + np.repeat(plan.window_pos[:-1], np.diff(plan.window_pos))  # (n,) row in read order
            out = (np.repeat(raw[0], sizes)[g], np.repeat(raw[1] - first * ib, sizes)[g] + g * ib, raw)
        self._fast = (plan, out)
        return out

    def _load(self, plan: EpochPlan, w: int, ep_start: int, phase: int, stride: int) -> _Window:
        """Prepare window w, shuffled: the chunks holding samples of batches this (rank, worker) owns."""
        a, b = int(plan.window_pos[w]), int(plan.window_pos[w + 1])
        fast = self._epoch_offsets(plan)
        if fast is not None:
            c0, c1 = int(plan.window_chunk[w]), int(plan.window_chunk[w + 1])
            return _Window(self.source.labels_of(plan.order[a:b]), a, ep_start + b,
                           src=(fast[0][a:b], fast[1][a:b]), chunks=(fast[2][0][c0:c1], fast[2][1][c0:c1]))
        ids, first = plan.window_slots(w)
        rows = plan.rows[a:b]
        sizes = plan.bounds[ids + 1] - plan.bounds[ids]
        need = np.ones(ids.shape[0], bool)
        if stride > 1 or ep_start + a < 0:
            mask = owned_mask(ep_start + np.arange(a, b), self.config.batch_size, phase, stride)
            need[:] = False
            need[np.unique(np.searchsorted(first, rows[mask], side="right") - 1)] = True
        labels = self.source.labels_of(plan.order[a:b])
        raw = self.source.raw_window(ids[need], plan.bounds)
        if raw is not None:
            # fast path: file offset of each position's image = its chunk's offset + (row - chunk's first row) * bytes
            ib = self.source.image_bytes
            chunk_at = np.zeros(ids.shape[0], np.int64)
            chunk_at[need] = raw[1]
            shard = np.zeros(ids.shape[0], np.int64)
            shard[need] = raw[0]
            row_base = np.repeat(chunk_at - first * ib, sizes)  # (window rows,); skipped chunks' rows never taken
            return _Window(labels, a, ep_start + b, src=(np.repeat(shard, sizes)[rows], row_base[rows] + rows * ib),
                           chunks=raw)
        pos_of_row = np.empty(b - a, np.int64)
        pos_of_row[rows] = np.arange(b - a)  # buffer row -> window position (rows is a permutation)
        # A fresh array per window: batches are views of it, so it must not be reused while a consumer holds one.
        out = np.empty((b - a, self.source.channels, self.source.resolution, self.source.resolution), np.uint8)
        self.source.read_window(ids[need], first[need], plan.bounds, pos_of_row, out)
        return _Window(labels, a, ep_start + b, images=out)

    def _drop(self, win: _Window) -> None:
        if win.chunks is not None:
            self.source.release(win.chunks)

    def _next_epoch_n(self, epoch: int) -> int:
        """Follow mode: the committed count when an epoch starts (waits while the cache is empty)."""
        deadline = time.monotonic() + self.config.follow_timeout
        n = self.source.refresh()
        while n == 0 and time.monotonic() < deadline:
            time.sleep(self.config.poll_interval)
            n = self.source.refresh()
        if n == 0:
            raise FeddfError(f"{self.source.paths[0]} stayed empty for {self.config.follow_timeout:.0f} s: "
                             "is `feddf gen` running?")
        self._lengths[epoch] = n
        return n

    def _grow(self, epoch: int, have: int) -> bool:
        """Follow mode, unshuffled: wait for more committed images than `have`; True if the epoch grew."""
        deadline = time.monotonic() + self.config.follow_timeout
        while True:
            n = self.source.refresh()
            if n > have:
                self._lengths[epoch] = n
                self._plans.pop(epoch, None)
                return True
            if self.source.is_full():
                return False
            if time.monotonic() >= deadline:
                warnings.warn(f"{self.source.paths[0]} stopped growing at {n} images for "
                              f"{self.config.follow_timeout:.0f} s; ending the follow", stacklevel=2)
                return False
            time.sleep(self.config.poll_interval)

    def iter_numpy(self, phase: int = 0, stride: int = 1, copy: bool = False
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """The engine: yields (images uint8 (B,C,R,R), labels int64 (B,), global batch index) for batches
        b = phase, phase + stride, ... counted from the current state; does not change the state.

        Fast-path batches are fresh arrays (one gather from the mapped file); HDF5-path batches are views of their
        window's array unless they straddle two windows or copy=True (DataLoader workers copy, so that sending a
        batch to the main process does not ship the whole window)."""
        c = self.config
        B = c.batch_size
        ep, ep_start = self._pos
        ep_start = -ep_start  # stream coordinate 0 = the current state
        if c.follow and ep not in self._lengths:
            self._next_epoch_n(ep)
        plan, n_ep, wpos = self._plan_view(ep)
        windows: dict[tuple[int, int], _Window] = {}
        b = phase
        try:
            while True:
                lo, hi = b * B, (b + 1) * B
                pieces, x, ended = [], lo, False
                while x < hi and not ended:
                    while x >= ep_start + n_ep:
                        if c.follow and not c.shuffle and self._grow(ep, n_ep):
                            plan, n_ep, wpos = self._plan_view(ep)
                            for key in [k for k in windows if k[0] == ep]:  # the tail chunk grew: re-read it
                                self._drop(windows.pop(key))
                            continue
                        if not c.infinite:
                            ended = True
                            break
                        ep_start, ep = ep_start + n_ep, ep + 1
                        if c.follow:
                            self._next_epoch_n(ep)
                        plan, n_ep, wpos = self._plan_view(ep)
                    if ended:
                        break
                    p, q = x - ep_start, min(hi, ep_start + n_ep) - ep_start
                    while p < q:
                        w = bisect_right(wpos, p) - 1
                        r = min(q, wpos[w + 1])
                        if (ep, w) not in windows:
                            for key in [k for k, v in windows.items() if v.end_coord <= ep_start + p]:
                                self._drop(windows.pop(key))
                            windows[(ep, w)] = self._load(plan, w, ep_start, phase, stride)
                        pieces.append(windows[(ep, w)].take(self.source, p, r, copy))
                        p = r
                    x = ep_start + q
                if not pieces or (ended and c.drop_last and sum(len(p[1]) for p in pieces) < B):
                    return
                if len(pieces) == 1:
                    imgs, labs = pieces[0]
                else:
                    imgs, labs = np.concatenate([p[0] for p in pieces]), np.concatenate([p[1] for p in pieces])
                yield imgs, labs, b
                if ended:
                    return
                b += stride
        finally:
            for win in windows.values():
                self._drop(win)
            windows.clear()
            if c.follow:  # an SWMR handle caches the writer's metadata; the next open must see the final file
                self.source.close()

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """All batches from the current state, keeping state_dict() current (one process; see CacheStream for
        DataLoader workers)."""
        start = self._pos
        for imgs, labs, b in self.iter_numpy():
            self._after_batch(start, b, len(labs))
            yield imgs, labs
        self._after_epoch(start)

    def _after_batch(self, start: tuple[int, int], b: int, size: int) -> None:
        """State after global batch b: the end of this round of ranks (all ranks are assumed in lock step)."""
        c = self.config
        self._pending = (start, (b - c.rank + c.world_size - 1) * c.batch_size + size)

    def _after_epoch(self, start: tuple[int, int]) -> None:
        if not self.config.infinite:  # finite: the epoch is done (incl. a dropped tail) -> next epoch
            self._set_pos(start[0] + 1, 0)

    def close(self) -> None:
        self.source.close()

    def __getstate__(self):
        return {**self.__dict__, "_plans": {}, "_fast": None}

    def describe(self) -> dict:
        return {"config": asdict(self.config), "n": self.source.n, "paths": self.source.paths,
                "window_chunks": self.window_chunks, "chunk_len": self.source.chunk_len}
