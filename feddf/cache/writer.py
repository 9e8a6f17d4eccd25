"""Create, resume and finish feddf HDF5 caches: crash-safe (kill -9 anywhere), resumable, readable while written (SWMR).

    python -c "import numpy as np; from feddf.cache.writer import CacheWriter; \
w = CacheWriter('/tmp/demo.h5', n=8, channels=1, resolution=4, attrs={'kind': 'imported', 'source': 'demo'}, \
num_labels=2); w.append(np.zeros((8, 1, 4, 4), 'u1'), np.arange(8) % 2); w.finish(); print(w.committed)"

Use: `with CacheWriter(path, n=..., channels=..., resolution=..., attrs=..., num_labels=...) as w:` then
`w.append(images_u8 (B,C,R,R), labels (B,), targets=..., labeler_pred=..., labeler_conf=...)` any number of times and
`w.finish()`. `w.committed` says where to continue after a resume (append images `committed..n-1` in order).

How crash safety works (docs/cache-format.md has the contract):
- A fresh cache is built under a temp name and renamed into place, so `path` is never a half-made file.
- All datasets are allocated at creation (fixed shape, so HDF5 uses a fixed-array chunk index, which SWMR supports).
- A block = the images of one chunk. Commit: write images/labels/targets/labeler data + coverage, flush, and only then
  advance `/committed` and flush again. Readers and resumes never look past `/committed`.
- The file is written in SWMR mode, whose ordered metadata flushes keep the file readable at every instant, so the
  state a kill -9 freezes is readable. HDF5 then refuses to re-open it for writing ("file is already open for write")
  because of superblock status flags; we hold an OS lock (`.<name>.lock`, flock, dropped by the kernel when the process
  dies), and a writer that gets the lock knows the flags are stale and clears them (feddf.cache.superblock).
- On resume the coverage counts are recomputed from the committed per-image arrays, so a kill between "coverage
  written" and "committed advanced" can never double count.
- The file is opened straight into SWMR-write mode (a plain write open would make SWMR readers fail while it lasts);
  `complete` (root attribute, created False) is flipped in place once the last block is committed.
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from feddf.cache import format as fmt
from feddf.cache import pagecache, replace
from feddf.cache.superblock import clear_write_flags, is_hdf5
from feddf.errors import FeddfError

COMPRESSIONS = ("lzf", "gzip", "none")


def _compression_kwargs(compression: str | None) -> dict[str, Any]:
    if compression in (None, "none"):
        return {}
    if compression == "lzf":
        return {"compression": "lzf"}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4}
    raise FeddfError(f"unknown compression {compression!r}: use one of {', '.join(COMPRESSIONS)}")


def _attr_value(v: Any) -> Any:
    """h5py attribute values: dicts/lists/tuples become JSON strings, paths strings."""
    if isinstance(v, (dict, list, tuple)):
        from feddf.utils import to_jsonable

        return json.dumps(to_jsonable(v), sort_keys=True)
    if isinstance(v, Path):
        return str(v)
    return v


def open_h5_read(path: str | os.PathLike):
    """Open a cache read-only for a reader: SWMR mode (works while a writer runs and on caches whose writer was
    killed), falling back to a plain open for files whose superblock predates SWMR."""
    import h5py

    try:
        return h5py.File(path, "r", swmr=True, locking=False)
    except OSError:
        return h5py.File(path, "r", locking=False)


def probe_cache(path: str | os.PathLike) -> dict[str, Any] | None:
    """Root attributes of the feddf cache at `path`, or None when `path` is anything else (never modifies it)."""
    if not is_hdf5(path):
        return None
    try:
        with open_h5_read(path) as f:
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    except (OSError, KeyError, ValueError):
        return None
    return attrs if attrs.get("format") == fmt.FORMAT_NAME else None


class _WriterLock:
    """Exclusive flock on `.<name>.lock` next to the cache; the kernel drops it when the holder dies (kill -9)."""

    def __init__(self, path: Path):
        self.lock_path = path.with_name(f".{path.name}.lock")
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise FeddfError(f"cannot write next to {path}: {e.strerror}; choose a writable --out") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise FeddfError(f"{path} is being written by another process (pid {holder}); wait for it or "
                                 "choose another --out") from None
            try:  # the previous holder may have unlinked the lock file between our open and flock: retry then
                if os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.lock_path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


CHUNK_ALIGN = 1 << 20  # file alignment of uncompressed image chunks (see CacheWriter._fapl)


class CacheWriter:
    """Creates or resumes the cache at `path` and appends committed blocks; see the module docstring.

    attrs: provenance written as root attributes (generator/source, seed, ...; dicts/lists stored as JSON).
    identity: what must match for a resume (default: attrs without volatile keys); n, channels, resolution and the
    label/target/labeler sizes are always part of it. A mismatch raises FeddfError; force=True replaces any existing
    cache instead of resuming it: the new one is built beside it (feddf.cache.replace) and swapped in by finish(),
    so a failed or interrupted run leaves the old cache byte-identical. defer_swap=True (torchrun shards): finish()
    leaves the complete replacement staged in `self.staged` = (staged path, target) for the caller to swap. A file
    at `path` that is not a feddf cache is never touched.
    chunk: images per HDF5 chunk = per commit block (default: about 1 MiB of images, format.chunk_images).
    """

    def __init__(self, path: str | os.PathLike, *, n: int, channels: int, resolution: int,
                 attrs: dict[str, Any] | None = None, identity: dict[str, Any] | None = None,
                 num_labels: int = 0, num_targets: int = 0, labeler_classes: int = 0,
                 compression: str | None = "lzf", chunk: int | None = None, force: bool = False,
                 defer_swap: bool = False):
        if n <= 0:
            raise FeddfError(f"cache size n={n} must be positive")
        self.path = Path(path)
        self.n, self.channels, self.resolution = int(n), int(channels), int(resolution)
        self.num_labels, self.num_targets, self.labeler_classes = int(num_labels), int(num_targets), int(labeler_classes)
        self.chunk = int(min(chunk or fmt.chunk_images(channels, resolution), n))
        self._comp = _compression_kwargs(compression)
        self.compression = compression or "none"
        attrs = dict(attrs or {})
        base_identity = identity if identity is not None else {k: v for k, v in attrs.items() if k not in ("created",)}
        from feddf.utils import to_jsonable

        self.identity = json.loads(json.dumps(to_jsonable({
            **base_identity,
            "n": self.n, "channels": self.channels, "resolution": self.resolution, "num_labels": self.num_labels,
            "num_targets": self.num_targets, "labeler_classes": self.labeler_classes}), sort_keys=True, default=str))
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_n = 0
        self._f = None
        self.resumed = False
        self.complete = False
        self.target: Path | None = None  # with --force on an existing cache: the path the staged file replaces
        self.defer_swap = defer_swap
        self.staged: tuple[Path, Path] | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FeddfError(f"cannot create folder {self.path.parent}: {e.strerror}; choose a writable --out") from None
        self._lock = _WriterLock(self.path)
        try:
            self._remove_stale_temps()
            self._open(attrs, force)
        except BaseException:
            self._close_file()
            self._lock.release()
            raise

    # ---------------------------------------------------------------- opening
    def _remove_stale_temps(self) -> None:
        # temps of writers killed during creation; only writers holding our lock make them, so they are dead
        for p in self.path.parent.glob(f".{self.path.name}.tmp-*"):
            p.unlink(missing_ok=True)

    def _open(self, attrs: dict[str, Any], force: bool) -> None:
        if self.path.exists():
            if not self.path.is_file():
                raise FeddfError(f"{self.path} exists and is not a file; choose another --out")
            old = probe_cache(self.path)
            if old is None:
                raise FeddfError(f"{self.path} exists and is not a feddf cache; refusing to touch it: choose another "
                                 "--out or move that file away")
            old_identity = json.loads(old.get("identity", "{}"))
            if old_identity == self.identity and not force:
                self.resumed = True
                self._open_rw()
                return
            if not force:
                diff = sorted(k for k in set(old_identity) | set(self.identity)
                              if old_identity.get(k) != self.identity.get(k))
                shown = "; ".join(f"{k}: cache has {old_identity.get(k)!r}, now {self.identity.get(k)!r}"
                                  for k in diff[:4])
                raise FeddfError(f"{self.path} holds a cache made with a different config ({shown}); use --force to "
                                 "overwrite it or choose another --out")
            if self.target is None:  # --force: build the replacement beside the old cache, swap it in at finish()
                self.target, self.path = self.path, replace.staging_path(self.path)
                self._remove_stale_temps()
                return self._open(attrs, force=not replace.resumable(self.path, self.identity))
        self._create(attrs)
        self._open_rw()

    def _create(self, attrs: dict[str, Any]) -> None:
        import h5py

        from feddf import __version__
        from feddf.utils import versions

        n, c, r, k = self.n, self.channels, self.resolution, self.chunk
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            with h5py.File(tmp, "w", libver="latest", locking=False) as f:
                # (N, C, R, R) in chunks of k whole images; never h5py's auto-chunking (it splits images)
                f.create_dataset(fmt.IMAGES, shape=(n, c, r, r), dtype="u1", chunks=(k, c, r, r), fletcher32=True,
                                 **self._comp)
                per_image = [(fmt.LABELS, "i8", fmt.UNLABELED)]
                if self.num_targets:
                    per_image.append((fmt.TARGETS, "i8", fmt.UNLABELED))
                if self.labeler_classes:
                    per_image += [(fmt.LABELER_PRED, "i8", fmt.UNLABELED), (fmt.LABELER_CONF, "f4", 0.0)]
                for name, dtype, fill in per_image:
                    f.create_dataset(name, shape=(n,), dtype=dtype, chunks=(k,), fillvalue=fill, fletcher32=True,
                                     **self._comp)
                f.create_dataset(fmt.COMMITTED, data=np.int64(0))
                f.create_group(fmt.COVERAGE)
                for name, size, dtype in self._coverage_specs():
                    f.create_dataset(name, data=np.zeros(size, dtype))
                all_attrs = {
                    "format": fmt.FORMAT_NAME, "format_version": fmt.FORMAT_VERSION, "package_version": __version__,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "versions": versions(), "n_requested": n, "channels": c, "resolution": r,
                    "compression": self.compression, "chunk_images": k, **attrs,
                    "identity": json.dumps(self.identity, sort_keys=True), "complete": False}
                for key, v in all_attrs.items():
                    if v is not None:
                        f.attrs[key] = _attr_value(v)
            os.replace(tmp, self.path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise FeddfError(f"cannot write {self.path}: {e}; choose a writable --out") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _coverage_specs(self) -> list[tuple[str, int, str]]:
        specs = [(fmt.LABEL_COUNTS, self.num_labels, "i8")]
        if self.num_targets:
            specs.append((fmt.TARGET_COUNTS, self.num_targets, "i8"))
        if self.labeler_classes:
            specs += [(fmt.LABELER_COUNTS, self.labeler_classes, "i8"), (fmt.LABELER_CONF_SUM, self.labeler_classes, "f8")]
        return specs

    def _open_rw(self) -> None:
        import h5py

        clear_write_flags(self.path)  # we hold the lock: any write flags are left by a dead writer
        with open_h5_read(self.path) as f:  # a complete cache is only read, never opened for writing again
            self.complete = bool(f.attrs.get("complete", False))
            self.committed = int(f[fmt.COMMITTED][()])
            shape, chunks = f[fmt.IMAGES].shape, f[fmt.IMAGES].chunks
        if shape != (self.n, self.channels, self.resolution, self.resolution):
            raise FeddfError(f"{self.path}: images have shape {shape}, expected "
                             f"{(self.n, self.channels, self.resolution, self.resolution)}; use --force")
        self.chunk = int(chunks[0]) if chunks else self.chunk
        self._counts = {name: np.zeros(size, dtype) for name, size, dtype in self._coverage_specs()}
        if self.complete:
            return
        try:
            # open straight into SWMR-write mode (never plain write mode: a SWMR reader opening in that state fails
            # with "file is not already open for SWMR writing")
            fid = h5py.h5f.open(os.fsencode(self.path), h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE,
                                fapl=self._fapl())
            self._f = h5py.File(fid)
        except OSError as e:
            raise FeddfError(f"cannot open {self.path} for writing ({e}); use --force to start it again") from None
        if self.committed:
            self._recount()

    def _fapl(self):
        import h5py

        fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
        fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
        fapl.set_file_locking(False, True)  # our flock on .<name>.lock is the writer lock; readers use SWMR
        chunk_bytes = self.chunk * self.channels * self.resolution * self.resolution + 4  # + fletcher32
        if self.compression == "none" and chunk_bytes <= CHUNK_ALIGN:
            # Start every image chunk on a 1 MiB boundary (< 0.2% of space at ~1 MiB chunks; compressed chunks would
            # waste the space they saved, so only uncompressed caches). The kernel then caches each chunk in large
            # page-cache folios, and the stream's mapped reads fault and unmap faster: bench_stream ratio 0.67-0.70
            # -> 0.71-0.73 on the 2-core machine (before pagecache.recache). Objects under 64 KiB (labels, metadata) stay packed.
            fapl.set_alignment(64 << 10, CHUNK_ALIGN)
        return fapl

    def _recount(self) -> None:
        """Coverage from the committed per-image arrays (exact even if a kill hit between coverage and commit)."""
        f, e = self._f, self.committed
        self._counts = {name: np.zeros(size, dtype) for name, size, dtype in self._coverage_specs()}
        self._add_counts(f[fmt.LABELS][:e], f[fmt.TARGETS][:e] if self.num_targets else None,
                         f[fmt.LABELER_PRED][:e] if self.labeler_classes else None,
                         f[fmt.LABELER_CONF][:e] if self.labeler_classes else None)
        for name, v in self._counts.items():
            f[name][...] = v
        f.flush()

    # ---------------------------------------------------------------- writing
    def _add_counts(self, labels, targets, pred, conf) -> None:
        def count(x, size, weights=None):
            keep = x >= 0
            return np.bincount(x[keep], weights=None if weights is None else weights[keep], minlength=size)[:size]

        self._counts[fmt.LABEL_COUNTS] += count(labels, self.num_labels)
        if targets is not None:
            self._counts[fmt.TARGET_COUNTS] += count(targets, self.num_targets)
        if pred is not None:
            self._counts[fmt.LABELER_COUNTS] += count(pred, self.labeler_classes)
            self._counts[fmt.LABELER_CONF_SUM] += count(pred, self.labeler_classes, conf.astype(np.float64))

    def append(self, images, labels=None, targets=None, labeler_pred=None, labeler_conf=None) -> None:
        """Queue images (B, C, R, R) uint8 for indices committed+pending..; whole chunks are committed as they fill."""
        if self.complete:
            raise ValueError(f"{self.path} is already complete")
        images = np.ascontiguousarray(np.asarray(images))
        b = images.shape[0]
        if images.dtype != np.uint8 or images.shape[1:] != (self.channels, self.resolution, self.resolution):
            raise ValueError(f"images must be uint8 (B, {self.channels}, {self.resolution}, {self.resolution}), "
                             f"got {images.dtype} {images.shape}")
        if self.committed + self._pending_n + b > self.n:
            raise ValueError(f"appending {b} images would exceed n={self.n}")

        def vec(x, name, dtype, required, hi):
            if x is None:
                if required:
                    raise ValueError(f"{name} required for this cache")
                return None if dtype is None else np.full(b, fmt.UNLABELED, dtype)
            x = np.asarray(x).reshape(-1).astype(dtype or np.float32)
            if x.shape[0] != b:
                raise ValueError(f"{name}: {x.shape[0]} values for {b} images")
            if hi is not None and x.size and (x.min() < fmt.UNLABELED or x.max() >= hi):
                raise ValueError(f"{name} must lie in [-1, {hi}), got [{x.min()}, {x.max()}]")
            return x

        item = {fmt.IMAGES: images, fmt.LABELS: vec(labels, "labels", np.int64, False, self.num_labels)}
        if self.num_targets:
            item[fmt.TARGETS] = vec(targets, "targets", np.int64, False, self.num_targets)
        if self.labeler_classes:
            item[fmt.LABELER_PRED] = vec(labeler_pred, "labeler_pred", np.int64, True, self.labeler_classes)
            item[fmt.LABELER_CONF] = vec(labeler_conf, "labeler_conf", None, True, None)
        self._pending.append(item)
        self._pending_n += b
        while self._pending_n and self.committed + self._pending_n >= self._next_boundary():
            self._commit(self._next_boundary() - self.committed)

    def _next_boundary(self) -> int:
        return min((self.committed // self.chunk + 1) * self.chunk, self.n)

    def _commit(self, m: int) -> None:
        """Write the first m pending images at [committed, committed + m), then advance /committed."""
        block = {k: np.concatenate([p[k] for p in self._pending]) for k in self._pending[0]}
        rest = {k: v[m:] for k, v in block.items()}
        self._pending = [rest] if len(rest[fmt.IMAGES]) else []
        self._pending_n -= m
        s, e, f = self.committed, self.committed + m, self._f
        for name, v in block.items():
            f[name][s:e] = v[:m]
        self._add_counts(block[fmt.LABELS][:m], block[fmt.TARGETS][:m] if self.num_targets else None,
                         block[fmt.LABELER_PRED][:m] if self.labeler_classes else None,
                         block[fmt.LABELER_CONF][:m] if self.labeler_classes else None)
        for name, v in self._counts.items():
            f[name][...] = v
        f.flush()  # data + coverage reach the file before the commit counter moves
        f[fmt.COMMITTED][()] = e
        f.flush()
        self.committed = e

    def flush(self) -> None:
        """Commit whatever is pending now (also a partial chunk)."""
        if self._pending_n:
            self._commit(self._pending_n)

    @property
    def counts(self) -> dict[str, np.ndarray]:
        """Current coverage arrays by dataset name (copies)."""
        return {k: v.copy() for k, v in self._counts.items()}

    def finish(self) -> None:
        """Commit the rest, check all n images are there, mark the cache complete, swap a staged --force replacement
        in (feddf.cache.replace), close and unlock."""
        if not self.complete:
            self.flush()
            if self.committed != self.n:
                raise ValueError(f"finish() with {self.committed} of {self.n} images written")
            # an in-place change of an existing fixed-size attribute: allowed in SWMR-write mode
            self._f.attrs["complete"] = True
            self._f.flush()
            self._close_file()
            self.complete = True
            # Leave the finished file in the page cache in large folios (see pagecache: ~0.8 instead of ~0.70 of an
            # in-memory gather for the mapped fast path)
            pagecache.recache(self.path)
        if self.target is not None:  # the staged replacement is complete: now (and only now) it replaces the old
            if self.defer_swap:
                self.staged = (self.path, self.target)
            else:
                replace.swap(self.path, self.target)
                self.path, self.target = self.target, None
        self.close()

    def _close_file(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            finally:
                self._f = None

    def close(self) -> None:
        """Commit pending images (they are valid), close the file and drop the lock; the cache stays resumable."""
        try:
            if self._f is not None and not self.complete:
                self.flush()
        finally:
            self._close_file()
            self._lock.release()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

