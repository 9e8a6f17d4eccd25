"""Clear the stale "open for write" flags that a killed HDF5 writer leaves in the superblock (what `h5clear -s -m` does).

    python -c "from feddf.cache.superblock import read_superblock; print(read_superblock('cache/x.h5'))"

Why: a file opened for writing with superblock v3 (libver v110 or later, needed for SWMR) gets status flags set in its
superblock; they are cleared on a clean close. After kill -9 they survive, and every later non-SWMR open fails with
"file is already open for write (may use <h5clear file> to clear file consistency flags)". `locking=False` and
HDF5_USE_FILE_LOCKING do not help (the check is on the flags, not on OS locks), and h5py exposes no way to set the
library's private "clear_status_flags" property. So, exactly like h5clear, we clear the flags ourselves — only while
holding the cache's writer lock (feddf.cache.writer), i.e. when no live writer can own them.

Superblock v2/v3 layout (HDF5 file format spec, section II.A), offsets for 8-byte addresses:
    0  signature "\\x89HDF\\r\\n\\x1a\\n" (8)   8 version (1)   9 size of offsets (1)   10 size of lengths (1)
    11 file consistency flags (1)   12 base address (8)   20 superblock extension address (8)
    28 end-of-file address (8)   36 root group object header address (8)   44 checksum (4, Jenkins lookup3)
We also raise the stored end-of-file address to the real file size (h5clear --increment=0): a SWMR writer killed
between flushes may have written chunks/metadata past the stored EOF, and a later writer must allocate new space after
them, never on top of them. The stored checksum is verified before anything is written, so a file we do not fully
understand is left untouched.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

SIGNATURE = b"\x89HDF\r\n\x1a\n"
_M = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 `hashlittle`, the checksum HDF5 puts on v2+ superblocks and metadata (H5_checksum_lookup3)."""
    n = len(data)
    a = b = c = (0xDEADBEEF + n + initval) & _M
    i = 0
    while n > 12:
        a = (a + int.from_bytes(data[i:i + 4], "little")) & _M
        b = (b + int.from_bytes(data[i + 4:i + 8], "little")) & _M
        c = (c + int.from_bytes(data[i + 8:i + 12], "little")) & _M
        a = (a - c) & _M; a ^= _rot(c, 4); c = (c + b) & _M  # noqa: E702 - the reference "mix" reads best as rows
        b = (b - a) & _M; b ^= _rot(a, 6); a = (a + c) & _M  # noqa: E702
        c = (c - b) & _M; c ^= _rot(b, 8); b = (b + a) & _M  # noqa: E702
        a = (a - c) & _M; a ^= _rot(c, 16); c = (c + b) & _M  # noqa: E702
        b = (b - a) & _M; b ^= _rot(a, 19); a = (a + c) & _M  # noqa: E702
        c = (c - b) & _M; c ^= _rot(b, 4); b = (b + a) & _M  # noqa: E702
        n -= 12
        i += 12
    if n == 0:
        return c
    tail = data[i:] + bytes(12 - n)  # the byte-wise tail switch == zero-padded little-endian words
    a = (a + int.from_bytes(tail[0:4], "little")) & _M
    b = (b + int.from_bytes(tail[4:8], "little")) & _M
    c = (c + int.from_bytes(tail[8:12], "little")) & _M
    c ^= b; c = (c - _rot(b, 14)) & _M  # noqa: E702 - the reference "final"
    a ^= c; a = (a - _rot(c, 11)) & _M  # noqa: E702
    b ^= a; b = (b - _rot(a, 25)) & _M  # noqa: E702
    c ^= b; c = (c - _rot(b, 16)) & _M  # noqa: E702
    a ^= c; a = (a - _rot(c, 4)) & _M  # noqa: E702
    b ^= a; b = (b - _rot(a, 14)) & _M  # noqa: E702
    c ^= b; c = (c - _rot(b, 24)) & _M  # noqa: E702
    return c


@dataclass(frozen=True)
class Superblock:
    version: int
    flags: int        # bit 0: open for write, bit 2: open for SWMR write
    eof: int          # stored end-of-file address
    file_size: int
    checksum_ok: bool


def is_hdf5(path: str | os.PathLike) -> bool:
    """True when the file starts with the HDF5 signature (feddf never writes user blocks, so offset 0 is enough)."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == SIGNATURE
    except OSError:
        return False


def read_superblock(path: str | os.PathLike) -> Superblock | None:
    """The v2/v3 superblock fields we care about, or None for other versions / offset sizes (left alone)."""
    with open(path, "rb") as f:
        head = f.read(48)
        size = os.fstat(f.fileno()).st_size
    if len(head) < 48 or head[:8] != SIGNATURE or head[8] not in (2, 3) or head[9] != 8:
        return None
    stored = int.from_bytes(head[44:48], "little")
    return Superblock(version=head[8], flags=head[11], eof=int.from_bytes(head[28:36], "little"), file_size=size,
                      checksum_ok=lookup3(head[:44]) == stored)


def clear_write_flags(path: str | os.PathLike) -> bool:
    """Clear stale write/SWMR-write flags (and raise EOF to the file size); True if the file was changed.

    Call only while holding the writer lock. Refuses (ValueError) when the checksum does not verify."""
    sb = read_superblock(path)
    if sb is None or (sb.flags == 0 and sb.eof >= sb.file_size):
        return False
    if not sb.checksum_ok:
        raise ValueError(f"{path}: HDF5 superblock checksum mismatch; not touching it")
    with open(path, "r+b") as f:
        head = bytearray(f.read(48))
        head[11] = 0
        head[28:36] = max(sb.eof, sb.file_size).to_bytes(8, "little")
        head[44:48] = lookup3(bytes(head[:44])).to_bytes(4, "little")
        f.seek(0)
        f.write(bytes(head))
        f.flush()
        os.fsync(f.fileno())
    return True
