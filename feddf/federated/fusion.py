"""The steps of a federated round, one function each for every engine (`feddf train` in-process, Flower):
`sample_clients` (who takes part), `client_step` (one client's local training) and `fuse`, the FedDF server step:
average each architecture's client models, then (FedDF) distil the ensemble of all received models into every
architecture's average and keep the best-on-validation student. Every random choice is seeded from
(seed, round, purpose, client), so two engines that call these functions compute the same round.

    python -m pytest -q tests/test_fusion.py   # the step alone on a tiny task, and its equality with `feddf train`

`fuse(round, cfg, task, agg, server, clients, device)` takes the round's replies as `ClientUpdate`s sorted by client
(partition) id — the order fixes the float summation order of the average, so callers sort — and returns the new
server states plus the metrics fields of the round (docs/CONTRACTS.md, metrics.jsonl): `acc`, `ensemble_acc`,
`distill_steps`, `best_step`, `dropped`, `teachers`, and with distillation `val_acc`, `val_history`,
`stopped_early`, `target_cache`, and `upload_bytes` / `download_bytes` {client id: bytes} (the encoded payloads,
precision.py). Steps, as in the paper code:
  1. optional --drop-worst: clients whose validation accuracy is an outlier are left out of the average/teachers;
  2. FedAvg (or FedAvgM, ...) per architecture over the kept clients of that architecture, through `agg`;
  3. FedDF: every kept client model is a teacher; every architecture's average is a student (distill.py), trained on
     the round's transfer batches (seeded from (seed, round)), early-stopped on the server's validation split.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from feddf.errors import FeddfError
from feddf.federated.aggregate import drop_worst
from feddf.federated.client import accuracy
from feddf.federated.config import TrainConfig
from feddf.federated.distill import DistillSpec, distill
from feddf.federated.teachers import TeacherEnsemble, ensemble_scores, resolve_precision
from feddf.utils import check_finite_weights


def seed_of(*parts: int) -> int:
    """A 63-bit seed from integers (seed, round, purpose, ...): independent streams, stable across resumes/engines."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@dataclasses.dataclass
class ClientUpdate:
    """One client's reply in a round: its id (partition id), architecture, trained model (as the server decoded it
    from the upload) and training-set size; its precision and the bytes it downloaded / uploaded (precision.py)."""
    cid: int
    arch: str
    model: nn.Module
    n: int
    precision: str = "fp32"
    upload_bytes: int = 0
    download_bytes: int = 0
    payload: bytes | None = None    # the encoded upload (precision.encode); what a Flower node puts on the wire
    class_counts: list[int] | None = None  # its training labels per class, sent only when
    #                                        cfg.server_uses_label_counts() (--logit-adjust, --synth-labels prior)
    # (server kernels, (N, K) logits of `model` on the test split): the batched engine computes them on a core the
    # round's last clients leave idle; fuse's ensemble test pass takes them instead of computing them (same floats)
    test_logits: tuple[str, torch.Tensor] | None = None


def sample_clients(cfg: TrainConfig, r: int) -> list[int]:
    """Sorted client ids taking part in round r: round(clients * fraction) of them (the paper code's n_participated)."""
    rng = np.random.default_rng(seed_of(cfg.seed, r, 1))
    return sorted(int(k) for k in rng.choice(cfg.clients, participants(cfg), replace=False))


def participants(cfg: TrainConfig) -> int:
    """Clients sampled per round: round(clients * fraction), at least 1."""
    return max(1, int(cfg.clients * cfg.fraction + 0.5))


def client_step(cfg: TrainConfig, task, r: int, k: int, state: dict, device,
                progress: Callable[[int, int], None] | None = None) -> ClientUpdate:
    """Client k's local training in round r, starting from its architecture's server `state` (not modified), at the
    client's precision, with the run's --client-kernels (kernels.py); the returned model is what the server decodes
    from the client's encoded upload. Safe to call from several threads at once for an architecture whose probe is
    rng_free (engines.py): nothing else here is shared between clients."""
    from feddf.federated import precision as prec
    from feddf.federated.client import LocalSpec, local_train, make_transform
    from feddf.federated.kernels import one_thread
    from feddf.federated.losses import logit_offset

    arch = task.client_arch[k]
    portable = cfg.client_kernels == "portable"
    channels_last = portable and task.kernel_probe(arch).channels_last  # probed before the seed below: no draw moves
    torch.manual_seed(seed_of(cfg.seed, r, 0, k))  # anything that draws from the global RNG: per client, per round
    model = task.new_model(arch, state).to(device)
    p = task.client_precision[k]
    hooks = prec.QuantizedTraining(model, p, device) if p != "fp32" else None  # the client quantises it itself
    idx = task.client_indices[k]
    counts = torch.bincount(task.train_labels[idx], minlength=task.info.num_classes).tolist()
    spec = LocalSpec(cfg.local_epochs, cfg.local_lr, cfg.batch_size, cfg.local_momentum, cfg.weight_decay,
                     cfg.prox_mu, cfg.augment, channels_last=channels_last,
                     logit_offset=logit_offset(cfg.local_loss, counts, cfg.fedlc_tau))
    gen = torch.Generator().manual_seed(seed_of(cfg.seed, r, 2, k))
    with one_thread() if portable else contextlib.nullcontext():
        local_train(model, task.train_images[idx], task.train_labels[idx], spec,
                    make_transform(task.info, cfg.augment), gen, device, progress=progress, hooks=hooks)
    upload = prec.encode(model.state_dict(), p, hooks.codes if hooks is not None else None)
    received = task.new_model(arch, prec.decode(upload)[1]).to(device)
    sent = counts if cfg.server_uses_label_counts() else None  # the counts leave the client only when used
    return ClientUpdate(k, arch, received, len(idx), p, len(upload), len(prec.encode(state, "fp32")), upload, sent)


def teacher_adjustment(cfg: TrainConfig, task, teachers_counts: list) -> torch.Tensor | None:
    """(T, K) label-prior adjustment of the teachers (teachers.label_prior_adjustment) from each one's class counts,
    or None with --logit-adjust 0 or without distillation (cfg.server_uses_label_counts: under the baselines the
    clients keep their counts and `ensemble_acc` is the plain ensemble's). A teacher without counts (a client
    that did not send them) is refused: adjusting the others only would bias the ensemble towards it."""
    from feddf.federated.teachers import label_prior_adjustment

    if not (cfg.logit_adjust and cfg.server_uses_label_counts()):
        return None
    k = task.info.num_classes
    if any(c is None or len(c) != k for c in teachers_counts):
        raise FeddfError(f"--logit-adjust {cfg.logit_adjust:g} needs every client's {k} label counts with its model "
                         "(a client sent none: update its feddf, or pass --logit-adjust 0)")
    return label_prior_adjustment(teachers_counts, cfg.logit_adjust)


class _Clock:
    """Seconds per phase of the server step (metrics `server_seconds`); `parts` takes distill()'s own breakdown."""

    def __init__(self):
        self.t = time.perf_counter()
        self.phases: dict[str, float] = {}
        self.parts: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.t
        self.t = now

    def record(self) -> dict:
        out = {k: round(v, 3) for k, v in self.phases.items()}
        if self.parts:
            out["distill_parts"] = {k: round(v, 3) for k, v in self.parts.items()}
        return out


def round_source(r: int, cfg: TrainConfig, task, teachers: list, students: dict, adjust, counts: list, device,
                 single_thread: bool, phase) -> tuple[object | None, dict | None]:
    """(the round's transfer source, its metrics record) - the synthesiser's new pool (synth: sources), a pool drawn
    from the task's source (--distill-pool P > 0), or (None, None): the task's source as it is (pool.py)."""
    from feddf.federated.pool import draw_pool

    src = task.source
    if getattr(src, "kind", None) == "synth":
        phase(f"synthesising {cfg.distill_pool} images ({cfg.synth_steps} generator steps)", True)
        rec = src.synthesize(seed_of(cfg.seed, r, 5), teachers, list(students.values()), adjust, counts, device,
                             single_thread)
        return src, {"n": src.n, "from": "synth", "synth": rec}
    if cfg.distill_pool:
        pool = draw_pool(src, cfg.distill_pool, seed_of(cfg.seed, r, 6))
        return pool, {"n": pool.n, **pool.origin}
    return None, None


def save_round_pool(r: int, cfg: TrainConfig, task, source, ens: TeacherEnsemble):
    """--save-pool DIR: the round's pool, labelled by the ensemble at T = 1, as DIR/round-NNN.h5 (pool.save_pool)."""
    from pathlib import Path

    from feddf.federated.pool import save_pool
    from feddf.federated.teachers import ensemble_target

    plain = task.eval_tf
    probs = torch.cat([ensemble_target(ens.logits(plain(source.pool[s:s + 500]).to(ens.device)), ens.mode, 1.0,
                                       ens.weights)[0].cpu() for s in range(0, source.n, 500)])
    run = {"name": cfg.distill_source, "seed": cfg.seed, "round": r, "distill_pool": cfg.distill_pool}
    return save_pool(Path(cfg.save_pool) / f"round-{r:03d}.h5", source, probs, round_=r,
                     class_names=list(task.info.class_names), run=run)


@dataclasses.dataclass
class FusionResult:
    server: dict            # arch -> new server state (CPU tensors)
    metrics: dict           # the round's metrics fields (see the module docstring)
    seconds: dict = dataclasses.field(default_factory=dict)  # wall seconds per phase (metrics.jsonl server_seconds)


def _diverged(cfg: TrainConfig) -> str:
    return (f"training diverged (NaN/inf); nothing of this round was saved: lower --local-lr (now {cfg.local_lr:g})"
            + (f" or --distill-lr (now {cfg.distill_lr:g})" if cfg.aggregator == "feddf" else "")
            + ", or check the model's forward pass, then start a new --out or --resume from the last saved round")


def fuse(r: int, cfg: TrainConfig, task, agg, server: dict, clients: list[ClientUpdate], device,
         phase: Callable[[str, bool], None] = lambda text, force=False: None) -> FusionResult:
    """The server step of round r (1-based). `server` is not modified; the result holds the new states."""
    torch.manual_seed(seed_of(cfg.seed, r, 4))  # whatever draws from the global RNG here: the same in every engine
    for c in clients:  # a diverged client ends the run here, before anything of this round is saved
        check_finite_weights(c.model.state_dict(), f"round {r}: client {c.cid}'s trained {c.arch} model",
                             _diverged(cfg))
    clock = _Clock()
    sk = cfg.server_kernels  # every evaluation of the round: evaluation.py
    # ---- FedAvg per architecture (after --drop-worst) --------------------------------------------------------
    keep_avg = keep_teach = list(range(len(clients)))
    dropped: list[int] = []
    if cfg.drop_worst:
        phase("drop-worst: validating clients", True)
        val_accs = [task.val_accuracy(c.model, device, sk) for c in clients]
        keep_avg, keep_teach = drop_worst(val_accs, task.info.num_classes)
        dropped = sorted({c.cid for c in clients} - {clients[i].cid for i in keep_teach})
    acc: dict[str, dict] = {}
    fedavg_states = {}
    for a in cfg.archs:
        members = [clients[i] for i in keep_avg if clients[i].arch == a]
        # an architecture no client of this round trained keeps its state (agg returns a copy of server[a])
        fedavg_states[a] = agg.aggregate(a, server[a], [c.model.state_dict() for c in members],
                                         [c.n for c in members], task.param_names[a])
        acc[a] = {"fedavg": task.test_accuracy(task.new_model(a, fedavg_states[a]).to(device), device, sk),
                  "distilled": None}

    clock.lap("fedavg")  # --drop-worst validation, the averages and their test accuracy
    teachers = [clients[i].model for i in keep_teach]
    counts = [clients[i].class_counts for i in keep_teach]
    if cfg.ensemble_fedavg and teachers:  # FedBE-style: each architecture's FedAvg model teaches next to the clients
        for a in cfg.archs:
            members = [clients[i] for i in keep_avg if clients[i].arch == a]
            if members:  # its label prior: that of the data it averages over
                teachers.append(task.new_model(a, fedavg_states[a]).to(device))
                counts.append(None if any(m.class_counts is None for m in members)
                              else np.sum([m.class_counts for m in members], 0).tolist())
    adjust = teacher_adjustment(cfg, task, counts) if teachers else None
    known = [clients[i].test_logits for i in keep_teach]  # the FedAvg teachers (--ensemble-fedavg) have none
    test_logits = task.test_logits(teachers, device, sk, known) if teachers else None  # (T, N, K)
    for i, j in enumerate(keep_teach):  # finite weights can still overflow: a client whose outputs are NaN/inf
        if not bool(torch.isfinite(test_logits[i]).all()):
            raise FeddfError(f"round {r}: client {clients[j].cid}'s trained {clients[j].arch} model outputs NaN/inf "
                             f"on the test images: {_diverged(cfg)}")
    if adjust is not None:
        test_logits = test_logits - adjust[:, None, :]  # the ensemble as it teaches: (T, N, K) - (T, 1, K)
    ensemble_acc = accuracy(ensemble_scores(test_logits, cfg.ensemble), task.test_labels) if teachers else None
    clock.lap("ensemble_test")

    # ---- FedDF: distil the ensemble into every architecture's FedAvg model -----------------------------------
    steps = {a: 0 for a in cfg.archs}
    best = {a: None for a in cfg.archs}
    extra: dict = {}
    new_states = dict(fedavg_states)
    if cfg.aggregator == "feddf" and teachers:
        students = {a: task.new_model(a, fedavg_states[a]).to(device) for a in cfg.archs}
        portable = sk != "legacy"  # fused and portable: the students train with one thread + channels_last
        cl = frozenset(a for a in cfg.archs if portable and task.kernel_probe(a).channels_last)
        ens = TeacherEnsemble(teachers, mode=cfg.ensemble, temperature=cfg.temperature,
                              precision=resolve_precision(cfg.teacher_precision, device), compile=cfg.compile_teachers,
                              batched="auto" if torch.device(device).type == "cuda" else False, device=device)
        ens.adjust = adjust
        source, pool_record = round_source(r, cfg, task, teachers, students, adjust, counts, device, portable, phase)
        clock.lap("pool")  # synthesis (synth: sources) or drawing the round's pool; ~0 without a pool
        batches, cache = task.distill_batches(cfg, seed_of(cfg.seed, r, 3), device, source=source)
        dspec = DistillSpec(cfg.distill_steps, cfg.distill_lr, cfg.temperature, cfg.eval_every, cfg.patience,
                            prefetch=cfg.prefetch, bn=cfg.distill_bn, one_thread=portable, channels_last=cl)

        def show(step, vals):
            phase(f"distill {step}/{cfg.distill_steps} val " + " ".join(f"{a}={v:.3f}" for a, v in vals.items()),
                  step == cfg.distill_steps)

        clock.lap("setup")
        results = distill(students, ens, batches, lambda mdl: task.val_accuracy(mdl, device, sk), dspec, cache, show,
                          timing=clock.parts)
        clock.lap("distill")
        for a, res in results.items():
            # contiguous: a channels_last student's weights go back to the layout every model loads (same values)
            new_states[a] = {k: v.detach().cpu().contiguous().clone() for k, v in students[a].state_dict().items()}
            acc[a]["distilled"] = task.test_accuracy(students[a], device, sk)
            steps[a], best[a] = res.steps, res.best_step
        clock.lap("student_test")
        extra = {"val_acc": {a: {"fedavg": res.init_val, "distilled": res.best_val} for a, res in results.items()},
                 "val_history": {a: [[h["step"], h["val"]] for h in res.history] for a, res in results.items()},
                 "stopped_early": {a: res.stopped_early for a, res in results.items()}}
        if cache is not None:
            extra["target_cache"] = {"hits": cache.hits, "misses": cache.misses}
        if pool_record is not None:  # teacher forward passes: images labelled x teachers
            pool_record["teacher_forwards"] = cache.misses * len(teachers) if cache is not None else None
            if cfg.save_pool:
                pool_record["saved"] = str(save_round_pool(r, cfg, task, source, ens))
            extra["pool"] = pool_record
            clock.lap("save_pool")
    new_server = {a: {k: v.detach().cpu().clone() for k, v in new_states[a].items()} for a in cfg.archs}
    for a, state in new_server.items():
        check_finite_weights(state, f"round {r}: the server's {a} model", _diverged(cfg))
    metrics = {"acc": acc, "ensemble_acc": ensemble_acc, "distill_steps": steps, "best_step": best,
               "dropped": dropped, "teachers": len(teachers), **extra,
               "upload_bytes": {str(c.cid): c.upload_bytes for c in clients},
               "download_bytes": {str(c.cid): c.download_bytes for c in clients}}
    return FusionResult(server=new_server, metrics=metrics, seconds=clock.record())
