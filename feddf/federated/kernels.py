"""How a client's local training computes (`--client-kernels`): the numerics every engine reproduces bit for bit.

    python -c "from feddf.models import get_model; from feddf.federated.kernels import probe; \
print(probe(lambda: get_model('cnn', 10, 1), (1, 28, 28)))"

Registry `KERNELS`:
  portable  one intra-op thread per client and channels_last activations where the model accepts them. A client's
            update is then a function of its seed alone, not of the machine's core count (PyTorch's reductions
            split by thread, so two threads and one give different floats: 5e-5 on the cnn's weights after 10
            SGD steps, measured), which is what lets the batched engine (engines.py) train several clients at
            once, one per core, and still equal the sequential engine (==). channels_last is what makes one
            thread as fast as two were: on this 2-core CPU a cnn step of 64 images takes 24 ms with one thread
            in channels_last against 20-26 ms with two in NCHW (docs/benchmarks.md, "Rounds").
  legacy    what every run before `--client-kernels` computed: NCHW tensors, PyTorch's default intra-op threads.
            Only the sequential engine can reproduce it; old run folders resume with it (setup.PREDATED).

`probe(build, shape)` decides per architecture, once, what portable kernels may do with it; the decision depends on
the model's code alone (never on timing), so `feddf train` and a Flower node decide alike:
  channels_last  a forward pass on channels_last inputs succeeds (a model that calls `.view` on its activations
                 does not: it keeps NCHW);
  rng_free       a training step leaves PyTorch's global random generator untouched (no dropout and the like).
                 A model that draws from it needs its clients run one at a time, each re-seeded (fusion.client_step).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

KERNELS = ("portable", "legacy")
SERVER_KERNELS = ("fused", *KERNELS)  # --server-kernels: evaluation.py


@dataclass(frozen=True)
class Probe:
    channels_last: bool
    rng_free: bool


@contextlib.contextmanager
def one_thread():
    """PyTorch's intra-op threads at 1 inside (restored after). Nested or concurrent use inside an already
    single-threaded section changes nothing, so worker threads never restore a count under each other."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def to_kernels(model: nn.Module, channels_last: bool) -> nn.Module:
    return model.to(memory_format=torch.channels_last) if channels_last else model


def input_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A (B, C, H, W) batch in the memory format the model trains in."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def probe(build: Callable[[], nn.Module], shape: tuple[int, int, int]) -> Probe:
    """What portable kernels may do with the model `build()` returns, for inputs of (C, H, W) = `shape`. The global
    random generator is left as it was (the probe builds models, which draws from it)."""
    with torch.random.fork_rng(devices=[]):
        return _probe(build, shape)


def _probe(build: Callable[[], nn.Module], shape: tuple[int, int, int]) -> Probe:
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            to_kernels(build().eval(), True)(input_format(x, True))
        channels_last = True
    except Exception:  # noqa: BLE001 - any failure means this model's code needs contiguous NCHW activations
        channels_last = False
    model = to_kernels(build().train(), channels_last)
    before = torch.get_rng_state()
    out = model(input_format(x, channels_last))
    target = torch.zeros(2, dtype=torch.long)
    (F.cross_entropy(out, target) if out.dim() == 2 else out.float().mean()).backward()
    return Probe(channels_last=channels_last, rng_free=torch.equal(before, torch.get_rng_state()))
