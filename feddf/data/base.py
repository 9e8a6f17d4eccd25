"""Dataset registry types and the array-file cache shared by every loader.

    python -c "from feddf.data import get_dataset; d = get_dataset('fashion-mnist:test[:5]'); print(d)"

A loader returns the full split as uint8 (N, C, H, W) + int64 labels; `load_split` caches that under the data root as
one uncompressed `.npz` so a second load is a single sequential read (the IDX/pickle/PNG decoders are slow).
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from feddf.checks import label_problem
from feddf.errors import FeddfError


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    channels: int
    size: int
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    splits: tuple[str, ...]
    default_split: str = "train"
    how_to_get: str = ""
    # bring-your-own sets (byo.py): source, split rule, how mean/std were obtained, array hash
    details: dict | None = field(default=None, compare=False, hash=False)


@dataclass
class ImageSet:
    """A labelled (or unlabelled: label -1) set of images held in memory as tensors."""

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,), -1 = unlabelled
    info: DatasetInfo
    spec: str = ""
    source_files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (f"ImageSet({self.spec or self.info.name}: images {tuple(self.images.shape)} uint8, "
                f"{self.info.num_classes} classes)")


@dataclass(frozen=True)
class Loader:
    info: DatasetInfo
    # load(split, root) -> (images uint8 NCHW numpy, labels int64 numpy, files read)
    load: Callable[[str, Path], tuple[np.ndarray, np.ndarray, list[str]]]
    cache: bool = True  # False for generated sets: regenerating is as fast as reading a cache file


def data_root(root: str | os.PathLike | None = None) -> Path:
    """--data-root, else $FEDDF_DATA_ROOT, else ~/.cache/feddf/data. A given root must be an existing folder (a typo
    must not become a new folder filled with copies of the data sets); only the default root is created on demand."""
    env = os.environ.get("FEDDF_DATA_ROOT")
    default = Path(env).expanduser() if env else Path.home() / ".cache" / "feddf" / "data"
    if root is None:
        return default
    p = Path(root).expanduser()
    if not p.is_dir() and p.absolute() != default.absolute():
        what = "is not a folder" if p.exists() else "does not exist"
        raise FeddfError(f"--data-root {root} {what}: create it first, fix the path, or leave --data-root out to use "
                         f"the default root {default}")
    return p


def load_split(loader: Loader, split: str, root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load a whole split once, then reuse the single-array cache file `<root>/<name>/<split>.npz`."""
    if not loader.cache:
        return loader.load(split, root)
    cache_file = root / loader.info.name / f"{split}.feddf.npz"
    k = loader.info.num_classes
    if cache_file.exists():
        try:
            with np.load(cache_file, allow_pickle=False) as z:
                images, labels = z["images"], z["labels"]
            if images.dtype == np.uint8 and images.ndim == 4 and labels.shape == images.shape[:1] \
                    and labels.dtype == np.int64 and not label_problem(labels, k):
                return images, labels, [str(cache_file)]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # a broken (or tampered) cache file is rebuilt below rather than trusted
    images, labels, files = loader.load(split, root)
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if images.ndim != 4 or images.shape[0] != labels.shape[0]:
        raise FeddfError(f"{loader.info.name}:{split}: loader returned images {images.shape} / labels "
                         f"{labels.shape}; the files in {root} look corrupt")
    bad = label_problem(labels, k)
    if bad:
        raise FeddfError(f"{loader.info.name}:{split}: {bad}; the files in {root} look corrupt: download them again")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, labels=labels)
        os.replace(tmp, cache_file)
    except OSError:
        pass  # a read-only data root only costs speed
    return images, labels, files


def missing(info: DatasetInfo, searched: list[Path] | Path) -> FeddfError:
    """The one-line error for absent files: dataset, folders searched, how to obtain them."""
    where = ", ".join(str(p) for p in (searched if isinstance(searched, list) else [searched]))
    return FeddfError(f"dataset {info.name!r} not found (searched {where}): {info.how_to_get}")
