"""FID reference: a dataset spec, a cache, or a statistics .npz — resolved to (mu, sigma) and cached as .npz.

    feddf audit cache/x.h5 --reference fashion-mnist:test[5000:] --fid-weights pt_inception-2015-12-05-6726825d.pth

Computed reference statistics are stored under `<stats-dir>/<name>-<key>.npz` (default: `$FEDDF_DATA_ROOT/fid-stats`),
where the key hashes everything that changes them: what the reference is (spec, or the cache's fingerprint), how many
images and which (limit, seed), and the feature extractor (weights sha256, resize mode). A later audit with the same
key reuses the file.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from feddf.audit import fid as F
from feddf.errors import FeddfError


@dataclass
class Reference:
    """What --reference names; `kind` is "stats", "cache" or "dataset"."""

    spec: str
    kind: str
    path: Path | None = None

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(self.spec).stem if self.path else self.spec).strip("_") or "ref"


def resolve_reference(spec: str) -> Reference:
    """Classify --reference without loading it (so bad input fails before any heavy work)."""
    import h5py

    p = Path(spec).expanduser()
    if p.suffix == ".npz":
        if not p.is_file():
            raise FeddfError(f"--reference {spec!r}: statistics file not found; pass an existing .npz, a cache or a "
                             f"dataset spec such as fashion-mnist:test")
        return Reference(spec, "stats", p)
    if p.exists():
        if p.is_file() and h5py.is_hdf5(p):
            return Reference(spec, "cache", p)
        raise FeddfError(f"--reference {spec!r} is neither a cache (.h5), a statistics .npz nor a dataset spec")
    from feddf.data import dataset_info, parse_spec

    dataset_info(parse_spec(spec).name)    # FeddfError naming the known datasets when the name is unknown
    return Reference(spec, "dataset")


def _fingerprint(ref: Reference, limit: int | None, seed: int, extractor: F.InceptionFeatures) -> dict:
    from feddf.utils import sha256_file

    what: dict = {"reference": ref.spec, "kind": ref.kind, "limit": limit, "seed": seed}
    if ref.kind == "cache":
        st = ref.path.stat()
        # first MiB + size: cheap, and changes whenever a cache is re-created or grows
        what.update(path=str(ref.path.resolve()), size=st.st_size, head_sha256=sha256_file(ref.path, 1 << 20))
    ex = extractor.describe()
    what.update(weights_sha256=ex["weights_sha256"], weights=ex["weights"], resize=ex["resize"],
                feature_extractor=ex["feature_extractor"])
    return what


def reference_stats(ref: Reference, extractor: F.InceptionFeatures, *, limit: int | None, seed: int,
                    batch_size: int, stats_dir: Path, progress: bool = True) -> tuple[np.ndarray, np.ndarray, dict]:
    """(mu, sigma, description) of the reference, computing and caching them unless already cached."""
    if ref.kind == "stats":
        mu, sigma, n, desc = F.load_stats(ref.path)
        ours = extractor.describe()
        if desc.get("weights_sha256") and desc["weights_sha256"] != ours["weights_sha256"]:
            raise FeddfError(f"--reference {ref.spec!r} was computed with other Inception weights "
                             f"({str(desc.get('weights'))}): recompute it with these weights")
        return mu, sigma, {"reference": ref.spec, "kind": "stats", "n": n, "stats_file": str(ref.path),
                           "recorded": desc}
    what = _fingerprint(ref, limit, seed, extractor)
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
    cached = Path(stats_dir) / f"{ref.slug}-{key}.npz"
    if cached.is_file():
        mu, sigma, n, desc = F.load_stats(cached)
        return mu, sigma, {**desc, "stats_file": str(cached), "cached": True}
    acc = F.StatsAccumulator()
    for images in _reference_batches(ref, limit, seed, batch_size, progress):
        acc.update(extractor(images))
    mu, sigma = acc.finalize()
    desc = {**what, "n": acc.n, **extractor.describe()}
    if extractor.is_fid:  # never leave statistics from test weights where a real audit could pick them up
        F.save_stats(cached, mu, sigma, acc.n, desc)
    return mu, sigma, {**desc, "stats_file": str(cached) if extractor.is_fid else None, "cached": False}


def _reference_batches(ref: Reference, limit: int | None, seed: int, batch_size: int, progress: bool):
    """uint8 (B, C, H, W) batches of the reference images (a seeded subset of `limit` when given)."""
    from tqdm import tqdm

    from feddf.audit.sources import open_source, sample_indices

    if ref.kind == "cache":
        src = open_source(ref.path)
        try:
            idx = sample_indices(src.n, limit, seed)
            for _, images in tqdm(src.batches(idx, batch_size), total=-(-len(idx) // batch_size),
                                  desc=f"reference {src.name}", disable=not progress, leave=False):
                yield images
        finally:
            src.close()
        return
    from feddf.data import get_dataset

    ds = get_dataset(ref.spec)
    idx = sample_indices(len(ds), limit, seed)
    for s in tqdm(range(0, len(idx), batch_size), desc=f"reference {ref.spec}", disable=not progress, leave=False):
        yield ds.images[idx[s:s + batch_size]]
