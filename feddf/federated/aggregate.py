"""Server-side parameter averaging: FedAvg (weighted or uniform, BatchNorm buffers included) and FedAvgM.

    python -c "import torch; from feddf.federated.aggregate import weighted_average; \
print(weighted_average([{'w': torch.ones(2)}, {'w': torch.zeros(2)}], [3, 1]))"

Registry `AGGREGATORS` maps `--aggregator` to the averaging rule the server applies inside each architecture:
  fedavg   FedAvg (McMahan et al. 2017): the mean of the client states weighted by client data size (`--weighting
           size`) or uniform (`--weighting uniform`, what the FedDF paper code does).
  fedprox  the same server rule; FedProx only changes the clients (a proximal term mu/2 ||w - w_global||^2).
  feddf    the same server rule; the FedAvg model is then the distillation student (see distill.py).
  fedavgm  FedAvg with server momentum (Hsu et al. 2019), as the paper code's `server_momentum`: with the pseudo-
           gradient d = w_prev - w_avg, buf <- beta * buf + d, w <- w_prev - buf for parameters; BatchNorm buffers are
           taken from the plain average.

Floating-point tensors (parameters, BN running mean/var) are averaged in float64 and cast back; integer buffers
(BN `num_batches_tracked`) take the maximum, since an average of counters is meaningless and BN uses a fixed momentum.
"""
from __future__ import annotations

from typing import Sequence

import torch

from feddf.errors import FeddfError

State = dict[str, torch.Tensor]


def weighted_average(states: Sequence[State], weights: Sequence[float]) -> State:
    """sum_i w_i * state_i / sum_i w_i for floating tensors (shapes as in the states); max for integer ones."""
    if not states:
        raise ValueError("weighted_average needs at least one state")
    w = torch.tensor([float(x) for x in weights], dtype=torch.float64)
    if len(w) != len(states) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"bad weights {list(weights)} for {len(states)} states")
    w = w / w.sum()
    out: State = {}
    for key, ref in states[0].items():
        if ref.is_floating_point():
            acc = torch.zeros(ref.shape, dtype=torch.float64, device=ref.device)
            for wi, s in zip(w, states):
                acc += wi * s[key].to(torch.float64)
            out[key] = acc.to(ref.dtype)
        else:
            out[key] = torch.stack([s[key] for s in states]).amax(0)
    return out


def server_momentum_step(prev: State, avg: State, buf: State | None, beta: float,
                         param_names: set[str]) -> tuple[State, State]:
    """One FedAvgM step (pure). Returns (new_state, new_buf); parameters only move by momentum, buffers = avg."""
    new_buf: State = {}
    new: State = {}
    for key, a in avg.items():
        if key in param_names:
            d = prev[key].to(torch.float64) - a.to(torch.float64)  # pseudo-gradient, same shape as the parameter
            b = d if buf is None or key not in buf else beta * buf[key].to(torch.float64) + d
            new_buf[key] = b.to(a.dtype)
            new[key] = (prev[key].to(torch.float64) - b).to(a.dtype)
        else:
            new[key] = a.clone()
    return new, new_buf


class FedAvg:
    """Averages the client states of one architecture; stateless (state_dict() is empty)."""

    name = "fedavg"

    def __init__(self, weighting: str = "size", **_: object):
        if weighting not in ("size", "uniform"):
            raise FeddfError(f"unknown --weighting {weighting!r}: choose size or uniform")
        self.weighting = weighting

    def weights(self, sizes: Sequence[int]) -> list[float]:
        return [float(n) for n in sizes] if self.weighting == "size" else [1.0] * len(sizes)

    def aggregate(self, arch: str, prev: State, client_states: Sequence[State], sizes: Sequence[int],
                  param_names: set[str]) -> State:
        """New server state of `arch` from this round's client states (prev is the state they started from)."""
        if not client_states:
            return {k: v.clone() for k, v in prev.items()}
        return weighted_average(client_states, self.weights(sizes))

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class FedAvgM(FedAvg):
    """FedAvg + server momentum beta (one momentum buffer per architecture, saved in checkpoints)."""

    name = "fedavgm"

    def __init__(self, weighting: str = "size", server_momentum: float = 0.9, **_: object):
        super().__init__(weighting)
        if not 0 <= server_momentum < 1:
            raise FeddfError(f"--server-momentum {server_momentum}: must be in [0, 1) (e.g. 0.9)")
        self.beta = float(server_momentum)
        self.buffers: dict[str, State] = {}

    def aggregate(self, arch: str, prev: State, client_states: Sequence[State], sizes: Sequence[int],
                  param_names: set[str]) -> State:
        if not client_states:
            return {k: v.clone() for k, v in prev.items()}
        avg = super().aggregate(arch, prev, client_states, sizes, param_names)
        new, self.buffers[arch] = server_momentum_step(prev, avg, self.buffers.get(arch), self.beta, param_names)
        return new

    def state_dict(self) -> dict:
        return {"buffers": self.buffers}

    def load_state_dict(self, state: dict) -> None:
        self.buffers = dict(state.get("buffers", {}))


AGGREGATORS: dict[str, type[FedAvg]] = {"fedavg": FedAvg, "fedprox": FedAvg, "feddf": FedAvg, "fedavgm": FedAvgM}


def get_aggregator(name: str, **kwargs) -> FedAvg:
    try:
        cls = AGGREGATORS[name]
    except KeyError:
        raise FeddfError(f"unknown --aggregator {name!r}: choose one of {', '.join(AGGREGATORS)}") from None
    return cls(**kwargs)


def drop_worst(val_accs: Sequence[float], num_classes: int, factor: float = 1.2) -> tuple[list[int], list[int]]:
    """The paper code's `drop_worst` (pure): (clients kept for FedAvg, clients kept as FedDF teachers).

    A client whose validation accuracy is under factor x random guessing (1.2 / K) is dropped from both. If none is,
    the teachers still lose outliers: with the best one set aside, those under mean - 1.5 std of the others' accuracy.
    """
    accs = [float(a) for a in val_accs]
    floor = factor / num_classes
    kept = [i for i, a in enumerate(accs) if a >= floor]
    if len(kept) < len(accs) or len(accs) < 3:
        return kept, list(kept)
    rest = sorted(accs)[:-1]  # without the maximum, as in the code
    mean = sum(rest) / len(rest)
    std = (sum((a - mean) ** 2 for a in rest) / len(rest)) ** 0.5
    return kept, [i for i, a in enumerate(accs) if a >= mean - 1.5 * std]
