"""`feddf gen` determinism: batch sizes, kill -9 + resume (a real subprocess), a SWMR reader during generation, and
torchrun with 2 CPU processes (gloo) giving the same cache as one process.

    .venv/bin/python -m pytest -q tests/test_gen_resume.py
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
from click.testing import CliRunner

from feddf.cache import format as fmt
from feddf.cli import main
from tests.conftest import random_dcgan_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_dcgan_checkpoint(tmp_path_factory.mktemp("ckpt") / "netG.pth", nc=3)


def gen_args(ckpt, out, n, batch, *extra):
    return ["gen", "--generator", "dcgan", "--checkpoint", str(ckpt), "--n", str(n), "--resolution", "16",
            "--batch-size", str(batch), "--chunk-images", "100", "--out", str(out), "--quiet", "--json", *extra]


def in_process(args):
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def read(path):
    with h5py.File(path, "r", swmr=True) as f:
        return f[fmt.IMAGES][:], f[fmt.LABELS][:], f[fmt.COMMITTED][()], dict(f.attrs)


@pytest.mark.slow
def test_kill9_resume_swmr_reader_and_batch_size_independence(tmp_path, ckpt):
    # ~2 s of generation at batch 7: the writer commits every 0.25 s here (COMMIT_SECONDS; 8 MiB is 100+ chunks of
    # these images), so the reader sees several commits and the kill lands well before the end
    n = 6000
    ref = tmp_path / "ref.h5"
    in_process(gen_args(ckpt, ref, n, 64))
    ref_images, ref_labels, _, _ = read(ref)
    assert ref_images.std() > 5

    out = tmp_path / "k.h5"
    cmd = [sys.executable, "-m", "feddf", *gen_args(ckpt, out, n, 7)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    snapshots = []  # (committed, sha of images[:committed]) as a concurrent SWMR reader saw them
    deadline = time.time() + 120
    while not out.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    with h5py.File(out, "r", swmr=True, locking=False) as f:
        while time.time() < deadline and proc.poll() is None:
            f[fmt.COMMITTED].refresh()
            c = int(f[fmt.COMMITTED][()])
            f[fmt.IMAGES].refresh()
            snapshots.append((c, hashlib.sha256(f[fmt.IMAGES][:c].tobytes()).hexdigest()))
            if c >= n // 3:
                proc.send_signal(signal.SIGKILL)  # kill -9 mid-generation
                break
            time.sleep(0.005)
    assert proc.wait(timeout=60) == -signal.SIGKILL, proc.stderr.read()
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(out, "r")  # the stale superblock flags a killed HDF5 writer leaves
    _, _, killed_at, attrs = read(out)
    assert 0 < killed_at < n and not attrs["complete"]

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # the same command again
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["resumed_from"] >= killed_at and summary["generated"] == n - summary["resumed_from"]
    images, labels, committed, attrs = read(out)
    assert committed == n and attrs["complete"]
    assert np.array_equal(images, ref_images) and np.array_equal(labels, ref_labels)  # batch 7 + kill == batch 64
    partial = [(c, h) for c, h in snapshots if 0 < c]
    assert len({c for c, _ in partial}) >= 2, snapshots  # the reader followed the writer
    for c, h in partial:  # what the reader saw was always committed, final data
        assert c % 100 == 0 and h == hashlib.sha256(ref_images[:c].tobytes()).hexdigest()


def test_biggan_same_bytes_for_any_batch_size(tmp_path):
    base = ["gen", "--generator", "biggan-deep-128", "--random-weights", "--n", "2", "--classes", "0-9", "--seed",
            "5", "--quiet", "--json", "--resolution", "24"]
    in_process(base + ["--batch-size", "1", "--out", str(tmp_path / "a.h5")])
    in_process(base + ["--batch-size", "2", "--out", str(tmp_path / "b.h5"), "--chunk-images", "1"])
    a, b = read(tmp_path / "a.h5"), read(tmp_path / "b.h5")
    assert a[0].std() > 1
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.slow
def test_torchrun_two_processes_match_single_process(tmp_path, ckpt):
    n = 300
    single = tmp_path / "single.h5"
    in_process(gen_args(ckpt, single, n, 32))
    out = tmp_path / "multi" / "m.h5"
    args = gen_args(ckpt, out, n, 16)
    args[args.index("--n")] = "--num-images"  # torchrun's own parser would take --n for an abbreviation
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "feddf", *args], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][0])
    assert summary["world"] == 2 and summary["generated"] == n
    shards = sorted(p.name for p in out.parent.glob("m.shard-*.h5"))
    assert shards == ["m.shard-0-of-2.h5", "m.shard-1-of-2.h5"]
    a, b = read(single), read(out)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and b[2] == n
    assert json.loads(b[3]["shards"]) == shards and bool(b[3]["complete"])
    assert json.loads(a[3]["identity"]) == json.loads(b[3]["identity"])
    with h5py.File(out, "r", swmr=True) as f:
        assert f[fmt.IMAGES].is_virtual and f[fmt.LABEL_COUNTS].shape == (0,)
    # the same command once more: every shard and the joined cache are complete, nothing is redone
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "feddf", *args], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][0])["generated"] == 0
