"""What FedDF's server step costs a round against FedAvg's, with a cache source and with server-side synthesis.

    .venv/bin/python benchmarks/bench_server.py --json          # the fair-contest grid's round, alpha 0.1
    .venv/bin/python benchmarks/bench_server.py --quick         # a 12 000-image subset, 100 distillation steps (smoke)
    python3 benchmarks/bench_server.py --device cuda --data-root shared --repeats 1   # on a GPU (shared/fashion-mnist/)

One round of the grid's config (fashion-mnist, 20 clients, C = 0.4, cnn, 2 local epochs, no augmentation, <= 500
distillation steps, patience 200, validation every 50): the 8 sampled clients train once (engines.train_clients, the
default engine), then the server step (fusion.fuse) runs on those same replies once per method, in interleaved
order --repeats times (best repeat kept; the machine may be shared):
  fedavg   --aggregator fedavg
  feddf    FedDF from the shipped DCGAN's 20 000-image cache (`feddf gen`, made here when missing), default pool
           (the whole cache, in memory)
  feddf_pool  the same with --distill-pool --pool (5000 cache images a round, each labelled once by every teacher)
  synth    FedDF + --distill-source synth:dcgan-fashion-mnist (20 generator steps, a 2000-image pool)
A method's round is the clients' seconds plus its server step. Last line: JSON with fedavg_round_s, feddf_round_s,
cost_ratio (= feddf / fedavg), feddf_pool_round_s, pool_cost_ratio, synth_round_s, synth_ratio (= synth / fedavg),
clients_s and each server step's seconds per phase (fusion's server_seconds), the device and its GPU name (null on a
CPU). --device cuda trains the clients and runs every server step (and makes the cache) on the GPU, synchronising
before each timer is read; --data-root is `feddf train --data-root` (the IDX files in DIR/fashion-mnist/).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feddf.federated.aggregate import get_aggregator  # noqa: E402
from feddf.federated.config import TrainConfig  # noqa: E402
from feddf.federated.engines import train_clients  # noqa: E402
from feddf.federated.fusion import fuse, sample_clients  # noqa: E402
from feddf.federated.setup import load_task  # noqa: E402
from feddf.federated.teachers import resolve_precision  # noqa: E402
from feddf.errors import FeddfError  # noqa: E402
from feddf.utils import resolve_device  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="(kept for scripts; the last line is always JSON)")
    ap.add_argument("--quick", action="store_true", help="a 12 000-image subset and 100 distillation steps")
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cache", default=str(ROOT / "cache/dcgan-fashion-mnist-28px-20000.h5"))
    ap.add_argument("--pool", type=int, default=5000, help="--distill-pool of the feddf_pool row")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: the clients and the server steps")
    ap.add_argument("--data-root", default=None, help="feddf train's --data-root (default: feddf.data's usual lookup)")
    args = ap.parse_args()
    device = resolve_device(args.device)  # one line (FeddfError) for a bad name or a missing GPU, before any work
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    base = TrainConfig(dataset="fashion-mnist", arch="cnn", clients=20, fraction=0.4, local_epochs=2, rounds=1,
                       alpha=args.alpha, augment="none", distill_steps=100 if args.quick else 500, patience=200,
                       eval_every=50, train_limit=12000 if args.quick else None, progress=False,
                       out="/tmp/feddf-bench-server", device=str(device), data_root=args.data_root)
    base = dataclasses.replace(base, teacher_precision=resolve_precision(base.teacher_precision, device))  # as train
    cfgs = {"fedavg": dataclasses.replace(base, aggregator="fedavg"),
            "feddf": dataclasses.replace(base, distill_source=args.cache),
            "feddf_pool": dataclasses.replace(base, distill_source=args.cache, distill_pool=args.pool),
            "synth": dataclasses.replace(base, distill_source="synth:dcgan-fashion-mnist")}
    cfgs = {k: c.resolved() for k, c in cfgs.items()}  # every check (--data-root included) before the cache is made
    if not Path(args.cache).exists():
        subprocess.run([sys.executable, "-m", "feddf", "gen", "--generator", "dcgan-fashion-mnist", "--n", "20000",
                        "--seed", "0", "--device", str(device), "--out", args.cache, "--quiet"], check=True, cwd=ROOT)
    tasks = {k: load_task(c, log=lambda s: None) for k, c in cfgs.items()}  # each with its own source
    sel = sample_clients(cfgs["fedavg"], 1)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    print(f"{len(sel)} clients of {base.clients}, alpha {args.alpha:g}, {torch.get_num_threads()} threads, "
          f"device {device}{f' ({gpu})' if gpu else ''}", flush=True)
    starts = {k: copy.deepcopy(t.source.state_dict()) for k, t in tasks.items() if hasattr(t.source, "state_dict")}
    best: dict[str, dict] = {}
    clients_best = None
    for rep in range(args.repeats):
        task = tasks["fedavg"]
        server = {"cnn": task.initial_state("cnn")}
        sync()
        t0 = time.perf_counter()
        ups = train_clients(cfgs["fedavg"], task, 1, sel, server, device)  # the clients do not depend on the server
        sync()
        clients_s = time.perf_counter() - t0
        clients_best = clients_s if clients_best is None else min(clients_best, clients_s)
        print(f"  repeat {rep + 1} clients: {clients_s:6.2f} s", flush=True)
        for name, cfg in cfgs.items():
            if name in starts:  # every repeat from the same generator state
                tasks[name].source.load_state_dict(copy.deepcopy(starts[name]))
            sync()
            t1 = time.perf_counter()
            fused = fuse(1, cfg, tasks[name], get_aggregator(cfg.aggregator), server, ups, device)
            sync()
            s = time.perf_counter() - t1
            acc = fused.metrics["acc"]["cnn"]
            print(f"  repeat {rep + 1} {name:>7}: server {s:6.2f} s  acc {acc['fedavg']:.4f} -> {acc['distilled']}  "
                  f"steps {fused.metrics['distill_steps']['cnn']}  {fused.seconds}", flush=True)
            if name not in best or s < best[name]["server_s"]:
                best[name] = {"server_s": s, "phases": fused.seconds, "steps": fused.metrics["distill_steps"]["cnn"]}
    r = {k: clients_best + v["server_s"] for k, v in best.items()}
    out = {"fedavg_round_s": round(r["fedavg"], 3), "feddf_round_s": round(r["feddf"], 3),
           "cost_ratio": round(r["feddf"] / r["fedavg"], 3), "synth_round_s": round(r["synth"], 3),
           "feddf_pool_round_s": round(r["feddf_pool"], 3), "pool_cost_ratio": round(r["feddf_pool"] / r["fedavg"], 3),
           "synth_ratio": round(r["synth"] / r["fedavg"], 3), "clients_s": round(clients_best, 3),
           "server": {k: {"s": round(v["server_s"], 3), "steps": v["steps"], "phases": v["phases"]}
                      for k, v in best.items()},
           "repeats": args.repeats, "quick": args.quick, "threads": torch.get_num_threads(),
           "device": str(device), "gpu": gpu}
    print(f"cost_ratio {out['cost_ratio']:.2f} (FedDF {r['feddf']:.2f} s / FedAvg {r['fedavg']:.2f} s), with a "
          f"{args.pool}-image pool {out['pool_cost_ratio']:.2f}, synth {out['synth_ratio']:.2f} ({r['synth']:.2f} s)")
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    try:
        main()
    except FeddfError as e:  # bad input: one line, exit 1
        sys.exit(f"bench_server.py: {e}")
