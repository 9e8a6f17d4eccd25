"""Is the file at a path a feddf cache, and with which root attributes: the read-only look every writer takes
(CacheWriter, --force staging, torchrun's virtual cache, `feddf cache import`) before it touches a path.

    python -c "from feddf.cache.probe import probe_cache; print(probe_cache('cache/fmnist-test500.h5'))"

Nothing here writes, locks or modifies a file; a path that is not a feddf cache probes as None.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from feddf.cache import format as fmt
from feddf.cache.superblock import is_hdf5


def open_h5_read(path: str | os.PathLike):
    """Open a cache read-only for a reader: SWMR mode (works while a writer runs and on caches whose writer was
    killed), falling back to a plain open for files whose superblock predates SWMR."""
    import h5py

    try:
        return h5py.File(path, "r", swmr=True, locking=False)
    except OSError:
        return h5py.File(path, "r", locking=False)


def probe_cache(path: str | os.PathLike) -> dict[str, Any] | None:
    """Root attributes of the feddf cache at `path`, or None when `path` is anything else (never modifies it)."""
    if not is_hdf5(path):
        return None
    try:
        with open_h5_read(path) as f:
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    except (OSError, KeyError, ValueError):
        return None
    return attrs if attrs.get("format") == fmt.FORMAT_NAME else None


def json_attr(v: Any) -> dict | None:
    """A JSON-object attribute (config, identity) as a dict; None when it is missing, not a string or not JSON (a
    damaged header: writers then treat the cache as one of another config, replaced only with --force)."""
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    try:
        out = json.loads(v) if isinstance(v, str) else None
    except ValueError:
        return None
    return out if isinstance(out, dict) else None
