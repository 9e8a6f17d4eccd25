"""Fidelity and diversity of a synthetic set against real data in a feature space: precision, recall, density,
coverage (k-nearest-neighbour balls) and KID (polynomial-kernel MMD), in bounded memory.

    python -c "import numpy as np; from feddf.audit.fidelity import prdc; r = np.random.randn(2000, 16); print(prdc(r, r + 0.1, k=5))"

* precision / recall: Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for Assessing Generative Models";
* density / coverage: Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for Generative Models" — the same
  definitions as their reference code `prdc` (clovaai), strict `<` against the k-th-neighbour radius included, so the
  numbers agree with `prdc.compute_prdc` (checked in tests/test_fidelity.py);
* KID: Bińkowski et al. 2018, "Demystifying MMD GANs": the unbiased MMD^2 estimator with k(x, y) = (x.y / d + 1)^3,
  averaged over random subsets (mean and std over subsets, as torch-fidelity and torchmetrics report it).

Scale: no N x M matrix is ever formed. Distances are computed in torch in (rows x cols) blocks of at most
`BLOCK_ELEMS` entries; k-th-neighbour radii keep a running top-(k) per row across column blocks. The fake set may be a
disk-backed np.memmap (`feddf.audit.features.FeatureStore`) or a `Take` view of one; only the real set (the
reference, ~10k rows) is held whole on the device. Cost: O(N^2 + N M + M^2) x D flops for N fake, M real.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BLOCK_ELEMS = 1 << 23          # entries of one distance block: 8M float64 = 64 MiB
KID_DEGREE, KID_COEF = 3, 1.0  # Bińkowski et al.: (x.y / d + 1)^3


class Take:
    """Rows `idx` of a 2-D array-like (ndarray, np.memmap), read lazily by slices: Take(x, idx)[a:b] = x[idx[a:b]]."""

    def __init__(self, base, idx: np.ndarray):
        idx = np.asarray(idx, dtype=np.int64)
        if isinstance(base, Take):              # a view of a view: one level of indirection
            base, idx = base.base, base.idx[idx]
        self.base, self.idx, self.dtype = base, idx, base.dtype
        self.shape = (int(idx.size), int(base.shape[1]))

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, s: slice) -> np.ndarray:
        rows = self.idx[s]
        # sorted reads are sequential on a memmap; order is restored after
        order = np.argsort(rows, kind="stable")
        out = np.empty((rows.size, self.shape[1]), dtype=self.base.dtype)
        out[order] = self.base[rows[order]]
        return out


def _t(x, a: int, b: int, device, dtype) -> torch.Tensor:
    """Rows a:b of an array-like as a (b - a, D) tensor."""
    blk = x[a:b]
    return (blk if isinstance(blk, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(blk))).to(device, dtype)


def _sqdist(a: torch.Tensor, b: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """(n, D), (m, D) and their squared norms -> (n, m) squared Euclidean distances (the expansion sklearn uses):
    (|a|^2 + |b|^2) - 2 a.b in one addmm. The norms are summed first, and addition commutes exactly, so d(x, y) and
    d(y, x) round alike: a point's k-th neighbour, which sits exactly on its ball's radius, is then outside that
    ball whichever side computed the distance (prdc's strict `<`), on every CPU's BLAS."""
    return torch.addmm(a2[:, None] + b2[None, :], a, b.T, alpha=-2.0).clamp_min_(0.0)


def _rows_per_block(cols: int) -> int:
    return max(1, BLOCK_ELEMS // max(cols, 1))


def _resident(x, device, dtype):
    """x as one tensor when it is already in RAM (ndarray, tensor), else None (a memmap or Take: read by blocks)."""
    if isinstance(x, torch.Tensor) or (isinstance(x, np.ndarray) and not isinstance(x, np.memmap)):
        return _t(x, 0, len(x), device, dtype)
    return None


def knn_radii(x, k: int, device="cpu", dtype=torch.float64) -> torch.Tensor:
    """Squared distance of each row of x (N, D) to its k-th nearest other row, as (N,) on `device`.

    "Other" excludes the row itself (by index, not by distance 0): exact duplicates are neighbours at distance 0,
    which is what prdc's (k+1)-th smallest distance including self gives. Rows x cols blocks with a running top-k
    merge: memory O(BLOCK_ELEMS + N k). Distances come from `_sqdist`, the function prdc() compares them with."""
    n = len(x)
    out = torch.empty(n, dtype=dtype, device=device)
    whole = _resident(x, device, dtype)
    get = (lambda a, b: whole[a:b]) if whole is not None else (lambda a, b: _t(x, a, b, device, dtype))
    cb = min(n, max(4096, int(BLOCK_ELEMS ** 0.5)))
    norms = torch.cat([(blk * blk).sum(1) for blk in (get(c, min(n, c + cb)) for c in range(0, n, cb))])   # (N,)
    rb = _rows_per_block(cb)
    for r0 in range(0, n, rb):
        r1 = min(n, r0 + rb)
        a = get(r0, r1)
        best = torch.full((r1 - r0, k), float("inf"), dtype=dtype, device=device)
        for c0 in range(0, n, cb):
            c1 = min(n, c0 + cb)
            e = _sqdist(a, get(c0, c1), norms[r0:r1], norms[c0:c1])                # (b, c), as prdc() does
            lo, hi = max(r0, c0), min(r1, c1)
            if lo < hi:                 # the block holds rows' own columns: a row is not its own neighbour
                i = torch.arange(lo, hi, device=device)
                e[i - r0, i - c0] = float("inf")
            cand = torch.cat([best, e.topk(min(k, c1 - c0), dim=1, largest=False).values], dim=1)
            best = cand.topk(k, dim=1, largest=False).values
        out[r0:r1] = best.max(dim=1).values
    return out


def prdc(real, fake, k: int = 5, device="cpu", dtype=torch.float64, points: bool = False) -> dict:
    """Precision, recall, density, coverage of `fake` (N, D) against `real` (M, D), as prdc.compute_prdc defines them.

    Needs M > k. With N <= k recall is None (no fake radii); with N == 0 precision/density are None and
    recall = coverage = 0 (nothing was generated there). points=True adds "points": the per-image indicators
    (in_any (N,), in_count (N,), recalled (M,) or None, covered (M,)) that the metrics are means of."""
    m, n = len(real), len(fake)
    if m <= k:
        raise ValueError(f"prdc needs more than k={k} real samples, got {m}")
    out = {"n_real": m, "n_fake": n, "k": k}
    if n == 0:
        return {**out, "precision": None, "recall": 0.0, "density": None, "coverage": 0.0}
    r_real = knn_radii(real, k, device=device, dtype=dtype)                           # (M,)
    r_fake = knn_radii(fake, k, device=device, dtype=dtype) if n > k else None        # (N,)
    rt = _t(real, 0, m, device, dtype)                                                 # (M, D), held whole
    rt2 = (rt * rt).sum(1)
    in_any = np.zeros(n, bool)                                      # fake inside some real ball (precision)
    in_count = np.zeros(n, np.int64)                                # real balls holding each fake (density)
    nearest = torch.full((m,), float("inf"), dtype=dtype, device=device)    # nearest fake to each real (coverage)
    recalled = torch.zeros(m, dtype=torch.bool, device=device)              # real inside some fake ball (recall)
    rb = _rows_per_block(m)
    for f0 in range(0, n, rb):
        f1 = min(n, f0 + rb)
        f = _t(fake, f0, f1, device, dtype)
        d = _sqdist(f, rt, (f * f).sum(1), rt2)                     # (b, M)
        inside = d < r_real[None, :]
        in_any[f0:f1] = inside.any(1).cpu().numpy()
        in_count[f0:f1] = inside.sum(1).cpu().numpy()
        nearest = torch.minimum(nearest, d.min(0).values)
        if r_fake is not None:
            recalled |= (d < r_fake[f0:f1, None]).any(0)
    covered = (nearest < r_real).cpu().numpy()
    recalled = recalled.cpu().numpy() if r_fake is not None else None
    out.update(precision=float(in_any.mean()), density=float(in_count.sum()) / (k * n),
               recall=float(recalled.mean()) if recalled is not None else None, coverage=float(covered.mean()))
    if points:
        out["points"] = {"in_any": in_any, "in_count": in_count, "recalled": recalled, "covered": covered}
    return out


METRICS = ("precision", "recall", "density", "coverage")


def prdc_bootstrap(points: dict, k: int, replicates: int = 100, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap intervals {metric: [lo, hi]} from prdc(..., points=True)'s per-image indicators.

    Conditional on the two k-NN manifolds (the radii of the full samples): precision and density are means over the
    synthetic images, recall and coverage means over the reference images, and those images are resampled with
    replacement. Recomputing the radii on each resample instead would bias every metric (a resample holds ~63%
    distinct points, so the balls change size); the price is that the radii's own noise is not in the interval."""
    rng = np.random.default_rng(seed)
    per_fake = {"precision": points["in_any"], "density": points["in_count"] / k}
    per_real = {"recall": points["recalled"], "coverage": points["covered"]}
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    out: dict = {"replicates": replicates, "level": level, "conditional_on_radii": True}
    for group in (per_fake, per_real):
        for key, v in group.items():
            if v is None or v.size == 0:
                out[key] = None
                continue
            means = v[rng.integers(0, v.size, (replicates, v.size))].mean(1)      # (replicates,)
            out[key] = [float(x) for x in np.percentile(means, q)]
    return out


def _poly(a: torch.Tensor, b: torch.Tensor, d: int) -> torch.Tensor:
    return (a @ b.T / d + KID_COEF) ** KID_DEGREE


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 of (m, D) and (n, D) with the KID kernel: mean of k over x pairs i != j, plus over y pairs,
    minus twice the mean over all (x, y) pairs."""
    d = x.shape[1]
    kxx, kyy, kxy = _poly(x, x, d), _poly(y, y, d), _poly(x, y, d)
    m, n = x.shape[0], y.shape[0]
    return float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
                 - 2.0 * kxy.mean())


@dataclass
class KIDConfig:
    subsets: int = 100          # torch-fidelity / torchmetrics defaults
    subset_size: int = 1000


def kid(real, fake, cfg: KIDConfig = KIDConfig(), seed: int = 0, device="cpu", dtype=torch.float64) -> dict | None:
    """KID: unbiased MMD^2 averaged over `subsets` random subsets of min(subset_size, M, N) rows drawn without
    replacement from each side; None when either side has fewer than 2 rows."""
    m, n = len(real), len(fake)
    size = min(cfg.subset_size, m, n)
    if size < 2:
        return None
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(cfg.subsets):
        i = np.sort(rng.choice(m, size, replace=False))
        j = np.sort(rng.choice(n, size, replace=False))
        vals.append(mmd2_unbiased(_t(Take(real, i), 0, size, device, dtype), _t(Take(fake, j), 0, size, device, dtype)))
    v = np.asarray(vals)
    return {"value": float(v.mean()), "std": float(v.std()), "subsets": cfg.subsets, "subset_size": int(size),
            "kernel": f"(x.y/d + {KID_COEF:g})^{KID_DEGREE}"}


# ------------------------------------------------------------------------------------ the audit: overall and per class

@dataclass
class FidelityConfig:
    k: int = 5
    kid: KIDConfig = None
    bootstrap: int = 100            # replicates for groups smaller than bootstrap_below (0: never)
    bootstrap_below: int = 1000     # a group with fewer fake or real images than this gets intervals
    seed: int = 0

    def __post_init__(self):
        self.kid = self.kid or KIDConfig()


def _group(real, fake, cfg: FidelityConfig, device, dtype) -> dict:
    """Every number for one (real, fake) pair of feature sets; None values say why in `note`."""
    m, n = len(real), len(fake)
    rec = {"n_real": m, "n_fake": n}
    if m <= cfg.k:
        return {**rec, **{key: None for key in METRICS}, "kid": None, "ci": None,
                "note": f"{m} reference image(s): needs more than k={cfg.k}"}
    need_ci = 0 < n and cfg.bootstrap > 0 and min(m, n) < cfg.bootstrap_below
    r = prdc(real, fake, cfg.k, device=device, dtype=dtype, points=need_ci)
    rec.update({key: r[key] for key in METRICS})
    rec["kid"] = kid(real, fake, cfg.kid, cfg.seed, device, dtype)
    rec["ci"] = prdc_bootstrap(r["points"], cfg.k, cfg.bootstrap, cfg.seed) if need_ci else None
    rec["note"] = ("no synthetic image in this class" if n == 0 else
                   f"{n} synthetic image(s): recall needs more than k={cfg.k}" if n <= cfg.k else None)
    return rec


def evaluate(real, real_labels, fake, fake_pred, names, cfg: FidelityConfig, device="cpu",
             dtype=torch.float64, real_pred=None) -> dict:
    """Overall and per-class numbers: fake rows grouped by the labeler's prediction `fake_pred` (N,), real rows by
    their labels `real_labels` (M,) (None: overall only). `real` is (M, D) in memory, `fake` any array-like.
    `real_pred` (M,), the labeler's predictions on the reference, adds each class's labeler accuracy there: a class
    the labeler cannot recognise on real images gets low coverage for every source, and that is the labeler's fault."""
    out = {"k": cfg.k, "dims": int(real.shape[1]), "overall": _group(real, fake, cfg, device, dtype), "per_class": None}
    if real_labels is None:
        out["per_class_unavailable"] = "the reference has no labels in the labeler's classes"
        return out
    rows = []
    for c, name in enumerate(names):
        fi = np.flatnonzero(fake_pred == c)
        mask = real_labels == c
        acc = float((real_pred[mask] == c).mean()) if real_pred is not None and mask.any() else None
        rows.append({"class": c, "name": name, **_group(real[mask], Take(fake, fi), cfg, device, dtype),
                     "labeler_accuracy": acc})
    out["per_class"] = rows
    return out


def gate(min_coverage: float | None, entries: list[dict]) -> dict | None:
    """--min-coverage: every source's set coverage and every class coverage (labeler features) at least C; classes
    with too few reference images (coverage None) are not judged."""
    if min_coverage is None:
        return None
    failures, rows = [], []
    for e in entries:
        fid = (e.get("fidelity") or {}).get("labeler")
        if not fid or fid.get("overall") is None:
            failures.append(f"{e['name']}: no coverage (needs --labeler and a --reference with images)")
            continue
        checks = [("set", fid["overall"]["coverage"])] + [(f"class {r['name']}", r["coverage"])
                                                          for r in fid.get("per_class") or []]
        for what, v in checks:
            if v is None:
                continue
            ok = v >= min_coverage
            rows.append({"source": e["name"], "what": what, "coverage": v, "passed": ok})
            if not ok:
                failures.append(f"{e['name']}: {what} {v:.3f}")
    return {"min_coverage": min_coverage, "passed": not failures, "checks": rows, "failures": failures}


class FidelityAudit:
    """One audit's fidelity state: the reference's features (one pass, on first use) and per-source collectors.

    run.py: `col = fa.collector(n)` before a source's batch loop (it hooks the labeler), `col.add(pos, inception)`
    after each batch's labeler forward, `fa.finish(col, pred)` -> the source's report entry."""

    def __init__(self, cfg: FidelityConfig, ref, classifier, extractor, device, *, limit, seed, batch_size,
                 progress=True):
        self.cfg, self.ref, self.classifier, self.extractor, self.device = cfg, ref, classifier, extractor, device
        self._ref_args = dict(limit=limit, seed=seed, batch_size=batch_size, progress=progress)
        self._real = None

    def real(self):
        from feddf.audit.features import reference_pass

        if self._real is None:
            self._real = reference_pass(self.ref, self.classifier, self.extractor, **self._ref_args)
        return self._real

    def collector(self, n: int) -> "SourceFeatures":
        return SourceFeatures(self.classifier, n, self.extractor is not None)

    def finish(self, col: "SourceFeatures", pred: np.ndarray) -> dict:
        """{"labeler": evaluate(...), "inception": evaluate(...) | {"available": False, "reason"}} of one source."""
        try:
            labels, ref_names, lab, ref_pred, inc = self.real()
            names = list(self.classifier.class_names)
            if labels is not None and ref_names is not None and list(ref_names) != names:
                labels = None       # a reference of another task: overall numbers only
            out = {"reference_n": int(lab.shape[0]), "reference": self.ref.spec}
            if col.n == 0:
                return {**out, "labeler": None, "inception": None, "reason": "no committed images"}
            out["labeler"] = {"space": f"labeler penultimate layer ({lab.shape[1]}-d)",
                              **evaluate(lab, labels, col.labeler.array, pred, names, self.cfg, self.device,
                                         real_pred=ref_pred)}
            if inc is not None and col.inception is not None:
                ex = self.extractor.describe()
                out["inception"] = {"space": ex["feature_extractor"], "weights": ex["weights"], "is_fid": ex["is_fid"],
                                    **evaluate(inc, labels, col.inception.array, pred, names, self.cfg, self.device,
                                               real_pred=ref_pred)}
            else:
                out["inception"] = {"available": False, "reason": "no pytorch-fid Inception weights (see FID)"}
            return out
        finally:
            col.close()


class SourceFeatures:
    """Labeler (and Inception) features of one source's scanned images, in scan order, on disk."""

    def __init__(self, classifier, n: int, inception: bool):
        from feddf.audit.features import FeatureStore, PenultimateHook

        self.n = n
        self.hook = PenultimateHook(classifier)
        self.labeler = FeatureStore(n)
        self.inception = FeatureStore(n) if inception else None

    def add(self, pos: int, inception_feats: np.ndarray | None = None) -> None:
        """Store the features the hook caught in the labeler forward of images pos:pos+B."""
        self.labeler.write(pos, self.hook.last)
        if self.inception is not None:
            self.inception.write(pos, np.asarray(inception_feats, np.float32))

    def close(self) -> None:
        self.hook.close()
        for s in (self.labeler, self.inception):
            if s is not None:
                s.close()
