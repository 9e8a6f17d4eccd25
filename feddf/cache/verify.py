"""Check a cache end to end: format and version, shapes/dtypes, committed count, every chunk's checksum, label
ranges, and coverage counts against a recount of the per-image arrays.

    feddf cache verify cache/fmnist-test500.h5

Caches are written with HDF5's fletcher32 filter on every per-image dataset, so reading every committed chunk through
HDF5 (never the stream's raw fast path) detects a flipped byte anywhere in the data. A chunk inside the committed range
that was never written (HDF5 would silently read fill values for it) is a problem too. Problems are collected, not
raised: the report lists all of them. Notes (e.g. "still being written") are not problems.

The stream's mapped fast path (feddf.cache.source) skips HDF5's checksum test, so before it serves a finished file
`ensure_verified` checks that file once, with the same functions as `feddf cache verify`: every per-image chunk of
the committed range written, and every chunk the fast path would map (stored uncompressed) read through HDF5's
fletcher32 test. Success is recorded beside the cache in `.<name>.verified.json`, keyed by the file's identity
(size, mtime_ns, ctime_ns, inode, device; the cache itself is never modified), so later opens cost one stat and one
small JSON read. Any change to the file (a rewrite, a resumed writer, a flipped byte, even with its mtime put back:
ctime moves) invalidates the record. Where the folder is not writable the record lives in this process only.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np

from feddf.cache import format as fmt
from feddf.checks import label_problem
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
                  progress: bool = False, which: np.ndarray | None = None, desc: str | None = None) -> int:
    """Read ds[:n] chunk by chunk through HDF5 (checksums verified) into `out` (or a scratch buffer); returns the
    number of chunks read and records each failing chunk. which: only these chunk numbers (default all)."""
    from tqdm import tqdm

    done = 0
    buf = np.empty((chunk,) + ds.shape[1:], ds.dtype) if out is None else None
    starts = range(0, n, chunk) if which is None else (int(c) * chunk for c in which)
    total = -(-n // chunk) if which is None else len(which)
    for a in tqdm(starts, total=total, desc=desc or f"verify /{name}", unit="chunk",
                  disable=None if progress else True, leave=False):
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


def read_or_fail(ds, sel, path):
    """ds[sel] for a consumer of a cache (preview, audit, gan-train): an HDF5 read error (a chunk failing its
    fletcher32 checksum, truncated data) becomes one FeddfError line naming the file and the fix."""
    try:
        return ds[sel]
    except OSError as e:
        raise FeddfError(f"cannot read {ds.name} of {path} ({str(e).splitlines()[0] if str(e) else 'read error'}): "
                         f"the file is corrupt (checksum mismatch) or truncated; `feddf cache verify {path}` lists "
                         "the bad chunks: recreate or re-copy it") from None


def chunk_index(ds) -> tuple[np.ndarray, np.ndarray]:
    """(file offset (-1: never written), stored uncompressed (bool)) of every chunk of a chunked dataset, by chunk
    number along axis 0, from one H5Dchunk_iter pass over the chunk index (metadata only). "Uncompressed": no
    compression filter, or each one skipped for that chunk (lzf/gzip on data they cannot shrink); such a chunk's
    bytes are the values themselves plus the 4-byte fletcher32 checksum."""
    import h5py

    k = int(ds.chunks[0])
    offsets = np.full(-(-ds.shape[0] // k), -1, np.int64)
    plain = np.zeros(offsets.shape[0], bool)
    dcpl = ds.id.get_create_plist()
    comp = sum(1 << i for i in range(dcpl.get_nfilters()) if dcpl.get_filter(i)[0] != h5py.h5z.FILTER_FLETCHER32)

    def visit(si):
        c = si.chunk_offset[0] // k
        if si.byte_offset is not None:
            offsets[c] = int(si.byte_offset)
            plain[c] = si.filter_mask & comp == comp

    ds.id.chunk_iter(visit)
    return offsets, plain


def _unwritten(ds, n: int, name: str, problems: list[str], index=None) -> None:
    """Record chunks of ds[:n] that were never written: HDF5 reads them as fill values without any error."""
    if ds.chunks is None or ds.is_virtual or n == 0:
        return
    offsets = (index or chunk_index(ds))[0]
    k = int(ds.chunks[0])
    missing = np.flatnonzero(offsets[: -(-n // k)] < 0)
    if missing.size:
        c = int(missing[0])
        problems.append(f"/{name}: {missing.size} chunk(s) inside the committed range were never written (first: "
                        f"chunk {c}, [{c * k}:{min(n, (c + 1) * k)}]) although /committed = {n}; the writer did "
                        "not finish them (full disk?): recreate the cache")


def _recount(values: np.ndarray, stored: np.ndarray | None, name: str, counts_name: str, problems: list[str],
             weights: np.ndarray | None = None) -> None:
    """Range check of per-image class ids and equality of the stored histogram with a recount."""
    if stored is None:
        problems.append(f"/{counts_name} is missing: the coverage counts for /{name} are part of the format")
        return
    k = stored.shape[0]
    bad = label_problem(values, k)
    if bad:
        problems.append(f"/{name} has {bad}")
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

    from feddf.cache.reader import consistency_problems, open_h5, read_info

    rep = VerifyReport(path=str(path))
    try:
        f, live = open_h5(path)
    except FeddfError as e:
        rep.problems.append(str(e))
        return rep
    ident = file_identity(path)
    with f:
        try:
            info = read_info(f, path, live, check=False)
        except FeddfError as e:
            rep.problems.append(str(e))
            return rep
        n, cap, attrs, problems = info.n, info.capacity, info.attrs, rep.problems
        rep.n = n
        # header vs shapes, JSON attributes, the complete flag (what every reader refuses on open; labels below)
        problems += consistency_problems(f, info, labels=False)
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
        # no chunk of the committed range may be unwritten (for a virtual cache: in its shard files)
        for name in [fmt.IMAGES] + per_image:
            _unwritten(f[name], n, name, problems)
        if info.virtual:
            _shards_unwritten(path, attrs, problems)
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
    if rep.ok and not live and not info.virtual and file_identity(path) == ident:
        _record(path, ident, n, rep.chunks_checked)  # the stream's fast path need not check this file again
    return rep


def _shards_unwritten(path, attrs: dict, problems: list[str]) -> None:
    from feddf.cache.reader import open_h5, shard_paths

    for sp in shard_paths(path, attrs):
        if not sp.is_file():
            continue  # reported as missing above
        try:
            g, _ = open_h5(sp)
        except FeddfError as e:
            problems.append(str(e))
            continue
        with g:
            m = int(g[fmt.COMMITTED][()])
            for name in (fmt.IMAGES, fmt.LABELS, fmt.TARGETS, fmt.LABELER_PRED, fmt.LABELER_CONF):
                if name in g:
                    _unwritten(g[name], m, f"{name} of shard {sp.name}", problems)


# ------------------------------------------------------------------ the fast path's once-per-file verification
RECORD = "feddf-verified"
_memo: dict[tuple[str, tuple], int] = {}  # (realpath, identity) -> n verified, where no record can be written


def file_identity(path) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino,
            "dev": st.st_dev}


def record_path(path):
    from pathlib import Path

    p = Path(path)
    return p.with_name(f".{p.name}.verified.json")


def _recorded_n(path, ident: dict) -> int:
    """Images the record vouches for, for this exact file identity; -1 when there is none."""
    import json

    key = (os.path.realpath(path), tuple(sorted(ident.items())))
    if key in _memo:
        return _memo[key]
    try:
        rec = json.loads(record_path(path).read_text())
    except (OSError, ValueError):
        return -1
    if not isinstance(rec, dict) or rec.get("format") != RECORD or rec.get("file") != ident:
        return -1
    n = rec.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) else -1


def _record(path, ident: dict, n: int, chunks: int) -> None:
    import datetime as dt

    from feddf import __version__
    from feddf.utils import atomic_write_json

    _memo[(os.path.realpath(path), tuple(sorted(ident.items())))] = n
    try:
        atomic_write_json(record_path(path), {
            "format": RECORD, "version": 1, "file": ident, "n": n, "chunks_checked": chunks,
            "package_version": __version__, "verified_at": dt.datetime.now(dt.timezone.utc).isoformat(
                timespec="seconds")})
    except OSError:  # a read-only folder: the in-process memo above is all we keep
        pass


def ensure_verified(path, progress: bool = True) -> dict | None:
    """Make sure the finished cache file at `path` passed the fast path's checks (see the module docstring), once
    per file identity; returns that identity (None: a layout the fast path never maps, e.g. unchunked). Raises
    FeddfError naming the first bad chunk otherwise."""
    from feddf.cache.reader import open_h5

    ident = file_identity(path)
    f, live = open_h5(path)
    with f:
        if f[fmt.IMAGES].chunks is None or f[fmt.IMAGES].is_virtual:
            return None
        n = int(f[fmt.COMMITTED][()])
        if _recorded_n(path, ident) >= n:
            return ident
        if not live:
            # First use of a finished file: bring it into the page cache front to back (large folios, which the
            # mapped fast path streams fastest: pagecache), so the checksum pass below reads it from memory.
            from feddf.cache import pagecache

            pagecache.recache(path)
        problems: list[str] = []
        per_image = [x for x in (fmt.IMAGES, fmt.LABELS, fmt.TARGETS, fmt.LABELER_PRED, fmt.LABELER_CONF) if x in f]
        index = chunk_index(f[fmt.IMAGES])
        for name in per_image:
            _unwritten(f[name], n, name, problems, index if name == fmt.IMAGES else None)
        k = int(f[fmt.IMAGES].chunks[0])
        which = np.flatnonzero(index[1][: -(-n // k)])  # the chunks the fast path would map
        checked = _read_chunked(f[fmt.IMAGES], n, k, fmt.IMAGES, problems, progress=progress, which=which,
                                desc=f"checksums of {os.path.basename(path)} (first use)")
    if problems:
        raise FeddfError(f"{path} is corrupt and was not used: {problems[0]}" + (
            f" (+{len(problems) - 1} more)" if len(problems) > 1 else "") + f"; `feddf cache verify {path}` lists "
            "every problem: recreate or re-copy the cache")
    if file_identity(path) != ident:
        raise FeddfError(f"{path} changed while it was being verified (is a writer running?): retry when it is done")
    if not live:
        _record(path, ident, n, checked)
    return ident
