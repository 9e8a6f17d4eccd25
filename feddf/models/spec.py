"""Bring-your-own architectures: `pkg.module:factory` and `timm:NAME` specs next to the zoo names.

    python -c "from feddf.models import get_model; print(get_model('tests.custom_models:build', 10, 1))"

`pkg.module:factory` imports `pkg.module` (the working directory is searched too, as uvicorn/gunicorn do, so a
module next to the command needs no install) and calls `factory(num_classes, in_channels)`; `norm=` is passed only
when the factory names a `norm` parameter. `timm:NAME` calls `timm.create_model(NAME, pretrained=False, ...)`: weights
are never downloaded. `describe_arch(spec)` is what a run folder records: the spec, the module file and its sha256,
and the version of the package it came from, so a result can be traced to the exact code that produced it.
`check_output` runs one forward pass so a model returning a tuple/dict or the wrong shape fails with one line before
any training starts.
"""
from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from typing import Callable

from torch import nn

from feddf.errors import FeddfError

_CUSTOM = re.compile(r"^(?P<module>[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")


def is_custom(spec: str) -> bool:
    """True for `pkg.module:factory` and `timm:NAME` (anything with a ':'), False for zoo names."""
    return ":" in spec


def _import(module: str, spec: str):
    """Import `module`, also from the working directory (a user's module beside the command)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        missing = e.name or module
        cwd = os.getcwd()
        if module.split(".")[0] == missing.split(".")[0] and cwd not in sys.path:
            sys.path.append(cwd)  # appended: never shadows an installed package
            try:
                return importlib.import_module(module)
            except ModuleNotFoundError:
                pass
        raise FeddfError(f"--arch {spec}: cannot import module {missing!r}: install it, run from the folder that "
                         "holds it or add that folder to PYTHONPATH") from None
    except Exception as e:  # noqa: BLE001 - any error in user code is reported in one line
        raise FeddfError(f"--arch {spec}: importing {module} failed: {type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''}") from None


def resolve_factory(spec: str) -> Callable[..., nn.Module]:
    """`pkg.module:factory` -> the factory callable (imported, not called)."""
    m = _CUSTOM.match(spec.strip())
    if not m:
        raise FeddfError(f"--arch {spec!r}: not a zoo name and not pkg.module:factory (e.g. mypkg.nets:build) or "
                         "timm:NAME")
    obj = _import(m.group("module"), spec)
    for part in m.group("attr").split("."):
        if not hasattr(obj, part):
            raise FeddfError(f"--arch {spec}: module {m.group('module')} has no attribute {m.group('attr')!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise FeddfError(f"--arch {spec}: {m.group('attr')} is a {type(obj).__name__}, not a callable "
                         "factory(num_classes, in_channels)")
    return obj


def _timm(name: str, spec: str):
    try:
        import timm
    except ImportError:
        raise FeddfError(f"--arch {spec}: timm is not installed: `pip install feddf[timm]` (or pip install timm)") \
            from None
    if not timm.is_model(name):
        raise FeddfError(f"--arch {spec}: timm has no model {name!r} (see timm.list_models())")
    return timm


def accepts_norm(factory: Callable) -> bool:
    try:
        return "norm" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def build_custom(spec: str, num_classes: int, in_channels: int, norm: str) -> nn.Module:
    """Build a `pkg.module:factory` or `timm:NAME` model; anything but an nn.Module is one clear line."""
    kind, _, rest = spec.partition(":")
    if kind == "timm":
        timm = _timm(rest, spec)
        try:  # pretrained=False: feddf never downloads weights
            model = timm.create_model(rest, pretrained=False, num_classes=num_classes, in_chans=in_channels)
        except Exception as e:  # noqa: BLE001
            raise FeddfError(f"--arch {spec}: timm.create_model failed: {type(e).__name__}: {str(e)[:200]}") from None
    else:
        factory = resolve_factory(spec)
        kw = {"norm": norm} if accepts_norm(factory) else {}
        try:
            model = factory(num_classes, in_channels, **kw)
        except Exception as e:  # noqa: BLE001 - user code
            raise FeddfError(f"--arch {spec}: {rest}({num_classes}, {in_channels}"
                             f"{', norm=' + repr(norm) if kw else ''}) raised {type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200] if str(e) else ''}") from None
    if not isinstance(model, nn.Module):
        raise FeddfError(f"--arch {spec}: the factory returned a {type(model).__name__}, not a torch.nn.Module: "
                         "return the model itself")
    return model


def check_output(model: nn.Module, spec: str, num_classes: int, in_channels: int, resolution: int) -> None:
    """Trainable parameters, and one eval-mode forward pass of 2 images: the output must be a (2, num_classes)
    floating tensor."""
    import torch

    if not any(p.requires_grad for p in model.parameters()):  # nothing to train, and no device to read off it
        raise FeddfError(f"--arch {spec}: the model has no trainable parameters: return an nn.Module whose layers "
                         "are registered (attributes or nn.ModuleList, not a plain list) and not frozen")
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, in_channels, resolution, resolution))
    except Exception as e:  # noqa: BLE001 - user code
        raise FeddfError(f"--arch {spec}: a forward pass on (2, {in_channels}, {resolution}, {resolution}) inputs "
                         f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}") from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor):
        raise FeddfError(f"--arch {spec}: the model returns a {type(out).__name__}; feddf needs a (batch, "
                         f"{num_classes}) logits tensor: return only the logits (e.g. out[0] or out['logits'])")
    if out.shape != (2, num_classes) or not out.is_floating_point():
        raise FeddfError(f"--arch {spec}: the model returns a {out.dtype} tensor of shape {tuple(out.shape)}; "
                         f"feddf needs float logits of shape (batch, {num_classes})")


def describe_arch(spec: str) -> dict:
    """Provenance of an architecture: what config.json and saved classifiers record."""
    from feddf.utils import sha256_file

    if not is_custom(spec):
        from feddf import __version__

        return {"spec": spec, "kind": "zoo", "version": __version__}
    kind, _, rest = spec.partition(":")
    if kind == "timm":
        timm = _timm(rest, spec)
        return {"spec": spec, "kind": "timm", "module": "timm", "version": timm.__version__, "pretrained": False}
    factory = resolve_factory(spec)
    mod = sys.modules.get(getattr(factory, "__module__", "") or "") or importlib.import_module(spec.split(":")[0])
    file = getattr(mod, "__file__", None)
    return {"spec": spec, "kind": "custom", "module": mod.__name__, "file": file,
            "sha256": sha256_file(file) if file and os.path.isfile(file) else None,
            "version": _version(mod.__name__), "norm_passed": accepts_norm(factory)}


def _version(module: str) -> str | None:
    """`__version__` of the top-level package, else the version of the distribution that installed it."""
    top = module.split(".")[0]
    v = getattr(sys.modules.get(top), "__version__", None)
    if v is not None:
        return str(v)
    from importlib import metadata

    for dist in metadata.packages_distributions().get(top, []):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None
