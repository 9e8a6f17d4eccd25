"""The per-round transfer pool: P images the round's teachers label once and the students distil over.

    feddf train --arch cnn --distill-source gan --distill-pool 5000 ...      # 5000 fresh cache images per round
    feddf train --arch cnn --distill-source synth:dcgan-fashion-mnist --save-pool runs/X/pools ...

`--distill-pool P` (fusion.fuse): each round the server draws a pool of P images from its transfer source - P ids of
an in-memory cache without replacement, or the next P images of an endless source (noise, a streamed cache), or
the P images the synthesiser (synth.py) makes - and the students take their steps over the pool in seeded
permutation epochs. Every pool image has an id, so each teacher computes its logits on it once per round (the
TargetCache of distill.py), however many steps come back to it. P = 0 keeps the whole source (a cache held in
memory is then one fixed pool; a streamed source stays streamed). Every draw comes from the round's seed.

`--save-pool DIR` writes each round's pool as a feddf cache, DIR/round-NNN.h5: the images, their sampled labels
(synthesised pools) and the ensemble's prediction and confidence as the labeler columns, so `feddf cache info`,
`feddf cache preview` and `feddf audit` read it like any generated cache, with per-class coverage.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from pathlib import Path

import torch

from feddf.errors import FeddfError


class PoolSource:
    """One round's pool: uint8 images (P, C, R, R) in memory, `labels` (P,) when they were sampled (synthesis)."""

    kind = "pool"

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None = None, origin: dict | None = None):
        self.pool, self.labels, self.origin = images, labels, origin or {}
        self.n = len(images)

    def batches(self, batch_size: int, seed: int):
        from feddf.federated.sources import _pool_batches

        yield from _pool_batches(self.pool, batch_size, seed)

    def describe(self) -> dict:
        return {"kind": "pool", "n": self.n, **self.origin}


def draw_pool(source, size: int, seed: int) -> PoolSource:
    """P images of `source` for one round: ids drawn without replacement from an in-memory cache (sorted, so the
    pool keeps the cache's order), else the first `size` images the source streams from `seed`."""
    held = getattr(source, "pool", None)
    if held is not None:
        g = torch.Generator().manual_seed(seed)
        ids = torch.sort(torch.randperm(len(held), generator=g)[:size]).values
        return PoolSource(held[ids], origin={"from": source.kind, "drawn": len(ids), "of": len(held)})
    it = source.batches(size, seed)
    try:
        _, images = next(iter(it))
    finally:
        if hasattr(it, "close"):
            it.close()
    return PoolSource(images, origin={"from": source.kind, "drawn": len(images), "of": None})


class SynthSource:
    """`--distill-source synth:NAME`: the server's class-conditional generator (synth.py) and its Adam state; each
    round `synthesize` trains it against the teachers and leaves the round's pool in `self.pool`."""

    kind = "synth"

    def __init__(self, name: str, info, spec, pool_size: int, seed: int, checkpoint: str | None = None):
        from feddf.federated.synth import build_generator

        self.name, self.spec, self.size, self.info = name, spec, int(pool_size), info
        self.n = self.size  # the round's pool: the new images plus the kept earlier ones (spec.memory)
        self.memory: list[tuple[torch.Tensor, torch.Tensor]] = []  # earlier rounds' (images, labels), oldest first
        self.gen, self.meta = build_generator(name, info.channels, info.num_classes, seed, checkpoint)
        if spec.mix and self.gen.native:
            raise FeddfError(f"--synth-mix {spec.mix:g}: synth:{name} is a class-conditional generator, which takes "
                             "one class per image; use --synth-mix 0, or an unconditional generator")
        self.gen.eval()  # eval-mode BatchNorm throughout: an image does not depend on its batch
        embed = list(self.gen.embed.parameters()) if self.gen.embed is not None else []
        rest = [p for p in self.gen.parameters() if all(p is not e for e in embed)]
        groups = [{"params": rest, "lr": spec.lr}] + ([{"params": embed, "lr": spec.embed_lr}] if embed else [])
        self.opt = torch.optim.Adam(groups, betas=(0.5, 0.999))
        self.pool: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None

    def state_dict(self) -> dict:
        return {"generator": self.gen.state_dict(), "optimizer": self.opt.state_dict(),
                "memory": {"images": [m[0] for m in self.memory], "labels": [m[1] for m in self.memory]}}

    def load_state_dict(self, state: dict) -> None:
        self.gen.load_state_dict(state["generator"])
        self.opt.load_state_dict(state["optimizer"])
        mem = state.get("memory") or {"images": [], "labels": []}
        self.memory = list(zip(mem["images"], mem["labels"]))

    def batches(self, batch_size: int, seed: int):
        if self.pool is None:
            raise FeddfError("the synthesised pool is made in the server step (synthesize) before distillation")
        yield from PoolSource.batches(self, batch_size, seed)

    def describe(self) -> dict:
        return {"kind": "synth", "name": f"synth:{self.name}", "pool": self.size, **self.meta,
                "spec": asdict(self.spec)}

    def synthesize(self, seed: int, teachers: list, students: list, adjust: torch.Tensor | None, counts: list | None,
                   device, single_thread: bool = True) -> dict:
        """Train the generator `spec.steps` steps against the teachers (and the students' starts), then draw the
        round's pool. Returns the round's record: steps, each loss term at the end, label agreement, seconds."""
        from feddf.federated.kernels import one_thread
        from feddf.federated.synth import (draw_labels, frozen, generator_step, log_mean, mix_labels, per_class,
                                           to_input)
        from feddf.generators.base import to_uint8

        spec, k, res = self.spec, self.info.num_classes, self.info.size
        prior = None
        if spec.labels == "prior":
            if not counts or any(c is None for c in counts):
                raise FeddfError("--synth-labels prior needs every client's label counts with its model")
            total = torch.tensor(counts, dtype=torch.float64).sum(0) + 1.0  # (K,), a class no client saw stays drawable
            prior = (total / total.sum()).float()
        g = torch.Generator().manual_seed(seed)
        to_x = lambda img: to_input(img, res, self.info.mean, self.info.std)  # noqa: E731
        self.gen.to(device)
        t0 = time.perf_counter()
        rows = []
        with one_thread() if single_thread else contextlib.nullcontext(), frozen(list(teachers) + list(students)):
            for p in self.gen.parameters():
                p.requires_grad_(True)
            for _ in range(spec.steps):
                z = torch.randn(spec.batch, self.gen.nz, generator=g).to(device)
                y = draw_labels(spec.batch, k, g, prior)
                y = (mix_labels(y, k, spec.mix, g) if spec.mix else y).to(device)
                rows.append(generator_step(self.gen, self.opt, teachers, students, adjust, z, y, spec, to_x))
            t1 = time.perf_counter()
            labels = draw_labels(self.size, k, g, prior)
            zs = torch.randn(self.size, self.gen.nz, generator=g)
            cond = mix_labels(labels, k, spec.mix, g) if spec.mix else labels  # (P,) or (P, K); labels stay argmax
            parts = []
            with torch.no_grad():
                for s in range(0, self.size, 500):
                    img = self.gen(zs[s:s + 500].to(device), cond[s:s + 500].to(device))
                    parts.append(to_uint8(img.float(), res).cpu())
        new = (torch.cat(parts), labels)
        kept = self.memory[len(self.memory) - spec.memory:] if spec.memory else []  # the last spec.memory rounds'
        self.pool = torch.cat([m[0] for m in kept] + [new[0]])
        self.labels = torch.cat([m[1] for m in kept] + [new[1]])
        self.n = len(self.pool)
        self.memory = (kept + [new])[-spec.memory:] if spec.memory else []
        return {"steps": spec.steps, "loss": log_mean(rows), "train_s": round(t1 - t0, 3),
                "sample_s": round(time.perf_counter() - t1, 3), "labels": per_class(labels, k),
                "kept_rounds": len(kept)}


def save_pool(path: Path, source, ens_probs: torch.Tensor, *, round_: int, class_names: list, run: dict) -> Path:
    """The round's pool as a feddf cache at `path` (see the module docstring); returns the path."""
    from feddf.cache.writer import CacheWriter
    from feddf.utils import versions

    images = source.pool.numpy()
    labels = getattr(source, "labels", None)
    k = ens_probs.shape[1]
    conf, pred = ens_probs.max(1)
    attrs = {"kind": "generated", "generator": run.get("name", source.kind), "source": "feddf train pool",
             "round": round_, "seed": run.get("seed"), "label_names": list(class_names) if labels is not None else None,
             "labeler": "the round's teacher ensemble", "labeler_names": list(class_names),
             "config": run, "versions": versions()}
    with CacheWriter(path, n=len(images), channels=images.shape[1], resolution=images.shape[2], attrs=attrs,
                     num_labels=k if labels is not None else 0, labeler_classes=k, force=True) as w:
        w.append(images, labels=None if labels is None else labels.numpy(), labeler_pred=pred.numpy(),
                 labeler_conf=conf.numpy())
        w.finish()
    return path
