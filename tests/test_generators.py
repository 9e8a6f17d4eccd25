"""Generators, noise, class specs and quantisation, on CPU at tiny sizes.

    .venv/bin/python -m pytest -q tests/test_generators.py
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from feddf.errors import FeddfError
from feddf.generators import GENERATORS, get_generator
from feddf.generators.base import (invariant_kernels, make_batch_invariant, normal_noise, to_uint8,
                                   truncated_noise)
from feddf.generators.classes import assign, class_maps, imagenet_class_names, parse_classes
from feddf.generators.dcgan import Generator, detect_architecture, random_init

torch.set_num_threads(1)


# ---------------------------------------------------------------- noise
def test_noise_depends_only_on_seed_and_index():
    full = truncated_noise(3, np.arange(10), 128, 0.4)
    np.testing.assert_array_equal(truncated_noise(3, [7, 2], 128, 0.4), full[[7, 2]])
    assert not np.array_equal(truncated_noise(4, [7], 128, 0.4), full[[7]])
    z = truncated_noise(0, np.arange(400), 128, 0.5)
    assert z.dtype == np.float32 and np.abs(z).max() <= 1.0  # truncation * [-2, 2]
    # truncnorm(-2, 2) has std 0.8796; times 0.5
    assert abs(z.mean()) < 0.01 and abs(z.std() - 0.5 * 0.8796) < 0.01
    n = normal_noise(0, np.arange(400), 100)
    assert abs(n.mean()) < 0.02 and abs(n.std() - 1.0) < 0.02 and np.abs(n).max() > 3.0
    np.testing.assert_array_equal(normal_noise(0, [5], 100), n[[5]])


# ---------------------------------------------------------------- classes
def test_class_specs(tmp_path):
    assert parse_classes("all").ids == tuple(range(1000))
    assert parse_classes(None).ids == tuple(range(1000))
    assert parse_classes("3, 10-12 999").ids == (3, 10, 11, 12, 999)
    f = tmp_path / "ids.txt"
    f.write_text("# my classes\n1 2\n5-6 # more\n")
    assert parse_classes(str(f)).ids == (1, 2, 5, 6) == parse_classes(f"@{f}").ids
    c10 = parse_classes("cifar10")
    assert c10.num_targets == 10 and c10.target_names[5] == "dog" and len(c10.members[5]) == 118
    for bad, msg in [("1000", "out of range"), ("5-1002", "out of range"), ("dogs", "unknown --classes"),
                     ("3,3", "listed twice"), ("9-2", "empty"), ("@/nonexistent/ids.txt", "cannot read"),
                     ("1,x", "unknown --classes")]:
        with pytest.raises(FeddfError, match=msg):
            parse_classes(bad)


def test_class_maps_built_from_torchvision_names():
    from torchvision.models import ResNet50_Weights

    assert imagenet_class_names() == list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    names = imagenet_class_names()
    m = class_maps()["maps"]
    assert [names[i] for i in m["cifar10"]["members"]["cat"]] == ["tabby", "tiger cat", "Persian cat", "Siamese cat",
                                                                  "Egyptian cat"]
    assert len(m["cifar100"]["targets"]) == 100 and m["cifar100"]["targets"] == sorted(m["cifar100"]["targets"])
    every = [i for mp in m.values() for ids in mp["members"].values() for i in ids]
    assert all(0 <= i < 1000 for i in every)
    from feddf.generators.build_class_maps import build  # the shipped table is what the builder makes

    assert json.loads(json.dumps(build())) == class_maps()


def test_assignment_is_balanced_and_a_pure_function_of_index():
    plan = parse_classes("0-6")
    labels, targets = assign(plan, np.arange(100), seed=1)
    assert targets is None
    counts = np.bincount(labels, minlength=7)
    assert counts.max() - counts.min() <= 1
    for lo, hi in [(0, 13), (13, 50), (37, 100)]:  # any slice = the same images as the whole run
        np.testing.assert_array_equal(assign(plan, np.arange(lo, hi), seed=1)[0], labels[lo:hi])
    assert not np.array_equal(assign(plan, np.arange(100), seed=2)[0], labels)
    for n in (1, 7, 23):  # every prefix is balanced
        c = np.bincount(labels[:n], minlength=7)
        assert c.max() - c.min() <= 1


def test_target_map_assignment_balances_targets():
    plan = parse_classes("cifar100")
    labels, targets = assign(plan, np.arange(7100), seed=0)
    mapped = [t for t, m in enumerate(plan.members) if m]
    counts = np.bincount(targets, minlength=100)
    assert set(np.flatnonzero(counts)) == set(mapped) and counts[mapped].max() - counts[mapped].min() <= 1
    for t in (3, 44):  # bear, lizard: their ImageNet classes are dealt evenly too
        c = np.bincount(labels[targets == t], minlength=1000)[list(plan.members[t])]
        assert c.max() - c.min() <= 1
        assert set(labels[targets == t]) <= set(plan.members[t])
    np.testing.assert_array_equal(assign(plan, np.arange(500, 900), seed=0)[1], targets[500:900])


# ---------------------------------------------------------------- quantisation
def test_to_uint8_rounds_clamps_resizes_and_keeps_channels():
    x = torch.tensor([-1.5, -1.0, -0.5, 0.0, 1.0, 2.0]).reshape(1, 1, 1, 6).expand(1, 1, 6, 6)
    u = to_uint8(x, 6)
    np.testing.assert_array_equal(u[0, 0, 0].numpy(), [0, 0, 64, 128, 255, 255])  # 63.75 -> 64, 127.5 -> 128
    assert to_uint8(torch.zeros(2, 1, 64, 64), 28).shape == (2, 1, 28, 28)
    assert to_uint8(torch.zeros(2, 3, 16, 16), 32).dtype == torch.uint8
    checker = (torch.arange(64).reshape(8, 8) % 2 * 2 - 1.0).expand(1, 1, 8, 8)  # +-1 stripes
    # antialiased: 1-px stripes average to grey (plain bilinear at stride 2 would hit only one colour)
    assert (to_uint8(checker, 4)[..., 1:3] == 128).all()


def test_cpu_quantizer_is_bit_identical_to_the_torch_formula():
    """base._quantize_blocks (the CPU path, blockwise numpy) equals ((x + 1) * 127.5).round().clamp().to(uint8):
    random values, exact .5 ties of both parities, out-of-range and +-inf, a batch that is not a multiple of the block,
    and a non-contiguous input."""
    from feddf.generators.base import finite_flag

    g = torch.Generator().manual_seed(0)
    x = torch.randn(77, 3, 32, 32, generator=g) * 0.7
    ties = (torch.arange(256, dtype=torch.float32) + 0.5) / 127.5 - 1.0  # (k + 0.5) levels: half to even
    x[0, 0, :8] = ties.reshape(8, 32)
    x[1, 0, 0, :4] = torch.tensor([float("inf"), float("-inf"), 3.0, -7.0])
    ref = ((x + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    assert torch.equal(to_uint8(x, 32), ref)
    xt = x.transpose(2, 3)  # non-contiguous
    assert torch.equal(to_uint8(xt, 32), ((xt + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8))
    big = torch.randn(5, 3, 128, 128, generator=g)  # several images per block boundary case: one image > 1 block
    assert torch.equal(to_uint8(big, 128), ((big + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8))
    # the finite flag: a finite sum proves finiteness; NaN/inf anywhere, or a finite overflow, take the exact check
    assert bool(finite_flag(torch.randn(4, 3, 8, 8)))
    y = torch.zeros(4, 3, 8, 8)
    y[2, 1, 3, 3] = float("nan")
    assert not bool(finite_flag(y))
    y[2, 1, 3, 3] = float("-inf")
    assert not bool(finite_flag(y))
    assert bool(finite_flag(torch.full((4, 8), 3e38)))  # the float32 sum overflows, every value is finite


def test_fused_uint8_and_finite_check_equal_the_two_steps():
    """to_uint8_checked (the CPU sampler's one pass) gives to_uint8's bytes and finite_flag's verdict: finite
    batches, NaN or -inf in a later block, a finite overflow, a resize (the two-step path) and float64 input."""
    from feddf.generators.base import finite_flag, to_uint8_checked

    g = torch.Generator().manual_seed(1)
    x = torch.randn(70, 3, 32, 32, generator=g)  # > 2 blocks of 32 images
    cases = [x]
    for bad in (float("nan"), float("-inf")):
        y = x.clone()
        y[65, 2, 5, 5] = bad  # in the last block
        cases.append(y)
    cases += [torch.full((40, 3, 32, 32), 3e38), x[:, :, :16, :16].contiguous(), x.double()]
    for c in cases:
        res = 32 if c.shape[-1] == 32 else 8
        u8, ok = to_uint8_checked(c, res)
        assert torch.equal(u8, to_uint8(c, res)) and bool(ok) == bool(finite_flag(c))
    assert not bool(to_uint8_checked(cases[1], 32)[1]) and bool(to_uint8_checked(cases[3], 32)[1])
    u8 = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)  # fast mode's own uint8: passed through, finite
    assert to_uint8_checked(u8, 32)[0] is u8 and bool(to_uint8_checked(u8, 32)[1])


# ---------------------------------------------------------------- DCGAN
def test_dcgan_generator_matches_pytorch_examples_layout():
    g = Generator(100, 64, 3, 64)
    sd = g.state_dict()
    assert sd["main.0.weight"].shape == (100, 512, 4, 4) and sd["main.12.weight"].shape == (64, 3, 4, 4)
    assert {k.split(".")[1] for k in sd} == {"0", "1", "3", "4", "6", "7", "9", "10", "12"}
    assert "main.1.running_mean" in sd and "main.10.num_batches_tracked" in sd
    assert Generator(100, 64, 1, 32).state_dict()["main.12.weight"].shape == (64, 1, 1, 1)
    assert Generator(16, 8, 3, 32)(torch.zeros(2, 16)).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("nz,ngf,nc,size", [(100, 64, 3, 64), (20, 8, 1, 32), (16, 8, 3, 32)])
def test_dcgan_checkpoint_roundtrip(tmp_path, nz, ngf, nc, size):
    model = random_init(Generator(nz, ngf, nc, size)).eval()
    ckpt = tmp_path / "netG.pth"
    torch.save(model.state_dict(), ckpt)
    gen = get_generator("dcgan", checkpoint=str(ckpt))
    assert (gen.z_dim, gen.channels, gen.native_resolution, gen.num_classes) == (nz, nc, size, 0)
    assert gen.weights_hash.startswith("sha256:")
    z = torch.randn(3, nz)
    with torch.inference_mode():
        x = gen.forward(z, None, None)
        torch.testing.assert_close(x, model(z))
    assert x.shape == (3, nc, size, size) and x.std() > 0.1  # random_init gives varied images
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, ckpt)  # nn.DataParallel keys
    assert get_generator("dcgan", checkpoint=str(ckpt)).channels == nc


def test_dcgan_bad_checkpoints(tmp_path):
    sd = Generator(100, 64, 3, 64).state_dict()
    bad = dict(sd)
    bad["main.3.weight"] = torch.zeros(512, 256, 3, 3)
    del bad["main.4.running_var"]
    p = tmp_path / "bad.pth"
    torch.save(bad, p)
    with pytest.raises(FeddfError, match=r"missing keys main\.4\.running_var.*wrong shapes main\.3\.weight"):
        get_generator("dcgan", checkpoint=str(p))
    torch.save({"foo.weight": torch.zeros(3)}, p)
    with pytest.raises(FeddfError, match="not a pytorch/examples DCGAN.*foo.weight"):
        get_generator("dcgan", checkpoint=str(p))
    p.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(FeddfError, match="not a readable PyTorch weights file"):
        get_generator("dcgan", checkpoint=str(p))
    torch.save([1, 2], p)
    with pytest.raises(FeddfError, match="not a state_dict"):
        get_generator("dcgan", checkpoint=str(p))
    with pytest.raises(FeddfError, match="does not exist"):
        get_generator("dcgan", checkpoint=str(tmp_path / "nope.pth"))
    with pytest.raises(FeddfError, match="needs --checkpoint"):
        get_generator("dcgan")
    with pytest.raises(FeddfError, match="kernel 3"):
        detect_architecture({"main.0.weight": torch.zeros(100, 512, 4, 4),
                             "main.12.weight": torch.zeros(64, 3, 3, 3)}, "x")


def test_registry_errors():
    with pytest.raises(FeddfError, match="unknown generator 'stylegan'.*biggan-deep-128"):
        get_generator("stylegan")
    assert {"biggan-deep-128", "biggan-deep-256", "biggan-deep-512", "dcgan", "torchscript",
            "dcgan-fashion-mnist"} <= set(GENERATORS)
    entry = GENERATORS["dcgan-fashion-mnist"]
    from pathlib import Path

    if not Path(entry.options["checkpoint"]).is_file():  # a checkout without the weights file
        with pytest.raises(FeddfError, match="not installed"):
            get_generator("dcgan-fashion-mnist")
    with pytest.raises(FeddfError, match="--weights DIR is for BigGAN"):
        get_generator("dcgan", weights="/tmp")


# ---------------------------------------------------------------- TorchScript
class _TinyGen(torch.nn.Module):
    def __init__(self, z_dim: int, four_d: bool):
        super().__init__()
        self.z_dim, self.four_d = z_dim, four_d
        self.fc = torch.nn.Linear(z_dim, 3 * 8 * 8)

    def forward(self, z):
        if self.four_d:
            z = z.flatten(1)
        return torch.tanh(self.fc(z)).view(-1, 3, 8, 8)


def test_torchscript_generator(tmp_path):
    p = tmp_path / "g.pt"
    torch.jit.script(_TinyGen(12, False)).save(str(p))
    gen = get_generator("torchscript", checkpoint=str(p))
    assert (gen.z_dim, gen.channels, gen.native_resolution, gen.batch_invariant) == (12, 3, 8, False)
    assert gen.forward(torch.zeros(2, 12), None, None).shape == (2, 3, 8, 8)


def test_torchscript_errors(tmp_path):
    class NoZ(torch.nn.Module):
        def forward(self, z):
            return torch.tanh(z[:, :3, None, None].expand(-1, 3, 4, 4))

    p = tmp_path / "noz.pt"
    torch.jit.script(NoZ()).save(str(p))
    with pytest.raises(FeddfError, match="--z-dim"):
        get_generator("torchscript", checkpoint=str(p))
    assert get_generator("torchscript", checkpoint=str(p), z_dim=5).native_resolution == 4
    p.write_bytes(b"not a zip")
    with pytest.raises(FeddfError, match="not a loadable TorchScript"):
        get_generator("torchscript", checkpoint=str(p))
    with pytest.raises(FeddfError, match="--random-weights does not apply"):
        get_generator("torchscript", checkpoint=str(p), random_weights=True)


# ---------------------------------------------------------------- BigGAN (random weights: ~1-2 s per image here)
@pytest.fixture(scope="module")
def biggan():
    return get_generator("biggan-deep-128", random_weights=True)


def test_biggan_random_weights_give_finite_varied_images_and_are_batch_invariant(biggan):
    make_batch_invariant(biggan.module)
    z = torch.from_numpy(biggan.noise(0, np.arange(3), 0.4))
    y = torch.tensor([1, 207, 980])
    with torch.inference_mode(), invariant_kernels("cpu"):
        x = biggan.forward(z, y, 0.4)
        parts = torch.cat([biggan.forward(z[:1], y[:1], 0.4), biggan.forward(z[1:], y[1:], 0.4)])
    assert x.shape == (3, 3, 128, 128) and torch.isfinite(x).all()
    assert x.std() > 0.01 and (x[0] - x[1]).abs().max() > 0.01  # not constant, and class/noise matter
    assert torch.equal(x, parts)  # bitwise: the batch an image is in does not matter
    assert biggan.weights_hash == "random" and biggan.random_weights and biggan.uses_truncation
    assert not any(n.endswith("_orig") for n, _ in biggan.module.named_parameters())  # spectral norms folded
    # reproducible random weights: a second build gives the same parameters
    again = get_generator("biggan-deep-128", random_weights=True)
    a, b = dict(biggan.module.named_parameters()), dict(again.module.named_parameters())
    assert all(torch.equal(a[k], b[k]) for k in ("embeddings.weight", "generator.gen_z.weight"))


def test_biggan_weights_dir(tmp_path, biggan, monkeypatch):
    from pytorch_pretrained_biggan import BigGAN
    from pytorch_pretrained_biggan.convert_tf_to_pytorch import BigGAN128

    d = tmp_path / "w"
    d.mkdir()
    torch.manual_seed(1)
    model = BigGAN(BigGAN128)  # the library's own state_dict format (spectral-norm weight_orig/_u/_v keys)
    with torch.no_grad():
        model.generator.bn.weight.fill_(1.0)
        model.generator.bn.bias.zero_()
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    (d / "config.json").write_text(BigGAN128.to_json_string())
    gen = get_generator("biggan-deep-128", weights=str(d))
    assert gen.weights_hash.startswith("sha256:") and not gen.random_weights and gen.native_resolution == 128
    with pytest.raises(FeddfError, match="describes a 128px BigGAN"):
        get_generator("biggan-deep-256", weights=str(d))
    sd = model.state_dict()
    sd.pop("embeddings.weight")
    torch.save(sd, d / "pytorch_model.bin")
    with pytest.raises(FeddfError, match="missing keys embeddings.weight"):
        get_generator("biggan-deep-128", weights=str(d))
    (d / "pytorch_model.bin").write_bytes(b"corrupt")
    with pytest.raises(FeddfError, match="not a readable PyTorch weights file"):
        get_generator("biggan-deep-128", weights=str(d))
    (d / "config.json").write_text("{not json")
    with pytest.raises(FeddfError, match="not a valid BigGAN config.json"):
        get_generator("biggan-deep-128", weights=str(d))
    with pytest.raises(FeddfError, match="missing config.json, pytorch_model.bin"):
        get_generator("biggan-deep-128", weights=str(tmp_path / "empty"))

    import pytorch_pretrained_biggan.file_utils as fu

    def offline(*a, **k):  # what the library raises without network (we never download in tests)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(fu, "cached_path", offline)
    with pytest.raises(FeddfError, match="cannot be downloaded here.*--weights DIR"):
        get_generator("biggan-deep-128")


def test_biggan_256_512_architectures():
    from feddf.generators.biggan import _config

    assert [_config(f"biggan-deep-{r}").output_dim for r in (128, 256, 512)] == [128, 256, 512]
    assert len(_config("biggan-deep-512").layers) == 14


@pytest.mark.parametrize("make", [
    lambda: torch.nn.Conv2d(3, 8, 3, padding=1), lambda: torch.nn.Conv2d(1, 8, 5, padding=2),
    lambda: torch.nn.Conv2d(16, 8, 1), lambda: torch.nn.ConvTranspose2d(16, 8, 4, 2, 1),
    lambda: torch.nn.Linear(64, 32)])
def test_cpu_kernels_are_batch_invariant(make):
    """Under invariant_kernels (+ make_batch_invariant for linears), a sample's output is bitwise the same in a batch
    of 1, 5 or 20 (oneDNN and NNPACK, which switches on at batch 16, would differ)."""
    torch.manual_seed(0)
    m = make()
    make_batch_invariant(m)
    x = torch.randn(20, 64) if isinstance(m, torch.nn.Linear) else torch.randn(20, m.in_channels, 12, 12)
    with torch.inference_mode(), invariant_kernels("cpu"):
        full = m(x)
        assert torch.equal(full, torch.cat([m(x[i:i + 5]) for i in range(0, 20, 5)]))
        assert torch.equal(full[7:8], m(x[7:8]))
