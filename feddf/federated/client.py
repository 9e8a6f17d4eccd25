"""Client side of federated training: local SGD on tensors (+ FedProx term), batch augmentation as tensor ops, and
the uint8 -> model-input conversion and evaluation helpers shared with the server.

    python -c "import torch; from feddf.data import dataset_info; from feddf.federated.client import make_transform; \
t = make_transform(dataset_info('fashion-mnist'), 'crop-flip'); print(t(torch.zeros(2, 1, 28, 28).byte()).shape)"

Local training follows the FedDF paper's released commands: SGD lr 0.1, batch 64, no momentum, no weight decay, no
lr decay, `local_epochs` full passes over the client's data (last partial batch kept, as drop_last=False; a final
batch of one sample is skipped because BatchNorm cannot train on it). Augmentation is the CIFAR recipe (random crop
with 4 pixels of zero padding + horizontal flip, feddf.cache.augment), applied to the whole uint8 batch at once.
FedProx adds mu * (w - w_global) to each gradient: the gradient of mu/2 ||w - w_global||^2, as the paper code's
`local_prox_term`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass
class LocalSpec:
    epochs: int = 40          # paper: local_n_epochs 40
    lr: float = 0.1           # paper: --lr 0.1, no decay
    batch_size: int = 64      # paper: --batch_size 64
    momentum: float = 0.0     # paper: --momentum_factor 0
    weight_decay: float = 0.0  # paper: --weight_decay 0
    prox_mu: float = 0.0      # FedProx mu (0 = FedAvg clients)
    augment: str = "crop-flip"
    channels_last: bool = False  # kernels.py: the memory format the model and its batches train in
    logit_offset: torch.Tensor | None = None  # losses.py: (K,) added to the logits before CE (--local-loss)


def make_transform(info, augment: str = "none", channels: int | None = None, size: int | None = None):
    """The task's uint8 -> normalised float batch transform (feddf.cache.augment.BatchTransform)."""
    from feddf.cache.augment import BatchTransform

    return BatchTransform(channels=channels or info.channels, resolution=size or info.size, mean=tuple(info.mean),
                          std=tuple(info.std), augment=augment)


def local_train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, spec: LocalSpec,
                transform: Callable, gen: torch.Generator, device: torch.device | str = "cpu",
                progress: Callable[[int, int], None] | None = None, hooks=None) -> dict:
    """Train `model` in place on one client's uint8 images (n, C, H, W) + labels (n,). Returns {"loss", "steps"}.

    `transform(u8, generator)` converts + augments a batch (make_transform(info, spec.augment)). All randomness
    (shuffling, augmentation) comes from `gen`, so a client's update is a function of its seed. `hooks`
    (feddf.federated.precision.QuantizedTraining) trains at a lower precision: autocast + requantise after each step.
    """
    from feddf.federated.kernels import input_format, to_kernels
    from feddf.federated.losses import local_loss

    to_kernels(model.to(device), spec.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    anchor = [p.detach().clone() for p in model.parameters()] if spec.prox_mu > 0 else None
    n = len(labels)
    per_epoch = (n + spec.batch_size - 1) // spec.batch_size
    total, done, loss_sum = spec.epochs * per_epoch, 0, 0.0

    def prox():  # the FedProx gradient term, added between backward and the optimizer step
        if anchor is not None:
            with torch.no_grad():
                for p, p0 in zip(model.parameters(), anchor):
                    if p.grad is not None:
                        p.grad.add_(p.detach() - p0, alpha=spec.prox_mu)

    for _ in range(spec.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, spec.batch_size):
            idx = order[start:start + spec.batch_size]
            done += 1
            if len(idx) < 2 and n >= 2:  # BatchNorm in train mode needs >= 2 samples
                continue
            x, y = input_format(transform(images[idx], gen).to(device), spec.channels_last), labels[idx].to(device)
            with hooks.autocast() if hooks is not None else contextlib.nullcontext():
                loss = local_loss(model(x), y, spec.logit_offset)
            opt.zero_grad(set_to_none=True)
            if hooks is not None:
                hooks.backward_step(loss, opt, prox)
            else:
                loss.backward()
                prox()
                opt.step()
            loss_sum += float(loss.detach())
            if progress is not None:
                progress(done, total)
    return {"loss": loss_sum / max(1, done), "steps": done}


@torch.no_grad()
def predict_logits(model: nn.Module, images: torch.Tensor, transform: Callable, batch_size: int = 500,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Eval-mode logits (N, K) of uint8 images (N, C, H, W); the model's train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    out = [model(transform(images[i:i + batch_size]).to(device)).float().cpu()
           for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else float("nan")
