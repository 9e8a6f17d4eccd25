"""`feddf cache import|info|verify|preview` end to end (real CLI subprocesses on real files), and every bad input
refused with exit != 0 and one line, no traceback."""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from feddf.cache import format as fmt
from feddf.cache.writer import CacheWriter
from tests.conftest import run_cli


def one_line_error(proc, code=1, match=""):
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert match in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("sub", [[], ["import"], ["info"], ["verify"], ["preview"]])
def test_help(sub):
    proc = run_cli("cache", *sub, "--help")
    assert proc.returncode == 0 and "Usage: feddf cache" in proc.stdout


@pytest.fixture(scope="module")
def imported(tmp_path_factory, fmnist_available):
    out = tmp_path_factory.mktemp("cli") / "fm.h5"
    proc = run_cli("cache", "import", "fashion-mnist:test[:500]", "--out", str(out), "-q", check=True)
    assert "500 images 1x28x28" in proc.stdout
    return out


def test_info_text_and_json(imported):
    proc = run_cli("cache", "info", str(imported), check=True)
    assert "feddf-cache v1 (imported), complete" in proc.stdout and "500 committed of 500" in proc.stdout
    d = json.loads(run_cli("cache", "info", str(imported), "--json", check=True).stdout)
    assert d["n"] == 500 and d["channels"] == 1 and d["resolution"] == 28 and d["format_version"] == 1
    assert sum(d["label_counts"]) == 500 and d["bytes_per_image"] > 28 * 28
    assert d["attrs"]["source"] == "fashion-mnist:test[:500]" and d["fletcher32"] is True


def test_verify_sound_cache(imported):
    proc = run_cli("cache", "verify", str(imported), "-q")
    assert proc.returncode == 0 and proc.stdout.startswith("OK ") and "500 committed images" in proc.stdout
    d = json.loads(run_cli("cache", "verify", str(imported), "--json", "-q").stdout)
    assert d["ok"] is True and d["problems"] == [] and d["chunks_checked"] >= 2


def test_verify_catches_a_flipped_byte(imported, tmp_path):
    bad = tmp_path / "bad.h5"
    shutil.copy(imported, bad)
    with h5py.File(bad, "r") as f:
        ci = f[fmt.IMAGES].id.get_chunk_info(0)
    with open(bad, "r+b") as fh:  # flip one byte in the middle of the first image chunk
        fh.seek(ci.byte_offset + ci.size // 2)
        b = fh.read(1)
        fh.seek(ci.byte_offset + ci.size // 2)
        fh.write(bytes([b[0] ^ 0x01]))
    proc = run_cli("cache", "verify", str(bad), "-q")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "FAILED" in proc.stderr and "/images[0:" in proc.stderr and "checksum" in proc.stderr


def _copy_with_bumped_count(src, dst):
    """A copy of `src` whose coverage count of class 3 is one too high; returns it opened r+ for more damage."""
    shutil.copy(src, dst)
    f = h5py.File(dst, "r+")
    counts = f[fmt.LABEL_COUNTS][()]
    counts[3] += 1
    f[fmt.LABEL_COUNTS][...] = counts
    return f


def test_verify_catches_wrong_coverage_and_labels(imported, tmp_path):
    bad = tmp_path / "cov.h5"
    with _copy_with_bumped_count(imported, bad) as f:
        f[fmt.LABELS][7] = 42  # out of range for 10 classes
    proc = run_cli("cache", "verify", str(bad), "-q")
    assert proc.returncode == 1
    assert "outside -1..9" in proc.stderr


def test_verify_recount_mismatch(imported, tmp_path):
    bad = tmp_path / "cov2.h5"
    _copy_with_bumped_count(imported, bad).close()
    proc = run_cli("cache", "verify", str(bad), "-q")
    assert proc.returncode == 1 and "disagrees with a recount" in proc.stderr and "class 3" in proc.stderr


def test_verify_catches_a_truncated_file(imported, tmp_path):
    bad = tmp_path / "trunc.h5"
    data = imported.read_bytes()
    bad.write_bytes(data[: len(data) * 2 // 3])
    proc = run_cli("cache", "verify", str(bad), "-q")
    assert proc.returncode == 1 and "truncated" in proc.stderr


def test_preview_writes_a_png(imported, tmp_path):
    out = tmp_path / "grid.png"
    proc = run_cli("cache", "preview", str(imported), "--out", str(out), "--per-class", "4", check=True)
    assert "10x4 grid" in proc.stdout
    from PIL import Image

    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 200


def test_preview_of_unlabelled_cache(tmp_path):
    p = tmp_path / "u.h5"
    with CacheWriter(p, n=40, channels=3, resolution=8, attrs={"kind": "imported", "source": "t"},
                     compression="none") as w:
        w.append(np.random.default_rng(0).integers(0, 256, (40, 3, 8, 8), dtype=np.uint8))
        w.finish()
    proc = run_cli("cache", "preview", str(p), "--out", str(tmp_path / "u.png"), check=True)
    assert (tmp_path / "u.png").stat().st_size > 0 and "grid" in proc.stdout


def _h5(path, **attrs):
    with h5py.File(path, "w", libver="latest") as f:
        f["x"] = np.arange(3)
        f.attrs.update(attrs)
    return path


@pytest.mark.parametrize("cmd", ["info", "verify", "preview"])
def test_bad_inputs_are_refused_with_one_line(cmd, tmp_path, imported):
    extra = ["--out", str(tmp_path / "g.png")] if cmd == "preview" else []
    newer = tmp_path / "newer.h5"
    shutil.copy(imported, newer)
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = fmt.FORMAT_VERSION + 1
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(imported.read_bytes()[:5000])
    (tmp_path / "text.h5").write_text("not hdf5 at all\n")
    cases = {
        str(tmp_path / "missing.h5"): "not found",
        str(tmp_path / "text.h5"): "not an HDF5 file",
        str(_h5(tmp_path / "plain.h5")): "not a feddf cache",
        str(_h5(tmp_path / "nolayout.h5", format=fmt.FORMAT_NAME, format_version=1)): "no /images",
        str(newer): f"format version {fmt.FORMAT_VERSION + 1}",
        str(trunc): "truncated",
    }
    for path, match in cases.items():
        proc = run_cli("cache", cmd, path, *extra)
        if cmd == "verify":  # verify reports problems as a list (here: one) rather than a click error
            assert proc.returncode == 1 and match in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        else:
            one_line_error(proc, 1, match)


def test_import_refuses_bad_input_cleanly(tmp_path, imported):
    # (every bad source is covered in-process by test_import.py; here the CLI's exit code and one line)
    one_line_error(run_cli("cache", "import", "mnist", "--out", str(tmp_path / "a.h5")), 1, "unknown import source")
    one_line_error(run_cli("cache", "import", f"folder:{tmp_path}/nope", "--out", str(tmp_path / "a.h5")), 1,
                   "no such folder")
    # an existing cache with another config is not overwritten; a non-cache file is never touched
    before = imported.read_bytes()
    one_line_error(run_cli("cache", "import", "fashion-mnist:test[:50]", "--out", str(imported), "-q"), 1,
                   "different config")
    assert imported.read_bytes() == before
    other = tmp_path / "notes.txt"
    other.write_text("precious")
    one_line_error(run_cli("cache", "import", "fashion-mnist:test[:50]", "--out", str(other), "-q"), 1,
                   "not a feddf cache")
    assert other.read_text() == "precious"
    assert not (tmp_path / "a.h5").exists()
    # usage errors exit 2
    proc = run_cli("cache", "import", "fashion-mnist", "--out", str(tmp_path / "b.h5"), "--resolution", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert run_cli("cache", "import", "fashion-mnist").returncode == 2  # --out missing
