"""FedDF server distillation: every architecture's student learns the client ensemble on unlabelled batches.

    python -m pytest -q tests/test_distill.py   # a self-contained run on tensors and tiny models

`distill(students, ensemble, batches, validate, spec)` runs all students in lock-step on the same batches, so the
teacher outputs of a batch are computed once and shared (heterogeneous FedDF: one prototype per architecture, each
learning from every teacher). Per student, as in the paper code (`NoiseKTSolver.distillation`):
  - the start is the FedAvg model of its architecture. Its BatchNorm layers stay in eval mode (`bn="running"`, our
    default): they normalise with the running statistics the clients measured on real data, and keep them, while
    every weight (BN's affine ones included) learns. The paper code trains in train mode (`bn="train"`), which
    re-estimates the statistics on the transfer batches: with generated or noise inputs the student then evaluates
    real images with the generator's statistics (measured: docs/results.md, transfer-set ablation);
  - loss KL(ensemble || student) at temperature T (teachers.py); Adam(lr 1e-3), cosine annealing over the step
    budget (stepped every batch), gradient-norm clip 5;
  - validation accuracy on the server's labelled split every `eval_every` steps; stop once `patience` steps passed
    without a strict improvement; the best-on-validation weights are kept, the FedAvg start (step 0) included.
Speed: a background thread prepares the next batches (uint8 -> float, teacher forward passes; up to `prefetch` ahead,
from before the step-0 validation on) while the students take their step on batch t; for sources with stable sample ids and no augmentation, each sample's target is computed once per
round and reused whenever the sample comes back (`TargetCache`).
"""
from __future__ import annotations

import contextlib
import copy
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from feddf.federated.kernels import input_format, one_thread, to_kernels
from feddf.federated.teachers import TeacherEnsemble, distill_loss

Batch = tuple  # (ids LongTensor (B,) or None, float input (B, C, H, W))


@dataclass
class DistillSpec:
    steps: int = 10000          # paper: total_n_server_pseudo_batches = 10^4
    lr: float = 1e-3            # paper: Adam, student_learning_rate = 1e-3
    temperature: float = 1.0    # paper: KL_temperature = 1
    eval_every: int = 100       # paper: eval_batches_freq = 100
    patience: int = 1000        # paper: early_stopping_server_batches = 1000 (released commands)
    clip: float = 5.0           # paper: clip_grad_norm_(..., 5)
    prefetch: int = 16          # batches prepared ahead by the background thread (0 = no thread)
    bn: str = "running"         # BN normalises with, and keeps, the start's statistics; "train": the paper code's
    #                             train mode (statistics re-estimated on the transfer batches)
    one_thread: bool = False    # --server-kernels fused|portable: each student step with one intra-op thread (the same
    #                             floats on any core count; the teachers' thread has the other core)
    channels_last: frozenset = frozenset()  # students (by name) that train in channels_last (kernels.probe)


@dataclass
class DistillResult:
    init_val: float
    best_val: float
    best_step: int                      # 0 = no step beat the FedAvg start, which is kept
    steps: int = 0                      # steps taken before stopping
    stopped_early: bool = False
    history: list = field(default_factory=list)   # [{"step", "val", "loss"}] at each validation


class TargetCache:
    """Ensemble targets by sample id for a finite source: (N, K) probabilities + (N,) constants, filled lazily."""

    def __init__(self, n: int, num_classes: int):
        self.probs = torch.zeros(n, num_classes)
        self.const = torch.zeros(n)
        self.filled = torch.zeros(n, dtype=torch.bool)
        self.hits = self.misses = 0

    def lookup(self, ids: torch.Tensor, x: torch.Tensor, ensemble: TeacherEnsemble):
        ids = ids.cpu()
        missing = ~self.filled[ids]  # (B,) bool; the table lives on the CPU, the batch may be on a GPU
        n_miss = int(missing.sum())
        if n_miss:
            p, c = ensemble.target(x[missing.to(x.device)])
            self.probs[ids[missing]] = p.to(self.probs)
            self.const[ids[missing]] = c.to(self.const)
            self.filled[ids[missing]] = True
        self.misses += n_miss
        self.hits += len(ids) - n_miss
        return self.probs[ids].to(x.device), self.const[ids].to(x.device)

    def store(self, ids: torch.Tensor, probs: torch.Tensor, const: torch.Tensor) -> None:
        """Targets computed elsewhere (the selection pass of feddf.federated.transfer) for these ids."""
        ids = ids.cpu()
        self.probs[ids], self.const[ids] = probs.to(self.probs), const.to(self.const)
        self.filled[ids] = True
        self.misses += len(ids)


def _targets(batches: Iterable[Batch], ensemble: TeacherEnsemble, cache: TargetCache | None) -> Iterator:
    for ids, x in batches:
        if cache is not None and ids is not None:
            yield (x, *cache.lookup(ids, x, ensemble))
        else:
            yield (x, *ensemble.target(x))


class prefetched:
    """Run `it` in a background thread, `depth` items ahead (torch ops release the GIL, so the teachers' forward
    passes overlap the students' step). The thread starts at once, so it also works while the caller does something
    else first (the step-0 validation). Exceptions are re-raised in the consumer; close() stops the producer."""

    _DONE = object()

    def __init__(self, it: Iterator, depth: int):
        self.it, self.thread = it, None
        if depth <= 0:
            return
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, name="feddf-teachers", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        try:
            for item in self.it:
                while not self.stop.is_set():
                    try:
                        self.q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    return
            self.q.put(self._DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self.q.put(e)

    def __iter__(self):
        return self

    def __next__(self):
        if self.thread is None:
            return next(self.it)
        item = self.q.get()
        if item is self._DONE:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        if self.thread is not None:
            self.stop.set()
            while self.thread.is_alive():  # a producer blocked on a full queue sees `stop` within 0.1 s
                self.thread.join(timeout=0.1)


class _Student:
    """One architecture's student: optimiser, schedule, early-stopping state and its best weights."""

    def __init__(self, model: nn.Module, spec: DistillSpec, init_val: float, channels_last: bool = False):
        self.model = to_kernels(model, channels_last)
        self.channels_last = channels_last
        self.opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(1, spec.steps))
        self.result = DistillResult(init_val=init_val, best_val=init_val, best_step=0)
        self.best_state = copy.deepcopy(model.state_dict())
        self.active = True
        self.loss_sum = 0.0
        self.loss_n = 0
        # bn="running": these BN layers go back to eval mode after every model.train() (validation toggles the mode):
        # affine weights still learn, the statistics stay those the clients measured on real data (their FedAvg)
        self.frozen_bn = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] \
            if spec.bn == "running" else []

    def step(self, x, probs, const, spec: DistillSpec) -> None:
        self.model.train()
        for m in self.frozen_bn:
            m.eval()
        with one_thread() if spec.one_thread else contextlib.nullcontext():
            loss = distill_loss(self.model(input_format(x, self.channels_last)), probs, const, spec.temperature)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), spec.clip)
            self.opt.step()
        self.sched.step()
        self.loss_sum = self.loss_sum + loss.detach()  # a tensor: no host sync per step (matters on a GPU)
        self.loss_n += 1

    def validate(self, step: int, val: float, spec: DistillSpec) -> None:
        r = self.result
        r.history.append({"step": step, "val": val, "loss": float(self.loss_sum) / max(1, self.loss_n)})
        self.loss_sum, self.loss_n = 0.0, 0
        if val > r.best_val:
            r.best_val, r.best_step = val, step
            self.best_state = copy.deepcopy(self.model.state_dict())
        if step - r.best_step >= spec.patience:
            self.active, r.stopped_early = False, True

    def finish(self) -> DistillResult:
        self.model.load_state_dict(self.best_state)
        return self.result


def _timed(it: Iterator, timing: dict, key: str) -> Iterator:
    """`it`, adding the seconds spent producing each item to timing[key]."""
    while True:
        t = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            timing[key] = timing.get(key, 0.0) + time.perf_counter() - t
        yield item


def distill(students: dict[str, nn.Module], ensemble: TeacherEnsemble, batches: Iterable[Batch],
            validate: Callable[[nn.Module], float], spec: DistillSpec, cache: TargetCache | None = None,
            progress: Callable[[int, dict], None] | None = None,
            timing: dict | None = None) -> dict[str, DistillResult]:
    """Distill `ensemble` into every student (in place; each ends with its best-on-validation weights).

    `batches` yields (ids or None, normalised float (B, C, H, W)); it is read at most `spec.steps` times. A batches
    object with a `bind(ensemble, students)` method (feddf.federated.transfer.TransferStream) is bound first: its
    per-round selection needs the teachers and the students' FedAvg starts.
    `validate(model)` returns an accuracy in [0, 1] (the caller puts the model in eval mode and back).
    `progress(step, {arch: last val acc})` is called after every step. `timing`, when given, receives the seconds
    spent on: "batches" (reading + converting transfer batches and the teachers' targets, in the prefetch thread
    when there is one), "waiting" (the students idle until the next batch was ready: teacher-bound when large),
    "students" (their steps) and "validation". Without a prefetch thread "waiting" includes "batches".
    """
    timing = {} if timing is None else timing
    it = iter(batches.bind(ensemble, students) if hasattr(batches, "bind") else batches)

    def limited():  # the producer never reads past the step budget
        for _ in range(spec.steps):
            try:
                yield next(it)
            except StopIteration:
                return

    # the producer starts before the step-0 validation and runs up to `prefetch` batches ahead, so the teachers keep
    # working through every validation pass (teacher-bound rounds: docs/benchmarks.md, the server step)
    gen = prefetched(_timed(_targets(limited(), ensemble, cache), timing, "batches"), spec.prefetch)
    step = 0
    try:
        t = time.perf_counter()
        state = {a: _Student(m, spec, validate(m), a in spec.channels_last) for a, m in students.items()}
        timing["validation"] = time.perf_counter() - t
        last_val = {a: s.result.init_val for a, s in state.items()}
        for x, probs, const in _timed(gen, timing, "waiting"):
            step += 1
            t = time.perf_counter()
            for s in state.values():
                if s.active:
                    s.step(x, probs, const, spec)
                    s.result.steps = step
            t2 = time.perf_counter()
            timing["students"] = timing.get("students", 0.0) + t2 - t
            if step % spec.eval_every == 0 or step == spec.steps:
                for a, s in state.items():
                    if s.active:
                        last_val[a] = validate(s.model)
                        s.validate(step, last_val[a], spec)
                timing["validation"] += time.perf_counter() - t2
            if progress is not None:
                progress(step, dict(last_val))
            if not any(s.active for s in state.values()):
                break
    finally:
        gen.close()
    return {a: s.finish() for a, s in state.items()}
