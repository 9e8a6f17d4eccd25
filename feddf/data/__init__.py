"""Named datasets as uint8 image tensors: a small string registry, one loader per file.

    python -c "from feddf.data import get_dataset; d = get_dataset('fashion-mnist:test[5000:]'); print(d)"

Specs are `name[:split][[start:stop]]` (see spec.py), or a bring-your-own set `folder:PATH`, `npz:PATH`,
`cache:PATH.h5` with the same split/slice tail (see byo.py). Every loader returns (N, C, H, W) uint8 images and int64 labels
(-1 = unlabelled), with a `DatasetInfo` (channels, size, class names, mean/std) available without loading anything.
"""
from __future__ import annotations

import os

import torch

from feddf.data import byo, cifar, fashion_mnist, imagenet32, stl10, synthetic
from feddf.data.base import DatasetInfo, ImageSet, Loader, data_root, load_split
from feddf.data.spec import DatasetSpec, parse_spec
from feddf.errors import FeddfError

REGISTRY: dict[str, Loader] = {
    "fashion-mnist": fashion_mnist.LOADER,
    "cifar10": cifar.CIFAR10_LOADER,
    "cifar100": cifar.CIFAR100_LOADER,
    "stl10": stl10.LOADER,
    "imagenet32": imagenet32.LOADER,
    "synthetic": synthetic.LOADER,
}
DATASETS = tuple(REGISTRY)

__all__ = ["DATASETS", "DatasetInfo", "DatasetSpec", "ImageSet", "check_dataset", "data_root", "dataset_info",
           "get_dataset", "parse_spec"]


def _loader(name: str) -> Loader:
    try:
        return REGISTRY[name]
    except KeyError:
        raise FeddfError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}, or folder:PATH, "
                         "npz:PATH, cache:PATH.h5, hf:PATH") from None


def check_dataset(spec: str, flag: str = "--dataset") -> None:
    """Validate a dataset spec without loading anything (a known name, or an existing folder/npz/cache path)."""
    if byo.is_byo(spec):
        byo.check(spec, flag)
    else:
        _loader(parse_spec(spec).name)


def dataset_info(name: str, columns: tuple = ()) -> DatasetInfo:
    """Metadata of a dataset (channels, size, classes, mean/std) without loading it (a bring-your-own set is
    loaded once per process: its channels, size and statistics come from the data). columns: an hf: set's (image
    column, label column)."""
    if byo.is_byo(name):
        return byo.info(name, columns)
    return _loader(parse_spec(name).name).info


def get_dataset(spec: str | DatasetSpec, root: str | os.PathLike | None = None, columns: tuple = ()) -> ImageSet:
    """Load `name[:split][[a:b]]` as an ImageSet; the whole split is cached under the data root after the first load."""
    if isinstance(spec, str) and byo.is_byo(spec) or isinstance(spec, DatasetSpec) and byo.is_byo(spec.name):
        return byo.get(spec, columns)
    s = parse_spec(spec) if isinstance(spec, str) else spec
    loader = _loader(s.name)
    split = s.split or loader.info.default_split
    if split not in loader.info.splits:
        raise FeddfError(f"dataset {s.name!r} has no split {split!r}: choose one of {', '.join(loader.info.splits)}")
    images, labels, files = load_split(loader, split, data_root(root))
    n = images.shape[0]
    sl = s.slice()
    start, stop, _ = sl.indices(n)
    if (s.start is not None and not -n <= s.start <= n) or (s.stop is not None and not -n <= s.stop <= n) \
            or stop <= start:
        raise FeddfError(f"slice [{s.start}:{s.stop}] of {s.name}:{split} is empty or out of range "
                         f"(the split has {n} images)")
    info = loader.info
    if s.name == "imagenet32":
        names = imagenet32.class_names(data_root(root) / "imagenet32")
        if names:
            from dataclasses import replace

            info = replace(info, class_names=names)
    return ImageSet(images=torch.from_numpy(images[sl].copy()), labels=torch.from_numpy(labels[sl].copy()),
                    info=info, spec=str(DatasetSpec(s.name, split, s.start, s.stop)), source_files=files)
