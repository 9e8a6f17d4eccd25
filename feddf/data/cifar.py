"""CIFAR-10 / CIFAR-100 through torchvision (python-pickle batches), 3×32×32.

    python -c "from feddf.data import get_dataset; print(get_dataset('cifar100:train', root='~/data'))"

Files go in `<data-root>/cifar10/cifar-10-batches-py/` and `<data-root>/cifar100/cifar-100-python/` (the layout of
the official tarballs, which torchvision downloads itself where network exists).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from feddf.data.base import DatasetInfo, Loader, missing

CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle "
    "caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant "
    "flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man "
    "maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree "
    "plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail "
    "snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout "
    "tulip turtle wardrobe whale willow_tree wolf woman worm").split()
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CIFAR10 = DatasetInfo(
    name="cifar10", channels=3, size=32, num_classes=10, class_names=CIFAR10_CLASSES,
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), splits=("train", "test"),
    how_to_get="download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it "
               "into <data-root>/cifar10/ (giving cifar-10-batches-py/)",
)
CIFAR100 = DatasetInfo(
    name="cifar100", channels=3, size=32, num_classes=100, class_names=tuple(CIFAR100_CLASSES),
    mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), splits=("train", "test"),
    how_to_get="download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and extract it "
               "into <data-root>/cifar100/ (giving cifar-100-python/)",
)


def _torchvision_loader(info: DatasetInfo, cls_name: str):
    def load(split: str, root: Path):
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        folder = root / info.name
        try:
            ds = cls(str(folder), train=split == "train", download=False)
        except RuntimeError:
            try:  # only succeeds where network exists
                ds = cls(str(folder), train=split == "train", download=True)
            except Exception:
                raise missing(info, folder) from None
        images = np.asarray(ds.data, dtype=np.uint8).transpose(0, 3, 1, 2)  # NHWC -> NCHW
        return images, np.asarray(ds.targets, dtype=np.int64), [str(folder / ds.base_folder)]

    return load


CIFAR10_LOADER = Loader(CIFAR10, _torchvision_loader(CIFAR10, "CIFAR10"))
CIFAR100_LOADER = Loader(CIFAR100, _torchvision_loader(CIFAR100, "CIFAR100"))
