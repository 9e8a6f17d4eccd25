"""Any generator exported with TorchScript: z (B, z_dim) -> images (B, C, H, W) in [-1, 1] (unconditional, label -1).

    feddf gen --generator torchscript --checkpoint gen.pt --z-dim 128 --n 1000 --out /tmp/t.h5

SECURITY: loading TorchScript runs code from the file (it is a program, not just weights): only load files you trust.
z_dim comes from --z-dim, else an integer attribute `z_dim` (or `nz`) of the scripted module. A module that wants
(B, z_dim, 1, 1) (e.g. a scripted DCGAN) is detected by a probe forward and fed that shape. The probe also reads the
channels (1 or 3) and the output size. We cannot make a scripted model's kernels batch-invariant, so the sampler runs it
on fixed, index-aligned groups of images (base.CUDA_GROUP) on every device, which keeps image i independent of
--batch-size, resumes and ranks (results can still differ between machines with different thread counts).
"""
from __future__ import annotations

import warnings
from pathlib import Path

from feddf.errors import FeddfError
from feddf.generators.base import LoadedGenerator


class TorchScriptGenerator(LoadedGenerator):
    z_shape4d: bool = False

    def forward(self, z, labels, truncation):
        return self.module(z[:, :, None, None] if self.z_shape4d else z)


def load_torchscript(name: str, *, checkpoint: str | None = None, z_dim: int | None = None,
                     random_weights: bool = False, **_) -> TorchScriptGenerator:
    import torch

    from feddf.utils import sha256_file

    if random_weights:
        raise FeddfError("--random-weights does not apply to torchscript (the file is the model); pass --checkpoint")
    if checkpoint is None:
        raise FeddfError("torchscript needs --checkpoint FILE (a torch.jit.save'd generator)")
    path = Path(checkpoint)
    if not path.is_file():
        raise FeddfError(f"TorchScript file {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch >= 2.10 marks TorchScript deprecated; it is still what we read
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise FeddfError(f"{path} is not a loadable TorchScript file ({type(e).__name__}); export it with "
                         "torch.jit.script(model).save(path)") from None
    module.eval()
    if z_dim is None:
        for attr in ("z_dim", "nz"):
            v = getattr(module, attr, None)
            if isinstance(v, int):
                z_dim = v
                break
    if z_dim is None or z_dim <= 0:
        raise FeddfError(f"cannot tell the noise size of {path}: pass --z-dim N (or export the module with an int "
                         "attribute z_dim)")
    out, shape4d = None, False
    with torch.inference_mode():
        for shape4d in (False, True):
            z = torch.zeros(2, z_dim, 1, 1) if shape4d else torch.zeros(2, z_dim)
            try:
                out = module(z)
                break
            except Exception:
                out = None
    if out is None or not isinstance(out, torch.Tensor):
        raise FeddfError(f"{path} does not map z of shape (B, {z_dim}) (or (B, {z_dim}, 1, 1)) to an image tensor; "
                         "check --z-dim")
    if out.dim() != 4 or out.shape[0] != 2 or out.shape[1] not in (1, 3) or out.shape[2] != out.shape[3]:
        raise FeddfError(f"{path} returns shape {tuple(out.shape)} for 2 samples; expected (2, 1 or 3, H, H)")
    gen = TorchScriptGenerator(name=name, module=module, z_dim=int(z_dim), channels=int(out.shape[1]),
                               native_resolution=int(out.shape[2]), weights_hash="sha256:" + sha256_file(path),
                               batch_invariant=False, provenance={"z_shape": "B,z,1,1" if shape4d else "B,z"})
    gen.z_shape4d = shape4d
    return gen
