"""Join the complete shard caches of a multi-process `feddf gen` into one cache of HDF5 virtual datasets.

    python -c "from feddf.cache.virtual import write_virtual_cache; help(write_virtual_cache)"

Rank r of `torchrun ... -m feddf gen` writes indices [N r / W, N (r+1) / W) to `<stem>.shard-r-of-W.h5`; rank 0 then
calls write_virtual_cache, so readers see the layout of a single-process cache (docs/cache-format.md).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from feddf.cache import format as fmt
from feddf.cache.probe import json_attr, open_h5_read, probe_cache
from feddf.cache.replace import swap_all
from feddf.cache.writer import _writer_lock
from feddf.errors import FeddfError


def write_virtual_cache(out: str | os.PathLike, shards: list[str | os.PathLike], *, force: bool = False,
                        staged: dict[Path, Path] | None = None) -> Path:
    """Rank 0 of a multi-process `feddf gen`: present complete shard caches (contiguous, in index order) as one cache.

    `out` gets the shards' attributes (minus the shard fields), `shards` (their names, relative to out's folder, where
    they must stay), real /committed and /coverage (sums), and HDF5 virtual datasets for every per-image array, so
    readers see the same layout as a single-process cache.

    staged: {shard path: its complete staged replacement} (`--force` over existing shards, feddf.cache.replace):
    their data is read from the staged files, and the staged shards and the joined cache are swapped in together
    at the end, so a run that failed on any rank has left the old shards and the old joined cache as they were."""
    import h5py

    out = Path(out)
    staged = staged or {}
    lock = _writer_lock(out)
    shard_locks = []
    try:
        shard_locks = [_writer_lock(p) for p in staged]  # no other writer may touch a shard we are about to replace
        metas = []
        for p in map(Path, shards):
            a = probe_cache(staged.get(p, p))
            if a is None or not a.get("complete"):
                raise FeddfError(f"shard {p} is missing or incomplete; rerun the same command to finish it")
            with open_h5_read(staged.get(p, p)) as f:
                per_image = [k for k in (fmt.IMAGES, fmt.LABELS, fmt.TARGETS, fmt.LABELER_PRED, fmt.LABELER_CONF)
                             if k in f]
                metas.append((p, a, {k: (f[k].shape, f[k].dtype) for k in per_image},
                              {k: f[k][()] for k in (fmt.LABEL_COUNTS, fmt.TARGET_COUNTS, fmt.LABELER_COUNTS,
                                                     fmt.LABELER_CONF_SUM) if k in f}))
        starts = [int(a["shard_start"]) for _, a, _, _ in metas]
        sizes = [int(a["n_requested"]) for _, a, _, _ in metas]
        if starts != [sum(sizes[:i]) for i in range(len(sizes))]:
            raise FeddfError(f"shards {[str(p) for p, *_ in metas]} do not tile 0..{sum(sizes)}; rerun with --force")
        n, attrs0 = sum(sizes), metas[0][1]
        identity = json_attr(attrs0.get("identity"))
        if identity is None:
            raise FeddfError(f"shard {metas[0][0]} has no readable identity attribute; rerun with --force")
        for k in ("shard_start", "shard_index", "n", "shard_world"):
            identity.pop(k, None)
        identity["n"] = n
        if out.exists():
            old = probe_cache(out)
            if old is None:
                raise FeddfError(f"{out} exists and is not a feddf cache; refusing to touch it: choose another --out")
            if not force and json_attr(old.get("identity")) != identity:
                raise FeddfError(f"{out} holds a cache made with a different config; use --force to overwrite it")
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        try:
            with h5py.File(tmp, "w", libver=fmt.LIBVER, locking=False) as f:
                for name, (shape, dtype) in metas[0][2].items():
                    layout = h5py.VirtualLayout(shape=(n,) + tuple(shape[1:]), dtype=dtype)
                    for (p, _, shapes, _), s, m in zip(metas, starts, sizes):
                        # source names relative to out's folder: HDF5 looks there for relative VDS sources
                        layout[s:s + m] = h5py.VirtualSource(os.path.relpath(p, out.parent), name, shape=shapes[name][0])
                    f.create_virtual_dataset(name, layout, fillvalue=fmt.UNLABELED if dtype.kind == "i" else 0)
                f.create_dataset(fmt.COMMITTED, data=np.int64(n))
                f.create_group(fmt.COVERAGE)
                for name in metas[0][3]:
                    f.create_dataset(name, data=sum(c[name] for *_, c in metas))
                for k, v in attrs0.items():
                    if k not in ("shard_start", "shard_index", "shard_world", "identity", "n_requested"):
                        f.attrs[k] = v
                f.attrs["n_requested"] = n
                f.attrs["identity"] = json.dumps(identity, sort_keys=True)
                f.attrs["shards"] = json.dumps([os.path.relpath(p, out.parent) for p, *_ in metas])
                f.attrs["complete"] = True
            swap_all([(staged[p], p) for p, *_ in metas if p in staged] + [(tmp, out)])
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        for lk in shard_locks:
            lk.release()
        lock.release()
    return out
