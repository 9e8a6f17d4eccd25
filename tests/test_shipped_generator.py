"""The shipped `dcgan-fashion-mnist` generator: provenance recorded, loads through the DCGAN path, and feeds a real
gen -> FedDF round on Fashion-MNIST."""
import json

import torch

from feddf.generators import WEIGHTS_DIR, get_generator
from feddf.generators.dcgan import Generator
from feddf.utils import sha256_file
from tests.conftest import run_cli

WEIGHTS = WEIGHTS_DIR / "dcgan-fashion-mnist.pth"
PROVENANCE = WEIGHTS_DIR / "dcgan-fashion-mnist.json"


def test_provenance_file_describes_the_shipped_weights():
    prov = json.loads(PROVENANCE.read_text())
    assert WEIGHTS.stat().st_size <= 5 * 1024 * 1024
    assert prov["sha256"] == sha256_file(WEIGHTS)
    assert prov["data"]["dataset"] == "fashion-mnist:test[:5000]"  # the public split, disjoint from test[5000:]
    assert prov["training"]["epochs"] >= 1 and isinstance(prov["training"]["seed"], int)
    assert prov["command"].startswith("feddf gan-train") and "test[:5000]" in prov["command"]
    cov = prov["coverage"]
    assert 1.0 <= cov["effective_classes"] <= 10.0
    assert abs(sum(cov["per_class_share"].values()) - 1.0) < 1e-6 and len(cov["per_class_share"]) == 10
    assert cov["labeler"]["test_split"] == "test[5000:]" and cov["labeler"]["test_accuracy"] > 0.8
    # Either a real FID or an explicit statement that it could not be measured - never a made-up number.
    assert isinstance(prov["fid"], (int, float, dict)) or prov["fid"].startswith("unavailable: ")


def test_loads_through_the_dcgan_checkpoint_path():
    gen = get_generator("dcgan-fashion-mnist")
    assert isinstance(gen.module, Generator)
    assert (gen.z_dim, gen.channels, gen.native_resolution) == (100, 1, 32)
    assert gen.weights_hash == "sha256:" + sha256_file(WEIGHTS) and not gen.random_weights
    # Same weights as loading the file by hand into the pytorch/examples layout.
    by_hand = Generator(100, 32, 1, 32)
    by_hand.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    z = torch.randn(4, 100, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = gen.module.eval()(z)
        assert torch.allclose(out, by_hand.eval()(z))
    assert out.min() >= -1 and out.max() <= 1 and out.std() > 0.1  # real images, not a constant


def test_gen_then_feddf_round_on_real_fashion_mnist(tmp_path, fmnist_available):
    cache = tmp_path / "dcgan.h5"
    run_cli("gen", "--generator", "dcgan-fashion-mnist", "--n", "256", "--out", str(cache), "--quiet", check=True)
    info = json.loads(run_cli("cache", "info", str(cache), "--json", check=True).stdout)
    assert info["n"] == 256 and info["channels"] == 1 and info["resolution"] == 28
    run = tmp_path / "run"
    run_cli("train", "--dataset", "fashion-mnist", "--arch", "cnn", "--aggregator", "feddf", "--distill-source",
            str(cache), "--clients", "2", "--fraction", "1", "--rounds", "1", "--local-epochs", "1",
            "--train-limit", "400", "--test-limit", "200", "--distill-steps", "8", "--eval-every", "4",
            "--patience", "8", "--seed", "0", "--out", str(run), "--quiet", check=True)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["distill_steps"]["cnn"] > 0
    assert rows[0]["acc"]["cnn"]["distilled"] is not None
    cfg = json.loads((run / "config.json").read_text())
    assert str(cache) in json.dumps(cfg)
