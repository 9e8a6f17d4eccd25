"""`feddf gan-train`: checkpoints load through the DCGAN path; seeded; resume equals an uninterrupted run."""
import json

import pytest
import torch

from feddf.generators.dcgan import detect_architecture
from feddf.generators.train_dcgan import Discriminator, GanTrainConfig, train
from tests.conftest import run_cli


def _cfg(tmp_path, name, epochs):
    return GanTrainConfig(data="synthetic:train", out=str(tmp_path / name), size=32, nz=16, ngf=8, ndf=8,
                          epochs=epochs, batch_size=32, limit=96, seed=3)


def test_discriminator_shapes():
    for size in (32, 64):
        assert Discriminator(3, 8, size)(torch.randn(2, 3, size, size)).shape == (2,)


def test_checkpoint_is_pytorch_examples_format_and_resume_matches(tmp_path):
    torch.set_num_threads(1)
    full = train(_cfg(tmp_path, "full", 2), progress=False)
    state = torch.load(full, weights_only=True)
    arch = detect_architecture(state, str(full))
    assert (arch["nz"], arch["ngf"], arch["nc"], arch["size"]) == (16, 8, 3, 32)
    assert sorted(state)[0].startswith("main.")
    # Interrupted after epoch 1, then resumed: identical generator weights to the uninterrupted run.
    train(_cfg(tmp_path, "part", 1), progress=False)
    cfg2 = _cfg(tmp_path, "part", 2)
    ck = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    ck["config"]["epochs"] = 2  # the run was configured for 1 epoch; extending it is a resume of the same recipe
    torch.save(ck, tmp_path / "part" / "checkpoint.pt")
    resumed = train(cfg2, resume=True, progress=False)
    a, b = torch.load(full, weights_only=True), torch.load(resumed, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert (tmp_path / "full" / "samples.png").stat().st_size > 0


def test_cli_trains_and_gen_loads_it(tmp_path):
    out = tmp_path / "g"
    p = run_cli("gan-train", "--data", "synthetic:train", "--limit", "64", "--epochs", "1", "--batch-size", "32",
                "--ngf", "8", "--ndf", "8", "--nz", "16", "--out", str(out), "--quiet", check=True)
    ckpt = out / "netG_epoch_1.pth"
    assert str(ckpt) in p.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["config"]["epochs"] == 1 and cfg["generator"]["nc"] == 3 and "torch" in cfg["versions"]
    # Refuses to overwrite an existing run without --resume, and leaves it intact.
    again = run_cli("gan-train", "--data", "synthetic:train", "--out", str(out), "--quiet")
    assert again.returncode == 1 and "--resume" in again.stderr and "Traceback" not in again.stderr
    assert ckpt.exists()
    from feddf.generators import get_generator

    gen = get_generator("dcgan", checkpoint=str(ckpt))
    assert gen.z_dim == 16 and gen.channels == 3


@pytest.mark.parametrize("args,msg", [(["--size", "48"], "48"), (["--data", "nope-ds"], "unknown dataset")])
def test_bad_input(tmp_path, args, msg):
    p = run_cli("gan-train", "--out", str(tmp_path / "x"), "--quiet", *args)
    assert p.returncode != 0 and msg in p.stderr and "Traceback" not in p.stderr
