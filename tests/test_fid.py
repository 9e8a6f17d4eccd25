"""FID: our Fréchet distance equals pytorch-fid's, streaming statistics equal np.cov, the FID network is pytorch-fid's,
self-FID is ~0, and weights are never taken from anywhere but a verified file (random weights in tests only)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from feddf.audit import fid as F
from feddf.errors import FeddfError


def _gaussian_features(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ a + shift + rng.normal(size=d)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # pytorch-fid passes scipy's deprecated `disp`
def test_frechet_distance_equals_pytorch_fid_on_the_same_features():
    from pytorch_fid.fid_score import calculate_frechet_distance

    x, y = _gaussian_features(400, 48, 0), _gaussian_features(300, 48, 1, shift=0.5)
    mx, sx = F.activation_stats(x)
    my, sy = F.activation_stats(y)
    ours = F.frechet_distance(mx, sx, my, sy)
    theirs = calculate_frechet_distance(mx, sx, my, sy)
    assert ours > 1.0
    assert ours == pytest.approx(float(theirs), rel=1e-7)
    assert F.frechet_distance(mx, sx, mx, sx) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(FeddfError, match="different shapes"):
        F.frechet_distance(mx, sx, my[:10], sy[:10, :10])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_low_rank_factor_path_equals_the_full_path_and_pytorch_fid():
    """Fewer images than dimensions (the usual CPU audit): the (n, n) factor shortcut gives the same FID."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    x, y = _gaussian_features(20, 64, 4), _gaussian_features(300, 64, 5, shift=0.3)
    acc = F.StatsAccumulator()
    for s in range(0, 20, 7):
        acc.update(x[s:s + 7])
    mx, sx = acc.finalize()
    my, sy = F.activation_stats(y)
    full = F.frechet_distance(mx, sx, my, sy)
    fast = F.frechet_distance(mx, sx, my, sy, factor1=acc.factor())
    with np.errstate(all="ignore"):
        theirs = float(calculate_frechet_distance(mx, sx, my, sy))
    assert fast == pytest.approx(full, rel=1e-7) and fast == pytest.approx(theirs, rel=1e-6)
    assert abs(F.frechet_distance(mx, sx, mx, sx, factor1=acc.factor())) <= 1e-9 * full
    big = F.StatsAccumulator(keep=10)
    big.update(x)
    assert big.factor() is None            # beyond `keep` images only the sums are kept


def test_streaming_statistics_equal_numpy_covariance():
    x = _gaussian_features(257, 32, 2, shift=40.0)   # far from zero-mean, like Inception features
    acc = F.StatsAccumulator()
    for s in range(0, len(x), 50):
        acc.update(x[s:s + 50])
    mu, sigma = acc.finalize()
    mu_ref, sigma_ref = F.activation_stats(x)
    assert acc.n == 257
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-12)
    np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-9, atol=1e-12)
    with pytest.raises(FeddfError, match="at least 2 images"):
        F.StatsAccumulator().finalize()


def test_our_network_is_key_for_key_what_pytorch_fid_loads():
    """pytorch-fid's own fid_inception_v3() (strict load_state_dict) accepts our network's state_dict unchanged."""
    from pytorch_fid import inception as pfi

    sd = F._fid_inception_net().state_dict()
    orig = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *a, **k: sd
    try:
        theirs = pfi.fid_inception_v3()
    finally:
        pfi.load_state_dict_from_url = orig
    assert set(theirs.state_dict()) == set(sd)
    assert all(theirs.state_dict()[k].shape == v.shape for k, v in sd.items())


@pytest.fixture(scope="module")
def random_inception():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # the test machine's 2 cores are shared; one thread is faster there
    yield F.InceptionFeatures.random_for_tests(seed=0)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inception_features(random_inception):
    """Real 2048-d pool3 features from the pytorch-fid network (random weights) of a gray 28px and an RGB 32px set."""
    g = torch.Generator().manual_seed(0)
    gray = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8, generator=g)
    rgb = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)
    return random_inception(gray), random_inception(rgb)


def _stats_and_factor(f):
    acc = F.StatsAccumulator()
    acc.update(f)
    return (*acc.finalize(), acc.factor())


def test_random_inception_features_and_self_fid(random_inception, inception_features):
    fa, fb = inception_features
    assert fa.shape == fb.shape == (6, F.FEATURE_DIMS) and fa.dtype == np.float64
    assert np.isfinite(fa).all() and fa.std() > 0
    ma, sa, fac_a = _stats_and_factor(fa)
    mb, sb, _ = _stats_and_factor(fb)
    cross = F.frechet_distance(ma, sa, mb, sb, factor1=fac_a)
    assert cross > 0
    assert abs(F.frechet_distance(ma, sa, ma, sa, factor1=fac_a)) <= 1e-6 * cross
    assert not random_inception.is_fid and "tests only" in random_inception.describe()["weights"]


def test_weights_are_looked_up_offline_and_verified(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(F.FIDUnavailable, match=F.FID_WEIGHTS_FILE):
        F.find_weights(None)
    ckpt = tmp_path / "th" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / F.FID_WEIGHTS_FILE).write_bytes(b"random bytes, not the weights")
    with pytest.raises(FeddfError, match="not the pytorch-fid Inception weights"):
        F.find_weights(None)
    with pytest.raises(FeddfError, match="not a file"):
        F.find_weights(tmp_path / "nowhere.pth")
    # a state_dict of the right network but other (random) weights is refused too: only the published file is FID
    torch.save(F._fid_inception_net().state_dict(), tmp_path / "random.pth")
    with pytest.raises(FeddfError, match="not the pytorch-fid Inception weights"):
        F.InceptionFeatures.from_weights(tmp_path / "random.pth")


def test_stats_npz_roundtrip_and_bad_file(tmp_path):
    x = _gaussian_features(50, 8, 3)
    mu, sigma = F.activation_stats(x)
    F.save_stats(tmp_path / "s.npz", mu, sigma, 50, {"reference": "x", "weights_sha256": "abc"})
    mu2, sigma2, n, desc = F.load_stats(tmp_path / "s.npz")
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    assert n == 50 and desc == {"reference": "x", "weights_sha256": "abc"}
    np.savez(tmp_path / "plain.npz", mu=mu, sigma=sigma)           # pytorch-fid --save-stats layout
    assert F.load_stats(tmp_path / "plain.npz")[2:] == (None, {})
    (tmp_path / "bad.npz").write_text("nope")
    with pytest.raises(FeddfError, match="not a FID statistics"):
        F.load_stats(tmp_path / "bad.npz")


def test_audit_pipeline_fid_with_test_weights_is_never_reported_as_fid(tmp_path, random_inception):
    """run_audit end to end with a dataset reference: the number is computed and recorded with its extractor, but
    flagged as not-FID, not shown as FID in the summary, and its statistics are not cached for reuse."""
    from feddf.audit import report as rep
    from feddf.audit.run import AuditConfig, run_audit
    from feddf.data import get_dataset
    from tests.test_audit_fixtures import make_cache

    data = make_cache(tmp_path / "c.h5", n=5, channels=3, res=32, seed=5)
    ref_images = get_dataset("synthetic:test[:5]").images
    # what the pipeline must reproduce, from features computed directly on the same images
    ms, ss, fac = _stats_and_factor(random_inception(torch.from_numpy(data["images"])))
    mr, sr, _ = _stats_and_factor(random_inception(ref_images))
    expected = F.frechet_distance(ms, ss, mr, sr, factor1=fac)

    F.save_stats(tmp_path / "ref.npz", mr, sr, 5, {"reference": "synthetic:test[:5]"})
    cfg = AuditConfig(sources=[str(tmp_path / "c.h5")], reference=str(tmp_path / "ref.npz"), device="cpu",
                      stats_dir=str(tmp_path / "stats"), batch_size=3)
    res = run_audit(cfg, progress=False, extractor=random_inception)
    f = res.report["sources"][0]["fid"]
    assert f["available"] and not f["is_fid"] and "tests only" in f["warning"]
    assert f["n"] == 5 and f["n_reference"] == 5 and res.report["reference"]["kind"] == "stats"
    assert f["resize"] == F.RESIZE_MODE and "InceptionV3" in f["feature_extractor"]
    assert f["value"] == pytest.approx(expected, rel=1e-6)
    assert "n/a (test weights)" in rep.audit_summary(res.report)
    assert res.source_stats == {}
    json.dumps(res.report)   # every number JSON-serialisable

    # the dataset spec as reference: features of the reference images computed by the pipeline itself
    cfg.reference = "synthetic:test[:5]"
    res2 = run_audit(cfg, progress=False, extractor=random_inception)
    assert res2.report["sources"][0]["fid"]["value"] == pytest.approx(expected, rel=1e-6)
    assert res2.report["reference"]["kind"] == "dataset" and res2.report["reference"]["n"] == 5
    assert not (tmp_path / "stats").exists()      # statistics from test weights are never cached
