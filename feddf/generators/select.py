"""Gen-time sample quality for `feddf gen --labeler RUN --min-confidence TAU --balance`: draw more, keep what a labeler
is confident about, cap every class at the same count.

    feddf gen --generator dcgan-fashion-mnist --n 20000 --labeler runs/labeler --min-confidence 0.8 --balance

The rule (`keep_draws`, pure): candidates are the generator's draws 0, 1, 2, ... in index order; draw i is kept when
the labeler's confidence is >= TAU and (with --balance) fewer than ceil(n / K) draws of its predicted class were
kept before it. Drawing stops once n are kept, or after ceil(oversample * n) draws; then the confident draws that
only the cap turned away fill the remaining places, always into the class with the fewest kept images so far,
earliest draw first (a class the generator rarely makes cannot block the cache), and if that is still short the command fails with the numbers and the fix. The kept set is therefore a
function of the generator, seed, labeler and the three settings only (images are functions of their index, the
labeler runs with batch-invariant kernels), which is what makes a killed run resume exactly: the resume recomputes
the same kept indices and continues after the committed ones. The cache records the per-class counts (drawn, kept,
dropped for low confidence, dropped by the cap) in its `selection` attribute; its per-image labeler_pred/conf and
coverage describe the kept images.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np

from feddf.errors import FeddfError

RULE = "confidence+cap+waterfill/1"  # part of the cache identity: a changed rule never resumes an old cache


def keep_draws(pred: np.ndarray, conf: np.ndarray, *, n: int, k: int, min_confidence: float | None, balance: bool,
               state: dict | None = None) -> tuple[np.ndarray, dict]:
    """Apply the rule to the next draws (pred, conf: (B,) labeler class and confidence, in draw order).

    `state` carries the counts between calls (None = start): returns (positions kept in this call, state). Pure."""
    st = state or {"kept": 0, "kept_per_class": np.zeros(k, np.int64), "low": np.zeros(k, np.int64),
                   "capped": np.zeros(k, np.int64), "drawn": 0, "drawn_per_class": np.zeros(k, np.int64),
                   "spare": []}
    cap = math.ceil(n / k) if balance else n
    tau = -1.0 if min_confidence is None else float(min_confidence)
    keep = []
    for j in range(len(pred)):
        if st["kept"] >= n:
            break
        c = int(pred[j])
        st["drawn"] += 1
        st["drawn_per_class"][c] += 1
        if not conf[j] >= tau:  # NaN confidence (a labeler producing NaN logits) never passes the filter
            st["low"][c] += 1
        elif st["kept_per_class"][c] >= cap:
            st["capped"][c] += 1
            st["spare"].append((st["drawn"] - 1, c))  # global draw index, class
        else:
            st["kept_per_class"][c] += 1
            st["kept"] += 1
            keep.append(j)
    return np.asarray(keep, dtype=np.int64), st


def select_draws(images, labeler, *, n: int, k: int, res: int, batch: int, device, min_confidence: float | None,
                 balance: bool, oversample: float, progress: bool = True) -> tuple[np.ndarray, dict]:
    """(kept global draw indices (n,) increasing, selection stats for the cache's `selection` attribute)."""
    import torch
    from tqdm import tqdm

    from feddf.generators.base import invariant_kernels, to_uint8
    from feddf.audit.labeler import predict

    budget = math.ceil(oversample * n)
    kept: list[np.ndarray] = []
    state = None
    bar = tqdm(total=n, unit="img", desc="filtering draws", disable=not progress, dynamic_ncols=True)
    with torch.inference_mode(), invariant_kernels(device.type):
        s = 0
        while s < budget and (state is None or state["kept"] < n):
            e = min(s + batch, budget)
            x = images(np.arange(s, e))
            pred, conf = predict(labeler[0], x if x.dtype == torch.uint8 else to_uint8(x, res))  # fast: uint8
            before = 0 if state is None else state["kept"]
            pos, state = keep_draws(pred, conf, n=n, k=k, min_confidence=min_confidence, balance=balance,
                                    state=state)
            kept.append(pos + s)
            bar.update(state["kept"] - before)
            s = e
    bar.close()
    idx = np.concatenate(kept) if kept else np.zeros(0, np.int64)
    refill = n - len(idx)
    if refill > 0:  # confident draws turned away only by the cap: water-fill the classes, earliest draws first
        by_class: dict[int, list[int]] = {}
        for i, c in state["spare"]:
            by_class.setdefault(c, []).append(i)
        extra = []
        while len(extra) < refill and by_class:
            c = min(by_class, key=lambda c: (state["kept_per_class"][c], c))  # the least-kept class with spares
            extra.append(by_class[c].pop(0))
            state["kept_per_class"][c] += 1
            state["capped"][c] -= 1
            if not by_class[c]:
                del by_class[c]
        idx = np.sort(np.concatenate([idx, np.asarray(extra, np.int64)]))
    if len(idx) < n:
        raise FeddfError(f"--min-confidence {min_confidence}: only {len(idx)} of {state['drawn']} draws were kept, "
                         f"fewer than --n {n}; lower --min-confidence, raise --oversample (now {oversample:g}) or "
                         f"ask for fewer images")
    stats = {"rule": RULE,
             "min_confidence": min_confidence, "balance": balance, "oversample": oversample, "classes": k,
             "cap": math.ceil(n / k) if balance else n, "drawn": state["drawn"], "kept": int(len(idx)),
             "refilled_over_cap": max(0, refill), "drawn_per_class": state["drawn_per_class"].tolist(),
             "kept_per_class": state["kept_per_class"].tolist(),
             "dropped_low_confidence_per_class": state["low"].tolist(),
             "dropped_over_cap_per_class": state["capped"].tolist(),
             "kept_sha256": hashlib.sha256(idx.astype("<i8").tobytes()).hexdigest()}
    return idx, stats
