"""`--force` never loses the old cache: a failing or interrupted `feddf gen --force` / `feddf cache import --force`
(a generator that raises, an undecodable image, SIGINT, SIGTERM; torchrun shards too) leaves it byte-identical and
readable; the same --force command then resumes the staged replacement and swaps it in when complete.

    .venv/bin/python -m pytest -q tests/test_force_replace.py
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from feddf.cache import format as fmt
from feddf.cache.reader import open_cache
from feddf.cache.replace import staging_path
from tests.conftest import random_dcgan_checkpoint, run_cli
from tests.test_corrupt_inputs import one_line_error


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    ok = random_dcgan_checkpoint(d / "ok.pth", nc=1)
    sd = torch.load(ok, weights_only=True)
    torch.save({k: t * 1e25 if t.dim() == 4 else t for k, t in sd.items()}, d / "overflow.pth")  # NaN/inf outputs
    return ok, d / "overflow.pth"


def gen(ckpt, out, n, *extra):
    return ["gen", "--generator", "dcgan", "--checkpoint", str(ckpt), "--n", str(n), "--resolution", "16",
            "--chunk-images", "100", "--out", str(out), "--quiet", "--json", *extra]


def test_gen_force_that_fails_leaves_the_old_cache_byte_identical(tmp_path, ckpts):
    ok, overflow = ckpts
    out = tmp_path / "c.h5"
    run_cli(*gen(ok, out, 300), check=True)
    before = sha(out)
    one_line_error(run_cli(*gen(overflow, out, 300, "--force", "--batch-size", "64")), "NaN/inf", "batch 0")
    assert sha(out) == before and open_cache(out).complete  # untouched, still opens
    assert staging_path(out).exists()  # the failed replacement stays beside it, hidden
    from feddf.federated.sources import newest_generated_cache

    assert newest_generated_cache(tmp_path) == out  # never the (newer, partial) staged file
    r = run_cli(*gen(ok, out, 300, "--force", "--seed", "1"), check=True)
    assert json.loads(r.stdout)["generated"] == 300 and sha(out) != before
    assert not staging_path(out).exists() and open_cache(out).attrs["seed"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_gen_force_interrupted_by_a_signal_keeps_the_old_cache_then_resumes(tmp_path, ckpts, sig):
    ok, _ = ckpts
    out = tmp_path / "c.h5"
    run_cli(*gen(ok, out, 200), check=True)
    before = sha(out)
    # 12 000 images: on an idle machine 3 000 took ~2 s, short enough that a late first read of the staged file
    # could see the run at its end and the signal land after it finished (CI saw rc 0 once)
    n = 12000
    cmd = [sys.executable, "-m", "feddf", *gen(ok, out, n, "--force", "--batch-size", "5")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    staged, committed, deadline = staging_path(out), 0, time.time() + 120
    try:
        while committed < 100 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
            if staged.exists():
                try:
                    with h5py.File(staged, "r", swmr=True, locking=False) as f:
                        committed = int(f[fmt.COMMITTED][()])
                except OSError:
                    pass
        assert 100 <= committed < n, proc.stderr.read() if proc.poll() is not None else committed
        proc.send_signal(sig)  # mid-generation of the replacement
        assert proc.wait(timeout=60) != 0
    finally:
        proc.kill()
    assert sha(out) == before and open_cache(out).n == 200  # the old cache: byte-identical and usable
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)  # the same --force command
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["resumed_from"] >= 100 and s["generated"] == n - s["resumed_from"]
    assert not staged.exists() and open_cache(out).n == n and open_cache(out).complete
    ref = tmp_path / "ref.h5"  # the resumed replacement equals an uninterrupted run
    run_cli(*gen(ok, ref, n, "--batch-size", "64"), check=True)
    with h5py.File(out, "r") as a, h5py.File(ref, "r") as b:
        assert np.array_equal(a[fmt.IMAGES][:], b[fmt.IMAGES][:])


def _png_folder(root, n_per_class=6, size=8, truncate=None):
    from PIL import Image

    rng = np.random.default_rng(0)
    for k in ("cat", "dog"):
        (root / k).mkdir(parents=True)
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / k / f"{i}.png")
    if truncate:
        p = root / truncate
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])  # header intact, pixel data cut: fails only when decoded
    return root


def test_import_force_with_a_truncated_png_leaves_the_old_cache_byte_identical(tmp_path):
    out = tmp_path / "c.h5"
    run_cli("cache", "import", f"folder:{_png_folder(tmp_path / 'a')}", "--out", str(out), "-q", check=True)
    before = sha(out)
    bad = _png_folder(tmp_path / "b", n_per_class=7, truncate="dog/3.png")
    one_line_error(run_cli("cache", "import", f"folder:{bad}", "--out", str(out), "--force", "-q"),
                   "cannot decode image", "3.png")
    assert sha(out) == before and open_cache(out).n == 12
    (bad / "dog" / "3.png").unlink()
    run_cli("cache", "import", f"folder:{bad}", "--out", str(out), "--force", "-q", check=True)
    assert open_cache(out).n == 13 and not staging_path(out).exists()


@pytest.mark.slow
def test_torchrun_force_that_fails_leaves_shards_and_joined_cache_byte_identical(tmp_path, ckpts):
    ok, overflow = ckpts
    out = tmp_path / "m.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def torchrun(ckpt, *extra):
        args = gen(ckpt, out, 200, *extra)
        args[args.index("--n")] = "--num-images"
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               "-m", "feddf", *args], capture_output=True, text=True, timeout=300, env=env)

    assert torchrun(ok).returncode == 0
    files = [out] + sorted(tmp_path.glob("m.shard-*.h5"))
    assert len(files) == 3
    before = [sha(p) for p in files]
    r = torchrun(overflow, "--force", "--batch-size", "32")
    assert r.returncode != 0 and "NaN/inf" in r.stderr
    assert [sha(p) for p in files] == before and open_cache(out).complete  # nothing of the old job changed
    r = torchrun(ok, "--force", "--seed", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert all(sha(p) != b for p, b in zip(files, before))  # every shard and the joined cache replaced
    assert not list(tmp_path.glob(".*replacing*"))
    from feddf.cache.verify import verify_cache

    assert verify_cache(out).ok and open_cache(out).attrs["seed"] == 1
