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
lies in 1..65535, congruent to the plain sum mod 65535. So we compute the plain sums exactly in vectorised float64
(integers below 2^53) and map them: S1 = sum of words, S2 = sum over i of (n - i) * word_i.
If compressing a chunk does not make it smaller, the chunk is stored raw with the compression filters' bits set in its
filter mask (readers skip masked filters); such chunks are plain images + checksum, which the stream's mapped fast
path (feddf.cache.source) reads directly.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

SHUFFLE, DEFLATE, FLETCHER32 = 2, 1, 3
_BLOCK = 1 << 15  # 16-bit words per block: per-block sums of i * word stay below 2^53 (exact in float64)
_WEIGHTS: np.ndarray | None = None


def _weights() -> np.ndarray:
    """(2 * _BLOCK, 2) float64: column 0 sums a block's words, column 1 sums (index in block) * word; row 2j is the
    high byte of word j (weight 256), row 2j + 1 its low byte."""
    global _WEIGHTS
    if _WEIGHTS is None:
        byte_weight = np.tile([256.0, 1.0], _BLOCK)
        index = np.repeat(np.arange(_BLOCK, dtype=np.float64), 2)
        _WEIGHTS = np.stack([byte_weight, byte_weight * index], axis=1)
    return _WEIGHTS


def _fold(s: int) -> int:
    """A plain sum as HDF5's end-around-carry sum leaves it: 0 only for 0, else 1..65535."""
    return 0 if s == 0 else (s - 1) % 65535 + 1


def fletcher32(data) -> int:
    """HDF5's fletcher32 of `data` (bytes-like): equal to H5_checksum_fletcher32 for every length."""
    b = np.frombuffer(memoryview(data).cast("B"), np.uint8)
    n_words = -(-b.size // 2)
    blocks = max(1, -(-b.size // (2 * _BLOCK)))
    if b.size == blocks * 2 * _BLOCK:
        x = b.astype(np.float64)
    else:
        x = np.empty(blocks * 2 * _BLOCK, np.float64)
        x[:b.size] = b
        x[b.size:] = 0  # zero padding adds nothing to either sum
    per_block = x.reshape(blocks, 2 * _BLOCK) @ _weights()  # (blocks, 2), exact integers
    s1 = per_block[:, 0].astype(np.int64)
    s1_total = int(s1.sum())
    index_weighted = int(per_block[:, 1].astype(np.int64).sum()) + int((np.arange(blocks, dtype=np.int64) * s1).sum()) * _BLOCK
    return (_fold(n_words * s1_total - index_weighted) << 16) | _fold(s1_total)


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

    def encode(self, raw: bytes) -> tuple[int, bytes]:
        """(filter mask, stored bytes) of one whole chunk's raw bytes, as HDF5 would store them."""
        data, compressed = raw, False
        for code, values in self.stages:
            if code == SHUFFLE:
                data = shuffle(data, values[0] if values else self.itemsize)
            elif code == DEFLATE:
                data = zlib.compress(data, values[0] if values else 6)
                compressed = True
        mask = 0
        if compressed and len(data) >= len(raw):  # no gain: store the plain bytes, every compression stage masked
            data, mask = raw, self.compression_mask
        if any(code == FLETCHER32 for code, _ in self.stages):
            data = data + fletcher32(data).to_bytes(4, "little")
        return mask, data
