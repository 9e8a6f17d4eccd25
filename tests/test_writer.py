"""CacheWriter: layout, resume after a real kill -9, SWMR reader during a write, refusals, virtual (sharded) caches.

    .venv/bin/python -m pytest -q tests/test_writer.py
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from feddf.cache import format as fmt
from feddf.cache.superblock import clear_write_flags, lookup3, read_superblock
from feddf.cache.virtual import write_virtual_cache
from feddf.cache.replace import staging_path
from feddf.cache.writer import CacheWriter, open_h5_read, probe_cache
from feddf.errors import FeddfError

C, R = 1, 4


def pattern(lo: int, hi: int) -> np.ndarray:
    """Image i: a deterministic (C, R, R) uint8 pattern depending on i (so misplaced or stale images are visible)."""
    i = np.arange(lo, hi).reshape(-1, 1, 1, 1)
    return ((i * 7 + np.arange(R).reshape(1, 1, 1, R) + 3 * np.arange(R).reshape(1, 1, R, 1)) % 256).astype(np.uint8)


def labels_of(lo: int, hi: int) -> np.ndarray:
    return np.arange(lo, hi) % 3


CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_writer import pattern, labels_of, C, R
    from feddf.cache.writer import CacheWriter
    path, n, chunk, step, sleep, die_after = sys.argv[1], *map(int, sys.argv[2:5]), float(sys.argv[5]), int(sys.argv[6])
    w = CacheWriter(path, n=n, channels=C, resolution=R, attrs={{"kind": "imported", "source": "test"}},
                    num_labels=3, chunk=chunk, commit_every=int(os.environ.get("COMMIT_EVERY", "1")))
    print("start", w.committed, flush=True)
    i = w.committed
    while i < n:
        j = min(i + step, n)
        w.append(pattern(i, j), labels_of(i, j))
        i = j
        if die_after and w.committed >= die_after:
            os.kill(os.getpid(), 9)  # a real SIGKILL: no cleanup, no close
        time.sleep(sleep)
    w.finish()
    print("done", flush=True)
""")


def assert_same_as_uninterrupted(p, n, ref):
    """The cache at p, complete, holds what one uninterrupted write_all of n images gives (images, labels, coverage,
    /committed)."""
    write_all(ref, n, chunk=5, step=7)
    with open_h5_read(p) as a, open_h5_read(ref) as b:
        for k in (fmt.IMAGES, fmt.LABELS, fmt.LABEL_COUNTS, fmt.COMMITTED):
            np.testing.assert_array_equal(a[k][()], b[k][()])
        assert bool(a.attrs["complete"])


@pytest.fixture
def child(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=os.path.dirname(__file__)))

    def run(path, n, chunk, step, sleep=0.0, die_after=0, wait=True, commit_every=1):
        args = [sys.executable, str(script), str(path), str(n), str(chunk), str(step), str(sleep), str(die_after)]
        env = {**os.environ, "COMMIT_EVERY": str(commit_every)}
        if wait:
            return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    return run


def write_all(path, n, chunk=5, step=3, **kw):
    w = CacheWriter(path, n=n, channels=C, resolution=R, attrs={"kind": "imported", "source": "test"},
                    num_labels=3, chunk=chunk, **kw)
    for i in range(w.committed, n, step):
        j = min(i + step, n)
        w.append(pattern(i, j), labels_of(i, j))
    w.finish()
    return w


def test_lookup3_matches_hdf5_superblock_checksum(tmp_path):
    p = tmp_path / "x.h5"
    with h5py.File(p, "w", libver="latest") as f:
        f["a"] = np.arange(3)
    sb = read_superblock(p)
    assert sb is not None and sb.version == 3 and sb.flags == 0 and sb.checksum_ok
    assert lookup3(b"") == 0xDEADBEEF and lookup3(b"Four score and seven years ago") == 0x17770551  # Jenkins' vectors


def test_create_write_finish_layout(tmp_path):
    p = tmp_path / "c.h5"
    w = write_all(p, 23, chunk=5)
    assert w.complete and w.committed == 23 and not (tmp_path / ".c.h5.lock").exists()
    with open_h5_read(p) as f:
        assert f[fmt.IMAGES].shape == (23, C, R, R) and f[fmt.IMAGES].dtype == np.uint8
        assert f[fmt.IMAGES].chunks == (5, C, R, R) and f[fmt.IMAGES].fletcher32
        np.testing.assert_array_equal(f[fmt.IMAGES][:], pattern(0, 23))
        np.testing.assert_array_equal(f[fmt.LABELS][:], labels_of(0, 23))
        assert f[fmt.COMMITTED][()] == 23
        np.testing.assert_array_equal(f[fmt.LABEL_COUNTS][:], np.bincount(labels_of(0, 23), minlength=3))
        assert f.attrs["format"] == fmt.FORMAT_NAME and f.attrs["format_version"] == fmt.FORMAT_VERSION
        assert bool(f.attrs["complete"]) and f.attrs["source"] == "test"
        assert json.loads(f.attrs["versions"])["h5py"] == h5py.__version__
    assert read_superblock(p).flags == 0  # a clean close leaves no write flags
    assert CacheWriter(p, n=23, channels=C, resolution=R, attrs={"kind": "imported", "source": "test"},
                       num_labels=3, chunk=5).complete  # same config again: complete, nothing to do


def test_targets_and_labeler_coverage(tmp_path):
    p = tmp_path / "t.h5"
    with CacheWriter(p, n=6, channels=C, resolution=R, attrs={}, num_labels=4, num_targets=2, labeler_classes=3) as w:
        w.append(pattern(0, 6), [0, 1, 1, 3, -1, 2], targets=[0, 1, 1, -1, 0, 0], labeler_pred=[2, 2, 0, 1, 2, 0],
                 labeler_conf=[0.5, 0.25, 1.0, 0.75, 0.5, 0.5])
        w.finish()
    with open_h5_read(p) as f:
        np.testing.assert_array_equal(f[fmt.LABEL_COUNTS][:], [1, 2, 1, 1])
        np.testing.assert_array_equal(f[fmt.TARGET_COUNTS][:], [3, 2])
        np.testing.assert_array_equal(f[fmt.LABELER_COUNTS][:], [2, 1, 3])
        np.testing.assert_allclose(f[fmt.LABELER_CONF_SUM][:], [1.5, 0.75, 1.25])
        np.testing.assert_array_equal(f[fmt.LABELER_PRED][:], [2, 2, 0, 1, 2, 0])


def test_append_validation(tmp_path):
    with CacheWriter(tmp_path / "v.h5", n=4, channels=C, resolution=R, attrs={}, num_labels=2) as w:
        with pytest.raises(ValueError, match="uint8"):
            w.append(np.zeros((1, C, R, R), np.float32))
        with pytest.raises(ValueError, match="labels must lie"):
            w.append(pattern(0, 1), [2])
        with pytest.raises(ValueError, match="exceed"):
            w.append(pattern(0, 5))
        assert w.committed == 0


def test_kill9_after_commit_then_resume(tmp_path, child):
    p = tmp_path / "k.h5"
    r = child(p, 40, 5, 3, die_after=12)
    assert r.returncode == -signal.SIGKILL, r.stderr
    sb = read_superblock(p)
    assert sb.flags != 0  # the killed SWMR writer left its flags: plain opens fail like this
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(p, "r")
    with open_h5_read(p) as f:  # SWMR readers can read the committed part meanwhile
        c = int(f[fmt.COMMITTED][()])
        assert c >= 12 and c % 5 == 0
        np.testing.assert_array_equal(f[fmt.IMAGES][:c], pattern(0, c))
    assert child(p, 40, 5, 3).returncode == 0  # same command again: resumes
    assert_same_as_uninterrupted(p, 40, tmp_path / "ref.h5")
    h5py.File(p, "r").close()  # and plain opens work again


def test_commits_group_blocks_and_flush_commits_the_rest(tmp_path, monkeypatch):
    """Blocks are stored one by one but /committed moves once per commit_every blocks (or COMMIT_SECONDS), and
    flush() commits whatever is stored; coverage always matches /committed."""
    from feddf.cache import blocks

    monkeypatch.setattr(blocks, "COMMIT_SECONDS", 1e9)  # the count bound alone
    p = tmp_path / "g.h5"
    seen = []
    with CacheWriter(p, n=40, channels=C, resolution=R, attrs={"kind": "imported", "source": "t"}, num_labels=3,
                     chunk=5, commit_every=3, workers=1) as w:
        for i in range(0, 35, 5):
            w.append(pattern(i, i + 5), labels_of(i, i + 5))
            seen.append(w.committed)
        w.flush()
        seen.append(w.committed)
        with open_h5_read(p) as f:
            assert int(f[fmt.COMMITTED][()]) == 35
            np.testing.assert_array_equal(f[fmt.LABEL_COUNTS][()], np.bincount(labels_of(0, 35), minlength=3))
        w.append(pattern(35, 40), labels_of(35, 40))
        w.finish()
    # a block is stored once more than 2 are in flight (workers=1): stored 5, 10, 15 (commit), 20, 25; flush -> 35
    assert seen == [0, 0, 0, 0, 15, 15, 15, 35], seen
    monkeypatch.setattr(blocks, "COMMIT_SECONDS", 0.0)  # the time bound alone: every stored block commits
    q = tmp_path / "t.h5"
    with CacheWriter(q, n=40, channels=C, resolution=R, attrs={"kind": "imported", "source": "t"}, num_labels=3,
                     chunk=5, commit_every=1000, workers=1) as w:
        for i in range(0, 40, 5):
            w.append(pattern(i, i + 5), labels_of(i, i + 5))
            assert w.committed % 5 == 0 and w.committed >= i - 10  # at most 2 blocks in flight, none stored-only
        w.finish()


def test_background_fdatasync_runs_and_its_error_fails_the_writer(tmp_path, monkeypatch):
    """Every SYNC_BYTES of commits an fdatasync of the cache's file runs on a helper thread; when it fails, the writer
    stops with one line at its next commit or finish and the cache is never marked complete."""
    from feddf.cache import blocks

    monkeypatch.setattr(blocks, "SYNC_BYTES", 5 * C * R * R)  # a sync after every 5 committed images
    real, calls = os.fdatasync, []
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd))[1])
    p = tmp_path / "s.h5"
    write_all(p, 40, chunk=5, step=5, commit_every=1, workers=1)
    assert calls  # at least one (a sync still running when the next one is due is not doubled)
    with open_h5_read(p) as f:
        assert bool(f.attrs["complete"]) and int(f[fmt.COMMITTED][()]) == 40

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    q = tmp_path / "e.h5"
    w = CacheWriter(q, n=40, channels=C, resolution=R, attrs={"kind": "imported", "source": "t"}, num_labels=3,
                    chunk=5, commit_every=1, workers=1)
    with pytest.raises(FeddfError, match="Input/output error") as err:
        for i in range(0, 40, 5):
            w.append(pattern(i, i + 5), labels_of(i, i + 5))
        w.finish()
    assert "\n" not in str(err.value) and "incomplete" in str(err.value)
    w.close()
    with open_h5_read(q) as f:
        assert not bool(f.attrs["complete"]) and int(f[fmt.COMMITTED][()]) < 40


def test_default_commit_group_is_8_mib_of_images(tmp_path):
    w = CacheWriter(tmp_path / "d.h5", n=10_000, channels=3, resolution=32, attrs={"kind": "imported", "source": "t"},
                    num_labels=0)
    try:
        assert w.chunk == 341 and w.commit_every == (8 << 20) // (341 * 3 * 32 * 32) == 8
    finally:
        w.close()


def test_kill9_inside_a_commit_group_then_resume(tmp_path, child):
    """Killed with blocks stored after the last commit: those are redone, the result is the uninterrupted cache."""
    p = tmp_path / "g.h5"
    r = child(p, 60, 5, 5, die_after=15, commit_every=3)
    assert r.returncode == -signal.SIGKILL, r.stderr
    with open_h5_read(p) as f:
        c = int(f[fmt.COMMITTED][()])
        assert c % 15 == 0 and 15 <= c < 60
        np.testing.assert_array_equal(f[fmt.IMAGES][:c], pattern(0, c))
    assert child(p, 60, 5, 5, commit_every=3).returncode == 0
    assert_same_as_uninterrupted(p, 60, tmp_path / "ref.h5")


def test_kill9_at_random_moments_then_resume(tmp_path, child):
    """Two external SIGKILLs at arbitrary points of the write loop (and resumes), then a clean finish."""
    p = tmp_path / "r.h5"
    for delay in (0.15, 0.3):
        # >= 1.2 s of sleeps per full run (400 blocks x 3 ms), so even the fast parallel writer is still mid-run when
        # each kill arrives, however idle the machine
        proc = child(p, 4000, 10, 7, sleep=0.003, wait=False)
        assert proc.stdout.readline().startswith("start")  # the cache exists and blocks are being written
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    with open_h5_read(p) as f:
        assert 0 < f[fmt.COMMITTED][()] < 4000
    r = child(p, 4000, 10, 7)
    assert r.returncode == 0, r.stderr
    with open_h5_read(p) as f:
        np.testing.assert_array_equal(f[fmt.IMAGES][:], pattern(0, 4000))
        np.testing.assert_array_equal(f[fmt.LABELS][:], labels_of(0, 4000))
        np.testing.assert_array_equal(f[fmt.LABEL_COUNTS][:], np.bincount(labels_of(0, 4000)))


def test_swmr_reader_sees_only_committed_images(tmp_path, child):
    p = tmp_path / "s.h5"
    proc = child(p, 120, 6, 2, sleep=0.02, wait=False)
    assert proc.stdout.readline().startswith("start")
    with pytest.raises(FeddfError, match="being written by another process"):  # one writer at a time
        CacheWriter(p, n=120, channels=C, resolution=R, attrs={"kind": "imported", "source": "test"}, num_labels=3)
    seen = set()
    deadline = time.time() + 60
    with h5py.File(p, "r", swmr=True, locking=False) as f:  # a real concurrent reader, opened mid-write
        while proc.poll() is None and time.time() < deadline:
            f[fmt.COMMITTED].refresh()
            c = int(f[fmt.COMMITTED][()])
            f[fmt.IMAGES].refresh()
            f[fmt.LABELS].refresh()
            np.testing.assert_array_equal(f[fmt.IMAGES][:c], pattern(0, c))
            np.testing.assert_array_equal(f[fmt.LABELS][:c], labels_of(0, c))
            seen.add(c)
            time.sleep(0.01)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    partial = {c for c in seen if 0 < c < 120}
    assert len(partial) >= 3, seen  # we really read while it was being written
    assert all(c % 6 == 0 for c in partial)


def test_refusals_never_touch_other_files(tmp_path):
    txt = tmp_path / "notes.h5"
    txt.write_bytes(b"my precious notes")
    with pytest.raises(FeddfError, match="not a feddf cache"):
        CacheWriter(txt, n=3, channels=C, resolution=R, attrs={}, force=True)
    assert txt.read_bytes() == b"my precious notes"
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    before = other.read_bytes()
    with pytest.raises(FeddfError, match="not a feddf cache"):
        CacheWriter(other, n=3, channels=C, resolution=R, attrs={}, force=True)
    assert other.read_bytes() == before and probe_cache(other) is None
    with pytest.raises(FeddfError, match="cannot"):
        CacheWriter(txt / "sub.h5", n=3, channels=C, resolution=R, attrs={})


def test_different_config_refused_force_replaces(tmp_path):
    p = tmp_path / "d.h5"
    write_all(p, 10)
    with pytest.raises(FeddfError, match=r"different config \(n: cache has 10, now 11"):
        CacheWriter(p, n=11, channels=C, resolution=R, attrs={"kind": "imported", "source": "test"}, num_labels=3)
    with pytest.raises(FeddfError, match="source: cache has 'test', now 'other'"):
        CacheWriter(p, n=10, channels=C, resolution=R, attrs={"kind": "imported", "source": "other"}, num_labels=3)
    assert probe_cache(p)["n_requested"] == 10
    before = p.read_bytes()
    new = dict(n=11, channels=C, resolution=R, attrs={"kind": "imported", "source": "x"}, num_labels=3, chunk=5)
    w = CacheWriter(p, force=True, **new)
    assert w.committed == 0 and not w.resumed
    w.append(pattern(0, 7), labels_of(0, 7))  # one chunk committed in the staged replacement, then "interrupted"
    w.close()
    # --force builds the replacement beside the old cache: until it is complete the old one is byte-identical
    staged = staging_path(p)
    assert p.read_bytes() == before and probe_cache(p)["n_requested"] == 10 and probe_cache(staged)["n_requested"] == 11
    w = CacheWriter(p, force=True, **new)  # the same --force again resumes the staged file
    assert w.resumed and w.committed == 7 and p.read_bytes() == before
    w.append(pattern(7, 11), labels_of(7, 11))
    w.finish()  # complete: swapped in, the staged name is gone
    assert probe_cache(p)["n_requested"] == 11 and not staged.exists()
    with open_h5_read(p) as f:
        np.testing.assert_array_equal(f[fmt.IMAGES][:], pattern(0, 11))
    w = CacheWriter(p, force=True, n=12, channels=C, resolution=R, attrs={"kind": "imported", "source": "y"},
                    num_labels=3)
    w.close()  # a staged file of another config is started again, never resumed
    w = CacheWriter(p, force=True, **new)
    assert w.committed == 0 and not w.resumed
    w.close()


def test_clear_write_flags_refuses_bad_checksum(tmp_path):
    p = tmp_path / "f.h5"
    with h5py.File(p, "w", libver="latest") as f:
        f["a"] = 1
    raw = bytearray(p.read_bytes())
    raw[11] = 1  # flags set but checksum not updated: not a superblock we understand
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum"):
        clear_write_flags(p)
    assert p.read_bytes() == bytes(raw)


def test_virtual_cache_over_shards(tmp_path):
    shards = []
    for k, (lo, hi) in enumerate([(0, 7), (7, 16)]):
        s = tmp_path / f"v.shard-{k}-of-2.h5"
        w = CacheWriter(s, n=hi - lo, channels=C, resolution=R, num_labels=3, num_targets=2, chunk=4,
                        attrs={"kind": "generated", "shard_start": lo, "shard_index": k, "shard_world": 2},
                        identity={"kind": "generated", "shard_start": lo, "shard_index": k, "shard_world": 2})
        w.append(pattern(lo, hi), labels_of(lo, hi), targets=np.arange(lo, hi) % 2)
        w.finish()
        shards.append(s)
    out = write_virtual_cache(tmp_path / "v.h5", shards)
    cwd = os.getcwd()
    os.chdir("/")  # relative shard names resolve against the cache's folder, not the cwd
    try:
        with open_h5_read(out) as f:
            np.testing.assert_array_equal(f[fmt.IMAGES][:], pattern(0, 16))
            np.testing.assert_array_equal(f[fmt.LABELS][:], labels_of(0, 16))
            np.testing.assert_array_equal(f[fmt.TARGETS][:], np.arange(16) % 2)
            np.testing.assert_array_equal(f[fmt.LABEL_COUNTS][:], np.bincount(labels_of(0, 16)))
            assert f[fmt.COMMITTED][()] == 16 and bool(f.attrs["complete"]) and f[fmt.IMAGES].is_virtual
            assert json.loads(f.attrs["identity"])["n"] == 16 and "shard_start" not in f.attrs
    finally:
        os.chdir(cwd)


def test_uncompressed_image_chunks_start_on_1mib_boundaries(tmp_path):
    from feddf.cache.writer import CHUNK_ALIGN

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3000, 3, 32, 32), dtype=np.uint8)
    sizes = {}
    for comp in ("none", "lzf"):
        path = tmp_path / f"{comp}.h5"
        with CacheWriter(path, n=len(x), channels=3, resolution=32, attrs={"kind": "imported", "source": "t"},
                         num_labels=10, compression=comp) as w:
            w.append(x, rng.integers(0, 10, len(x)))
            w.finish()
        with h5py.File(path, "r") as f:
            ds = f[fmt.IMAGES]
            offsets = [ds.id.get_chunk_info(i).byte_offset for i in range(ds.id.get_num_chunks())]
            assert np.array_equal(ds[:], x)  # alignment changes the layout, never the data
        sizes[comp] = path.stat().st_size
        aligned = [o % CHUNK_ALIGN == 0 for o in offsets]
        assert all(aligned) if comp == "none" else not all(aligned)  # compressed chunks stay packed
        if comp == "none":  # padding: each chunk's slack to 1 MiB plus the gap after the metadata, no more
            assert sizes[comp] <= (len(offsets) + 1) * CHUNK_ALIGN + (256 << 10)


def test_caches_written_with_libver_latest_and_lzf_still_open_and_resume(tmp_path):
    """Caches from before the v110 bounds (libver='latest', lzf chunks): readable, and an incomplete one resumes."""
    new = tmp_path / "new.h5"
    w = CacheWriter(new, n=40, channels=C, resolution=R, attrs={"kind": "imported", "source": "test"}, num_labels=3,
                    chunk=5, compression="lzf")
    w.append(pattern(0, 17), labels_of(0, 17))
    w.close()  # incomplete, 17 committed
    old = tmp_path / "old.h5"
    with h5py.File(new, "r") as src, h5py.File(old, "w", libver="latest") as dst:  # the same cache, old-style file
        for name in src:
            src.copy(name, dst)
        dst.attrs.update(src.attrs)
    assert read_superblock(old).version == 3
    with open_h5_read(old) as f:
        assert f[fmt.IMAGES].compression == "lzf" and f[fmt.COMMITTED][()] == 17
    write_all(old, 40, chunk=5, compression="lzf")  # resumes at 17 with the same config
    with open_h5_read(old) as f:
        np.testing.assert_array_equal(f[fmt.IMAGES][:], pattern(0, 40))
        np.testing.assert_array_equal(f[fmt.LABEL_COUNTS][:], np.bincount(labels_of(0, 40), minlength=3))
        assert bool(f.attrs["complete"])
