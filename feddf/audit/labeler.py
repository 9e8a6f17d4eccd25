"""Labeler: a trained classifier of the target task run over a source, giving predicted class and confidence.

    feddf audit cache/x.h5 --labeler runs/demo-feddf --labeler-arch resnet8

The labeler is a `feddf train` run folder (its models/<arch>.pt) or a classifier checkpoint written by
`feddf.models.save_classifier`; `Classifier.logits` adapts channels/resolution/normalisation to the model.
"""
from __future__ import annotations

import numpy as np

from feddf.errors import FeddfError


def load_labeler(path: str, arch: str | None = None, device="cpu"):
    """feddf.models.Classifier from a run folder or checkpoint; bad input raises FeddfError (one line)."""
    from pathlib import Path

    from feddf.models import load_classifier

    if not Path(path).expanduser().exists():
        raise FeddfError(f"--labeler {path!r} does not exist: pass a `feddf train` run folder or a models/<arch>.pt "
                         f"checkpoint")
    return load_classifier(path, arch=arch, device=device)


def predict(classifier, images_u8) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (B, C, H, W) -> (predicted class (B,) int64, max-softmax confidence (B,) float64)."""
    import torch

    logits = classifier.logits(images_u8)                 # (B, K)
    prob = torch.softmax(logits.float(), dim=1)
    conf, pred = prob.max(dim=1)
    return pred.cpu().numpy().astype(np.int64), conf.cpu().double().numpy()


def describe(classifier) -> dict:
    """Provenance of the labeler recorded in the report (which file, which architecture, which classes)."""
    meta = classifier.meta
    return {"path": meta.get("path"), "arch": meta.get("arch"), "num_classes": int(classifier.num_classes),
            "class_names": list(classifier.class_names), "resolution": meta.get("resolution"),
            "in_channels": meta.get("in_channels")}
