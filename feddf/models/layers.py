"""Normalisation choice shared by every architecture: BatchNorm (default), GroupNorm, or none.

    python -c "from feddf.models.layers import norm2d; print(norm2d('gn', 64))"

GroupNorm uses 2 groups, the setting FL papers use to avoid BatchNorm's non-iid statistics problem (Hsieh et al. 2020).
"""
from __future__ import annotations

from torch import nn

from feddf.errors import FeddfError

NORMS = ("bn", "gn", "none")
GN_GROUPS = 2


def norm2d(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(GN_GROUPS if channels % GN_GROUPS == 0 else 1, channels)
    if kind == "none":
        return nn.Identity()
    raise FeddfError(f"unknown norm {kind!r}: choose one of {', '.join(NORMS)}")
