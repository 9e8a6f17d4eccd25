"""CacheStream / ChunkSource / CacheDataset on real HDF5 caches written by CacheWriter in tmp dirs."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
import torch

from feddf.cache import format as fmt
from feddf.cache.reader import CacheDataset, check_compatible, open_cache
from feddf.cache.shuffle import chunk_bounds, epoch_plan
from feddf.cache.stream import CacheStream
from feddf.cache.writer import CacheWriter
from feddf.errors import FeddfError


def make_images(n: int, c: int = 3, r: int = 8, seed: int = 0, smooth: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Images whose first two pixels encode their index; smooth=True makes them lzf-compressible."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, c, r, r), np.uint8) if smooth else rng.integers(0, 256, (n, c, r, r), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n) % 256
    x[:, 0, 0, 1] = np.arange(n) // 256
    return x, rng.integers(0, 10, n)


def write_cache(path, n=1000, c=3, r=8, chunk=64, compression="none", seed=0, smooth=False):
    x, y = make_images(n, c, r, seed, smooth)
    with CacheWriter(path, n=n, channels=c, resolution=r, attrs={"kind": "imported", "source": "test"},
                     num_labels=10, compression=compression, chunk=chunk) as w:
        w.append(x, y)
        w.finish()
    return x, y


def ids(batch: torch.Tensor) -> np.ndarray:
    return (batch[:, 0, 0, 0].long() + 256 * batch[:, 0, 0, 1].long()).numpy()


def collect(iterable) -> tuple[np.ndarray, list[int]]:
    out, sizes = [], []
    for x, y in iterable:
        assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.shape[0] == y.shape[0]
        out.append(ids(x))
        sizes.append(x.shape[0])
    return (np.concatenate(out) if out else np.zeros(0, int)), sizes


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "c.h5"
    x, y = write_cache(path)
    return path, x, y


def test_epoch_is_a_permutation_with_correct_pixels_and_labels(cache):
    path, x, y = cache
    s = CacheStream(path, 64, seed=3, buffer_size=200)
    seen = []
    for xb, yb in s:
        i = ids(xb)
        assert np.array_equal(xb.numpy(), x[i]) and np.array_equal(yb.numpy(), y[i])
        seen.append(i)
    order = np.concatenate(seen)
    assert np.array_equal(np.sort(order), np.arange(1000))
    # exactly the pure plan of shuffle.py: chunk bounds of the file, window = buffer_size // chunk chunks
    assert np.array_equal(order, epoch_plan(chunk_bounds(1000, 64), 3, 0, 200 // 64).order)
    assert s.state_dict()["epoch"] == 1 and s.state_dict()["offset"] == 0


def test_next_iteration_is_the_next_epoch(cache):
    path, _, _ = cache
    s = CacheStream(path, 100, seed=0)
    e0, _ = collect(s)
    e1, _ = collect(s)
    assert not np.array_equal(e0, e1) and np.array_equal(np.sort(e1), np.arange(1000))
    assert np.array_equal(e1, epoch_plan(chunk_bounds(1000, 64), 0, 1, s.window_chunks).order)


def test_fast_path_equals_hdf5_checked_path_and_compressed_chunks(tmp_path, cache):
    path, x, _ = cache
    fast, _ = collect(CacheStream(path, 50, seed=1))
    checked, _ = collect(CacheStream(path, 50, seed=1, verify_checksums=True))
    assert np.array_equal(fast, checked)
    lz = tmp_path / "lzf.h5"
    xs, _ = write_cache(lz, compression="lzf", smooth=True)
    with h5py.File(lz, "r") as f:  # these chunks really are compressed, so the HDF5 fallback path is exercised
        assert f[fmt.IMAGES].id.get_chunk_info(0).filter_mask == 0
    got = []
    for xb, _ in CacheStream(lz, 50, seed=1):
        assert np.array_equal(xb.numpy(), xs[ids(xb)])
        got.append(ids(xb))
    assert np.array_equal(np.concatenate(got), fast)  # same shape of cache -> same order


def test_drop_last_and_batch_sizes(cache):
    path, _, _ = cache
    _, sizes = collect(CacheStream(path, 300))
    assert sizes == [300, 300, 300, 100]
    order, sizes = collect(CacheStream(path, 300, drop_last=True))
    assert sizes == [300, 300, 300] and len(set(order)) == 900
    assert CacheStream(path, 300).num_batches() == 4 and CacheStream(path, 300, drop_last=True).num_batches() == 3


def test_infinite_mode_crosses_epochs_with_full_batches(cache):
    path, _, _ = cache
    s = CacheStream(path, 300, seed=5, infinite=True)
    it = iter(s)
    got = np.concatenate([ids(next(it)[0]) for _ in range(7)])  # 2100 samples = epochs 0, 1 and 100 of epoch 2
    bounds = chunk_bounds(1000, 64)
    want = np.concatenate([epoch_plan(bounds, 5, e, s.window_chunks).order for e in range(3)])[:2100]
    assert np.array_equal(got, want)
    assert s.state_dict()["epoch"] == 2 and s.state_dict()["offset"] == 100


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers", [1, 3])
def test_order_is_identical_for_any_number_of_workers(cache, workers):
    path, _, _ = cache
    ref, ref_sizes = collect(CacheStream(path, 64, seed=2, buffer_size=130))
    s = CacheStream(path, 64, seed=2, buffer_size=130)
    got, sizes = collect(s.loader(num_workers=workers))
    assert np.array_equal(got, ref) and sizes == ref_sizes
    assert s.state_dict()["epoch"] == 1  # the loader kept the state current in this process
    # plain DataLoader usage gives the same order too
    dl = torch.utils.data.DataLoader(CacheStream(path, 64, seed=2, buffer_size=130), batch_size=None,
                                     num_workers=workers)
    assert np.array_equal(collect(dl)[0], ref)


def test_spawn_context_workers(cache):
    path, _, _ = cache
    ref, _ = collect(CacheStream(path, 128, seed=4))
    got, _ = collect(CacheStream(path, 128, seed=4).loader(num_workers=2, multiprocessing_context="spawn"))
    assert np.array_equal(got, ref)


def test_ranks_take_disjoint_interleaved_batches(cache):
    path, _, _ = cache
    ref = [ids(x) for x, _ in CacheStream(path, 64, seed=9)]
    parts = [[ids(x) for x, _ in CacheStream(path, 64, seed=9, rank=r, world_size=3).loader(num_workers=2)]
             for r in range(3)]
    for b, want in enumerate(ref):
        assert np.array_equal(parts[b % 3][b // 3], want)
    assert sum(len(p) for p in parts) == len(ref)


@pytest.mark.parametrize("consumed", [0, 1, 5, 15])
def test_resume_from_state_yields_exactly_the_rest(cache, consumed):
    path, _, _ = cache
    full, _ = collect(CacheStream(path, 64, seed=11, buffer_size=150))
    s = CacheStream(path, 64, seed=11, buffer_size=150)
    it = iter(s)
    for _ in range(consumed):
        next(it)
    state = s.state_dict()
    assert state["offset"] == 64 * consumed
    r = CacheStream(path, 64, seed=11, buffer_size=150)
    r.load_state_dict(state)
    rest, _ = collect(r)
    assert np.array_equal(rest, full[64 * consumed:])


def test_resume_from_any_sample_offset_with_another_batch_size_and_workers(cache):
    path, _, _ = cache
    full, _ = collect(CacheStream(path, 64, seed=11, buffer_size=150))
    for offset in (37, 500, 999):
        r = CacheStream(path, 50, seed=11, buffer_size=150)
        r.load_state_dict({"epoch": 0, "offset": offset, "seed": 11, "buffer_size": 150, "shuffle": True})
        rest, _ = collect(r.loader(num_workers=2))
        assert np.array_equal(rest, full[offset:])


def test_resume_in_infinite_mode_across_an_epoch_boundary(cache):
    path, _, _ = cache
    s = CacheStream(path, 300, seed=5, infinite=True)
    it = iter(s)
    ref = [ids(next(it)[0]) for _ in range(8)]
    s2 = CacheStream(path, 300, seed=5, infinite=True)
    it2 = iter(s2)
    for _ in range(3):
        next(it2)
    s3 = CacheStream(path, 300, seed=5, infinite=True)
    s3.load_state_dict(s2.state_dict())
    it3 = iter(s3.loader(num_workers=2))
    for b in range(3, 8):
        assert np.array_equal(ids(next(it3)[0]), ref[b])


def test_state_mismatch_is_refused(cache):
    path, _, _ = cache
    s = CacheStream(path, 64, seed=1)
    with pytest.raises(FeddfError, match="seed"):
        s.load_state_dict({"epoch": 0, "offset": 0, "seed": 2, "shuffle": True, "buffer_size": 8192})
    with pytest.raises(FeddfError, match="offset"):
        s.load_state_dict({"epoch": 0, "offset": 5000, "seed": 1})


def test_shards_stream_as_one_cache(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_cache(a, n=300, chunk=40)
    xb_, _ = make_images(500)
    with CacheWriter(b, n=200, channels=3, resolution=8, attrs={"kind": "imported", "source": "t"}, num_labels=10,
                     compression="none", chunk=40) as w:  # shard b holds ids 300..499
        w.append(xb_[300:], np.zeros(200, int))
        w.finish()
    s = CacheStream([a, b], 64, seed=0, buffer_size=80)
    order, _ = collect(s)
    assert np.array_equal(np.sort(order), np.arange(500))
    assert np.array_equal(order, epoch_plan(np.array([0, 40, 80, 120, 160, 200, 240, 280, 300, 340, 380, 420, 460,
                                                      500]), 0, 0, 2).order)


def test_virtual_dataset_cache(tmp_path):
    """A cache whose per-image datasets are HDF5 virtual datasets over shard files (multi-process gen)."""
    x, y = make_images(300)
    parts = []
    for k, (s, e) in enumerate([(0, 120), (120, 300)]):
        p = tmp_path / f"v.shard-{k}-of-2.h5"
        with CacheWriter(p, n=e - s, channels=3, resolution=8, attrs={"kind": "imported", "source": "t"},
                         num_labels=10, compression="none", chunk=32) as w:
            w.append(x[s:e], y[s:e])
            w.finish()
        parts.append((p, s, e))
    main = tmp_path / "v.h5"
    with h5py.File(main, "w", libver="latest") as f:
        for name, shape, dt in ((fmt.IMAGES, (300, 3, 8, 8), "u1"), (fmt.LABELS, (300,), "i8")):
            layout = h5py.VirtualLayout(shape=shape, dtype=dt)
            for p, s, e in parts:
                layout[s:e] = h5py.VirtualSource(p.name, name, shape=(e - s,) + shape[1:])
            f.create_virtual_dataset(name, layout)
        f[fmt.COMMITTED] = np.int64(300)
        f[fmt.LABEL_COUNTS] = np.bincount(y, minlength=10)
        f.attrs.update({"format": fmt.FORMAT_NAME, "format_version": 1, "kind": "generated", "complete": True})
    info = open_cache(main)
    assert info.virtual and info.n == 300
    got = []
    for xb, yb in CacheStream(main, 64, seed=0):
        i = ids(xb)
        assert np.array_equal(xb.numpy(), x[i]) and np.array_equal(yb.numpy(), y[i])
        got.append(i)
    assert np.array_equal(np.sort(np.concatenate(got)), np.arange(300))


def test_multiprocess_gen_cache_streams_from_its_shards(tmp_path):
    """A cache made by write_virtual_cache (multi-process `feddf gen`) is read straight from its shard files."""
    from feddf.cache.verify import verify_cache
    from feddf.cache.virtual import write_virtual_cache

    x, y = make_images(300)
    shards = []
    for k, (s, e) in enumerate([(0, 130), (130, 300)]):
        p = tmp_path / f"g.shard-{k}-of-2.h5"
        extra = {"shard_start": s, "shard_index": k, "shard_world": 2}
        with CacheWriter(p, n=e - s, channels=3, resolution=8, attrs={"kind": "generated", "source": "t", **extra},
                         num_labels=10, compression="none", chunk=32) as w:
            w.append(x[s:e], y[s:e])
            w.finish()
        shards.append(p)
    main = write_virtual_cache(tmp_path / "g.h5", shards)
    info = open_cache(main)
    assert info.virtual and info.n == 300 and info.fletcher32 and info.complete
    s = CacheStream(main, 64, seed=0)
    assert s.source.paths == [str(p) for p in shards]  # expanded to the shards
    got = []
    for xb, yb in s:
        i = ids(xb)
        assert np.array_equal(xb.numpy(), x[i]) and np.array_equal(yb.numpy(), y[i])
        got.append(i)
    assert np.array_equal(np.sort(np.concatenate(got)), np.arange(300))
    assert verify_cache(main).ok
    shards[1].rename(tmp_path / "elsewhere.h5")  # a missing shard would read as fill values: refused instead
    with pytest.raises(FeddfError, match="shard file"):
        CacheStream(main, 64)
    assert not verify_cache(main).ok


def test_map_style_dataset_and_workers(cache):
    path, x, y = cache
    ds = CacheDataset(path)
    assert len(ds) == 1000
    img, lab = ds[17]
    assert torch.equal(img, torch.from_numpy(x[17])) and lab == y[17]
    dl = torch.utils.data.DataLoader(ds, batch_size=100, shuffle=False, num_workers=2)
    xs = torch.cat([b[0] for b in dl])
    assert np.array_equal(xs.numpy(), x)
    with pytest.raises(IndexError):
        ds[1000]


def test_compatibility_check(cache):
    path, _, _ = cache
    info = open_cache(path)
    check_compatible(info, 3, 8)
    with pytest.raises(FeddfError, match=r"3x8x8 images but the model needs 1x28x28") as e:
        check_compatible(info, 1, 28)
    assert "\n" not in str(e.value) and "--resolution 28" in str(e.value)
    with pytest.raises(FeddfError, match="1x8"):
        CacheStream(path, 64, channels=1, resolution=8)


# A real concurrent writer process (numpy + CacheWriter only: no test-module imports, so it starts fast).
WRITER = textwrap.dedent("""
    import time
    import numpy as np
    from feddf.cache.writer import CacheWriter
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (600, 3, 8, 8), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(600) % 256
    x[:, 0, 0, 1] = np.arange(600) // 256
    y = rng.integers(0, 10, 600)
    with CacheWriter({path!r}, n=600, channels=3, resolution=8, attrs={{"kind": "imported", "source": "live"}},
                     num_labels=10, compression="none", chunk=50) as w:
        for a in range(0, 600, 50):
            w.append(x[a:a + 50], y[a:a + 50])
            time.sleep(0.25)
        w.finish()
""")


def test_reader_follows_a_live_writer_process(tmp_path):
    path = tmp_path / "live.h5"
    proc = subprocess.Popen([sys.executable, "-c", WRITER.format(path=str(path))])
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until the writer committed its first block
            try:
                if open_cache(path).n > 0:
                    break
            except FeddfError:
                pass
            time.sleep(0.05)
        info = open_cache(path)
        assert info.live and 0 < info.n < 600 and not info.complete  # really reading while it is written
        x, y = make_images(600, seed=7)
        s = CacheStream(path, 32, shuffle=False, follow=True, follow_timeout=30, poll_interval=0.05)
        got = []
        for xb, yb in s:
            i = ids(xb)
            assert np.array_equal(xb.numpy(), x[i]) and np.array_equal(yb.numpy(), y[i])
            got.append(i)
        assert np.array_equal(np.concatenate(got), np.arange(600))
        assert proc.wait(timeout=60) == 0
        assert open_cache(path).complete
    finally:
        proc.kill()


def test_engine_is_torch_free_and_yields_the_same_batches_as_numpy(cache):
    path, x, y = cache
    code = ("import sys; from feddf.cache.engine import ChunkStream; s = ChunkStream(sys.argv[1], 64, seed=3); "
            "n = sum(len(b) for b, _ in s); print(n, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(len(x)), "False"]
    from feddf.cache.engine import ChunkStream

    eng = ChunkStream(path, 64, seed=3, buffer_size=150)
    torch_ids, _ = collect(CacheStream(path, 64, seed=3, buffer_size=150))
    got = []
    for xb, yb in eng:
        assert isinstance(xb, np.ndarray) and xb.dtype == np.uint8 and xb.shape[1:] == x.shape[1:]
        i = xb[:, 0, 0, 0].astype(int) + 256 * xb[:, 0, 0, 1].astype(int)
        assert np.array_equal(xb, x[i]) and np.array_equal(yb, y[i])
        got.append(i)
    assert np.array_equal(np.concatenate(got), torch_ids)
    assert eng.state_dict()["epoch"] == 1 and eng.state_dict()["offset"] == 0


def test_fast_path_chunk_table_matches_hdf5(cache):
    from feddf.cache.source import ChunkSource

    path, _, _ = cache
    src = ChunkSource(path)
    bounds = src.bounds()
    ids_ = np.random.default_rng(0).permutation(len(bounds) - 1)
    shard, at = src.raw_window(ids_, bounds)
    h = src._handles()[0]
    assert not shard.any()
    # the vectorised table agrees with HDF5's own chunk lookup, chunk by chunk
    for c, o in zip(ids_.tolist(), at.tolist()):
        assert o == h.images.id.get_chunk_info_by_coord((int(bounds[c]), 0, 0, 0)).byte_offset
    assert h.mapped_to(path.stat().st_size) and not h.mapped_to(path.stat().st_size + 1)  # past the end: HDF5 path
    src.close()
