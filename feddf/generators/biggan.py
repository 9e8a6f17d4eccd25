"""BigGAN-deep 128/256/512 (pytorch-pretrained-biggan), class-conditional on the 1000 ImageNet classes.

    feddf gen --generator biggan-deep-128 --n 8 --random-weights --out /tmp/b.h5 --batch-size 4

Weights: `--weights DIR` holding the library's `config.json` + `pytorch_model.bin` (docs/generators.md says where to get
them), else the library's own download cache (~/.pytorch_pretrained_biggan) / download where network exists.
`--random-weights` builds the exact architecture with seeded random weights for tests and benchmarks; such caches say
so in their attributes (weights_hash="random", random_weights=True).
"""
from __future__ import annotations

import json
from pathlib import Path

from feddf.errors import FeddfError
from feddf.generators.base import (LoadedGenerator, fold_spectral_norm, load_state_dict_strict, load_weights_file,
                                   single_thread)

MODELS = {"biggan-deep-128": 128, "biggan-deep-256": 256, "biggan-deep-512": 512}
RANDOM_INIT_SEED = 0  # random weights are seeded, so random-weight caches are reproducible and resumable


def _config(name: str):
    from pytorch_pretrained_biggan.convert_tf_to_pytorch import BigGAN128, BigGAN256, BigGAN512

    return {"biggan-deep-128": BigGAN128, "biggan-deep-256": BigGAN256, "biggan-deep-512": BigGAN512}[name]


def _locate_weights(name: str, weights: str | None) -> tuple[Path, Path]:
    """(config.json, pytorch_model.bin): from --weights DIR, or the library cache / download."""
    if weights is not None:
        d = Path(weights)
        cfg, bin_ = d / "config.json", d / "pytorch_model.bin"
        missing = [p.name for p in (cfg, bin_) if not p.is_file()]
        if missing:
            raise FeddfError(f"--weights {d}: missing {', '.join(missing)}; the folder must hold config.json and "
                             f"pytorch_model.bin of {name} (see docs/generators.md)")
        return cfg, bin_
    try:
        from pytorch_pretrained_biggan.file_utils import cached_path
        from pytorch_pretrained_biggan.model import PRETRAINED_CONFIG_ARCHIVE_MAP, PRETRAINED_MODEL_ARCHIVE_MAP

        return (Path(cached_path(PRETRAINED_CONFIG_ARCHIVE_MAP[name])),
                Path(cached_path(PRETRAINED_MODEL_ARCHIVE_MAP[name])))
    except Exception as e:  # offline: requests/boto errors, EnvironmentError from the library
        from pytorch_pretrained_biggan.file_utils import PYTORCH_PRETRAINED_BIGGAN_CACHE

        raise FeddfError(f"no weights for {name} and they cannot be downloaded here ({type(e).__name__}); put "
                         f"config.json + pytorch_model.bin in a folder and pass --weights DIR, or let the library "
                         f"download them into {PYTORCH_PRETRAINED_BIGGAN_CACHE} on a machine with network "
                         "(docs/generators.md); --random-weights for tests") from None


class BigGANGenerator(LoadedGenerator):
    def forward(self, z, labels, truncation):
        import torch

        # z (B, 128), labels (B,) ImageNet ids -> one-hot (B, 1000); output (B, 3, R0, R0) in [-1, 1] (tanh)
        onehot = torch.nn.functional.one_hot(labels, self.num_classes).to(z.dtype)
        return self.module(z, onehot, float(truncation))


def load_biggan(name: str, *, weights: str | None = None, random_weights: bool = False, **_) -> BigGANGenerator:
    import torch
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    from feddf.generators.classes import imagenet_class_names
    from feddf.utils import sha256_file

    if random_weights:
        config = _config(name)
        with torch.random.fork_rng(devices=[]), single_thread():
            torch.manual_seed(RANDOM_INIT_SEED)
            model = BigGAN(config)
            with torch.no_grad():
                # the unconditional final BN has uninitialised (torch.Tensor) weight/bias: NaNs unless set
                model.generator.bn.weight.fill_(1.0)
                model.generator.bn.bias.zero_()
                # a few power iterations so every spectral norm's u, v estimate sigma (random u, v give tiny or
                # negative sigma and exploding activations); train-mode forward hooks do the same, without a forward
                from torch.nn.utils.spectral_norm import SpectralNorm

                for m in model.modules():
                    for h in m._forward_pre_hooks.values():
                        if isinstance(h, SpectralNorm):
                            for _ in range(5):
                                h.compute_weight(m, do_power_iteration=True)
        weights_hash = "random"
    else:
        cfg_path, bin_path = _locate_weights(name, weights)
        try:
            config = BigGANConfig.from_json_file(cfg_path)
        except (ValueError, OSError) as e:
            raise FeddfError(f"{cfg_path} is not a valid BigGAN config.json ({e}); re-download it") from None
        if config.output_dim != MODELS[name]:
            raise FeddfError(f"{cfg_path} describes a {config.output_dim}px BigGAN, not {name}; use "
                             f"--generator biggan-deep-{config.output_dim} or the right --weights folder")
        model = BigGAN(config)
        load_state_dict_strict(model, load_weights_file(bin_path, "BigGAN weights"), f"{bin_path}")
        weights_hash = "sha256:" + sha256_file(bin_path)
    model.eval()  # always sample in eval mode: train mode would also mutate the spectral-norm u/v buffers
    fold_spectral_norm(model)
    return BigGANGenerator(
        name=name, module=model, z_dim=config.z_dim, channels=3, native_resolution=config.output_dim,
        num_classes=config.num_classes, uses_truncation=True, weights_hash=weights_hash,
        random_weights=random_weights, label_names=imagenet_class_names(),
        provenance={"library": "pytorch_pretrained_biggan", "config": json.loads(config.to_json_string())})


# ------------------------------------------------------------------ fast mode (feddf gen --fast)
def _sdpa_self_attn_forward(self, x):
    """pytorch_pretrained_biggan's SelfAttn.forward through scaled_dot_product_attention (one fused kernel on CUDA
    instead of bmm -> softmax -> bmm with the (B, HW, HW/4) map in memory). Same function: the library's attention is
    softmax(theta^T phi) without 1/sqrt(d) scaling, hence scale=1."""
    import torch.nn.functional as F

    b, ch, h, w = x.shape
    theta = self.snconv1x1_theta(x).flatten(2)             # (B, C/8, HW)      queries
    phi = self.maxpool(self.snconv1x1_phi(x)).flatten(2)   # (B, C/8, HW/4)    keys
    g = self.maxpool(self.snconv1x1_g(x)).flatten(2)       # (B, C/2, HW/4)    values
    o = F.scaled_dot_product_attention(theta.transpose(1, 2), phi.transpose(1, 2), g.transpose(1, 2),
                                       scale=1.0)           # (B, HW, C/2)
    attn_g = o.transpose(1, 2).reshape(b, ch // 2, h, w)
    return x + self.gamma * self.snconv1x1_o_conv(attn_g)


def fast_attention(module) -> int:
    """Patch every pytorch_pretrained_biggan SelfAttn in module to the SDPA forward; returns how many (0 for others)."""
    import types

    try:
        from pytorch_pretrained_biggan.model import SelfAttn
    except ImportError:
        return 0
    count = 0
    for m in module.modules():
        if isinstance(m, SelfAttn):
            m.forward = types.MethodType(_sdpa_self_attn_forward, m)
            count += 1
    return count
