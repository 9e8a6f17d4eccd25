"""Audit sources: a cache opened read-only, with its labels, provenance and random access to its committed images.

    python -c "from feddf.audit.sources import open_source; s = open_source('cache/x.h5'); print(s.n, s.label_space)"

Only the first `committed` images are ever read (a cache may still be growing, or a killed writer may have left
allocated but unwritten rows); labels/targets are read once, images in batches of sorted indices.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from feddf.cache import format as fmt
from feddf.errors import FeddfError

# Provenance attributes copied into the report (the rest, e.g. the full config JSON, stays in the cache).
_REPORTED_ATTRS = ("format_version", "kind", "generator", "source", "weights_hash", "random_weights", "truncation",
                   "resolution", "channels", "seed", "classes", "n_requested", "created", "complete",
                   "package_version")


def _decode(v):
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, np.ndarray):
        v = v.tolist()
    return v


def _json_list(v) -> list[str] | None:
    if v is None:
        return None
    try:
        out = json.loads(v) if isinstance(v, str) else list(v)
    except (ValueError, TypeError):
        return None
    return [str(x) for x in out] if isinstance(out, list) else None


@dataclass
class Source:
    """One cache, its metadata loaded; images are read lazily from the still-open HDF5 file."""

    path: Path
    name: str
    n: int                                  # committed images
    channels: int
    resolution: int
    attrs: dict
    labels: np.ndarray                      # (n,) int64, -1 = none
    label_space: int                        # K: classes of the conditioning label space
    label_names: list[str] | None = None
    targets: np.ndarray | None = None       # (n,) int64, -1 = unmapped
    target_space: int | None = None
    target_names: list[str] | None = None
    recorded_labeler: tuple[np.ndarray, np.ndarray] | None = None   # (counts (T,), conf_sum (T,)) from `feddf gen`
    _h5: object = field(default=None, repr=False)

    def read(self, indices: np.ndarray):
        """uint8 tensor (len(indices), C, R, R) of the images at sorted, unique `indices` (all < n)."""
        import torch

        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            return torch.empty((0, self.channels, self.resolution, self.resolution), dtype=torch.uint8)
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        if hi - lo == idx.size:  # contiguous: one slice read (much faster than a point selection)
            arr = self._h5[fmt.IMAGES][lo:hi]
        else:
            arr = self._h5[fmt.IMAGES][idx]
        return torch.from_numpy(np.ascontiguousarray(arr))

    def batches(self, indices: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, object]]:
        """(indices (B,), uint8 images (B, C, R, R)) over `indices` in order, B <= batch_size."""
        for s in range(0, len(indices), batch_size):
            idx = indices[s:s + batch_size]
            yield idx, self.read(idx)

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


def open_source(path: str | Path, name: str | None = None) -> Source:
    """Open and validate a feddf cache; bad input raises FeddfError naming the file and the fix."""
    import h5py

    p = Path(path)
    if not p.exists():
        raise FeddfError(f"source {str(p)!r} does not exist: pass a cache made by `feddf gen` or `feddf cache import`")
    if p.is_dir():
        raise FeddfError(f"source {str(p)!r} is a folder: pass a cache file (*.h5)")
    if not h5py.is_hdf5(p):
        raise FeddfError(f"source {str(p)!r} is not an HDF5 cache: pass a cache made by `feddf gen` or "
                         f"`feddf cache import`")
    try:
        # SWMR read so a cache that `feddf gen` is still writing can be audited (only committed images are used).
        h5 = h5py.File(p, "r", swmr=True, locking=False)
    except OSError:
        h5 = h5py.File(p, "r", locking=False)
    try:
        return _load(h5, p, name or p.stem)
    except BaseException:
        h5.close()
        raise


def _load(h5, p: Path, name: str) -> Source:
    attrs = {k: _decode(v) for k, v in h5.attrs.items()}
    if attrs.get("format") != fmt.FORMAT_NAME:
        raise FeddfError(f"{str(p)!r} is not a feddf cache (format attribute {attrs.get('format')!r}): pass a cache "
                         f"made by `feddf gen` or `feddf cache import`")
    if int(attrs.get("format_version", 0)) > fmt.FORMAT_VERSION:
        raise FeddfError(f"{str(p)!r} has cache format_version {attrs.get('format_version')}, newer than this feddf "
                         f"reads ({fmt.FORMAT_VERSION}): upgrade feddf")
    for key in (fmt.IMAGES, fmt.LABELS, fmt.COMMITTED):
        if key not in h5:
            raise FeddfError(f"{str(p)!r} lacks /{key}: the cache is damaged; re-create it")
    images = h5[fmt.IMAGES]
    if images.ndim != 4 or images.dtype != np.uint8:
        raise FeddfError(f"{str(p)!r}: /images is {images.dtype} {images.shape}, expected uint8 (N, C, R, R)")
    n = int(h5[fmt.COMMITTED][()])
    n = max(0, min(n, images.shape[0]))
    labels = np.asarray(h5[fmt.LABELS][:n], dtype=np.int64)
    label_names = _json_list(attrs.get("label_names"))
    target_names = _json_list(attrs.get("target_names"))
    # K: the recorded coverage length is the label space (e.g. 1000 ImageNet classes even if only 10 were sampled).
    if fmt.LABEL_COUNTS in h5:
        label_space = int(h5[fmt.LABEL_COUNTS].shape[0])
    elif label_names:
        label_space = len(label_names)
    else:
        label_space = int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0
    if labels.size and labels.max() >= label_space:
        label_space = int(labels.max()) + 1
    targets = target_space = None
    if fmt.TARGETS in h5:
        targets = np.asarray(h5[fmt.TARGETS][:n], dtype=np.int64)
        if fmt.TARGET_COUNTS in h5:
            target_space = int(h5[fmt.TARGET_COUNTS].shape[0])
        elif target_names:
            target_space = len(target_names)
        else:
            target_space = int(targets.max()) + 1 if targets.size and targets.max() >= 0 else 0
        if targets.size and targets.max() >= target_space:
            target_space = int(targets.max()) + 1
    recorded = None
    if fmt.LABELER_COUNTS in h5 and fmt.LABELER_CONF_SUM in h5:
        recorded = (np.asarray(h5[fmt.LABELER_COUNTS][()], dtype=np.int64),
                    np.asarray(h5[fmt.LABELER_CONF_SUM][()], dtype=np.float64))
    reported = {k: attrs[k] for k in _REPORTED_ATTRS if k in attrs}
    return Source(path=p, name=name, n=n, channels=int(images.shape[1]), resolution=int(images.shape[2]),
                  attrs=reported, labels=labels, label_space=label_space, label_names=label_names, targets=targets,
                  target_space=target_space, target_names=target_names, recorded_labeler=recorded, _h5=h5)


def unique_names(paths: list[str | Path]) -> list[str]:
    """Report names for sources: the file stem, suffixed -2, -3 ... when two sources share a stem."""
    out: list[str] = []
    for p in paths:
        base = Path(p).stem
        name, k = base, 2
        while name in out:
            name, k = f"{base}-{k}", k + 1
        out.append(name)
    return out


def sample_indices(n: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """All of 0..n-1, or a seeded uniform subset of `limit` of them, sorted (GAN caches may be written class by
    class, so the first `limit` images would not be a fair sample)."""
    if limit is None or limit >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=limit, replace=False)).astype(np.int64)
