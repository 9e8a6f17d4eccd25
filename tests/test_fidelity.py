"""Precision / recall / density / coverage / KID (feddf/audit/fidelity.py): equal to the reference `prdc` package,
the textbook cases (itself, noise, mode collapse), the per-class split, the feature hook, the --min-coverage gate and
an end-to-end audit of the shipped DCGAN on real Fashion-MNIST through the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from feddf.audit import fidelity as FD
from feddf.audit.features import FeatureStore, PenultimateHook, head_layer
from tests.conftest import run_cli
from tests.test_audit_fixtures import make_cache, make_classifier


def _gauss(n, d, seed, scale=1.0, shift=0.0):
    return np.random.default_rng(seed).standard_normal((n, d)) * scale + shift


# --------------------------------------------------------------------------------------------------- the numbers

@pytest.mark.parametrize("n_real,n_fake,d,k,block", [(300, 450, 16, 5, 1 << 23), (257, 193, 7, 3, 1000),
                                                     (400, 400, 64, 10, 5000)])
def test_prdc_equals_the_reference_implementation(monkeypatch, n_real, n_fake, d, k, block):
    prdc = pytest.importorskip("prdc")
    monkeypatch.setattr(FD, "BLOCK_ELEMS", block)     # small blocks: many row and column blocks, merged top-k
    real = _gauss(n_real, d, 1)
    fake = _gauss(n_fake, d, 2, scale=1.3, shift=0.2)
    ours = FD.prdc(real, fake, k)
    ref = prdc.compute_prdc(real, fake, k)
    for key in FD.METRICS:
        assert abs(ours[key] - float(ref[key])) < 1e-6, key
    # the memmap-backed store and a Take view give the same numbers
    store = FeatureStore(n_fake)
    store.write(0, fake.astype(np.float32))
    idx = np.random.default_rng(0).permutation(n_fake)[: n_fake // 2]
    sub = FD.prdc(real, FD.Take(store.array, idx), k)
    ref_sub = prdc.compute_prdc(real, fake.astype(np.float32)[idx].astype(np.float64), k)
    for key in FD.METRICS:
        assert abs(sub[key] - float(ref_sub[key])) < 1e-6, key
    store.close()


def test_real_against_itself_and_a_second_sample_is_near_one():
    real = _gauss(1000, 8, 0)
    same = FD.prdc(real, real, 5)
    # density is 1 up to the rounding of each ball's boundary point (its k-th neighbour sits exactly on the radius)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0 and same["density"] == pytest.approx(1, abs=.01)
    other = FD.prdc(real, _gauss(1000, 8, 1), 5)           # a second sample of the same distribution
    for key in ("precision", "recall", "coverage"):
        assert other[key] > 0.85, (key, other)
    assert 0.8 < other["density"] < 1.2


def test_real_against_noise_is_near_zero():
    rng = np.random.default_rng(0)
    real = np.zeros((800, 32))
    real[:, :4] = rng.standard_normal((800, 4)) * 3           # a 4-d manifold in 32-d
    noise = rng.standard_normal((800, 32)) * 3                # isotropic noise of the same scale
    r = FD.prdc(real, noise, 5)
    for key in ("precision", "density", "coverage"):
        assert r[key] < 0.05, (key, r)
    # recall is fooled: the noise's huge k-NN balls swallow the real manifold (Naeem et al. 2020, sec. 3) — the
    # reason coverage exists; noise away from the real support gets recall 0 as well
    assert r["recall"] > 0.9
    far = FD.prdc(real, noise + 30.0, 5)
    for key in FD.METRICS:
        assert far[key] < 0.05, (key, far)


def test_mode_collapse_has_low_recall_and_coverage_but_full_precision():
    real = _gauss(1000, 16, 0)
    collapsed = np.repeat(real[:1], 1000, axis=0)             # one good image 1000 times
    r = FD.prdc(real, collapsed, 5)
    assert r["precision"] == 1.0 and r["recall"] == 0.0 and r["coverage"] < 0.02


def test_knn_radii_exclude_self_by_index_and_count_duplicates():
    x = np.array([[0.0], [0.0], [1.0], [3.0]])
    # the duplicate of point 0 is its nearest neighbour (distance 0), as prdc's k+1-th value including self gives
    assert FD.knn_radii(x, 1).tolist() == [0.0, 0.0, 1.0, 4.0]
    assert FD.knn_radii(x, 2).tolist() == [1.0, 1.0, 1.0, 9.0]


def test_bootstrap_interval_brackets_the_estimate():
    real, fake = _gauss(300, 8, 0), _gauss(200, 8, 1, shift=0.3)
    point = FD.prdc(real, fake, 5, points=True)
    ci = FD.prdc_bootstrap(point["points"], 5, replicates=200, seed=0)
    for key in FD.METRICS:
        lo, hi = ci[key]
        assert lo < point[key] < hi and hi - lo < 0.25, (key, lo, point[key], hi)
    assert point["points"]["in_any"].shape == (200,) and point["points"]["covered"].shape == (300,)


def _kid_direct(x, y):
    """Unbiased MMD^2 with (x.y/d + 1)^3, written as explicit double sums."""
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_kid_equals_the_direct_formula_and_orders_distributions():
    x, y = _gauss(40, 6, 0), _gauss(40, 6, 1, shift=0.5)
    r = FD.kid(x, y, FD.KIDConfig(subsets=3, subset_size=40))    # whole sets: every subset is the same
    assert r["value"] == pytest.approx(_kid_direct(x, y), rel=1e-10) and r["std"] == pytest.approx(0, abs=1e-12)
    assert FD.mmd2_unbiased(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(_kid_direct(x, y), rel=1e-10)
    cfg = FD.KIDConfig(subsets=20, subset_size=200)
    same = FD.kid(_gauss(1000, 6, 2), _gauss(1000, 6, 3), cfg)["value"]
    far = FD.kid(_gauss(1000, 6, 2), _gauss(1000, 6, 3, shift=0.5), cfg)["value"]
    assert abs(same) < 0.02 < far


def test_per_class_split_on_a_hand_made_fixture():
    """Class 0: fakes on the class-0 cloud; class 1: one collapsed fake point; class 2: no fake at all; fakes
    predicted 3 have no reference images. Each class's numbers are prdc of exactly that class's rows."""
    prdc = pytest.importorskip("prdc")
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    real_labels = np.repeat([0, 1, 2], [60, 50, 40])
    real = centres[real_labels] + rng.standard_normal((150, 2))
    fake = np.concatenate([rng.standard_normal((70, 2)), np.tile([[20.0, 0.0]], (30, 1)), rng.standard_normal((5, 2))])
    pred = np.repeat([0, 1, 3], [70, 30, 5])
    names = ["a", "b", "c", "d"]
    cfg = FD.FidelityConfig(k=5, kid=FD.KIDConfig(subsets=2, subset_size=20), bootstrap=0)
    real_pred = real_labels.copy()
    real_pred[:15] = 2                       # the labeler mistakes 15 of the 60 class-0 reference images
    ev = FD.evaluate(real, real_labels, fake, pred, names, cfg, real_pred=real_pred)
    assert [r["labeler_accuracy"] for r in ev["per_class"]] == [0.75, 1.0, 1.0, None]
    rows = ev["per_class"]
    assert [(r["class"], r["name"], r["n_fake"], r["n_real"]) for r in rows] == \
        [(0, "a", 70, 60), (1, "b", 30, 50), (2, "c", 0, 40), (3, "d", 5, 0)]
    for c in (0, 1):
        ref = prdc.compute_prdc(real[real_labels == c], fake[pred == c], 5)
        for key in FD.METRICS:
            assert rows[c][key] == pytest.approx(float(ref[key]), abs=1e-6)
    assert rows[1]["recall"] == 0.0 and rows[1]["coverage"] <= 0.2          # collapsed class
    assert rows[2]["coverage"] == 0.0 and rows[2]["recall"] == 0.0 and rows[2]["precision"] is None
    assert rows[3]["coverage"] is None and "reference" in rows[3]["note"]
    assert ev["overall"]["n_fake"] == 105 and ev["overall"]["n_real"] == 150
    gate = FD.gate(0.5, [{"name": "s", "fidelity": {"labeler": ev}}])
    assert not gate["passed"] and any("class b" in f for f in gate["failures"]) \
        and any("class c 0.000" in f for f in gate["failures"])


@pytest.mark.parametrize("arch", ["cnn", "resnet8", "vgg9", "shufflenetv2"])
def test_penultimate_hook_feeds_the_output_layer(arch):
    from feddf.models import Classifier, get_model

    torch.manual_seed(0)
    model = get_model(arch, 10, 1).eval()
    clf = Classifier(model, {"num_classes": 10, "in_channels": 1, "resolution": 28, "mean": [0.5], "std": [0.25],
                             "class_names": [str(i) for i in range(10)]})
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    with PenultimateHook(clf) as hook:
        logits = clf.logits(images)
    with torch.no_grad():
        again = head_layer(model)(torch.from_numpy(hook.last))
    assert hook.last.shape[0] == 3 and torch.allclose(again, logits, atol=1e-4)


# ------------------------------------------------------------------------------------------------------- the CLI

def _invoke(*args):
    """The real click group in-process (a subprocess costs seconds of torch import on the shared machine)."""
    from click.testing import CliRunner

    from feddf.cli import main

    return CliRunner().invoke(main, list(args))


def test_min_coverage_gate_exit_codes_through_the_cli(tmp_path):
    names = ["t0", "t1", "t2"]
    rng = np.random.default_rng(0)
    make_cache(tmp_path / "ref.h5", n=240, num_labels=3, label_names=names, seed=1)
    # a mode-collapsed source: one image 200 times
    from feddf.cache.writer import CacheWriter

    w = CacheWriter(tmp_path / "one.h5", n=200, channels=1, resolution=16, attrs={"kind": "imported", "source": "t"},
                    num_labels=3)
    w.append(np.repeat(rng.integers(0, 256, (1, 1, 16, 16), dtype=np.uint8), 200, axis=0), np.zeros(200, np.int64))
    w.finish()
    w.close()
    clf = make_classifier(tmp_path / "lab.pt", num_classes=3, names=names)
    common = ["--labeler", str(clf), "--reference", str(tmp_path / "ref.h5"), "--kid-subsets", "2",
              "--kid-subset-size", "50", "--bootstrap", "5", "-q"]
    ok = _invoke("audit", str(tmp_path / "one.h5"), *common, "--min-coverage", "0", "--out", str(tmp_path / "a"))
    assert ok.exit_code == 0, ok.output
    assert "Coverage gate (min coverage 0): passed" in ok.stdout
    bad = run_cli("audit", str(tmp_path / "one.h5"), *common, "--min-coverage", "0.5", "--out", str(tmp_path / "b"))
    assert bad.returncode == 1
    err = [ln for ln in bad.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("Error: coverage below --min-coverage 0.5: one: set ")
    rep = json.loads((tmp_path / "b" / "report.json").read_text())        # the report is still written
    fid = rep["sources"][0]["fidelity"]["labeler"]
    assert rep["fidelity_gate"]["passed"] is False and fid["overall"]["coverage"] < 0.5
    assert fid["overall"]["recall"] == 0.0 and fid["overall"]["n_real"] == 240
    assert sum(r["n_real"] for r in fid["per_class"]) == 240 and sum(r["n_fake"] for r in fid["per_class"]) == 200
    assert rep["sources"][0]["fidelity"]["inception"]["available"] is False
    # the gate without a reference is a one-line user error
    nore = _invoke("audit", str(tmp_path / "one.h5"), "--labeler", str(clf), "--min-coverage", "0.5", "--out",
                   str(tmp_path / "c"))
    assert nore.exit_code == 1 and "--reference" in nore.output and not (tmp_path / "c").exists()


def test_audit_help_lists_fidelity_options():
    proc = _invoke("audit", "--help")
    assert proc.exit_code == 0
    for opt in ("--fidelity / --no-fidelity", "--k", "--min-coverage", "--kid-subsets", "--kid-subset-size",
                "--bootstrap"):
        assert opt in proc.output


@pytest.mark.slow
def test_end_to_end_shipped_dcgan_against_real_fashion_mnist(tmp_path, fmnist_available):
    """gen 2000 DCGAN images, a tiny FedAvg labeler, the real split and noise, audited against test[5000:6000]."""
    dcgan = tmp_path / "dcgan.h5"
    run_cli("gen", "--generator", "dcgan-fashion-mnist", "--n", "2000", "--out", str(dcgan), "--quiet", check=True)
    real = tmp_path / "real.h5"
    run_cli("cache", "import", "fashion-mnist:test[:1000]", "--out", str(real), "-q", check=True)
    noise = tmp_path / "noise.h5"
    make_cache(noise, n=1000, channels=1, res=28, seed=5)
    run = tmp_path / "labeler"
    run_cli("train", "--dataset", "fashion-mnist", "--arch", "cnn", "--aggregator", "fedavg", "--clients", "2",
            "--fraction", "1", "--rounds", "1", "--local-epochs", "1", "--train-limit", "2000", "--test-limit", "200",
            "--seed", "0", "--out", str(run), "-q", check=True)
    out = tmp_path / "rep"
    proc = run_cli("audit", str(dcgan), str(real), str(noise), "--labeler", str(run), "--reference",
                   "fashion-mnist:test[5000:6000]", "--kid-subsets", "10", "--kid-subset-size", "300",
                   "--bootstrap", "10", "--out", str(out), "-q", check=True)
    assert "fidelity (k=5" in proc.stdout
    rep = json.loads((out / "report.json").read_text())
    ev = {s["name"]: s["fidelity"]["labeler"] for s in rep["sources"]}
    assert ev["dcgan"]["overall"]["n_fake"] == 2000 and ev["dcgan"]["overall"]["n_real"] == 1000
    assert ev["dcgan"]["dims"] == 128                                     # the cnn's penultimate layer
    for name, e in ev.items():
        assert len(e["per_class"]) == 10
        assert sum(r["n_fake"] for r in e["per_class"]) == e["overall"]["n_fake"]
        assert sum(r["n_real"] for r in e["per_class"]) == 1000
        assert all(r["ci"] is not None for r in e["per_class"] if r["n_fake"] > 0)   # small groups: intervals
        assert all(0 <= r["labeler_accuracy"] <= 1 for r in e["per_class"])
    # the held-out real split covers the reference, noise does not; the shipped DCGAN lies between (precision is
    # left out on purpose: collapsed or odd images can score high on it, see docs/audit.md)
    assert ev["real"]["overall"]["coverage"] > ev["dcgan"]["overall"]["coverage"] > ev["noise"]["overall"]["coverage"]
    assert ev["real"]["overall"]["recall"] > ev["dcgan"]["overall"]["recall"]
    assert ev["real"]["overall"]["coverage"] > 0.8 and ev["noise"]["overall"]["coverage"] < 0.1
    assert ev["real"]["overall"]["kid"]["value"] < ev["dcgan"]["overall"]["kid"]["value"]
    for f in ("report.md", "report.html"):
        text = (out / f).read_text()
        assert "Fidelity" in text and "coverage" in text
    assert (out / "figures" / "dcgan-fidelity.png").is_file()


def test_inception_space_is_computed_when_an_extractor_is_present(tmp_path):
    """run_audit with (random-weight) pytorch-fid Inception: the Inception-space numbers are prdc of the Inception
    features of exactly the scanned source and reference images, and flagged as not from the FID weights."""
    from feddf.audit import fid as F
    from feddf.audit.run import AuditConfig, run_audit
    from feddf.data import get_dataset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inception = F.InceptionFeatures.random_for_tests(seed=0)
        ref = get_dataset("synthetic:test[:4]")        # Inception on a CPU is ~0.3 s an image: 4 + 4, k = 2
        data = make_cache(tmp_path / "s.h5", n=4, channels=3, res=32, seed=2)
        clf = make_classifier(tmp_path / "lab.pt", num_classes=10, channels=3, res=32,
                              names=list(ref.info.class_names))
        cfg = AuditConfig(sources=[str(tmp_path / "s.h5")], labeler=str(clf), reference="synthetic:test[:4]",
                          device="cpu", stats_dir=str(tmp_path / "stats"), batch_size=4, kid_subsets=2, bootstrap=0, k=2)
        res = run_audit(cfg, progress=False, extractor=inception)
        expected = FD.prdc(inception(ref.images), inception(torch.from_numpy(data["images"])), 2)
    finally:
        torch.set_num_threads(threads)
    inc = res.report["sources"][0]["fidelity"]["inception"]
    assert inc["is_fid"] is False and inc["dims"] == 2048 and "InceptionV3" in inc["space"]
    for key in FD.METRICS:     # features stored as float32 on the way: equal up to that rounding
        assert inc["overall"][key] == pytest.approx(expected[key], abs=1e-6) or expected[key] is None
    assert res.report["fidelity"]["spaces"] == ["labeler", "inception"]
    assert len(inc["per_class"]) == 10 and sum(r["n_real"] for r in inc["per_class"]) == 4
    json.dumps(res.report)
