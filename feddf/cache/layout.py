"""The HDF5 layout of a new cache: its datasets, chunks, filters, file alignment and root attributes, as
CacheWriter creates them (docs/cache-format.md is the contract, feddf/cache/format.py the names).

    python -c "from feddf.cache.layout import coverage_specs; print(coverage_specs(10, 0, 10))"

Everything here describes a file; nothing here commits, resumes or locks (feddf.cache.writer does).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from feddf.cache import format as fmt
from feddf.cache.codec import deflate_encoder
from feddf.errors import FeddfError

COMPRESSIONS = ("gzip", "none", "lzf")
DEFAULT_COMPRESSION = "gzip"  # deflate: a filter every HDF5 build has (lzf exists only inside h5py)
GZIP_LEVEL = 1  # level 1 keeps 97-99% of level 6's saving at 2-3x its speed (docs/cache-format.md, Compression)
CHUNK_ALIGN = 1 << 20  # file alignment of uncompressed image chunks (see file_access)


def compression_kwargs(compression: str | None, itemsize: int = 1) -> dict[str, Any]:
    """h5py filter arguments; shuffle only where it can help (multi-byte elements: labels, confidences)."""
    if compression in (None, "none"):
        return {}
    if compression == "lzf":
        return {"compression": "lzf"}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": GZIP_LEVEL, "shuffle": itemsize > 1}
    raise FeddfError(f"unknown compression {compression!r}: use one of {', '.join(COMPRESSIONS)}")


def attr_value(v: Any) -> Any:
    """h5py attribute values: dicts/lists/tuples become JSON strings, paths strings."""
    if isinstance(v, (dict, list, tuple)):
        from feddf.utils import to_jsonable

        return json.dumps(to_jsonable(v), sort_keys=True)
    if isinstance(v, Path):
        return str(v)
    return v


def per_image_names(num_targets: int, labeler_classes: int) -> list[str]:
    """The per-image datasets of a cache with these optional parts, images first."""
    names = [fmt.IMAGES, fmt.LABELS]
    if num_targets:
        names.append(fmt.TARGETS)
    if labeler_classes:
        names += [fmt.LABELER_PRED, fmt.LABELER_CONF]
    return names


def coverage_specs(num_labels: int, num_targets: int, labeler_classes: int) -> list[tuple[str, int, str]]:
    """(dataset, length, dtype) of every coverage array of a cache with these sizes."""
    specs = [(fmt.LABEL_COUNTS, num_labels, "i8")]
    if num_targets:
        specs.append((fmt.TARGET_COUNTS, num_targets, "i8"))
    if labeler_classes:
        specs += [(fmt.LABELER_COUNTS, labeler_classes, "i8"), (fmt.LABELER_CONF_SUM, labeler_classes, "f8")]
    return specs


def file_access(chunk_bytes: int, compression: str, latest: bool = False):
    """The HDF5 file-access property list every cache is created and reopened with (chunk_bytes: one image chunk,
    fletcher32 included)."""
    import h5py

    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    if latest:
        fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    # The lowest bounds SWMR works with (superblock v3, fixed-array chunk index: HDF5 1.10). Never 'latest': with
    # h5py's bundled HDF5 2.0 that writes object versions HDF5 <= 1.14 cannot read (h5ls prints "*ERROR*").
    else:
        fapl.set_libver_bounds(*fmt.libver_bounds())
    fapl.set_file_locking(False, True)  # our flock on .<name>.lock is the writer lock; readers use SWMR
    if compression == "none" and chunk_bytes <= CHUNK_ALIGN:
        # Start every image chunk on a 1 MiB boundary (< 0.2% of space at ~1 MiB chunks; compressed chunks would
        # waste the space they saved, so only uncompressed caches). The kernel then caches each chunk in large
        # page-cache folios, and the stream's mapped reads fault and unmap faster: bench_stream ratio 0.67-0.70
        # -> 0.71-0.73 on the 2-core machine (before pagecache.recache). Objects under 64 KiB (labels, metadata) stay packed.
        fapl.set_alignment(64 << 10, CHUNK_ALIGN)
    return fapl


def create(path: Path, fapl, *, n: int, channels: int, resolution: int, chunk: int, compression: str,
           num_labels: int, num_targets: int, labeler_classes: int, attrs: dict[str, Any],
           identity: dict[str, Any]) -> None:
    """Write an empty cache (every dataset allocated, /committed = 0, `complete` False) to `path` (a temp name: the
    caller renames it into place)."""
    import h5py

    from feddf import __version__
    from feddf.utils import versions

    c, r, k = channels, resolution, chunk
    fid = h5py.h5f.create(os.fsencode(path), h5py.h5f.ACC_TRUNC, fapl=fapl)
    with h5py.File(fid) as f:
        # (N, C, R, R) in chunks of k whole images; never h5py's auto-chunking (it splits images)
        f.create_dataset(fmt.IMAGES, shape=(n, c, r, r), dtype="u1", chunks=(k, c, r, r), fletcher32=True,
                         **compression_kwargs(compression))
        per_image = [(fmt.LABELS, "i8", fmt.UNLABELED)]
        if num_targets:
            per_image.append((fmt.TARGETS, "i8", fmt.UNLABELED))
        if labeler_classes:
            per_image += [(fmt.LABELER_PRED, "i8", fmt.UNLABELED), (fmt.LABELER_CONF, "f4", 0.0)]
        for name, dtype, fill in per_image:
            f.create_dataset(name, shape=(n,), dtype=dtype, chunks=(k,), fillvalue=fill, fletcher32=True,
                             **compression_kwargs(compression, np.dtype(dtype).itemsize))
        f.create_dataset(fmt.COMMITTED, data=np.int64(0))
        f.create_group(fmt.COVERAGE)
        for name, size, dtype in coverage_specs(num_labels, num_targets, labeler_classes):
            f.create_dataset(name, data=np.zeros(size, dtype))
        all_attrs = {
            "format": fmt.FORMAT_NAME, "format_version": fmt.FORMAT_VERSION, "package_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(), "n_requested": n, "channels": c, "resolution": r,
            "compression": compression, "chunk_images": k,
            "deflate_encoder": deflate_encoder(GZIP_LEVEL) if compression == "gzip" else None, **attrs,
            "identity": json.dumps(identity, sort_keys=True), "complete": False}
        for key, v in all_attrs.items():
            if v is not None:
                f.attrs[key] = attr_value(v)
