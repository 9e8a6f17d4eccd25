"""The zoo of the FedDF paper behind one registry: `get_model` builds a zoo name, a `pkg.module:factory` or a
`timm:NAME` (spec.py), `check_arch` validates one without building it.

    python -c "from feddf.models.zoo import get_model; print(get_model('resnet8', 10, 1))"
"""
from __future__ import annotations

from functools import partial
from typing import Callable

from torch import nn

from feddf.errors import FeddfError
from feddf.models.cnn import SmallCNN
from feddf.models.layers import NORMS
from feddf.models.resnet import CifarResNet
from feddf.models.shufflenet import ShuffleNetV2
from feddf.models.spec import build_custom, describe_arch, is_custom, resolve_factory
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

def check_arch(name: str) -> None:
    """Validate an architecture without building it: a zoo name, an importable `pkg.module:factory`, or a timm
    model (timm installed)."""
    if is_custom(name):
        if name.startswith("timm:"):
            describe_arch(name)  # checks timm is installed and knows the model
        else:
            resolve_factory(name)
    elif name not in REGISTRY:
        raise FeddfError(f"unknown architecture {name!r}: choose one of {', '.join(MODELS)}, or give "
                         "pkg.module:factory (your own nn.Module) or timm:NAME")


def get_model(name: str, num_classes: int, in_channels: int = 3, norm: str = "bn") -> nn.Module:
    """Build `name` (a zoo name, `pkg.module:factory` or `timm:NAME`) for `num_classes` outputs and `in_channels`
    inputs; norm is bn, gn or none (passed to a custom factory only if it has a `norm` parameter)."""
    if not is_custom(name):
        check_arch(name)
    if norm not in NORMS:
        raise FeddfError(f"unknown norm {norm!r}: choose one of {', '.join(NORMS)}")
    if num_classes < 1 or in_channels < 1:
        raise FeddfError(f"bad model shape: num_classes={num_classes}, in_channels={in_channels} must be positive")
    if is_custom(name):
        return build_custom(name, num_classes, in_channels, norm)
    return REGISTRY[name](num_classes=num_classes, in_channels=in_channels, norm=norm)
