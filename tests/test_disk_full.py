"""A full disk never yields a cache marked good: the writer checks free space before it starts, stops at the first
failing write with one line (exit 1, no summary, no traceback), never marks the cache complete, and a cache that ran
out of space resumes once there is room.

    .venv/bin/python -m pytest -q tests/test_disk_full.py

Real file systems: a small tmpfs (mounted here when we are root and may mount; these tests skip otherwise, and fail
under CI=true) and a file-size limit (RLIMIT_FSIZE, `ulimit -f`; writes past it fail with EFBIG, which works anywhere).
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from feddf.cache import format as fmt
from tests.conftest import random_dcgan_checkpoint


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size_bytes) -> a fresh tmpfs of that size under tmp_path; unmounted afterwards."""
    mounted = []

    def mount(size: int) -> Path:
        d = tmp_path / f"tmpfs{len(mounted)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True,
                           text=True)
        if r.returncode:
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI=true but cannot mount a tmpfs ({r.stderr.strip()}): run the tests as root")
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def feddf(*args, fsize: int | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, optionally under a file-size limit (ulimit -f)."""
    def limit():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", "feddf", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit, env={**os.environ, "OMP_NUM_THREADS": "1"})


def assert_one_line_failure(r: subprocess.CompletedProcess, match: str) -> None:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and match in lines[0], r.stderr
    assert "Traceback" not in r.stderr and "img/s" not in r.stdout and "wrote" not in r.stdout, r.stdout


def test_import_refused_before_starting_when_it_cannot_fit(tmpfs, fmnist_available):
    d = tmpfs(2 << 20)
    out = d / "fm.h5"  # 5000 x 784 B = 3.9 MB uncompressed on a 2 MiB file system
    r = feddf("cache", "import", "fashion-mnist", "--split", "test[:5000]", "--out", out, "--quiet")
    assert_one_line_failure(r, "not enough space")
    assert "MB free" in r.stderr
    assert not [p for p in d.iterdir() if p.name != "lost+found"]  # refused before any file was made


def test_gen_hitting_a_file_size_limit_stops_with_one_line(tmp_path):
    ckpt = random_dcgan_checkpoint(tmp_path / "netG.pth", nc=3)
    out = tmp_path / "g.h5"
    args = ["gen", "--generator", "dcgan", "--checkpoint", ckpt, "--n", 4000, "--resolution", 16, "--compression",
            "none", "--chunk-images", 200, "--workers", 2, "--out", out, "--quiet"]
    r = feddf(*args, fsize=1 << 20)  # ~1 MB: a few of the 3 MB fit
    assert_one_line_failure(r, "File too large")
    v = feddf("cache", "verify", out)  # whatever is left is never presented as a good cache
    assert v.returncode != 0 or "incomplete" in v.stdout + v.stderr
    with pytest.raises(Exception):
        with h5py.File(out, "r") as f:
            assert f.attrs["complete"]


WRITER = textwrap.dedent("""
    import os, sys
    import numpy as np
    from feddf.cache.writer import CacheWriter
    from feddf.errors import FeddfError
    path, filler = sys.argv[1], sys.argv[2]
    x = np.random.default_rng(0).integers(0, 256, (2000, 3, 32, 32), dtype=np.uint8)
    try:
        with CacheWriter(path, n=2000, channels=3, resolution=32, attrs={"kind": "imported", "source": "t"},
                         num_labels=10, compression="none", workers=2, commit_every=1) as w:
            start, filled = w.committed, filler == "-"
            for i in range(start, 2000, 256):
                w.append(x[i:i + 256], np.arange(i, min(i + 256, 2000)) % 10)
                if w.committed and not filled:  # someone else fills the disk while we write
                    filled = True
                    with open(filler, "wb") as f:
                        try:
                            while True:
                                f.write(b"\\1" * (64 << 10))
                                f.flush()
                        except OSError:
                            pass
            w.finish()
    except FeddfError as e:
        print("Error:", e, file=sys.stderr)
        sys.exit(1)
    print("done", start)
""")


def test_disk_filling_up_mid_write_leaves_a_resumable_incomplete_cache(tmp_path, tmpfs):
    d = tmpfs(12 << 20)  # the 6.2 MB cache fits at the start; the filler then takes the rest
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out, filler = d / "c.h5", d / "filler"
    r = subprocess.run([sys.executable, str(script), str(out), str(filler)], capture_output=True, text=True,
                       timeout=300, env=env)
    assert_one_line_failure(r, "No space left on device")
    assert "free some space and rerun" in r.stderr
    with h5py.File(out, "r", swmr=True) as f:  # consistent, committed prefix intact, never marked complete
        committed = int(f[fmt.COMMITTED][()])
        assert 0 < committed < 2000 and not f.attrs["complete"]
    v = subprocess.run([sys.executable, "-m", "feddf", "cache", "verify", str(out)], capture_output=True, text=True,
                       env=env)
    assert v.returncode == 0 and "incomplete" in v.stdout, v.stdout + v.stderr
    filler.unlink()
    r = subprocess.run([sys.executable, str(script), str(out), "-"], capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0 and r.stdout.split() == ["done", str(committed)], r.stderr
    x = np.random.default_rng(0).integers(0, 256, (2000, 3, 32, 32), dtype=np.uint8)
    with h5py.File(out, "r") as f:
        assert f.attrs["complete"] and int(f[fmt.COMMITTED][()]) == 2000
        np.testing.assert_array_equal(f[fmt.IMAGES][:], x)
        np.testing.assert_array_equal(f[fmt.LABEL_COUNTS][:], np.bincount(np.arange(2000) % 10))
