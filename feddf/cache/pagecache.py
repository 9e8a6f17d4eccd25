"""Keep a finished cache in the kernel's page cache in large folios, which the mapped fast path streams fastest.

    .venv/bin/python -c "from feddf.cache.pagecache import resident_fraction as r; print(r('cache/fmnist.h5'))"

Why: the reader's fast path (source._Handle) gathers images straight from a mapping of the file, so its only cost
over an in-memory array is page faults and unmapping. Both depend on the size of the page-cache folios the kernel
used for the file, which depends on how the pages got there (measured on the 2-core machine, 200 000 images of
3x32x32, stream vs in-memory gather): ~0.8 after sequential reads, ~0.70 as a writer's chunk-sized writes left them,
~0.43 when the stream's own random-order faults brought a cold file in. So:
  * the first verified open of a finished cache (verify.ensure_verified, which reads every chunk for its checksums
    anyway) writes it out (fsync), drops its pages and reads it back front to back (`recache`): about 1 s per GB
    from disk, once per file, in the first `feddf train` that streams it. (Not at
    the end of every `feddf gen`: there it cost ~half the writer's time for uncompressed caches; docs/benchmarks.md);
  * the reader, when it first maps a finished file that is mostly not resident (after a reboot, or a cache copied
    in), reads it front to back before streaming (`warm`), instead of faulting it in at random: 0.8 instead of
    0.43 of in-memory.
Both only act on files that fit in half of the available memory (a larger file cannot stay resident anyway), and
neither changes a byte of the file: POSIX_FADV_DONTNEED drops clean cached pages only. FEDDF_PAGECACHE=off turns
both off (e.g. on a shared machine where a 1 GB read-back at the end of a job is unwelcome).
"""
from __future__ import annotations

import os

READ_BYTES = 4 << 20  # per sequential read: large enough for the kernel's readahead to ramp up to large folios


def mem_available() -> int:
    """MemAvailable from /proc/meminfo in bytes; 0 where unknown (then nothing is re-read)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def enabled() -> bool:
    return os.environ.get("FEDDF_PAGECACHE", "on").lower() not in ("off", "0", "no", "false")


def fits(size: int) -> bool:
    return enabled() and 0 < size <= mem_available() // 2


def resident_fraction(path: str | os.PathLike) -> float:
    """Fraction of the file's pages that are in the page cache, from mincore(2) over a mapping of it (mapping and
    asking fault nothing in; a probing read would start readahead). 1.0 for an empty file or where it cannot be asked."""
    import ctypes
    import ctypes.util
    import mmap

    import numpy as np

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mincore = libc.mincore
    except (OSError, AttributeError):
        return 1.0
    mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return 1.0
        m = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ)
    try:
        view = np.frombuffer(m, np.uint8)
        vec = np.zeros(-(-size // mmap.PAGESIZE), np.uint8)  # one byte per page; bit 0 = resident
        rc = mincore(view.ctypes.data, size, vec.ctypes.data)
        del view
        return float((vec & 1).mean()) if rc == 0 else 1.0
    finally:
        m.close()


def evict(path: str | os.PathLike) -> bool:
    """Write the file out and drop its clean pages from the page cache, as after a reboot (pages another process has
    mapped stay); False where the kernel has no posix_fadvise."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages cannot be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    finally:
        os.close(fd)


def read_through(path: str | os.PathLike) -> int:
    """Read the whole file front to back into one reused buffer; returns the bytes read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)  # a larger readahead window
        buf, off = bytearray(READ_BYTES), 0
        while n := os.preadv(fd, [buf], off):
            off += n
        return off
    finally:
        os.close(fd)


def warm(path: str | os.PathLike, min_resident: float = 0.5) -> bool:
    """Read the file sequentially when less than `min_resident` of it is in the page cache and it fits in memory;
    True when it did."""
    try:
        if not fits(os.stat(path).st_size) or resident_fraction(path) >= min_resident:
            return False
        read_through(path)
    except OSError:  # unreadable here: the reader reports it properly on its own
        return False
    return True


def recache(path: str | os.PathLike) -> bool:
    """A finished file: write it out, drop its clean pages, read it back sequentially; True when it did (only when
    it fits in memory, and only where the kernel has posix_fadvise)."""
    try:
        if not fits(os.stat(path).st_size) or not evict(path):
            return False
        read_through(path)
    except OSError:
        return False
    return True
