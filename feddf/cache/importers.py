"""Real transfer sets into the cache format, so a stream treats CIFAR-100 exactly like a GAN cache.

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
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from feddf.errors import FeddfError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
MAX_CLASSES = 100_000  # classes an import may derive from its labels (ImageNet-21k has 21 841): coverage is (K,) int64
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
    ds = get_dataset(s)
    n = _apply_limit(len(ds), limit)
    images, labels = ds.images[:n], ds.labels[:n]

    def blocks():
        for a in range(0, n, BLOCK):
            yield images[a:a + BLOCK].numpy(), labels[a:a + BLOCK].numpy()

    return Loaded(spec=ds.spec, n=n, channels=ds.info.channels, size=int(images.shape[-1]),
                  num_labels=ds.info.num_classes, label_names=list(ds.info.class_names), blocks=blocks,
                  files=list(ds.source_files))


# ---------------------------------------------------------------------------------------------------- folders
def folder_files(path: str) -> tuple[Path, list[tuple[Path, int]], list[str]]:
    """(root, [(image file, label)] in class-folder order, class names): ImageFolder layout, or flat (label -1)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FeddfError(f"folder:{path}: no such folder; give folder:PATH of an image folder")

    def images_in(d: Path) -> list[Path]:
        return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)

    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[tuple[Path, int]] = []
    for k, name in enumerate(classes):
        files += [(p, k) for p in images_in(root / name)]
    flat = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if classes and flat:
        raise FeddfError(f"folder:{path} mixes class sub-folders with {len(flat)} loose images (e.g. {flat[0].name}): "
                         "put every image in a class folder, or use a flat folder")
    if not classes:
        files = [(p, -1) for p in flat]
    if not files:
        raise FeddfError(f"folder:{path} contains no images ({', '.join(IMAGE_EXTENSIONS)}): check the path")
    return root, files, classes


def folder_decoder(files: list[tuple[Path, int]], path: str, resolution: int | None,
                   fix: str = "pass --resolution R to resize (shorter side to R, centre crop) to R x R"):
    """Read the image headers: (channels, resolution, load(file) -> uint8 (C, R, R)); mixed sizes without a
    resolution are one line (`fix` says what to do)."""
    from PIL import Image, UnidentifiedImageError

    sizes, grey = set(), True
    for p, _ in files:  # headers only: PIL decodes pixels lazily
        try:
            with Image.open(p) as im:
                sizes.add(im.size)
                grey &= im.mode in ("1", "L", "I", "I;16", "F")
        except (OSError, UnidentifiedImageError) as e:
            raise FeddfError(f"cannot read image {p} ({e}): remove or fix it") from None
    if resolution is None:
        if len(sizes) != 1 or len({s for wh in sizes for s in wh}) != 1:
            shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:4])
            raise FeddfError(f"folder:{path} has images of sizes {shown}: {fix}")
        resolution = next(iter(sizes))[0]
    channels = 1 if grey else 3
    r = resolution

    def load(p: Path) -> np.ndarray:
        try:
            return _decode(p)
        except (OSError, UnidentifiedImageError, ValueError) as e:  # e.g. a truncated PNG: its header read fine above
            raise FeddfError(f"cannot decode image {p} ({e}): remove or fix it, then rerun the import") from None

    def _decode(p: Path) -> np.ndarray:
        with Image.open(p) as im:
            im = im.convert("L" if grey else "RGB")
            w, h = im.size
            if (w, h) != (r, r):  # shorter side to r, then centre crop: no distortion of the aspect ratio
                scale = r / min(w, h)
                im = im.resize((max(r, round(w * scale)), max(r, round(h * scale))), Image.BILINEAR, reducing_gap=None)
                left, top = (im.size[0] - r) // 2, (im.size[1] - r) // 2
                im = im.crop((left, top, left + r, top + r))
            a = np.asarray(im, dtype=np.uint8)
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # (C, r, r)

    return channels, r, load


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


# ---------------------------------------------------------------------------------------------------- npz
def to_nchw_uint8(x: np.ndarray, path: str) -> np.ndarray:
    """Images of an npz (uint8 or float in [0, 1]/[0, 255]; NHWC, NCHW or (N, H, W)) as uint8 NCHW."""
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise FeddfError(f"npz:{path}: images have shape {x.shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W)")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if x.shape[1] not in (1, 3) or x.shape[2] != x.shape[3]:
        raise FeddfError(f"npz:{path}: images of shape {x.shape} are not 1- or 3-channel squares (N, C, R, R)")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype.kind == "f":
        lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
        if np.isnan(x).any() or lo < 0 or hi > 255:
            raise FeddfError(f"npz:{path}: float images span [{lo:g}, {hi:g}]; expected [0, 1] or [0, 255]")
        scale = 255.0 if hi <= 1.0 else 1.0
        return np.ascontiguousarray(np.clip(np.rint(x * scale), 0, 255).astype(np.uint8))
    if x.dtype.kind in "iu" and x.size and (x.min() < 0 or x.max() > 255):
        raise FeddfError(f"npz:{path}: integer images span [{x.min()}, {x.max()}]; expected 0..255")
    return np.ascontiguousarray(x.astype(np.uint8))


def npz_labels(y: np.ndarray | None, n: int, path: str, key: str, names: list[str] | None) -> np.ndarray:
    """Validated int64 labels (n,) (-1 = none) from an npz array; one line on a mismatch."""
    if y is None:
        return np.full(n, -1, np.int64)
    y = np.asarray(y).reshape(-1)
    if y.shape[0] < n or y.dtype.kind not in "iu":
        raise FeddfError(f"npz:{path}: '{key}' has {y.shape[0]} {y.dtype} values for {n} images; "
                         "expected one integer label per image")
    y = y[:n].astype(np.int64)
    if y.size and y.min() < -1:
        raise FeddfError(f"npz:{path}: labels must be >= 0 (or -1 for none), found {y.min()}")
    if names and y.size and y.max() >= len(names):
        raise FeddfError(f"npz:{path}: label {y.max()} (image {int(np.argmax(y))}) is outside 0..{len(names) - 1} "
                         f"for the {len(names)} class names: fix the labels or the class names")
    return y


def open_npz(path: str):
    """np.load of an npz (no pickles), or one line saying why not."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FeddfError(f"npz:{path}: no such file; give npz:PATH of a .npz with an 'x' or 'images' array")
    try:
        return p, np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise FeddfError(f"npz:{path} is not a readable .npz ({e}); save it with numpy.savez") from None


def npz_names(z) -> list[str] | None:
    k = next((k for k in ("class_names", "label_names") if k in z.files), None)
    return [str(s) for s in z[k]] if k else None


def npz_declared_classes(z, path: str) -> int | None:
    """The npz's own `num_classes` (one integer in 1..MAX_CLASSES), or None when it declares none."""
    if "num_classes" not in z.files:
        return None
    arr = np.asarray(z["num_classes"])
    if arr.dtype.kind not in "iu":
        raise FeddfError(f"npz:{path}: num_classes is {arr.dtype}, expected one integer")
    declared = int(arr.reshape(-1)[0]) if arr.size else -1
    if not 1 <= declared <= MAX_CLASSES:
        raise FeddfError(f"npz:{path}: num_classes = {declared} is outside 1..{MAX_CLASSES}")
    return declared


def npz_num_labels(y: np.ndarray, names: list[str] | None, declared: int | None, path: str) -> int:
    """K for labels y: declared, else the class names, else derived from y (bounded: a label of 10^9 must not make
    a (10^9,) coverage array and a multi-GB file); one line when a label falls outside 0..K-1."""
    if names and declared is not None and declared != len(names):
        raise FeddfError(f"npz:{path}: num_classes = {declared} but {len(names)} class names: make them agree")
    num_labels = declared or (len(names) if names else 0)
    top = int(y.max()) if y.size else -1
    if num_labels and top >= num_labels:
        raise FeddfError(f"npz:{path}: label {top} (image {int(np.argmax(y))}) is outside 0..{num_labels - 1} for "
                         f"the {num_labels} declared classes: fix the labels or the class names / num_classes")
    if not num_labels and top >= MAX_CLASSES:
        raise FeddfError(f"npz:{path}: label {top} (image {int(np.argmax(y))}) would make {top + 1} classes (over the "
                         f"limit of {MAX_CLASSES}): use class ids 0..K-1, or add class_names / num_classes to the npz")
    return num_labels or top + 1


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
    from feddf.data import DATASETS, parse_spec

    if parse_spec(source).name not in DATASETS:
        raise FeddfError(f"unknown import source {source!r}: use one of {', '.join(DATASETS)}, folder:PATH or "
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
        from feddf.cache.writer import probe_cache

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
                bad = (labels < -1) | (labels >= k)
                if bad.any():  # any source: a label the cache's K classes cannot hold is refused, not written
                    i = int(np.flatnonzero(bad)[0])
                    raise FeddfError(f"{src.spec}: image {done + skip + i} has label {int(labels[i])}, outside "
                                     f"-1..{k - 1} for its {k} classes: fix the source's labels")
                if images.shape[-1] != r:
                    images = resize(torch.from_numpy(np.ascontiguousarray(images)), r).numpy()
                w.append(images, labels)
                done += b
                bar.update(images.shape[0])
        w.finish()
    return Path(out)
