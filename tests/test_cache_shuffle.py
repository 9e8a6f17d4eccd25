"""Pure chunk-aware shuffle functions (feddf/cache/shuffle.py): permutations, windows, worker/rank split."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feddf.cache.shuffle import (advance, chunk_bounds, concat_bounds, epoch_plan, owned_mask, split_phase,
                                 window_chunks_for)

plans = st.tuples(st.integers(0, 3000), st.integers(1, 300), st.integers(1, 12), st.integers(0, 2**31),
                  st.integers(0, 50), st.booleans())


@settings(max_examples=150, deadline=None)
@given(plans)
def test_epoch_order_is_always_a_permutation(args):
    n, chunk, window, seed, epoch, shuffle = args
    p = epoch_plan(chunk_bounds(n, chunk), seed, epoch, window, shuffle)
    assert p.order.dtype == np.int64 and p.order.shape == (n,)
    assert np.array_equal(np.sort(p.order), np.arange(n))
    if not shuffle:
        assert np.array_equal(p.order, np.arange(n))


@settings(max_examples=80, deadline=None)
@given(plans)
def test_windows_hold_whole_chunks_and_rows_address_the_buffer(args):
    """Each window reads at most `window` whole chunks, and buffer[rows] reproduces the order inside it."""
    n, chunk, window, seed, epoch, shuffle = args
    bounds = chunk_bounds(n, chunk)
    p = epoch_plan(bounds, seed, epoch, window, shuffle)
    assert p.window_pos[0] == 0 and p.window_pos[-1] == n
    for w in range(p.n_windows):
        ids, first = p.window_slots(w)
        assert 1 <= len(ids) <= window
        buffer = np.concatenate([np.arange(bounds[c], bounds[c + 1]) for c in ids])  # chunks back to back
        assert np.array_equal(first, np.concatenate([[0], np.cumsum(bounds[ids + 1] - bounds[ids])[:-1]]))
        a, b = p.window_pos[w], p.window_pos[w + 1]
        assert b - a == len(buffer)
        assert np.array_equal(buffer[p.rows[a:b]], p.order[a:b])
        assert set(p.order[a:b]) == set(buffer)  # a window only emits its own chunks' samples


def test_same_seed_and_epoch_same_order_else_different():
    b = chunk_bounds(5000, 100)
    a0 = epoch_plan(b, 7, 0, 4).order
    assert np.array_equal(a0, epoch_plan(b, 7, 0, 4).order)
    assert not np.array_equal(a0, epoch_plan(b, 7, 1, 4).order)
    assert not np.array_equal(a0, epoch_plan(b, 8, 0, 4).order)
    # the chunk order is permuted with default_rng(seed + epoch), as documented
    assert np.array_equal(epoch_plan(b, 7, 0, 4).chunks, np.random.default_rng(7).permutation(50))


def test_shuffle_mixes_across_the_whole_epoch():
    """Chunk permutation: the first window does not just hold the first chunks."""
    p = epoch_plan(chunk_bounds(10_000, 100), 0, 0, 5)
    assert p.order[:500].max() > 2000
    assert len(np.unique(p.order[:500] // 100)) == 5  # exactly 5 chunks in a 5-chunk window


def test_bounds_helpers():
    assert chunk_bounds(10, 4).tolist() == [0, 4, 8, 10]
    assert chunk_bounds(8, 4, start=3).tolist() == [3, 7, 11]
    assert chunk_bounds(0, 4).tolist() == [0]
    assert concat_bounds([chunk_bounds(10, 4), chunk_bounds(5, 4, 10)]).tolist() == [0, 4, 8, 10, 14, 15]
    with pytest.raises(ValueError):
        concat_bounds([chunk_bounds(10, 4), chunk_bounds(5, 4, 11)])
    with pytest.raises(ValueError):
        chunk_bounds(10, 0)
    assert window_chunks_for(8192, 341) == 24 and window_chunks_for(10, 341) == 1
    assert advance(0, 90, 25, 100) == (1, 15) and advance(3, 0, 250, 100) == (5, 50)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 200))
def test_every_batch_has_exactly_one_owner(world, workers, n_batches):
    owners = np.zeros(n_batches, int)
    for r in range(world):
        for w in range(workers):
            phase, stride = split_phase(r, world, w, workers)
            owners[np.arange(n_batches) % stride == phase] += 1
    assert (owners == 1).all()


def test_rank_batches_come_round_robin_from_workers():
    """A rank's k-th batch is produced by its worker k % W, which is the order DataLoader collects them in."""
    world, workers = 3, 2
    for r in range(world):
        local = [b for b in range(60) if b % world == r]
        for k, b in enumerate(local):
            phase, stride = split_phase(r, world, k % workers, workers)
            assert b % stride == phase


def test_owned_mask_skips_positions_before_the_start():
    m = owned_mask(np.arange(-5, 20), 5, 1, 2)
    assert not m[:5].any()  # negative stream coordinates are already consumed
    # batches 1 and 3 (coords 5..9 and 15..19) sit at indices 10..14 and 20..24
    assert np.flatnonzero(m).tolist() == [10, 11, 12, 13, 14, 20, 21, 22, 23, 24]
    with pytest.raises(ValueError):
        split_phase(2, 2, 0, 1)
