"""Class-coverage statistics: pure numpy functions on label arrays and histograms (no I/O, testable alone).

    python -c "from feddf.audit.coverage import histogram_summary; print(histogram_summary([5, 5, 0, 10]))"

Conventions (documented in docs/audit.md):
- shares are counts / total over the K classes of the label space (labels < 0 are "unlabeled" and excluded);
- entropy is in nats, H = -sum p log p (0 log 0 = 0); effective classes = exp(H), between 1 (one class) and K (uniform);
- total-variation distance to uniform is 0.5 * sum |p_k - 1/K|, 0 for a uniform set, 1 - 1/K for a single class.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from feddf.errors import FeddfError

#: A labeler prediction whose max-softmax confidence is below this is "low confidence" (the --low-confidence default).
LOW_CONFIDENCE = 0.5


def class_counts(labels: np.ndarray | Sequence[int], num_classes: int | None = None) -> tuple[np.ndarray, int]:
    """labels (N,) int, -1 = none -> (counts (K,) int64, number of unlabeled). K = num_classes or max label + 1."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    valid = labels[labels >= 0]
    k = int(num_classes) if num_classes is not None else (int(valid.max()) + 1 if valid.size else 0)
    if valid.size and int(valid.max()) >= k:
        raise FeddfError(f"label {int(valid.max())} is outside the label space of {k} classes: the cache's "
                         f"coverage counts and labels disagree; re-create it or check its label_names")
    return np.bincount(valid, minlength=k).astype(np.int64), int(labels.size - valid.size)


def shares(counts: np.ndarray | Sequence[float]) -> np.ndarray:
    """counts (K,) -> shares (K,) summing to 1 (all zeros when the total is 0)."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    return c / total if total > 0 else np.zeros_like(c)


def entropy(counts: np.ndarray | Sequence[float]) -> float:
    """Shannon entropy in nats of the distribution given by a histogram (0 for an empty one)."""
    p = shares(counts)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum()) if p.size else 0.0


def effective_classes(counts: np.ndarray | Sequence[float]) -> float:
    """exp(entropy): the number of equally used classes with the same entropy (Hill number of order 1)."""
    c = np.asarray(counts, dtype=np.float64)
    return float(np.exp(entropy(c))) if c.sum() > 0 else 0.0


def tv_to_uniform(counts: np.ndarray | Sequence[float]) -> float:
    """Total-variation distance between the histogram's shares and the uniform distribution over its K classes."""
    p = shares(counts)
    if p.size == 0 or p.sum() == 0:
        return 0.0
    return float(0.5 * np.abs(p - 1.0 / p.size).sum())


def histogram_summary(counts: np.ndarray | Sequence[float], names: Sequence[str] | None = None) -> dict:
    """Every coverage number of one histogram, JSON-ready: totals, imbalance, entropy and a per-class table."""
    c = np.asarray(counts, dtype=np.int64)
    p = shares(c)
    k = int(c.size)
    nz = p[p > 0]
    per_class = [{"class": i, "name": (names[i] if names is not None and i < len(names) else None),
                  "count": int(c[i]), "share": float(p[i])} for i in range(k)]
    return {
        "num_classes": k,
        "total": int(c.sum()),
        "classes_present": int((c > 0).sum()),
        "min_share": float(p.min()) if k else 0.0,
        "max_share": float(p.max()) if k else 0.0,
        # max/min over the classes that occur: how much more often the commonest class appears than the rarest one
        "max_min_ratio": float(nz.max() / nz.min()) if nz.size else None,
        "tv_to_uniform": tv_to_uniform(c),
        "entropy_nats": entropy(c),
        "effective_classes": effective_classes(c),
        "per_class": per_class,
    }


def label_summary(labels: np.ndarray, num_classes: int | None = None, names: Sequence[str] | None = None) -> dict:
    """histogram_summary of a label array, plus the number of unlabeled (-1) entries."""
    counts, unlabeled = class_counts(labels, num_classes)
    out = histogram_summary(counts, names)
    out["unlabeled"] = unlabeled
    return out


def labeler_summary(pred: np.ndarray, conf: np.ndarray, num_classes: int, names: Sequence[str] | None = None,
                    targets: np.ndarray | None = None, low_confidence: float = LOW_CONFIDENCE) -> dict:
    """Coverage as a classifier of the target task sees it.

    pred (N,) int predicted class, conf (N,) float max-softmax confidence, targets (N,) int target-map class or -1.
    Adds to histogram_summary: mean confidence overall and per predicted class, the share of predictions below
    `low_confidence`, and the agreement pred == target over the samples whose target is mapped (>= 0).
    """
    pred = np.asarray(pred, dtype=np.int64).reshape(-1)
    conf = np.asarray(conf, dtype=np.float64).reshape(-1)
    if pred.shape != conf.shape:
        raise ValueError(f"pred {pred.shape} and conf {conf.shape} differ in length")
    counts, _ = class_counts(pred, num_classes)
    out = histogram_summary(counts, names)
    conf_sum = np.bincount(pred, weights=conf, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(counts > 0, conf_sum / np.maximum(counts, 1), np.nan)
    for row, m in zip(out["per_class"], mean_conf):
        row["mean_confidence"] = None if np.isnan(m) else float(m)
    out["n"] = int(pred.size)
    out["mean_confidence"] = float(conf.mean()) if conf.size else None
    out["low_confidence_threshold"] = float(low_confidence)
    out["low_confidence_share"] = float((conf < low_confidence).mean()) if conf.size else None
    out["agreement"] = target_agreement(pred, targets) if targets is not None else None
    return out


def target_agreement(pred: np.ndarray, targets: np.ndarray) -> dict:
    """Share of samples whose predicted class equals their target-map class, over the mapped ones (target >= 0)."""
    pred = np.asarray(pred, dtype=np.int64).reshape(-1)
    targets = np.asarray(targets, dtype=np.int64).reshape(-1)
    if pred.shape != targets.shape:
        raise ValueError(f"pred {pred.shape} and targets {targets.shape} differ in length")
    mapped = targets >= 0
    n = int(mapped.sum())
    return {"mapped": n, "unmapped": int(targets.size - n),
            "agreement": float((pred[mapped] == targets[mapped]).mean()) if n else None}
