"""What every generator offers the sampler, plus the pieces that make image i depend only on (weights, seed, i, classes).

    python -c "from feddf.generators.base import normal_noise; print(normal_noise(0, [0, 1], 4))"

Determinism, and why each piece is here:
- Noise is counter-based: z[i, j] = f(seed, i, j) (SplitMix64 of a per-seed key + counter, then the inverse normal CDF),
  so image i's noise does not depend on the batch it is in, on resumes or on which rank makes it. BigGAN noise is the
  same distribution as pytorch_pretrained_biggan's `truncated_noise_sample` (truncation * truncnorm(-2, 2)), computed
  with the inverse CDF instead of scipy's seeded sampler (which ties values to the batch layout).
- Floating point: on CPU the forward is made batch- and thread-count-invariant: BLAS linears give row-i results that
  depend on the batch size (measured: 1e-6 differences, enough to flip a uint8 rounding), so `batch_invariant` runs
  them as one M=1 product per sample (bmm); oneDNN convolutions pick algorithms by batch size and thread count and NNPACK
  takes over from batch 16, so both are disabled (leaving the native per-sample im2col+gemm path); spectral norms are folded into plain weights once,
  single-threaded (their dot products are thread-count dependent reductions). On CUDA, kernels depend on the batch shape,
  so the sampler instead runs the forward on fixed, index-aligned groups (`CUDA_GROUP` images, padded at the end).
All of this is the default ("bitwise") mode; `feddf gen --fast` (fast.py) keeps the noise and drops the rest.
"""
from __future__ import annotations

import contextlib
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from feddf.errors import FeddfError
from feddf.utils import check_finite_weights, load_torch_file

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_TRUNC_LO, _TRUNC_HI = -2.0, 2.0  # BigGAN's truncated normal bounds (as in truncated_noise_sample)
CUDA_GROUP = 256                   # images per forward call on CUDA (part of the cache identity there)
NOISE_SCHEME = "splitmix64-ndtri-v1"


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (bijective 64-bit mixer); uint64 arithmetic wraps, as intended."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def stream_key(seed: int, stream: int) -> np.uint64:
    """A 64-bit key per (seed, stream); streams separate noise from class shuffles."""
    return np.random.SeedSequence([int(seed) & (2**63 - 1), int(stream)]).generate_state(1, np.uint64)[0]


def counter_uniform(key: np.uint64, counters: np.ndarray) -> np.ndarray:
    """Uniforms in the open interval (0, 1), float64, one per uint64 counter: the SplitMix64 stream at those positions."""
    c = np.asarray(counters, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = _mix64(key + (c + np.uint64(1)) * _GAMMA)
    return ((x >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 2**53)


def _noise_uniform(seed: int, indices, dim: int) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.uint64).reshape(-1, 1)
    counters = idx * np.uint64(dim) + np.arange(dim, dtype=np.uint64)  # (B, dim): unique per (i, j)
    return counter_uniform(stream_key(seed, 0), counters)


def normal_noise(seed: int, indices, dim: int) -> np.ndarray:
    """Standard normal z (B, dim) float32 for image indices; row b depends only on (seed, indices[b])."""
    from scipy.special import ndtri

    return ndtri(_noise_uniform(seed, indices, dim)).astype(np.float32)


def truncated_noise(seed: int, indices, dim: int, truncation: float) -> np.ndarray:
    """truncation * truncnorm(-2, 2) noise (B, dim) float32, by inverse CDF; row b depends only on (seed, indices[b])."""
    from scipy.special import ndtr, ndtri

    lo, hi = ndtr(_TRUNC_LO), ndtr(_TRUNC_HI)
    u = _noise_uniform(seed, indices, dim)
    return (truncation * ndtri(lo + u * (hi - lo))).astype(np.float32)


@dataclass
class LoadedGenerator:
    """A generator ready to sample. forward(z (B, z_dim), labels int64 (B,) or None, truncation) -> (B, C, H, W) in
    [-1, 1]. `module` is the nn.Module (moved with .to()); `batch_invariant` says whether the forward's per-image
    results are independent of the batch (True for our CPU paths); `provenance` goes into the cache attributes."""

    name: str
    module: object
    z_dim: int
    channels: int
    native_resolution: int
    num_classes: int = 0               # 0: unconditional (labels are -1)
    uses_truncation: bool = False
    weights_hash: str = ""
    random_weights: bool = False
    batch_invariant: bool = True
    default_resolution: int = 32
    label_names: list[str] | None = None
    provenance: dict = field(default_factory=dict)

    def noise(self, seed: int, indices, truncation: float | None) -> np.ndarray:
        if self.uses_truncation:
            return truncated_noise(seed, indices, self.z_dim, float(truncation))
        return normal_noise(seed, indices, self.z_dim)

    def forward(self, z, labels, truncation):  # pragma: no cover - every generator overrides
        raise NotImplementedError


# ------------------------------------------------------------------ loading weights
def load_state_dict_strict(module, state: dict, what: str) -> None:
    """load_state_dict(strict=True) with a one-line FeddfError naming missing/unexpected/mis-shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state)
                    if getattr(state[k], "shape", None) != own[k].shape)

    def few(keys):
        return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {few(unexpected)}")
        if shapes:
            parts.append("wrong shapes " + few([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                                                for k in shapes]))
        raise FeddfError(f"{what} does not match the architecture: {'; '.join(parts)}")
    check_finite_weights(state, f"generator weights {what}")
    module.load_state_dict(state, strict=True)


def load_weights_file(path: Path, what: str) -> dict:
    state = load_torch_file(path, what, "re-download or re-export it")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise FeddfError(f"{what} {path} holds a {type(state).__name__}, not a state_dict of tensors")
    return state


# ------------------------------------------------------------------ batch/thread invariance (CPU)
def _bi_linear_forward(self, x):
    import torch

    # x (B, K); weight (N, K): one (1, K) @ (K, N) product per sample, so row b never depends on B.
    w = self.weight.t().unsqueeze(0).expand(x.shape[0], -1, -1)
    y = torch.bmm(x.unsqueeze(1), w).squeeze(1)
    return y if self.bias is None else y + self.bias


@contextlib.contextmanager
def single_thread():
    """Run a block with one intra-op thread (reductions then have one fixed order), restoring the count after."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def fold_spectral_norm(module) -> int:
    """Replace every (old-style hook) spectral norm by its eval-mode weight W / (u . W v); returns how many.
    Single-threaded so the folded weights are the same whatever the thread count."""
    import torch
    from torch.nn.utils import remove_spectral_norm
    from torch.nn.utils.spectral_norm import SpectralNorm

    count = 0
    with single_thread(), torch.no_grad():
        for m in module.modules():
            if any(isinstance(h, SpectralNorm) for h in m._forward_pre_hooks.values()):
                remove_spectral_norm(m)
                count += 1
    return count


def make_batch_invariant(module) -> None:
    """Patch every nn.Linear of `module` to the per-sample product (see module docstring)."""
    import torch

    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            m.forward = types.MethodType(_bi_linear_forward, m)


@contextlib.contextmanager
def invariant_kernels(device_type: str):
    """On CPU: oneDNN and NNPACK off (their conv algorithms depend on batch size and threads), leaving PyTorch's
    per-sample im2col + gemm path. Elsewhere: deterministic cuDNN, no autotuning. Flags are process-wide."""
    import torch

    if device_type == "cpu":
        with warnings.catch_warnings():  # flags() also sets a oneDNN TF32 switch that warns on CPU-only builds
            warnings.simplefilter("ignore", UserWarning)
            ctx = torch.backends.mkldnn.flags(enabled=False)
            ctx.__enter__()
        try:
            # NNPACK takes over convolutions from batch 16 on, with other rounding than the per-sample path
            with torch.backends.nnpack.flags(enabled=False):
                yield
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                ctx.__exit__(None, None, None)
    else:
        old = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        try:
            yield
        finally:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


def finite_flag(x):
    """0-dim bool tensor on x's device: True when every value of the batch is finite (no device sync)."""
    import torch

    if x.device.type == "cpu":
        # One cheap reduction (~0.8 us per 3x32x32 image, vs ~12 for isfinite().all()): a NaN/inf anywhere makes the
        # sum non-finite, so a finite sum proves every value finite; only a non-finite sum (or a finite overflow)
        # needs the exact check. On CUDA the flag must not sync, so it stays the one exact kernel there.
        if bool(torch.isfinite(x.sum())):
            return torch.ones((), dtype=torch.bool)
    return torch.isfinite(x).all()


def check_batch_finite(flag, generator: str, batch: int, start: int, end: int) -> None:
    """Raise when a generator batch held NaN/inf (flag from finite_flag): quantising them would write black or
    saturated images that look valid. Called before the batch reaches the cache, so nothing of it is written."""
    if not bool(flag):
        raise FeddfError(f"generator {generator} produced NaN/inf values in batch {batch} (images {start}..{end - 1})"
                         "; nothing of that batch was written: its weights or inputs are broken (check --checkpoint"
                         "/--weights; with --dtype fp16/bf16 try fp32)")


def to_uint8(x, resolution: int):
    """(B, C, H, W) float in [-1, 1] -> (B, C, R, R) uint8: antialiased bilinear resize (skipped when H == R), then
    (x + 1) * 127.5, round half to even, clamp to [0, 255]. Channels are kept."""
    import torch
    import torch.nn.functional as F

    x = x.float()
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    if x.device.type != "cpu":
        return ((x + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return torch.from_numpy(_quantize_blocks(x.detach().contiguous().numpy()))


def to_uint8_checked(x, resolution: int):
    """(to_uint8(x, resolution), finite_flag(x)) in one go: on CPU without a resize the finite check is a float32
    sum of each block while the uint8 step has it in cache (~0.2 instead of ~1 us per 3x32x32 image); a non-finite
    (or overflowing) block sum falls back to the exact check, as in finite_flag. uint8 input (fast mode's own
    quantisation) is returned as it is, finite."""
    import torch

    if x.dtype == torch.uint8:
        return x, torch.ones((), dtype=torch.bool)
    if x.device.type != "cpu" or x.dtype != torch.float32 or tuple(x.shape[-2:]) != (resolution, resolution):
        return to_uint8(x, resolution), finite_flag(x)
    v = x.detach().contiguous().numpy()
    u8, finite = _quantize_blocks(v, check=True)
    if not finite:
        import numpy as np

        finite = bool(np.isfinite(v).all())
    return torch.from_numpy(u8), torch.tensor(finite)


def _quantize_blocks(v, check: bool = False):
    """float32 (B, ...) -> uint8: the same four steps as the CUDA line above ((x + 1) * 127.5, round half to even,
    clamp, cast; bit-identical, tests/test_generators.py), done in place on blocks of _QUANT_BLOCK images that stay in
    the CPU's cache: ~2.6 instead of ~6 us per 3x32x32 image, where four whole-batch passes ran at memory speed.
    With check: (uint8, True when every block's float32 sum was finite), which proves every value finite."""
    import numpy as np

    out = np.empty(v.shape, np.uint8)
    step = max(1, _QUANT_BYTES // max(1, v[:1].nbytes))  # images per block
    buf = np.empty((min(step, len(v)),) + v.shape[1:], np.float32)
    finite = True
    with np.errstate(invalid="ignore", over="ignore"):  # NaN casts to 0 as in torch (such batches are refused anyway)
        for i in range(0, len(v), step):
            src = v[i:i + step]
            b = buf[:len(src)]
            if check and finite:
                finite = bool(np.isfinite(np.add.reduce(src, axis=None, dtype=np.float32)))
            np.add(src, 1.0, out=b)
            b *= 127.5
            np.rint(b, out=b)  # round half to even, like torch.round
            np.clip(b, 0, 255, out=b)
            out[i:i + len(src)] = b
    return (out, finite) if check else out


_QUANT_BYTES = 384 << 10  # float bytes per block: 32 images of 3x32x32, inside a core's L2
