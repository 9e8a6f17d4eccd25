"""Bring-your-own task data: `folder:PATH`, `npz:PATH`, `cache:PATH.h5` (or `PATH.h5`) and `hf:PATH` as datasets.

    python -c "from feddf.data import get_dataset; print(get_dataset('npz:/tmp/my.npz:test[:100]'))"

Specs are `KIND:PATH[:train|:test][[start:stop]]`, the same split/slice syntax as the named sets.
  folder:PATH  `PATH/train/` and `PATH/test/` in ImageFolder layout (one sub-folder per class; label = index of the
               sorted class names of train/), or one ImageFolder whose images are split 80/20 by a fixed seed.
               Images are ordered by file name (then class folder), not class by class, so numbered files keep the
               order of an export; every image must have the same square size (one line otherwise).
  npz:PATH     arrays x_train, y_train, x_test, y_test, or the `feddf cache import` names x|images and y|labels
               (then the seeded 80/20 split); optional class_names, mean, std.
  cache:PATH   a feddf cache whose every image has a label (an imported real set, a conditional GAN's classes).
  hf:PATH      a Hugging Face `datasets` dataset saved with save_to_disk, or local files it reads (feddf/data/hf.py).
Channels, resolution and class names come from the data; the normalisation statistics are the per-channel mean/std
of the training split unless given (npz arrays `mean`/`std`, or `PATH/dataset.json` with "mean", "std" and
optionally "class_names" for a folder). Everything derived is in `DatasetInfo.details` and so in config.json.
Decoders are those of `feddf cache import` (feddf/data/decode.py); a loaded set is memoised per process.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from feddf.checks import label_problem
from feddf.errors import FeddfError

KINDS = ("folder", "npz", "cache", "hf")
SPLITS = ("train", "test")
TEST_FRACTION = 0.2   # share of a single set held out as `test`
SPLIT_SEED = 0        # fixed, not --seed: every run of a study evaluates on the same held-out images
_TAIL = re.compile(r"^(?P<base>.+?)(?::(?P<split>[A-Za-z0-9_+\-]+))?(?:\[(?P<slice>[^\]]*)\])?$")


def is_byo(spec: str) -> bool:
    s = spec.strip()
    return s.split(":", 1)[0] in KINDS and ":" in s or s.split("[", 1)[0].split(":")[0].endswith(".h5")


@dataclass(frozen=True)
class Loaded:
    splits: dict            # split -> (uint8 (N, C, R, R), int64 (N,))
    class_names: tuple
    mean: tuple | None      # given statistics, else None (derived from train)
    std: tuple | None
    files: tuple
    split_rule: str


def parse(spec: str):
    """'npz:/d/x.npz:test[:5]' -> DatasetSpec('npz:/d/x.npz', 'test', None, 5); the path is made absolute."""
    from feddf.data.spec import DatasetSpec, parse_spec

    m = _TAIL.match(spec.strip())
    base, split = m.group("base"), m.group("split")
    if split is not None and split not in SPLITS:  # a ':' inside the path, not a split
        base, split = f"{base}:{split}", None
    kind, _, path = base.partition(":")
    if kind not in KINDS:  # a bare PATH.h5
        kind, path = "cache", base
    if not path:
        raise FeddfError(f"bad dataset spec {spec!r}: give {kind}:PATH")
    sl = "" if m.group("slice") is None else f"[{m.group('slice')}]"
    s = parse_spec(f"x{sl}")  # the named sets' slice parsing and its errors
    return DatasetSpec(f"{kind}:{Path(path).expanduser().resolve()}", split, s.start, s.stop)


def check(spec: str, flag: str = "--dataset") -> None:
    """Cheap validation (for configs): the spec parses and its path exists; the one line names `flag`."""
    s = parse(spec)
    path = Path(s.name.split(":", 1)[1])
    if not path.exists():
        raise FeddfError(f"{flag} {spec}: {path} does not exist")


# ---------------------------------------------------------------------------------------------------- loading
def _seeded_split(images: np.ndarray, labels: np.ndarray) -> dict:
    n = labels.shape[0]
    if n < 2:
        raise FeddfError(f"a single set of {n} image(s) cannot be split into train and test: add images")
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_test = max(1, int(round(n * TEST_FRACTION)))
    test, train = np.sort(order[:n_test]), np.sort(order[n_test:])
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


def _read_folder(root: Path, classes: list[str] | None = None):
    """One ImageFolder -> (uint8 NCHW, labels, class names), ordered by (file name, class)."""
    from feddf.data.decode import folder_decoder, folder_files

    _, files, found = folder_files(str(root))
    if not found:
        raise FeddfError(f"folder:{root} has no class sub-folders: a task dataset needs labels (one folder per "
                         "class, ImageFolder layout)")
    if classes is not None:  # test/: labels are positions in train/'s class list
        extra = sorted(set(found) - set(classes))
        if extra:
            raise FeddfError(f"folder:{root} has classes {', '.join(extra[:3])} that train/ lacks: use the same "
                             "class folders in train/ and test/")
        files = [(p, classes.index(found[k])) for p, k in files]
    files.sort(key=lambda f: (f[0].name, f[1]))
    _, _, load = folder_decoder(files, str(root), None,
                                fix="a task dataset needs one image size: resize the images to one square size "
                                    "(or import them with `feddf cache import --resolution R` and use cache:PATH)")
    images = np.stack([load(p) for p, _ in files])
    return images, np.array([k for _, k in files], np.int64), list(classes or found)


def _load_folder(path: Path) -> Loaded:
    meta = {}
    if (path / "dataset.json").is_file():
        try:
            meta = json.loads((path / "dataset.json").read_text())
        except ValueError as e:
            raise FeddfError(f"{path / 'dataset.json'} is not valid JSON ({e})") from None
    has = [s for s in SPLITS if (path / s).is_dir()]
    if len(has) == 1:
        raise FeddfError(f"folder:{path} has {has[0]}/ but no {[s for s in SPLITS if s not in has][0]}/: give both "
                         "train/ and test/ (ImageFolder each), or class folders directly under it for a seeded split")
    if len(has) == 2:
        tr = _read_folder(path / "train")
        te = _read_folder(path / "test", tr[2])
        if tr[0].shape[1:] != te[0].shape[1:]:
            raise FeddfError(f"folder:{path}: train/ images are {tr[0].shape[1:]} but test/ images "
                             f"{te[0].shape[1:]}: use one size and colour mode")
        splits, rule, names = {"train": tr[:2], "test": te[:2]}, "train/ and test/ folders", tr[2]
    else:
        images, labels, names = _read_folder(path)
        splits, rule = _seeded_split(images, labels), f"seeded split (seed {SPLIT_SEED}, test {TEST_FRACTION:g})"
    if "class_names" in meta:  # display names (a folder name cannot hold e.g. "T-shirt/top")
        if len(meta["class_names"]) != len(names):
            raise FeddfError(f"{path / 'dataset.json'}: {len(meta['class_names'])} class_names for {len(names)} "
                             "class folders")
        names = meta["class_names"]
    return Loaded(splits, tuple(str(n) for n in names), _tuple(meta.get("mean")), _tuple(meta.get("std")),
                  (str(path),), rule)


def _load_npz(path: Path) -> Loaded:
    from feddf.data.decode import npz_declared_classes, npz_labels, npz_names, npz_num_labels, open_npz, to_nchw_uint8

    p, z = open_npz(str(path))
    with z:
        names = npz_names(z)
        declared = npz_declared_classes(z, str(path))
        stats = [_tuple(z[k].tolist()) if k in z.files else None for k in ("mean", "std")]
        # K as `feddf cache import` derives it (npz_num_labels): declared, named, else from the labels, bounded,
        # so a label of 10^9 is one line, not a list of 10^9 class names
        if "x_train" in z.files:
            missing = [k for k in ("y_train", "x_test", "y_test") if k not in z.files]
            if missing:
                raise FeddfError(f"npz:{path} has x_train but not {', '.join(missing)}: save x_train, y_train, "
                                 "x_test, y_test (or x, y for a seeded split)")
            splits, k = {}, 0
            for s in SPLITS:
                x = to_nchw_uint8(z[f"x_{s}"], str(path))
                splits[s] = (x, npz_labels(z[f"y_{s}"], x.shape[0], str(path), f"y_{s}", names))
                k = max(k, npz_num_labels(splits[s][1], names, declared, f"{path} (y_{s})"))
            rule = "x_train/x_test arrays"
        else:
            key = next((k for k in ("x", "images") if k in z.files), None)
            lkey = next((k for k in ("y", "labels") if k in z.files), None)
            if key is None or lkey is None:
                raise FeddfError(f"npz:{path} has arrays {', '.join(z.files) or '(none)'}: a task dataset needs "
                                 "x_train, y_train, x_test, y_test, or x|images with y|labels")
            x = to_nchw_uint8(z[key], str(path))
            y = npz_labels(z[lkey], x.shape[0], str(path), lkey, names)
            k = npz_num_labels(y, names, declared, str(path))
            splits = _seeded_split(x, y)
            rule = f"seeded split (seed {SPLIT_SEED}, test {TEST_FRACTION:g})"
    if splits["train"][0].shape[1:] != splits["test"][0].shape[1:]:
        raise FeddfError(f"npz:{path}: x_train images are {splits['train'][0].shape[1:]} but x_test "
                         f"{splits['test'][0].shape[1:]}")
    names = names or [f"class_{i}" for i in range(k)]
    return Loaded(splits, tuple(names), stats[0], stats[1], (str(p),), rule)


def _load_cache(path: Path) -> Loaded:
    import torch

    from feddf.cache.reader import open_cache
    from feddf.cache.stream import CacheStream

    info = open_cache(path)
    if info.n == 0:
        raise FeddfError(f"cache:{path} has no committed images")
    stream = CacheStream(path, batch_size=4096, shuffle=False, infinite=False)
    try:
        parts = list(stream)
    finally:
        stream.close()
    images = torch.cat([x for x, _ in parts])[:info.n].numpy()
    labels = torch.cat([y for _, y in parts])[:info.n].numpy().astype(np.int64)
    if (labels < 0).any():
        raise FeddfError(f"cache:{path}: {int((labels < 0).sum())} of {info.n} images have no label (-1): a task "
                         "dataset needs a labelled cache (an imported real set or a class-conditional generator)")
    k = int(labels.max()) + 1
    names = info.label_names if info.label_names and len(info.label_names) >= k else [f"class_{i}" for i in range(k)]
    return Loaded(_seeded_split(images, labels), tuple(names), None, None, (str(path),),
                  f"seeded split (seed {SPLIT_SEED}, test {TEST_FRACTION:g})")


def _tuple(v) -> tuple | None:
    if v is None:
        return None
    v = [v] if isinstance(v, (int, float)) else list(v)
    return tuple(float(x) for x in v)


@lru_cache(maxsize=4)
def _load(name: str, stamp: int, columns: tuple = ()) -> tuple[Loaded, object]:
    """(loaded arrays, DatasetInfo) of 'KIND:/abs/path'; memoised per modification time of the path. columns: an
    hf: set's (image column, label column), None each for the detected one."""
    from feddf.data import hf
    from feddf.data.base import DatasetInfo

    kind, _, p = name.partition(":")
    path = Path(p)
    if kind == "hf":
        splits, names, detail = hf.load(path, *columns, split=_seeded_split,
                                        split_rule=f"seeded split (seed {SPLIT_SEED}, test {TEST_FRACTION:g})")
        loaded = Loaded(splits, names, None, None, (str(path),), detail)
    else:
        loaded = {"folder": _load_folder, "npz": _load_npz, "cache": _load_cache}[kind](path)
    k = len(loaded.class_names)
    for s, (_, lab) in loaded.splits.items():  # every loader derives K boundedly; a label outside it is refused
        if lab.shape[0] == 0:
            raise FeddfError(f"{name}: the {s} split has no images: give it at least one")
        bad = label_problem(lab, k)
        if bad:
            raise FeddfError(f"{name}: {s} split: {bad}: use class ids 0..K-1 (and as many class names)")
    x, y = loaded.splits["train"]
    c, r = int(x.shape[1]), int(x.shape[-1])
    if loaded.mean is not None and loaded.std is not None:
        mean, std, how = loaded.mean, loaded.std, "given"
    else:  # per-channel statistics of the training split, in float64 (exact for any N)
        v = x.reshape(x.shape[0], c, -1)
        mean = tuple(float(m) for m in v.mean(axis=(0, 2), dtype=np.float64) / 255)
        std = tuple(float(s) for s in v.std(axis=(0, 2), dtype=np.float64) / 255)
        how = f"derived from the {x.shape[0]} training images"
    if len(mean) != c or len(std) != c or not all(np.isfinite(mean + std)) or min(std) <= 0:
        raise FeddfError(f"{name}: mean {mean} / std {std} must have {c} finite value(s), std > 0")
    digest = hashlib.sha256()
    for s in SPLITS:
        for a in loaded.splits[s]:
            digest.update(np.ascontiguousarray(a).tobytes())
    details = {"source": name, "split_rule": loaded.split_rule, "stats": how,
               "n": {s: int(loaded.splits[s][1].shape[0]) for s in SPLITS}, "sha256_arrays": digest.hexdigest()}
    info = DatasetInfo(name=name, channels=c, size=r, num_classes=k, class_names=loaded.class_names[:k], mean=mean,
                       std=std, splits=SPLITS, details=details)
    return loaded, info


def _stamped(name: str, columns: tuple = ()) -> tuple[Loaded, object]:
    p = Path(name.split(":", 1)[1])
    if not p.exists():
        raise FeddfError(f"dataset {name}: {p} does not exist")
    return _load(name, p.stat().st_mtime_ns, tuple(columns) if name.startswith("hf:") else ())


def info(spec: str, columns: tuple = ()):
    return _stamped(parse(spec).name, columns)[1]


def get(spec, columns: tuple = ()):
    """ImageSet of a bring-your-own spec (str or a parsed DatasetSpec)."""
    import torch

    from feddf.data.base import ImageSet
    from feddf.data.spec import DatasetSpec

    s = parse(spec) if isinstance(spec, str) else spec
    loaded, inf = _stamped(s.name, columns)
    split = s.split or "train"
    images, labels = loaded.splits[split]
    n = labels.shape[0]
    start, stop, _ = s.slice().indices(n)
    if stop <= start:
        raise FeddfError(f"slice [{s.start}:{s.stop}] of {s.name}:{split} is empty (the split has {n} images)")
    return ImageSet(images=torch.from_numpy(images[start:stop].copy()),
                    labels=torch.from_numpy(labels[start:stop].copy()), info=inf,
                    spec=str(DatasetSpec(s.name, split, s.start, s.stop)), source_files=list(loaded.files))
