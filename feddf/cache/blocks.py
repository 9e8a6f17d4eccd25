"""The block pipeline of CacheWriter: blocks encoded by a thread pool, stored and committed strictly in order.

    .venv/bin/python -m pytest -q tests/test_portable.py -k workers

A block (the images of one chunk) goes: _commit (the writer thread: gather the rows into whole-chunk arrays) -> the
pool (codec.Pipeline.encode: shuffle/deflate/fletcher32; zlib and numpy release the GIL) -> _retire, in block order,
on the writer thread again: write_direct_chunk every per-image array. Stored blocks are committed together
(coverage, flush, /committed, flush) once `commit_every` blocks (default: COMMIT_BYTES of images) or COMMIT_SECONDS
have gone by since the last commit, and always by flush()/finish(): those four HDF5 calls per ~1 MiB chunk had cost
~15% of an uncompressed `feddf gen` (docs/benchmarks.md, "Cache writer"). Every SYNC_BYTES of commits an
fdatasync starts on a helper thread (_background_sync). So chunk order, file layout and bytes do not depend on the
number of workers or on the timing, and the commit protocol is the writer's (feddf.cache.writer,
docs/cache-format.md). Any error is fatal (self.failed): nothing more is written and the cache is never marked
complete. A mixin: CacheWriter owns the state it uses (_f, _ds, _codecs, _counts, _pending, chunk, workers,
commit_every, committed, path; see CacheWriter.__init__ and _open_rw).
"""
from __future__ import annotations

import os
import time

import numpy as np

from feddf.cache import format as fmt
from feddf.errors import FeddfError


COMMIT_BYTES = 8 << 20  # images stored between two commits, at most (a kill -9 redoes at most this much)
COMMIT_SECONDS = 0.25  # ... or this long: a slow generator (BigGAN on CPU) still commits every chunk
SYNC_BYTES = 64 << 20  # committed images between two background fdatasyncs (see _background_sync)


class _Done:
    """What the pool returns, for the one-worker case: the job runs on the writer thread when its result is asked."""

    def __init__(self, job):
        self.job = job

    def result(self):
        return self.job()

    def cancel(self) -> bool:
        return True



class BlockPipeline:
    """Mixin of CacheWriter: see the module docstring."""

    @property
    def committed_queued(self) -> int:
        """Images handed to the pipeline (committed once their block is stored and a commit follows)."""
        return self._inflight[-1][1] if self._inflight else self._stored

    def _commit(self, m: int) -> None:
        """Queue the first m pending images, [committed_queued, + m), as one block; retire the oldest blocks while
        more than 2 per worker are in flight."""
        block = {k: np.concatenate([p[k] for p in self._pending]) for k in self._pending[0]}
        rest = {k: v[m:] for k, v in block.items()}
        self._pending = [rest] if len(rest[fmt.IMAGES]) else []
        self._pending_n -= m
        s = self.committed_queued
        e = s + m
        block = {k: v[:m] for k, v in block.items()}
        self._add_counts(block[fmt.LABELS], block.get(fmt.TARGETS), block.get(fmt.LABELER_PRED),
                         block.get(fmt.LABELER_CONF))
        counts = {name: v.copy() for name, v in self._counts.items()}
        direct = {name: self._whole_chunk(name, s, v) for name, v in block.items() if self._codecs.get(name)}
        self._partial_at = s // self.chunk * self.chunk if e % self.chunk else -1
        if direct and self._pool is None and self.workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="feddf-encode")
        job = (lambda: {name: self._codecs[name].encode(raw) for name, raw in direct.items()})
        fut = self._pool.submit(job) if self._pool is not None else _Done(job)
        self._inflight.append((s, e, fut, counts, {k: v for k, v in block.items() if k not in direct}))
        while len(self._inflight) > 2 * self.workers:
            self._retire()

    def _whole_chunk(self, name: str, s: int, rows: np.ndarray) -> np.ndarray:
        """The whole chunk holding rows [s, s + len(rows)) as one array: earlier rows of that chunk (a block after a
        flush() of a partial chunk, or after a resume) come from the kept buffer or the file (committed, so
        readable), later ones are the fill value (unwritten; also what pads the last, edge chunk)."""
        c0 = s // self.chunk * self.chunk
        if s == c0 and len(rows) == self.chunk:
            return np.ascontiguousarray(rows)
        ds = self._ds[name]
        buf = np.full((self.chunk,) + rows.shape[1:], ds.fillvalue, rows.dtype)
        if s > c0:
            # The writer's own partial chunk is kept: HDF5 2.0 fails to read back, while the file is still open, a chunk
            # stored raw with a filter masked by write_direct_chunk (other processes and later opens read it fine).
            kept = self._partial.get(name)
            buf[:s - c0] = kept[:s - c0] if kept is not None and self._partial_at == c0 else ds[c0:s]
        buf[s - c0:s - c0 + len(rows)] = rows
        if (s - c0) + len(rows) < self.chunk:
            self._partial[name] = buf
        return buf

    def _retire(self) -> None:
        """Store the oldest in-flight block; commit what is stored when a commit is due (see the module docstring)."""
        s, e, fut, counts, via_hdf5 = self._inflight[0]
        ds = self._ds
        try:
            encoded = fut.result()
            c0 = s // self.chunk * self.chunk
            for name, (mask, data) in encoded.items():
                ds[name].id.write_direct_chunk((c0, 0, 0, 0) if name == fmt.IMAGES else (c0,), data, mask)
            for name, v in via_hdf5.items():  # filters only h5py has (lzf): HDF5 encodes them on this thread
                ds[name][s:e] = v
        except BaseException as err:
            self._fail(err)
        self._inflight.popleft()
        self._stored, self._stored_counts = e, counts
        if e - self.committed >= self.commit_every * self.chunk or \
                time.monotonic() - self._committed_at >= COMMIT_SECONDS:
            self._commit_stored()

    def _commit_stored(self) -> None:
        """Commit every stored block: coverage, flush (data and coverage reach the file first), /committed, flush."""
        e = self._stored
        if e <= self.committed:
            return
        f, ds = self._f, self._ds
        try:
            for name, v in self._stored_counts.items():
                ds[name][...] = v
            f.flush()
            ds[fmt.COMMITTED][()] = e
            f.flush()
        except BaseException as err:
            self._fail(err)
        self.committed = e
        self._committed_at = time.monotonic()
        if (e - self._synced_at) * self._image_bytes >= SYNC_BYTES:
            self._background_sync()

    def _background_sync(self) -> None:
        """Start an fdatasync of the file on a helper thread (never two at once), so the disk writes the committed
        data while generation goes on and finish()'s fsync has little left: that fsync was ~12% of an uncompressed
        131 072-image `feddf gen` (0.17 of 1.4 s; docs/benchmarks.md, "Cache writer"). Durability is still
        promised only by finish(); an error of a background sync fails the writer at its next commit or finish."""
        if self._syncing is not None:
            if not self._syncing.done():
                return
            self._check_sync()
        if self._syncer is None:
            from concurrent.futures import ThreadPoolExecutor

            self._syncer = ThreadPoolExecutor(1, thread_name_prefix="feddf-sync")
        self._synced_at = self.committed
        self._syncing = self._syncer.submit(os.fdatasync, self._f.id.get_vfd_handle())

    def _check_sync(self) -> None:
        """Wait for the background sync, if any, and fail the writer with its error."""
        fut, self._syncing = self._syncing, None
        if fut is not None:
            try:
                fut.result()
            except OSError as err:
                self._fail(err)

    def _fail(self, err: BaseException) -> None:
        """A write (or encode) failed: stop the pipeline for good and raise one line (or re-raise Ctrl-C)."""
        self.failed = err
        for _, _, fut, _, _ in self._inflight:
            fut.cancel()
        self._inflight.clear()
        self._pending, self._pending_n = [], 0
        self._close_file()  # now, while we know why: HDF5 must not retry its flushes at interpreter exit
        if isinstance(err, OSError):
            import errno

            why = os.strerror(err.errno) if err.errno else str(err).splitlines()[0]  # HDF5's text is a paragraph
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                try:
                    st = os.statvfs(self.path.parent)
                    why += f", {st.f_bavail * st.f_frsize / 1e6:.1f} MB free"
                except OSError:
                    pass
                fix = "free some space and rerun the same command to resume it"
            else:
                fix = "fix that and rerun the same command (--force starts it again)"
            raise FeddfError(f"writing {self.path} failed after {self.committed} images ({why}): the cache is left "
                             f"incomplete; {fix}") from None
        raise err

    def _drain(self) -> None:
        while self._inflight:
            self._retire()
        self._commit_stored()

