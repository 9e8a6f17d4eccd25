"""Batch tensor ops of feddf/cache/augment.py: crop-flip equals the per-image definition, conversions, normalise."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from feddf.cache.augment import (AUGMENTATIONS, BatchTransform, convert_channels, normalize, random_crop_flip,
                                 resize)
from feddf.errors import FeddfError


def test_crop_flip_matches_per_image_reference():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    y = random_crop_flip(x, 4, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # replay the same draws: offsets y, offsets x, flips
    oy, ox = torch.randint(0, 9, (16,), generator=g), torch.randint(0, 9, (16,), generator=g)
    flip = torch.rand(16, generator=g) < 0.5
    xp = F.pad(x, (4, 4, 4, 4))
    for i in range(16):
        ref = xp[i, :, oy[i]:oy[i] + 8, ox[i]:ox[i] + 8]
        assert torch.equal(y[i], ref.flip(-1) if flip[i] else ref)
    assert 0 < int(flip.sum()) < 16  # both branches exercised
    assert y.dtype == torch.uint8 and y.is_contiguous()


def test_crop_flip_is_reproducible_and_padding_zero_is_flip_only():
    x = torch.randint(0, 256, (32, 1, 6, 6), dtype=torch.uint8)
    a = random_crop_flip(x, 4, torch.Generator().manual_seed(0))
    b = random_crop_flip(x, 4, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    c = random_crop_flip(x, 0, torch.Generator().manual_seed(1))
    for i in range(32):
        assert torch.equal(c[i], x[i]) or torch.equal(c[i], x[i].flip(-1))
    assert torch.equal(random_crop_flip(x, 0, flip=False), x)
    assert random_crop_flip(x[:0]).shape == (0, 1, 6, 6)


def test_channels_resize_normalize():
    g = torch.randint(0, 256, (2, 1, 5, 5), dtype=torch.uint8)
    rgb = convert_channels(g, 3)
    assert rgb.shape == (2, 3, 5, 5) and torch.equal(rgb[:, 1], g[:, 0])
    back = convert_channels(rgb, 1)
    assert torch.equal(back, g)  # luma weights sum to 1
    with pytest.raises(FeddfError):
        convert_channels(torch.zeros(1, 2, 4, 4, dtype=torch.uint8), 3)
    r = resize(torch.full((1, 1, 28, 28), 200, dtype=torch.uint8), 32)
    assert r.shape == (1, 1, 32, 32) and r.dtype == torch.uint8 and (r == 200).all()
    n = normalize(torch.tensor([[[[0, 255]]]], dtype=torch.uint8), (0.5,), (0.5,))
    assert torch.allclose(n, torch.tensor([[[[-1.0, 1.0]]]]))


def test_batch_transform():
    t = BatchTransform(channels=3, resolution=32, mean=(0.5,) * 3, std=(0.25,) * 3, augment="crop-flip")
    out = t(torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.float32
    with pytest.raises(FeddfError, match="unknown augmentation"):
        BatchTransform(3, 32, (0.5,) * 3, (0.25,) * 3, augment="mixup")
    with pytest.raises(FeddfError, match="uint8"):
        t(torch.zeros(4, 3, 32, 32))
    assert set(AUGMENTATIONS) >= {"none", "crop-flip", "flip"}
