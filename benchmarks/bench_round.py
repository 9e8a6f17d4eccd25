"""One federated round, the clients one after another against the default engine, in the same run.

    .venv/bin/python benchmarks/bench_round.py --json        # 20 clients, C = 0.4, cnn, 1 local epoch, fashion-mnist
    .venv/bin/python benchmarks/bench_round.py --quick       # a 12 000-image subset (smoke)

A round here is what `feddf train` does in it with --aggregator fedavg: the 8 sampled clients' local training
(feddf.federated.engines.train_clients) then the server step (fusion.fuse: the average, its test accuracy and the
clients' ensemble's test pass).
Methods, timed in interleaved order --repeats times (best repeat reported; the machine may be shared):
  sequential           --client-engine sequential --client-kernels legacy --server-kernels legacy: the round every
                       run computed before these options (NCHW, all of PyTorch's threads on each client in turn, and
                       on each model the server evaluates)
  sequential-portable  --client-engine sequential with the default kernels (portable clients: one thread a client,
                       channels_last; fused server: its test passes one thread a chunk on BN-folded copies),
                       clients in turn
  default              --client-engine batched, default kernels: as many clients at once as there are cores, and
                       each finished client's test pass on a core the last clients leave idle
`equal`: default's client uploads and new server model == sequential-portable's, tensor for tensor (the engines'
contract); `legacy_max_abs_diff`: how far the legacy kernels' server model is from it (other floats: a different
trajectory, not an error). Last line: JSON with sequential_s, default_s, ratio (= sequential_s / default_s), equal,
and the portable sequential time, the clients-only figures, the server step's share and `page_faults` (the minor
page faults of each method's best round: glibc hands large freed tensors back to the kernel and every new one is
faulted in page by page again; the legacy round's NCHW tensors on two threads fault ~1.3 M times, the default's
~0.1-0.2 M; `MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=2147483647` in the environment removes
most of them, and that helps the legacy round far more than the default one).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feddf.federated.aggregate import get_aggregator  # noqa: E402
from feddf.federated.config import TrainConfig  # noqa: E402
from feddf.federated.engines import train_clients  # noqa: E402
from feddf.federated.fusion import fuse, sample_clients  # noqa: E402
from feddf.federated.setup import load_task  # noqa: E402

METHODS = {"sequential": ("sequential", "legacy", "legacy"),  # (client engine, client kernels, server kernels)
           "sequential-portable": ("sequential", TrainConfig.client_kernels, TrainConfig.server_kernels),
           "default": (TrainConfig.client_engine, TrainConfig.client_kernels, TrainConfig.server_kernels)}


def one_round(cfg, task):
    server = {"cnn": task.initial_state("cnn")}
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    ups = train_clients(cfg, task, 1, sample_clients(cfg, 1), server, "cpu")
    t1 = time.perf_counter()
    fused = fuse(1, cfg, task, get_aggregator(cfg.aggregator), server, ups, "cpu")
    return {"round_s": time.perf_counter() - t0, "clients_s": t1 - t0, "updates": ups, "server": fused.server["cnn"],
            "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0,
            "acc": fused.metrics["acc"]["cnn"]["fedavg"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="(kept for scripts; the last line is always JSON)")
    ap.add_argument("--quick", action="store_true", help="a 12 000-image training subset")
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    cfg = TrainConfig(dataset="fashion-mnist", arch="cnn", clients=20, fraction=0.4, local_epochs=1, rounds=1,
                      alpha=args.alpha, aggregator="fedavg", train_limit=12000 if args.quick else None,
                      progress=False, out="/tmp/feddf-bench-round").resolved()
    task = load_task(cfg, log=lambda s: None)
    sel = sample_clients(cfg, 1)
    print(f"{len(sel)} clients of {cfg.clients}, {sum(len(task.client_indices[k]) for k in sel)} images, "
          f"{torch.get_num_threads()} threads, alpha {cfg.alpha:g}", flush=True)
    best: dict[str, dict] = {}
    for rep in range(args.repeats):
        for name, (engine, kernels, server) in METHODS.items():
            res = one_round(dataclasses.replace(cfg, client_engine=engine, client_kernels=kernels,
                                                server_kernels=server), task)
            print(f"  repeat {rep + 1} {name:>20}: round {res['round_s']:6.2f} s (clients {res['clients_s']:6.2f} s)"
                  f"  acc {res['acc']:.4f}  page faults {res['faults']}", flush=True)
            if name not in best or res["round_s"] < best[name]["round_s"]:
                best[name] = res
    d, p, s = best["default"], best["sequential-portable"], best["sequential"]
    equal = (all(a.payload == b.payload for a, b in zip(d["updates"], p["updates"]))
             and all(torch.equal(d["server"][k], p["server"][k]) for k in d["server"]))
    drift = max(float((s["server"][k].float() - p["server"][k].float()).abs().max())
                for k in s["server"] if s["server"][k].is_floating_point())
    out = {"sequential_s": round(s["round_s"], 3), "default_s": round(d["round_s"], 3),
           "ratio": round(s["round_s"] / d["round_s"], 3), "equal": equal,
           "sequential_portable_s": round(p["round_s"], 3),
           "ratio_same_kernels": round(p["round_s"] / d["round_s"], 3),
           "clients_ratio": round(s["clients_s"] / d["clients_s"], 3),
           "server_share_default": round(1 - d["clients_s"] / d["round_s"], 3),
           "legacy_max_abs_diff": drift, "page_faults": {k: v["faults"] for k, v in best.items()},
           "threads": torch.get_num_threads(), "images": int(
               sum(len(task.client_indices[k]) for k in sel)), "repeats": args.repeats}
    print(f"ratio {out['ratio']:.2f} (sequential {out['sequential_s']:.2f} s / default {out['default_s']:.2f} s), "
          f"same kernels {out['ratio_same_kernels']:.2f}, equal {equal}")
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
