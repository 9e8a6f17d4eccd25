"""Throughput mode for `feddf gen --fast`: the pieces that trade bitwise batch-invariance for speed.

    feddf gen --generator dcgan --random-weights --fast --n 512 --out /tmp/fast.h5

The default mode ("bitwise", base.py) makes image i's bytes independent of the batch, the resume point and the rank;
on CUDA that costs fixed 256-image groups, deterministic cuDNN without autotuning and per-sample linears. "fast" keeps
what a resume needs (image i has the same index, noise and class; base.py's counter-based noise) but lets the bytes
of an image differ by float rounding between runs, batch sizes and resumes (typically a uint8 level here and there):
- cuDNN autotuning and TF32 on, deterministic algorithms off; the library's plain nn.Linear (no per-sample product);
- large fixed-size batches (padded at the end, so the shape never changes and a compiled forward never recompiles);
- on CUDA channels_last and bf16 autocast by default;
- BigGAN's self-attention through scaled_dot_product_attention (biggan.fast_attention);
- noise -> forward -> resize -> uint8 as one step function (`make_step`), compiled with torch.compile when asked or
  by default on CUDA ("graphs" adds CUDA graphs), falling back to eager on any compile error (`guarded_compile`).
The mode is part of the cache identity: a fast cache only resumes in fast mode and a bitwise one only in bitwise mode.
"""
from __future__ import annotations

import contextlib
import warnings

MODES = ("bitwise", "fast")
COMPILE_CHOICES = ("auto", "on", "graphs", "off")   # auto: "on" on CUDA, "off" elsewhere
FAST_NOTE = ("fast mode: same indices, noise and classes as bitwise mode, but the bytes of an image may differ by "
             "float rounding (about one uint8 level) between runs, batch sizes, resumes and devices")


def resolve_compile(choice: str, device_type: str) -> str:
    """'on' | 'graphs' | 'off' for a --compile choice on a device type."""
    if choice == "auto":
        return "on" if device_type == "cuda" else "off"
    if choice == "graphs" and device_type != "cuda":
        return "on"  # CUDA graphs need CUDA; the compiled forward alone still applies
    return choice


@contextlib.contextmanager
def fast_kernels(device_type: str):
    """cuDNN autotuning + TF32 on, determinism off, restored after (process-wide flags). Nothing to change on CPU:
    there the fast path simply leaves oneDNN/NNPACK on (bitwise mode turns them off)."""
    import torch

    if device_type != "cuda":
        yield
        return
    cudnn, mm = torch.backends.cudnn, torch.backends.cuda.matmul
    old = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, mm.allow_tf32)
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, mm.allow_tf32 = True, False, True, True
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, mm.allow_tf32 = old


def quantize_fused(x, resolution: int):
    """(B, C, H, W) in [-1, 1] (any float dtype) -> contiguous uint8 (B, C, R, R), computed on x's device.

    Same function as base.to_uint8, arranged for one pass: the affine (x + 1) * 127.5 goes before the resize (the
    antialiased bilinear weights of each output pixel sum to 1, so the two commute up to float rounding), then round
    half to even, clamp and cast; under torch.compile all of it fuses into the generator's last kernels. Equal to
    to_uint8 within one uint8 level (tests/test_fast_mode.py)."""
    import torch
    import torch.nn.functional as F

    y = x.float().mul(127.5).add_(127.5)
    if y.shape[-1] != resolution or y.shape[-2] != resolution:
        y = F.interpolate(y, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8).contiguous()


def make_step(gen, *, device_type: str, truncation, resolution: int, amp):
    """step(z (B, z_dim), labels (B,) or None) -> uint8 (B, C, R, R): forward under autocast + quantize_fused."""
    import torch

    def step(z, labels):
        with torch.autocast(device_type, dtype=amp, enabled=amp is not None):
            x = gen.forward(z, labels, truncation)
        return quantize_fused(x, resolution)

    return step


class GuardedCompile:
    """torch.compile(fn) that falls back to eager fn for good if compiling, or a compiled call, fails (with a warning).
    `status` says what ran: "off", "compiled", "compiled+graphs" or "eager (fell back: <error>)"."""

    def __init__(self, fn, mode: str, backend="inductor"):
        self.eager, self.fn, self.status = fn, fn, "off"
        if mode == "off":
            return
        try:
            import torch

            kw = {"mode": "reduce-overhead"} if mode == "graphs" else {}
            self.fn = torch.compile(fn, fullgraph=False, dynamic=False, backend=backend, **kw)
            self.status = "compiled+graphs" if mode == "graphs" else "compiled"
        except Exception as e:  # noqa: BLE001 - e.g. no compiler backend on this platform
            self._fall_back(e)

    def _fall_back(self, e: BaseException) -> None:
        msg = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        warnings.warn(f"feddf gen --fast: torch.compile failed ({msg}); continuing with the eager forward",
                      RuntimeWarning, stacklevel=3)
        self.fn, self.status = self.eager, f"eager (fell back: {msg})"

    def __call__(self, *args):
        if self.fn is self.eager:
            return self.eager(*args)
        try:
            out = self.fn(*args)
            if self.status == "compiled+graphs":
                # the graph's output buffer is reused by the next replay: keep our own copy (uint8, small)
                out = out.clone()
            return out
        except Exception as e:  # noqa: BLE001 - compile errors surface at the first call
            self._fall_back(e)
            return self.eager(*args)


def prepare_fast(gen, device) -> list[str]:
    """Move gen to device for fast mode; returns the list of what was changed (for the cache attributes)."""
    import torch

    done = []
    from feddf.generators.biggan import fast_attention

    n = fast_attention(gen.module)
    if n:
        done.append(f"sdpa-attention x{n}")
    gen.module.to(device)
    if device.type == "cuda":
        gen.module.to(memory_format=torch.channels_last)
        done.append("channels_last")
        done.append("cudnn-benchmark+tf32")
    return done
