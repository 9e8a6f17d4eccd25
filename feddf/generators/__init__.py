"""Generators for `feddf gen`, behind a string registry: `get_generator(name, ...) -> LoadedGenerator`.

    python -c "from feddf.generators import GENERATORS; print(sorted(GENERATORS))"

Adding a generator = one file with a `load_<kind>(name, **options) -> LoadedGenerator` function + one registry line.
A named DCGAN = a weights file in feddf/generators/weights/ + the DCGAN loader (one `_dcgan(...)` line below, as for
`dcgan-fashion-mnist`). Loaders are imported lazily so `feddf --help` never imports torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from feddf.errors import FeddfError

WEIGHTS_DIR = Path(__file__).with_name("weights")


@dataclass(frozen=True)
class GeneratorEntry:
    name: str
    loader: str                    # "module:function" inside feddf.generators
    description: str
    options: dict = field(default_factory=dict)   # fixed keyword arguments for the loader (e.g. a shipped checkpoint)
    default_resolution: int = 32


GENERATORS: dict[str, GeneratorEntry] = {}


def register(entry: GeneratorEntry) -> None:
    GENERATORS[entry.name] = entry


def _dcgan(name: str, weights_file: str, description: str, default_resolution: int = 32,
           label_names: list[str] | None = None) -> GeneratorEntry:
    """A named, shipped DCGAN: a state_dict in feddf/generators/weights/ read by the dcgan loader."""
    return GeneratorEntry(name, "dcgan:load_dcgan", description,
                          {"checkpoint": str(WEIGHTS_DIR / weights_file), "label_names": label_names,
                           "default_resolution": default_resolution}, default_resolution)


for _res in (128, 256, 512):
    register(GeneratorEntry(f"biggan-deep-{_res}", "biggan:load_biggan",
                            f"BigGAN-deep {_res}px, class-conditional on ImageNet (--weights DIR or --random-weights)"))
register(GeneratorEntry("dcgan", "dcgan:load_dcgan", "pytorch/examples DCGAN state_dict (--checkpoint FILE), 64 or "
                                                     "32 px, 1 or 3 channels, unconditional"))
register(GeneratorEntry("torchscript", "torchscript:load_torchscript",
                        "any TorchScript generator z (B, z_dim) -> [-1, 1] images (--checkpoint FILE; runs its code)"))
register(_dcgan("dcgan-fashion-mnist", "dcgan-fashion-mnist.pth", "DCGAN trained on Fashion-MNIST (shipped)",
                default_resolution=28))


def get_generator(name: str, *, weights: str | None = None, checkpoint: str | None = None,
                  random_weights: bool = False, z_dim: int | None = None):
    """Load a registered generator on CPU (the sampler moves it). Raises FeddfError for unknown names, missing or
    corrupt weights and mismatched checkpoints."""
    entry = GENERATORS.get(name)
    if entry is None:
        raise FeddfError(f"unknown generator {name!r}: use one of {', '.join(sorted(GENERATORS))}")
    opts = dict(entry.options)
    if "checkpoint" in opts:  # a shipped checkpoint: --checkpoint may override it, else it must be installed
        if checkpoint is None and not random_weights and not Path(opts["checkpoint"]).is_file():
            raise FeddfError(f"the weights of {name} are not installed (expected {opts['checkpoint']}); pass "
                             "--checkpoint FILE or reinstall feddf")
        opts["checkpoint"] = checkpoint or opts["checkpoint"]
    elif checkpoint is not None:
        opts["checkpoint"] = checkpoint
    if weights is not None:
        if not name.startswith("biggan"):
            raise FeddfError(f"--weights DIR is for BigGAN; {name} takes --checkpoint FILE")
        opts["weights"] = weights
    if checkpoint is not None and name.startswith("biggan"):
        raise FeddfError("BigGAN takes --weights DIR (config.json + pytorch_model.bin), not --checkpoint")
    if z_dim is not None:
        opts["z_dim"] = z_dim
    module, fn = entry.loader.split(":")
    loader = getattr(importlib.import_module(f"{__name__}.{module}"), fn)
    gen = loader(name, random_weights=random_weights, **opts)
    gen.default_resolution = entry.default_resolution
    return gen
