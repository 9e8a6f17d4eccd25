"""The fair contest: FedDF from generated data against the FedAvg variants that also use label counts.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/experiment_fair.py --alphas 0.1 --seeds 0 --out runs/fair
    .venv/bin/python benchmarks/experiment_fair.py --table-only --alphas 0.05,0.1,1 --seeds 0,1,2 --out runs/fair \
        --md docs/results-fair.md
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/experiment_fair.py --arch resnet8 --alphas 0.1 --seeds 0,1
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/experiment_fair.py --methods feddf-gan --gan-sizes 5000,20000,100000

Methods (METHODS): FedAvg with cross-entropy, with balanced softmax and with FedLC's calibrated loss (the clients use
their label counts), FedProx, FedDF from the shipped DCGAN's cache, FedDF from the real public split test[:5000],
and FedDF with count-aware clients (balanced softmax under FedDF, with --logit-adjust 0: their logits are already
prior-free). The other FedDF rows use --logit-adjust 1 (the server uses the same label counts).
The grid settings are benchmarks/experiment_fmnist.py's
(20 clients, C = 0.4, 12 rounds x 2 local epochs, no augmentation, <= 500 distillation steps, patience 200,
evaluation on test[5000:]); --gan-sizes adds one FedDF + DCGAN row per generated-set size. Every run is a real
resumable `feddf train` subprocess; finished runs are reused (a run folder is only re-entered with --resume, which
refuses different settings). Columns: test accuracy mean over all rounds and over the last 3 (mean ± std over
seeds), rounds to --target-acc per seed, upload MB per round, and the best count-aware FedAvg variant per alpha.
Ends with one JSON line of every figure.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from experiment_fmnist import (ROOT, _header, finish, finished, grid_parser, mean_std, sh, summarise,  # noqa: E402
                              train_run)

BS, LC = ["--local-loss", "balanced-softmax"], ["--local-loss", "fedlc"]
METHODS = {  # key -> (label, source or None, extra flags)
    "fedavg": ("FedAvg", None, ["--aggregator", "fedavg"]),
    "fedavg-bs": ("FedAvg + balanced softmax", None, ["--aggregator", "fedavg", *BS]),
    "fedavg-fedlc": ("FedAvg + FedLC", None, ["--aggregator", "fedavg", *LC]),
    "fedprox": ("FedProx", None, ["--aggregator", "fedprox"]),
    "feddf-gan": ("FedDF + DCGAN", "gan", []),
    "feddf-real": ("FedDF + real test[:5000]", "public", []),
    # balanced-softmax clients already learn prior-free logits (their loss adds log prior to them), so the server's
    # --logit-adjust 1 would take the prior out a second time: measured at alpha 0.1, seed 0, distillation then never
    # beat the FedAvg start after round 2 (best step 0 in rounds 3-10). So this row distils the plain ensemble.
    "feddf-gan-bs": ("FedDF + DCGAN, balanced-softmax clients", "gan", [*BS, "--logit-adjust", "0"]),
    "feddf-real-bs": ("FedDF + real test[:5000], balanced-softmax clients", "public", [*BS, "--logit-adjust", "0"]),
    # the server synthesises each round's pool against the ensemble (feddf/federated/synth.py)
    "feddf-synth-dcgan": ("FedDF + synth:dcgan-fashion-mnist", "synth:dcgan-fashion-mnist", []),
    "feddf-synth-dcgan-bs": ("FedDF + synth:dcgan-fashion-mnist, balanced-softmax clients",
                             "synth:dcgan-fashion-mnist", [*BS, "--logit-adjust", "0"]),
    "feddf-synth-scratch": ("FedDF + synth:scratch", "synth:scratch", []),
    "feddf-synth-scratch-bs": ("FedDF + synth:scratch, balanced-softmax clients", "synth:scratch",
                               [*BS, "--logit-adjust", "0"]),
}
COUNT_AWARE = ("fedavg-bs", "fedavg-fedlc")  # the baselines that use label counts as FedDF's adjustment does


def sources(args, needed: set[str], sizes: list[int]) -> dict:
    out = {"public": ROOT / "cache/fashion-mnist-test-0-5000.h5"}
    if "public" in needed and not out["public"].exists() and not args.table_only:
        sh(["cache", "import", "fashion-mnist", "--split", "test[:5000]", "--out", str(out["public"])])
    for n in sizes:
        out[f"gan{n}"] = ROOT / f"cache/dcgan-fashion-mnist-28px-{n}.h5"
        if "gan" in needed and not args.table_only:  # resumable: a finished cache is verified, not rewritten
            sh(["gen", "--generator", "dcgan-fashion-mnist", "--n", str(n), "--seed", "0", "--out",
                str(out[f"gan{n}"]), "--quiet"])
    return out


def main() -> None:
    ap = grid_parser(__doc__.split("\n\n")[0], "runs/fair")
    ap.set_defaults(alphas="0.05,0.1,1", seeds="0,1,2")
    ap.add_argument("--arch", default="cnn", help="cnn (the grid) or resnet8 (the paper's network)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma list of METHODS keys")
    ap.add_argument("--gan-sizes", default="", help="extra FedDF + DCGAN rows, one per cache size, e.g. 5000,100000")
    ap.add_argument("--target-acc", type=float, default=0.80)
    ap.add_argument("--train-limit", type=int, default=None, help="reduced grid: a seeded subset of the train split")
    ap.add_argument("--table-only", action="store_true", help="tabulate finished runs; train nothing")
    args = ap.parse_args()
    keys = [k for k in args.methods.split(",") if k]
    bad = [k for k in keys if k not in METHODS]
    if bad:
        raise SystemExit(f"unknown --methods {bad}: choose from {', '.join(METHODS)}")
    sizes = [int(s) for s in args.gan_sizes.split(",") if s]
    needed = {METHODS[k][1] for k in keys if METHODS[k][1] and not METHODS[k][1].startswith("synth:")}
    # the caches the rows read: --gan-n's for the rows distilling from "gan", one per --gan-sizes row
    gan_caches = sorted({*sizes, *([args.gan_n] if "gan" in needed else [])})
    src = sources(args, needed | ({"gan"} if gan_caches else set()), gan_caches)
    rows = [(k, *METHODS[k]) for k in keys]
    rows += [(f"feddf-gan{n}", f"FedDF + DCGAN, {n // 1000}k images", f"gan{n}", []) for n in sizes
             if not (n == args.gan_n and "feddf-gan" in keys)]  # that size's row is then the feddf-gan row
    arch = ([] if args.arch == "cnn" else ["--arch", args.arch]) + \
        (["--train-limit", str(args.train_limit)] if args.train_limit else [])
    results: dict = {}
    t0 = time.time()
    for alpha in [float(a) for a in args.alphas.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:  # seed-major: a grid cut short has whole seeds
            for key, label, source, extra in rows:
                run = ROOT / args.out / f"{args.arch}-a{alpha:g}-{key}-s{seed}"
                flags = list(extra)
                if source is not None:
                    path = source if source.startswith("synth:") else \
                        src[f"gan{args.gan_n}"] if source == "gan" else src[source]
                    flags = ["--aggregator", "feddf", "--distill-source", str(path), *extra]
                if args.table_only and not finished(run, args.rounds):
                    continue
                train_run(run, alpha, seed, args, [*arch, *flags])  # skips a finished run
                res = summarise(run, args.target_acc, args.rounds)
                results.setdefault(f"{alpha:g}|{key}|{label}", []).append(res)
    lines = [f"| α | method | seeds | test all rounds | test last 3 | rounds to {args.target_acc:.0%} | "
             "upload MB/round | Δ vs best count-aware FedAvg (all / last 3) |", "|---|---|---|---|---|---|---|---|"]
    m = lambda runs, k: statistics.mean(r[k] for r in runs)  # noqa: E731
    figures = {}
    for key, runs in results.items():
        alpha, method, label = key.split("|")
        aware = [results[k] for k in results if k.split("|")[0] == alpha and k.split("|")[1] in COUNT_AWARE]
        best = max(aware, key=lambda rs: m(rs, "mean_all"), default=None)
        delta = "—" if best is None or method in COUNT_AWARE else \
            f"{m(runs, 'mean_all') - m(best, 'mean_all'):+.3f} / {m(runs, 'mean_last3') - m(best, 'mean_last3'):+.3f}"
        hits = ", ".join("—" if r["rounds_to_target"] is None else str(r["rounds_to_target"]) for r in runs)
        lines.append(f"| {alpha} | {label} | {len(runs)} | {mean_std([r['mean_all'] for r in runs])} | "
                     f"{mean_std([r['mean_last3'] for r in runs])} | {hits} | {m(runs, 'upload_mb'):.3f} | {delta} |")
        figures[key] = {"mean_all": m(runs, "mean_all"), "mean_last3": m(runs, "mean_last3"), "seeds": len(runs)}
    header = _header(args).replace(", cnn,", f", {args.arch},") + f"; total wall {time.time() - t0:.0f} s"
    finish(header, lines, args, {"experiment": "fair", "args": vars(args), "results": results, "summary": figures})


if __name__ == "__main__":
    main()
