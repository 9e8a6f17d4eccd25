"""Fashion-MNIST (Xiao et al. 2017): 60 000 train / 10 000 test, 1×28×28, 10 classes — the real data we build on.

    python -c "from feddf.data import get_dataset; print(get_dataset('fashion-mnist:test'))"

Search order: Debian's `dataset-fashion-mnist` package (/usr/share/datasets/fashion-mnist), the data root (raw IDX
files, gzipped or not, directly or under FashionMNIST/raw as torchvision lays them out), then torchvision's download
where network exists.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from feddf.data.base import DatasetInfo, Loader, missing

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}

INFO = DatasetInfo(
    name="fashion-mnist", channels=1, size=28, num_classes=10,
    class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    # Per-channel statistics of the 60 000 training images (the usual published figures, re-measured in tests).
    mean=(0.2860,), std=(0.3530,),
    splits=("train", "test"),
    how_to_get="on Debian run `apt-get install dataset-fashion-mnist`, or put the four IDX files "
               "(train-images-idx3-ubyte.gz, ...) in <data-root>/fashion-mnist/",
)


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic 0x0000 0x08 ndim, big-endian dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an uint8 IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


def _find(stem: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for name in (stem + ".gz", stem):
            if (d / name).is_file():
                return d / name
    return None


def _load(split: str, root: Path):
    dirs = [DEBIAN_DIR, root / "fashion-mnist", root / "fashion-mnist" / "FashionMNIST" / "raw"]
    img_stem, lbl_stem = _FILES[split]
    img, lbl = _find(img_stem, dirs), _find(lbl_stem, dirs)
    if img is None or lbl is None:
        try:  # last resort where network exists; offline this fails fast and we report the folders searched
            import torchvision

            torchvision.datasets.FashionMNIST(str(root / "fashion-mnist"), train=split == "train", download=True)
        except Exception:
            raise missing(INFO, dirs[:2]) from None
        img, lbl = _find(img_stem, dirs), _find(lbl_stem, dirs)
        if img is None or lbl is None:
            raise missing(INFO, dirs[:2])
    try:
        images, labels = read_idx(img), read_idx(lbl)
    except (OSError, ValueError, EOFError) as e:
        from feddf.errors import FeddfError

        raise FeddfError(f"dataset 'fashion-mnist': cannot read {img} / {lbl} ({e}); reinstall the files") from None
    return images[:, None, :, :], labels.astype(np.int64), [str(img), str(lbl)]


LOADER = Loader(INFO, _load)
