"""Corrupt or non-finite input is refused, never used: flipped bytes and unwritten chunks in caches (stream, train,
verify, preview, audit, gan-train), NaN/inf generator weights and outputs, import labels outside the class range.

    .venv/bin/python -m pytest -q tests/test_corrupt_inputs.py
"""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import torch

from feddf.cache import format as fmt
from feddf.cache.engine import ChunkStream
from feddf.cache.verify import record_path, verify_cache
from feddf.cache.writer import CacheWriter
from feddf.errors import FeddfError
from tests.conftest import random_dcgan_checkpoint, run_cli


def one_line_error(proc, *match):
    assert proc.returncode == 1, (proc.stdout, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr[-2000:]
    for m in match:
        assert m in lines[0], lines[0]
    return lines[0]


def write(path, n=300, c=1, r=28, chunk=64, compression="none"):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, c, r, r), dtype=np.uint8)
    with CacheWriter(path, n=n, channels=c, resolution=r, attrs={"kind": "generated", "source": "test"},
                     num_labels=10, compression=compression, chunk=chunk) as w:
        w.append(x, np.arange(n) % 10)
        w.finish()
    return x


def flip_byte(path, dataset=fmt.IMAGES, chunk=1, keep_mtime=False):
    """Flip one byte in the middle of a stored chunk (optionally putting the file's mtime back, as a careful
    vandal would: the verification record must still notice, through ctime)."""
    st = os.stat(path)
    with h5py.File(path, "r") as f:
        ci = f[dataset].id.get_chunk_info(chunk)
    with open(path, "r+b") as fh:
        fh.seek(ci.byte_offset + ci.size // 2)
        b = fh.read(1)
        fh.seek(ci.byte_offset + ci.size // 2)
        fh.write(bytes([b[0] ^ 0x10]))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_stream_refuses_a_flipped_byte_even_in_a_file_verified_before(tmp_path):
    p = tmp_path / "c.h5"
    x = write(p)
    s = ChunkStream(p, 50, seed=0)
    got = np.concatenate([b for b, _ in s])
    assert sorted(map(bytes, got)) == sorted(map(bytes, x))  # sound file: the fast path serves it
    assert s.source._handles()[0].raw_ok and record_path(p).is_file()  # verified once, recorded beside it
    s.close()
    flip_byte(p, keep_mtime=True)
    for kw in ({}, {"verify_checksums": True}):
        with pytest.raises(FeddfError, match=r"corrupt|cannot read"):
            s = ChunkStream(p, 50, seed=0, **kw)
            for _ in s:
                pass
    with pytest.raises(FeddfError, match=r"is corrupt and was not used: /images\[64:128\] \(chunk 1\)"):
        ChunkStream(p, 50)


def test_a_passing_verify_records_the_file_for_the_fast_path(tmp_path):
    from feddf.cache.verify import file_identity

    p = tmp_path / "v.h5"
    write(p, n=100)
    assert verify_cache(p).ok
    rec = json.loads(record_path(p).read_text())
    assert rec["file"] == file_identity(p) and rec["n"] == 100 and rec["chunks_checked"] >= 2
    s = ChunkStream(p, 50)
    assert s.source.trusted == [file_identity(p)] and sum(len(b) for b, _ in s) == 100


def test_train_refuses_a_corrupt_uncompressed_cache(tmp_path, fmnist_available):
    from tests.test_train import ENV, TINY

    p = tmp_path / "gan.h5"
    write(p, n=200)
    flip_byte(p, chunk=0)
    proc = run_cli("train", *TINY, "--distill-source", "gan", "--cache", str(p), "--out", str(tmp_path / "run"),
                   env=ENV)
    one_line_error(proc, "corrupt", str(p))


def test_unwritten_chunk_in_the_committed_range_fails_verify_and_the_stream(tmp_path):
    p = tmp_path / "hole.h5"
    x = np.random.default_rng(1).integers(0, 256, (30, 1, 8, 8), dtype=np.uint8)
    w = CacheWriter(p, n=30, channels=1, resolution=8, attrs={"kind": "imported", "source": "t"}, num_labels=3,
                    chunk=10, compression="none")
    w.append(x[:10], np.arange(10) % 3)  # chunk 0 committed, then the writer stops
    w.close()
    with h5py.File(p, "r+") as f:  # chunk 2 written and everything marked done, chunk 1 never written
        f[fmt.IMAGES][20:30] = x[20:30]
        f[fmt.LABELS][20:30] = np.arange(20, 30) % 3
        f[fmt.COMMITTED][()] = 30
        f[fmt.LABEL_COUNTS][...] = np.bincount(np.r_[np.arange(10), np.arange(20, 30)] % 3, minlength=3)
        f.attrs["complete"] = True
    rep = verify_cache(p)
    assert not rep.ok and any("never written" in q and "chunk 1, [10:20]" in q for q in rep.problems), rep.problems
    proc = run_cli("cache", "verify", str(p), "-q")
    assert proc.returncode == 1 and "never written" in proc.stderr and "Traceback" not in proc.stderr
    for kw in ({}, {"verify_checksums": True}):
        with pytest.raises(FeddfError, match="never written"):
            ChunkStream(p, 8, **kw)
    assert not record_path(p).exists()


def test_preview_audit_and_gan_train_report_checksum_failures_in_one_line(tmp_path):
    img = tmp_path / "img.h5"
    write(img, n=200)
    flip_byte(img, chunk=0)
    one_line_error(run_cli("cache", "preview", str(img), "--out", str(tmp_path / "g.png")), "corrupt", "verify")
    one_line_error(run_cli("gan-train", "--data", str(img), "--out", str(tmp_path / "gan"), "--epochs", "1",
                           "--quiet"), "corrupt", str(img))
    lab = tmp_path / "lab.h5"
    write(lab, n=200)
    flip_byte(lab, dataset=fmt.LABELS, chunk=0)
    one_line_error(run_cli("audit", str(lab), "--out", str(tmp_path / "rep")), "corrupt", "/labels")


# ------------------------------------------------------------------ generators: NaN / inf weights and outputs
@pytest.fixture(scope="module")
def dcgans(tmp_path_factory):
    d = tmp_path_factory.mktemp("nan")
    ok = random_dcgan_checkpoint(d / "ok.pth", nc=1)
    sd = torch.load(ok, weights_only=True)
    first = next(k for k in sd if k.endswith("weight") and sd[k].dim() == 4)
    out = {"ok": ok}
    for name, v in (("nan", float("nan")), ("inf", float("inf"))):
        bad = {k: t.clone() for k, t in sd.items()}
        bad[first].view(-1)[3] = v
        torch.save(bad, d / f"{name}.pth")
        out[name] = d / f"{name}.pth"
    # finite weights whose products overflow float32: the forward itself produces inf/NaN
    torch.save({k: t * 1e25 if t.dim() == 4 else t.clone() for k, t in sd.items()}, d / "overflow.pth")
    out["overflow"] = d / "overflow.pth"
    return out


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_gen_refuses_a_checkpoint_with_non_finite_weights(tmp_path, dcgans, kind):
    out = tmp_path / "g.h5"
    proc = run_cli("gen", "--generator", "dcgan", "--checkpoint", str(dcgans[kind]), "--n", "64", "--out", str(out),
                   "--quiet")
    one_line_error(proc, "NaN/inf", "main.0.weight", str(dcgans[kind]))
    assert not out.exists()


def test_gen_refuses_non_finite_generator_outputs_naming_generator_and_batch(tmp_path, dcgans):
    out = tmp_path / "g.h5"
    proc = run_cli("gen", "--generator", "dcgan", "--checkpoint", str(dcgans["overflow"]), "--n", "100",
                   "--batch-size", "32", "--out", str(out), "--quiet")
    one_line_error(proc, "generator dcgan produced NaN/inf values in batch 0 (images 0..31)")
    with h5py.File(out, "r", swmr=True) as f:  # nothing of it was committed
        assert int(f[fmt.COMMITTED][()]) == 0 and not f.attrs["complete"]


# ------------------------------------------------------------------ import labels
def test_npz_labels_are_bounded_by_the_declared_or_derived_classes(tmp_path):
    from feddf.data.importers import MAX_CLASSES, import_source

    x = np.zeros((4, 1, 8, 8), np.uint8)
    huge = tmp_path / "huge.npz"
    np.savez(huge, x=x, y=np.array([0, 1, 10**9, 2]))
    with pytest.raises(FeddfError, match=rf"label 1000000000 \(image 2\) would make 1000000001 classes .*"
                                         rf"{MAX_CLASSES}"):
        import_source(f"npz:{huge}", tmp_path / "h.h5", progress=False)
    assert not (tmp_path / "h.h5").exists()
    declared = tmp_path / "declared.npz"
    np.savez(declared, x=x, y=np.array([0, 1, 7, 2]), num_classes=np.array(5))
    with pytest.raises(FeddfError, match=r"label 7 \(image 2\) is outside 0..4 for the 5 declared classes"):
        import_source(f"npz:{declared}", tmp_path / "d.h5", progress=False)
    named = tmp_path / "named.npz"
    np.savez(named, x=x, y=np.array([0, 1, 3, 2]), class_names=np.array(["a", "b", "c"]))
    with pytest.raises(FeddfError, match="outside 0..2"):
        import_source(f"npz:{named}", tmp_path / "n.h5", progress=False)
    good = tmp_path / "good.npz"
    np.savez(good, x=x, y=np.array([0, 1, 3, 2]), num_classes=np.array(100))
    out = import_source(f"npz:{good}", tmp_path / "g.h5", progress=False)
    with h5py.File(out, "r") as f:
        assert f[fmt.LABEL_COUNTS].shape == (100,) and int(f[fmt.LABEL_COUNTS][()].sum()) == 4
    proc = run_cli("cache", "import", f"npz:{huge}", "--out", str(tmp_path / "h2.h5"), "-q")
    one_line_error(proc, "would make 1000000001 classes")
