"""`cnn`: a small, fast network for 28×28 (and 32×32) inputs — three 3×3 conv blocks (16, 32, 64 channels) and two
linear layers, ~0.1 M parameters and ~4 MFLOP per 28 px image, for quick federated runs on a CPU.

    python -c "from feddf.models import get_model; print(get_model('cnn', 10, 1))"

Why this shape: FedDF's server evaluates every client model on every distillation batch, so on a CPU the teachers'
forward cost dominates a round; 3×3 convs at narrow widths keep it ~5× below a LeNet-style 5×5/32/64 network while
reaching ~90% on Fashion-MNIST.
"""
from __future__ import annotations

import torch
from torch import nn

from feddf.models.layers import norm2d


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 1, norm: str = "bn"):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for cout in (16, 32, 64):  # 28 -> 14 -> 7 -> 3 (32 -> 16 -> 8 -> 4)
            # pool before ReLU: max and ReLU commute exactly (ReLU is monotone), so the outputs and every gradient
            # are the same floats as conv-norm-ReLU-pool, and the ReLU pass runs on a 4x smaller tensor
            # (tests/test_models.py checks the equality against the other order)
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=norm == "none"), norm2d(norm, cout),
                       nn.MaxPool2d(2), nn.ReLU(inplace=True)]
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(3))  # -> (B, 64, 3, 3) whatever the input size
        self.classifier = nn.Sequential(nn.Linear(64 * 9, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        return self.classifier(self.features(x).flatten(1))
