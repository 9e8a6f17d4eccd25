"""Value checks shared by every config dataclass (TrainConfig, GenConfig, GanTrainConfig, AuditConfig).

    python -c "from feddf.checks import check_types; from feddf.federated.config import TrainConfig; \
check_types(TrainConfig(alpha='x'))"

Configs arrive from click (typed), from TOML files (any TOML type) and from Python, so the dataclass itself checks
what it holds: each field's value against its annotation (`int`, `float`, `bool`, `str`, `list[str]`, `X | None`),
then the caller's range checks through `check_range(...)`, which also refuses NaN and +-inf. A TOML string such as
"false" for a boolean is refused with one line instead of being read as true; an int where a float is expected is
accepted (TOML `alpha = 1`), a bool where a number is expected is not. The Python API's keyword options are
checked against the same dataclasses (`check_options`, `merge_options`).
"""
from __future__ import annotations

import dataclasses
import math

from feddf.errors import FeddfError

MAX_INT = 2**63 - 1   # every integer ends up in int64 tensors/arrays or 64-bit seeds
MAX_SEED = 2**63 - 1  # seeds are hashed as 63-bit values: a larger seed would silently alias a smaller one
MAX_CLASSES = 100_000  # classes a label space may have (ImageNet-21k has 21 841): coverage/heads are (K,)-sized


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _kinds(annotation: str) -> tuple[set[str], bool]:
    """'float | None' -> ({'float'}, True); annotations are strings under `from __future__ import annotations`."""
    parts = {p.strip() for p in str(annotation).split("|")}
    optional = "None" in parts
    return parts - {"None"}, optional


def _matches(value, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "list[str]":
        return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    return True  # an annotation we do not check


_EXPECTED = {"bool": "true or false (a TOML boolean, not a string)", "int": "an integer", "float": "a number",
             "str": "a string", "list[str]": "a list of strings"}


def check_types(cfg) -> None:
    """Every field of the dataclass `cfg` against its annotation; ints and floats also for size and finiteness.
    Floats given as ints are converted in place (so JSON/TOML `1` and `1.0` record the same config)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        kinds, optional = _kinds(f.type)
        if value is None:
            if optional or not kinds:
                continue
            raise FeddfError(f"{_flag(f.name)} (config key {f.name}) is required: expected "
                             f"{' or '.join(_EXPECTED.get(k, k) for k in sorted(kinds))}")
        if not any(_matches(value, k) for k in kinds):
            want = " or ".join(_EXPECTED.get(k, k) for k in sorted(kinds))
            raise FeddfError(f"{_flag(f.name)} (config key {f.name}) = {value!r} is a {type(value).__name__}: "
                             f"expected {want}")
        if "float" in kinds and not isinstance(value, bool) and isinstance(value, (int, float)):
            if "int" not in kinds:
                value = float(value) if abs(value) < 1e308 else value
                setattr(cfg, f.name, value)
            if isinstance(value, float) and not math.isfinite(value):
                raise FeddfError(f"{_flag(f.name)} {value}: must be a finite number")
        if f.name == "seed":
            check_seed(_flag(f.name), value)
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
            raise FeddfError(f"{_flag(f.name)} {value}: out of range (at most {MAX_INT})")


def check_range(flag: str, value, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, fix: str = "") -> None:
    """Refuse NaN/inf and values outside [lo, hi] (open ends with lo_open/hi_open) with one line naming the flag."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        if lo is not None and hi is not None:
            where = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        elif lo is not None:
            where = f"{'>' if lo_open else '>='} {lo:g}"
        elif hi is not None:
            where = f"{'<' if hi_open else '<='} {hi:g}"
        else:
            where = "a finite number"
        raise FeddfError(f"{flag} {value}: must be {where}" + (f" ({fix})" if fix else ""))


def check_seed(flag: str, value) -> None:
    """Seeds in [0, 2^63): the noise and stream keys use 63 bits, so larger seeds would alias smaller ones."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise FeddfError(f"{flag} {value}: seeds must be integers in [0, 2^63 - 1] (larger seeds would alias "
                         "smaller ones)")


def check_options(cls, options: dict, what: str) -> None:
    """Keyword options of the Python API function feddf.<what>() must be fields of its config dataclass `cls`."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise FeddfError(f"feddf.{what}(): unknown option(s) {', '.join(unknown)}; valid options are the fields of "
                         f"{cls.__name__}: {', '.join(sorted(names))}")


def merge_options(cls, config, options: dict, what: str):
    """config (an instance of cls, or None) with the given (non-None) options replacing its fields."""
    if config is not None and not isinstance(config, cls):
        raise FeddfError(f"feddf.{what}(): config must be a {cls.__name__}, not a {type(config).__name__}")
    check_options(cls, options, what)
    return dataclasses.replace(config, **options) if config is not None else cls(**options)


def label_problem(labels, k: int) -> str:
    """'' when every class id in `labels` (int array) lies in -1..k-1 (-1 = unlabelled), else what is wrong (one
    phrase: how many, the first bad index and value). Shared by every reader of labels: datasets, caches on open,
    `feddf cache verify` and `feddf cache import`, so a label of 10^9 never sizes an array."""
    import numpy as np

    labels = np.asarray(labels)
    bad = (labels < -1) | (labels >= k)
    if not bad.any():
        return ""
    i = int(np.flatnonzero(bad)[0])
    return f"{int(bad.sum())} label(s) outside -1..{k - 1} for {k} classes (first: image {i} has label {labels[i]})"
