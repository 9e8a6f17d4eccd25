"""Fréchet Inception Distance with pytorch-fid's InceptionV3 (2048-d pool3 features), computed offline only.

    feddf audit cache/x.h5 --reference fashion-mnist:test --fid-weights ~/pt_inception-2015-12-05-6726825d.pth

The FID network is pytorch-fid's `InceptionV3` (TF-ported FID weights, bilinear resize to 299x299 inside its
forward, inputs scaled to [-1, 1]). Weights come from `--fid-weights` or `$TORCH_HOME/hub/checkpoints`; they are
never downloaded, and a file whose sha256 does not start with the published prefix is refused, so no number from
other (e.g. untrained) weights is ever reported as FID. `InceptionFeatures.random_for_tests()` builds the same
network with random weights — for tests of the plumbing only; its `is_fid` is False.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from feddf.errors import FeddfError

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_SHA256_PREFIX = "6726825d"   # torch.hub convention: the file name carries the sha256 prefix
FEATURE_DIMS = 2048
RESIZE_MODE = "bilinear to 299x299 (pytorch-fid InceptionV3: F.interpolate, align_corners=False, no antialias)"
INPUT_CONVERSION = "uint8 -> float [0,1] -> [-1,1]; 1-channel images repeated to 3 channels"
# FID needs n > dims for a full-rank covariance; below this the value is strongly biased upward and noisy.
MIN_RELIABLE_N = FEATURE_DIMS + 1


class FIDUnavailable(Exception):
    """FID cannot be computed here (no weights offline); the message is the reason shown in the report."""


def weights_search_dirs() -> list[Path]:
    """Where the FID weights are looked for when --fid-weights is not given: torch.hub's checkpoint folder."""
    import torch

    return [Path(torch.hub.get_dir()) / "checkpoints"]


def find_weights(explicit: str | os.PathLike | None = None) -> Path:
    """The FID weights file: `explicit` (must exist and verify, else FeddfError) or the torch hub cache.

    Raises FIDUnavailable when no explicit path is given and none is cached (nothing is ever downloaded).
    """
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise FeddfError(f"--fid-weights {str(p)!r} is not a file: pass the path of {FID_WEIGHTS_FILE}")
        verify_weights(p)
        return p
    looked = []
    for d in weights_search_dirs():
        p = d / FID_WEIGHTS_FILE
        looked.append(str(p))
        if p.is_file():
            verify_weights(p)
            return p
    raise FIDUnavailable(f"the Inception FID weights {FID_WEIGHTS_FILE} are not available offline (looked for "
                         f"{', '.join(looked)}); pass --fid-weights PATH or put the file there ($TORCH_HOME)")


def verify_weights(path: Path) -> str:
    """sha256 of the weights file; FeddfError unless it starts with the published prefix."""
    from feddf.utils import sha256_file

    digest = sha256_file(path)
    if not digest.startswith(FID_WEIGHTS_SHA256_PREFIX):
        raise FeddfError(f"{str(path)!r} is not the pytorch-fid Inception weights (sha256 {digest[:12]}..., expected "
                         f"{FID_WEIGHTS_SHA256_PREFIX}...): pass the original {FID_WEIGHTS_FILE}")
    return digest


def _fid_inception_net(init: bool = False):
    """The FID variant of InceptionV3 as pytorch-fid defines it (torchvision Inception3 with pytorch-fid's patched
    blocks, 1008 logits, no aux head), uninitialised by weights files. Its state_dict is key-for-key the one that
    `pytorch_fid.inception.fid_inception_v3` loads (checked in tests/test_fid.py). init: torchvision's truncated-normal
    init (random test weights whose features are not vanishingly small); skipped when a weights file follows."""
    import torchvision
    from pytorch_fid import inception as pfi

    net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=init)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return net


@contextlib.contextmanager
def _pytorch_fid_backbone(net):
    """Make pytorch_fid.inception.InceptionV3 use `net` instead of downloading its weights."""
    from pytorch_fid import inception as pfi

    orig = pfi.fid_inception_v3
    pfi.fid_inception_v3 = lambda: net
    try:
        yield
    finally:
        pfi.fid_inception_v3 = orig


@dataclass
class InceptionFeatures:
    """2048-d pool3 features of uint8 images; `describe()` goes beside every FID in the reports."""

    model: object
    device: object
    weights: str            # file name, or "random (tests only)"
    weights_sha256: str | None
    is_fid: bool            # True only for the verified FID weights

    @classmethod
    def from_weights(cls, path: str | os.PathLike, device="cpu") -> "InceptionFeatures":
        import torch

        path = Path(path)
        digest = verify_weights(path)
        net = _fid_inception_net()
        try:
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except (RuntimeError, ValueError) as e:
            raise FeddfError(f"{str(path)!r} does not load into the FID InceptionV3 ({str(e).splitlines()[0]}): "
                             f"pass the original {FID_WEIGHTS_FILE}") from None
        return cls._wrap(net, device, path.name, digest, True)

    @classmethod
    def random_for_tests(cls, seed: int = 0, device="cpu") -> "InceptionFeatures":
        """Same network, random weights: exercises the pipeline in tests; never reported as FID."""
        import torch

        torch.manual_seed(seed)
        return cls._wrap(_fid_inception_net(init=True), device, "random (tests only)", None, False)

    @classmethod
    def _wrap(cls, net, device, weights, digest, is_fid) -> "InceptionFeatures":
        from pytorch_fid.inception import InceptionV3

        with _pytorch_fid_backbone(net):
            model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIMS]], resize_input=True,
                                normalize_input=True)
        return cls(model.eval().to(device), device, weights, digest, is_fid)

    def describe(self) -> dict:
        return {"feature_extractor": f"pytorch-fid InceptionV3 pool3 ({FEATURE_DIMS}-d)", "weights": self.weights,
                "weights_sha256": self.weights_sha256, "resize": RESIZE_MODE, "input": INPUT_CONVERSION,
                "is_fid": self.is_fid}

    def __call__(self, images_u8) -> np.ndarray:
        """uint8 (B, C, H, W), C in {1, 3} -> float64 features (B, 2048)."""
        import torch

        x = images_u8.to(self.device, non_blocking=True).float().div_(255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise FeddfError(f"FID needs 1- or 3-channel images, got {x.shape[1]} channels")
        with torch.inference_mode():
            feats = self.model(x)[0]        # (B, 2048, 1, 1) after the adaptive average pool
        return feats.reshape(feats.shape[0], -1).double().cpu().numpy()


def activation_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """features (N, D) -> (mu (D,), sigma (D, D)) as float64, sigma the unbiased sample covariance (as pytorch-fid)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise FeddfError(f"FID needs at least 2 images, got {f.shape[0] if f.ndim == 2 else 0}: raise --limit")
    return f.mean(axis=0), np.cov(f, rowvar=False)


class StatsAccumulator:
    """Streaming mean and covariance of features, O(D^2) memory whatever N (50k x 2048 float64 would be 800 MB).

    Sums are taken of x - shift, with shift = the first batch's mean, which keeps the one-pass formula
    cov = (S - n m m^T) / (n - 1) accurate (features are far from zero-mean). While n <= keep (default D) the features
    themselves are kept too, so `factor()` can give a low-rank square-root factor of sigma (see frechet_distance)."""

    def __init__(self, keep: int | None = None) -> None:
        self.n = 0
        self.keep = keep
        self.shift = self.s1 = self.s2 = None
        self._kept: list[np.ndarray] | None = []

    def update(self, features: np.ndarray) -> None:
        f = np.asarray(features, dtype=np.float64)     # (B, D)
        if f.shape[0] == 0:
            return
        if self.shift is None:
            self.shift = f.mean(axis=0)
            self.s1 = np.zeros_like(self.shift)
            self.s2 = np.zeros((f.shape[1], f.shape[1]))
            self.keep = f.shape[1] if self.keep is None else self.keep
        d = f - self.shift
        self.n += d.shape[0]
        self.s1 += d.sum(axis=0)
        self.s2 += d.T @ d
        if self._kept is not None:
            self._kept = self._kept + [d] if self.n <= self.keep else None

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise FeddfError(f"FID needs at least 2 images, got {self.n}: raise --limit")
        m = self.s1 / self.n
        sigma = (self.s2 - self.n * np.outer(m, m)) / (self.n - 1)
        return self.shift + m, (sigma + sigma.T) / 2

    def factor(self) -> np.ndarray | None:
        """F (n, D) with F^T F = sigma (centred features / sqrt(n - 1)), or None once more than `keep` were seen."""
        if not self._kept or self.n < 2:
            return None
        d = np.concatenate(self._kept)
        return (d - d.mean(axis=0)) / np.sqrt(self.n - 1)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, factor1: np.ndarray | None = None) -> float:
    """Tr (S1 S2)^{1/2} = sum sqrt(eig(S1 S2)) (S1 S2 is similar to a symmetric PSD matrix, so they are real, >= 0).

    With a factor F (m, D), S1 = F^T F: eig(S1 S2) = eig(F S2 F^T) plus zeros, an (m, m) problem — cheap when S1
    comes from m < D images. Otherwise A = S1^{1/2} by eigh and eig(A S2 A): two symmetric (D, D) eigenproblems,
    no general sqrtm and no eps needed for a singular covariance."""
    if factor1 is not None:
        m = factor1 @ sigma2 @ factor1.T
    else:
        w, v = np.linalg.eigh((sigma1 + sigma1.T) / 2)
        a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T       # S1^{1/2}, (D, D)
        m = a @ sigma2 @ a
    ev = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(ev, 0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, factor1: np.ndarray | None = None) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}); `factor1` (m, D) with F^T F = S1 is an optional shortcut
    (StatsAccumulator.factor()) that gives the same value."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise FeddfError(f"FID statistics have different shapes ({mu1.shape} vs {mu2.shape}): the reference stats "
                         f"were made with another feature extractor; recompute them")
    diff = mu1 - mu2
    tr = trace_sqrt_product(s1, s2, None if factor1 is None else np.asarray(factor1, np.float64))
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr)


def save_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, n: int, description: dict) -> None:
    """Reference statistics as .npz: mu, sigma, n and a JSON description (what, how many, which extractor)."""
    import io
    import json

    from feddf.utils import atomic_write_bytes, to_jsonable

    buf = io.BytesIO()
    np.savez(buf, mu=mu, sigma=sigma, n=np.int64(n), description=np.array(json.dumps(to_jsonable(description))))
    atomic_write_bytes(path, buf.getvalue())


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, int, dict]:
    """(mu, sigma, n, description) from a stats .npz (ours, or pytorch-fid's --save-stats with mu/sigma only)."""
    import json

    try:
        with np.load(path, allow_pickle=False) as z:
            mu, sigma = z["mu"], z["sigma"]
            n = int(z["n"]) if "n" in z else None
            desc = json.loads(str(z["description"])) if "description" in z else {}
    except (OSError, ValueError, KeyError) as e:
        raise FeddfError(f"{str(path)!r} is not a FID statistics .npz with mu and sigma ({e}): pass a file written "
                         f"by `feddf audit` or `python -m pytorch_fid --save-stats`") from None
    return mu, sigma, n, desc
