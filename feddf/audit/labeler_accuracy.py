"""How far the audit's labeler can be trusted: its own test accuracy, as its `feddf train` run recorded it on the
run's test split, and measured on a labelled `--reference` dataset of its classes; flagged when near chance.

    feddf audit cache/x.h5 --labeler runs/demo-fedavg --reference 'fashion-mnist:test[5000:]'

A labeler near chance still spreads its predictions over some classes, so its effective classes, confidence and
agreement would describe the labeler, not the cache: the summary says so in one warning line.
"""
from __future__ import annotations

import json
from pathlib import Path

NEAR_CHANCE = 0.1  # an accuracy below chance (1/K) + this is "near chance"


def labeler_accuracy(classifier, ref=None, limit: int | None = None, seed: int = 0, batch_size: int = 128) -> dict:
    """{"chance", "checks": [{"accuracy", "on", "n", "how"}], "near_chance", "unknown": why no check | None}."""
    k = int(classifier.num_classes)
    checks = [c for c in (_recorded(classifier), _measured(classifier, ref, limit, seed, batch_size)) if c]
    chance = 1.0 / k
    near = any(c["accuracy"] < chance + NEAR_CHANCE for c in checks)
    unknown = None if checks else ("a checkpoint outside a `feddf train` run folder and no labelled --reference of "
                                   "its classes: pass --reference DATASET:SPLIT of its task to measure it")
    return {"chance": chance, "checks": checks, "near_chance": near, "unknown": unknown}


def _recorded(classifier) -> dict | None:
    """The last round's accuracy of the labeler's architecture in the run folder its checkpoint sits in."""
    from feddf.audit.compare import load_run, server_acc
    from feddf.errors import FeddfError

    path = Path(classifier.meta.get("path") or "")
    if path.parent.name != "models":
        return None
    try:
        run = load_run(path.parent.parent)
    except FeddfError:
        return None  # a checkpoint copied next to foreign files: nothing recorded to read
    arch = classifier.meta.get("arch")
    rows = [r for r in run.records if isinstance(r.get("acc"), dict) and arch in r["acc"]]
    acc = server_acc(rows[-1]["acc"][arch]) if rows else None
    if acc is None:
        return None
    try:  # partition.json records the test split and its size
        test = json.loads((run.path / "partition.json").read_text())["test"]
    except (OSError, ValueError, KeyError, TypeError):
        test = {"spec": run.config.get("test_spec") or "its test split", "n": run.config.get("test_limit")}
    return {"accuracy": float(acc), "on": str(test.get("spec")), "n": test.get("n"),
            "how": f"recorded by its run {run.path} after round {rows[-1]['round']}"}


def _measured(classifier, ref, limit, seed, batch_size) -> dict | None:
    """Accuracy on a --reference dataset whose class names are the labeler's (None for any other reference)."""
    from feddf.audit.labeler import predict
    from feddf.audit.sources import sample_indices
    from feddf.data import dataset_info, get_dataset, parse_spec

    if ref is None or ref.kind != "dataset":
        return None
    if list(dataset_info(parse_spec(ref.spec).name).class_names) != list(classifier.class_names):
        return None
    ds = get_dataset(ref.spec)
    idx = sample_indices(len(ds), limit, seed)
    idx = idx[ds.labels[idx].numpy() >= 0]
    if not len(idx):
        return None
    hits = 0
    for s in range(0, len(idx), batch_size):
        part = idx[s:s + batch_size]
        pred, _ = predict(classifier, ds.images[part])
        hits += int((pred == ds.labels[part].numpy()).sum())
    return {"accuracy": hits / len(idx), "on": ref.spec, "n": int(len(idx)), "how": "measured on --reference"}


def summary_lines(acc: dict | None) -> list[str]:
    """The audit summary's lines about the labeler: its accuracy per check, and the near-chance warning."""
    if not acc:
        return []
    if acc["unknown"]:
        return [f"labeler accuracy: unknown ({acc['unknown']})"]
    lines = [f"labeler accuracy: {c['accuracy']:.4f} on {c['on']}" + (f", {c['n']} images" if c["n"] else "")
             + f" ({c['how']}; chance {acc['chance']:.4f})" for c in acc["checks"]]
    if acc["near_chance"]:
        worst = min(c["accuracy"] for c in acc["checks"])
        lines.append(f"warning: the labeler is near chance ({worst:.4f}, chance {acc['chance']:.4f}): its classes, "
                     f"effective classes and agreement describe the labeler, not the cache; use a better-trained "
                     f"--labeler")
    return lines

