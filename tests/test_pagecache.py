"""feddf.cache.pagecache: the first verified open of a finished cache reads it back sequentially; the reader reads a
cold finished cache in sequentially before streaming it; neither changes a byte; FEDDF_PAGECACHE=off turns both off.

    .venv/bin/python -m pytest -q tests/test_pagecache.py
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from feddf.cache import pagecache
from feddf.cache.engine import ChunkStream
from feddf.cache.pagecache import evict
from tests.test_stream import write_cache


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def cold_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDDF_PAGECACHE", raising=False)
    p = tmp_path / "c.h5"
    write_cache(p, n=4000, r=32, chunk=256)  # ~16 MB: 16 chunks, each on its own 1 MiB boundary
    evict(p)
    if pagecache.resident_fraction(p) > 0.1:
        pytest.skip(f"this file system keeps {p}'s pages after POSIX_FADV_DONTNEED (tmpfs?): cannot make it cold")
    return p


def first_batch(path):
    s = ChunkStream(path, 16, seed=0)
    x, y = next(iter(s))
    out = np.array(x), np.array(y)
    s.close()
    return out


def test_resident_fraction_and_warm(cold_cache):
    assert pagecache.resident_fraction(cold_cache) < 0.1
    assert pagecache.resident_fraction(cold_cache) < 0.1  # asking faults nothing in
    assert pagecache.warm(cold_cache) is True
    assert pagecache.resident_fraction(cold_cache) == 1.0
    assert pagecache.warm(cold_cache) is False  # resident now: nothing to do


def test_stream_reads_a_cold_cache_in_sequentially(cold_cache, monkeypatch):
    from feddf.cache import source

    calls = []
    real_warm = pagecache.warm
    monkeypatch.setattr(source.pagecache, "warm", lambda path: calls.append(real_warm(path)) or calls[-1])
    monkeypatch.setenv("FEDDF_PAGECACHE", "off")
    x_off, y_off = first_batch(cold_cache)
    assert calls == [False]  # turned off: the stream's own page faults bring the pages in

    evict(cold_cache)
    monkeypatch.setenv("FEDDF_PAGECACHE", "on")
    x_on, y_on = first_batch(cold_cache)
    assert calls == [False, True]  # read in front to back when the file was first mapped, before the first batch
    assert pagecache.resident_fraction(cold_cache) == 1.0
    assert np.array_equal(x_on, x_off) and np.array_equal(y_on, y_off)  # the same batch either way


def test_recache_keeps_bytes_and_leaves_the_file_resident(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDDF_PAGECACHE", raising=False)
    p = tmp_path / "c.h5"
    write_cache(p, n=1000, r=16, chunk=100)
    before = sha(p)
    assert pagecache.recache(p) is True
    assert sha(p) == before and pagecache.resident_fraction(p) == 1.0

    monkeypatch.setenv("FEDDF_PAGECACHE", "off")
    assert pagecache.recache(p) is False and pagecache.warm(p) is False
    monkeypatch.setenv("FEDDF_PAGECACHE", "on")
    monkeypatch.setattr(pagecache, "mem_available", lambda: 2 * os.path.getsize(p) - 2)  # just too big to fit
    assert pagecache.recache(p) is False
    assert pagecache.fits(0) is False  # an empty file: nothing to read


def test_first_verified_open_recaches_and_the_writer_does_not(tmp_path, monkeypatch):
    """The read-back happens once, at the first verified open of a finished cache (verify.ensure_verified, which
    reads every chunk anyway), not at the end of every `feddf gen`: a generator run ends when its bytes are durable."""
    from feddf.cache import verify
    from feddf.cache import writer as writer_mod

    seen = []
    monkeypatch.setattr(pagecache, "recache", lambda path: seen.append(str(path)) or True)
    x = np.zeros((10, 1, 4, 4), np.uint8)
    attrs = {"kind": "imported", "source": "test"}
    with writer_mod.CacheWriter(tmp_path / "done.h5", n=10, channels=1, resolution=4, attrs=attrs, num_labels=10) as w:
        w.append(x, np.zeros(10, np.int64))
        w.finish()
    assert seen == []
    assert verify.ensure_verified(str(tmp_path / "done.h5"), progress=False) is not None
    assert seen == [str(tmp_path / "done.h5")]
    verify.ensure_verified(str(tmp_path / "done.h5"), progress=False)  # verified: no second read-back
    assert seen == [str(tmp_path / "done.h5")]
