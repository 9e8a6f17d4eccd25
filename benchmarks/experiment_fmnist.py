"""FedAvg vs FedDF on real Fashion-MNIST with three distillation sources — the reproducible results table.

    .venv/bin/python benchmarks/experiment_fmnist.py --out runs/exp-fmnist --md docs/results-table.md

Grid: alpha in {1, 0.1} x seeds x {FedAvg, FedDF + DCGAN cache, FedDF + real public split test[:5000], FedDF + noise};
20 clients, participation 0.4, the small `cnn`, evaluation on test[5000:] (never used for tuning: early stopping uses
the server's validation split carved from the training set). Every run is a real `feddf train` subprocess, resumable
(re-running the script skips finished runs). The table reports mean ± std over seeds of the final and best test
accuracy, rounds to reach --target-acc, distillation steps used per round, and wall seconds per round split into local
training and distillation. Ends with one JSON line of all figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FEDDF = [sys.executable, "-m", "feddf"]


def sh(args: list[str]) -> None:
    print("$ feddf " + " ".join(args), flush=True)
    subprocess.run(FEDDF + args, check=True, cwd=ROOT)


def mean_std(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{statistics.mean(xs):.3f} ± {statistics.stdev(xs):.3f}"


def summarise(run: Path, target: float, upto: int | None = None) -> dict:
    """Final/best accuracy, rounds to target, steps and seconds of a run's first `upto` rounds (all when None)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()][:upto]
    arch = next(iter(rows[-1]["acc"]))

    def acc(r):  # the server model's test accuracy after this round (distilled where distillation ran)
        a = r["acc"][arch]
        return a["distilled"] if a.get("distilled") is not None else a["fedavg"]

    accs = [acc(r) for r in rows]
    hit = next((r["round"] for r in rows if acc(r) >= target), None)
    steps = [r["distill_steps"].get(arch, 0) for r in rows if r.get("distill_steps")]
    return {"final": accs[-1], "best": max(accs), "rounds_to_target": hit, "rounds": len(rows),
            "distill_steps": statistics.mean(steps) if steps else 0.0,
            "local_s": statistics.mean(r["client_seconds"] for r in rows),
            "distill_s": statistics.mean(r["distill_seconds"] for r in rows)}


def grid_parser(description: str, out: str) -> argparse.ArgumentParser:
    """The grid options every Fashion-MNIST experiment script shares (the settings of this script's table)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", default=out)
    ap.add_argument("--alphas", default="1.0,0.1")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--distill-steps", type=int, default=500)
    ap.add_argument("--patience", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--gan-n", type=int, default=20000)
    ap.add_argument("--md", default=None, help="Write the markdown table here.")
    return ap


def main() -> None:
    ap = grid_parser(__doc__.split("\n\n")[0], "runs/exp-fmnist")
    ap.add_argument("--target-acc", type=float, default=0.80)
    args = ap.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    gan_cache = ROOT / f"cache/dcgan-fashion-mnist-28px-{args.gan_n}.h5"
    public_cache = ROOT / "cache/fashion-mnist-test-0-5000.h5"
    sh(["gen", "--generator", "dcgan-fashion-mnist", "--n", str(args.gan_n), "--seed", "0", "--out", str(gan_cache),
        "--quiet"])
    if not public_cache.exists():
        sh(["cache", "import", "fashion-mnist", "--split", "test[:5000]", "--out", str(public_cache)])
    methods = {"FedAvg": ["--aggregator", "fedavg"],
               "FedDF + DCGAN": ["--aggregator", "feddf", "--distill-source", str(gan_cache)],
               "FedDF + real test[:5000]": ["--aggregator", "feddf", "--distill-source", str(public_cache)],
               "FedDF + noise": ["--aggregator", "feddf", "--distill-source", "noise"]}
    results: dict = {}
    t0 = time.time()
    for alpha in [float(a) for a in args.alphas.split(",")]:
        for name, extra in methods.items():
            for seed in [int(s) for s in args.seeds.split(",")]:
                tag = f"a{alpha}-{name.split()[0].lower()}{'-' + name.split()[-1].lower() if '+' in name else ''}-s{seed}"
                tag = tag.replace(":", "").replace("[", "").replace("]", "")
                run = out / tag
                train_run(run, alpha, seed, args, extra)
                results.setdefault(f"{alpha}|{name}", []).append(summarise(run, args.target_acc))
    lines = [f"| α | method | final acc | best acc | rounds to {args.target_acc:.0%} | distill steps/round | "
             "local s/round | server s/round |", "|---|---|---|---|---|---|---|---|"]
    figures = {}
    for key, runs in results.items():
        alpha, name = key.split("|")
        hits = [r["rounds_to_target"] for r in runs]
        hit_s = ", ".join("—" if h is None else str(h) for h in hits)
        lines.append(f"| {alpha} | {name} | {mean_std([r['final'] for r in runs])} | "
                     f"{mean_std([r['best'] for r in runs])} | {hit_s} | "
                     f"{statistics.mean(r['distill_steps'] for r in runs):.0f} | "
                     f"{statistics.mean(r['local_s'] for r in runs):.1f} | "
                     f"{statistics.mean(r['distill_s'] for r in runs):.1f} |")
        figures[key] = runs
    header = (f"Fashion-MNIST, 20 clients, C=0.4, cnn, {args.rounds} rounds x {args.local_epochs} local epochs, "
              f"≤{args.distill_steps} distillation steps (patience {args.patience}), seeds {args.seeds}; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
              f"total wall {time.time() - t0:.0f} s")
    finish(header, lines, args, {"experiment": "fmnist", "args": vars(args), "results": figures})


def train_run(run: Path, alpha: float, seed: int, args, extra: list[str]) -> None:
    """One `feddf train` of a grid with the script's settings (resumed; skipped once it has args.rounds rounds)."""
    if (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= args.rounds:
        return
    sh(["train", "--dataset", "fashion-mnist", "--arch", "cnn", "--clients", "20", "--fraction", "0.4",
        "--alpha", str(alpha), "--rounds", str(args.rounds), "--local-epochs", str(args.local_epochs),
        "--augment", "none", "--distill-steps", str(args.distill_steps), "--eval-every",
        str(args.eval_every), "--patience", str(args.patience), "--seed", str(seed), "--quiet",
        "--out", str(run), "--resume", *extra])


def finish(header: str, lines: list[str], args, figures: dict) -> None:
    """Print the markdown table (and write it to args.md), then the one JSON line of all figures."""
    table = header + "\n\n" + "\n".join(lines) + "\n"
    print(table)
    if args.md:
        (ROOT / args.md).write_text(table)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
