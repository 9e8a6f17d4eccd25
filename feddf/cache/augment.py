"""Batch tensor ops for streamed uint8 images: channel/resolution conversion, the paper code's augmentation
(random crop with 4 px zero padding + horizontal flip), normalisation. Never per-sample PIL.

    python -c "import torch; from feddf.cache.augment import BatchTransform; \
t = BatchTransform(channels=3, resolution=32, mean=(0.5,)*3, std=(0.25,)*3, augment='crop-flip'); \
print(t(torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)).shape)"

Order inside BatchTransform: channels -> resize -> augment -> normalise. Channel conversion and cropping run on
uint8 (4x less memory traffic than float); the resize runs on float with antialiasing and is rounded back, so a
stream's batch is converted exactly like a dataset image would be.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from feddf.errors import FeddfError

# ITU-R 601-2 luma, what PIL's convert("L") uses: RGB -> grey for 1-channel consumers.
_LUMA = (0.299, 0.587, 0.114)


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, channels, H, W): grey -> RGB by repetition, RGB -> grey by luma; dtype kept."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        w = torch.tensor(_LUMA, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        grey = (x.float() * w).sum(1, keepdim=True)
        return grey.round().clamp(0, 255).to(x.dtype) if not x.is_floating_point() else grey.to(x.dtype)
    raise FeddfError(f"cannot convert {c}-channel images to {channels} channels: only 1 <-> 3 is supported")


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Square resize with bilinear antialiasing; uint8 in -> uint8 out (rounded), float in -> float out."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.round().clamp(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else y.to(x.dtype)


def random_crop_flip(x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None,
                     flip: bool = True) -> torch.Tensor:
    """Per-image random crop of a zero-padded batch + random horizontal flip, as one gather.

    x: (B, C, H, W) any dtype -> (B, C, H, W). Offsets oy, ox ~ U{0..2p} and flips ~ Bernoulli(0.5) per image,
    drawn from `generator` (CPU) so a seeded run is reproducible; same result as torchvision's RandomCrop(H, padding=p)
    + RandomHorizontalFlip applied image by image."""
    b, _, h, w = x.shape
    if b == 0:
        return x
    xp = F.pad(x, (padding, padding, padding, padding)) if padding else x  # (B, C, H+2p, W+2p), zeros outside
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    rows = (oy[:, None] + torch.arange(h)).to(x.device)  # (B, H)
    cols = ox[:, None] + torch.arange(w)                   # (B, W)
    if flip:
        mirror = torch.rand(b, generator=generator) < 0.5
        cols = torch.where(mirror[:, None], cols.flip(1), cols)
    cols = cols.to(x.device)
    bi = torch.arange(b, device=x.device)[:, None, None]
    # advanced indices on dims 0, 2, 3 around a slice -> (B, H, W, C); back to channels-first. clone, not
    # .contiguous(): with C = 1 the permuted strides already count as contiguous yet look channels_last, so convs
    # would return channels_last outputs and a model's x.view(B, -1) would fail
    out = xp[bi, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return out.clone(memory_format=torch.contiguous_format)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 (x/255 - mean) / std, per channel."""
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    if m.shape[1] != x.shape[1] or s.shape[1] != x.shape[1]:
        raise FeddfError(f"mean/std have {m.shape[1]}/{s.shape[1]} values for {x.shape[1]}-channel images")
    y = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return (y - m) / s


def _none(x: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4) -> torch.Tensor:
    return x


def _crop_flip(x: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4) -> torch.Tensor:
    return random_crop_flip(x, padding, generator)


def _flip(x: torch.Tensor, generator: torch.Generator | None = None, padding: int = 4) -> torch.Tensor:
    return random_crop_flip(x, 0, generator)


# The string registry: what `--augment` (or a config's augment field) may name.
AUGMENTATIONS: dict[str, Callable[..., torch.Tensor]] = {"none": _none, "crop-flip": _crop_flip, "flip": _flip}


@dataclass
class BatchTransform:
    """uint8 batch from a stream -> normalised float batch for a model: channels, resolution, augmentation, mean/std."""

    channels: int
    resolution: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "none"
    padding: int = 4

    def __post_init__(self):
        if self.augment not in AUGMENTATIONS:
            raise FeddfError(f"unknown augmentation {self.augment!r}: choose one of {', '.join(AUGMENTATIONS)}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise FeddfError(f"BatchTransform expects uint8 (B, C, H, W) batches, got {x.dtype} {tuple(x.shape)}")
        x = resize(convert_channels(x, self.channels), self.resolution)
        x = AUGMENTATIONS[self.augment](x, generator=generator, padding=self.padding)
        return normalize(x, self.mean, self.std)
