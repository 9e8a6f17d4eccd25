"""Feature spaces for the fidelity metrics: a labeler's penultimate layer (a hook on its output layer), a disk-backed
store for the features of a large cache, and one pass over a reference set.

    python -c "from feddf.audit.features import head_layer; from feddf.models import get_model; print(head_layer(get_model('vgg9', 10, 1)))"

Every zoo model (feddf/models) ends in one nn.Linear producing the logits, and it is the last nn.Linear registered;
its input (B, D) is the penultimate representation: 128-d for cnn, 64 for resnet*, 512 for vgg9, 1024 for
shufflenetv2. A forward pre-hook captures it during the labeler's own forward, so predictions and features cost one
pass (tests/test_fidelity.py checks head(features) == logits for every zoo model).
"""
from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
from torch import nn

from feddf.errors import FeddfError


def head_layer(model: nn.Module) -> nn.Linear:
    """The output layer: the last nn.Linear registered in `model`."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise FeddfError(f"{type(model).__name__} has no nn.Linear output layer: penultimate features need one")
    return heads[-1]


class PenultimateHook:
    """Captures the input of the classifier's output layer on every forward; `.last` is (B, D) float32 numpy."""

    def __init__(self, classifier):
        self.last: np.ndarray | None = None
        self._h = head_layer(classifier.model).register_forward_pre_hook(self._grab)

    def _grab(self, _module, inputs):
        self.last = inputs[0].detach().flatten(1).float().cpu().numpy()

    def close(self) -> None:
        self._h.remove()

    def __enter__(self) -> "PenultimateHook":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def embed(classifier, images_u8) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (B, C, H, W) -> (penultimate features (B, D) float32, predicted class (B,) int64)."""
    with PenultimateHook(classifier) as hook:
        logits = classifier.logits(images_u8)
    return hook.last, logits.argmax(1).cpu().numpy().astype(np.int64)


class FeatureStore:
    """(n, D) float32 features written by row ranges into a temporary .npy memmap (a 500 000 x 2048 Inception set is
    4 GB: on disk, not in RAM); `.array` is the memmap, read back in blocks by feddf.audit.fidelity. Deleted by
    close()."""

    def __init__(self, n: int, tmp_dir: str | None = None):
        self.n = n
        self.array = None
        self._dir = Path(tempfile.mkdtemp(prefix="feddf-features-", dir=tmp_dir))
        # removed at close(), or when the store is collected / the interpreter exits after an error
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._dir), True)

    def write(self, pos: int, feats: np.ndarray) -> None:
        if self.array is None:
            self.array = np.lib.format.open_memmap(self._dir / "f.npy", mode="w+", dtype=np.float32,
                                                   shape=(self.n, feats.shape[1]))
        self.array[pos:pos + feats.shape[0]] = feats

    def close(self) -> None:
        self.array = None
        self._cleanup()


def reference_pass(ref, classifier, extractor, *, limit, seed, batch_size, progress=True):
    """(labels (M,) int64 or None, class names or None, labeler features (M, D), labeler predictions (M,),
    Inception features (M, 2048) or None) of a dataset-spec or cache reference; the same seeded subset as the FID
    reference statistics."""
    from tqdm import tqdm

    from feddf.audit.sources import open_source, sample_indices

    src = ds = None
    if ref.kind == "cache":
        src = open_source(ref.path)
        n = src.n
    elif ref.kind == "dataset":
        from feddf.data import get_dataset

        ds = get_dataset(ref.spec)
        n = len(ds)
    else:
        raise FeddfError(f"--reference {ref.spec!r} is statistics only: precision/recall/density/coverage/KID need "
                         f"the reference images (a dataset spec or a cache)")
    try:
        idx = sample_indices(n, limit, seed)
        if src is not None:
            labels, names = _cache_labels(src, classifier.class_names)
            labels = labels[idx] if labels is not None else None
        else:
            labels, names = ds.labels.numpy()[idx], list(ds.info.class_names)
        lab, pred, inc = [], [], []
        for s in tqdm(range(0, idx.size, batch_size), desc=f"reference {ref.spec}", disable=not progress, leave=False):
            b = idx[s:s + batch_size]
            images = src.read(b) if src is not None else ds.images[b]
            f, p = embed(classifier, images)
            lab.append(f)
            pred.append(p)
            if extractor is not None:
                inc.append(extractor(images).astype(np.float32))
        return (labels, names, np.concatenate(lab) if lab else np.zeros((0, 1), np.float32),
                np.concatenate(pred) if pred else np.zeros(0, np.int64), np.concatenate(inc) if inc else None)
    finally:
        if src is not None:
            src.close()


def _cache_labels(src, class_names):
    """A reference cache's per-image classes in the labeler's class space: its labels when their names are the
    labeler's classes, else its targets when those are; else (None, None)."""
    if src.label_names and list(src.label_names) == list(class_names):
        return src.labels, list(src.label_names)
    if src.targets is not None and src.target_names and list(src.target_names) == list(class_names):
        return src.targets, list(src.target_names)
    return None, None
