"""DCGAN generators in the pytorch/examples format (unconditional: every label is -1).

    feddf gen --generator dcgan --checkpoint netG_epoch_24.pth --n 1000 --out /tmp/d.h5

The checkpoint is `torch.save(netG.state_dict(), ...)` of the pytorch/examples `Generator`: an `nn.Sequential` called
`main` (keys `main.0.weight` ... `main.12.weight`, BatchNorm keys at 1, 4, 7, 10). Two layouts are recognised from the
shapes, nz/ngf/nc are read from them too:
    64x64 (the example): ConvT(nz, 8ngf, 4, 1, 0) 4px -> 8 -> 16 -> 32 -> ConvT(ngf, nc, 4, 2, 1) 64px, tanh
    32x32 variant:       same first four layers, then ConvT(ngf, nc, 1, 1, 0) at 32px, tanh
Class-conditional variant (`feddf gan-train --conditional`, Mirza & Osindero 2014): the same layers on the input
concat(z, one_hot(y)) (main.0 has nz + K input channels) plus a `num_classes` buffer that marks the checkpoint as
conditional; `feddf gen --generator dcgan --checkpoint netG.pth --classes all` then deals the K classes evenly and
records them as the cache's labels.
`Generator(nz, ngf, nc, size)` below builds either with exactly these keys, so a trainer (`feddf gan-train`) can save a
state_dict that this loader reads. Named generators (e.g. `dcgan-fashion-mnist`) are a weights file + this loader
(see feddf/generators/__init__.py). Sampling runs in eval mode (BatchNorm running statistics): per-image outputs then do
not depend on the batch, which train-mode batch statistics would break.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from feddf.errors import FeddfError
from feddf.generators.base import LoadedGenerator, load_state_dict_strict, load_weights_file

SIZES = (32, 64)


class Generator(nn.Module):
    """The pytorch/examples DCGAN generator (size 64) or its 32x32 variant: z (B, nz) or (B, nz, 1, 1) -> (B, nc, size,
    size) in [-1, 1]. Its state_dict has the pytorch/examples key names (main.0.weight, ...)."""

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3, size: int = 64):
        super().__init__()
        if size not in SIZES:
            raise FeddfError(f"DCGAN size {size} is not supported: use one of {SIZES}")
        self.nz, self.ngf, self.nc, self.size = nz, ngf, nc, size
        last = (nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False) if size == 64
                else nn.ConvTranspose2d(ngf, nc, 1, 1, 0, bias=False))
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),  # 4px
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),  # 8px
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),  # 16px
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),  # 32px
            last, nn.Tanh())  # 64px (4x4, stride 2) or 32px (1x1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 2:  # (B, nz) -> (B, nz, 1, 1)
            z = z[:, :, None, None]
        return self.main(z)


class ConditionalGenerator(Generator):
    """(z (B, nz), labels int64 (B,)) -> (B, nc, size, size): the Generator on concat(z, one_hot(labels, K))."""

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3, size: int = 64, num_classes: int = 10):
        super().__init__(nz + num_classes, ngf, nc, size)
        self.nz, self.k = nz, num_classes
        self.register_buffer("num_classes", torch.tensor(num_classes, dtype=torch.long))  # marks the checkpoint

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        onehot = torch.nn.functional.one_hot(labels.long(), self.k).to(z.dtype)
        return super().forward(torch.cat([z.flatten(1), onehot], 1))


def random_init(model: Generator) -> Generator:
    """Variance-preserving random weights (He init by each layer's real fan-in: in_channels x taps per output pixel),
    BN at identity. The pytorch/examples init (N(0, 0.02)) or PyTorch's default give near-constant images without
    training; this gives varied ones, which tests and benchmarks of the pipeline need."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.ConvTranspose2d):
                # taps per output pixel: k*k / stride^2 (4x4 stride 2 -> 4; 4x4 on a 1x1 input -> 1; 1x1 -> 1)
                taps = 1 if m.stride[0] == 1 else (m.kernel_size[0] // m.stride[0]) ** 2
                gain = 1.0 if m is model.main[12] else 2.0  # last layer feeds tanh, the others ReLU
                m.weight.normal_(0.0, (gain / (m.in_channels * taps)) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
    return model


def detect_architecture(state: dict, path: str) -> dict:
    """nz, ngf, nc, size from a pytorch/examples state_dict (keys main.0.weight, main.12.weight)."""
    if any(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    first, last = state.get("main.0.weight"), state.get("main.12.weight")
    if first is None or last is None or first.dim() != 4 or last.dim() != 4:
        keys = ", ".join(sorted(state)[:6]) + (" ..." if len(state) > 6 else "")
        raise FeddfError(f"{path} is not a pytorch/examples DCGAN generator state_dict: expected keys main.0.weight "
                         f"and main.12.weight (4-D), found {keys or 'no keys'}")
    nz, ngf, nc, k = int(first.shape[0]), int(last.shape[0]), int(last.shape[1]), int(last.shape[2])
    classes = int(state["num_classes"]) if "num_classes" in state else 0  # ConditionalGenerator
    nz -= classes
    if k not in (1, 4):
        raise FeddfError(f"{path}: main.12.weight has kernel {k}; expected 4 (64x64 DCGAN) or 1 (32x32 variant)")
    if nc not in (1, 3):
        raise FeddfError(f"{path}: the generator makes {nc} channels; expected 1 or 3")
    return {"nz": nz, "ngf": ngf, "nc": nc, "size": 64 if k == 4 else 32, "num_classes": classes, "state": state}


class DCGANLoaded(LoadedGenerator):
    def forward(self, z, labels, truncation):
        if self.num_classes:
            return self.module(z, labels)  # conditional: class ids (B,) from --classes
        return self.module(z)  # z (B, nz) -> (B, nc, size, size)


def load_dcgan(name: str, *, checkpoint: str | None = None, random_weights: bool = False,
               default_resolution: int = 32, label_names=None, **_) -> DCGANLoaded:
    from feddf.utils import sha256_file

    if random_weights:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = random_init(Generator(100, 64, 3, 64))
        arch, weights_hash = {"nz": 100, "ngf": 64, "nc": 3, "size": 64, "num_classes": 0}, "random"
    else:
        if checkpoint is None:
            raise FeddfError(f"{name} needs --checkpoint FILE (a pytorch/examples netG state_dict), or "
                             "--random-weights for tests")
        path = Path(checkpoint)
        if not path.is_file():
            raise FeddfError(f"DCGAN checkpoint {path} does not exist; pass the netG_epoch_N.pth file to --checkpoint")
        arch = detect_architecture(load_weights_file(path, "DCGAN checkpoint"), str(path))
        model = (ConditionalGenerator(arch["nz"], arch["ngf"], arch["nc"], arch["size"], arch["num_classes"])
                 if arch["num_classes"] else Generator(arch["nz"], arch["ngf"], arch["nc"], arch["size"]))
        if arch["num_classes"] and label_names is None:
            label_names = _sidecar_names(path, arch["num_classes"])
        load_state_dict_strict(model, arch.pop("state"), str(path))
        weights_hash = "sha256:" + sha256_file(path)
    model.eval()
    return DCGANLoaded(name=name, module=model, z_dim=arch["nz"], channels=arch["nc"], num_classes=arch["num_classes"],
                       native_resolution=arch["size"], weights_hash=weights_hash, random_weights=random_weights,
                       default_resolution=default_resolution, label_names=label_names,
                       provenance={"architecture": {k: arch[k] for k in ("nz", "ngf", "nc", "size", "num_classes")}})


def _sidecar_names(path: Path, k: int) -> list[str] | None:
    """Class names of a conditional checkpoint: `class_names` in the gan-train run's config.json or the shipped
    weights' provenance JSON next to it, when present and of the right length."""
    import json

    for meta in (path.parent / "config.json", path.with_suffix(".json")):
        try:
            names = json.loads(meta.read_text()).get("class_names")
        except (OSError, ValueError):
            continue
        if isinstance(names, list) and len(names) == k:
            return [str(x) for x in names]
    return None
