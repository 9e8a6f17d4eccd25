"""Downsampled ImageNet 32×32 (Chrabaszcz et al. 2017) from the official npz batches, 3×32×32, 1000 classes.

    python -c "from feddf.data import get_dataset; print(get_dataset('imagenet32:val', root='~/data'))"

Put `train_data_batch_1.npz` … `train_data_batch_10.npz` and `val_data.npz` (from Imagenet32_train_npz.zip and
Imagenet32_val_npz.zip, https://image-net.org/download-images.php) in `<data-root>/imagenet32/` (sub-folders are
searched too). Each batch holds `data` uint8 (N, 3072) — the R, G and B planes of a 32×32 image, flattened — and
`labels` 1..1000. Labels follow the ILSVRC devkit order (map_clsloc.txt), not torchvision's sorted-wnid order; if
`map_clsloc.txt` sits beside the batches its class names are used.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from feddf.data.base import DatasetInfo, Loader, missing

INFO = DatasetInfo(
    name="imagenet32", channels=3, size=32, num_classes=1000,
    class_names=tuple(f"class_{i}" for i in range(1000)),
    mean=(0.4811, 0.4575, 0.4079), std=(0.2605, 0.2533, 0.2683),
    splits=("train", "val"),
    how_to_get="download Imagenet32_train_npz.zip and Imagenet32_val_npz.zip from "
               "https://image-net.org/download-images.php and extract the .npz batches into <data-root>/imagenet32/",
)


def _batch_files(folder: Path, split: str) -> list[Path]:
    pattern = re.compile(r"train_data_batch_(\d+)\.npz$" if split == "train" else r"val_data\.npz$")
    found = [p for p in folder.rglob("*.npz") if pattern.search(p.name)] if folder.is_dir() else []
    # Train batches in numeric order (1, 2, ..., 10), not lexicographic (1, 10, 2, ...).
    return sorted(found, key=lambda p: int(pattern.search(p.name).group(1)) if split == "train" else 0)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as z:
        data, labels = z["data"], z["labels"]
    images = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)  # plane-major: (N, 3072) -> (N, 3, 32, 32)
    return images, np.asarray(labels, dtype=np.int64).reshape(-1) - 1  # 1..1000 -> 0..999


def class_names(folder: Path) -> tuple[str, ...] | None:
    """Names from map_clsloc.txt lines `wnid index name` when the user placed it beside the batches."""
    maps = list(folder.rglob("map_clsloc.txt")) if folder.is_dir() else []
    if not maps:
        return None
    names = {}
    for line in maps[0].read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            names[int(parts[1]) - 1] = parts[2]
    return tuple(names.get(i, f"class_{i}") for i in range(1000))


def _load(split: str, root: Path):
    folder = root / "imagenet32"
    files = _batch_files(folder, split)
    if not files:
        raise missing(INFO, folder)
    parts = [read_batch(f) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels, [str(f) for f in files]


LOADER = Loader(INFO, _load)
