"""ShuffleNetV2 (Ma et al. 2018) adapted to 32×32 inputs: a 3×3 stride-1 stem and no max-pool (the usual CIFAR
adaptation), stages of 116/232/464 channels with 4/8/4 units, a 1×1 conv to 1024, global pooling.

    python -c "from feddf.models import get_model; print(get_model('shufflenetv2', 10, 3))"
"""
from __future__ import annotations

import torch
from torch import nn

from feddf.models.layers import norm2d


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape  # (B, C, H, W) -> interleave the two branches' channels
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def _conv_bn_relu(cin: int, cout: int, norm: str, k: int = 1, stride: int = 1, groups: int = 1, relu: bool = True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), norm2d(norm, cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str):
        super().__init__()
        self.stride = stride
        mid = cout // 2
        b2_in = cin if stride > 1 else cin // 2
        if stride > 1:  # down-sampling unit: both branches see the whole input
            self.branch1 = nn.Sequential(_conv_bn_relu(cin, cin, norm, 3, stride, groups=cin, relu=False),
                                         _conv_bn_relu(cin, mid, norm))
        self.branch2 = nn.Sequential(_conv_bn_relu(b2_in, mid, norm),
                                     _conv_bn_relu(mid, mid, norm, 3, stride, groups=mid, relu=False),
                                     _conv_bn_relu(mid, mid, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)  # channel split
            out = torch.cat([a, self.branch2(b)], 1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, norm: str = "bn",
                 stage_channels=(116, 232, 464), stage_units=(4, 8, 4)):
        super().__init__()
        self.stem = _conv_bn_relu(in_channels, 24, norm, 3)
        units, cin = [], 24
        for cout, n in zip(stage_channels, stage_units):
            for i in range(n):
                units.append(ShuffleUnit(cin, cout, 2 if i == 0 else 1, norm))
                cin = cout
        self.stages = nn.Sequential(*units)
        self.head = _conv_bn_relu(cin, 1024, norm)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        x = self.head(self.stages(self.stem(x)))
        return self.fc(x.mean((2, 3)))  # global average pool; a plain mean keeps vmap fast (see resnet.py)
