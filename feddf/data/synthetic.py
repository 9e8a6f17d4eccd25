"""`synthetic`: a small procedurally generated, labelled 3×32×32 set with 10 classes, for tests and smoke runs.

    python -c "from feddf.data import get_dataset; print(get_dataset('synthetic:test'))"

Class k is a sinusoidal grating at orientation k·18° with a class-specific colour tint; phase, frequency jitter,
brightness and pixel noise vary per image. It is learnable by a tiny CNN in a few hundred steps, needs no files, and is
identical on every machine (numpy default_rng with a fixed seed per split).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from feddf.data.base import DatasetInfo, Loader

SIZES = {"train": 3000, "test": 1000}
_SEEDS = {"train": 1234, "test": 5678}

INFO = DatasetInfo(
    name="synthetic", channels=3, size=32, num_classes=10,
    class_names=tuple(f"grating_{18 * k}deg" for k in range(10)),
    mean=(0.5, 0.5, 0.5), std=(0.18, 0.18, 0.18),  # measured on the train split (tested)
    splits=("train", "test"),
)


def make(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")  # (H, W)
    theta = labels * (np.pi / 10)  # (N,)
    freq = 2 * np.pi * (0.12 + 0.02 * rng.random(n))
    phase = rng.uniform(0, 2 * np.pi, n)
    proj = (np.cos(theta)[:, None, None] * xx + np.sin(theta)[:, None, None] * yy)  # (N, H, W)
    wave = np.sin(freq[:, None, None] * proj + phase[:, None, None])
    tint = np.stack([np.cos(labels * 0.6), np.sin(labels * 0.9), np.cos(labels * 1.3 + 1)], 1)  # (N, 3)
    img = 0.5 + 0.3 * wave[:, None] * (0.6 + 0.4 * tint[:, :, None, None])
    img += 0.1 * rng.standard_normal(img.shape) + 0.05 * rng.standard_normal((n, 1, 1, 1))
    return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8), labels.astype(np.int64)


def _load(split: str, root: Path):
    images, labels = make(SIZES[split], _SEEDS[split])
    return images, labels, []


LOADER = Loader(INFO, _load, cache=False)
