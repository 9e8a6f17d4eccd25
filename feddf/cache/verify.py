"""Check a cache end to end: format and version, shapes/dtypes, committed count, every chunk's checksum, label
ranges, and coverage counts against a recount of the per-image arrays.

    feddf cache verify cache/fmnist-test500.h5

Caches are written with HDF5's fletcher32 filter on every per-image dataset, so reading every committed chunk through
HDF5 (never the stream's raw fast path) detects a flipped byte anywhere in the data. Problems are collected, not
raised: the report lists all of them. Notes (e.g. "still being written") are not problems.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np

from feddf.cache import format as fmt
from feddf.errors import FeddfError


@dataclass
class VerifyReport:
    path: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    n: int = 0
    chunks_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def lines(self) -> list[str]:
        head = (f"OK {self.path}: {self.n} committed images, {self.chunks_checked} chunks checksum-verified"
                if self.ok else f"FAILED {self.path}: {len(self.problems)} problem(s)")
        return [head] + [f"  - {p}" for p in self.problems] + [f"  note: {x}" for x in self.notes]


def _read_chunked(ds, n: int, chunk: int, name: str, problems: list[str], out: np.ndarray | None = None,
                  progress: bool = False) -> int:
    """Read ds[:n] chunk by chunk through HDF5 (checksums verified) into `out` (or a scratch buffer); returns the
    number of chunks read and records each failing chunk."""
    from tqdm import tqdm

    done = 0
    buf = np.empty((chunk,) + ds.shape[1:], ds.dtype) if out is None else None
    for a in tqdm(range(0, n, chunk), desc=f"verify /{name}", unit="chunk", disable=None if progress else True,
                  leave=False):
        b = min(n, a + chunk)
        try:
            if out is not None:
                ds.read_direct(out, np.s_[a:b], np.s_[a:b])
            else:
                ds.read_direct(buf, np.s_[a:b], np.s_[0:b - a])
            done += 1
        except (OSError, ValueError) as e:
            problems.append(f"/{name}[{a}:{b}] (chunk {a // chunk}) cannot be read: {e} — checksum mismatch "
                            "(corrupted bytes) or truncated data")
    return done


def _recount(values: np.ndarray, stored: np.ndarray | None, name: str, counts_name: str, problems: list[str],
             weights: np.ndarray | None = None) -> None:
    """Range check of per-image class ids and equality of the stored histogram with a recount."""
    if stored is None:
        problems.append(f"/{counts_name} is missing: the coverage counts for /{name} are part of the format")
        return
    k = stored.shape[0]
    bad = (values < fmt.UNLABELED) | (values >= k)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        problems.append(f"/{name} has {int(bad.sum())} value(s) outside -1..{k - 1} (first: [{i}] = {values[i]})")
        return
    keep = values >= 0
    recount = np.bincount(values[keep], weights=None if weights is None else weights[keep], minlength=k)
    same = np.allclose(recount, stored, rtol=1e-6, atol=1e-3) if weights is not None else np.array_equal(recount,
                                                                                                         stored)
    if not same:
        diff = np.flatnonzero(~np.isclose(recount, stored, rtol=1e-6, atol=1e-3))
        shown = ", ".join(f"class {j}: stored {stored[j]:g}, recount {recount[j]:g}" for j in diff[:3])
        problems.append(f"/{counts_name} disagrees with a recount of /{name} in {len(diff)} class(es) ({shown})")


def verify_cache(path: str | os.PathLike, progress: bool = False) -> VerifyReport:
    """Verify everything verifiable about a cache; never raises for a bad file (problems go into the report)."""
    import h5py

    from feddf.cache.reader import open_h5, read_info

    rep = VerifyReport(path=str(path))
    try:
        f, live = open_h5(path)
    except FeddfError as e:
        rep.problems.append(str(e))
        return rep
    with f:
        try:
            info = read_info(f, path, live)
        except FeddfError as e:
            rep.problems.append(str(e))
            return rep
        n, cap, attrs, problems = info.n, info.capacity, info.attrs, rep.problems
        rep.n = n
        # header vs shapes
        for key, want in (("channels", info.channels), ("resolution", info.resolution), ("n_requested", cap)):
            if key in attrs and attrs[key] != want:
                problems.append(f"attribute {key}={attrs[key]!r} but /images implies {want}")
        if info.virtual:
            from feddf.cache.reader import shard_paths

            missing = [str(s) for s in shard_paths(path, attrs) if not s.is_file()]
            if missing:
                problems.append(f"shard file(s) missing next to the cache: {', '.join(missing[:3])} (keep the "
                                "shards in the cache's folder)")
        if not info.fletcher32:
            problems.append("/images has no fletcher32 filter: corrupted chunks cannot be detected (re-create it "
                            "with feddf)")
        per_image = [fmt.LABELS] + [x for x in (fmt.TARGETS, fmt.LABELER_PRED, fmt.LABELER_CONF) if x in f]
        for name in list(per_image):
            ds = f[name]
            kind = "f" if name == fmt.LABELER_CONF else "i"
            if not isinstance(ds, h5py.Dataset) or ds.shape != (cap,) or ds.dtype.kind != kind:
                problems.append(f"/{name} is {getattr(ds, 'dtype', '?')} {getattr(ds, 'shape', '?')}, expected "
                                f"{'float' if kind == 'f' else 'int64'} ({cap},)")
                per_image.remove(name)
        if f[fmt.COMMITTED].dtype != np.int64:
            problems.append(f"/committed is {f[fmt.COMMITTED].dtype}, expected int64")
        # every committed chunk through HDF5's filter pipeline (fletcher32 verified)
        chunk = info.chunk_len
        rep.chunks_checked += _read_chunked(f[fmt.IMAGES], n, chunk, fmt.IMAGES, problems, progress=progress)
        arrays = {}
        for name in per_image:
            ds = f[name]
            out = np.empty(n, ds.dtype)
            rep.chunks_checked += _read_chunked(ds, n, ds.chunks[0] if ds.chunks else chunk, name, problems, out)
            arrays[name] = out
        # label ranges and coverage recounts
        if fmt.LABELS in arrays:
            _recount(arrays[fmt.LABELS], info.label_counts, fmt.LABELS, fmt.LABEL_COUNTS, problems)
            names = info.label_names
            if names is not None and info.label_counts is not None and len(names) != len(info.label_counts):
                problems.append(f"{len(names)} label_names for {len(info.label_counts)} label classes")
        if fmt.TARGETS in arrays:
            _recount(arrays[fmt.TARGETS], info.target_counts, fmt.TARGETS, fmt.TARGET_COUNTS, problems)
        if fmt.LABELER_PRED in arrays:
            pred = arrays[fmt.LABELER_PRED]
            _recount(pred, info.labeler_counts, fmt.LABELER_PRED, fmt.LABELER_COUNTS, problems)
            if fmt.LABELER_CONF in arrays and fmt.LABELER_CONF_SUM in f:
                _recount(pred, np.asarray(f[fmt.LABELER_CONF_SUM][()], np.float64), fmt.LABELER_PRED,
                         fmt.LABELER_CONF_SUM, problems, weights=arrays[fmt.LABELER_CONF].astype(np.float64))
        elif info.labeler_counts is not None and int(info.labeler_counts.sum()) != n:
            problems.append(f"/{fmt.LABELER_COUNTS} sums to {int(info.labeler_counts.sum())}, not the {n} committed "
                            "images")
        # completeness
        if info.complete and n != cap:
            problems.append(f"marked complete but only {n} of {cap} images are committed")
        if not info.complete:
            from feddf.cache.reader import writer_alive

            rep.notes.append(f"incomplete: {n} of {cap} images committed ("
                             + ("a writer is running" if writer_alive(path) else
                                "interrupted; rerunning the command that made it resumes it") + ")")
        if info.virtual:
            rep.notes.append("/images is a virtual dataset over shard files; their chunks were read through it")
    return rep
