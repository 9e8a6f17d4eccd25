"""Server-side synthesis of the transfer set against the client ensemble: data-free FedDF.

    feddf train --arch cnn --distill-source synth:scratch --clients 4 --rounds 2 --local-epochs 1 --train-limit 2000 \
        --distill-steps 50 --eval-every 25 --synth-steps 20 --distill-pool 500 --out runs/synth-demo

`--distill-source synth:NAME` keeps a class-conditional generator on the server. Every round, before distillation,
it is trained for `--synth-steps` steps against the round's teachers (the received client models), then it draws
the round's pool of `--distill-pool` images (labels drawn uniformly over the classes by default), and the students
distil over that pool exactly as over a cache (fusion.py). NAME is `scratch` (a freshly initialised DCGAN generator:
no public data and no pre-trained weights) or any DCGAN `feddf gen` can load (`dcgan-fashion-mnist`, or `dcgan` with
`--synth-checkpoint FILE`); an unconditional generator gets a class embedding added to its noise, initialised at
zero, so round 1 starts from the pre-trained generator itself. The generator and its Adam state live in
checkpoint.pt, so `--resume` continues exactly.

The generator's loss is a weighted sum of the published terms (each weight a flag, 0 switches a term off):
  --synth-ce   cross-entropy of the ensemble's averaged (label-prior adjusted) logits on the sampled labels (DENSE's
               `oh`, FedFTG's class term); weight 1 as in DENSE;
  --synth-bn   BatchNorm-statistics matching on every teacher: sum over BN layers of ||mean_batch - running_mean||_2
               + ||var_batch - running_var||_2, averaged over teachers (DeepInversion, DENSE's `bn`, weight 1);
  --synth-adv  the adversarial term of DENSE / Fast-DataFree: -KL(ensemble || student) at the distillation
               temperature, on the samples where the student (each architecture's FedAvg start) and the ensemble
               still agree, so the generator moves them to where they disagree (FedFTG's hard samples); weight 1;
  --synth-div  FedGen's / FedFTG's diversity term exp(-mean_ij(|x_i - x_j|_1 * |z_i - z_j|_2^2)) (per-element means):
               pairs of different noise must give different images; weight 1.
The generator runs in eval mode (BatchNorm with its running statistics, affine weights learn), so a pool image does
not depend on its batch. Every draw comes from the round's seed; with --server-kernels fused|portable the steps run
on one thread, so a round is the same floats on any core count.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from feddf.errors import FeddfError

PREFIX = "synth:"
LABELS = ("uniform", "prior")


def is_synth(source: str) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


@dataclass
class SynthSpec:
    steps: int = 20         # generator steps per round (DENSE: g_steps 30 per synthesis batch; CPU-sized)
    lr: float = 1e-3        # Adam, betas (0.5, 0.999) (DENSE: lr_g 1e-3)
    embed_lr: float = 3e-2  # the class embedding's rate: it starts at zero and must move O(1) in a round's steps
    batch: int = 64         # images per generator step
    ce: float = 1.0         # DENSE --oh 1
    bn: float = 1.0         # DENSE --bn 1
    adv: float = 1.0        # DENSE --adv 1
    div: float = 1.0        # FedGen / FedFTG diversity weight 1
    labels: str = "uniform"  # uniform, or prior: the clients' summed label counts (needs them on the server)
    temperature: float = 1.0  # of the adversarial KL (the distillation temperature)
    memory: int = 0         # earlier rounds' pools kept beside the new one (DENSE's memory bank); 0 = this round's
    mix: float = 0.0        # share of samples asked for a two-class mixture (between-class images); 0 = none


# ---- the loss terms, pure functions of tensors ----------------------------------------------------------------
def loss_ce(ens_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, K) ensemble logits, (B,) target labels or (B, K) target probabilities -> mean cross-entropy."""
    return F.cross_entropy(ens_logits, labels)


def loss_bn(stats: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """[(batch mean (C,), batch var (C,), running mean (C,), running var (C,)) per BN layer] -> the sum over layers
    of ||mean - running_mean||_2 + ||var - running_var||_2 (DeepInversion's r_feature)."""
    return sum(torch.linalg.vector_norm(m - rm) + torch.linalg.vector_norm(v - rv) for m, v, rm, rv in stats)


def loss_adv(student_logits: torch.Tensor, ens_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """-mean_b(mask_b * T^2 KL(softmax(ens_b / T) || softmax(student_b / T))), mask_b = 1 where the argmaxes agree."""
    t = float(temperature)
    kl = F.kl_div(F.log_softmax(student_logits / t, 1), F.softmax(ens_logits / t, 1), reduction="none").sum(1)
    mask = (student_logits.argmax(1) == ens_logits.argmax(1)).to(kl.dtype)
    return -(kl * mask).mean() * t * t


def loss_div(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, nz) noise, (B, ...) images -> exp(-mean_ij(mean|x_i - x_j| * mean((z_i - z_j)^2))) over all pairs."""
    x, z = x.flatten(1), z.flatten(1)
    dx = (x[:, None, :] - x[None, :, :]).abs().mean(2)   # (B, B)
    dz = (z[:, None, :] - z[None, :, :]).pow(2).mean(2)  # (B, B)
    return torch.exp(-(dx * dz).mean())


class BNStats:
    """Forward hooks on a model's BatchNorm layers: each forward records (batch mean, batch var, running mean,
    running var) of every layer's input, per channel, for loss_bn."""

    def __init__(self, model: nn.Module):
        self.stats: list = []
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()
                        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]

    def _hook(self, module, inputs, _output):
        x = inputs[0]  # (B, C, H, W) or (B, C)
        dims = [0] + list(range(2, x.dim()))
        self.stats.append((x.mean(dims), x.var(dims, unbiased=False), module.running_mean, module.running_var))

    def take(self) -> list:
        out, self.stats = self.stats, []
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()


# ---- the generator ---------------------------------------------------------------------------------------------
class CondGenerator(nn.Module):
    """(z (B, nz), labels (B,)) -> (B, C, S, S) in [-1, 1]: an unconditional DCGAN on z + embed(labels), or a
    class-conditional one (feddf gan-train --conditional) as it is."""

    def __init__(self, base: nn.Module, num_classes: int, init_std: float = 0.0):
        super().__init__()
        self.base, self.nz, self.k = base, int(base.nz), int(num_classes)
        self.native = getattr(base, "k", None) is not None  # ConditionalGenerator takes labels itself
        self.embed = None if self.native else nn.Embedding(self.k, self.nz)
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, 0.0, init_std) if init_std else nn.init.zeros_(self.embed.weight)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """labels: (B,) classes, or (B, K) class weights (a mixture; unconditional bases only): z + weights @ E."""
        if self.native:
            return self.base(z, labels)
        if labels.dim() == 2:
            return self.base(z + labels.to(self.embed.weight) @ self.embed.weight)
        return self.base(z + self.embed(labels))


def build_generator(name: str, channels: int, num_classes: int, seed: int, checkpoint: str | None = None
                    ) -> tuple[CondGenerator, dict]:
    """The generator of `synth:NAME` and its description; one line (FeddfError) when it cannot serve the task."""
    from feddf.generators.dcgan import Generator, random_init

    if name == "scratch":
        if checkpoint is not None:
            raise FeddfError("--synth-checkpoint starts from a trained generator; synth:scratch starts from random "
                             "weights: use --distill-source synth:dcgan --synth-checkpoint FILE")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            base = random_init(Generator(nz=100, ngf=32, nc=channels, size=32))
            g = CondGenerator(base, num_classes, init_std=1.0)  # no pre-trained start to keep: classes apart at once
        return g, {"generator": "scratch", "weights_hash": None, "nz": 100, "ngf": 32, "size": 32}
    from feddf.generators import GENERATORS, get_generator

    entry = GENERATORS.get(name)
    if entry is None or not entry.loader.startswith("dcgan:"):
        dcgans = sorted(n for n, e in GENERATORS.items() if e.loader.startswith("dcgan:"))
        raise FeddfError(f"--distill-source synth:{name}: the server adapts a DCGAN generator; use synth:scratch or "
                         f"synth:NAME with NAME one of {', '.join(dcgans)} (dcgan takes --synth-checkpoint FILE)")
    loaded = get_generator(name, checkpoint=checkpoint)
    if loaded.channels != channels:
        raise FeddfError(f"--distill-source synth:{name}: the generator makes {loaded.channels}-channel images and "
                         f"the task has {channels} channels: use a generator trained on this kind of image or "
                         "synth:scratch")
    if loaded.num_classes and loaded.num_classes != num_classes:
        raise FeddfError(f"--distill-source synth:{name}: the generator is conditional on {loaded.num_classes} "
                         f"classes and the task has {num_classes}: use a generator of this task's classes, an "
                         "unconditional one, or synth:scratch")
    base = loaded.module.float().train(False)
    return CondGenerator(base, num_classes), {"generator": name, "weights_hash": loaded.weights_hash,
                                              **loaded.provenance.get("architecture", {})}


def draw_labels(n: int, k: int, g: torch.Generator, prior: torch.Tensor | None = None) -> torch.Tensor:
    """(n,) labels: uniform over the k classes, or drawn from `prior` (k,) probabilities."""
    if prior is None:
        return torch.randint(0, k, (n,), generator=g)
    return torch.multinomial(prior, n, replacement=True, generator=g)


def mix_labels(labels: torch.Tensor, k: int, share: float, g: torch.Generator) -> torch.Tensor:
    """(B,) labels -> (B, K) targets: one-hot, except rows picked with probability `share`, which become
    lam * onehot(y) + (1 - lam) * onehot(y2) with y2 another class and lam ~ U[0.5, 1): images between two classes
    whose label (the argmax) stays y. Draws nothing from `g` when share is 0."""
    soft = F.one_hot(labels, k).float()
    if share <= 0 or k < 2:
        return soft
    b = len(labels)
    pick = torch.rand(b, generator=g) < share                       # (B,) rows that mix
    other = (labels + torch.randint(1, k, (b,), generator=g)) % k   # (B,) a class != y, uniform
    lam = 0.5 + 0.5 * torch.rand(b, generator=g)                    # (B,) in [0.5, 1): y stays the argmax
    mixed = lam[:, None] * soft + (1 - lam)[:, None] * F.one_hot(other, k).float()
    return torch.where(pick[:, None], mixed, soft)


def to_input(x: torch.Tensor, resolution: int, mean, std) -> torch.Tensor:
    """Generator output in [-1, 1] (B, C, S, S) -> the task's normalised input (B, C, R, R), differentiably: the
    float twin of to_uint8 + BatchTransform (antialiased bilinear resize, (x + 1) / 2, then (x - mean) / std)."""
    if x.shape[-1] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return ((x + 1) / 2 - m) / s


def generator_step(gen: CondGenerator, opt, teachers: list, students: list, adjust: torch.Tensor | None,
                   z: torch.Tensor, labels: torch.Tensor, spec: SynthSpec, to_x) -> dict:
    """One Adam step of the generator on a batch (z, labels); returns each term's value (floats). `labels` (B,)
    classes or (B, K) targets (mix_labels); the agreement is measured against each row's largest weight."""
    img = gen(z, labels)
    x = to_x(img)
    hooks = [BNStats(t) for t in teachers] if spec.bn else []
    try:
        logits = torch.stack([t(x).float() for t in teachers])  # (T, B, K)
        bn_stats = [h.take() for h in hooks]
    finally:
        for h in hooks:
            h.close()
    if adjust is not None:
        logits = logits - adjust[:, None, :].to(logits)
    ens = logits.mean(0)  # (B, K): averaged logits, as avg-logits FedDF teaches
    terms = {"ce": loss_ce(ens, labels) if spec.ce else None,
             "bn": sum(loss_bn(s) for s in bn_stats) / len(bn_stats) if spec.bn and bn_stats else None,
             "adv": (sum(loss_adv(s(x).float(), ens, spec.temperature) for s in students) / len(students))
             if spec.adv and students else None,
             "div": loss_div(z, img) if spec.div else None}
    weights = {"ce": spec.ce, "bn": spec.bn, "adv": spec.adv, "div": spec.div}
    total = sum(weights[k] * v for k, v in terms.items() if v is not None)
    opt.zero_grad(set_to_none=True)
    if torch.is_tensor(total) and total.requires_grad:
        total.backward()
        opt.step()
    out = {k: float(v.detach()) for k, v in terms.items() if v is not None}
    out["agree"] = float((ens.argmax(1) == (labels.argmax(1) if labels.dim() == 2 else labels)).float().mean())
    return out


@contextlib.contextmanager
def frozen(models: list):
    """The models' parameters need no gradient (only the generator learns) and are in eval mode; both restored."""
    saved = [(m, m.training, [p.requires_grad for p in m.parameters()]) for m in models]
    for m in models:
        m.eval()
        m.requires_grad_(False)
    try:
        yield
    finally:
        for m, was, flags in saved:
            m.train(was)
            for p, f in zip(m.parameters(), flags):
                p.requires_grad_(f)


def per_class(labels: torch.Tensor, k: int) -> list[int]:
    return torch.bincount(labels, minlength=k).tolist()


def log_mean(rows: list[dict]) -> dict:
    """Mean of each term over the last tenth of the steps (at least one): what the generator ended the round at."""
    if not rows:
        return {}
    tail = rows[-max(1, math.ceil(len(rows) / 10)):]
    return {k: round(sum(r[k] for r in tail) / len(tail), 5) for k in tail[0]}
