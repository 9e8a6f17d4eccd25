"""Small shared helpers: versions for provenance, atomic writes, file hashes, device and seed handling.

    python -c "from feddf.utils import versions; print(versions())"
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any


def versions() -> dict[str, str]:
    """Versions of everything that can change a result; recorded in every output (cache attrs, run folders).

    torch and numpy are imported for their exact build strings (e.g. 2.14.1+cu130); the others are read from package
    metadata (importing torchvision alone costs seconds)."""
    from importlib import metadata

    import numpy
    import torch

    from feddf import __version__

    out = {"feddf": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "numpy": numpy.__version__}
    for dist in ("torchvision", "h5py"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover - both are dependencies
            pass
    return out


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths and tuples to plain JSON types (configs are dataclasses)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write via a temp file in the same folder + rename, so a reader never sees half a file (kill -9 safe)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give outputs the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n").encode())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """torch.save through a temp file + rename (checkpoints are never half-written)."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def sha256_file(path: str | os.PathLike, limit: int | None = None) -> str:
    """Hex sha256 of a file (or of its first `limit` bytes, for fast fingerprints of huge caches)."""
    h = hashlib.sha256()
    remaining = limit
    with open(path, "rb") as f:
        while True:
            n = 1 << 20 if remaining is None else min(1 << 20, remaining)
            if n == 0:
                break
            block = f.read(n)
            if not block:
                break
            h.update(block)
            if remaining is not None:
                remaining -= len(block)
    return h.hexdigest()


def resolve_device(name: str = "auto"):
    """'auto' -> cuda if available else cpu; anything else is passed to torch.device (bad names raise FeddfError)."""
    import torch

    from feddf.errors import FeddfError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise FeddfError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FeddfError(f"device {name!r} requested but CUDA is not available here: use --device cpu")
    return dev


def check_can_create(path: str | os.PathLike, flag: str = "--out", file: bool = False) -> None:
    """Fail fast (FeddfError, nothing created) when `path` could not be created as a folder (or, with file=True, as a
    file): the nearest existing ancestor is not a folder or not writable, or `path` exists as the wrong kind. Long
    jobs check before they start, so a bad --out does not cost the whole run."""
    from feddf.errors import FeddfError

    p = Path(path)
    if p.exists() and (p.is_dir() == file):
        raise FeddfError(f"{flag} {p} is a {'folder' if file else 'file'}: choose another {flag}")
    folder = p.absolute().parent if file or not p.exists() else p
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise FeddfError(f"{flag} {p} cannot be created: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FeddfError(f"{flag} {p} cannot be created: {folder} is not writable")


def load_torch_file(path: str | os.PathLike, what: str, fix: str = "re-export it") -> Any:
    """torch.load(path, weights_only=True) whose every failure is one FeddfError line naming `what` and the fix:
    an empty file, an unreadable path, a pickle of Python objects the safe loader refuses (torch's own advice,
    weights_only=False, would run the file's code), or anything else torch.load raises."""
    import pickle
    import zipfile

    import torch

    from feddf.errors import FeddfError

    p = Path(path)
    try:
        if p.is_file() and p.stat().st_size == 0:
            raise FeddfError(f"{what} {p} is empty (0 bytes): the copy or save was cut short; {fix}")
        return torch.load(p, map_location="cpu", weights_only=True)
    except FeddfError:
        raise
    except FileNotFoundError:
        raise FeddfError(f"{what} {p} does not exist") from None
    except OSError as e:
        raise FeddfError(f"cannot read {what} {p}: {e.strerror or type(e).__name__}; {fix}") from None
    except Exception as e:  # noqa: BLE001 - a damaged zip, a foreign format: one line, never a traceback
        # a class or function the safe loader refused, inside a real torch.save archive (zip) rather than junk bytes
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e) and zipfile.is_zipfile(p):
            raise FeddfError(f"{what} {p} is not a plain state_dict / tensors-only checkpoint (it pickles Python "
                             "objects, which feddf never loads): re-save only its tensors, "
                             f"torch.save(model.state_dict(), PATH); {fix}") from None
        first = str(e).splitlines()[0][:160] if str(e).strip() else "no details"
        if isinstance(e, pickle.UnpicklingError) or "weights_only" in first:  # never torch's weights_only advice
            first = "its bytes are not a valid pickle"
        raise FeddfError(f"cannot read {what} {p}: not a readable PyTorch weights file ({type(e).__name__}: "
                         f"{first}); {fix}") from None


def check_finite_weights(state: dict, what: str,
                         fix: str = "the weights are broken (a diverged or corrupted training run); use another "
                                    "checkpoint") -> None:
    """Refuse a state_dict holding NaN/inf (a diverged training run, a broken export): every output would be
    garbage. One line naming `what`, the first bad tensor and `fix`."""
    import torch

    from feddf.errors import FeddfError

    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
            bad = int((~torch.isfinite(v)).sum())
            raise FeddfError(f"{what}: tensor {k!r} holds {bad} NaN/inf value(s) of {v.numel()}: {fix}")
