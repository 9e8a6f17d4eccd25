"""STL-10 through torchvision (binary files), 3×96×96: `train`, `test`, `unlabeled` (100 000 images) and
`train+unlabeled` — the paper's STL-10 transfer set.

    python -c "from feddf.data import get_dataset; print(get_dataset('stl10:train+unlabeled', root='~/data'))"

Files go in `<data-root>/stl10/stl10_binary/` (the official tarball's layout). Unlabelled images get label -1.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from feddf.data.base import DatasetInfo, Loader, missing

INFO = DatasetInfo(
    name="stl10", channels=3, size=96, num_classes=10,
    class_names=("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"),
    mean=(0.4467, 0.4398, 0.4066), std=(0.2603, 0.2566, 0.2713),
    splits=("train", "test", "unlabeled", "train+unlabeled"), default_split="train+unlabeled",
    how_to_get="download stl10_binary.tar.gz from https://cs.stanford.edu/~acoates/stl10/ and extract it into "
               "<data-root>/stl10/ (giving stl10_binary/)",
)


def _load(split: str, root: Path):
    import torchvision

    folder = root / "stl10"
    try:
        ds = torchvision.datasets.STL10(str(folder), split=split, download=False)
    except RuntimeError:
        try:  # only succeeds where network exists
            ds = torchvision.datasets.STL10(str(folder), split=split, download=True)
        except Exception:
            raise missing(INFO, folder) from None
    # torchvision keeps STL-10 as (N, 3, 96, 96) uint8 already; unlabelled images carry label -1.
    return np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.labels, dtype=np.int64), [str(folder / ds.base_folder)]


LOADER = Loader(INFO, _load)
