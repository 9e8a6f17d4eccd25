"""One round's transfer set for FedDF: the distillation batches, with optional per-round selection by the ensemble and
mixup of transfer batches.

    python -m pytest -q tests/test_transfer.py -k select   # selection and mixup on tiny models

`TransferStream` is what `Task.distill_batches` returns. Without selection it is a plain iterable of (ids | None,
normalised float (B, C, H, W)) batches. Selection needs the round's teachers (and, for "hard", the students), so
`distill()` calls `stream.bind(ensemble, students)` first; the stream then scores samples once and yields batches of
the kept ones only.

Selection rules (`--distill-select`, the kept share is `--select-fraction`):
  low-entropy  keep the samples whose ensemble prediction (at T = 1) has the lowest entropy: the confident ones, the
               idea of the FedDF paper code's `noise_kt_preprocess` (off-manifold samples get flat predictions);
  hard         keep the samples with the highest KL(ensemble || student) at the distillation temperature, the
               student being each architecture's FedAvg start (averaged over architectures): DENSE / FedFTG's
               "hard sample" direction.
  A finite in-memory source (a cache held in memory) is scored whole once per round, the kept ids then come back in
  seeded permutation epochs, and the scoring pass fills the TargetCache (no teacher pass is wasted). An endless
  source (noise, a streamed cache) is selected per window: ceil(B / fraction) samples are drawn, the B best kept.
Mixup (`--distill-mixup a`, off at 0): x' = lam x + (1 - lam) x[perm], lam ~ Beta(a, a) per sample and perm a
random pairing within the batch; the teachers see the mixed batch too ("function matching", Beyer et al. 2022), so
targets are not reused. Ties in the scores are broken by sample order (stable sort), and every random draw comes from
the round's seed, so a round - and so `--resume` - is reproducible.
"""
from __future__ import annotations

import copy
import math
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from feddf.errors import FeddfError

SELECTIONS = ("none", "low-entropy", "hard")
SCORE_BATCH = 512  # samples per scoring forward pass


def entropy(p: torch.Tensor) -> torch.Tensor:
    """(B, K) probabilities -> (B,) entropy in nats."""
    return -(p * torch.log(p.clamp_min(1e-30))).sum(1)


def selection_scores(rule: str, teacher_logits: torch.Tensor, mode: str, temperature: float,
                     student_logits: list[torch.Tensor] | None = None, weights=None) -> torch.Tensor:
    """(B,) scores, higher = keep first. teacher_logits (T, B, K); student_logits: per architecture (B, K)."""
    from feddf.federated.teachers import ensemble_target

    if rule == "low-entropy":
        p, _ = ensemble_target(teacher_logits, mode, 1.0, weights)
        return -entropy(p)
    if rule == "hard":
        if not student_logits:
            raise FeddfError("--distill-select hard needs the students (the FedAvg models)")
        p, _ = ensemble_target(teacher_logits, mode, temperature, weights)
        kl = [F.kl_div(F.log_softmax(s / temperature, 1), p, reduction="none").sum(1) for s in student_logits]
        return torch.stack(kl).mean(0)
    raise FeddfError(f"unknown --distill-select {rule!r}: choose one of {', '.join(SELECTIONS)}")


def keep_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the k highest scores, ties by position (deterministic), returned in increasing position order."""
    order = torch.sort(-scores.double(), stable=True).indices[:k]
    return torch.sort(order).values


def mixup(x: torch.Tensor, alpha: float, rng: np.random.Generator) -> torch.Tensor:
    """x (B, C, H, W) -> lam x + (1 - lam) x[perm], lam ~ Beta(alpha, alpha) per sample, perm a random pairing."""
    b = x.shape[0]
    if alpha <= 0 or b < 2:
        return x
    lam = torch.from_numpy(rng.beta(alpha, alpha, size=b).astype(np.float32)).to(x.device).view(b, 1, 1, 1)
    perm = torch.from_numpy(rng.permutation(b)).to(x.device)
    return lam * x + (1 - lam) * x[perm]


class TransferStream:
    """The distillation batches of one round (see the module docstring). `cache` is the TargetCache or None."""

    def __init__(self, source, transform, plain, *, batch_size: int, seed: int, device, num_classes: int,
                 select: str = "none", fraction: float = 1.0, mixup_alpha: float = 0.0, cache=None):
        if select not in SELECTIONS:
            raise FeddfError(f"unknown --distill-select {select!r}: choose one of {', '.join(SELECTIONS)}")
        self.source, self.tf, self.plain = source, transform, plain
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.num_classes, self.select, self.fraction, self.mixup_alpha = num_classes, select, fraction, mixup_alpha
        self.cache = cache
        self.gen = torch.Generator().manual_seed(seed)          # augmentation draws
        self.rng = np.random.default_rng([seed, 18])            # mixup draws, independent of the augmentation
        self.kept: torch.Tensor | None = None                   # pool ids kept this round (in-memory sources)
        self.stats: dict = {}

    # ---- plain batches -----------------------------------------------------------------------------------------
    def _finish(self, ids, u8) -> tuple:
        x = self.tf(u8, self.gen).to(self.device)
        if self.mixup_alpha > 0:
            return None, mixup(x, self.mixup_alpha, self.rng)
        return (ids if self.cache is not None else None), x

    def __iter__(self) -> Iterator[tuple]:
        for ids, u8 in self.source.batches(self.batch_size, self.seed):
            yield self._finish(ids, u8)

    # ---- selection ---------------------------------------------------------------------------------------------
    def bind(self, ensemble, students: dict) -> Iterator[tuple]:
        """The round's batches once the teachers are known: selected when --distill-select asks for it."""
        if self.select == "none" or self.fraction >= 1.0:
            return iter(self)
        # a copy of each student's FedAvg start: the producer thread scores with it while the students train
        models = [copy.deepcopy(m) for m in students.values()] if self.select == "hard" else []
        pool = getattr(self.source, "pool", None)
        return self._pool_selected(pool, ensemble, models) if pool is not None else \
            self._window_selected(ensemble, models)

    def _scores(self, x: torch.Tensor, ensemble, models, ids=None) -> torch.Tensor:
        """Scores of a normalised batch; fills the TargetCache for ids on the way (same teacher pass)."""
        from feddf.federated.teachers import ensemble_target

        logits = ensemble.logits(x)  # (T, B, K)
        if self.cache is not None and ids is not None:
            p, c = ensemble_target(logits, ensemble.mode, ensemble.temperature, ensemble.weights)
            self.cache.store(ids, p, c)
        student = []
        for m in models:  # each student's FedAvg start, in eval mode, then back to where it was
            was = m.training
            m.eval()
            with torch.no_grad():
                student.append(m(x).float())
            m.train(was)
        return selection_scores(self.select, logits, ensemble.mode, ensemble.temperature, student,
                                ensemble.weights).cpu()

    def _pool_selected(self, pool: torch.Tensor, ensemble, models) -> Iterator[tuple]:
        n = len(pool)
        k = max(1, math.ceil(self.fraction * n))
        scores = torch.cat([self._scores(self.plain(pool[s:s + SCORE_BATCH]).to(self.device), ensemble, models,
                                         torch.arange(s, min(s + SCORE_BATCH, n)))
                            for s in range(0, n, SCORE_BATCH)])
        self.kept = keep_top(scores, k)
        self.stats = {"rule": self.select, "scored": n, "kept": k,
                      "score_kept_mean": float(scores[self.kept].mean()), "score_all_mean": float(scores.mean())}
        return self._kept_batches(pool)

    def _kept_batches(self, pool: torch.Tensor) -> Iterator[tuple]:
        from feddf.federated.sources import id_batches

        for ids in id_batches(self.kept, self.batch_size, self.seed):  # seeded permutation epochs over the kept ids
            yield self._finish(ids, pool[ids])

    def _window_selected(self, ensemble, models) -> Iterator[tuple]:
        window = math.ceil(self.batch_size / self.fraction)
        self.stats = {"rule": self.select, "window": window, "kept_per_window": self.batch_size}
        for _, u8 in self.source.batches(window, self.seed):
            scores = self._scores(self.plain(u8).to(self.device), ensemble, models)
            keep = keep_top(scores, self.batch_size)
            yield self._finish(None, u8[keep])
