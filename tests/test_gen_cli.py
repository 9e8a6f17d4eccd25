"""`feddf gen` end to end: help, outputs of each generator kind, and every bad input (one line, exit 1, nothing lost).

    .venv/bin/python -m pytest -q tests/test_gen_cli.py
"""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from feddf.cache import format as fmt
from feddf.cli import main
from feddf.generators.dcgan import Generator
from tests.conftest import random_dcgan_checkpoint, run_cli


def feddf(*args, cwd=None):
    return run_cli(*map(str, args), cwd=cwd)


@pytest.fixture(scope="module")
def small_dcgan(tmp_path_factory):
    """A small 32x32, 1-channel pytorch/examples-format checkpoint (random, variance-preserving weights)."""
    return random_dcgan_checkpoint(tmp_path_factory.mktemp("ckpt") / "netG_epoch_0.pth", nc=1)


def test_help():
    r = feddf("gen", "--help")
    assert r.returncode == 0
    for opt in ("--generator", "--n", "--out", "--resolution", "--truncation", "--classes", "--seed", "--batch-size",
                "--device", "--weights", "--checkpoint", "--random-weights", "--compression", "--labeler", "--quiet",
                "--force", "--dtype", "--json"):
        assert opt in r.stdout
    assert "gen" in feddf("--help").stdout


def test_dcgan_cache_and_summary(tmp_path, small_dcgan):
    r = feddf("gen", "--generator", "dcgan", "--checkpoint", small_dcgan, "--n", 50, "--resolution", 28,
              "--compression", "gzip", "--chunk-images", 16, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "cache" / "dcgan-28px-50.h5"  # the default --out
    assert "50 images" in r.stdout and "img/s" in r.stdout and "bytes/image" in r.stdout
    assert "img/s" in r.stderr  # the tqdm progress bar
    with h5py.File(out, "r", swmr=True) as f:
        im = f[fmt.IMAGES]
        assert im.shape == (50, 1, 28, 28) and im.chunks == (16, 1, 28, 28) and im.compression == "gzip"
        assert im[:].std() > 5  # varied images
        assert (f[fmt.LABELS][:] == -1).all() and fmt.TARGETS not in f
        assert f.attrs["generator"] == "dcgan" and f.attrs["weights_hash"].startswith("sha256:")
        assert not f.attrs["random_weights"] and "truncation" not in f.attrs and bool(f.attrs["complete"])
        cfg = json.loads(f.attrs["config"])
        assert cfg["resolution"] == 28 and cfg["out"] == "cache/dcgan-28px-50.h5"
    r = feddf("gen", "--generator", "dcgan", "--checkpoint", small_dcgan, "--n", 50, "--resolution", 28,
              "--compression", "gzip", "--chunk-images", 16, "--json", "--quiet", cwd=tmp_path)
    s = json.loads(r.stdout)
    assert s["already_complete"] and s["generated"] == 0 and r.stderr == ""


def test_biggan_random_weights_with_target_map(tmp_path):
    out = tmp_path / "b.h5"
    r = feddf("gen", "--generator", "biggan-deep-128", "--random-weights", "--n", 2, "--batch-size", 1, "--classes",
              "cifar10", "--out", out, "--quiet", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["generated"] == 2
    with h5py.File(out, "r", swmr=True) as f:
        im = f[fmt.IMAGES][:]
        assert im.shape == (2, 3, 32, 32) and im.std() > 1
        from feddf.generators.classes import assign, parse_classes

        labels, targets = assign(parse_classes("cifar10"), np.arange(2), seed=0)
        np.testing.assert_array_equal(f[fmt.LABELS][:], labels)
        np.testing.assert_array_equal(f[fmt.TARGETS][:], targets)
        assert f[fmt.TARGET_COUNTS][:].sum() == 2 and f[fmt.LABEL_COUNTS].shape == (1000,)
        assert f.attrs["weights_hash"] == "random" and bool(f.attrs["random_weights"])
        assert f.attrs["truncation"] == 0.4 and f.attrs["classes"] == "cifar10"
        assert json.loads(f.attrs["target_names"])[0] == "airplane"
        assert len(json.loads(f.attrs["label_names"])) == 1000


def test_torchscript_generator_cli(tmp_path):
    class G(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.z_dim = 6
            self.fc = torch.nn.Linear(6, 3 * 16 * 16)

        def forward(self, z):
            return torch.tanh(self.fc(z)).view(-1, 3, 16, 16)

    p = tmp_path / "g.pt"
    with pytest.warns(FutureWarning):
        torch.jit.script(G()).save(str(p))
    r = CliRunner().invoke(main, ["gen", "--generator", "torchscript", "--checkpoint", str(p), "--n", "5",
                                  "--resolution", "8", "--out", str(tmp_path / "t.h5"), "--quiet"])
    assert r.exit_code == 0, r.output
    with h5py.File(tmp_path / "t.h5", "r", swmr=True) as f:
        assert f[fmt.IMAGES].shape == (5, 3, 8, 8) and f.attrs["forward_group"] == 256


# ---------------------------------------------------------------- bad input
def check_one_line_error(r, *needles, code=1):
    text = r.stdout + r.stderr
    assert r.returncode == code, text
    assert "Traceback" not in text
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), text
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_input_subprocess(tmp_path, small_dcgan):
    """The real CLI as a subprocess: exit 1, one line, no traceback, the existing file intact."""
    precious = tmp_path / "precious.h5"
    precious.write_text("not a cache")
    check_one_line_error(feddf("gen", "--generator", "dcgan", "--checkpoint", small_dcgan, "--n", 4, "--out",
                               precious, "--force"), "not a feddf cache")
    assert precious.read_text() == "not a cache"
    check_one_line_error(feddf("gen", "--generator", "dcgan", "--checkpoint", small_dcgan, "--n", 4, "--out",
                               precious / "x.h5"), "precious.h5")


@pytest.fixture
def cli(tmp_path):
    runner = CliRunner()

    def run(*args):
        return runner.invoke(main, ["gen", *map(str, args), "--quiet"], catch_exceptions=False)

    return run


def check_cli_error(r, *needles):
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_numbers_and_names(cli, tmp_path, small_dcgan):
    dc = ["--generator", "dcgan", "--checkpoint", small_dcgan, "--out", tmp_path / "x.h5"]
    check_cli_error(cli(*dc, "--n", 0), "--n 0")
    check_cli_error(cli(*dc, "--n", -5), "--n -5")
    check_cli_error(cli(*dc, "--n", 4, "--batch-size", 0), "--batch-size 0")
    check_cli_error(cli(*dc, "--n", 4, "--resolution", 0), "--resolution 0")
    check_cli_error(cli(*dc, "--n", 4, "--classes", "cifar10"), "unconditional")
    check_cli_error(cli(*dc, "--n", 4, "--truncation", 0.5), "BigGAN only")
    check_cli_error(cli(*dc, "--n", 4, "--dtype", "bf16"), "needs a CUDA device")
    check_cli_error(cli(*dc, "--n", 4, "--device", "cuda:0"), "CUDA is not available")
    check_cli_error(cli("--generator", "nope", "--n", 4), "unknown generator 'nope'")
    bg = ["--generator", "biggan-deep-128", "--random-weights", "--n", 4, "--out", tmp_path / "b.h5"]
    check_cli_error(cli(*bg, "--truncation", 0), "--truncation 0.0")
    check_cli_error(cli(*bg, "--truncation", 1.5), "--truncation 1.5", "(0, 1]")
    check_cli_error(cli(*bg, "--classes", "imagenet-dogs"), "unknown --classes 'imagenet-dogs'")
    check_cli_error(cli(*bg, "--classes", "5,1000"), "class id 1000", "0..999")
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "b.h5").exists()
    r = CliRunner().invoke(main, ["gen", "--generator", "dcgan", "--n", "x"])
    assert r.exit_code == 2  # usage errors


def test_missing_corrupt_and_mismatched_weights(cli, tmp_path):
    out = ["--n", 4, "--out", tmp_path / "w.h5"]
    check_cli_error(cli("--generator", "dcgan", "--checkpoint", tmp_path / "none.pth", *out), "does not exist")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00\x01corrupt")
    check_cli_error(cli("--generator", "dcgan", "--checkpoint", bad, *out), "not a readable PyTorch weights file")
    sd = Generator(100, 64, 3, 64).state_dict()
    sd["main.6.weight"] = torch.zeros(256, 64, 4, 4)
    torch.save(sd, bad)
    check_cli_error(cli("--generator", "dcgan", "--checkpoint", bad, *out), "wrong shapes main.6.weight")
    check_cli_error(cli("--generator", "biggan-deep-128", "--weights", tmp_path / "nowhere", *out),
                    "missing config.json, pytorch_model.bin")
    wdir = tmp_path / "wdir"
    wdir.mkdir()
    (wdir / "config.json").write_text("{}")
    (wdir / "pytorch_model.bin").write_bytes(b"garbage")
    check_cli_error(cli("--generator", "biggan-deep-128", "--weights", wdir, *out), "not a readable PyTorch")
    assert not (tmp_path / "w.h5").exists()


def test_existing_cache_other_config_refused_then_force(cli, tmp_path, small_dcgan):
    out = tmp_path / "c.h5"
    args = ["--generator", "dcgan", "--checkpoint", small_dcgan, "--n", 8, "--out", out]
    assert cli(*args).exit_code == 0
    before = out.read_bytes()
    check_cli_error(cli(*args, "--seed", 1), "different config", "seed: cache has 0, now 1", "--force")
    check_cli_error(cli(*args[:-4], "--n", 9, "--out", out), "n: cache has 8, now 9")
    assert out.read_bytes() == before
    assert cli(*args, "--seed", 1, "--force").exit_code == 0
    with h5py.File(out, "r", swmr=True) as f:
        assert f.attrs["seed"] == 1 and bool(f.attrs["complete"])


def test_labeler_coverage_independent_of_batch(tmp_path, small_dcgan):
    from feddf.models import get_model, save_classifier

    torch.manual_seed(0)
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    save_classifier(run / "models" / "cnn.pt", get_model("cnn", 4, 1), arch="cnn", num_classes=4, in_channels=1,
                    norm="bn", mean=[0.5], std=[0.5], resolution=28, class_names=["a", "b", "c", "d"])
    base = ["gen", "--generator", "dcgan", "--checkpoint", str(small_dcgan), "--n", "40", "--quiet"]
    r1 = CliRunner().invoke(main, base + ["--labeler", str(run / "models" / "cnn.pt"), "--batch-size", "16",
                                          "--out", str(tmp_path / "a.h5")])
    r2 = CliRunner().invoke(main, base + ["--labeler", str(run), "--batch-size", "5", "--out", str(tmp_path / "b.h5")])
    assert r1.exit_code == 0 and r2.exit_code == 0, r1.output + r2.output
    with h5py.File(tmp_path / "a.h5", "r", swmr=True) as a, h5py.File(tmp_path / "b.h5", "r", swmr=True) as b:
        pred, conf = a[fmt.LABELER_PRED][:], a[fmt.LABELER_CONF][:]
        assert pred.min() >= 0 and pred.max() < 4 and ((conf >= 0.25) & (conf <= 1)).all()
        np.testing.assert_array_equal(a[fmt.LABELER_COUNTS][:], np.bincount(pred, minlength=4))
        np.testing.assert_allclose(a[fmt.LABELER_CONF_SUM][:], np.bincount(pred, weights=conf, minlength=4),
                                   rtol=1e-6)
        assert json.loads(a.attrs["labeler_names"]) == ["a", "b", "c", "d"]
        assert a.attrs["labeler_hash"] == b.attrs["labeler_hash"]
        np.testing.assert_array_equal(b[fmt.LABELER_PRED][:], pred)  # batch 5 vs 16: the same predictions
        np.testing.assert_array_equal(b[fmt.LABELER_CONF][:], conf)
    check_cli_error(CliRunner().invoke(main, base + ["--labeler", str(tmp_path / "nothing"), "--out",
                                                     str(tmp_path / "c.h5")]), "--labeler")
