"""Report figures as PNG bytes (matplotlib, Agg backend): class histograms, confidence histograms, image grids,
accuracy-vs-round curves. The HTML reports embed them as data URIs; the markdown links the PNG files.

    python -c "from feddf.audit.plots import class_histogram; open('h.png','wb').write(class_histogram([3,1,2]))"
"""
from __future__ import annotations

import base64
import io
from typing import Sequence

import numpy as np

_MAX_TICK_LABELS = 40   # above this many classes, bars are drawn without per-class tick labels


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def class_histogram(counts: Sequence[int], names: Sequence[str] | None = None, title: str = "",
                    ylabel: str = "images") -> bytes:
    """Bar chart of a (K,) histogram; the uniform level is drawn as a dashed line."""
    plt = _plt()
    c = np.asarray(counts, dtype=np.float64)
    k = c.size
    fig, ax = plt.subplots(figsize=(min(14, 3 + 0.3 * min(k, _MAX_TICK_LABELS)) if k <= _MAX_TICK_LABELS else 12, 3.2))
    ax.bar(np.arange(k), c, width=0.8 if k <= _MAX_TICK_LABELS else 1.0, color="#4C72B0")
    if k and c.sum() > 0:
        ax.axhline(c.sum() / k, color="#C44E52", ls="--", lw=1, label="uniform")
        ax.legend(loc="upper right", fontsize=8)
    if k <= _MAX_TICK_LABELS:
        ax.set_xticks(np.arange(k))
        ax.set_xticklabels([str(n)[:18] for n in (names or range(k))], rotation=60, ha="right", fontsize=7)
    else:
        ax.set_xlabel("class index")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return png_bytes(fig)


def confidence_histogram(conf: np.ndarray, threshold: float, title: str = "") -> bytes:
    """Histogram of max-softmax confidences in [0, 1] with the low-confidence threshold marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.hist(np.asarray(conf, dtype=np.float64), bins=20, range=(0, 1), color="#55A868")
    ax.axvline(threshold, color="#C44E52", ls="--", lw=1, label=f"low-confidence threshold {threshold:g}")
    ax.set_xlabel("max softmax confidence")
    ax.set_ylabel("images")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=10)
    return png_bytes(fig)


def per_class_bars(values: Sequence[float | None], names: Sequence[str] | None, title: str, ylabel: str) -> bytes:
    """Bar chart of one value per class (None = class never predicted, drawn as a gap)."""
    plt = _plt()
    v = np.array([np.nan if x is None else x for x in values], dtype=np.float64)
    k = v.size
    fig, ax = plt.subplots(figsize=(min(14, 3 + 0.3 * k) if k <= _MAX_TICK_LABELS else 12, 3))
    ax.bar(np.arange(k), np.nan_to_num(v), color="#8172B2")
    ax.set_ylim(0, 1)
    if k <= _MAX_TICK_LABELS:
        ax.set_xticks(np.arange(k))
        ax.set_xticklabels([str(n)[:18] for n in (names or range(k))], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return png_bytes(fig)


def image_grid(rows: Sequence[tuple[str, np.ndarray]], title: str = "", per_row: int = 8) -> bytes:
    """One row per class: (row label, uint8 images (k, C, H, W) with k <= per_row); gray or RGB."""
    plt = _plt()
    rows = [r for r in rows if len(r[1])] or [("(no images)", np.zeros((0, 1, 8, 8), np.uint8))]
    fig, axes = plt.subplots(len(rows), 1, figsize=(per_row * 0.9 + 1.5, 0.95 * len(rows) + 0.4), squeeze=False)
    for ax, (label, imgs) in zip(axes[:, 0], rows):
        imgs = np.asarray(imgs)
        if imgs.size:
            c, h, w = imgs.shape[1:]
            strip = np.full((h, per_row * (w + 2), c), 255, np.uint8)   # white gaps between images
            for i, im in enumerate(imgs[:per_row]):
                strip[:, i * (w + 2):i * (w + 2) + w] = im.transpose(1, 2, 0)
            ax.imshow(strip[..., 0] if c == 1 else strip, cmap="gray" if c == 1 else None, vmin=0, vmax=255,
                      interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(str(label)[:20], rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return png_bytes(fig)


def accuracy_curves(series: Sequence[dict], target: float | None = None, title: str = "") -> bytes:
    """Accuracy vs round, one panel per architecture; series: {"run", "arch", "label", "rounds", "acc", "fedavg"}.

    Each run keeps one colour in every panel; where a run distilled, its FedAvg-before-distillation accuracy is drawn
    dashed in the same colour (the gap is what distillation added)."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    archs = sorted({s["arch"] for s in series}) or ["(none)"]
    runs = list(dict.fromkeys(s["run"] for s in series))
    colour = {r: f"C{i % 10}" for i, r in enumerate(runs)}
    fig, axes = plt.subplots(1, len(archs), figsize=(5.5 * len(archs), 3.8), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        for s in series:
            if s["arch"] != arch:
                continue
            ax.plot(s["rounds"], s["acc"], marker="o", ms=3, lw=1.4, color=colour[s["run"]], label=s["label"])
            fa = s.get("fedavg") or []
            if any(f is not None and f != a for f, a in zip(fa, s["acc"])):
                ax.plot(s["rounds"], [np.nan if f is None else f for f in fa], ls="--", lw=1, alpha=0.7,
                        color=colour[s["run"]], label=f"{s['run']}: FedAvg before distillation")
        if target is not None:
            ax.axhline(target, color="gray", ls=":", lw=1, label=f"target {target:g}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(arch, fontsize=10)
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy (fraction)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=11)
    return png_bytes(fig)


def fidelity_bars(per_class: Sequence[dict], title: str = "") -> bytes:
    """Grouped bars per class of precision, recall, density, coverage (rows of feddf.audit.fidelity.evaluate), with
    bootstrap intervals as error bars where the report has them; None (undefined) is drawn as a gap."""
    plt = _plt()
    keys = ("precision", "recall", "density", "coverage")
    k = len(per_class)
    fig, ax = plt.subplots(figsize=(min(16, 4 + 0.6 * k) if k <= _MAX_TICK_LABELS else 14, 3.4))
    w = 0.2
    x = np.arange(k)
    top = 1.0
    for i, key in enumerate(keys):
        v = np.array([np.nan if r[key] is None else r[key] for r in per_class], dtype=np.float64)
        lo_hi = [((r.get("ci") or {}).get(key)) for r in per_class]
        err = np.array([[0, 0] if (c is None or np.isnan(val)) else [val - c[0], c[1] - val]
                        for c, val in zip(lo_hi, v)], dtype=np.float64).T.clip(min=0)
        ax.bar(x + (i - 1.5) * w, np.nan_to_num(v), w, yerr=err if err.size else None, capsize=2, label=key,
               color=f"C{i}", error_kw={"lw": 0.8})
        top = max(top, float(np.nanmax(v)) if np.isfinite(v).any() else 0)
    ax.set_ylim(0, min(top * 1.08, 3.0))
    if k <= _MAX_TICK_LABELS:
        ax.set_xticks(x)
        ax.set_xticklabels([str(r["name"])[:18] for r in per_class], rotation=60, ha="right", fontsize=7)
    ax.axhline(1.0, color="gray", lw=0.6, ls=":")
    ax.legend(fontsize=7, ncol=4, loc="upper right")
    ax.set_title(title, fontsize=10)
    return png_bytes(fig)
