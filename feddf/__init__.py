"""feddf — FedDF ensemble distillation for federated learning, with synthetic transfer sets.

    feddf --help
"""
import os as _os

# Idle OpenMP threads spin by default; on a shared or small CPU that starves the other process/thread (the stream,
# the writer, a second job) and made 2-thread torch ops 6-10x slower here. Users can still override it.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
