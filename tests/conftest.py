"""Shared fixtures. Tests never touch the user's ~/.cache: the data root goes to a per-session temp folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session", autouse=True)
def _data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data-root")
    old = os.environ.get("FEDDF_DATA_ROOT")
    os.environ["FEDDF_DATA_ROOT"] = str(root)
    yield root
    if old is None:
        os.environ.pop("FEDDF_DATA_ROOT", None)
    else:
        os.environ["FEDDF_DATA_ROOT"] = old


@pytest.fixture(scope="session")
def fmnist_available():
    """Real Fashion-MNIST: required in CI (CI=true fails instead of skipping), optional elsewhere."""
    if (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        return FMNIST_DIR
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but Fashion-MNIST is missing from {FMNIST_DIR}: .ci/run must "
                    "`apt-get install dataset-fashion-mnist`")
    pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


def random_dcgan_checkpoint(path: Path, nc: int, nz: int = 16, ngf: int = 8, size: int = 32) -> Path:
    """A small pytorch/examples-format DCGAN state_dict with seeded random (variance-preserving) weights."""
    import torch

    from feddf.generators.dcgan import Generator, random_init

    torch.manual_seed(0)
    torch.save(random_init(Generator(nz=nz, ngf=ngf, nc=nc, size=size)).state_dict(), path)
    return path


def run_cli(*args: str, check: bool = False, timeout: float = 600, env: dict | None = None,
            cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run the real `feddf` CLI in a subprocess (python -m feddf ...)."""
    full_env = dict(os.environ)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    if env:
        full_env.update(env)
    proc = subprocess.run([sys.executable, "-m", "feddf", *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"feddf {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
