"""Caches open everywhere: Debian's own HDF5 (python3-h5py on /usr/bin/python3, h5dump/h5ls from hdf5-tools) reads
generated, imported and virtual caches and gets the bytes feddf reads; the chunk codec is HDF5's; the parallel writer's
chunks do not depend on the number of workers, nor on a kill -9 and resume.

    .venv/bin/python -m pytest -q tests/test_portable.py
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

from feddf.cache import codec
from feddf.cache import format as fmt
from feddf.cache.source import ChunkSource
from feddf.cache.virtual import write_virtual_cache
from feddf.cache.writer import CacheWriter
from tests.conftest import random_dcgan_checkpoint, run_cli

SYSTEM_PY = "/usr/bin/python3"
DATASETS = (fmt.IMAGES, fmt.LABELS)


def _system_tools_or_skip():
    """Debian's h5py and hdf5-tools: `make test` installs them (scripts/system-deps.sh); CI fails without them."""
    ok = (Path(SYSTEM_PY).exists() and subprocess.run([SYSTEM_PY, "-c", "import h5py"], capture_output=True).returncode
          == 0 and shutil.which("h5dump") and shutil.which("h5ls"))
    if not ok:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but python3-h5py / hdf5-tools are missing: `make test` installs them")
        pytest.skip("python3-h5py and hdf5-tools not installed (make test installs them)")


STOCK_READ = """
import hashlib, json, sys
import h5py
out = {"hdf5": h5py.version.hdf5_version}
with h5py.File(sys.argv[1], "r") as f:
    n = int(f["committed"][()])
    for name in sys.argv[2:]:
        out[name] = hashlib.sha256(f[name][:n].tobytes()).hexdigest()
    out["complete"] = bool(f.attrs["complete"])
print(json.dumps(out))
"""


def stock_read(path: Path, names=DATASETS) -> dict:
    r = subprocess.run([SYSTEM_PY, "-c", STOCK_READ, str(path), *names], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def feddf_read(path: Path) -> dict:
    """What feddf's own reader (the chunk source, the stream's fast path where it applies) returns."""
    src = ChunkSource(str(path))
    images = np.empty((src.n, src.channels, src.resolution, src.resolution), np.uint8)
    bounds = src.bounds()
    ids = np.arange(len(bounds) - 1)
    raw = src.raw_window(ids, bounds)
    if raw is not None:  # mapped fast path: gather each image by file offset
        starts = np.repeat(raw[1], np.diff(bounds)) + (np.arange(src.n) - np.repeat(bounds[:-1], np.diff(bounds))) \
            * src.image_bytes
        images[:] = src.gather(np.repeat(raw[0], np.diff(bounds)), starts)
    else:
        src.read_window(ids, bounds[:-1], bounds, np.arange(src.n), images)
    labels = src.labels_of(np.arange(src.n))
    src.close()
    return {fmt.IMAGES: hashlib.sha256(images.tobytes()).hexdigest(),
            fmt.LABELS: hashlib.sha256(labels.astype(np.int64).tobytes()).hexdigest()}


def h5dump_images(path: Path, tmp: Path) -> bytes:
    out = tmp / f"{path.stem}.images.bin"
    r = subprocess.run(["h5dump", "-d", "/images", "-b", "LE", "-o", str(out), str(path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "error" not in (r.stdout + r.stderr).lower(), r.stdout[-2000:] + r.stderr
    return out.read_bytes()


def assert_stock_equal(path: Path, tmp: Path) -> None:
    mine, stock = feddf_read(path), stock_read(path)
    assert stock["hdf5"].startswith("1.10") or os.environ.get("CI") != "true", stock["hdf5"]
    assert stock[fmt.IMAGES] == mine[fmt.IMAGES] and stock[fmt.LABELS] == mine[fmt.LABELS] and stock["complete"]
    assert hashlib.sha256(h5dump_images(path, tmp)).hexdigest() == mine[fmt.IMAGES]
    ls = subprocess.run(["h5ls", "-r", str(path)], capture_output=True, text=True, timeout=60)
    assert ls.returncode == 0 and "ERROR" not in ls.stdout + ls.stderr and "/images" in ls.stdout, ls.stdout


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_dcgan_checkpoint(tmp_path_factory.mktemp("ckpt") / "netG.pth", nc=3)


def gen_args(ckpt, out, n, *extra):
    return ["gen", "--generator", "dcgan", "--checkpoint", str(ckpt), "--n", str(n), "--resolution", "16",
            "--batch-size", "64", "--chunk-images", "100", "--out", str(out), "--quiet", "--json", *extra]


def test_generated_cache_reads_the_same_with_stock_hdf5(tmp_path, ckpt):
    _system_tools_or_skip()
    out = tmp_path / "gen.h5"
    run_cli(*gen_args(ckpt, out, 450, "--workers", "2"), check=True)  # default compression: gzip (deflate)
    with h5py.File(out, "r") as f:
        assert f[fmt.IMAGES].compression == "gzip" and f[fmt.IMAGES].fletcher32 and f.attrs["compression"] == "gzip"
        masks = {f[fmt.IMAGES].id.get_chunk_info(i).filter_mask for i in range(f[fmt.IMAGES].id.get_num_chunks())}
    assert 0 in masks  # deflate really stored (random-weight DCGAN images do compress)
    assert_stock_equal(out, tmp_path)


def test_imported_cache_reads_the_same_with_stock_hdf5(tmp_path, fmnist_available):
    _system_tools_or_skip()
    for comp in ("none", "gzip"):
        out = tmp_path / f"fm-{comp}.h5"
        run_cli("cache", "import", "fashion-mnist", "--split", "test[:1000]", "--out", str(out), "--compression",
                comp, "--quiet", check=True)
        assert_stock_equal(out, tmp_path)


def test_virtual_cache_reads_the_same_with_stock_hdf5(tmp_path):
    _system_tools_or_skip()
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 256, (70, 1, 8, 8), dtype=np.uint8) // 32).astype(np.uint8)
    shards = []
    for k, (lo, hi) in enumerate([(0, 30), (30, 70)]):
        s = tmp_path / f"v.shard-{k}-of-2.h5"
        attrs = {"kind": "generated", "shard_start": lo, "shard_index": k, "shard_world": 2}
        with CacheWriter(s, n=hi - lo, channels=1, resolution=8, num_labels=3, chunk=16, attrs=attrs,
                         identity=attrs) as w:
            w.append(x[lo:hi], np.arange(lo, hi) % 3)
            w.finish()
        shards.append(s)
    out = write_virtual_cache(tmp_path / "v.h5", shards)
    stock = stock_read(out)
    assert stock[fmt.IMAGES] == hashlib.sha256(x.tobytes()).hexdigest()
    assert stock[fmt.LABELS] == hashlib.sha256((np.arange(70) % 3).astype(np.int64).tobytes()).hexdigest()


def test_stock_hdf5_checks_our_fletcher32(tmp_path):
    """The checksums we compute are the ones stock HDF5 verifies: one flipped byte makes its read fail."""
    _system_tools_or_skip()
    p = tmp_path / "c.h5"
    x = np.random.default_rng(1).integers(0, 256, (64, 3, 8, 8), dtype=np.uint8)
    with CacheWriter(p, n=64, channels=3, resolution=8, attrs={"kind": "imported", "source": "t"}, num_labels=0,
                     compression="none", chunk=32) as w:
        w.append(x)
        w.finish()
    assert stock_read(p)[fmt.IMAGES] == hashlib.sha256(x.tobytes()).hexdigest()
    with h5py.File(p, "r") as f:
        at = f[fmt.IMAGES].id.get_chunk_info(1).byte_offset + 100
    raw = bytearray(p.read_bytes())
    raw[at] ^= 1
    p.write_bytes(bytes(raw))
    r = subprocess.run([SYSTEM_PY, "-c", STOCK_READ, str(p), fmt.IMAGES], capture_output=True, text=True)
    assert r.returncode != 0 and "Fletcher32" in r.stderr


# ------------------------------------------------------------------ the codec is HDF5's own
def stored_chunks(path: Path, name: str) -> list[tuple[int, bytes]]:
    """(filter mask, stored bytes) of every chunk of a dataset, straight from the file."""
    data = path.read_bytes()
    with h5py.File(path, "r", swmr=True) as f:
        ds = f[name]
        infos = sorted((ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())),
                       key=lambda i: i.chunk_offset)
        return [(i.filter_mask, data[i.byte_offset:i.byte_offset + i.size]) for i in infos]


@pytest.mark.parametrize("size", [1, 2, 3, 255, 256, 257, 2047, 2048, 2049, 65535, 65536, 1 << 20, 3_000_001])
def test_fletcher32_equals_what_hdf5_stores(tmp_path, size):
    rng = np.random.default_rng(size)
    p = tmp_path / "f.h5"
    cases = {"rand": rng.integers(0, 256, size, dtype=np.uint8), "zeros": np.zeros(size, np.uint8),
             "ones": np.full(size, 255, np.uint8)}
    with h5py.File(p, "w", libver=fmt.LIBVER) as f:  # HDF5's own filter computes these
        for name, v in cases.items():
            f.create_dataset(name, data=v, chunks=(size,), fletcher32=True)
    for name, v in cases.items():
        [(mask, stored)] = stored_chunks(p, name)
        assert mask == 0 and stored[:-4] == v.tobytes()
        assert int.from_bytes(stored[-4:], "little") == codec.fletcher32(v.tobytes())


def test_fletcher32_is_exact_past_the_uint32_column_sums():
    """Chunks over 128 MiB (more than 65 536 rows of words) sum their columns in uint64: the all-0xFF worst case
    equals the plain-integer definition (S1 = sum of words, S2 = sum of (n - i) * word_i, both folded)."""
    n_words = 65537 * codec._ROW + 5
    data = np.full(2 * n_words, 255, np.uint8)
    s1 = 65535 * n_words
    s2 = 65535 * n_words * (n_words + 1) // 2
    assert codec.fletcher32(data) == (codec._fold(s2) << 16) | codec._fold(s1)


def test_pipeline_encodes_what_hdf5_decodes(tmp_path):
    """shuffle + deflate + fletcher32 chunks written with write_direct_chunk read back through HDF5's filters; our
    shuffle is HDF5's; a chunk that does not shrink is stored raw with the compression bits masked."""
    p = tmp_path / "e.h5"
    labels = np.random.default_rng(2).integers(-1, 10, 1000)
    noise = np.random.default_rng(3).integers(0, 256, (4, 3, 16, 16), dtype=np.uint8)
    with h5py.File(p, "w", libver=fmt.LIBVER) as f:
        f.create_dataset("ref", data=labels, chunks=(1000,), shuffle=True, compression="gzip",
                         compression_opts=1, fletcher32=True)
        a = f.create_dataset("a", shape=(1000,), dtype="i8", chunks=(1000,), shuffle=True, compression="gzip",
                             compression_opts=1, fletcher32=True)
        b = f.create_dataset("b", shape=noise.shape, dtype="u1", chunks=noise.shape, compression="gzip",
                             compression_opts=1, fletcher32=True)
        pa, pb = codec.Pipeline.of(a), codec.Pipeline.of(b)
        assert pa.supported and [c for c, _ in pa.stages] == [codec.SHUFFLE, codec.DEFLATE, codec.FLETCHER32]
        mask_a, data_a = pa.encode(labels)
        a.id.write_direct_chunk((0,), data_a, mask_a)
        mask, data = pb.encode(noise)
        assert mask == pb.compression_mask == 1 and len(data) == noise.nbytes + 4  # random bytes: stored raw
        b.id.write_direct_chunk((0, 0, 0, 0), data, mask)
        assert not codec.Pipeline.of(f.create_dataset("l", shape=(4,), dtype="u1", compression="lzf")).supported
    with h5py.File(p, "r") as f:  # (HDF5 2.0 cannot read a masked direct chunk back in the session that wrote it)
        np.testing.assert_array_equal(f["a"][:], labels)
        np.testing.assert_array_equal(f["b"][:], noise)
    [(_, stored)] = stored_chunks(p, "ref")
    assert zlib.decompress(stored[:-4]) == codec.shuffle(labels.tobytes(), 8)


def test_deflate_uses_isal_and_any_zlib_inflates_it(tmp_path):
    """The default gzip chunks are ISA-L deflate streams (the `isal` dependency), which plain zlib inflates (what
    every HDF5 reader runs; the stock-HDF5 tests above read whole caches of them); the encoder is recorded."""
    pytest.importorskip("isal")
    data = (np.arange(200_000) // 97 % 251).astype(np.uint8).tobytes()
    assert codec.deflate_encoder(1).startswith("isal ") and codec.deflate_encoder(6).startswith("zlib ")
    for level in (1, 6):  # level 6 is beyond ISA-L's 0-3: zlib Z_RLE
        out = codec.deflate(data, level)
        assert zlib.decompress(out) == data and len(out) < len(data) // 10
    p = tmp_path / "c.h5"
    with CacheWriter(p, n=10, channels=1, resolution=4, attrs={"kind": "imported", "source": "t"},
                     num_labels=2) as w:
        w.append(np.zeros((10, 1, 4, 4), np.uint8), np.zeros(10, np.int64))
        w.finish()
    with h5py.File(p, "r") as f:
        assert f.attrs["deflate_encoder"] == codec.deflate_encoder(1)


# ------------------------------------------------------------------ the parallel writer: order-independent bytes
def write_pattern(path: Path, workers: int, compression: str, n: int = 700, step: int = 37) -> None:
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (n, 3, 8, 8), dtype=np.uint8)
    x[: n // 2] //= 64  # half compressible, half not: both kinds of chunks
    with CacheWriter(path, n=n, channels=3, resolution=8, attrs={"kind": "imported", "source": "t"}, num_labels=5,
                     num_targets=2, compression=compression, chunk=64, workers=workers) as w:
        for i in range(0, n, step):
            j = min(i + step, n)
            w.append(x[i:j], np.arange(i, j) % 5, targets=np.arange(i, j) % 2)
            if i in (5 * step, 15 * step):
                w.flush()  # a partial chunk (compressed, then stored raw) committed mid-run, continued next block
        w.finish()


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_chunks_identical_for_any_number_of_workers(tmp_path, compression):
    write_pattern(tmp_path / "w1.h5", 1, compression)
    write_pattern(tmp_path / "w4.h5", 4, compression)
    for name in (fmt.IMAGES, fmt.LABELS, fmt.TARGETS):
        a, b = stored_chunks(tmp_path / "w1.h5", name), stored_chunks(tmp_path / "w4.h5", name)
        assert len(a) == 11 and a == b
    masks = {m for m, _ in stored_chunks(tmp_path / "w1.h5", fmt.IMAGES)}
    assert masks == ({0, 1} if compression == "gzip" else {0})


@pytest.mark.slow
def test_killed_parallel_gen_resumes_to_identical_chunks(tmp_path, ckpt):
    """kill -9 of `feddf gen --workers 2` mid-run, then the same command: every chunk of every dataset is stored
    byte for byte as in an uninterrupted one-worker run, and stock HDF5 reads it."""
    n = 6000  # ~2 s at batch 7: commits every 0.25 s (COMMIT_SECONDS), so the kill lands well before the end
    ref = tmp_path / "ref.h5"
    run_cli(*gen_args(ckpt, ref, n, "--workers", "1"), check=True)
    out = tmp_path / "k.h5"
    cmd = [sys.executable, "-m", "feddf", *gen_args(ckpt, out, n, "--workers", "2", "--batch-size", "7")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    killed_at = 0
    while time.time() < deadline and proc.poll() is None:
        if out.exists():
            try:
                with h5py.File(out, "r", swmr=True, locking=False) as f:
                    killed_at = int(f[fmt.COMMITTED][()])
            except (OSError, KeyError):
                killed_at = 0
            if killed_at >= n // 3:
                proc.send_signal(signal.SIGKILL)
                break
        time.sleep(0.02)
    assert proc.wait(timeout=60) == -signal.SIGKILL, proc.stderr.read()
    with h5py.File(out, "r", swmr=True, locking=False) as f:
        assert 0 < int(f[fmt.COMMITTED][()]) < n and not f.attrs["complete"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["resumed_from"] >= killed_at
    for name in (fmt.IMAGES, fmt.LABELS):
        assert stored_chunks(out, name) == stored_chunks(ref, name)
    with h5py.File(out, "r") as f, h5py.File(ref, "r") as g:
        assert f.attrs["complete"] and f[fmt.COMMITTED][()] == n
        np.testing.assert_array_equal(f[fmt.LABEL_COUNTS][()], g[fmt.LABEL_COUNTS][()])
    if Path(SYSTEM_PY).exists() and shutil.which("h5dump"):
        assert stock_read(out) == stock_read(ref)
