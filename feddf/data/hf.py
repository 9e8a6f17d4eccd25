"""Hugging Face `datasets` as task data: `hf:PATH[:train|:test][[start:stop]]` (read by feddf/data/byo.py).

    python -c "from feddf.data import get_dataset; print(get_dataset('hf:/data/my-set:test[:100]'))"

PATH is a dataset saved with `Dataset.save_to_disk` / `DatasetDict.save_to_disk`, or local files `datasets` reads:
a .parquet, .csv, .json/.jsonl or .arrow file, or a folder of images in ImageFolder layout. Nothing is downloaded
(HF_DATASETS_OFFLINE is set). A DatasetDict with `train` and `test` splits gives those; a single dataset (or a dict
with `train` alone) is split 80/20 by the fixed seed of the other bring-your-own sets.

Columns: the image column is `--image-column` (train) / `--hf-image-column` (cache import), else the column with the
`Image` feature, else one named image, img or pixel_values; the label column is `--label-column` /
`--hf-label-column`, else the `ClassLabel` column (whose names become the class names), else one named label,
labels or fine_label.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from feddf.checks import MAX_CLASSES
from feddf.errors import FeddfError

IMAGE_NAMES = ("image", "img", "pixel_values")
LABEL_NAMES = ("label", "labels", "fine_label")
FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}


def _open(path: Path):
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # read before `datasets` is first imported
    try:
        import datasets
    except ImportError:
        raise FeddfError(f"hf:{path} needs the `datasets` package: pip install datasets") from None
    from feddf.data.base import data_root

    cache = str(data_root(None) / "hf-cache")
    try:
        if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "dataset_info.json",
                                                                 "state.json")):
            return datasets.load_from_disk(str(path))
        if path.is_dir():
            return datasets.load_dataset("imagefolder", data_dir=str(path), cache_dir=cache)
        if path.suffix in FILE_BUILDERS:
            return datasets.load_dataset(FILE_BUILDERS[path.suffix], data_files=str(path), cache_dir=cache)
    except (OSError, ValueError) as e:
        raise FeddfError(f"hf:{path}: `datasets` cannot read it ({type(e).__name__}: {str(e)[:200]})") from None
    raise FeddfError(f"hf:{path}: not a saved dataset (save_to_disk) nor a {', '.join(FILE_BUILDERS)} file or image "
                     "folder")


def _column(ds, path: Path, given: str | None, feature: str, names: tuple, what: str, flag: str) -> str:
    cols = list(ds.column_names)
    if given:
        if given not in cols:
            raise FeddfError(f"{flag} {given}: hf:{path} has no such column; its columns are {', '.join(cols)}")
        return given
    typed = [c for c in cols if type(ds.features[c]).__name__ == feature]
    named = [c for c in cols if c in names]
    if typed or named:
        return (typed or named)[0]
    raise FeddfError(f"hf:{path}: no {what} column found among {', '.join(cols)}: name it with {flag}")


def _arrays(ds, path: Path, image_col: str, label_col: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NCHW images and int64 labels of one split."""
    from feddf.data.decode import to_nchw_uint8

    images = []
    for im in ds[image_col]:
        if isinstance(im, dict) and im.get("bytes") is not None:  # an undecoded image (parquet of encoded files)
            import io

            from PIL import Image

            im = Image.open(io.BytesIO(im["bytes"]))
        images.append(np.asarray(im))
    if not images:
        raise FeddfError(f"hf:{path}: a split has no rows")
    if len({a.shape for a in images}) != 1:
        raise FeddfError(f"hf:{path}: images have different sizes ({images[0].shape}, ...): resize them to one square "
                         "size (or import them with `feddf cache import --resolution R`)")
    try:
        labels = np.asarray(ds[label_col], dtype=np.int64)
    except (TypeError, ValueError):
        raise FeddfError(f"hf:{path}: column {label_col} does not hold integer labels") from None
    return to_nchw_uint8(np.stack(images), f"hf:{path}"), labels


def load(path: Path, image_column: str | None = None, label_column: str | None = None, *, split, split_rule: str):
    """(splits {"train"|"test": (uint8 images, labels)}, class names, what was read) of a Hugging Face dataset (see
    the module docstring); `split(images, labels)` makes the train/test splits of a set that has no test split
    (byo's seeded split, described by `split_rule`). byo.py wraps the result; this module imports nothing of it."""
    ds = _open(path)
    splits = dict(ds) if hasattr(ds, "keys") else {"train": ds}
    if "train" not in splits and len(splits) == 1:
        splits = {"train": next(iter(splits.values()))}
    if "train" not in splits:
        raise FeddfError(f"hf:{path} has splits {', '.join(splits)}: feddf needs `train` (and optionally `test`)")
    first = splits["train"]
    icol = _column(first, path, image_column, "Image", IMAGE_NAMES, "image", "--image-column")
    lcol = _column(first, path, label_column, "ClassLabel", LABEL_NAMES, "label", "--label-column")
    feature = first.features[lcol]
    names = tuple(feature.names) if type(feature).__name__ == "ClassLabel" else ()
    if "test" in splits:
        out = {s: _arrays(splits[s], path, icol, lcol) for s in ("train", "test")}
        rule = "train and test splits"
    else:
        out = split(*_arrays(first, path, icol, lcol))
        rule = split_rule
    if out["train"][0].shape[1:] != out["test"][0].shape[1:]:
        raise FeddfError(f"hf:{path}: train images are {out['train'][0].shape[1:]} but test images "
                         f"{out['test'][0].shape[1:]}")
    k = max(int(y.max()) + 1 for _, y in out.values())
    if not names and k > MAX_CLASSES:  # a label of 10^9 must not size the class list
        raise FeddfError(f"hf:{path}: label {k - 1} in column {lcol}: use class ids 0..K-1 (K <= {MAX_CLASSES})")
    return out, names or tuple(f"class_{i}" for i in range(k)), f"{rule}; columns {icol}, {lcol}"
