"""Grid files of `feddf sweep`: a base configuration, the axes whose product is run, and named method option sets.

    python -c "from feddf.sweep.grid import load_grid; g = load_grid('benchmarks/grids/fair.toml'); \
print(len(g.runs), g.runs[0].name)"

```toml
[base]                      # `feddf train` keys shared by every run
dataset = "fashion-mnist"
arch = "cnn"
rounds = 12

[grid]                      # every combination of these values is run (in this order, the last varying fastest)
alpha = [0.1, 1.0]
seed = [0, 1, 2]            # the table reports mean ± std over the `seed` axis

[methods.fedavg]            # one option set per method (any `feddf train` keys), crossed with the grid
aggregator = "fedavg"
[methods.feddf-noise]
label = "FedDF + noise"     # the table's name of the method (default: its key)
aggregator = "feddf"
distill_source = "noise"

[sweep]                     # defaults of the command's own options
out = "runs/my-sweep"
target_acc = 0.8
```

A run's folder is `<out>/<method>-<key><value>-...` (e.g. `fedavg-alpha0.1-seed0`). `out`, `resume` and `progress`
belong to the sweep and may not be set in the file; a key set by a method may not also be a grid axis.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from feddf.errors import FeddfError

SECTIONS = ("base", "grid", "methods", "sweep")
SWEEP_KEYS = ("out", "target_acc", "parallel")
OWNED = ("out", "resume", "progress")  # the sweep sets these for every run
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class RunSpec:
    name: str                 # the run's folder under --out
    method: str               # key of its [methods.X] table ("run" when the file has none)
    label: str                # the method's name in the table
    axes: dict                # grid key -> this run's value
    options: dict             # its `feddf train` options: base, then the method's, then the axes' values


@dataclass
class Grid:
    path: Path
    axes: list[str]
    runs: list[RunSpec]
    sweep: dict = field(default_factory=dict)  # [sweep]: out, target_acc, parallel

    def rounds(self, spec: RunSpec) -> int:
        from feddf.federated.config import TrainConfig

        return int(spec.options.get("rounds", TrainConfig.rounds))


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file: every run's configuration is validated, one line for the first bad one."""
    from feddf.federated.config import read_config

    p = Path(path)
    if p.suffix == ".json":
        raise FeddfError(f"{p}: a grid file is TOML (docs/sweeps.md)")
    data = read_config(p, str(p))
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise FeddfError(f"{p}: unknown section {unknown[0]!r}; a grid file has the tables "
                         f"{', '.join(f'[{s}]' for s in SECTIONS)} (docs/sweeps.md)")
    for s in SECTIONS:
        if not isinstance(data.get(s, {}), dict):
            raise FeddfError(f"{p}: `{s}` must be a table ([{s}])")
    base = _options(f"{p} [base]", data.get("base", {}))
    axes = _axes(p, data.get("grid", {}))
    methods = _methods(p, data.get("methods", {}), axes)
    sweep = data.get("sweep", {})
    bad = [k for k in sweep if k.replace("-", "_") not in SWEEP_KEYS]
    if bad:
        raise FeddfError(f"{p} [sweep]: unknown key {bad[0]!r}; valid keys are {', '.join(SWEEP_KEYS)}")
    sweep = {k.replace("-", "_"): v for k, v in sweep.items()}
    runs, names = [], {}
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values))
        for m, (label, opts) in methods.items():
            name = "-".join([m, *(f"{k.replace('_', '-')}{_slug(v)}" for k, v in point.items())])
            if name in names:
                raise FeddfError(f"{p}: runs {names[name]} and {point} would share the folder {name}: make the "
                                 f"values of each [grid] axis distinct")
            names[name] = point
            runs.append(RunSpec(name, m, label, point, {**base, **opts, **point}))
    grid = Grid(p, list(axes), runs, sweep)
    for spec in runs:
        check_run(grid, spec)
    return grid


def check_run(grid: Grid, spec: RunSpec) -> None:
    """The run's configuration as `feddf train` would resolve it (names, types, ranges); one line naming the run."""
    from feddf.federated.config import TrainConfig

    try:
        TrainConfig(**spec.options, out="-", progress=False).resolved()
    except FeddfError as e:
        raise FeddfError(f"{grid.path}: run {spec.name}: {e}") from None
    except TypeError as e:  # a TOML value of a shape no field takes (a table where a value belongs)
        raise FeddfError(f"{grid.path}: run {spec.name}: {e}") from None


def _options(where: str, table: dict) -> dict:
    from feddf.federated.config import train_keys

    opts = train_keys(where, table)
    owned = [k for k in opts if k in OWNED]
    if owned:
        raise FeddfError(f"{where}: {owned[0]!r} is set by `feddf sweep` for every run; remove it (the sweep's "
                         "--out is the parent of the run folders)")
    return opts


def _axes(p: Path, table: dict) -> dict:
    axes = {}
    for k, values in table.items():
        if not isinstance(values, list) or not values:
            raise FeddfError(f"{p} [grid]: {k} = {values!r}: each axis is a non-empty list of values, e.g. "
                             f"{k} = [0, 1]")
        key = next(iter(_options(f"{p} [grid]", {k: values[0]})))
        axes[key] = [_options(f"{p} [grid]", {k: v})[key] for v in values]
    return axes


def _methods(p: Path, table: dict, axes: dict) -> dict:
    """name -> (label, options); one unnamed method ("run") when the file has no [methods]."""
    if not table:
        return {"run": ("run", {})}
    out = {}
    for m, opts in table.items():
        where = f"{p} [methods.{m}]"
        if not isinstance(opts, dict):
            raise FeddfError(f"{where}: each method is a table of `feddf train` options ([methods.{m}])")
        if not _NAME.match(m):
            raise FeddfError(f"{where}: method names become folder names: use letters, digits, '.', '_', '+', '-'")
        opts = dict(opts)
        label = opts.pop("label", m)
        if not isinstance(label, str):
            raise FeddfError(f"{where}: label = {label!r} must be a string")
        opts = _options(where, opts)
        both = [k for k in opts if k in axes]
        if both:
            raise FeddfError(f"{where}: sets {both[0]!r}, which [grid] varies: set it in one place")
        out[m] = (label, opts)
    return out


def _slug(v) -> str:
    """A value as part of a folder name: 0.1 -> '0.1', true -> 'true', 'cache/x.h5' -> 'x', [a, b] -> 'a+b'."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return f"{v:g}"
    if isinstance(v, list):
        return "+".join(_slug(x) for x in v)
    s = str(v)
    if "/" in s or s.endswith(".h5"):
        s = Path(s.rstrip("/")).stem
    return re.sub(r"[^A-Za-z0-9._+-]", "_", s) or "_"
