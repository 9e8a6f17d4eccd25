"""feddf — FedDF ensemble distillation for federated learning, with synthetic transfer sets.

    feddf --help
    python -c "import feddf; help(feddf.train)"

The Python API (docs/api.md): `feddf.gen`, `feddf.train`, `feddf.audit` (the CLI commands as functions, same options,
same summaries), `feddf.CacheStream`, and the config dataclasses. Everything is imported on first use, so
`import feddf` (and `feddf --help`) stays light: no torch until a function needs it.
"""
import os as _os

# Idle OpenMP threads spin by default; on a shared or small CPU that starves the other process/thread (the stream,
# the writer, a second job) and made 2-thread torch ops 6-10x slower here. Users can still override it.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily by __getattr__)
_LAZY = {
    "gen": "feddf.api", "train": "feddf.api", "train_config": "feddf.api",
    "CacheStream": "feddf.cache.stream",
    "TrainConfig": "feddf.federated.config", "GenConfig": "feddf.generators.sample", "AuditConfig": "feddf.audit.run",
    "get_dataset": "feddf.data", "get_model": "feddf.models", "load_classifier": "feddf.models",
    "FeddfError": "feddf.errors",
}
__all__ = ["__version__", "audit", *_LAZY]


def __getattr__(name: str):
    if name == "audit":
        # `feddf.audit` is also the subpackage feddf/audit/, and Python rebinds this attribute to it on any
        # `import feddf.audit.x`; so the package module itself is callable (feddf/audit/__init__.py) and is the API
        import importlib

        return importlib.import_module("feddf.audit")
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'feddf' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | {"audit"})
