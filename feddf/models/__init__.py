"""The model zoo of the FedDF paper behind one registry, plus saved-classifier helpers.

    python -c "from feddf.models import get_model; m = get_model('resnet8', 10, 1); print(sum(p.numel() for p in m.parameters()))"
"""
from __future__ import annotations

from functools import partial
from typing import Callable

from torch import nn

from feddf.errors import FeddfError
from feddf.models.classifier import Classifier, load_classifier, save_classifier
from feddf.models.cnn import SmallCNN
from feddf.models.layers import NORMS
from feddf.models.resnet import CifarResNet
from feddf.models.shufflenet import ShuffleNetV2
from feddf.models.vgg import VGG9

REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "resnet8": partial(CifarResNet, 8),
    "resnet20": partial(CifarResNet, 20),
    "resnet32": partial(CifarResNet, 32),
    "vgg9": VGG9,
    "shufflenetv2": ShuffleNetV2,
    "cnn": SmallCNN,
}
MODELS = tuple(REGISTRY)

__all__ = ["MODELS", "NORMS", "Classifier", "get_model", "load_classifier", "save_classifier"]


def get_model(name: str, num_classes: int, in_channels: int = 3, norm: str = "bn") -> nn.Module:
    """Build `name` for `num_classes` outputs and `in_channels` inputs (1 or 3); norm is bn, gn or none."""
    if name not in REGISTRY:
        raise FeddfError(f"unknown architecture {name!r}: choose one of {', '.join(MODELS)}")
    if norm not in NORMS:
        raise FeddfError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")
    if num_classes < 1 or in_channels < 1:
        raise FeddfError(f"bad model shape: num_classes={num_classes}, in_channels={in_channels} must be positive")
    return REGISTRY[name](num_classes=num_classes, in_channels=in_channels, norm=norm)
