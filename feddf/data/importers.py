"""`feddf cache import`: real transfer sets into the cache format, so a stream treats CIFAR-100 exactly like a GAN
cache.

    feddf cache import fashion-mnist:test[:500] --out cache/fmnist-test500.h5

Sources (a small string registry keyed by the part before the first ':'):
  * a dataset of feddf.data (`cifar10`, `cifar100`, `stl10`, `imagenet32`, `fashion-mnist`, `synthetic`), with an
    optional split and slice: `stl10:train+unlabeled`, `fashion-mnist:test[:5000]` (or `--split`);
  * `folder:PATH`: class sub-folders (ImageFolder layout; labels = sorted folder names) or a flat folder (label -1);
  * `npz:PATH`: arrays `x` or `images` (uint8, NHWC or NCHW, or (N, H, W) grey) and optional `y`/`labels` and
    `class_names`.
Labels are stored for audits (class coverage of the transfer set) and never used for distillation. `noise` is not
imported: `feddf train` generates it on the fly. Writing goes through CacheWriter (one writer for the whole project),
so an interrupted import resumes where it stopped and an existing cache is never overwritten without force=True.
It lives in feddf/data (not feddf/cache) because it reads the named datasets; the folder/npz decoders are
feddf.data.decode, shared with the bring-your-own sets.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from feddf.data.decode import MAX_CLASSES  # noqa: F401 (the import's limit, named here too)
from feddf.data.decode import (folder_decoder, folder_files, npz_declared_classes, npz_labels, npz_names,
                               npz_num_labels, open_npz, to_nchw_uint8)
from feddf.checks import label_problem
from feddf.errors import FeddfError

BLOCK = 4096  # images decoded/resized per append: bounded memory for folders, tqdm granularity for the rest


@dataclass
class ImportConfig:
    source: str
    out: str
    split: str | None = None
    resolution: int | None = None
    limit: int | None = None
    compression: str = "none"  # uncompressed chunks stream ~3x faster (source.ChunkSource fast path)


@dataclass
class Loaded:
    """A source ready to write: n images of (channels, size, size) produced block by block."""

    spec: str
    n: int
    channels: int
    size: int
    num_labels: int
    label_names: list[str] | None
    blocks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # yields (uint8 (b, C, S, S), int64 (b,))
    files: list[str]


def _apply_limit(n: int, limit: int | None) -> int:
    if limit is not None and limit < 1:
        raise FeddfError(f"--limit {limit} must be a positive number of images")
    return n if limit is None else min(n, limit)


# ---------------------------------------------------------------------------------------------------- datasets
def _dataset(spec: str, split: str | None, limit: int | None) -> Loaded:
    from feddf.data import get_dataset, parse_spec

    s = parse_spec(spec)
    if split is not None:  # --split may carry a slice too: `--split 'test[:5000]'`
        given = parse_spec(f"{s.name}:{split}")
        if (s.split, s.start, s.stop) != (None, None, None) and (s.split, s.start, s.stop) != \
                (given.split, given.start, given.stop):
            raise FeddfError(f"source {spec!r} already names split {s.split!r} but --split is {split!r}: give it once")
        s = given
    return _loaded(get_dataset(s), limit)


def _loaded(ds, limit: int | None) -> Loaded:
    """The blocks of a loaded ImageSet (its first `limit` images)."""
    n = _apply_limit(len(ds), limit)
    images, labels = ds.images[:n], ds.labels[:n]

    def blocks():
        for a in range(0, n, BLOCK):
            yield images[a:a + BLOCK].numpy(), labels[a:a + BLOCK].numpy()

    return Loaded(spec=ds.spec, n=n, channels=ds.info.channels, size=int(images.shape[-1]),
                  num_labels=ds.info.num_classes, label_names=list(ds.info.class_names), blocks=blocks,
                  files=list(ds.source_files))


def _folder(path: str, limit: int | None, resolution: int | None) -> Loaded:
    root, files, classes = folder_files(path)
    files = files[:_apply_limit(len(files), limit)]
    channels, r, load = folder_decoder(files, path, resolution)

    def blocks():
        for a in range(0, len(files), BLOCK):
            part = files[a:a + BLOCK]
            yield np.stack([load(p) for p, _ in part]), np.array([k for _, k in part], np.int64)

    return Loaded(spec=f"folder:{root.resolve()}", n=len(files), channels=channels, size=r,
                  num_labels=len(classes), label_names=classes or None, blocks=blocks, files=[str(root.resolve())])


def _npz(path: str, limit: int | None) -> Loaded:
    p, z = open_npz(path)
    with z:
        key = next((k for k in ("x", "images") if k in z.files), None)
        if key is None:
            raise FeddfError(f"npz:{path} has arrays {', '.join(z.files) or '(none)'} but no 'x' or 'images'")
        x = z[key]
        lkey = next((k for k in ("y", "labels") if k in z.files), None)
        y = np.asarray(z[lkey]).reshape(-1) if lkey else None
        names = npz_names(z)
        declared = npz_declared_classes(z, path)
    n = _apply_limit(x.shape[0] if x.ndim else 0, limit)
    if n == 0:
        raise FeddfError(f"npz:{path}: '{key}' holds no images")
    x = to_nchw_uint8(x[:n], path)
    y = npz_labels(y, n, path, lkey, names)
    num_labels = npz_num_labels(y, names, declared, path)

    def blocks():
        for a in range(0, n, BLOCK):
            yield x[a:a + BLOCK], y[a:a + BLOCK]

    return Loaded(spec=f"npz:{p.resolve()}", n=n, channels=int(x.shape[1]), size=int(x.shape[-1]),
                  num_labels=num_labels, label_names=names, blocks=blocks, files=[str(p.resolve())])


def load_source(source: str, split: str | None = None, limit: int | None = None,
                resolution: int | None = None) -> Loaded:
    """Parse SOURCE and prepare its blocks (datasets are loaded here; folders decode lazily)."""
    kind, _, rest = source.partition(":")
    if kind == "folder":
        if split:
            raise FeddfError("--split does not apply to folder: sources (use a different folder per split)")
        return _folder(rest, limit, resolution)
    if kind == "npz":
        if split:
            raise FeddfError("--split does not apply to npz: sources")
        return _npz(rest, limit)
    if kind == "noise":
        raise FeddfError("'noise' is generated on the fly, not imported: use `feddf train --distill-source noise`")
    if kind == "hf":  # a Hugging Face dataset (feddf/data/hf.py): --split picks train or test
        from feddf.data import get_dataset

        return _loaded(get_dataset(f"{source}:{split}" if split else source), limit)
    from feddf.data import DATASETS, parse_spec

    if parse_spec(source).name not in DATASETS:
        raise FeddfError(f"unknown import source {source!r}: use one of {', '.join(DATASETS)}, folder:PATH, hf:PATH or "
                         "npz:PATH")
    return _dataset(source, split, limit)


def import_source(source: str, out: str | os.PathLike, split: str | None = None, resolution: int | None = None,
                  limit: int | None = None, *, compression: str = "none", force: bool = False,
                  progress: bool = True, workers: int | None = None) -> Path:
    """Import SOURCE into the cache `out` and return its path (resumes an interrupted import of the same config).
    workers: chunk-encoding threads of the writer (default: CacheWriter's); not part of the config (same bytes)."""
    import torch
    from tqdm import tqdm

    from feddf.cache.augment import resize
    from feddf.cache.writer import CacheWriter

    if resolution is not None and not 4 <= resolution <= 1024:
        raise FeddfError(f"--resolution {resolution} is out of range: use 4..1024 pixels")
    out_path = Path(out)
    if out_path.exists():  # refuse a foreign --out before loading a possibly large source (CacheWriter re-checks)
        from feddf.cache.probe import probe_cache

        if not out_path.is_file() or probe_cache(out_path) is None:
            raise FeddfError(f"{out_path} exists and is not a feddf cache; refusing to touch it: choose another "
                             "--out or move that file away")
    cfg = ImportConfig(source=source, out=str(out), split=split, resolution=resolution, limit=limit,
                       compression=compression)
    src = load_source(source, split, limit, resolution)
    r = resolution or src.size
    attrs = {"kind": "imported", "source": src.spec, "source_files": src.files, "limit": limit,
             # the output path is not part of the config: a moved cache must still resume as the same import
             "config": {**{k: v for k, v in asdict(cfg).items() if k != "out"}, "resolved_source": src.spec},
             "label_names": src.label_names}
    k = max(src.num_labels, 0)
    with CacheWriter(out, n=src.n, channels=src.channels, resolution=r, attrs=attrs,
                     num_labels=k, compression=compression, force=force, workers=workers) as w:
        if w.complete:
            w.finish()  # a complete staged --force replacement is swapped in here
            return Path(out)
        done = 0
        with tqdm(total=src.n, initial=w.committed, desc=f"import {src.spec}", unit="img",
                  disable=None if progress else True, leave=False) as bar:
            for images, labels in src.blocks():
                b = images.shape[0]
                if done + b <= w.committed:  # resume: skip blocks the interrupted run already committed
                    done += b
                    continue
                skip = max(0, w.committed - done)
                images, labels = images[skip:], labels[skip:]
                bad = label_problem(labels, k)
                if bad:  # any source: a label the cache's K classes cannot hold is refused, not written
                    raise FeddfError(f"{src.spec} (block from image {done + skip}): {bad}: fix the source's labels")
                if images.shape[-1] != r:
                    images = resize(torch.from_numpy(np.ascontiguousarray(images)), r).numpy()
                w.append(images, labels)
                done += b
                bar.update(images.shape[0])
        w.finish()
    return Path(out)
