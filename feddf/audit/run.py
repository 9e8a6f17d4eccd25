"""The audit pipeline: sources -> coverage, labeler and FID numbers + figures (files are written by report.py).

    feddf audit cache/dcgan-fashion-mnist-28px-20000.h5 --labeler runs/demo-feddf --json

Everything that can be checked cheaply (sources, labeler, reference, weights) is checked before any image is read,
so bad input fails in a second with one line and nothing is written.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from feddf.audit import coverage as cov
from feddf.audit import fid as F
from feddf.audit import fidelity as FD
from feddf.audit import labeler as lab
from feddf.audit.labeler_accuracy import labeler_accuracy
from feddf.audit import plots
from feddf.audit.reference import Reference, reference_stats, resolve_reference
from feddf.audit.sources import Source, open_source, sample_indices, unique_names
from feddf.checks import check_range, check_seed, check_types
from feddf.errors import FeddfError


@dataclass
class AuditConfig:
    sources: list[str]
    labeler: str | None = None
    labeler_arch: str | None = None
    reference: str | None = None
    fid: bool | None = None              # None: compute FID when a reference is given
    fid_weights: str | None = None
    min_effective_classes: float | None = None
    batch_size: int = 128
    limit: int | None = None             # images per source (and reference) for labeler, FID and grids
    seed: int = 0
    device: str = "auto"
    low_confidence: float = cov.LOW_CONFIDENCE
    stats_dir: str | None = None         # reference statistics cache; default $FEDDF_DATA_ROOT/fid-stats
    grid_classes: int = 10
    grid_per_class: int = 8
    # fidelity (precision/recall/density/coverage/KID; feddf/audit/fidelity.py)
    fidelity: bool | None = None         # None: when --labeler and an image --reference (dataset or cache) are given
    k: int = 5
    min_coverage: float | None = None
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    bootstrap: int = 100


@dataclass
class AuditResult:
    report: dict
    figures: dict[str, bytes] = field(default_factory=dict)                 # file name -> PNG
    source_stats: dict[str, tuple] = field(default_factory=dict)            # name -> (mu, sigma, n, description)

    @property
    def gate_failed(self) -> bool:
        return bool(self.report.get("gate") and not self.report["gate"]["passed"])

    @property
    def coverage_gate_failed(self) -> bool:
        return bool(self.report.get("fidelity_gate") and not self.report["fidelity_gate"]["passed"])


def _check(cfg: AuditConfig) -> None:
    if not cfg.sources:
        raise FeddfError("no SOURCE given: pass one or more caches (*.h5)")
    if cfg.batch_size < 1:
        raise FeddfError(f"--batch-size {cfg.batch_size} must be at least 1")
    if cfg.limit is not None and cfg.limit < 1:
        raise FeddfError(f"--limit {cfg.limit} must be at least 1 (leave it out to use every image)")
    check_types(cfg)
    check_range("--low-confidence", cfg.low_confidence, lo=0, hi=1, lo_open=True)
    if cfg.min_effective_classes is not None:
        check_range("--min-effective-classes", cfg.min_effective_classes, lo=0)
    check_seed("--seed", cfg.seed)
    if cfg.fid and cfg.reference is None:
        raise FeddfError("--fid needs --reference DATASET|CACHE|STATS.npz (e.g. --reference fashion-mnist:test)")


def run_audit(cfg: AuditConfig, progress: bool = True, extractor: F.InceptionFeatures | None = None) -> AuditResult:
    """Audit every source. `extractor` overrides the FID network (tests pass random weights; such a result is
    reported under `fid` with is_fid false and never as FID in the summary)."""
    from feddf.utils import resolve_device, to_jsonable, versions

    _check(cfg)
    names = unique_names(cfg.sources)
    sources: list[Source] = []
    try:
        for path, name in zip(cfg.sources, names):  # first: a bad cache fails in a fraction of a second
            sources.append(open_source(path, name))
            if sources[-1].n == 0 and sources[-1].attrs.get("complete"):  # finished, yet empty: a broken cache
                raise FeddfError(f"{path} is marked complete but holds 0 committed images: nothing to audit; "
                                 "re-create it")
        device = resolve_device(cfg.device)
        classifier = lab.load_labeler(cfg.labeler, cfg.labeler_arch, device) if cfg.labeler else None
        ref = resolve_reference(cfg.reference) if cfg.reference else None
        want_fid = cfg.fid if cfg.fid is not None else ref is not None
        fid_unavailable = None
        if want_fid and extractor is None:
            try:
                extractor = F.InceptionFeatures.from_weights(F.find_weights(cfg.fid_weights), device)
            except F.FIDUnavailable as e:
                fid_unavailable = str(e)
        if not want_fid:
            extractor = None
        fa = _fidelity_setup(cfg, classifier, ref, extractor, device, progress)

        result = AuditResult(report={
            "command": "audit", "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "config": to_jsonable(cfg), "device": str(device), "versions": versions(),
            "labeler": {**lab.describe(classifier), "accuracy": labeler_accuracy(
                classifier, ref, cfg.limit, cfg.seed, cfg.batch_size)} if classifier else None,
            "reference": {"spec": ref.spec, "kind": ref.kind} if ref else None,
            "fid": ({"requested": True, "available": extractor is not None, "reason": fid_unavailable,
                     **(extractor.describe() if extractor else {})} if want_fid else {"requested": False}),
            "sources": [], "fidelity": _fidelity_header(cfg, fa)})
        per_source_feats = {}
        for src in sources:
            entry, acc = _audit_source(src, cfg, classifier, extractor, result, progress, fa)
            result.report["sources"].append(entry)
            if acc is not None:
                per_source_feats[src.name] = acc
        if extractor is not None:
            _fid(cfg, ref, extractor, per_source_feats, result, progress)
        else:
            for entry in result.report["sources"]:
                entry["fid"] = ({"available": False, "reason": fid_unavailable} if want_fid else None)
        result.report["gate"] = _gate(cfg, result.report["sources"])
        result.report["fidelity_gate"] = FD.gate(cfg.min_coverage, result.report["sources"])
        return result
    finally:
        for s in sources:
            s.close()


def _audit_source(src: Source, cfg: AuditConfig, classifier, extractor, result: AuditResult, progress: bool,
                  fa: FD.FidelityAudit | None = None):
    from tqdm import tqdm

    entry = {"name": src.name, "path": str(src.path), "n": src.n, "channels": src.channels,
             "resolution": src.resolution, "attrs": src.attrs, "figures": {}}
    # An unconditional generator (DCGAN: every label -1) has no conditioning classes to summarise.
    cond = cov.label_summary(src.labels, src.label_space, src.label_names) if src.label_space > 0 else None
    entry["conditioning"] = cond
    if cond is not None:
        _fig(result, entry, "conditioning", plots.class_histogram(
            [r["count"] for r in cond["per_class"]], src.label_names, f"{src.name}: conditioning classes"))
    entry["targets"] = None
    if src.targets is not None:
        entry["targets"] = cov.label_summary(src.targets, src.target_space, src.target_names)
        _fig(result, entry, "targets", plots.class_histogram(
            [r["count"] for r in entry["targets"]["per_class"]], src.target_names, f"{src.name}: target classes"))
    entry["recorded_labeler"] = None
    if src.recorded_labeler is not None:   # per-image predictions `feddf gen --labeler` stored in the cache
        pred_g, conf_g = src.recorded_labeler
        agree = src.targets if src.targets is not None and src.target_space == src.labeler_space else None
        entry["recorded_labeler"] = cov.labeler_summary(pred_g, conf_g, src.labeler_space, src.labeler_names,
                                                        agree, cfg.low_confidence)

    idx = sample_indices(src.n, cfg.limit, cfg.seed)
    entry["n_scanned"] = int(idx.size)
    pred = np.empty(idx.size, np.int64)
    conf = np.empty(idx.size, np.float64)
    acc = F.StatsAccumulator() if extractor is not None else None
    col = fa.collector(idx.size) if fa is not None else None     # hooks the labeler's penultimate layer
    if classifier is not None or acc is not None:
        pos = 0
        for _, images in tqdm(src.batches(idx, cfg.batch_size), total=-(-idx.size // cfg.batch_size),
                              desc=src.name, disable=not progress, leave=False):
            b = images.shape[0]
            if classifier is not None:
                pred[pos:pos + b], conf[pos:pos + b] = lab.predict(classifier, images)
            inception = extractor(images) if acc is not None else None
            if acc is not None:
                acc.update(inception)
            if col is not None:
                col.add(pos, inception)
            pos += b
    entry["fidelity"] = None
    if col is not None:
        entry["fidelity"] = fa.finish(col, pred)
        if (entry["fidelity"].get("labeler") or {}).get("per_class"):
            _fig(result, entry, "fidelity", plots.fidelity_bars(
                entry["fidelity"]["labeler"]["per_class"], f"{src.name}: per-class fidelity (labeler features, "
                f"k={cfg.k})"))

    entry["labeler"] = None
    if classifier is not None:
        entry["labeler"] = _labeler_entry(src, idx, pred, conf, classifier, cfg)
        names = classifier.class_names
        lsum = entry["labeler"]
        _fig(result, entry, "labeler", plots.class_histogram(
            [r["count"] for r in lsum["per_class"]], names, f"{src.name}: labeler predictions"))
        _fig(result, entry, "confidence", plots.confidence_histogram(
            conf, cfg.low_confidence, f"{src.name}: labeler confidence"))
        _fig(result, entry, "mean_confidence", plots.per_class_bars(
            [r["mean_confidence"] for r in lsum["per_class"]], names, f"{src.name}: mean confidence per predicted "
            "class", "mean confidence"))
        _fig(result, entry, "grid_labeler", _grid(src, idx, pred, names, cfg, f"{src.name}: images by predicted class"))
    if cond is not None:
        _fig(result, entry, "grid_conditioning", _grid(src, np.arange(src.n), src.labels, src.label_names, cfg,
                                                       f"{src.name}: images by conditioning class"))
    return entry, acc


def _labeler_entry(src: Source, idx, pred, conf, classifier, cfg: AuditConfig) -> dict:
    """Labeler summary; agreement against the cache's target map, or — for an imported set of the task itself (its
    label names are the labeler's classes) — against its labels, which is then the labeler's accuracy there."""
    targets, against, reason = None, None, None
    k, names = classifier.num_classes, list(classifier.class_names)
    if src.targets is not None:
        if src.target_space != k:
            reason = f"labeler has {k} classes, the cache's target map {src.target_space}"
        elif src.target_names and list(src.target_names) != names:
            reason = "labeler class names differ from the cache's target_names"
        else:
            targets, against = src.targets[idx], "targets"
    elif src.label_names and list(src.label_names) == names:
        targets, against = src.labels[idx], "labels"
    out = cov.labeler_summary(pred, conf, k, names, targets, cfg.low_confidence)
    if reason is not None:
        out["agreement"] = {"comparable": False, "reason": reason}
    elif out["agreement"] is not None:
        out["agreement"]["against"] = against
    return out


def _grid(src: Source, idx: np.ndarray, classes: np.ndarray, names, cfg: AuditConfig, title: str) -> bytes:
    """Up to grid_per_class random images of each of the grid_classes most frequent classes among `idx`."""
    cls = np.asarray(classes)
    cls = cls if cls.shape[0] == idx.shape[0] else cls[idx]
    valid = cls >= 0
    if not valid.any():
        return plots.image_grid([], title)
    counts = np.bincount(cls[valid])
    top = [int(c) for c in np.argsort(-counts, kind="stable")[:cfg.grid_classes] if counts[c] > 0]
    rng = np.random.default_rng(cfg.seed)
    picks = {c: np.sort(rng.choice(idx[cls == c], size=min(cfg.grid_per_class, int(counts[c])), replace=False))
             for c in top}
    all_idx = np.unique(np.concatenate(list(picks.values())))
    images = src.read(all_idx).numpy()
    where = {int(i): j for j, i in enumerate(all_idx)}
    rows = [(names[c] if names and c < len(names) else f"class {c}", images[[where[int(i)] for i in picks[c]]])
            for c in top]
    return plots.image_grid(rows, title, per_row=cfg.grid_per_class)


def _fig(result: AuditResult, entry: dict, key: str, png: bytes) -> None:
    name = f"{entry['name']}-{key}.png"
    result.figures[name] = png
    entry["figures"][key] = f"figures/{name}"


def _fid(cfg: AuditConfig, ref: Reference, extractor, feats: dict, result: AuditResult, progress: bool) -> None:
    from feddf.data import data_root

    stats_dir = Path(cfg.stats_dir) if cfg.stats_dir else data_root() / "fid-stats"
    mu_r, sig_r, ref_desc = reference_stats(ref, extractor, limit=cfg.limit, seed=cfg.seed,
                                            batch_size=cfg.batch_size, stats_dir=stats_dir, progress=progress)
    result.report["reference"].update(ref_desc)
    n_ref = ref_desc.get("n")
    for entry in result.report["sources"]:
        acc = feats[entry["name"]]
        if acc.n < 2:
            entry["fid"] = {"available": False, "reason": f"{entry['name']} has {acc.n} committed image(s); FID "
                                                          f"needs at least 2 (and 2049 for a full-rank covariance)"}
            continue
        mu, sig = acc.finalize()
        value = F.frechet_distance(mu, sig, mu_r, sig_r, factor1=acc.factor())   # factor: fast when n < 2048
        rec = {"available": True, "value": value, "n": acc.n, "n_reference": n_ref, "reference": ref.spec,
               **extractor.describe()}
        if min(acc.n, n_ref or acc.n) < F.MIN_RELIABLE_N:
            rec["warning"] = (f"fewer than {F.MIN_RELIABLE_N} images on one side: covariance is rank-deficient and "
                              f"FID is biased upward; compare only FIDs computed with the same image counts")
        if not extractor.is_fid:
            rec["warning"] = "random Inception weights (tests only): not an FID"
        entry["fid"] = rec
        if extractor.is_fid:  # reusable as --reference; statistics from test weights are never saved
            result.source_stats[entry["name"]] = (mu, sig, acc.n, {"source": entry["path"], "limit": cfg.limit,
                                                                   "seed": cfg.seed, **extractor.describe()})


def _gate(cfg: AuditConfig, entries: list[dict]) -> dict | None:
    """--min-effective-classes on the labeler's effective classes, else the targets', else the conditioning's."""
    if cfg.min_effective_classes is None:
        return None
    rows, failures = [], []
    for e in entries:
        metric = "labeler" if e["labeler"] else ("targets" if e["targets"] else "conditioning")
        if e[metric] is None:
            raise FeddfError(f"{e['name']} is unconditional (no class labels): --min-effective-classes needs "
                             "--labeler RUN_DIR|CKPT to count classes")
        value = e[metric]["effective_classes"]
        ok = value >= cfg.min_effective_classes
        rows.append({"source": e["name"], "metric": metric, "effective_classes": value, "passed": ok})
        if not ok:
            failures.append(f"{e['name']}: {value:.2f} effective {metric} classes")
    return {"min_effective_classes": cfg.min_effective_classes, "passed": not failures, "sources": rows,
            "failures": failures}


def _fidelity_setup(cfg: AuditConfig, classifier, ref: Reference | None, extractor, device,
                    progress: bool) -> FD.FidelityAudit | None:
    """The fidelity state when requested (--fidelity) or possible (labeler + a reference with images), else None."""
    if cfg.k < 1 or cfg.kid_subsets < 1 or cfg.kid_subset_size < 2 or cfg.bootstrap < 0:
        raise FeddfError(f"bad fidelity settings (k={cfg.k}, kid subsets={cfg.kid_subsets}, subset size="
                         f"{cfg.kid_subset_size}, bootstrap={cfg.bootstrap}): need k >= 1, subsets >= 1, size >= 2")
    if cfg.min_coverage is not None and not 0.0 <= cfg.min_coverage <= 1.0:
        raise FeddfError(f"--min-coverage {cfg.min_coverage} must be in [0, 1]")
    if cfg.min_coverage is not None and cfg.fidelity is False:
        raise FeddfError("--min-coverage needs the fidelity numbers: drop --no-fidelity")
    possible = classifier is not None and ref is not None and ref.kind != "stats"
    want = cfg.fidelity if cfg.fidelity is not None else possible or cfg.min_coverage is not None
    if not want:
        return None
    if not possible:
        raise FeddfError("precision/recall/density/coverage (--fidelity, --min-coverage) need --labeler RUN_DIR and "
                         "--reference DATASET|CACHE with images (e.g. fashion-mnist:test), not statistics")
    fcfg = FD.FidelityConfig(k=cfg.k, kid=FD.KIDConfig(cfg.kid_subsets, cfg.kid_subset_size),
                             bootstrap=cfg.bootstrap, seed=cfg.seed)
    return FD.FidelityAudit(fcfg, ref, classifier, extractor, device, limit=cfg.limit, seed=cfg.seed,
                            batch_size=cfg.batch_size, progress=progress)


def _fidelity_header(cfg: AuditConfig, fa: FD.FidelityAudit | None) -> dict:
    if fa is None:
        return {"requested": False}
    return {"requested": True, "k": cfg.k, "kid_subsets": cfg.kid_subsets, "kid_subset_size": cfg.kid_subset_size,
            "bootstrap": cfg.bootstrap, "bootstrap_below": fa.cfg.bootstrap_below,
            "spaces": ["labeler"] + (["inception"] if fa.extractor is not None else [])}
