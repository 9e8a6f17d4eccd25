"""Open and validate feddf caches; a map-style dataset. (Whole-chunk streaming reads: feddf.cache.source.)

    python -c "from feddf.cache.reader import open_cache; print(open_cache('cache/x.h5').to_dict())"

Opening rules (learned the hard way with HDF5 2.0):
  * readers never take OS file locks (`locking=False`): a lock held by a training run would stop a resumed `feddf gen`
    (or the writer's final "complete" re-open) from opening the file for writing;
  * a strict (non-SWMR) open first, because only it checks the stored end-of-file address, i.e. detects truncation;
  * if a writer holds the file ("already open for write"), re-open with `swmr=True` and read only `/committed` images.
Every failure becomes one FeddfError line that names the file and the fix.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feddf.cache import format as fmt
from feddf.cache.probe import json_attr
from feddf.checks import MAX_CLASSES
from feddf.errors import FeddfError

_JSON_ATTRS = ("config", "versions", "label_names", "target_names", "classes", "shards")
_MAKE = "create one with `feddf gen` or `feddf cache import`"


def _decode(v: Any) -> Any:
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def decode_attrs(attrs) -> dict[str, Any]:
    """HDF5 root attributes as plain Python values; JSON-encoded ones (config, versions, names) parsed."""
    out = {}
    for k in attrs:
        v = _decode(attrs[k])
        if k in _JSON_ATTRS and isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[k] = v
    return out


def open_h5(path: str | os.PathLike, rdcc_nbytes: int = 4 << 20):
    """Open a cache for reading -> (h5py.File, live). live=True: a writer holds it and we are an SWMR reader."""
    import h5py

    from feddf.cache.superblock import is_hdf5

    p = Path(path)
    if not p.exists():
        raise FeddfError(f"cache file not found: {p} ({_MAKE})")
    if p.is_dir():
        raise FeddfError(f"{p} is a directory, not a cache file: pass the .h5 file ({_MAKE})")
    if not p.is_file():
        raise FeddfError(f"{p} is not a regular file (a FIFO, socket or device): pass the .h5 cache file ({_MAKE})")
    try:
        with open(p, "rb"):
            pass
    except OSError as e:
        raise FeddfError(f"cannot read {p}: {e.strerror or type(e).__name__} (check its permissions and the disk)"
                         ) from None
    if not is_hdf5(p):
        raise FeddfError(f"{p} is not an HDF5 file (no HDF5 signature): pass a cache written by feddf ({_MAKE})")
    # rdcc: the chunk cache only has to hold the one chunk being decoded; w0=1 evicts fully read chunks first.
    kw = dict(rdcc_nbytes=rdcc_nbytes, rdcc_w0=1.0)
    try:
        return h5py.File(p, "r", locking=False, **kw), False
    except OSError as e:
        msg = str(e)
    if "truncated file" in msg:
        raise FeddfError(f"{p} is truncated ({p.stat().st_size} bytes on disk, less than its HDF5 header records): "
                         f"the copy or write was cut short; copy it again or recreate it ({_MAKE})")
    if "already open for write" in msg or "locking flag" in msg:
        for extra in ({"swmr": True, "locking": False}, {"swmr": True}, {}):
            try:
                f = h5py.File(p, "r", **extra, **kw)
                return f, bool(extra.get("swmr"))
            except OSError as e2:
                msg2 = str(e2)
        if "not already open for SWMR" in msg2:
            raise FeddfError(f"{p} is open for writing by another process, or its writer was killed before closing "
                             "it: wait for the writer, or rerun the command that made it (it resumes and repairs it)")
        msg = msg2
    raise FeddfError(f"cannot open {p} as HDF5 ({msg}); check the file or {_MAKE}")


@dataclass
class CacheInfo:
    """What a reader needs to know about a cache, read from its header (no image data)."""

    path: str
    n: int                      # committed images: readers never look past this
    capacity: int               # allocated length of /images (the requested N)
    channels: int
    resolution: int
    chunk_len: int              # images per HDF5 chunk of /images
    format_version: int
    kind: str
    source: str
    complete: bool
    live: bool                  # a writer holds the file; opened as an SWMR reader
    compression: str | None
    fletcher32: bool
    virtual: bool
    has_targets: bool
    file_size: int
    label_counts: np.ndarray | None = None
    target_counts: np.ndarray | None = None
    labeler_counts: np.ndarray | None = None
    label_names: list[str] | None = None
    target_names: list[str] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes_per_image(self) -> float:
        return self.file_size / self.n if self.n else float("nan")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.resolution, self.resolution)

    def to_dict(self) -> dict[str, Any]:
        from feddf.utils import to_jsonable

        d = {k: getattr(self, k) for k in ("path", "n", "capacity", "channels", "resolution", "chunk_len",
                                           "format_version", "kind", "source", "complete", "live", "compression",
                                           "fletcher32", "virtual", "has_targets", "file_size", "label_names",
                                           "target_names")}
        d["bytes_per_image"] = None if not self.n else round(self.bytes_per_image, 1)
        for k in ("label_counts", "target_counts", "labeler_counts"):
            v = getattr(self, k)
            d[k] = None if v is None else [int(x) for x in v]
        d["attrs"] = to_jsonable(self.attrs)
        return d


def _layout_error(p, what: str) -> FeddfError:
    return FeddfError(f"{p} is an HDF5 file but not a feddf cache ({what}): pass a cache written by feddf ({_MAKE})")


def read_info(f, path: str | os.PathLike, live: bool = False, check: bool = True) -> CacheInfo:
    """Validate an open cache file against format.py and describe it; check=True also refuses (one line) what
    `consistency_problems` finds, so every reader (info, preview, train, audit, gan-train) refuses what verify
    flags. `feddf cache verify` passes check=False and lists the problems instead."""
    info = _read_info(f, path, live)
    if check:
        problems = consistency_problems(f, info)
        if problems:
            raise FeddfError(f"{path} is inconsistent: {problems[0]}" + (
                f" (+{len(problems) - 1} more)" if len(problems) > 1 else "") + f"; `feddf cache verify {path}` "
                "lists every problem: recreate or re-import the cache")
    return info


def consistency_problems(f, info: CacheInfo, labels: bool = True) -> list[str]:
    """What contradicts itself in a cache's header (attributes against the datasets' shapes; JSON attributes that
    are not JSON; a `complete` flag that is not a boolean) and, with `labels`, committed /labels outside the class
    count of /label_counts. Cheap: the header plus 8 bytes per committed image, memoised per file identity.
    Shared by `read_info` (refusal on open) and `feddf cache verify` (its report)."""
    from feddf.checks import label_problem

    key = None
    if not info.live and info.attrs.get("complete") is True:
        st = os.stat(info.path)
        key = (os.path.realpath(info.path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, labels)
        if key in _consistent:
            return []
    raw = {k: _decode(f.attrs[k]) for k in f.attrs}
    problems = []
    for name, want in (("channels", info.channels), ("resolution", info.resolution), ("n_requested", info.capacity)):
        if name in raw and raw[name] != want:
            problems.append(f"attribute {name}={raw[name]!r} but /images implies {want}")
    for name in ("config", "identity"):
        if name in raw and json_attr(raw[name]) is None:
            problems.append(f"attribute {name} is not JSON ({str(raw[name])[:40]!r})")
    if "complete" in raw and not isinstance(raw["complete"], bool):
        problems.append(f"attribute complete={raw['complete']!r} is not a boolean")
    if labels and info.label_counts is not None and info.n:
        try:
            values = f[fmt.LABELS][: info.n]
        except OSError:
            values = None  # a chunk failing its checksum: the readers' checksum checks and verify name it
        bad = "" if values is None else label_problem(values, int(info.label_counts.shape[0]))
        if bad:
            problems.append(f"/{fmt.LABELS} has {bad}")
    if key is not None and not problems:
        _consistent.add(key)
    return problems


_consistent: set[tuple] = set()  # finished files found consistent (by path and identity): later opens skip the read


def _read_info(f, path: str | os.PathLike, live: bool = False) -> CacheInfo:
    import h5py

    p = Path(path)
    attrs = decode_attrs(f.attrs)
    if attrs.get("format") != fmt.FORMAT_NAME:
        raise _layout_error(p, f"format attribute is {attrs.get('format')!r}, not {fmt.FORMAT_NAME!r}")
    version = attrs.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _layout_error(p, f"format_version is {version!r}")
    if version > fmt.FORMAT_VERSION:
        raise FeddfError(f"{p} uses cache format version {version}, but this feddf reads up to version "
                         f"{fmt.FORMAT_VERSION}: upgrade feddf (pip install -U feddf)")
    for name in (fmt.IMAGES, fmt.LABELS, fmt.COMMITTED):
        if not isinstance(f.get(name), h5py.Dataset):
            raise _layout_error(p, f"no /{name} dataset")
    images, labels = f[fmt.IMAGES], f[fmt.LABELS]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise _layout_error(p, f"/images is {images.dtype} {images.shape}, expected uint8 (N, C, R, R)")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or labels.dtype.kind not in "iu":
        raise _layout_error(p, f"/labels is {labels.dtype} {labels.shape}, expected int64 ({images.shape[0]},)")
    committed = f[fmt.COMMITTED]
    if committed.shape != () or committed.dtype.kind not in "iu":
        raise _layout_error(p, f"/committed is {committed.dtype} {committed.shape}, expected an int64 scalar")
    if live:
        committed.refresh()
    n = int(committed[()])
    if not 0 <= n <= images.shape[0]:
        raise FeddfError(f"{p}: /committed = {n} is outside 0..{images.shape[0]}; the file is corrupt "
                         f"(run `feddf cache verify {p}`)")
    dcpl = images.id.get_create_plist()
    filters = [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]
    compression = next((name for code, name in ((h5py.h5z.FILTER_DEFLATE, "gzip"), (32000, "lzf"))
                        if code in filters), None)

    def counts(name):
        ds = f.get(name)
        if not isinstance(ds, h5py.Dataset):
            return None
        if ds.ndim != 1 or ds.shape[0] > MAX_CLASSES:  # bounded memory: a tampered (10^9,) coverage is not read
            raise _layout_error(p, f"/{name} is {ds.shape}, expected (K,) with K <= {MAX_CLASSES}")
        return np.asarray(ds[()], dtype=np.int64 if ds.dtype.kind in "iu" else np.float64)

    virtual = bool(images.is_virtual)
    chunk_len = images.chunks[0] if images.chunks else fmt.chunk_images(images.shape[1], images.shape[2])
    fletcher32 = h5py.h5z.FILTER_FLETCHER32 in filters
    if virtual:  # a multi-process gen cache: the checksums live in the shards' datasets
        fletcher32 = all(_has_fletcher32(s) for s in shard_paths(p, attrs)) if shard_paths(p, attrs) else False
    return CacheInfo(
        path=str(p), n=n, capacity=int(images.shape[0]), channels=int(images.shape[1]),
        resolution=int(images.shape[2]), chunk_len=int(chunk_len), format_version=version,
        kind=str(attrs.get("kind", "")), source=str(attrs.get("generator", attrs.get("source", ""))),
        complete=bool(attrs.get("complete", False)), live=live, compression=compression,
        fletcher32=fletcher32, virtual=virtual, has_targets=fmt.TARGETS in f,
        file_size=p.stat().st_size, label_counts=counts(fmt.LABEL_COUNTS), target_counts=counts(fmt.TARGET_COUNTS),
        labeler_counts=counts(fmt.LABELER_COUNTS),
        label_names=attrs.get("label_names") if isinstance(attrs.get("label_names"), list) else None,
        target_names=attrs.get("target_names") if isinstance(attrs.get("target_names"), list) else None,
        attrs=attrs)


def writer_alive(path: str | os.PathLike) -> bool:
    """Whether a CacheWriter process still holds this cache: its lock file `.<name>.lock` names a live pid.
    (Read-only: a reader never takes the writer's flock, which could make a starting writer fail.)"""
    lock = Path(path).with_name(f".{Path(path).name}.lock")
    try:
        pid = int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def shard_paths(path: str | os.PathLike, attrs: dict) -> list[Path]:
    """The shard files of a multi-process cache (attribute `shards`, relative to the cache's folder), or []."""
    shards = attrs.get("shards")
    if not isinstance(shards, list):
        return []
    return [Path(path).parent / s for s in shards]


def _has_fletcher32(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as f:
            dcpl = f[fmt.IMAGES].id.get_create_plist()
            return any(dcpl.get_filter(i)[0] == h5py.h5z.FILTER_FLETCHER32 for i in range(dcpl.get_nfilters()))
    except (OSError, KeyError):
        return False


def open_cache(path: str | os.PathLike) -> CacheInfo:
    """Validate a cache (format, version, layout, truncation) and describe it; the file is closed again."""
    f, live = open_h5(path)
    try:
        info = read_info(f, path, live)
    finally:
        f.close()
    missing = [str(s) for s in shard_paths(path, info.attrs) if not s.is_file()]
    if info.virtual and missing:  # HDF5 would silently read fill values for them
        raise FeddfError(f"{path} is a multi-process cache whose shard file(s) {', '.join(missing[:2])} are missing: "
                         "keep the .shard-*-of-*.h5 files next to it (or regenerate)")
    return info


def check_compatible(info: CacheInfo, channels: int | None = None, resolution: int | None = None,
                     consumer: str = "the model") -> None:
    """Refuse a cache whose images do not match what consumes them (one line naming both shapes and the fix)."""
    bad = []
    if channels is not None and info.channels != channels:
        bad.append(f"{info.channels} channel(s), not {channels}")
    if resolution is not None and info.resolution != resolution:
        bad.append(f"{info.resolution} px, not {resolution} px")
    if bad:
        c, r = channels or info.channels, resolution or info.resolution
        raise FeddfError(f"{info.path} holds {info.channels}x{info.resolution}x{info.resolution} images but "
                         f"{consumer} needs {c}x{r}x{r} "
                         f"({'; '.join(bad)}): use a matching cache, or re-import with "
                         f"`feddf cache import ... --resolution {resolution or info.resolution}`")


class CacheDataset:
    """Map-style dataset over the committed images: `ds[i] -> (uint8 tensor (C, R, R), label int)`.

    The HDF5 handle is opened lazily in whichever process indexes it (DataLoader workers, fork or spawn), never
    pickled. For shuffled streaming use feddf.cache.stream.CacheStream, which reads whole chunks."""

    def __init__(self, path: str | os.PathLike, label_key: str = fmt.LABELS):
        self.path = str(path)
        self.info = open_cache(path)
        if label_key not in (fmt.LABELS, fmt.TARGETS) or (label_key == fmt.TARGETS and not self.info.has_targets):
            raise FeddfError(f"label_key {label_key!r} is not available in {path}: use 'labels'"
                             + (" or 'targets'" if self.info.has_targets else ""))
        self.label_key = label_key
        self._f = None
        self._pid = None

    def __len__(self) -> int:
        return self.info.n

    def _file(self):
        if self._f is None or self._pid != os.getpid():
            self._f, _ = open_h5(self.path)
            self._pid = os.getpid()
        return self._f

    def __getitem__(self, i: int):
        import torch

        if not -self.info.n <= i < self.info.n:
            raise IndexError(f"index {i} out of range for {self.info.n} committed images")
        i %= self.info.n
        f = self._file()
        return torch.from_numpy(f[fmt.IMAGES][i]), int(f[self.label_key][i])

    def __getitems__(self, idx: list[int]):
        """Batched fetch (torch DataLoader uses it): one sorted HDF5 selection instead of len(idx) reads."""
        import torch

        idx = np.asarray(idx, np.int64) % max(1, self.info.n)
        order = np.argsort(idx, kind="stable")
        uniq, inv = np.unique(idx[order], return_inverse=True)
        f = self._file()
        imgs, labs = f[fmt.IMAGES][uniq], f[self.label_key][uniq]
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        imgs, labs = imgs[inv][back], labs[inv][back]
        return [(torch.from_numpy(imgs[k]), int(labs[k])) for k in range(len(idx))]

    def close(self) -> None:
        if self._f is not None and self._pid == os.getpid():
            self._f.close()
        self._f = None

    def __getstate__(self):
        return {**self.__dict__, "_f": None, "_pid": None}
