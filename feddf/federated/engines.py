"""How the in-process engine runs a round's clients (`--client-engine`): one after another, or several at once.

    python -m pytest -q tests/test_engines.py   # batched == sequential, tensor for tensor

Engines (config.CLIENT_ENGINES; each returns the round's `fusion.ClientUpdate`s sorted by client id, computed by
`fusion.client_step`, the one implementation of a client's local training that Flower nodes run too):
  sequential  one client at a time, in client-id order.
  batched     with --client-kernels portable: as many clients at once as PyTorch has intra-op threads (the machine's
              cores), each client one thread (kernels.one_thread), largest clients first so the cores finish
              together. A portable client's update does not depend on the thread count, so the result equals
              the sequential engine's (==, tests/test_engines.py). Clients that cannot run beside others train
              afterwards, one at a time: those of an architecture whose training draws from the global random
              generator (kernels.probe: dropout and the like), and every client under --client-kernels legacy
              or on a GPU (one device: nothing to run beside). Each finished client's test pass (the server's
              ensemble accuracy, fusion.fuse) is queued behind the clients still waiting, so it fills the cores
              the round's last clients leave idle; its logits are the floats fuse would compute.

Why threads and not stacked parameters (torch.func.vmap over the clients, or grouped convolutions): on this 2-core
CPU a client's step is bound by the convolution and BatchNorm kernels, not by per-operation overhead, and stacking
does not make those faster: 8 cnn clients x 10 steps of 64 images took 4.0 s under vmap and 2.4 s as one grouped
network against 2.7 s one after another (one thread, NCHW; 1.8 s grouped and 1.5 s sequential in channels_last).
Two cores doing two clients' work is the gain there is (docs/benchmarks.md, "Rounds").
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable

import torch

from feddf.federated.config import TrainConfig
from feddf.federated.fusion import ClientUpdate, client_step
from feddf.federated.kernels import one_thread

Progress = Callable[[str], None]


def train_clients(cfg: TrainConfig, task, r: int, selected: list[int], server: dict, device,
                  progress: Progress = lambda text: None) -> list[ClientUpdate]:
    """Local training of round r's `selected` clients (sorted ids), each from its architecture's `server` state."""
    together, alone = plan(cfg, task, selected, device)
    counter = _Counter(progress)
    done: dict[int, ClientUpdate] = {}
    if together:
        workers = min(torch.get_num_threads(), len(together))
        with one_thread(), ThreadPoolExecutor(workers, thread_name_prefix="feddf-client") as pool:
            futures = {pool.submit(client_step, cfg, task, r, k, server[task.client_arch[k]], device,
                                   counter.reporter(k)): k for k in together}
            tests = {}
            for f in as_completed(futures):
                k = futures[f]
                done[k] = f.result()
                if cfg.server_kernels != "legacy":  # (legacy evaluates with all threads: only fuse can)
                    # queued behind the clients not started yet: it runs on a core the last clients leave idle
                    tests[k] = pool.submit(_test_logits, cfg, task, done[k], device)
            for k, f in tests.items():
                done[k].test_logits = (cfg.server_kernels, f.result())
    for k in alone:
        done[k] = client_step(cfg, task, r, k, server[task.client_arch[k]], device, counter.reporter(k))
    return [done[k] for k in selected]


def _test_logits(cfg: TrainConfig, task, update: ClientUpdate, device) -> torch.Tensor:
    """(N, K): the ensemble test pass's row for this client (fusion.fuse), one thread, as fuse would compute it."""
    with one_thread():
        return task.test_logits([update.model], device, cfg.server_kernels)[0]


def plan(cfg: TrainConfig, task, selected: list[int], device) -> tuple[list[int], list[int]]:
    """(clients trained together, largest first; clients trained alone afterwards, in id order)."""
    parallel = (cfg.client_engine == "batched" and cfg.client_kernels == "portable"
                and torch.device(device).type == "cpu" and torch.get_num_threads() > 1)
    if not parallel:
        return [], list(selected)
    together = [k for k in selected if task.kernel_probe(task.client_arch[k]).rng_free]
    together.sort(key=lambda k: -len(task.client_indices[k]))  # longest first: the last to start is a short one
    return (together, [k for k in selected if k not in together]) if len(together) > 1 else ([], list(selected))


class _Counter:
    """Progress over all clients of the round, whichever thread reports: steps done of the clients' step total."""

    def __init__(self, show: Progress):
        self.show = show
        self.lock = threading.Lock()
        self.steps: dict[int, tuple[int, int]] = {}

    def reporter(self, k: int) -> Callable[[int, int], None]:
        def report(done: int, total: int) -> None:
            with self.lock:
                self.steps[k] = (done, total)
                d, t = (sum(v) for v in zip(*self.steps.values()))
                self.show(f"local {len(self.steps)} clients, step {d}/{t}")
        return report
