"""ChunkSource: one cache, or the shards of one, read a whole HDF5 chunk at a time, by a mapped fast path where the
chunks are stored uncompressed. The engine (feddf.cache.engine) streams from it.

    python -c "from feddf.cache.source import ChunkSource; s = ChunkSource('cache/x.h5'); print(s.n, s.bounds[:3])"
"""
from __future__ import annotations

import os

import numpy as np

from feddf.cache import format as fmt
from feddf.cache import pagecache
from feddf.cache.reader import open_cache, open_h5, shard_paths
from feddf.cache.verify import chunk_index, ensure_verified, file_identity
from feddf.errors import FeddfError


class _Handle:
    """One open file of a ChunkSource, in the process that opened it."""

    def __init__(self, path: str, label_key: str, trusted: dict | None):
        self.f, self.live = open_h5(path)
        self.images, self.labels = self.f[fmt.IMAGES], self.f[label_key]
        # The mapped fast path skips HDF5's checksum test, so it only serves a finished file that passed
        # verify.ensure_verified and is still that same file (identity from the parent; `trusted` is None when
        # checksums are checked while streaming, or for a live file). Everything else goes through HDF5.
        self.raw_ok = (trusted is not None and not self.live and not self.images.is_virtual
                       and self.images.chunks is not None
                       and tuple(self.images.chunks[1:]) == tuple(self.images.shape[1:])
                       and self.f.userblock_size == 0 and file_identity(path) == trusted)
        self.path = path
        self.chunk0 = int(self.images.chunks[0]) if self.images.chunks else 0  # h5py's .chunks is a slow property
        self._map = None  # (mmap, 2-D byte view) of the whole file, made on first raw access
        self._warmed = False  # pagecache.warm checked (once per handle)
        self._rows = None
        self._table: np.ndarray | None = None  # file offset of plain chunks by chunk number (see chunk_table)

    def mapped_to(self, end: int) -> bool:
        """Make sure bytes [0, end) of the file are mapped; False when the file is shorter (truncated: the caller
        then reads through HDF5, which reports it)."""
        if self._map is None or end > len(self._map):
            self._remap()
        return end <= len(self._map)

    @property
    def image_bytes(self) -> int:
        c, r = self.images.shape[1], self.images.shape[2]
        return c * r * r

    def _remap(self) -> None:
        import mmap

        from numpy.lib.stride_tricks import as_strided

        self.close_map()
        if not self.live and not self._warmed:  # a cold finished file: read it in sequentially, not by random faults
            self._warmed = True
            pagecache.warm(self.path)
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            self._map = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ)
        flat = np.frombuffer(self._map, np.uint8)
        ib = self.image_bytes
        # Every byte offset as the start of one image-sized row: rows[offsets] gathers images by file offset.
        self._rows = as_strided(flat, shape=(max(0, size - ib + 1), ib), strides=(1, 1), writeable=False)

    def gather(self, offsets: np.ndarray) -> np.ndarray:
        """Images at these file offsets, (k, C*R*R) uint8, copied out of the page cache in one fancy index."""
        return self._rows[offsets]

    def chunk_table(self) -> np.ndarray | None:
        """Verified finished files: file offset of every plain chunk by chunk number (-1: compressed or unallocated),
        from one H5Dchunk_iter pass (a finished file never moves a chunk); None where there is no raw access."""
        if not self.raw_ok:
            return None
        if self._table is None:
            offsets, plain = chunk_index(self.images)
            self._table = np.where(plain, offsets, -1)
        return self._table

    def release(self, offsets: np.ndarray, count: int) -> None:
        """Drop the mapped pages of chunks at `offsets` from this process (they stay in the page cache): keeps the
        RSS of a long stream at one or two windows. One madvise over the span of the chunks, not one per chunk:
        a window's chunks are scattered over the file anyway, and at release time the only mapped pages are those
        of the windows being released (the caller releases before it touches the next window), so the span costs a
        page-table walk and no refaults. (Batching several windows per call was measured: no faster, since the
        cost is per unmapped page.)"""
        import mmap

        if self._map is None or not offsets.size:
            return
        a = int(offsets.min())
        a -= a % mmap.PAGESIZE
        b = min(len(self._map), int(offsets.max()) + count * self.image_bytes)
        if b > a:
            self._map.madvise(mmap.MADV_DONTNEED, a, b - a)

    def close_map(self) -> None:
        self._rows = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a batch still views it: let garbage collection unmap it
                pass
        self._map = None

    def close(self) -> None:
        self.close_map()
        self.f.close()


class ChunkSource:
    """One cache, or several shards of one, as a single index space [0, n) read a whole HDF5 chunk at a time.

    `n` is a snapshot of the committed counts taken here (in the parent process), so every DataLoader worker and
    rank agrees on it even while a writer appends; only `refresh()` (follow mode, one file) moves it. Handles are
    opened lazily per process and dropped on pickling, so fork and spawn workers both work.

    Fast path: a chunk stored uncompressed (no compression filter, or lzf/gzip skipped it because it could not shrink
    it) is the images back to back followed by a 4-byte fletcher32 checksum. Its address comes from HDF5
    (H5Dchunk_iter / get_chunk_info_by_coord), the file is memory-mapped read-only, and a batch is one numpy gather
    straight out of the page cache: one copy per image, like gathering from an in-memory array (HDF5's filter
    pipeline costs three copies, and read + gather two). A window's pages are dropped from the process
    (MADV_DONTNEED) once consumed, so the RSS stays at about one window. That skips HDF5's checksum test, so a file
    is only mapped once it passed feddf.cache.verify.ensure_verified (every chunk it would map checked through HDF5
    once per file identity, recorded beside the cache; a corrupt file raises FeddfError here). Live files (a writer
    holds them) and `verify_checksums=True` go through HDF5 for every chunk; so do compressed chunks."""

    def __init__(self, paths, follow: bool = False, verify_checksums: bool = False, label_key: str = fmt.LABELS):
        self.paths = [str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
        if not self.paths:
            raise FeddfError("no cache files given: pass a cache path (or a list of shard paths)")
        if follow and len(self.paths) > 1:
            raise FeddfError("follow=True reads one cache that a writer is still filling; pass a single path")
        self.infos = []
        expanded = []
        for p in self.paths:
            info = open_cache(p)
            shards = shard_paths(p, info.attrs) if info.virtual and not follow else []
            sinfos = [open_cache(s) for s in shards] if shards and all(s.is_file() for s in shards) else []
            if sinfos and sum(i.n for i in sinfos) == info.n:
                # a multi-process gen cache: read its shard files directly (whole chunks, fast path) rather than
                # through the virtual dataset; they tile 0..n in order (feddf.cache.writer.write_virtual_cache)
                expanded += [str(s) for s in shards]
                self.infos += sinfos
            else:
                expanded.append(p)
                self.infos.append(info)
        self.paths = expanded
        first = self.infos[0]
        for info in self.infos[1:]:
            if info.image_shape != first.image_shape:
                raise FeddfError(f"shards disagree on image shape: {first.path} has {first.image_shape}, "
                                 f"{info.path} has {info.image_shape}; stream shards of one cache only")
        if label_key == fmt.TARGETS and not all(i.has_targets for i in self.infos):
            raise FeddfError(f"label_key 'targets' but {self.paths[0]} has no /targets: use label_key='labels'")
        self.label_key = label_key
        self.follow, self.verify_checksums = follow, verify_checksums
        self.channels, self.resolution = first.channels, first.resolution
        self.image_bytes = first.channels * first.resolution * first.resolution
        self.chunk_len = max(i.chunk_len for i in self.infos)
        self.ns = [i.n for i in self.infos]
        # file identity of each verified finished file (None: HDF5 path only); checked here, in the parent, so
        # DataLoader workers and ranks never repeat it. Also with verify_checksums: HDF5's checksums do not catch
        # chunks that were never written (read as fill values), ensure_verified does.
        checked = [None if i.live or i.virtual or i.n == 0 else ensure_verified(p) for p, i in zip(self.paths,
                                                                                                  self.infos)]
        self.trusted = [None if verify_checksums or follow else t for t in checked]
        self._h: list[_Handle] | None = None
        self._pid = None
        self._label_cache: dict[int, np.ndarray] = {}

    @property
    def n(self) -> int:
        return int(sum(self.ns))

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.ns)]).astype(np.int64)

    def bounds(self) -> np.ndarray:
        from feddf.cache.shuffle import chunk_bounds, concat_bounds

        offs = self.offsets
        return concat_bounds([chunk_bounds(n, info.chunk_len, int(o))
                              for n, info, o in zip(self.ns, self.infos, offs)])

    def _handles(self) -> list[_Handle]:
        if self._h is None or self._pid != os.getpid():
            self._h = [_Handle(p, self.label_key, t) for p, t in zip(self.paths, self.trusted)]
            self._pid = os.getpid()
            self._label_cache = {}
        return self._h

    def refresh(self) -> int:
        """Follow mode: re-read /committed (SWMR refresh) and return the new total n."""
        h = self._handles()[0]
        committed = h.f[fmt.COMMITTED]
        if h.live:
            committed.refresh()
            h.images.refresh()
            h.labels.refresh()
        self.ns[0] = max(self.ns[0], int(committed[()]))
        return self.n

    def is_full(self) -> bool:
        """True once every allocated image is committed (or the writer marked the cache complete)."""
        return self.ns[0] >= self.infos[0].capacity or bool(self._handles()[0].f.attrs.get("complete", False))

    def raw_window(self, ids: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(shard, file offset of its first image) per chunk when every chunk can be gathered straight from a
        verified, mapped finished file, else None (the window then goes through read_window)."""
        hs = self._handles()
        offs = self.offsets
        starts, counts = bounds[ids], bounds[ids + 1] - bounds[ids]
        shard_of = np.searchsorted(offs, starts, side="right") - 1
        at = np.empty(ids.shape[0], np.int64)
        for k in np.unique(shard_of).tolist():
            sel = np.flatnonzero(shard_of == k)
            h, local = hs[k], starts[sel] - offs[k]
            table = h.chunk_table()
            if table is None or (local % h.chunk0).any():  # not verified or live: HDF5 path
                return None
            o = table[local // h.chunk0]  # vectorised lookup of every chunk of the window
            if (o < 0).any() or not h.mapped_to(int((o + counts[sel] * self.image_bytes).max())):
                return None
            at[sel] = o
        return shard_of, at

    def gather(self, shard: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Images (k, C, R, R) uint8 at per-sample (shard, file offset) pairs."""
        hs = self._handles()
        shape = (offsets.shape[0], self.channels, self.resolution, self.resolution)
        if len(hs) == 1 or (shard.size and (shard == shard[0]).all()):
            return hs[int(shard[0]) if shard.size else 0].gather(offsets).reshape(shape)
        out = np.empty(shape, np.uint8)
        for k in np.unique(shard).tolist():
            sel = shard == k
            out[sel] = hs[k].gather(offsets[sel]).reshape((-1,) + shape[1:])
        return out

    def release(self, raw: tuple[np.ndarray, np.ndarray]) -> None:
        """Unmap the pages of a consumed fast-path window (raw: what raw_window returned)."""
        hs = self._handles()
        for k in np.unique(raw[0]).tolist():
            sel = raw[0] == k
            hs[k].release(raw[1][sel], self.chunk_len)

    def read_window(self, ids: np.ndarray, first: np.ndarray, bounds: np.ndarray, pos_of_row: np.ndarray,
                    out: np.ndarray) -> None:
        """Through HDF5 (decompression, fletcher32 checked): chunks `ids`, whose window-buffer rows start at
        `first`, with buffer row r stored at out[pos_of_row[r]] (out: uint8 (m, C, R, R) in window position order)."""
        import time

        hs = self._handles()
        offs = self.offsets
        shard_of = np.searchsorted(offs, bounds[ids], side="right") - 1
        for c, row, shard in zip(ids.tolist(), first.tolist(), shard_of.tolist()):
            h = hs[shard]
            s, e = int(bounds[c] - offs[shard]), int(bounds[c + 1] - offs[shard])
            buf = np.empty((e - s,) + out.shape[1:], np.uint8)
            for attempt in range(4):
                try:
                    h.images.read_direct(buf, np.s_[s:e])
                    break
                except (OSError, ValueError) as err:
                    if h.live and attempt < 3:  # a chunk being rewritten by the SWMR writer: refresh and retry
                        time.sleep(0.05 * (attempt + 1))
                        h.images.refresh()
                        continue
                    raise FeddfError(f"cannot read images {s}:{e} of {self.paths[shard]} ({err}): the file is "
                                     f"corrupt or truncated; run `feddf cache verify {self.paths[shard]}`") from None
            out[pos_of_row[row:row + e - s]] = buf

    def labels_of(self, samples: np.ndarray) -> np.ndarray:
        """int64 labels of global sample indices."""
        offs = self.offsets
        if len(self.paths) == 1:
            return self._labels(0, int(samples.max()) + 1 if samples.size else 0)[samples]
        shard_of = np.searchsorted(offs, samples, side="right") - 1
        out = np.empty(samples.shape, np.int64)
        for k in np.unique(shard_of).tolist():
            sel = shard_of == k
            local = samples[sel] - offs[k]
            out[sel] = self._labels(k, int(local.max()) + 1)[local]
        return out

    def _labels(self, shard: int, upto: int) -> np.ndarray:
        """The shard's committed labels, read in one call and kept (8 bytes per image, ~0.3% of a 32 px cache):
        per-chunk label reads through HDF5 cost as much as the raw image reads."""
        self._handles()
        have = self._label_cache.get(shard)
        if have is None or have.shape[0] < upto:
            h = self._h[shard]
            if h.live:
                h.labels.refresh()
            have = h.labels[: max(upto, self.ns[shard])].astype(np.int64, copy=False)
            if have.shape[0] < upto:
                raise FeddfError(f"{self.paths[shard]}: /{self.label_key} has {have.shape[0]} entries, need {upto}")
            self._label_cache[shard] = have
        return have

    def close(self) -> None:
        if self._h is not None and self._pid == os.getpid():
            for h in self._h:
                h.close()
        self._h = None
        self._label_cache = {}

    def __getstate__(self):
        return {**self.__dict__, "_h": None, "_pid": None, "_label_cache": {}}
