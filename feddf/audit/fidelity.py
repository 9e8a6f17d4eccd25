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
    """(n, D), (m, D) and their squared norms -> (n, m) squared Euclidean distances (the expansion sklearn uses)."""
    return (a2[:, None] + b2[None, :] - 2.0 * (a @ b.T)).clamp_min_(0.0)


def _rows_per_block(cols: int) -> int:
    return max(1, BLOCK_ELEMS // max(cols, 1))


def knn_radii(x, k: int, ids: np.ndarray | None = None, device="cpu", dtype=torch.float64) -> torch.Tensor:
    """Squared distance of each row of x (N, D) to its k-th nearest other row, as (N,) on `device`.

    "Other" excludes the row itself — and, when `ids` (N,) is given, every row with the same id (bootstrap copies of
    one original point); exact duplicates with different ids count as neighbours at distance 0, as in prdc.
    Rows x cols blocks with a running top-k merge: memory O(BLOCK_ELEMS + N k)."""
    n = len(x)
    ids_t = torch.as_tensor(np.arange(n) if ids is None else np.asarray(ids), dtype=torch.int64, device=device)
    out = torch.empty(n, dtype=dtype, device=device)
    cb = min(n, max(4096, int(BLOCK_ELEMS ** 0.5)))
    rb = _rows_per_block(cb)
    for r0 in range(0, n, rb):
        r1 = min(n, r0 + rb)
        a = _t(x, r0, r1, device, dtype)
        a2 = (a * a).sum(1)
        best = torch.full((r1 - r0, k), float("inf"), dtype=dtype, device=device)
        for c0 in range(0, n, cb):
            c1 = min(n, c0 + cb)
            b = a if (c0, c1) == (r0, r1) else _t(x, c0, c1, device, dtype)
            d = _sqdist(a, b, a2, (b * b).sum(1))
            d.masked_fill_(ids_t[r0:r1, None] == ids_t[None, c0:c1], float("inf"))
            cand = torch.cat([best, d.topk(min(k, c1 - c0), dim=1, largest=False).values], dim=1)
            best = cand.topk(k, dim=1, largest=False).values
        out[r0:r1] = best.max(dim=1).values
    return out


def prdc(real, fake, k: int = 5, real_ids=None, fake_ids=None, device="cpu", dtype=torch.float64) -> dict:
    """Precision, recall, density, coverage of `fake` (N, D) against `real` (M, D), as prdc.compute_prdc defines them.

    Needs M > k. With N <= k recall is None (no fake radii); with N == 0 precision/density are None and
    recall = coverage = 0 (nothing was generated there). `*_ids` are for the bootstrap (see knn_radii)."""
    m, n = len(real), len(fake)
    if m <= k:
        raise ValueError(f"prdc needs more than k={k} real samples, got {m}")
    out = {"n_real": m, "n_fake": n, "k": k}
    if n == 0:
        return {**out, "precision": None, "recall": 0.0, "density": None, "coverage": 0.0}
    r_real = knn_radii(real, k, real_ids, device, dtype)                              # (M,)
    r_fake = knn_radii(fake, k, fake_ids, device, dtype) if n > k else None           # (N,)
    rt = _t(real, 0, m, device, dtype)                                                 # (M, D), held whole
    rt2 = (rt * rt).sum(1)
    in_any = 0                                                      # fakes inside some real ball (precision)
    in_count = torch.zeros((), dtype=torch.float64, device=device)  # (fake, real-ball) incidences (density)
    nearest = torch.full((m,), float("inf"), dtype=dtype, device=device)    # nearest fake to each real (coverage)
    recalled = torch.zeros(m, dtype=torch.bool, device=device)              # real inside some fake ball (recall)
    rb = _rows_per_block(m)
    for f0 in range(0, n, rb):
        f1 = min(n, f0 + rb)
        f = _t(fake, f0, f1, device, dtype)
        d = _sqdist(f, rt, (f * f).sum(1), rt2)                     # (b, M)
        inside = d < r_real[None, :]
        in_any += int(inside.any(1).sum())
        in_count += inside.sum(dtype=torch.float64)
        nearest = torch.minimum(nearest, d.min(0).values)
        if r_fake is not None:
            recalled |= (d < r_fake[f0:f1, None]).any(0)
    return {**out, "precision": in_any / n, "density": float(in_count) / (k * n),
            "recall": float(recalled.double().mean()) if r_fake is not None else None,
            "coverage": float((nearest < r_real).double().mean())}


METRICS = ("precision", "recall", "density", "coverage")


def prdc_bootstrap(real, fake, k: int = 5, replicates: int = 100, seed: int = 0, device="cpu",
                   dtype=torch.float64, level: float = 0.95) -> dict:
    """Percentile bootstrap intervals {metric: [lo, hi]} of prdc, resampling real and fake with replacement.

    Copies of one original point are not each other's neighbours (ids), otherwise every duplicate would shrink the
    k-NN radii to 0 and bias precision/coverage down. Replicates with <= k distinct real points are skipped."""
    rng = np.random.default_rng(seed)
    m, n = len(real), len(fake)
    real_a, fake_a = np.asarray(real[0:m]), np.asarray(fake[0:n])
    vals = {key: [] for key in METRICS}
    for _ in range(replicates):
        i, j = rng.integers(0, m, m), rng.integers(0, n, n)
        if np.unique(i).size <= k:
            continue
        r = prdc(real_a[i], fake_a[j], k, real_ids=i, fake_ids=j, device=device, dtype=dtype)
        if np.unique(j).size <= k:      # fewer distinct fakes than k: their radii would be infinite
            r["recall"] = None
        for key in METRICS:
            if r[key] is not None:
                vals[key].append(r[key])
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {key: ([float(x) for x in np.percentile(v, q)] if v else None) for key, v in vals.items()} | \
        {"replicates": replicates, "level": level}


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
    rec.update({key: v for key, v in prdc(real, fake, cfg.k, device=device, dtype=dtype).items() if key in METRICS})
    rec["kid"] = kid(real, fake, cfg.kid, cfg.seed, device, dtype)
    rec["ci"] = None
    if 0 < n and cfg.bootstrap and min(m, n) < cfg.bootstrap_below:
        rec["ci"] = prdc_bootstrap(real, fake, cfg.k, cfg.bootstrap, cfg.seed, device, dtype)
    rec["note"] = ("no synthetic image in this class" if n == 0 else
                   f"{n} synthetic image(s): recall needs more than k={cfg.k}" if n <= cfg.k else None)
    return rec


def evaluate(real, real_labels, fake, fake_pred, names, cfg: FidelityConfig, device="cpu",
             dtype=torch.float64) -> dict:
    """Overall and per-class numbers: fake rows grouped by the labeler's prediction `fake_pred` (N,), real rows by
    their labels `real_labels` (M,) (None: overall only). `real` is (M, D) in memory, `fake` any array-like."""
    out = {"k": cfg.k, "dims": int(real.shape[1]), "overall": _group(real, fake, cfg, device, dtype), "per_class": None}
    if real_labels is None:
        out["per_class_unavailable"] = "the reference has no labels in the labeler's classes"
        return out
    rows = []
    for c, name in enumerate(names):
        fi = np.flatnonzero(fake_pred == c)
        rows.append({"class": c, "name": name, **_group(real[real_labels == c], Take(fake, fi), cfg, device, dtype)})
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
            labels, ref_names, lab, inc = self.real()
            names = list(self.classifier.class_names)
            if labels is not None and ref_names is not None and list(ref_names) != names:
                labels = None       # a reference of another task: overall numbers only
            out = {"reference_n": int(lab.shape[0]), "reference": self.ref.spec}
            if col.n == 0:
                return {**out, "labeler": None, "inception": None, "reason": "no committed images"}
            out["labeler"] = {"space": f"labeler penultimate layer ({lab.shape[1]}-d)",
                              **evaluate(lab, labels, col.labeler.array, pred, names, self.cfg, self.device)}
            if inc is not None and col.inception is not None:
                ex = self.extractor.describe()
                out["inception"] = {"space": ex["feature_extractor"], "weights": ex["weights"], "is_fid": ex["is_fid"],
                                    **evaluate(inc, labels, col.inception.array, pred, names, self.cfg, self.device)}
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
