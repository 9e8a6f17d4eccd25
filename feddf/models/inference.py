"""Eval-time rewrites of a model that keep its function: what `--server-kernels fused` evaluates, and the teachers.

    python -c "from feddf.models import get_model; from feddf.models.inference import inference_copy; \
print(inference_copy(get_model('cnn', 10, 1)))"

`inference_copy(model)` -> an eval-mode, grad-free deep copy (the model itself is not touched) with
  - every Conv2d -> BatchNorm2d pair folded into one Conv2d (`torch.nn.utils.fusion.fuse_conv_bn_eval`, the function
    torch.fx's `fuse` calls, so the floats are those of the teachers' fx folding). A pair is found without tracing:
    adjacent children of a plain nn.Sequential (its output feeds only the next child), or the (conv, bn) attribute
    names a module lists in `fold_pairs` (the zoo's ResNet blocks: `bn1(conv1(x))`). Tracing is what this avoids:
    torch.fx patches nn.Module.__call__ for the whole process while it traces, which breaks forward passes that
    other threads run at that moment (the distillation's teacher prefetch beside a student's validation).
    Folding moves logits by float rounding (~1e-7 on the cnn); it is exact maths, not bit-exact.
  - every `nn.MaxPool2d(2)` (kernel = stride = 2, no padding, dilation 1, floor mode, no indices) as the maximum of
    its four strided views (`max_2x2`). Max is exact, so the values are the same floats; it computes no indices,
    which on the CPU makes it ~2.5x faster than max_pool2d (500 x 16 x 28 x 28 channels_last: 6 ms vs 16 ms).
Why: in eval mode BatchNorm is a per-channel affine and pooling a pass over the activations; on the cnn they cost
as much as the convolutions (profile: conv 49%, BN 29%, max-pool 18% of a 500-image forward, one thread).
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def max_2x2(x: torch.Tensor) -> torch.Tensor:
    """F.max_pool2d(x, 2) for (B, C, H, W) x, same values and memory format: max over the 4 strided views."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2  # floor mode drops an odd last row / column
    x = x[..., :h, :w]
    rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])  # (B, C, H/2, W)
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])  # (B, C, H/2, W/2)


class Max2x2(nn.Module):
    """nn.MaxPool2d(2) in eval: `max_2x2` (no indices, no parameters, nothing in the state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_2x2(x)


def inference_copy(model: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """An eval-mode, grad-free copy of `model` with BatchNorm folded and 2x2 max-pools as `max_2x2` (module doc)."""
    m = copy.deepcopy(model)
    if device is not None:
        m = m.to(device)
    m.eval().requires_grad_(False)
    fold_conv_bn(m)
    exact_pools(m)
    return m


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    # exact types: a subclass (a binarised conv, a custom norm) may compute something else under the same name
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and not bn.training
            and bn.running_mean is not None and bn.running_var is not None and conv.out_channels == bn.num_features
            and conv.weight.dtype == torch.float32 and bn.running_var.dtype == torch.float32
            and not (conv._forward_hooks or conv._forward_pre_hooks or bn._forward_hooks or bn._forward_pre_hooks))


def fold_conv_bn(model: nn.Module) -> int:
    """Fold, in place, every Conv2d -> BatchNorm2d pair found without tracing (module doc); returns how many."""
    n = 0
    for mod in list(model.modules()):
        pairs: list[tuple[str, str]] = []
        if type(mod) is nn.Sequential and not (mod._forward_hooks or mod._forward_pre_hooks):
            names = list(mod._modules)
            pairs = list(zip(names, names[1:]))
        pairs += list(getattr(mod, "fold_pairs", ()))
        for c, b in pairs:
            conv, bn = getattr(mod, c, None), getattr(mod, b, None)
            if conv is not None and bn is not None and _foldable(conv, bn):
                setattr(mod, c, fuse_conv_bn_eval(conv, bn))
                setattr(mod, b, nn.Identity())
                n += 1
    return n


def _is_max_2x2(p: nn.Module) -> bool:
    def two(v):
        return v in (2, (2, 2), [2, 2])

    return (type(p) is nn.MaxPool2d and two(p.kernel_size) and (p.stride is None or two(p.stride))
            and p.padding in (0, (0, 0)) and p.dilation in (1, (1, 1)) and not p.ceil_mode
            and not p.return_indices and not (p._forward_hooks or p._forward_pre_hooks))


def exact_pools(model: nn.Module) -> int:
    """Replace, in place, every nn.MaxPool2d(2) child by Max2x2 (the same values); returns how many."""
    n = 0
    for mod in list(model.modules()):
        for name, child in list(mod._modules.items()):
            if child is not None and _is_max_2x2(child):
                mod._modules[name] = Max2x2()
                n += 1
    return n
