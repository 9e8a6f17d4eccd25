"""An image grid of a cache, one row per class: a quick look at what a transfer set contains.

    feddf cache preview cache/fmnist-test500.h5 --out grid.png

Rows are classes (of /labels, or /targets with by="targets"); with more classes than `max_classes` the most frequent
ones are shown. Images are a seeded random sample of each class's committed images. Unlabelled caches get one grid of
random images. Drawn with matplotlib (Agg) as a single mosaic, so a 20x8 grid is one imshow.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from feddf.cache import format as fmt
from feddf.errors import FeddfError


def mosaic(images: np.ndarray, rows: int, cols: int, pad: int = 2) -> np.ndarray:
    """uint8 (rows*cols, C, R, R) (missing cells may be absent) -> (H, W) or (H, W, 3) uint8 with white gutters."""
    c, r = images.shape[1], images.shape[-1]
    out = np.full((rows * (r + pad) + pad, cols * (r + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images[: rows * cols]):
        y, x = divmod(i, cols)
        out[pad + y * (r + pad): pad + y * (r + pad) + r, pad + x * (r + pad): pad + x * (r + pad) + r] = \
            img.transpose(1, 2, 0)
    return out[..., 0] if c == 1 else out


def choose(labels: np.ndarray, per_class: int, max_classes: int, seed: int = 0) -> list[tuple[int, np.ndarray]]:
    """[(class id, sorted indices)] for the classes to show: all present ones, or the `max_classes` most frequent."""
    rng = np.random.default_rng(seed)
    present = np.unique(labels[labels >= 0])
    if present.size == 0:
        idx = rng.choice(labels.shape[0], min(labels.shape[0], per_class * min(max_classes, 8)), replace=False)
        return [(-1, np.sort(idx))]
    counts = np.bincount(labels[labels >= 0])
    if present.size > max_classes:
        present = np.sort(present[np.argsort(-counts[present], kind="stable")[:max_classes]])
    out = []
    for k in present:
        where = np.flatnonzero(labels == k)
        out.append((int(k), np.sort(rng.choice(where, min(per_class, where.size), replace=False))))
    return out


def preview(path: str | os.PathLike, out: str | os.PathLike, per_class: int = 8, max_classes: int = 20,
            by: str = fmt.LABELS, seed: int = 0) -> dict:
    """Write the grid PNG to `out`; returns what was drawn."""
    from feddf.cache.reader import open_h5, read_info
    from feddf.cache.verify import read_or_fail

    if per_class < 1 or max_classes < 1:
        raise FeddfError(f"--per-class ({per_class}) and --max-classes ({max_classes}) must be >= 1")
    if by not in (fmt.LABELS, fmt.TARGETS):
        raise FeddfError(f"--by {by!r}: use labels or targets")
    f, live = open_h5(path)
    with f:
        info = read_info(f, path, live)
        if info.n == 0:
            raise FeddfError(f"{path} has no committed images to preview yet")
        if by == fmt.TARGETS and not info.has_targets:
            raise FeddfError(f"{path} has no /targets: use --by labels")
        labels = read_or_fail(f[by], np.s_[: info.n], path)
        picks = choose(labels, per_class, max_classes, seed)
        cols = per_class
        rows = len(picks) if picks[0][0] >= 0 else -(-len(picks[0][1]) // cols)  # unlabelled: one block of rows
        grid = np.zeros((rows * cols, info.channels, info.resolution, info.resolution), np.uint8) + 255
        for row, (_, idx) in enumerate(picks):
            imgs = read_or_fail(f[fmt.IMAGES], idx, path) if idx.size else grid[:0]  # sorted: one point selection
            start = row * cols
            grid[start:start + imgs.shape[0]] = imgs
    import matplotlib  # only now: bad input is refused without paying for matplotlib's import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = info.target_names if by == fmt.TARGETS else info.label_names
    img = mosaic(grid, rows, cols)
    scale = max(1.0, 48 / info.resolution)  # small images are drawn bigger, pixel-exact (nearest)
    fig_w = max(4.0, img.shape[1] * scale / 100 + 1.6)
    fig, ax = plt.subplots(figsize=(fig_w, img.shape[0] * scale / 100 + 0.8), dpi=100)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    r, pad = info.resolution, 2
    if picks[0][0] >= 0:
        ax.set_yticks([pad + i * (r + pad) + r / 2 for i in range(rows)])
        ax.set_yticklabels([(names[k] if names and k < len(names) else str(k)) + f" ({k})" for k, _ in picks],
                           fontsize=7)
    else:
        ax.set_yticks([])
    ax.set_xticks([])
    shown = f"{len(picks)} of {len(np.unique(labels[labels >= 0]))} classes" if picks[0][0] >= 0 else "unlabelled"
    ax.set_title(f"{Path(path).name}: {info.n} images, {shown}", fontsize=8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return {"path": str(path), "out": str(out), "rows": rows, "cols": cols,
            "classes": [k for k, _ in picks], "by": by}
