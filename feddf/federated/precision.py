"""Client numerical precision (`--client-precision`): quantisers, the training wrapper and the upload payload.

    python -c "import torch; from feddf.federated.precision import binarize, pack_bits, unpack_bits; \
b, s, m = binarize(torch.randn(4, 3, 3, 3)); print(b.shape, s, len(pack_bits(b)))"

Registry `PRECISIONS` (what a client computes with, and what it uploads):
  fp32    full precision; uploads fp32 tensors.
  bf16    trains under torch.autocast(bfloat16) (fast on CPU and GPU) with every floating parameter rounded to
          bfloat16 after each optimizer step (an fp32 master copy keeps the rounding residual, see below); uploads
          every floating tensor of the state dict as bfloat16.
  fp16    the same with float16. Autocast fp16 only on CUDA: on this CPU build (torch 2.14) a float16 convolution
          backward has no fast kernel (the `cnn` trains ~40x slower: 2.3 s vs 0.07 s a batch of 64, measured), so on
          CPU the forward/backward run in fp32 with fp16-rounded weights. Uploads float16.
  binary  1-bit weights, the paper code's `ModelQuantization` (pcode/local_training/compressor.py: 1 bit, memory on,
          BatchNorm skipped; its default Q6 quantiser, XNOR-Net style): every weight tensor with >= 2 dims (conv, linear)
          is stored as, per filter f (a slice along dim 0),  q = sign(w - mu_f) * s_f + mu_f  with mu_f the filter's
          mean and s_f = sqrt(mean((w - mu_f)^2)) (its RMS after centering: the code's "filterwise_std", scaling
          "itself"). sign(0) counts as +1 (one bit has no zero). The code uses one mu/s per layer for 2-D (linear)
          weights; here every output row is a filter (8 more bytes a row, less error). BatchNorm, biases and buffers
          stay fp32. Uploads the packed bits (1 bit a weight) + s_f + mu_f (fp32) + the fp32 rest.

Training (`QuantizedTraining`): the module's parameters always hold the quantised values q, so forward and backward
compute with them; a memory m = latent - q holds the residual. After each optimizer step (which moves q by the
gradient taken at q) the wrapper sets latent = p + m, q = Q(latent), m = latent - q, p = q. This is the paper code's
error-feedback memory, and it equals a straight-through estimator on latent fp32 weights: d loss / d latent := d loss
/ d q. Each round a client starts from its architecture's fp32 server model and quantises it itself (m0 = w - Q(w)).

Payload (`encode` / `decode`): b"FDQ1", a little-endian u32 header length, a JSON header (precision; per tensor: name,
kind raw|binary, dtype, shape) and the buffers in header order: raw tensors as their bytes; binary tensors as
ceil(n / 8) bytes of np.packbits (big bit order) then F fp32 scales then F fp32 means. `decode` returns the fp32 state
the server uses (half values widen exactly; binary ones are rebuilt with the same fp32 expression the client used, so
the server's teacher computes with exactly the client's binarised weights).
"""
from __future__ import annotations

import contextlib
import json
import struct
from typing import Callable

import numpy as np
import torch
from torch import nn

from feddf.errors import FeddfError

PRECISIONS = ("fp32", "bf16", "fp16", "binary")
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}
MAGIC = b"FDQ1"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64,
           "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool}


def parse_precisions(value: str) -> list[str]:
    """'fp32' or 'fp32,binary' -> the list; FeddfError (one line) on an unknown name."""
    names = [v.strip().lower() for v in str(value).split(",") if v.strip()]
    bad = [v for v in names if v not in PRECISIONS] or ([] if names else [repr(value)])
    if bad:
        raise FeddfError(f"--client-precision {value}: unknown precision {bad[0]}; choose {', '.join(PRECISIONS)} "
                         f"(one for every client, or a comma list assigned to clients like --archs)")
    return names


# ---- binary: per-filter sign * scale + mean ------------------------------------------------------------------
def binarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w (F, ...) -> (bits bool (F, ...) = w - mu_f >= 0, scale (F,) fp32, mean (F,) fp32)."""
    f = w.detach().float().reshape(w.shape[0], -1)
    mean = f.mean(1)
    centred = f - mean[:, None]
    scale = centred.pow(2).mean(1).sqrt()
    return (centred >= 0).reshape(w.shape), scale, mean


def debinarize(bits: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """(bits (F, ...), scale (F,), mean (F,)) -> fp32 weights sign * scale + mean (the one expression both sides use)."""
    shape = (-1,) + (1,) * (bits.dim() - 1)
    s, m = scale.float().reshape(shape), mean.float().reshape(shape)
    return torch.where(bits, s, -s) + m


def pack_bits(bits: torch.Tensor) -> bytes:
    return np.packbits(bits.reshape(-1).cpu().numpy().astype(np.uint8)).tobytes()


def unpack_bits(data: bytes, shape) -> torch.Tensor:
    n = int(np.prod(shape)) if len(shape) else 1
    return torch.from_numpy(np.unpackbits(np.frombuffer(data, np.uint8), count=n).astype(bool)).reshape(shape)


def is_binarized(name: str, t: torch.Tensor) -> bool:
    """Conv/linear weights (floating, >= 2 dims); BatchNorm, biases and buffers (<= 1 dim) stay fp32."""
    return t.is_floating_point() and t.dim() >= 2


def quantize(t: torch.Tensor, precision: str) -> torch.Tensor:
    """The value a client of `precision` holds for fp32 tensor t (fp32 result)."""
    if precision == "binary":
        return debinarize(*binarize(t)) if is_binarized("", t) else t.detach().float()
    if precision in HALF:
        return t.detach().to(HALF[precision]).float()
    return t.detach().float()


# ---- training wrapper ------------------------------------------------------------------------------------------
class QuantizedTraining:
    """Hooks of `client.local_train` for a client of `precision` (see the module docstring)."""

    def __init__(self, model: nn.Module, precision: str, device: torch.device | str = "cpu"):
        self.precision = precision
        self.device_type = torch.device(device).type
        if precision == "binary":
            self.params = [(n, p) for n, p in model.named_parameters() if is_binarized(n, p)]
        elif precision in HALF:
            self.params = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
        else:
            self.params = []
        self.memory = {n: torch.zeros_like(p) for n, p in self.params}
        self.codes: dict = {}  # binary: name -> (bits, scale, mean) of the current weights, for the upload
        self.requantize()

    def autocast_dtype(self) -> torch.dtype | None:
        if self.precision == "bf16" or (self.precision == "fp16" and self.device_type == "cuda"):
            return HALF[self.precision]
        return None

    def autocast(self):
        dt = self.autocast_dtype()
        return torch.autocast(self.device_type, dtype=dt) if dt is not None else contextlib.nullcontext()

    @torch.no_grad()
    def requantize(self) -> None:
        """latent = p + m; q = Q(latent); m = latent - q; p = q."""
        for n, p in self.params:
            latent = p.float() + self.memory[n]
            if self.precision == "binary":
                self.codes[n] = binarize(latent)
                q = debinarize(*self.codes[n]).to(p.device)
            else:
                q = quantize(latent, self.precision)
            self.memory[n] = latent - q
            p.copy_(q)

    def backward_step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, before_step: Callable[[], None]) -> None:
        """backward, (fp16 on CUDA: loss scaling), the caller's gradient edits, the optimizer step, requantise."""
        if self.precision == "fp16" and self.device_type == "cuda":
            if not hasattr(self, "scaler"):
                self.scaler = torch.amp.GradScaler("cuda")
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(opt)
            before_step()
            self.scaler.step(opt)
            self.scaler.update()
        else:
            loss.backward()
            before_step()
            opt.step()
        self.requantize()


# ---- payload -----------------------------------------------------------------------------------------------------
def _raw(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def encode(state: dict, precision: str, codes: dict | None = None) -> bytes:
    """The bytes a client of `precision` sends for `state` (codes: QuantizedTraining.codes, else re-binarised)."""
    header, chunks = [], []
    for name, t in state.items():
        if precision == "binary" and is_binarized(name, t):
            bits, scale, mean = (codes or {}).get(name) or binarize(t)
            header.append([name, "binary", "float32", list(t.shape)])
            chunks += [pack_bits(bits), _raw(scale.float()), _raw(mean.float())]
        else:
            v = t.to(HALF[precision]) if precision in HALF and t.is_floating_point() else t
            v = v.float() if precision in ("fp32", "binary") and v.is_floating_point() else v
            header.append([name, "raw", str(v.dtype).removeprefix("torch."), list(t.shape)])
            chunks.append(_raw(v))
    head = json.dumps({"precision": precision, "tensors": header}, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<I", len(head)) + head + b"".join(chunks)


def header_bytes(blob: bytes) -> int:
    """Size of everything before the tensor data (magic, length, JSON header)."""
    return 8 + struct.unpack("<I", blob[4:8])[0]


def decode(blob: bytes) -> tuple[str, dict]:
    """(precision, fp32 state dict) of an `encode` payload; FeddfError when it is not one."""
    if blob[:4] != MAGIC:
        raise FeddfError("client upload is not a feddf precision payload (bad magic): sender and server versions differ")
    pos = header_bytes(blob)
    head = json.loads(blob[8:pos])
    state = {}

    def take(n: int) -> bytes:
        nonlocal pos
        out = blob[pos:pos + n]
        pos += n
        return out

    def tensor(data: bytes, dtype: torch.dtype, shape) -> torch.Tensor:
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape).clone() \
            if data else torch.zeros(shape, dtype=dtype)

    for name, kind, dtype, shape in head["tensors"]:
        n = int(np.prod(shape)) if shape else 1
        if kind == "binary":
            f = shape[0]
            bits = unpack_bits(take((n + 7) // 8), shape)
            scale = tensor(take(4 * f), torch.float32, (f,))
            mean = tensor(take(4 * f), torch.float32, (f,))
            state[name] = debinarize(bits, scale, mean)
        else:
            dt = _DTYPES[dtype]
            v = tensor(take(n * torch.empty(0, dtype=dt).element_size()), dt, shape)
            state[name] = v.float() if v.is_floating_point() else v
    if pos != len(blob):
        raise FeddfError(f"client upload has {len(blob) - pos} trailing bytes: the payload is damaged")
    return head["precision"], state
