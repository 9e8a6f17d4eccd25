"""`feddf gen --fast` (feddf/generators/fast.py): each rewritten piece against the reference on random weights, and the
mode in the cache identity. Tolerances are stated per test; timings are never asserted (benchmarks/bench_gen.py).

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/test_fast_mode.py
"""
from __future__ import annotations

import copy
import json
import warnings

import h5py
import numpy as np
import pytest
import torch

from feddf.generators.base import to_uint8
from feddf.generators.fast import GuardedCompile, make_step, quantize_fused, resolve_compile
from tests.conftest import random_dcgan_checkpoint, run_cli


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return random_dcgan_checkpoint(tmp_path_factory.mktemp("fast") / "g.pth", nc=3)


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_sdpa_attention_equals_library_attention():
    """The SDPA forward of pytorch_pretrained_biggan's SelfAttn = the library's bmm/softmax/bmm forward:
    relative L2 error < 1e-5 and max abs error < 1e-4 in fp32 on random inputs and weights (gamma = 1, so the
    attention branch counts: the library initialises gamma to 0); under bf16 autocast < 5e-2 and at most 1.5x the
    library's own bf16 error."""
    from pytorch_pretrained_biggan.model import SelfAttn

    from feddf.generators.base import fold_spectral_norm
    from feddf.generators.biggan import fast_attention

    torch.manual_seed(1)
    ref = SelfAttn(64).eval()
    fold_spectral_norm(ref)
    with torch.no_grad():
        ref.gamma.fill_(1.0)
    fast = copy.deepcopy(ref)
    assert fast_attention(fast) == 1
    x = torch.randn(3, 64, 16, 12)
    with torch.inference_mode():
        a, b = fast(x), ref(x)
        attn = b - x  # the attention branch alone, so the tolerance is not hidden by the residual
    assert _rel(a - x, attn) < 1e-5 and float((a - b).abs().max()) < 1e-4
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # what --fast runs on CUDA
        fast_bf16, lib_bf16 = fast(x).float() - x, ref(x).float() - x
    # bf16: no worse than the library's own attention in bf16 (measured 0.024 vs 0.032 relative L2)
    assert _rel(fast_bf16, attn) < 5e-2 and _rel(fast_bf16, attn) <= 1.5 * _rel(lib_bf16, attn)


def test_sdpa_attention_whole_biggan_forward():
    """BigGAN-deep-128 (random weights, every attention gamma = 0.5) with the SDPA attention vs the library's:
    relative L2 error of the [-1, 1] images < 1e-4 (fp32, CPU), and the uint8 images within 1 level."""
    from feddf.generators import get_generator
    from feddf.generators.biggan import fast_attention
    from pytorch_pretrained_biggan.model import SelfAttn

    gen = get_generator("biggan-deep-128", random_weights=True)
    with torch.no_grad():
        for m in gen.module.modules():
            if isinstance(m, SelfAttn):
                m.gamma.fill_(0.5)
    fast = copy.copy(gen)
    fast.module = copy.deepcopy(gen.module)
    assert fast_attention(fast.module) >= 1
    z = torch.from_numpy(gen.noise(0, np.arange(2), 0.4))
    y = torch.tensor([1, 500])
    with torch.inference_mode():
        a, b = fast.forward(z, y, 0.4), gen.forward(z, y, 0.4)
    assert torch.isfinite(a).all() and _rel(a, b) < 1e-4
    assert int((to_uint8(a, 32).int() - to_uint8(b, 32).int()).abs().max()) <= 1


@pytest.mark.parametrize("shape,res", [((6, 3, 128, 128), 32), ((6, 1, 64, 64), 28), ((6, 3, 32, 32), 32)])
def test_quantize_fused_equals_to_uint8(shape, res):
    """quantize_fused (affine before the resize, one pass) = base.to_uint8 within 1 uint8 level, identical on
    >= 99% of the values, for bf16 inputs too; contiguous uint8 of the same shape."""
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(shape, generator=g) * 2.2 - 1.1).clamp(-1, 1)  # values at the clamp edges too
    for inp in (x, x.to(torch.bfloat16)):
        a, b = quantize_fused(inp, res), to_uint8(inp, res)
        assert a.dtype == torch.uint8 and a.shape == b.shape == (shape[0], shape[1], res, res) and a.is_contiguous()
        d = (a.int() - b.int()).abs()
        assert int(d.max()) <= 1 and float((d == 0).float().mean()) >= 0.99


def _dcgan_step():
    from feddf.generators.dcgan import Generator, random_init

    torch.manual_seed(0)
    model = random_init(Generator(16, 8, 3, 32)).eval()

    class G:  # the LoadedGenerator interface make_step uses
        module = model

        @staticmethod
        def forward(z, labels, truncation):
            return model(z)

    return make_step(G, device_type="cpu", truncation=None, resolution=28, amp=None)


def test_compiled_step_equals_eager():
    """The guarded torch.compile of the fast step (dynamo graph capture; the aot_eager backend, because inductor's
    C++ build of even a tiny DCGAN step took 91 s on this CPU) gives exactly the eager uint8 images."""
    step = _dcgan_step()
    z = torch.randn(8, 16)
    with torch.inference_mode():
        guarded = GuardedCompile(step, "on", backend="aot_eager")
        out = guarded(z, None)
        assert guarded.status == "compiled", guarded.status
        assert torch.equal(out, step(z, None))


def test_compile_guard_falls_back_to_eager():
    """A compile failure (here a backend that raises) warns once and the step runs eagerly from then on."""
    def broken(gm, example_inputs):
        raise RuntimeError("no compiler here")

    step = _dcgan_step()
    z = torch.randn(4, 16)
    with torch.inference_mode(), warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        guarded = GuardedCompile(step, "on", backend=broken)
        out = guarded(z, None)
        again = guarded(z, None)
    assert guarded.status.startswith("eager (fell back") and torch.equal(out, step(z, None)) and torch.equal(again, out)
    assert sum("torch.compile failed" in str(x.message) for x in w) == 1
    assert GuardedCompile(step, "off").status == "off"
    assert resolve_compile("auto", "cpu") == "off" and resolve_compile("auto", "cuda") == "on"
    assert resolve_compile("graphs", "cpu") == "on"


def _gen(ckpt, out, *extra):
    return run_cli("gen", "--generator", "dcgan", "--checkpoint", str(ckpt), "--n", "70", "--out", str(out),
                   "--quiet", "--json", "--chunk-images", "8", *extra)


def test_gen_fast_cache_identity_and_resume(tmp_path, ckpt):
    """A --fast cache on CPU: valid, names the mode in attrs + identity, same labels as bitwise and images within
    1 level of it; a resume in the other mode is refused (both ways); a --fast resume from a point that is not a
    batch boundary, at another batch size, completes with the same labels and images within 1 level."""
    fast, bit = tmp_path / "fast.h5", tmp_path / "bit.h5"
    p = _gen(ckpt, fast, "--fast", "--batch-size", "32")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert s["mode"] == "fast" and s["generated"] == 70 and s["compile"] == "off" and s["dtype"] == "fp32"
    assert _gen(ckpt, bit, "--batch-size", "32").returncode == 0
    with h5py.File(fast, "r") as f, h5py.File(bit, "r") as g:
        ident = json.loads(f.attrs["identity"])
        assert ident["mode"] == "fast" and f.attrs["mode"] == "fast" and "rounding" in f.attrs["mode_note"]
        assert json.loads(g.attrs["identity"])["mode"] == "bitwise" and bool(f.attrs["complete"])
        fi, gi = f["images"][:], g["images"][:]
        assert np.array_equal(f["labels"][:], g["labels"][:])
    assert int(np.abs(fi.astype(int) - gi.astype(int)).max()) <= 1
    for out, flags in ((fast, []), (bit, ["--fast"])):  # the other mode is refused, nothing is touched
        before = out.read_bytes()
        r = _gen(ckpt, out, *flags, "--batch-size", "32")
        assert r.returncode == 1 and "mode: cache has" in r.stderr and "Traceback" not in r.stderr
        assert out.read_bytes() == before
    with h5py.File(fast, "r+") as f:  # as if killed after 40 committed images (5 chunks; 40 % 32 != 0)
        f["committed"][()] = 40
        f.attrs["complete"] = False
    r = _gen(ckpt, fast, "--fast", "--batch-size", "24")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["resumed_from"] == 40
    with h5py.File(fast, "r") as f:
        assert bool(f.attrs["complete"]) and int(f["committed"][()]) == 70
        assert np.array_equal(f["labels"][:], np.full(70, -1))
        assert int(np.abs(f["images"][:].astype(int) - fi.astype(int)).max()) <= 1


def test_gen_fast_biggan_cli(tmp_path):
    """BigGAN --fast end to end on CPU (SDPA attention in the pipeline): the classes are those of bitwise mode."""
    from feddf.generators.classes import assign, parse_classes

    out = tmp_path / "b.h5"
    p = run_cli("gen", "--generator", "biggan-deep-128", "--random-weights", "--fast", "--n", "3", "--batch-size",
                "2", "--classes", "cifar10", "--out", str(out), "--quiet", "--json")
    assert p.returncode == 0, p.stderr
    with h5py.File(out, "r") as f:
        assert f.attrs["mode"] == "fast" and "sdpa-attention" in f.attrs["fast_changes"]
        labels = f["labels"][:]
        img = f["images"][:]
    assert img.shape == (3, 3, 32, 32) and img.std() > 0
    assert np.array_equal(labels, assign(parse_classes("cifar10", 1000), np.arange(3), 0)[0])


def test_gen_fast_flag_errors():
    p = run_cli("gen", "--generator", "dcgan", "--random-weights", "--n", "4", "--compile", "on")
    assert p.returncode == 1 and "--compile on applies to --fast only" in p.stderr
    h = run_cli("gen", "--help")
    assert h.returncode == 0 and "--fast" in h.stdout and "--compile" in h.stdout


@pytest.mark.slow  # ~4 min on 2 cores: every benchmark of the GPU script, once, at tiny sizes
def test_gpu_suite_runs_end_to_end_on_cpu(tmp_path):
    """benchmarks/gpu_suite.sh --device cpu --tiny: every step runs and lands in the one JSON file, with the device,
    both generation modes and the --fast end-to-end cache, so the GPU script cannot rot before a GPU is lent.
    bench_server (a minute or more on a CPU even with --quick) is recorded as skipped with its reason, and passes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "suite.json"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    p = subprocess.run(["bash", str(root / "benchmarks" / "gpu_suite.sh"), "--device", "cpu", "--tiny", "--out",
                        str(out)], capture_output=True, text=True, timeout=900, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads(out.read_text())
    steps = res["steps"]
    assert set(steps) == {"device", "bench_gen_biggan", "gen_e2e", "bench_gen_dcgan", "bench_distill_resnet8",
                          "bench_distill_resnet20", "bench_distill_vgg9", "bench_stream", "bench_server"}
    server = steps.pop("bench_server")
    assert server["status"] == "skipped" and server["reason"] and "figures" not in server, server
    assert all(v["status"] == "ok" and "figures" in v for v in steps.values()), steps
    assert res["device"] == "cpu" and res["gpu"] is None and steps["device"]["figures"]["matmul_tflops"] > 0
    bg = steps["bench_gen_biggan"]["figures"]
    assert bg["biggan_deep_128"]["mode"] == "bitwise" and bg["biggan_deep_128_fast"]["mode"] == "fast"
    assert res["biggan_fast_over_bitwise"] == bg["biggan_deep_128_fast_over_bitwise"] > 0
    assert steps["gen_e2e"]["figures"]["mode"] == "fast" and steps["gen_e2e"]["figures"]["generated"] == 2
    assert {"dcgan", "dcgan_fast"} <= set(steps["bench_gen_dcgan"]["figures"])
    assert steps["bench_distill_vgg9"]["figures"]["config"]["arch"] == "vgg9"
    assert not list(tmp_path.glob("feddf-gpu-suite.*"))  # its work folder is removed
