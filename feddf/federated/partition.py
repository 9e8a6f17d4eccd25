"""Client partitions of a labelled training set: pure functions of (labels, seed) -> index arrays.

    python -c "import numpy as np; from feddf.federated.partition import partition, class_histograms; \
y = np.repeat(np.arange(10), 100); p = partition('dirichlet', y, 5, 1.0, seed=0); print(class_histograms(p, y, 10))"

Registry `PARTITIONERS`:
  dirichlet           the common per-class Dirichlet(alpha) split (Hsu et al. 2019 as popularised by FedMA/NIID-Bench):
                      for every class, proportions over all clients ~ Dir(alpha * 1); resampled until every client
                      holds at least `min_size` samples.
  dirichlet-balanced  the FedDF paper code's variant (`build_non_iid_by_dirichlet`): clients are handled in groups of
                      up to 10 that each get an equal-per-client share of the shuffled data; inside a group, a client
                      that already holds its fair share gets no more of the next class, and the draw is repeated until
                      every client holds at least half its fair share. Client sizes are therefore roughly equal.
  iid                 a uniform random split into near-equal parts (alpha is ignored).
  flwr:dirichlet, flwr:pathological, flwr:shard, flwr:iid
                      Flower Datasets' partitioners (`flwr-datasets`, the splits Flower's baselines use) on the
                      labels: DirichletPartitioner(alpha), PathologicalPartitioner (2 classes per client),
                      ShardPartitioner (2 shards per client, McMahan et al. 2017) and IidPartitioner, each seeded
                      from --seed (the rows are shuffled with it first). As in Flower, pathological and shard may
                      leave some samples to no client (a class no client draws, an incomplete last shard).

Every function returns one sorted int64 array of positions per client; each position appears exactly once overall
(at most once for flwr:pathological and flwr:shard).
Invalid input (alpha <= 0, more clients than samples, an impossible draw) raises FeddfError with one line.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from feddf.errors import FeddfError

MAX_TRIES = 1000  # a Dirichlet draw that keeps leaving clients empty is an impossible request, not bad luck

Partitioner = Callable[[np.ndarray, int, float, np.random.Generator], list]


def _check(labels: np.ndarray, n_clients: int, alpha: float) -> None:
    if n_clients < 1:
        raise FeddfError(f"--clients {n_clients}: need at least 1 client")
    if not alpha > 0 or not math.isfinite(alpha):
        raise FeddfError(f"--alpha {alpha}: the Dirichlet concentration must be > 0 (e.g. 1.0; 0.1 is very non-iid)")
    if n_clients > len(labels):
        raise FeddfError(f"--clients {n_clients} is more than the {len(labels)} training samples left for clients: "
                         f"use fewer clients or more data")


def _split_by_proportions(idx: np.ndarray, proportions: np.ndarray) -> list[np.ndarray]:
    """Cut `idx` into len(proportions) consecutive pieces with sizes ~ proportions * len(idx) (cumulative rounding)."""
    cuts = (np.cumsum(proportions) * len(idx)).astype(int)[:-1]
    return np.split(idx, cuts)


def dirichlet_hsu(labels: np.ndarray, n_clients: int, alpha: float, rng: np.random.Generator,
                  min_size: int | None = None) -> list[np.ndarray]:
    """Per class c: shuffle its samples, draw p ~ Dir(alpha * 1_n) and give client j a p_j share.

    min_size defaults to 10 (the usual choice) but never more than half the average client size, so tiny test sets
    still partition; the whole draw is repeated until every client has at least min_size samples.
    """
    labels = np.asarray(labels)
    _check(labels, n_clients, alpha)
    n = len(labels)
    if min_size is None:
        min_size = max(1, min(10, n // (2 * n_clients)))
    classes = np.unique(labels)
    for _ in range(MAX_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            for j, piece in enumerate(_split_by_proportions(idx, rng.dirichlet(np.full(n_clients, alpha)))):
                parts[j].append(piece)
        out = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise FeddfError(f"--alpha {alpha} with {n_clients} clients and {n} samples keeps leaving a client with fewer "
                     f"than {min_size} samples: raise --alpha, use fewer --clients, or --partition dirichlet-balanced")


def dirichlet_balanced(labels: np.ndarray, n_clients: int, alpha: float,
                       rng: np.random.Generator) -> list[np.ndarray]:
    """The FedDF code's balanced Dirichlet split (see the module docstring); groups of up to 10 clients."""
    labels = np.asarray(labels)
    _check(labels, n_clients, alpha)
    n = len(labels)
    group = min(10, n_clients)
    order = rng.permutation(n)  # the code shuffles (index, target) pairs once, then cuts contiguous chunks
    n_groups = math.ceil(n_clients / group)
    sizes = [group] * (n_groups - 1) + [n_clients - group * (n_groups - 1)]
    out: list[np.ndarray] = []
    start = 0
    for g, g_clients in enumerate(sizes):
        stop = n if g == n_groups - 1 else start + int(group / n_clients * n)
        chunk = order[start:stop]
        start = stop
        out.extend(_balanced_group(chunk, labels[chunk], g_clients, alpha, rng))
    if min(len(p) for p in out) < 1:  # pragma: no cover - guarded by the min-size loop
        raise FeddfError(f"--clients {n_clients} left a client without data: use fewer clients")
    return out


def _balanced_group(chunk: np.ndarray, chunk_labels: np.ndarray, n_clients: int, alpha: float,
                    rng: np.random.Generator) -> list[np.ndarray]:
    fair = len(chunk) / n_clients
    need = max(1, int(0.5 * fair))
    classes = np.unique(chunk_labels)
    for _ in range(MAX_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        held = np.zeros(n_clients)
        ok = True
        for c in classes:
            idx = chunk[chunk_labels == c]
            p = rng.dirichlet(np.full(n_clients, alpha))
            p = p * (held < fair)  # "balance": a client at its fair share takes no more
            if p.sum() <= 0:
                ok = False
                break
            for j, piece in enumerate(_split_by_proportions(idx, p / p.sum())):
                parts[j].append(piece)
                held[j] += len(piece)
        if ok and held.min() >= need:
            return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
    raise FeddfError(f"--alpha {alpha}: could not give each of {n_clients} clients at least {need} samples after "
                     f"{MAX_TRIES} draws: raise --alpha or use fewer --clients")


def iid(labels: np.ndarray, n_clients: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    labels = np.asarray(labels)
    _check(labels, n_clients, 1.0)
    return [np.sort(p).astype(np.int64) for p in np.array_split(rng.permutation(len(labels)), n_clients)]


def flower(kind: str) -> Partitioner:
    """A Flower Datasets partitioner as a Partitioner (see the module docstring)."""
    def split(labels: np.ndarray, n_clients: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
        _check(labels, n_clients, 1.0)
        try:
            from datasets import Dataset
            from flwr_datasets import partitioner as fp
        except ImportError:
            raise FeddfError(f"--partition flwr:{kind} needs Flower Datasets: pip install flwr-datasets") from None
        seed = int(rng.integers(2**31 - 1))
        ds = Dataset.from_dict({"label": labels.astype(np.int64), "pos": np.arange(len(labels))}).shuffle(seed=seed)
        make = {"dirichlet": lambda: fp.DirichletPartitioner(n_clients, "label", alpha, seed=seed),
                "pathological": lambda: fp.PathologicalPartitioner(n_clients, "label", 2, "first-deterministic",
                                                                    seed=seed),
                "shard": lambda: fp.ShardPartitioner(n_clients, "label", 2, seed=seed),
                "iid": lambda: fp.IidPartitioner(n_clients)}[kind]
        try:
            p = make()
            p.dataset = ds
            parts = [np.sort(np.asarray(p.load_partition(i)["pos"], dtype=np.int64)) for i in range(n_clients)]
        except ValueError as e:
            raise FeddfError(f"--partition flwr:{kind}: {str(e).splitlines()[0][:200]} (with {len(labels)} samples "
                             f"for {n_clients} clients)") from None
        empty = [i for i, q in enumerate(parts) if not len(q)]
        if empty:
            raise FeddfError(f"--partition flwr:{kind} left clients {empty[:5]} without data: use fewer --clients "
                             "or more data")
        return parts

    return split


PARTITIONERS: dict[str, Partitioner] = {
    "dirichlet-balanced": dirichlet_balanced,
    "dirichlet": dirichlet_hsu,
    "iid": iid,
}
FLOWER_PARTITIONERS: dict[str, Partitioner] = {f"flwr:{k}": flower(k) for k in ("dirichlet", "pathological",
                                                                                 "shard", "iid")}
ALL_PARTITIONERS = {**PARTITIONERS, **FLOWER_PARTITIONERS}  # what --partition accepts


def partition(name: str, labels, n_clients: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Partition positions 0..len(labels)-1 among n_clients with the named partitioner (deterministic in seed)."""
    try:
        fn = ALL_PARTITIONERS[name]
    except KeyError:
        raise FeddfError(f"unknown partition {name!r}: choose one of {', '.join(ALL_PARTITIONERS)}") from None
    return fn(np.asarray(labels), n_clients, float(alpha), np.random.default_rng(seed))


def class_histograms(parts: list[np.ndarray], labels, num_classes: int) -> np.ndarray:
    """(n_clients, num_classes) int64 counts of each class held by each client."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[p], minlength=num_classes)[:num_classes] for p in parts]).astype(np.int64)


def split_validation(labels, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(client_pool, server_val) positions: a class-stratified random `fraction` kept by the server.

    The paper code takes the last 10% of the unshuffled training set; a seeded stratified draw gives the same size
    without depending on the file's order and keeps every class in the validation set.
    """
    if not 0 <= fraction < 1:
        raise FeddfError(f"--val-fraction {fraction}: must be in [0, 1) (the paper uses 0.1)")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        val.append(idx[:int(round(fraction * len(idx)))])
    v = np.sort(np.concatenate(val)).astype(np.int64) if val else np.zeros(0, np.int64)
    mask = np.ones(len(labels), bool)
    mask[v] = False
    return np.flatnonzero(mask).astype(np.int64), v


def assign_blocks(n_clients: int, values: list[str]) -> list[str]:
    """Client i gets values[i * V // n]: contiguous near-equal blocks, the paper code's `num_clients_per_model` rule
    (which requires n divisible by V; this version also allows uneven blocks). Used for --archs and
    --client-precision; needs n >= V so every value has a client."""
    return [values[i * len(values) // n_clients] for i in range(n_clients)]


def assign_archs(n_clients: int, archs: list[str]) -> list[str]:
    """Client i trains archs[i * A // n] (assign_blocks). Needs n >= A so every arch has clients."""
    if n_clients < len(archs):
        raise FeddfError(f"--clients {n_clients} is fewer than the {len(archs)} --archs: every architecture needs a "
                         f"client")
    return assign_blocks(n_clients, archs)
