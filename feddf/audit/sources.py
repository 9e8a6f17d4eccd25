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
    recorded_labeler: tuple[np.ndarray, np.ndarray] | None = None   # (pred (n,), conf (n,)) from `feddf gen --labeler`
    labeler_space: int | None = None
    labeler_names: list[str] | None = None
    _h5: object = field(default=None, repr=False)

    def read(self, indices: np.ndarray):
        """uint8 tensor (len(indices), C, R, R) of the images at sorted, unique `indices` (all < n)."""
        import torch

        idx = np.asarray(indices, dtype=np.int64)
        if idx.size == 0:
            return torch.empty((0, self.channels, self.resolution, self.resolution), dtype=torch.uint8)
        lo, hi = int(idx[0]), int(idx[-1]) + 1
        from feddf.cache.verify import read_or_fail

        # contiguous: one slice read (much faster than a point selection); a checksum failure is one FeddfError line
        arr = read_or_fail(self._h5[fmt.IMAGES], np.s_[lo:hi] if hi - lo == idx.size else idx, self.path)
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
    """Open and validate a feddf cache (feddf.cache.reader rules: SWMR when a writer holds it); bad input raises
    FeddfError naming the file and the fix. The file stays open for image reads until `Source.close()`."""
    from feddf.cache.reader import open_h5, read_info

    p = Path(path)
    h5, live = open_h5(p)
    try:
        info = read_info(h5, p, live)
        return _load(h5, info, p, name or p.stem)
    except BaseException:
        h5.close()
        raise


def _space(counts: np.ndarray | None, names: list[str] | None, values: np.ndarray, what: str, path: Path) -> int:
    """Size of a label space: the recorded coverage length (e.g. 1000 ImageNet classes even if 10 were sampled),
    else the names, else max value + 1. A value outside the declared space (or below -1, the "none" label) is refused:
    counting it as an extra class would report classes that do not exist."""
    declared = [len(x) for x in (counts, names) if x is not None and len(x)]
    k = declared[0] if declared else (int(values.max()) + 1 if values.size else 0)
    limit = min(declared) if declared else k
    bad = (values < -1) | (values >= limit)
    if bad.any():
        v = values[bad]
        raise FeddfError(f"{path}: {int(bad.sum())} {what} outside the cache's {limit} declared classes (values "
                         f"{int(v.min())}..{int(v.max())}): the cache is inconsistent; re-create or re-import it")
    return k


def _load(h5, info, p: Path, name: str) -> Source:
    from feddf.cache.verify import read_or_fail

    n = info.n
    labels = np.asarray(read_or_fail(h5[fmt.LABELS], np.s_[:n], p), dtype=np.int64)
    targets = target_space = None
    if info.has_targets:
        targets = np.asarray(read_or_fail(h5[fmt.TARGETS], np.s_[:n], p), dtype=np.int64)
        target_space = _space(info.target_counts, info.target_names, targets, "targets", p)
    recorded = None
    if fmt.LABELER_PRED in h5 and fmt.LABELER_CONF in h5:
        recorded = (np.asarray(read_or_fail(h5[fmt.LABELER_PRED], np.s_[:n], p), dtype=np.int64),
                    np.asarray(read_or_fail(h5[fmt.LABELER_CONF], np.s_[:n], p), dtype=np.float64))
    reported = {k: _decode(info.attrs[k]) for k in _REPORTED_ATTRS if k in info.attrs}
    labeler_space = labeler_names = None
    if recorded is not None:
        lab = info.attrs.get("labeler")
        if isinstance(lab, str):
            try:
                lab = json.loads(lab)
            except ValueError:
                pass
        reported["labeler"] = lab
        labeler_space = _space(info.labeler_counts, None, recorded[0], "labeler predictions", p)
        names = lab.get("class_names") if isinstance(lab, dict) else None
        if not names and info.target_names and len(info.target_names) == labeler_space:
            names = info.target_names     # a gen labeler classifies the target task
        labeler_names = [str(x) for x in names] if names else None
    reported["live"] = info.live
    return Source(path=p, name=name, n=n, channels=info.channels, resolution=info.resolution, attrs=reported,
                  labels=labels, label_space=_space(info.label_counts, info.label_names, labels, "labels", p),
                  label_names=info.label_names, targets=targets, target_space=target_space,
                  target_names=info.target_names, recorded_labeler=recorded, labeler_space=labeler_space,
                  labeler_names=labeler_names, _h5=h5)


_DATA_SUFFIXES = {".h5", ".hdf5", ".npz", ".npy", ".pt", ".pth"}


def unique_names(paths: list[str | Path]) -> list[str]:
    """Report names for sources: the file stem (the whole name unless the suffix is a data file's: run folders like
    `a0.1-fedavg-s0` keep their dots), suffixed -2, -3 ... when two sources share one."""
    out: list[str] = []
    for p in paths:
        base = Path(p).stem if Path(p).suffix.lower() in _DATA_SUFFIXES else Path(p).name
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
