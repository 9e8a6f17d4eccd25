"""FedDF distillation throughput: steps/s with 8 same-architecture teachers, feddf's path vs a naive per-teacher loop
measured in the same run, next to the ceiling (the student step alone, targets free).

    .venv/bin/python benchmarks/bench_distill.py            # resnet8, 3x32x32, batch 64, 8 teachers
    .venv/bin/python benchmarks/bench_distill.py --quick    # fewer steps (smoke)
    python3 benchmarks/bench_distill.py --device cuda --batch 256 --steps 200   # on a GPU (teachers vmapped)

Methods (all use the same student step: Adam, KL at T=1, clip 5, cosine schedule):
  naive       the paper code's loop: for each teacher, teacher(x) under no_grad (eval mode, fp32), then the step
  ceiling     the student step alone (targets precomputed)
  feddf-fp32  feddf.federated.distill.distill with its TeacherEnsemble (BN folded into convs, channels_last,
              inference_mode), batch t+1's targets computed in a background thread during the step on batch t
  feddf       the same at feddf train's default teacher precision (`auto`: bf16 on CPUs with native bf16)
  cached      feddf on a finite source held in memory (the usual GAN or real cache): each sample's ensemble target
              is computed once per round and reused; --passes passes over the source in --steps steps
Batches of the first three feddf rows never repeat (a stream), the worst case for feddf. Timings are wall-clock over
--steps steps after --warmup, repeated --repeats times in interleaved order (the machine may be shared); the best
repeat is reported (least disturbed), the median next to it. Also reported: how often the bf16 ensemble's argmax
agrees with fp32's and the largest probability difference. Ends with one JSON line: `ratio` = feddf (default
precision, stream) / naive; `ratio_fp32`, `ratio_cached`, `ceiling_ratio` likewise.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

# Before torch loads OpenMP: sleeping (not spinning) OpenMP workers. On a shared or oversubscribed CPU, spinning
# threads make every multi-threaded op several times slower and the figures meaningless; both methods get the same
# setting. Pass OMP_WAIT_POLICY=active explicitly to measure the other regime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feddf.federated.distill import DistillSpec, TargetCache, distill  # noqa: E402
from feddf.federated.sources import _pool_batches  # noqa: E402
from feddf.federated.teachers import (TeacherEnsemble, distill_loss, ensemble_scores,  # noqa: E402
                                      resolve_precision)
from feddf.models import get_model  # noqa: E402


def make_teachers(arch, n, k, c, r):
    """n eval-mode teachers with different weights and non-trivial BN statistics (so folding has work to do)."""
    out = []
    for i in range(n):
        torch.manual_seed(100 + i)
        m = get_model(arch, k, c)
        m.train()
        with torch.no_grad():
            for _ in range(2):
                m(torch.randn(32, c, r, r))
        out.append(m.eval())
    return out


def sync(dev):
    if dev.type == "cuda":  # CUDA kernels are asynchronous: time only finished work
        torch.cuda.synchronize(dev)


def student_stepper(arch, k, c, steps, dev):
    torch.manual_seed(0)
    s = get_model(arch, k, c).to(dev).train()
    opt = torch.optim.Adam(s.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)

    def step(x, probs):
        loss = distill_loss(s(x), probs, torch.zeros(len(x), device=x.device), 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(s.parameters(), 5.0)
        opt.step()
        sched.step()

    return s, step


def stream(batch, c, r, n, seed, dev):
    """Fresh normalised batches that never repeat (the worst case for reuse), already on `dev`."""
    g = torch.Generator().manual_seed(seed)
    return [(None, torch.randn(batch, c, r, r, generator=g).to(dev)) for _ in range(n)]


def run_naive(a, teachers, xs):
    _, step = student_stepper(a.arch, a.classes, a.channels, len(xs), a.dev)
    sync(a.dev)
    t = time.perf_counter()
    for _, x in xs:
        with torch.no_grad():
            logits = torch.stack([m(x) for m in teachers])
        step(x, torch.softmax(logits.mean(0), 1))
    sync(a.dev)
    return len(xs) / (time.perf_counter() - t)


def run_ceiling(a, teachers, xs):
    _, step = student_stepper(a.arch, a.classes, a.channels, len(xs), a.dev)
    probs = torch.softmax(torch.randn(a.batch, a.classes, device=a.dev), 1)
    sync(a.dev)
    t = time.perf_counter()
    for _, x in xs:
        step(x, probs)
    sync(a.dev)
    return len(xs) / (time.perf_counter() - t)


def run_feddf(a, teachers, batches, precision="fp32", cache=None, prefetch=2):
    torch.manual_seed(0)
    student = get_model(a.arch, a.classes, a.channels).to(a.dev)
    sync(a.dev)
    t = time.perf_counter()
    # preparation counts: it happens every round. On CUDA, feddf train stacks small same-architecture teachers (vmap;
    # feddf.federated.teachers.VMAP_MAX_PARAMS); --batched forces either way.
    batched = {"auto": "auto" if a.dev.type == "cuda" else False, "vmap": True, "loop": False}[a.batched]
    ens = TeacherEnsemble(teachers, precision=precision, batched=batched, device=a.dev)
    n = len(batches) if isinstance(batches, list) else a.steps
    distill({"s": student}, ens, batches, lambda m: 0.0,
            DistillSpec(steps=n, eval_every=10 ** 9, patience=10 ** 9, prefetch=prefetch), cache)
    sync(a.dev)
    return n / (time.perf_counter() - t)


def bf16_agreement(teachers, xs, dev):
    f32 = TeacherEnsemble(teachers, device=dev)
    b16 = TeacherEnsemble(teachers, precision="bf16", device=dev)
    agree, diff = [], 0.0
    for _, x in xs:
        p32, p16 = f32.logits(x), b16.logits(x)
        agree.append((ensemble_scores(p32, "avg-logits").argmax(1) == ensemble_scores(p16, "avg-logits")
                      .argmax(1)).float().mean().item())
        diff = max(diff, (f32.target(x)[0] - b16.target(x)[0]).abs().max().item())
    return statistics.mean(agree), diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet8")
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--teachers", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--passes", type=float, default=8.0, help="passes over the finite source of the `cached` row "
                    "(a default round: 10^4 steps x 64 over a 20k-image cache = 32 passes)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--batched", default="auto", choices=["auto", "vmap", "loop"],
                    help="teachers of one architecture: vmapped, a loop, or what feddf train does (auto)")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    a.dev = torch.device(a.device)
    if a.quick:
        a.steps, a.repeats, a.warmup = 12, 1, 2
    if a.threads:
        torch.set_num_threads(a.threads)
    a.pool = max(a.batch, int(a.steps * a.batch / a.passes))
    teachers = make_teachers(a.arch, a.teachers, a.classes, a.channels, a.resolution)
    naive_teachers = [copy.deepcopy(m).to(a.dev) for m in teachers]
    xs = stream(a.batch, a.channels, a.resolution, a.steps, seed=1, dev=a.dev)
    pool = torch.randint(0, 256, (a.pool, a.channels, a.resolution, a.resolution), dtype=torch.uint8).to(a.dev)
    norm = lambda u8: (u8.float() / 255 - 0.5) / 0.25  # noqa: E731

    def cached():
        batches = ((ids, norm(u8)) for ids, u8 in _pool_batches(pool, a.batch, seed=2))
        return run_feddf(a, teachers, batches, resolve_precision("auto"), cache=TargetCache(a.pool, a.classes))

    auto = resolve_precision("auto", a.dev)  # what feddf train uses by default on this device
    methods = {"naive": lambda: run_naive(a, naive_teachers, xs), "ceiling": lambda: run_ceiling(a, teachers, xs),
               "feddf-fp32": lambda: run_feddf(a, teachers, xs, "fp32"),
               "feddf": lambda: run_feddf(a, teachers, xs, auto), "cached": cached}
    warm = stream(a.batch, a.channels, a.resolution, a.warmup, seed=3, dev=a.dev)
    run_naive(a, naive_teachers, warm)
    run_feddf(a, teachers, warm)
    run_feddf(a, teachers, warm, auto)
    res = {k: [] for k in methods}
    for _ in range(a.repeats):
        for k, fn in methods.items():
            res[k].append(fn())
    best = {k: max(v) for k, v in res.items()}
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"{a.teachers} x {a.arch} teachers, {a.channels}x{a.resolution}x{a.resolution}, batch {a.batch}, "
          f"{a.steps} steps x {a.repeats} repeats, device {a.dev}"
          f"{' (' + torch.cuda.get_device_name(a.dev) + ')' if a.dev.type == 'cuda' else ''}, "
          f"torch threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, default teacher precision {auto}")
    print(f"{'method':>11} {'steps/s':>8} {'median':>8} {'vs naive':>9}")
    for k in methods:
        print(f"{k:>11} {best[k]:8.2f} {med[k]:8.2f} {best[k] / best['naive']:8.2f}x")
    agree, diff = bf16_agreement(teachers, xs[:4], a.dev)
    print(f"bf16 teachers: ensemble argmax agreement with fp32 {agree:.4f}, max |dp| {diff:.2e}")
    print(f"cached: {a.steps * a.batch / a.pool:.1f} passes over a {a.pool}-image source")
    out = {"ratio": round(best["feddf"] / best["naive"], 3), "target": 1.5,
           "ratio_fp32": round(best["feddf-fp32"] / best["naive"], 3),
           "ratio_cached": round(best["cached"] / best["naive"], 3),
           "ceiling_ratio": round(best["ceiling"] / best["naive"], 3),
           "steps_per_s": {k: round(v, 3) for k, v in best.items()},
           "median_steps_per_s": {k: round(v, 3) for k, v in med.items()},
           "teacher_precision": auto, "bf16_argmax_agreement": agree, "bf16_max_prob_diff": diff,
           "config": {k: getattr(a, k) for k in ("arch", "channels", "resolution", "teachers", "batch", "steps",
                                                  "repeats", "pool")},
           "device": str(a.dev), "batched": a.batched, "images_per_s": {k: round(v * a.batch, 1) for k, v in best.items()},
           "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
