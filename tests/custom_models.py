"""Bring-your-own architectures for tests/test_byo.py: factories `feddf train --arch tests.custom_models:NAME` builds.

    feddf train --arch tests.custom_models:build --distill-source noise --train-limit 300 --rounds 1

`build` has no BatchNorm, a LayerNorm, dropout and flattens with `.view` (which a channels_last input breaks: the
teacher ensemble must fall back to contiguous inputs); the others are deliberately broken factories.
"""
from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv 3x3 (8) -> ReLU -> max-pool 2 -> conv 3x3 (16) -> ReLU -> adaptive avg-pool 4x4 -> LayerNorm -> dropout ->
    linear: about 5 k parameters for 1x28x28 inputs."""

    def __init__(self, num_classes: int, in_channels: int, p: float = 0.25):
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.ln = nn.LayerNorm(16 * 16)
        self.drop = nn.Dropout(p)
        self.fc = nn.Linear(16 * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.c1(x)), 2)
        x = self.pool(torch.relu(self.c2(x)))         # (B, 16, 4, 4)
        x = x.view(x.shape[0], -1)                     # .view: needs a contiguous (not channels_last) tensor
        return self.fc(self.drop(self.ln(x)))


def build(num_classes: int, in_channels: int) -> nn.Module:
    return TinyNet(num_classes, in_channels)


def build_with_norm(num_classes: int, in_channels: int, norm: str = "bn") -> nn.Module:
    """Takes `norm`, so feddf passes --norm: GroupNorm for gn, nothing else for none, BatchNorm for bn."""
    layer = {"bn": nn.BatchNorm2d(8), "gn": nn.GroupNorm(2, 8), "none": nn.Identity()}[norm]
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), layer, nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, num_classes))


class _TupleNet(TinyNet):
    def forward(self, x):
        logits = super().forward(x)
        return logits, x.mean()


def build_tuple(num_classes: int, in_channels: int) -> nn.Module:
    return _TupleNet(num_classes, in_channels)


def build_not_a_module(num_classes: int, in_channels: int):
    return {"num_classes": num_classes}


class _NoParams(nn.Module):
    """Returns (B, K) zeros: a forward pass that works, with nothing to train."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.k = num_classes

    def forward(self, x):
        return torch.zeros(x.shape[0], self.k)


def build_without_parameters(num_classes: int, in_channels: int) -> nn.Module:
    return _NoParams(num_classes)


class _NaNNet(TinyNet):
    """TinyNet whose logits are NaN: a model that breaks training without any bad option."""

    def forward(self, x):
        return super().forward(x) * float("nan")


def build_nan(num_classes: int, in_channels: int) -> nn.Module:
    return _NaNNet(num_classes, in_channels)
