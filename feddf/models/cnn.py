"""`cnn`: a small, fast network for 28×28 (and 32×32) inputs — two 5×5 conv blocks and two linear layers, ~0.2 M
parameters, for quick federated runs on a CPU.

    python -c "from feddf.models import get_model; print(get_model('cnn', 10, 1))"
"""
from __future__ import annotations

import torch
from torch import nn

from feddf.models.layers import norm2d


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1, norm: str = "bn"):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2, bias=norm == "none"), norm2d(norm, 32), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 28 -> 14 (32 -> 16)
            nn.Conv2d(32, 64, 5, padding=2, bias=norm == "none"), norm2d(norm, 64), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 14 -> 7 (16 -> 8)
            nn.AdaptiveAvgPool2d(4))  # -> (B, 64, 4, 4) whatever the input size
        self.classifier = nn.Sequential(nn.Linear(64 * 16, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return self.classifier(self.features(x).flatten(1))
