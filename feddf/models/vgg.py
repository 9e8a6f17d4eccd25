"""VGG-9 as used in FedMA/FedDF experiments: six 3×3 convs (32, 64, M, 128, 128, M, 256, 256, M) and three linear
layers (4096 → 512 → 512 → K).

    python -c "from feddf.models import get_model; print(get_model('vgg9', 10, 3))"

A 4×4 adaptive average pool before the classifier keeps the 4096-wide first linear layer at 32 px (where it is the
identity) and lets the same network take 28 px inputs (3×3 feature maps).
"""
from __future__ import annotations

import torch
from torch import nn

from feddf.models.layers import norm2d

CFG = (32, 64, "M", 128, 128, "M", 256, 256, "M")


class VGG9(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, norm: str = "bn"):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for v in CFG:
            if v == "M":  # pool before the block's ReLU: the same floats (see cnn.py), a 4x smaller ReLU pass
                layers.insert(len(layers) - 1, nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1, bias=norm == "none"), norm2d(norm, v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(
            nn.Linear(256 * 16, 512), nn.ReLU(inplace=True),
            nn.Linear(512, 512), nn.ReLU(inplace=True),
            nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return self.classifier(self.pool(self.features(x)).flatten(1))
