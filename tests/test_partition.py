"""Client partitions: every sample exactly once, Dirichlet skew controlled by alpha, histograms, bad input."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feddf.errors import FeddfError
from feddf.federated.partition import (PARTITIONERS, assign_archs, class_histograms, partition,
                                       split_validation)


def _labels(n_per_class=100, k=10, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(k), n_per_class))


@pytest.mark.parametrize("name", list(PARTITIONERS))
@settings(max_examples=15, deadline=None)
@given(n_clients=st.integers(1, 25), alpha=st.sampled_from([0.5, 1.0, 10.0]), seed=st.integers(0, 2**31))
def test_each_sample_exactly_once(name, n_clients, alpha, seed):
    y = _labels(60)
    parts = partition(name, y, n_clients, alpha, seed)
    assert len(parts) == n_clients
    allidx = np.concatenate(parts)
    assert np.array_equal(np.sort(allidx), np.arange(len(y)))  # each position once, none lost
    assert all(len(p) >= 1 for p in parts)
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)


@pytest.mark.parametrize("name", ["dirichlet", "dirichlet-balanced"])
def test_large_alpha_is_close_to_iid_and_small_alpha_is_skewed(name):
    y = _labels(500)
    glob = np.bincount(y) / len(y)

    def max_dev(alpha):
        h = class_histograms(partition(name, y, 10, alpha, seed=3), y, 10)
        return np.abs(h / h.sum(1, keepdims=True) - glob).max()

    assert max_dev(1000.0) < 0.04  # every client's class mix is ~ the global one
    assert max_dev(0.1) > 0.3      # strongly non-iid


def test_balanced_variant_gives_near_equal_sizes_and_hsu_does_not_have_to():
    y = _labels(500)
    sizes = [len(p) for p in partition("dirichlet-balanced", y, 20, 0.3, seed=1)]
    fair = len(y) / 20
    assert min(sizes) >= 0.5 * fair  # the paper code's acceptance rule
    hsu = [len(p) for p in partition("dirichlet", y, 20, 0.3, seed=1)]
    assert max(hsu) / min(hsu) > max(sizes) / min(sizes)


def test_histograms_count_classes_per_client_and_seed_is_deterministic():
    y = _labels(50, k=4)
    parts = partition("dirichlet", y, 3, 1.0, seed=9)
    h = class_histograms(parts, y, 4)
    assert h.shape == (3, 4) and h.sum() == len(y)
    for j, p in enumerate(parts):
        assert list(h[j]) == [int((y[p] == c).sum()) for c in range(4)]
    again = partition("dirichlet", y, 3, 1.0, seed=9)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition("dirichlet", y, 3, 1.0, seed=10)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan")])
def test_bad_alpha_is_refused(alpha):
    with pytest.raises(FeddfError, match="--alpha"):
        partition("dirichlet", _labels(10), 3, alpha, 0)


def test_more_clients_than_samples_and_unknown_partition_are_refused():
    with pytest.raises(FeddfError, match="more than the 20 training samples"):
        partition("dirichlet-balanced", _labels(2), 21, 1.0, 0)
    with pytest.raises(FeddfError, match="unknown partition"):
        partition("shards", _labels(2), 2, 1.0, 0)


def test_validation_split_is_stratified_disjoint_and_complete():
    y = _labels(100)
    pool, val = split_validation(y, 0.1, seed=0)
    assert len(np.intersect1d(pool, val)) == 0 and len(pool) + len(val) == len(y)
    assert list(np.bincount(y[val], minlength=10)) == [10] * 10
    assert len(split_validation(y, 0.0, 0)[1]) == 0
    with pytest.raises(FeddfError, match="--val-fraction"):
        split_validation(y, 1.0, 0)


def test_arch_assignment_is_contiguous_blocks():
    assert assign_archs(6, ["a", "b", "c"]) == ["a", "a", "b", "b", "c", "c"]
    assert assign_archs(5, ["a", "b"]) == ["a", "a", "a", "b", "b"]
    with pytest.raises(FeddfError, match="every architecture needs a client"):
        assign_archs(1, ["a", "b"])
