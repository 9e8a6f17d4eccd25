"""Train a pytorch/examples-style DCGAN and write checkpoints `feddf gen --generator dcgan` loads unchanged.

    feddf gan-train --data fashion-mnist:test[:5000] --size 32 --ngf 32 --ndf 32 --epochs 25 --out runs/dcgan-fmnist

Radford et al. 2016 recipe, as in pytorch/examples/dcgan: Adam(lr 2e-4, betas (0.5, 0.999)), BCE on real/fake,
N(0, 0.02) conv init and N(1, 0.02) BatchNorm gamma, z ~ N(0, I) of size nz. Images are resized to `size` (32 or 64,
bilinear + antialias) and scaled to [-1, 1]. The generator is `feddf.generators.dcgan.Generator`, the very class the
loader rebuilds, so `netG_epoch_N.pth` (a plain state_dict) round-trips exactly.

`--conditional` (labelled data only: a dataset split with labels, or a cache with labels) trains a class-conditional
DCGAN (Mirza & Osindero 2014): the generator is `ConditionalGenerator` (z concatenated with one_hot(y)), the
discriminator sees the image with K one-hot label planes appended; fake labels are drawn uniformly. Its
checkpoint carries a `num_classes` buffer, so `feddf gen --generator dcgan --checkpoint` samples it class by class.

Seeded and resumable: the batch order of epoch e comes from `torch.Generator().manual_seed(seed + e)`, noise from a
generator whose state is checkpointed; `checkpoint.pt` (models, optimisers, RNG, epoch) is written atomically after each
epoch, so `--resume` continues after the last finished epoch and matches an uninterrupted run.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from feddf.errors import FeddfError
from feddf.generators.dcgan import SIZES, ConditionalGenerator, Generator


@dataclass
class GanTrainConfig:
    data: str = "fashion-mnist:test[:5000]"  # dataset spec or a feddf cache (.h5)
    out: str = "runs/dcgan"
    size: int = 32
    nz: int = 100
    ngf: int = 32
    ndf: int = 32
    epochs: int = 25
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    seed: int = 0
    limit: int | None = None  # use only the first N images (smoke tests)
    conditional: bool = False  # class-conditional G and D (needs labels)

    def validate(self) -> None:
        """Types, finiteness and ranges of every field (CLI, Python and resumed configs alike)."""
        from feddf.checks import check_range, check_seed, check_types

        check_types(self)
        if self.size not in SIZES:
            raise FeddfError(f"--size {self.size} is not supported: use one of {SIZES}")
        if self.epochs < 1 or self.batch_size < 2:
            raise FeddfError(f"--epochs {self.epochs} / --batch-size {self.batch_size}: need epochs ≥ 1 and batch "
                             "size ≥ 2")
        for flag, v in (("--nz", self.nz), ("--ngf", self.ngf), ("--ndf", self.ndf)):
            if v < 1:
                raise FeddfError(f"{flag} {v}: must be a positive integer")
        if self.limit is not None and self.limit < 1:
            raise FeddfError(f"--limit {self.limit}: must be a positive number of images")
        check_range("--lr", self.lr, lo=0, lo_open=True, fix="Adam's learning rate; the DCGAN recipe uses 2e-4")
        check_range("--beta1", self.beta1, lo=0, hi=1, hi_open=True, fix="the DCGAN recipe uses 0.5")
        check_seed("--seed", self.seed)


class Discriminator(nn.Module):
    """pytorch/examples discriminator; the 32 px variant drops one stride-2 stage. (B, nc, S, S) -> (B,) logits."""

    def __init__(self, nc: int, ndf: int, size: int, num_classes: int = 0):
        super().__init__()
        self.k = num_classes
        layers: list[nn.Module] = [nn.Conv2d(nc + num_classes, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        ch = ndf
        for _ in range(3 if size == 64 else 2):  # 64: 32->16->8->4 ; 32: 16->8->4
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        layers.append(nn.Conv2d(ch, 1, 4, 1, 0, bias=False))  # 4 -> 1; logits (BCEWithLogits is the stable sigmoid)
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is not None:  # conditional: K one-hot planes after the image channels
            b, _, h, w = x.shape
            planes = F.one_hot(labels.long(), self.k).to(x.dtype)[:, :, None, None].expand(b, self.k, h, w)
            x = torch.cat([x, planes], 1)
        return self.main(x).flatten()


def dcgan_init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def load_training_images(data: str, size: int, limit: int | None, with_labels: bool = False):
    """uint8 (N, C, H, W) from a dataset spec or a cache -> (float (N, C, size, size) in [-1, 1], source record),
    plus (labels int64 (N,), class names) with `with_labels` (FeddfError when the data has none)."""
    if data.endswith(".h5"):
        from feddf.cache.reader import open_cache, open_h5
        from feddf.cache.verify import read_or_fail

        info = open_cache(data)
        n = info.n if limit is None else min(limit, info.n)
        f, _ = open_h5(data)
        with f:
            images = torch.from_numpy(read_or_fail(f["images"], slice(None, n), data))  # committed images only
            labels = (torch.from_numpy(read_or_fail(f["labels"], slice(None, n), data)).long() if "labels" in f
                      else None)
        names = list(getattr(info, "label_names", None) or [])
        source = {"cache": data, "n": n}
    else:
        from feddf.data import get_dataset

        ds = get_dataset(data)
        images = ds.images if limit is None else ds.images[:limit]
        labels = ds.labels[:len(images)].long()
        names = list(ds.info.class_names)
        source = {"dataset": ds.spec, "n": int(images.shape[0]), "files": ds.source_files}
    x = images.float().div_(127.5).sub_(1.0)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp_(-1, 1)
    if not with_labels:
        return x, source
    if labels is None or (labels < 0).any():
        raise FeddfError(f"--conditional needs labelled images; {data} has unlabelled ones (use a labelled split, "
                         "e.g. fashion-mnist:test[:5000])")
    k = int(labels.max()) + 1
    return x, source, labels, names if len(names) >= k else [str(i) for i in range(k)]


def train(cfg: GanTrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Run (or resume) training; returns the path of the last generator checkpoint."""
    from feddf.runfolder import check_folder, claim, legacy_run

    cfg.validate()
    # the folder's identity: the recipe without where it lives and how long it runs (the checkpoint checks epochs)
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "epochs")}
    rules = dict(kind="gan-train", settings=settings, legacy=legacy_run("generator"))
    check_folder(cfg.out, **rules)
    data = _load_data(cfg)  # before the folder exists: a refused or killed load leaves none behind
    folder = claim(cfg.out, **rules)
    try:
        return _train(cfg, folder, data, resume, progress)
    finally:
        folder.release()


def _load_data(cfg: GanTrainConfig) -> tuple:
    """(images in [-1, 1], source record, labels or None, class names or None) with at least one full batch."""
    labels, names = None, None
    if cfg.conditional:
        x, source, labels, names = load_training_images(cfg.data, cfg.size, cfg.limit, with_labels=True)
    else:
        x, source = load_training_images(cfg.data, cfg.size, cfg.limit)
    if x.shape[0] < cfg.batch_size:  # an epoch drops the ragged last batch: it would have no step at all
        raise FeddfError(f"--data {cfg.data} gives {x.shape[0]} image(s), fewer than one batch (--batch-size "
                         f"{cfg.batch_size}): use more images or a smaller --batch-size")
    return x, source, labels, names


def _train(cfg: GanTrainConfig, folder, data: tuple, resume: bool, progress: bool) -> Path:
    from tqdm import tqdm

    from feddf.utils import atomic_torch_save, atomic_write_json, load_torch_file, versions

    out = folder.path
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists() and not resume:
        raise FeddfError(f"{out} already holds a GAN run: pass --resume to continue it or choose another --out")
    x, source, labels, names = data
    k = len(names) if cfg.conditional else 0
    nc = x.shape[1]
    torch.manual_seed(cfg.seed)
    netG = ConditionalGenerator(cfg.nz, cfg.ngf, nc, cfg.size, k) if k else Generator(cfg.nz, cfg.ngf, nc, cfg.size)
    netD = Discriminator(nc, cfg.ndf, cfg.size, k)
    netG.apply(dcgan_init)
    netD.apply(dcgan_init)
    optG = torch.optim.Adam(netG.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    optD = torch.optim.Adam(netD.parameters(), lr=cfg.lr, betas=(cfg.beta1, 0.999))
    noise = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    start = 0
    if resume and ckpt_path.exists():
        ck = load_torch_file(ckpt_path, "checkpoint", "the run folder is damaged; start a new --out")
        if not isinstance(ck, dict) or not {"config", "netG", "netD", "optG", "optD", "noise_rng", "epoch"} <= set(ck):
            raise FeddfError(f"{ckpt_path} is not a feddf gan-train checkpoint: start a new --out")
        if {"conditional": False, **ck["config"]} != asdict(cfg):
            raise FeddfError(f"{ckpt_path} was written with a different configuration; use the same options or a "
                             "new --out")
        netG.load_state_dict(ck["netG"]), netD.load_state_dict(ck["netD"])
        optG.load_state_dict(ck["optG"]), optD.load_state_dict(ck["optD"])
        noise.set_state(ck["noise_rng"])
        start = ck["epoch"]
    folder.mark()
    atomic_write_json(out / "config.json", {"config": asdict(cfg), "source": source, "versions": versions(),
                                            "generator": {"nz": cfg.nz, "ngf": cfg.ngf, "nc": nc, "size": cfg.size,
                                                          "num_classes": k},
                                            "class_names": names})
    n = x.shape[0]
    steps = n // cfg.batch_size  # drop the ragged last batch: BatchNorm on tiny batches destabilises D
    fixed = torch.randn(64, cfg.nz, generator=torch.Generator().manual_seed(cfg.seed))
    fixed_y = torch.arange(64) % max(k, 1)  # conditional grid: one class per column (8 columns, K <= 8 repeat)
    G = (lambda z, y: netG(z, y)) if k else (lambda z, y: netG(z))  # noqa: E731
    D = (lambda im, y: netD(im, y)) if k else (lambda im, y: netD(im))  # noqa: E731
    for epoch in range(start, cfg.epochs):
        netG.train(), netD.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed + epoch))
        t0, sums = time.perf_counter(), {"loss_d": 0.0, "loss_g": 0.0, "d_real": 0.0, "d_fake": 0.0}
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for s in bar:
            rows = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            real = x[rows]  # (B, nc, S, S)
            b = real.shape[0]
            z = torch.randn(b, cfg.nz, generator=noise)
            y_real = labels[rows] if k else None
            y_fake = torch.randint(k, (b,), generator=noise) if k else None  # uniform fake classes
            fake = G(z, y_fake)
            # D step: maximise log D(x) + log(1 - D(G(z)))
            optD.zero_grad(set_to_none=True)
            d_real, d_fake = D(real, y_real), D(fake.detach(), y_fake)
            loss_d = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                      + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
            loss_d.backward()
            optD.step()
            # G step: non-saturating loss, maximise log D(G(z))
            optG.zero_grad(set_to_none=True)
            d_gen = D(fake, y_fake)
            loss_g = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
            loss_g.backward()
            optG.step()
            sums["loss_d"] += loss_d.item()
            sums["loss_g"] += loss_g.item()
            sums["d_real"] += torch.sigmoid(d_real).mean().item()
            sums["d_fake"] += torch.sigmoid(d_fake).mean().item()
            bar.set_postfix(loss_d=f"{loss_d.item():.3f}", loss_g=f"{loss_g.item():.3f}")
        record = {"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()},
                  "seconds": round(time.perf_counter() - t0, 2)}
        g_path = out / f"netG_epoch_{epoch + 1}.pth"
        atomic_torch_save(netG.state_dict(), g_path)  # exactly the pytorch/examples format
        atomic_torch_save(netD.state_dict(), out / f"netD_epoch_{epoch + 1}.pth")
        if epoch > 0:  # keep the newest generator/discriminator only; the checkpoint has everything to resume
            for stale in (out / f"netG_epoch_{epoch}.pth", out / f"netD_epoch_{epoch}.pth"):
                stale.unlink(missing_ok=True)
        atomic_torch_save({"config": asdict(cfg), "epoch": epoch + 1, "netG": netG.state_dict(),
                           "netD": netD.state_dict(), "optG": optG.state_dict(), "optD": optD.state_dict(),
                           "noise_rng": noise.get_state()}, ckpt_path)
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}  loss_d {record['loss_d']:.3f}  loss_g {record['loss_g']:.3f}"
                       f"  D(x) {record['d_real']:.2f}  D(G(z)) {record['d_fake']:.2f}  {record['seconds']}s")
    with torch.no_grad():
        netG.eval()
        save_grid(G(fixed, fixed_y), out / "samples.png")
    return out / f"netG_epoch_{cfg.epochs}.pth"


def save_grid(images: torch.Tensor, path: Path) -> None:
    """(B, C, S, S) in [-1, 1] -> a PNG grid, for a human look at the samples."""
    from torchvision.utils import save_image

    save_image(images.add(1).div(2).clamp(0, 1), str(path), nrow=8)
