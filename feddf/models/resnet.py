"""CIFAR ResNets of depth 6n+2 (He et al. 2016, §4.2): resnet8 (n=1), resnet20 (n=3), resnet32 (n=5).

    python -c "from feddf.models import get_model; print(get_model('resnet20', 10, 3))"

Three stages of n basic blocks at 16/32/64 channels; stride-2 1×1-conv projection shortcuts where the shape changes
(option B, as in the FedDF authors' code). Global average pooling makes it work at 28 and 32 px alike.
"""
from __future__ import annotations

import torch
from torch import nn

from feddf.models.layers import norm2d


class BasicBlock(nn.Module):
    fold_pairs = (("conv1", "bn1"), ("conv2", "bn2"))  # forward computes bn(conv(x)): inference.fold_conv_bn

    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm2d(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm2d(norm, cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm2d(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    fold_pairs = (("conv1", "bn1"),)  # forward computes bn1(conv1(x)): inference.fold_conv_bn

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, norm: str = "bn"):
        super().__init__()
        assert (depth - 2) % 6 == 0, "CIFAR ResNet depth must be 6n+2"
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = norm2d(norm, 16)
        self.relu = nn.ReLU(inplace=True)
        layers, cin = [], 16
        for i, cout in enumerate((16, 32, 64)):
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1, norm))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        x = self.relu(self.bn1(self.conv1(x)))
        # Global average pool as a plain mean: torch.func.vmap (the stacked teachers on CUDA) has no batching rule
        # for AdaptiveAvgPool2d's as_strided_ and falls back to a per-teacher loop.
        x = self.layers(x).mean((2, 3))  # (B, 64)
        return self.fc(x)
