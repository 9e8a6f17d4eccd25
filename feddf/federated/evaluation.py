"""How the server evaluates models (`--server-kernels`): the test and validation passes of `feddf train` and Flower.

    python -m pytest -q tests/test_evaluation.py   # fused/portable: the same floats on 1 or 2 threads; close to legacy

`eval_logits(models, images, transform, batch_size, device, kernels)` -> (T, N, K) float32 eval-mode logits of T
models on N uint8 images, in chunks of `batch_size` images. The names are kernels.SERVER_KERNELS':
  fused     portable, on `feddf.models.inference.inference_copy`s: BatchNorm folded into the convolution before it,
            2x2 max-pools as the maximum of four strided views (the same values, no indices). The logits move from
            portable's by float rounding (~1e-7). Why: on the cnn, BatchNorm and pooling cost as much as the
            convolutions in eval; the test pass of 8 cnn models on 5 000 images is ~1.6x faster than portable's.
  portable  every model through an eval-mode copy in channels_last (NCHW for a model whose forward refuses it),
            under inference mode, each chunk computed with one intra-op thread, the chunks spread over as many
            threads as PyTorch has (the machine's cores). A chunk's logits depend on its images alone, so the
            result is the same on any core count. Why: the test pass of a round's 8 client models on 5 000 images
            cost as much as the clients' training; legacy takes 7.3-9.4 s of it on 2 cores, one thread a chunk
            in channels_last 2.4-3.1 s (docs/benchmarks.md, "Rounds").
  legacy    what runs before the option computed: each model as it is (NCHW), all threads, chunk after chunk.
The distillation students train under fused and portable alike (fusion.fuse): one thread and channels_last.
"""
from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import torch
from torch import nn

from feddf.federated.client import predict_logits
from feddf.federated.kernels import input_format, one_thread, to_kernels
from feddf.models.inference import inference_copy


def eval_logits(models: Sequence[nn.Module], images: torch.Tensor, transform: Callable, batch_size: int,
                device: torch.device | str = "cpu", kernels: str = "portable") -> torch.Tensor:
    """(T, N, K) logits of `models` on uint8 `images` (N, C, H, W); the models themselves are not modified."""
    if kernels == "legacy":
        return torch.stack([predict_logits(m, images, transform, batch_size, device) for m in models])
    copies = [_eval_copy(m, device, kernels == "fused") for m in models]
    cl = [True] * len(copies)  # per copy: channels_last, until its first chunk shows it cannot take it
    chunks = [(i, min(i + batch_size, len(images))) for i in range(0, len(images), batch_size)]
    if not chunks:
        return torch.zeros(len(models), 0, 0)

    def run(chunk: tuple[int, int]) -> torch.Tensor:  # (T, b, K), one thread whichever thread runs it
        with one_thread(), torch.inference_mode():
            x = transform(images[chunk[0]:chunk[1]]).to(device)
            return torch.stack([m(input_format(x, c)).float().cpu() for m, c in zip(copies, cl)])

    for i, m in enumerate(copies):  # one image decides each copy's layout, before threads share the copies
        try:
            with torch.inference_mode():
                m(input_format(transform(images[:1]).to(device), True))
        except Exception:  # noqa: BLE001 - e.g. a model that .view()s its activations: it evaluates in NCHW
            cl[i] = False
            copies[i] = m.to(memory_format=torch.contiguous_format)
    workers = min(torch.get_num_threads(), len(chunks)) if torch.device(device).type == "cpu" else 1
    if workers > 1:  # eval-mode forward passes write no module state, so the threads may share the copies
        with ThreadPoolExecutor(workers, thread_name_prefix="feddf-eval") as pool:
            out = list(pool.map(run, chunks))
    else:
        out = [run(c) for c in chunks]
    return torch.cat(out, 1)


def _eval_copy(model: nn.Module, device, fused: bool) -> nn.Module:
    """An eval-mode, grad-free, channels_last copy; `fused`: inference.inference_copy's rewrites, found without
    tracing (torch.fx patches nn.Module.__call__ process-wide while it traces, which would break the teachers'
    forward passes that the distillation's prefetch thread runs at the same time as a validation)."""
    m = inference_copy(model, device) if fused else copy.deepcopy(model).to(device).eval().requires_grad_(False)
    return to_kernels(m, True)
