"""Saved classifiers: one self-describing checkpoint file per trained model, used as a labeler by gen and audit.

    python -c "from feddf.models import load_classifier; c = load_classifier('runs/demo-feddf'); print(c.meta)"

File format (a dict, loadable with `torch.load(..., weights_only=True)`): format="feddf-classifier", version=1, arch,
num_classes, in_channels, norm, mean, std, resolution, class_names, state_dict, and for `pkg.module:factory` / `timm:`
architectures `arch_info` (module file, sha256, version: feddf.models.spec.describe_arch). A `feddf train` run folder
holds one per architecture under `models/<arch>.pt`; a custom architecture reloads through the same spec, so its
module must be importable where the classifier is loaded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from feddf.checks import MAX_CLASSES
from feddf.errors import FeddfError
from feddf.utils import check_finite_weights, load_torch_file

FORMAT = "feddf-classifier"


def save_classifier(path: str | os.PathLike, model: nn.Module, *, arch: str, num_classes: int, in_channels: int,
                    norm: str, mean: Sequence[float], std: Sequence[float], resolution: int,
                    class_names: Sequence[str] | None = None, arch_info: dict | None = None) -> None:
    from feddf.models.spec import describe_arch, is_custom
    from feddf.utils import atomic_torch_save

    if arch_info is None and is_custom(arch):
        arch_info = describe_arch(arch)

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": FORMAT, "version": 1, "arch": arch, "num_classes": int(num_classes),
                       "in_channels": int(in_channels), "norm": norm, "mean": [float(m) for m in mean],
                       "std": [float(s) for s in std], "resolution": int(resolution),
                       "class_names": list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)],
                       **({"arch_info": arch_info} if arch_info else {}), "state_dict": state}, path)


@dataclass
class Classifier:
    """A trained model plus what it needs to take raw uint8 images: channels, resolution, normalisation."""

    model: nn.Module
    meta: dict

    @property
    def num_classes(self) -> int:
        return self.meta["num_classes"]

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> normalised float (B, in_channels, R, R) on the model's device."""
        device = next(self.model.parameters()).device
        x = images.to(device).float().div_(255)
        c = self.meta["in_channels"]
        if x.shape[1] != c:  # gray <-> RGB: repeat the plane, or average with luminance weights
            if c == 3 and x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            elif c == 1 and x.shape[1] == 3:
                x = (x * torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)).sum(1, keepdim=True)
            else:
                raise FeddfError(f"images with {x.shape[1]} channels cannot feed a {c}-channel classifier")
        r = self.meta["resolution"]
        if x.shape[-1] != r or x.shape[-2] != r:
            x = F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(self.meta["mean"], device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.meta["std"], device=device).view(1, -1, 1, 1)
        return (x - mean) / std

    @torch.inference_mode()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> (B, K) logits, in eval mode."""
        self.model.eval()
        return self.model(self.prepare(images))


def _resolve(path: Path, arch: str | None) -> Path:
    if path.is_dir():
        models = path / "models"
        if arch:
            cand = models / f"{arch}.pt"
            if not cand.is_file():
                raise FeddfError(f"run folder {path} has no model for architecture {arch!r} ({cand} missing)")
            return cand
        found = sorted(models.glob("*.pt")) if models.is_dir() else []
        if len(found) == 1:
            return found[0]
        if not found:
            raise FeddfError(f"{path} is neither a classifier checkpoint nor a run folder with models/*.pt")
        raise FeddfError(f"run folder {path} holds several models ({', '.join(p.stem for p in found)}): "
                         "pick one with --labeler-arch")
    if not path.is_file():
        raise FeddfError(f"classifier {path} not found: give a `feddf train` run folder or a models/<arch>.pt file")
    return path


def load_classifier(path: str | os.PathLike, arch: str | None = None, device: str | torch.device = "cpu") -> Classifier:
    """Load a `save_classifier` file, or the model of a `feddf train` run folder (its only one, or `arch`)."""
    from feddf.models.zoo import get_model

    file = _resolve(Path(path).expanduser(), arch)
    ckpt = load_torch_file(file, "classifier", "save it again with `feddf train` or feddf.models.save_classifier")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise FeddfError(f"{file} is not a feddf classifier checkpoint (written by `feddf train` / save_classifier)")
    k = ckpt.get("num_classes")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_CLASSES or \
            not {"arch", "in_channels", "norm"} <= set(ckpt):  # a tampered header must not size a huge model
        raise FeddfError(f"{file} is a damaged feddf classifier checkpoint (num_classes {k!r}, expected 1.."
                         f"{MAX_CLASSES}, with arch, in_channels and norm): save it again")
    try:
        model = get_model(ckpt["arch"], ckpt["num_classes"], ckpt["in_channels"], ckpt["norm"])
    except FeddfError as e:  # a custom architecture whose module is not importable here
        raise FeddfError(f"classifier {file} needs architecture {ckpt['arch']!r}, which cannot be built here: "
                         f"{str(e).split(': ', 1)[-1]}") from None
    if not isinstance(ckpt.get("state_dict"), dict):
        raise FeddfError(f"{file} is a feddf classifier checkpoint without a state_dict: the file is damaged")
    check_finite_weights(ckpt["state_dict"], f"classifier {file}")  # a diverged run must not label or be audited
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise FeddfError(f"classifier {file} does not match architecture {ckpt['arch']!r}: {str(e)[:300]}") from None
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    meta["path"] = str(file)
    return Classifier(model.to(device).eval(), meta)
