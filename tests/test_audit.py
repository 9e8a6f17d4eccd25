"""`feddf audit`: coverage maths on hand-made histograms, and the real CLI on real caches/classifiers in tmp dirs."""
from __future__ import annotations

import json
import math
import re

import h5py
import numpy as np
import pytest

from feddf.audit import coverage as cov
from feddf.errors import FeddfError
from tests.conftest import run_cli
from tests.test_audit_fixtures import make_cache, make_classifier

def _invoke(*args):
    """The real click group in-process (each subprocess costs ~3 s of torch import on the shared test machine)."""
    from click.testing import CliRunner

    from feddf.cli import main

    res = CliRunner().invoke(main, list(args))
    res.returncode = res.exit_code
    return res


# ----------------------------------------------------------------------------------------------- pure coverage maths


def test_entropy_and_effective_classes_on_hand_made_histograms():
    assert cov.entropy([5, 5, 5, 5]) == pytest.approx(math.log(4))
    assert cov.effective_classes([5, 5, 5, 5]) == pytest.approx(4.0)
    assert cov.tv_to_uniform([5, 5, 5, 5]) == pytest.approx(0.0)
    # one class: entropy 0, one effective class, TV = 1 - 1/K
    assert cov.entropy([10, 0, 0, 0]) == 0.0
    assert cov.effective_classes([10, 0, 0, 0]) == pytest.approx(1.0)
    assert cov.tv_to_uniform([10, 0, 0, 0]) == pytest.approx(0.75)
    # shares (1/2, 1/4, 1/4): H = 1.5 ln 2, exp(H) = 2^1.5; TV = 0.5 (|1/2-1/3| + 2 |1/4-1/3|) = 1/6
    assert cov.entropy([2, 1, 1]) == pytest.approx(1.5 * math.log(2))
    assert cov.effective_classes([2, 1, 1]) == pytest.approx(2 ** 1.5)
    assert cov.tv_to_uniform([2, 1, 1]) == pytest.approx(1 / 6)
    # an empty histogram is not an error
    assert cov.effective_classes([0, 0]) == 0.0 and cov.tv_to_uniform([]) == 0.0


def test_histogram_summary_imbalance_numbers():
    s = cov.histogram_summary([6, 3, 1, 0], ["a", "b", "c", "d"])
    assert s["total"] == 10 and s["num_classes"] == 4 and s["classes_present"] == 3
    assert s["min_share"] == 0.0 and s["max_share"] == pytest.approx(0.6)
    assert s["max_min_ratio"] == pytest.approx(6.0)
    assert [r["name"] for r in s["per_class"]] == ["a", "b", "c", "d"]
    assert [r["count"] for r in s["per_class"]] == [6, 3, 1, 0]


def test_class_counts_equal_a_direct_count_and_skip_unlabeled():
    rng = np.random.default_rng(1)
    labels = rng.integers(-1, 7, 500)
    counts, unlabeled = cov.class_counts(labels, 9)
    assert counts.shape == (9,) and unlabeled == int((labels == -1).sum())
    for k in range(9):
        assert counts[k] == int((labels == k).sum())
    with pytest.raises(FeddfError, match="outside the label space"):
        cov.class_counts([0, 5], 3)


def test_labeler_summary_confidence_low_share_and_agreement():
    pred = np.array([0, 0, 1, 1, 1, 2])
    conf = np.array([0.9, 0.3, 0.6, 0.8, 0.4, 1.0])
    targets = np.array([0, 1, 1, -1, 1, 2])
    s = cov.labeler_summary(pred, conf, 4, None, targets, low_confidence=0.5)
    assert [r["count"] for r in s["per_class"]] == [2, 3, 1, 0]
    assert s["per_class"][0]["mean_confidence"] == pytest.approx(0.6)
    assert s["per_class"][1]["mean_confidence"] == pytest.approx(0.6)
    assert s["per_class"][3]["mean_confidence"] is None
    assert s["low_confidence_share"] == pytest.approx(2 / 6)
    assert s["mean_confidence"] == pytest.approx(conf.mean())
    # mapped: indices 0,1,2,4,5 -> pred==target at 0,2,4,5
    assert s["agreement"] == {"mapped": 5, "unmapped": 1, "agreement": pytest.approx(4 / 5)}


# ------------------------------------------------------------------------------------------------------ CLI, real files

@pytest.fixture()
def cache_and_labeler(tmp_path):
    names = [f"imagenet_{i}" for i in range(10)]
    data = make_cache(tmp_path / "src.h5", n=150, num_labels=10, num_targets=4, label_names=names,
                      target_names=["t0", "t1", "t2", "t3"], seed=3)
    clf = make_classifier(tmp_path / "labeler.pt", num_classes=4, names=["t0", "t1", "t2", "t3"])
    return tmp_path / "src.h5", clf, data


def _html_images(html: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)


def test_audit_cli_writes_reports_with_counts_equal_to_the_cache(cache_and_labeler, tmp_path):
    src, clf, _ = cache_and_labeler
    out = tmp_path / "rep"
    proc = run_cli("audit", str(src), "--labeler", str(clf), "--out", str(out), "--min-effective-classes", "1", "-q",
                   check=True)
    assert "src" in proc.stdout and "coverage gate (min effective classes 1): passed" in proc.stdout
    assert "eff.cls (labeler)" in proc.stdout
    for f in ("report.json", "report.md", "report.html"):
        assert (out / f).is_file()
    rep = json.loads((out / "report.json").read_text())
    (s,) = rep["sources"]
    with h5py.File(src, "r", locking=False) as f:   # direct count of the cache's own arrays
        n = int(f["committed"][()])
        labels, targets = f["labels"][:n], f["targets"][:n]
    assert s["n"] == n == 150
    assert [r["count"] for r in s["conditioning"]["per_class"]] == [int((labels == k).sum()) for k in range(10)]
    assert [r["name"] for r in s["conditioning"]["per_class"]] == [f"imagenet_{i}" for i in range(10)]
    assert [r["count"] for r in s["targets"]["per_class"]] == [int((targets == k).sum()) for k in range(4)]
    assert s["targets"]["unlabeled"] == int((targets < 0).sum())
    lab = s["labeler"]
    assert lab["n"] == 150 and sum(r["count"] for r in lab["per_class"]) == 150
    assert lab["agreement"]["mapped"] == int((targets >= 0).sum())
    assert 1.0 <= lab["effective_classes"] <= 4.0
    assert rep["versions"]["torch"] and rep["config"]["labeler"] == str(clf)
    assert rep["fid"] == {"requested": False}

    html = (out / "report.html").read_text()
    imgs = _html_images(html)
    assert len(imgs) == len(s["figures"]) == 7    # 3 histograms, confidence, mean conf, 2 grids
    assert all(i.startswith("data:image/png;base64,") for i in imgs)
    assert not re.search(r'(src|href)="(?!data:)', html)       # nothing external: no links, scripts, images
    for rel in s["figures"].values():
        assert (out / rel).is_file() and f"]({rel})" in (out / "report.md").read_text()


def test_audit_json_flag_prints_report_json(cache_and_labeler, tmp_path):
    src, _, _ = cache_and_labeler
    out = tmp_path / "rep"
    proc = _invoke("audit", str(src), "--out", str(out), "--json", "-q")
    assert proc.exit_code == 0, proc.output
    printed = json.loads(proc.stdout)
    assert printed == json.loads((out / "report.json").read_text())
    assert printed["sources"][0]["labeler"] is None


def test_min_effective_classes_gate_exits_1_with_one_line(cache_and_labeler, tmp_path):
    src, _, _ = cache_and_labeler
    bad = run_cli("audit", str(src), "--out", str(tmp_path / "b"), "--min-effective-classes", "9", "-q")
    assert bad.returncode == 1
    err = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "--min-effective-classes 9" in err[0] and "targets" in err[0]
    rep = json.loads((tmp_path / "b" / "report.json").read_text())   # the report is still written
    assert rep["gate"]["passed"] is False and rep["gate"]["sources"][0]["metric"] == "targets"


def test_limit_scans_a_subset_and_duplicate_stems_get_unique_names(tmp_path):
    (tmp_path / "x").mkdir()
    make_cache(tmp_path / "src.h5", n=80, seed=1)
    make_cache(tmp_path / "x" / "src.h5", n=60, seed=2)
    clf = make_classifier(tmp_path / "lab.pt", num_classes=3)
    out = tmp_path / "rep"
    res = _invoke("audit", str(tmp_path / "src.h5"), str(tmp_path / "x" / "src.h5"), "--labeler", str(clf), "--limit",
                  "25", "--out", str(out), "-q")
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in rep["sources"]] == ["src", "src-2"]
    assert [s["n"] for s in rep["sources"]] == [80, 60]
    assert [s["n_scanned"] for s in rep["sources"]] == [25, 25]
    assert [s["labeler"]["n"] for s in rep["sources"]] == [25, 25]
    assert rep["sources"][0]["conditioning"]["total"] == 80     # class counts always use every image


def test_partial_cache_uses_only_committed_images(tmp_path):
    data = make_cache(tmp_path / "part.h5", n=100, chunk=16, finish=False)
    with h5py.File(tmp_path / "part.h5", "r", locking=False) as f:
        committed = int(f["committed"][()])
    assert 0 < committed <= 100
    proc = _invoke("audit", str(tmp_path / "part.h5"), "--out", str(tmp_path / "rep"), "--json", "-q")
    s = json.loads(proc.stdout)["sources"][0]
    assert s["n"] == committed and s["conditioning"]["total"] == committed
    assert [r["count"] for r in s["conditioning"]["per_class"]] == \
        [int((data["labels"][:committed] == k).sum()) for k in range(10)]


def test_labeler_recorded_at_generation_is_reported(tmp_path):
    data = make_cache(tmp_path / "g.h5", n=90, num_targets=3, labeler_classes=3, target_names=["a", "b", "c"])
    proc = _invoke("audit", str(tmp_path / "g.h5"), "--out", str(tmp_path / "rep"), "--json", "-q")
    rec = json.loads(proc.stdout)["sources"][0]["recorded_labeler"]
    assert [r["count"] for r in rec["per_class"]] == [int((data["pred"] == k).sum()) for k in range(3)]
    assert [r["name"] for r in rec["per_class"]] == ["a", "b", "c"]
    assert rec["low_confidence_share"] == pytest.approx(float((data["conf"] < 0.5).mean()))
    mapped = data["targets"] >= 0
    assert rec["agreement"]["agreement"] == pytest.approx(float((data["pred"][mapped] == data["targets"][mapped]).mean()))


def _one_line_error(proc, *needles):
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    for n in needles:
        assert n in lines[0]


def test_bad_inputs_fail_with_one_line_and_write_nothing(cache_and_labeler, tmp_path):
    src, clf, _ = cache_and_labeler
    out = tmp_path / "never"
    _one_line_error(run_cli("audit", str(tmp_path / "missing.h5"), "--out", str(out)), "missing.h5")
    (tmp_path / "notes.txt").write_text("hello")
    _one_line_error(_invoke("audit", str(tmp_path / "notes.txt"), "--out", str(out)), "not an HDF5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    _one_line_error(_invoke("audit", str(tmp_path / "other.h5"), "--out", str(out)), "not a feddf cache")
    _one_line_error(_invoke("audit", str(src), "--labeler", str(tmp_path / "nolab"), "--out", str(out)), "--labeler")
    _one_line_error(_invoke("audit", str(src), "--labeler", str(tmp_path / "notes.txt"), "--out", str(out)),
                    "notes.txt")
    _one_line_error(_invoke("audit", str(src), "--fid", "--out", str(out)), "--reference")
    _one_line_error(_invoke("audit", str(src), "--reference", "nosuchset:test", "--out", str(out)), "nosuchset")
    _one_line_error(_invoke("audit", str(src), "--reference", str(tmp_path / "notes.txt"), "--out", str(out)),
                    "--reference")
    assert not out.exists()
    assert _invoke("audit", "--out", str(out)).exit_code == 2      # usage error: no SOURCE
    assert _invoke("audit", str(src), "--limit", "0").exit_code == 2


def test_fid_without_weights_offline_reports_unavailable(cache_and_labeler, tmp_path):
    src, _, _ = cache_and_labeler
    out = tmp_path / "rep"
    empty_home = tmp_path / "torch-home"
    empty_home.mkdir()
    proc = run_cli("audit", str(src), "--reference", "synthetic:test[:20]", "--out", str(out), "-q",
                   env={"TORCH_HOME": str(empty_home)})
    assert proc.returncode == 0, proc.stderr
    assert "FID unavailable:" in proc.stdout and "pt_inception-2015-12-05-6726825d.pth" in proc.stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["fid"]["requested"] and not rep["fid"]["available"]
    assert str(empty_home) in rep["fid"]["reason"]
    assert rep["sources"][0]["fid"] == {"available": False, "reason": rep["fid"]["reason"]}
    assert "value" not in json.dumps(rep["sources"][0]["fid"])          # no number posing as FID
    assert "FID unavailable:" in (out / "report.html").read_text()
    assert "FID unavailable:" in (out / "report.md").read_text()


def test_fid_weights_that_are_not_the_fid_weights_are_refused(cache_and_labeler, tmp_path):
    src, _, _ = cache_and_labeler
    fake = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    fake.write_bytes(b"not the weights")
    _one_line_error(_invoke("audit", str(src), "--reference", "synthetic:test[:20]", "--fid-weights", str(fake),
                            "--out", str(tmp_path / "never")), "not the pytorch-fid Inception weights")
    assert not (tmp_path / "never").exists()


def test_audit_help():
    proc = run_cli("audit", "--help", check=True)
    for opt in ("--labeler", "--reference", "--fid / --no-fid", "--fid-weights", "--out", "--min-effective-classes",
                "--json", "--limit", "--batch-size", "--device"):
        assert opt in proc.stdout


def test_empty_cache_is_reported_not_crashed(tmp_path):
    from feddf.cache.writer import CacheWriter

    CacheWriter(tmp_path / "e.h5", n=20, channels=1, resolution=8, attrs={"kind": "imported", "source": "t"},
                num_labels=3).close()       # allocated, nothing committed yet
    res = _invoke("audit", str(tmp_path / "e.h5"), "--out", str(tmp_path / "rep"), "--json", "-q",
                  "--min-effective-classes", "1")
    assert res.exit_code == 1
    s = json.loads(res.stdout)["sources"][0]
    assert s["n"] == 0 and s["conditioning"]["total"] == 0 and s["conditioning"]["effective_classes"] == 0.0
    assert "0.00 effective conditioning classes" in res.stderr


def test_unique_names_keep_dotted_run_folders_apart():
    from feddf.audit.sources import unique_names

    assert unique_names(["runs/a0.1-fedavg-s0", "runs/a0.1-feddf-s0", "x/c.h5", "y/c.h5", "z/stl10.npz"]) == \
        ["a0.1-fedavg-s0", "a0.1-feddf-s0", "c", "c-2", "stl10"]
