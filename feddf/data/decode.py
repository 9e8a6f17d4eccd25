"""Image folders and .npz arrays as uint8 (N, C, R, R) images and int64 labels: the decoders shared by the
bring-your-own sets (`folder:`/`npz:` datasets, feddf/data/byo.py) and `feddf cache import` (feddf/data/importers.py).

    python -c "from feddf.data.decode import to_nchw_uint8; import numpy as np; \
print(to_nchw_uint8(np.zeros((2, 8, 8, 3), 'f4'), 'demo').shape)"

Every problem with a file or an array is one FeddfError line naming it and the fix.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from feddf.checks import MAX_CLASSES
from feddf.errors import FeddfError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


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
        z = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise FeddfError(f"npz:{path} is not a readable .npz ({e}); save it with numpy.savez") from None
    if not hasattr(z, "files"):  # a bare .npy saved under an .npz name
        raise FeddfError(f"npz:{path} holds a single array, not named arrays: save it with numpy.savez(PATH, x=..., "
                         "y=...)")
    return p, _Npz(z, path)


class _Npz:
    """An open npz whose arrays are read one by one: an array that cannot be read (an object array, which would
    need a pickle; a damaged member) is one FeddfError line naming it."""

    def __init__(self, z, path: str):
        self._z, self._path, self.files = z, path, z.files

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self._z[key]
        except ValueError as e:
            raise FeddfError(f"npz:{self._path}: array {key!r} cannot be loaded ({str(e).splitlines()[0]}): save "
                             "plain numeric arrays (uint8/float images, integer labels) and string class names"
                             ) from None
        except (OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
            raise FeddfError(f"npz:{self._path}: array {key!r} is damaged ({type(e).__name__}); save the file again "
                             "with numpy.savez") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._z.close()


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
