"""Small real caches, classifiers and run folders for the audit/compare tests (no tests here)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def make_cache(path: Path, n: int = 120, channels: int = 1, res: int = 16, num_labels: int = 10, num_targets: int = 0,
               label_names: list[str] | None = None, target_names: list[str] | None = None, seed: int = 0,
               labels: np.ndarray | None = None, labeler_classes: int = 0, finish: bool = True,
               chunk: int | None = None) -> dict:
    """Write a real feddf cache with CacheWriter; returns the arrays written (images, labels, targets, pred, conf)."""
    from feddf.cache.writer import CacheWriter

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, channels, res, res), dtype=np.uint8)
    labels = rng.integers(0, num_labels, n) if labels is None else np.asarray(labels)
    targets = np.where(labels < 2 * num_targets, labels % max(num_targets, 1), -1) if num_targets else None
    pred = rng.integers(0, labeler_classes, n) if labeler_classes else None
    conf = rng.uniform(0.1, 1.0, n).astype(np.float32) if labeler_classes else None
    attrs = {"kind": "imported", "source": "test-fixture", "seed": seed}
    if label_names:
        attrs["label_names"] = label_names
    if target_names:
        attrs["target_names"] = target_names
    w = CacheWriter(path, n=n, channels=channels, resolution=res, attrs=attrs, num_labels=num_labels,
                    num_targets=num_targets, labeler_classes=labeler_classes, chunk=chunk)
    try:
        w.append(images, labels, targets=targets, labeler_pred=pred, labeler_conf=conf)
        if finish:
            w.finish()
    finally:
        w.close()
    return {"images": images, "labels": labels, "targets": targets, "pred": pred, "conf": conf}


def make_classifier(path: Path, num_classes: int = 4, channels: int = 1, res: int = 16, names=None, seed: int = 0):
    """A (randomly initialised) real feddf classifier checkpoint written with save_classifier."""
    import torch

    from feddf.models import get_model, save_classifier

    torch.manual_seed(seed)
    model = get_model("cnn", num_classes, channels)
    save_classifier(path, model, arch="cnn", num_classes=num_classes, in_channels=channels, norm="bn",
                    mean=[0.5] * channels, std=[0.25] * channels, resolution=res,
                    class_names=names or [f"t{i}" for i in range(num_classes)])
    return path


def make_run(path: Path, accs: dict[str, list[tuple[float, float | None]]], aggregator: str = "feddf",
             distill_source: str | None = "gan", steps: int = 100, client_s: float = 2.0, distill_s: float = 1.0,
             truncated_tail: bool = False) -> Path:
    """A run folder following docs/CONTRACTS.md: accs = {arch: [(fedavg, distilled|None) per round]}."""
    path.mkdir(parents=True)
    archs = list(accs)
    (path / "config.json").write_text(json.dumps({"dataset": "fashion-mnist", "archs": archs, "aggregator": aggregator,
                                                  "distill_source": distill_source, "rounds": len(accs[archs[0]]),
                                                  "seed": 0, "versions": {}}))
    lines = []
    for r in range(len(accs[archs[0]])):
        acc = {a: {"fedavg": accs[a][r][0], "distilled": accs[a][r][1]} for a in archs}
        lines.append(json.dumps({"round": r + 1, "acc": acc, "ensemble_acc": max(v[r][0] for v in accs.values()),
                                 "distill_steps": {a: steps if accs[a][r][1] is not None else 0 for a in archs},
                                 "best_step": {a: steps for a in archs}, "client_seconds": client_s,
                                 "distill_seconds": distill_s}))
    text = "\n".join(lines) + "\n"
    if truncated_tail:
        text += '{"round": 99, "acc": {"cn'
    (path / "metrics.jsonl").write_text(text)
    return path
