"""HDF5's chunk filter pipeline (shuffle, deflate, fletcher32) done in Python, so chunks can be encoded in a thread
pool and stored with `write_direct_chunk` (feddf.cache.writer), byte for byte what HDF5 itself would store.

    python -c "from feddf.cache.codec import fletcher32; print(hex(fletcher32(b'abcde')))"

Why: HDF5 runs a dataset's filters inside H5Dwrite on the calling thread, and h5py holds its lock there, so one
writer thread compresses everything (~15 000 img/s at 32 px on a GPU machine whose generator made 330 000). zlib
and numpy release the GIL, so encoding chunks here scales with threads, and the writer thread only stores the bytes.

Only the standard filters every HDF5 build has are encoded here: shuffle (H5Z_FILTER_SHUFFLE = 2), deflate
(H5Z_FILTER_DEFLATE = 1, zlib format, what HDF5's compress2 call writes) and fletcher32 (H5Z_FILTER_FLETCHER32 = 3).
A dataset with any other filter (lzf, h5py-only) gets `Pipeline.supported == False` and goes through HDF5's own path.

Fletcher32 as HDF5 computes it (H5_checksum_fletcher32 in H5checksum.c, stored by H5Zfletcher32.c): the data is
read as big-endian 16-bit words (an odd trailing byte is the high byte of a last word), both sums start at 0 and are
reduced by end-around carry ((s & 0xffff) + (s >> 16)), the result is (sum2 << 16) | sum1, stored little-endian
after the data. With sums starting at 0 and end-around carry, a sum is 0 exactly when every word is 0 and otherwise
lies in 1..65535, congruent to the plain sum mod 65535. So we compute the plain sums exactly with vectorised integer
reductions and map them: S1 = sum of words, S2 = sum over i of (n - i) * word_i (n words).
If compressing a chunk does not make it smaller, the chunk is stored raw with the compression filters' bits set in its
filter mask (readers skip masked filters); such chunks are plain images + checksum, which the stream's mapped fast
path (feddf.cache.source) reads directly.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

SHUFFLE, DEFLATE, FLETCHER32 = 2, 1, 3
_ROW = 1024  # 16-bit words per row of the 2-D view fletcher32 reduces (any width gives the same result)


def _fold(s: int) -> int:
    """A plain sum as HDF5's end-around-carry sum leaves it: 0 only for 0, else 1..65535."""
    return 0 if s == 0 else (s - 1) % 65535 + 1


def fletcher32(data) -> int:
    """HDF5's fletcher32 of `data` (bytes-like): equal to H5_checksum_fletcher32 for every length.

    The words w_i (big-endian, zero-padded) are viewed as rows of _ROW, i = r * _ROW + c, so the index-weighted sum
    is _ROW * sum_r r * rowsum_r + sum_c c * colsum_c: two integer reductions over the data and two short dot
    products, no BLAS (whose threads oversubscribe the CPU when several encoders call it at once)."""
    b = np.frombuffer(memoryview(data).cast("B"), np.uint8)
    n_words = -(-b.size // 2)
    rows = max(1, -(-n_words // _ROW))
    if b.size != 2 * rows * _ROW:  # zero padding adds nothing to either sum
        padded = np.zeros(2 * rows * _ROW, np.uint8)
        padded[:b.size] = b
        b = padded
    # One byte-swapping pass to native words, then native uint32 sums where they are exact (a row adds _ROW words
    # of < 2^16; a column adds `rows` of them: < 2^32 up to 65 536 rows, a 128 MiB chunk): 2x the speed of summing
    # the big-endian view into uint64 (0.19 vs 0.39 ms per MiB here).
    w = b.view(">u2").astype(np.uint16).reshape(rows, _ROW)
    col = np.add.reduce(w, axis=0, dtype=np.uint32 if rows <= 65536 else np.uint64).astype(np.int64)  # (_ROW,)
    row = np.add.reduce(w, axis=1, dtype=np.uint32).astype(np.int64)  # (rows,)
    s1 = int(col.sum())
    index_weighted = _ROW * int(np.dot(np.arange(rows, dtype=np.int64), row)) \
        + int(np.dot(np.arange(_ROW, dtype=np.int64), col))
    return (_fold(n_words * s1 - index_weighted) << 16) | _fold(s1)


try:  # Intel ISA-L's deflate (the `isal` wheel, a dependency): standard zlib streams, several times faster
    from isal import isal_zlib as _isal
    from isal import __version__ as _isal_version
except ImportError:  # pragma: no cover - a platform without the wheel: zlib's Z_RLE below
    _isal, _isal_version = None, None

ISAL_MAX_LEVEL = 3  # ISA-L's levels are 0-3


def deflate_encoder(level: int) -> str:
    """What deflate(_, level) runs, as recorded in a cache's `deflate_encoder` attribute (docs/cache-format.md)."""
    if _isal is not None and level <= ISAL_MAX_LEVEL:
        return f"isal {_isal_version} level {level}"
    return f"zlib {zlib.ZLIB_RUNTIME_VERSION} level {level} Z_RLE"


def deflate(data, level: int) -> bytes:
    """A zlib stream of `data`, as HDF5's deflate filter stores it (any zlib stream inflates the same: HDF5's
    filter, h5py, h5dump and every other reader decode it with plain zlib).
    Levels <= 3: ISA-L (`isal`), measured 3.8-5x faster than zlib's Z_RLE at level 1 on images and about as small
    (+3.5% on Fashion-MNIST, -1.2% on the shipped DCGAN's images; docs/cache-format.md, Compression). Otherwise (or
    without isal) zlib with the Z_RLE strategy: matches at distance 1 plus Huffman coding, 2-2.5x faster than zlib's
    default strategy at level 1 and as small."""
    if _isal is not None and level <= ISAL_MAX_LEVEL:
        return _isal.compress(data, level)
    c = zlib.compressobj(level, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
    return c.compress(data) + c.flush()


def shuffle(data: bytes, itemsize: int) -> bytes:
    """HDF5's byte shuffle: byte j of every element, for j = 0..itemsize-1, in turn (a transpose)."""
    if itemsize <= 1:
        return data
    return np.frombuffer(data, np.uint8).reshape(-1, itemsize).T.tobytes()


@dataclass(frozen=True)
class Pipeline:
    """A dataset's filters in HDF5 order: (filter id, client data) per stage."""

    stages: tuple[tuple[int, tuple[int, ...]], ...]
    itemsize: int

    @classmethod
    def of(cls, dataset) -> "Pipeline":
        dcpl = dataset.id.get_create_plist()
        stages = []
        for i in range(dcpl.get_nfilters()):
            code, _flags, values, _name = dcpl.get_filter(i)
            stages.append((int(code), tuple(int(v) for v in values)))
        return cls(tuple(stages), int(dataset.dtype.itemsize))

    @property
    def supported(self) -> bool:
        codes = [code for code, _ in self.stages]
        return (all(c in (SHUFFLE, DEFLATE, FLETCHER32) for c in codes)
                and FLETCHER32 not in codes[:-1])  # the checksum, if any, covers the final stored bytes

    @property
    def compression_mask(self) -> int:
        """Filter-mask bits of every stage but fletcher32 (all set = the chunk is stored raw)."""
        return sum(1 << i for i, (code, _) in enumerate(self.stages) if code != FLETCHER32)

    def encode(self, raw: np.ndarray) -> tuple[int, bytearray | bytes]:
        """(filter mask, stored bytes) of one whole chunk (a C-contiguous array), as HDF5 would store them."""
        data, compressed = memoryview(raw).cast("B"), False
        for code, values in self.stages:
            if code == SHUFFLE:
                data = shuffle(bytes(data), values[0] if values else self.itemsize)
            elif code == DEFLATE:
                data = deflate(data, values[0] if values else 6)
                compressed = True
        mask = 0
        if compressed and len(data) >= raw.nbytes:  # no gain: store the plain bytes, every compression stage masked
            data, mask = memoryview(raw).cast("B"), self.compression_mask
        if not any(code == FLETCHER32 for code, _ in self.stages):
            return mask, bytes(data)
        out = bytearray(len(data) + 4)  # the one copy: data and checksum side by side, as stored
        out[:-4] = data
        out[-4:] = fletcher32(data).to_bytes(4, "little")
        return mask, out
