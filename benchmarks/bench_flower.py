"""FedDF on Flower: wall seconds per round of one small FedDF config run three ways - `feddf train` (in-process),
`feddf flower local` (a SuperLink + SuperNodes on 127.0.0.1; by default `--isolation process` with one long-lived
feddf ClientApp worker per node, and with Flower's own `--isolation subprocess`, a ClientApp process per message)
and `feddf flower simulate` (Flower's Ray simulation engine) - as ratios to `feddf train`, with where Flower's
overhead goes.

    .venv/bin/python benchmarks/bench_flower.py            # 3 clients (cnn, resnet8), 2 rounds, noise source
    .venv/bin/python benchmarks/bench_flower.py --skip-simulate --skip-subprocess --skip-node-poll --repeats 1

Per round (from metrics.jsonl): `client_seconds` (sending the models out until the last reply is in; feddf train:
the local training loop) + `distill_seconds` (fusion.fuse, identical code in every engine). For a deployment the
clients' own timings (`node_seconds`) split each reply into `process` (Flower handing the message to our train():
with the worker, from claiming the task to our handler - pulling the message, loading the app; with a process per
message, the process's age: interpreter + flwr import), `load` (our imports - torch, feddf - and loading the
partition), `train` (fusion.client_step); the rest of client_seconds is Flower's messaging (an idle SuperNode
polls the SuperLink every --node-poll s: 0.5 by default, Flower's own 3). Also measured: one QUERY-sized import of
the ClientApp module with our lazy imports vs importing the training code eagerly (what every message of a
process-per-message node would pay without them).
`node-poll-3` is the default deployment with Flower's own flower-supernode (3 s idle poll) and `subprocess` also
with Flower's process per message (what `feddf flower local` did before). Every engine runs --repeats times, in
turn, and its fastest run counts. The accuracies of all runs are compared (they must be equal). Ends with one JSON
line: `ratio` = deployment (the default) / feddf train, `ratio_steady` the same from round 2 on (without round 1's
one-time costs), `ratio_node_poll_3`, `ratio_subprocess`, `ratio_simulate` (seconds per round).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
CONFIG = ["--dataset", "fashion-mnist", "--archs", "cnn,resnet8", "--clients", "3", "--fraction", "1",
          "--rounds", "2", "--local-epochs", "1", "--train-limit", "600", "--test-limit", "500",
          "--distill-source", "noise", "--distill-steps", "20", "--eval-every", "10", "--quiet"]


def feddf(*args) -> float:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "feddf", *args], capture_output=True, text=True, env=ENV)
    if p.returncode != 0:
        raise SystemExit(f"feddf {' '.join(args[:2])} failed:\n{p.stderr[-2000:]}")
    return time.perf_counter() - t0


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def per_round(rs: list[dict]) -> float:
    return statistics.mean(r["client_seconds"] + r["distill_seconds"] for r in rs)


def steady(rs: list[dict]) -> float:
    """Seconds per round from round 2 on: without the one-time costs of round 1 (first-touch, torch._dynamo)."""
    return per_round(rs[1:] or rs)


def node_split(rs: list[dict]) -> tuple[dict, float, float]:
    """(mean process/load/train seconds per reply, Flower's messaging seconds, client phase seconds) per round."""
    nodes = [v for r in rs for v in r["node_seconds"].values()]
    split = {k: statistics.mean(v[k] for v in nodes) for k in ("process", "load", "train")}
    client = statistics.mean(r["client_seconds"] for r in rs)
    slowest = statistics.mean(max(sum(v.values()) for v in r["node_seconds"].values()) for r in rs)
    return split, client - slowest, client


def import_seconds(code: str, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, env=ENV)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-simulate", action="store_true", help="Leave out Flower's simulation engine (Ray).")
    ap.add_argument("--skip-subprocess", action="store_true",
                    help="Leave out the deployment with Flower's --isolation subprocess (a process per message).")
    ap.add_argument("--skip-node-poll", action="store_true",
                    help="Leave out the deployment with Flower's own SuperNode (3 s idle poll, --node-poll 3).")
    ap.add_argument("--repeats", type=int, default=2,
                    help="Run every engine this many times, in turn; each engine's fastest run counts (others "
                         "share this machine: the slower runs are their noise).")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-flower-"))
    runs = {"train": ("train",), "deployment": ("flower", "local")}
    if not args.skip_node_poll:  # the worker, with Flower's own SuperNode polling the SuperLink every 3 s when idle
        runs["node-poll-3"] = ("flower", "local", "--node-poll", "3")
    if not args.skip_subprocess:  # Flower's SuperNode and its process per message: before the worker
        runs["subprocess"] = ("flower", "local", "--isolation", "subprocess", "--node-poll", "3")
    if not args.skip_simulate:
        runs["simulation"] = ("flower", "simulate")
    wall, res, every, same = {}, {}, {name: [] for name in runs}, True
    for rep in range(max(1, args.repeats)):
        for name, cmd in runs.items():
            t = feddf(*cmd, *CONFIG, "--out", str(tmp / f"{name}-{rep}"))
            rs = rows(tmp / f"{name}-{rep}")
            every[name].append(round(per_round(rs), 2))
            if name not in res or per_round(rs) < per_round(res[name]):
                wall[name], res[name] = t, rs
            same = same and [r["acc"] for r in rs] == [r["acc"] for r in res["train"]]  # every run, not the best
    base = per_round(res["train"])
    print(f"{'engine':<12} {'s/round':>8} {'ratio':>6} {'client s':>9} {'fuse s':>7} {'command s':>10}")
    for name, rs in res.items():
        print(f"{name:<12} {per_round(rs):8.2f} {per_round(rs) / base:6.2f} "
              f"{statistics.mean(r['client_seconds'] for r in rs):9.2f} "
              f"{statistics.mean(r['distill_seconds'] for r in rs):7.2f} {wall[name]:10.1f}")
    splits = {name: node_split(res[name]) for name in ("deployment", "node-poll-3", "subprocess") if name in res}
    for name, (split, messaging, client) in splits.items():
        print(f"{name}, per reply (mean over nodes and rounds): to our handler {split['process']:.2f} s, "
              f"our imports + data {split['load']:.2f} s, local training {split['train']:.2f} s; "
              f"Flower messaging {messaging:.2f} s of the {client:.2f} s client phase")
    lazy = import_seconds("import feddf.flower.client_app")
    eager = import_seconds("import feddf.flower.client_app, feddf.federated.fusion, feddf.federated.setup")
    print(f"ClientApp import per message: lazy {lazy:.2f} s vs eager {eager:.2f} s "
          f"(a QUERY saves {eager - lazy:.2f} s)")
    print(f"accuracies identical across engines: {same}")
    out = {"ratio": round(per_round(res["deployment"]) / base, 2), "seconds_per_round_train": round(base, 2),
           "ratio_steady": round(steady(res["deployment"]) / steady(res["train"]), 2),
           "seconds_per_round_deployment": round(per_round(res["deployment"]), 2),
           "seconds_per_round_by_round": {k: [round(r["client_seconds"] + r["distill_seconds"], 2) for r in rs]
                                          for k, rs in res.items()},
           "seconds_per_round_every_run": every, "import_lazy_seconds": round(lazy, 2),
           "import_eager_seconds": round(eager, 2),
           "command_seconds": {k: round(v, 1) for k, v in wall.items()}, "identical": same}
    for name, (split, messaging, _) in splits.items():
        out[f"{name.replace('-', '_')}_split_seconds"] = {k: round(v, 2) for k, v in split.items()}
        out[f"{name.replace('-', '_')}_messaging_seconds"] = round(messaging, 2)
    for name in ("node-poll-3", "subprocess"):
        if name in res:
            out[f"ratio_{name.replace('-', '_')}"] = round(per_round(res[name]) / base, 2)
            out[f"seconds_per_round_{name.replace('-', '_')}"] = round(per_round(res[name]), 2)
    if "simulation" in res:
        out["ratio_simulate"] = round(per_round(res["simulation"]) / base, 2)
        out["seconds_per_round_simulation"] = round(per_round(res["simulation"]), 2)
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
