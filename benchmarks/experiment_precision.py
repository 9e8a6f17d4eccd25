"""Binarised (1-bit) clients on real Fashion-MNIST: what FedAvg loses and what FedDF recovers — docs/results.md.

    .venv/bin/python benchmarks/experiment_precision.py --out runs/exp-precision --md docs/results-precision.md

Grid: alpha x seeds x {FedAvg fp32, FedAvg binary, FedDF binary + DCGAN cache, FedDF binary + real test[:5000],
FedDF fp32+binary (half the clients each, client i gets [fp32, binary][i * 2 // 20]) + DCGAN, and FedAvg over
that mixed federation}, FedDF with --logit-adjust 1; the -la0 methods are the two DCGAN FedDF
rows with the plain ensemble (--logit-adjust 0). The settings of
benchmarks/experiment_fmnist.py (20 clients, C = 0.4, `cnn`, no augmentation, evaluation on test[5000:]) unless
overridden (--rounds, --local-epochs, --train-limit for a reduced grid). Every run is a real resumable `feddf train`
subprocess. Reports mean ± std over seeds of final / best test accuracy and the mean upload MB per round (the sum of
the encoded payloads of the round's clients, metrics.jsonl `upload_bytes`) over the first --rounds rounds: every
choice of round r is seeded from (seed, r), so a longer run's first R rounds are exactly an R-round run (a grid cut
short can be tabulated at a smaller --rounds). Ends with one JSON line of all figures.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from experiment_fmnist import ROOT, finish, grid_parser, mean_std, sh, summarise, train_run  # noqa: E402


def main() -> None:
    ap = grid_parser(__doc__.split("\n\n")[0], "runs/exp-precision")
    ap.add_argument("--train-limit", type=int, default=None, help="Reduced grid: a seeded subset of the train split.")
    ap.add_argument("--test-limit", type=int, default=None, help="Reduced grid: the first N images of test[5000:].")
    ap.add_argument("--methods", default=None, help="Comma list of method keys to run (default: all).")
    args = ap.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    gan_cache = ROOT / f"cache/dcgan-fashion-mnist-28px-{args.gan_n}.h5"
    public_cache = ROOT / "cache/fashion-mnist-test-0-5000.h5"
    if not gan_cache.exists():
        sh(["gen", "--generator", "dcgan-fashion-mnist", "--n", str(args.gan_n), "--seed", "0", "--out",
            str(gan_cache), "--quiet"])
    if not public_cache.exists():
        sh(["cache", "import", "fashion-mnist", "--split", "test[:5000]", "--out", str(public_cache)])
    la = ["--logit-adjust", "1"]  # the FedDF rows: the label-prior-adjusted ensemble, spelled out
    la0 = ["--logit-adjust", "0"]  # the -la0 rows: the plain ensemble, for the ablation
    feddf = ["--aggregator", "feddf"]
    methods = {
        "fedavg-fp32": ("FedAvg fp32", ["--aggregator", "fedavg"]),
        "fedavg-binary": ("FedAvg binary", ["--aggregator", "fedavg", "--client-precision", "binary"]),
        "feddf-binary-dcgan": ("FedDF binary + DCGAN", [*feddf, "--client-precision", "binary",
                                                        "--distill-source", str(gan_cache), *la]),
        "feddf-binary-real": ("FedDF binary + real test[:5000]", [*feddf, "--client-precision", "binary",
                                                                  "--distill-source", str(public_cache), *la]),
        "feddf-mixed-dcgan": ("FedDF fp32+binary + DCGAN", [*feddf, "--client-precision", "fp32,binary",
                                                           "--distill-source", str(gan_cache), *la]),
        "fedavg-mixed": ("FedAvg fp32+binary", ["--aggregator", "fedavg", "--client-precision", "fp32,binary"]),
        "feddf-binary-dcgan-la0": ("FedDF binary + DCGAN, plain ensemble", [*feddf, "--client-precision", "binary",
                                                                            "--distill-source", str(gan_cache), *la0]),
        "feddf-mixed-dcgan-la0": ("FedDF fp32+binary + DCGAN, plain ensemble",
                                  [*feddf, "--client-precision", "fp32,binary", "--distill-source", str(gan_cache),
                                   *la0]),
    }
    keys = args.methods.split(",") if args.methods else list(methods)
    limit = (["--train-limit", str(args.train_limit)] if args.train_limit else []) + \
        (["--test-limit", str(args.test_limit)] if args.test_limit else [])
    results: dict = {}
    t0 = time.time()
    for alpha in [float(a) for a in args.alphas.split(",")]:
        for key in keys:
            name, extra = methods[key]
            for seed in [int(s) for s in args.seeds.split(",")]:
                run = out / f"a{alpha}-{key}-s{seed}"
                train_run(run, alpha, seed, args, [*limit, *extra])
                res = summarise(run, 0.8, args.rounds)  # a longer run's first --rounds rounds: the same numbers
                results.setdefault(f"{alpha}|{name}", []).append(res)
    lines = ["| α | method | final acc | best acc | mean acc, all rounds | mean acc, last 3 | upload MB/round | "
             "local s/round | server s/round |", "|---|---|---|---|---|---|---|---|---|"]
    for key, runs in results.items():
        alpha, name = key.split("|")
        lines.append(f"| {alpha} | {name} | {mean_std([r['final'] for r in runs])} | "
                     f"{mean_std([r['best'] for r in runs])} | {mean_std([r['mean_all'] for r in runs])} | "
                     f"{mean_std([r['mean_last3'] for r in runs])} | {statistics.mean(r['upload_mb'] for r in runs):.3f} | "
                     f"{statistics.mean(r['local_s'] for r in runs):.1f} | "
                     f"{statistics.mean(r['distill_s'] for r in runs):.1f} |")
    header = (f"Fashion-MNIST, 20 clients, C=0.4, cnn, {args.rounds} rounds x {args.local_epochs} local epochs, "
              f"train-limit {args.train_limit or 'none'}, test-limit {args.test_limit or 'none'}, "
              f"≤{args.distill_steps} distillation steps (patience {args.patience}), seeds {args.seeds}; "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; total wall {time.time() - t0:.0f} s")
    finish(header, lines, args, {"experiment": "precision", "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
