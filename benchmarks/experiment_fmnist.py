"""FedAvg vs FedDF on real Fashion-MNIST with three distillation sources — the reproducible results table.

    .venv/bin/python benchmarks/experiment_fmnist.py --out runs/exp-fmnist --md docs/results-table.md
    .venv/bin/python benchmarks/experiment_fmnist.py --ablation --alphas 0.1 --seeds 0 --rounds 5 --train-limit 20000 \
        --distill-steps 300 --patience 150 --out runs/abl          # the transfer-set levers, one at a time

Grid: alpha in {1, 0.1} x seeds x {FedAvg, FedDF + DCGAN cache, FedDF + real public split test[:5000], FedDF + noise};
20 clients, participation 0.4, the small `cnn`, evaluation on test[5000:] (never used for tuning: early stopping uses
the server's validation split carved from the training set). Every run is a real `feddf train` subprocess, resumable
(re-running the script skips finished runs). The table reports mean ± std over seeds of the final and best test
accuracy, rounds to reach --target-acc, distillation steps used per round, and wall seconds per round split into local
training and distillation. Ends with one JSON line of all figures.

`--ablation` runs the transfer-set levers one at a time against FedDF + DCGAN with the paper code's recipe
(ABLATION below: temperature, transfer-batch augmentation, mixup, per-round selection, a labeler-filtered cache, a
class-conditional generator) and reports, per variant, the **server validation** accuracy (the only figure used to
choose defaults: mean over all rounds and over the last 3) next to the test figures (mean over all rounds, last 3,
best, rounds to target, gap closure (gen - FedAvg) / (real - FedAvg)).
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
sys.path.insert(0, str(ROOT))
from feddf.audit.compare import load_run, mean_std, run_figures  # noqa: E402,F401 (mean_std: the grid scripts)
FEDDF = [sys.executable, "-m", "feddf"]


def sh(args: list[str]) -> None:
    print("$ feddf " + " ".join(args), flush=True)
    subprocess.run(FEDDF + args, check=True, cwd=ROOT)


def summarise(run: Path, target: float, rounds: int | None = None) -> dict:
    """Figures of the first `rounds` rounds of a run (all when None): runs of different lengths compare alike."""
    return run_figures(load_run(run), target, rounds)


# --ablation: name -> (transfer source, extra `feddf train` flags). Each lever alone on top of "gan-old" (the paper
# code's recipe, spelled out so the rows keep their meaning whatever the defaults), then --distill-bn running (-bn) per source.
OLD = ["--distill-bn", "train", "--logit-adjust", "0"]  # the paper code's recipe (students' BN statistics
#                                                          re-estimated on the transfer set, the plain ensemble)
BN = ["--distill-bn", "running", "--logit-adjust", "0"]  # BN statistics kept, the plain ensemble
NEW = ["--distill-bn", "running", "--logit-adjust", "1"]  # + the teachers' label-prior adjustment
ABLATION = {
    "fedavg": (None, ["--aggregator", "fedavg"]),
    "real": ("public", OLD),
    "noise": ("noise", OLD),
    "gan-old": ("gan", OLD),
    "gan-t4": ("gan", [*OLD, "--temperature", "4"]),
    "gan-aug": ("gan", [*OLD, "--distill-augment", "crop-flip"]),
    "gan-mixup": ("gan", [*OLD, "--distill-mixup", "1.0"]),
    "gan-sel-entropy": ("gan", [*OLD, "--distill-select", "low-entropy", "--select-fraction", "0.5"]),
    "gan-sel-hard": ("gan", [*OLD, "--distill-select", "hard", "--select-fraction", "0.5"]),
    "gan-filter": ("filtered", OLD),
    "cgan": ("cgan", OLD),
    # --distill-bn running (the default), on each source, and one lever on top of it
    "gan-bn": ("gan", BN),
    "real-bn": ("public", BN),
    "noise-bn": ("noise", BN),
    "gan-bn-fedavg": ("gan", [*BN, "--ensemble-fedavg"]),
    # + --logit-adjust 1 on each source
    "gan-la": ("gan", NEW),
    "real-la": ("public", NEW),
    "noise-la": ("noise", NEW),
}
LABELER = ["train", "--dataset", "fashion-mnist", "--arch", "cnn", "--aggregator", "fedavg", "--clients", "1",
           "--fraction", "1", "--rounds", "1", "--local-epochs", "5", "--partition", "iid", "--augment", "none",
           "--train-limit", "6000", "--seed", "0", "--quiet"]  # 5 400 labelled images: the server's val split size


def ablation_sources(args, names: set[str]) -> dict:
    """Build the transfer sets the chosen variants need (each step is skipped/resumed when already done)."""
    src = {"noise": "noise", "gan": str(ROOT / f"cache/dcgan-fashion-mnist-28px-{args.gan_n}.h5"),
           "public": str(ROOT / "cache/fashion-mnist-test-0-5000.h5")}
    if "gan" in names:
        sh(["gen", "--generator", "dcgan-fashion-mnist", "--n", str(args.gan_n), "--seed", "0", "--out", src["gan"],
            "--quiet"])
    if "public" in names and not Path(src["public"]).exists():
        sh(["cache", "import", "fashion-mnist", "--split", "test[:5000]", "--out", src["public"]])
    if "filtered" in names:
        labeler = ROOT / "runs/labeler-val5400"
        if not (labeler / "models").is_dir():
            sh([*LABELER, "--out", str(labeler), "--resume"])
        src["filtered"] = str(ROOT / f"cache/dcgan-fashion-mnist-filtered-{args.gan_n}.h5")
        sh(["gen", "--generator", "dcgan-fashion-mnist", "--n", str(args.gan_n), "--seed", "0", "--labeler",
            str(labeler), "--min-confidence", str(args.min_confidence), "--balance", "--out", src["filtered"],
            "--quiet"])
    if "cgan" in names:
        ckpt = Path(args.cgan_checkpoint)
        if not ckpt.is_absolute():
            ckpt = ROOT / ckpt
        src["cgan"] = str(ROOT / f"cache/cdcgan-fashion-mnist-{args.gan_n}.h5")
        sh(["gen", "--generator", "dcgan", "--checkpoint", str(ckpt), "--resolution", "28", "--n", str(args.gan_n),
            "--seed", "0", "--out", src["cgan"], "--quiet"])
    return src


def main() -> None:
    ap = grid_parser(__doc__.split("\n\n")[0], "runs/exp-fmnist")
    ap.add_argument("--train-limit", type=int, default=None, help="Use a seeded subset of the training split.")
    ap.add_argument("--target-acc", type=float, default=0.80)
    ap.add_argument("--ablation", action="store_true", help="Run the transfer-set levers (ABLATION) instead.")
    ap.add_argument("--variants", default=",".join(ABLATION), help="--ablation: which variants, comma-separated.")
    ap.add_argument("--min-confidence", type=float, default=0.8, help="--ablation gan-filter: labeler threshold.")
    ap.add_argument("--table-only", action="store_true", help="Tabulate finished runs only; train nothing.")
    ap.add_argument("--reference", default="real", help="--ablation: the real-data variant gap closure divides by.")
    ap.add_argument("--cgan-checkpoint", default="runs/cdcgan-fmnist/netG_epoch_10.pth",
                    help="--ablation cgan: a `feddf gan-train --conditional` generator.")
    args = ap.parse_args()
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.ablation:
        methods = {}
        chosen = [v for v in args.variants.split(",") if v]
        unknown = [v for v in chosen if v not in ABLATION]
        if unknown:
            raise SystemExit(f"unknown --variants {unknown}: choose from {', '.join(ABLATION)}")
        src = ({k: str(k) for k in {ABLATION[v][0] for v in chosen}} if args.table_only
               else ablation_sources(args, {ABLATION[v][0] for v in chosen}))
        for v in chosen:
            key, extra = ABLATION[v]
            methods[v] = extra if key is None else ["--aggregator", "feddf", "--distill-source", src[key], *extra]
    else:
        gan_cache = ROOT / f"cache/dcgan-fashion-mnist-28px-{args.gan_n}.h5"
        public_cache = ROOT / "cache/fashion-mnist-test-0-5000.h5"
        sh(["gen", "--generator", "dcgan-fashion-mnist", "--n", str(args.gan_n), "--seed", "0", "--out",
            str(gan_cache), "--quiet"])
        if not public_cache.exists():
            sh(["cache", "import", "fashion-mnist", "--split", "test[:5000]", "--out", str(public_cache)])
        methods = {"FedAvg": ["--aggregator", "fedavg"],
                   "FedDF + DCGAN": ["--aggregator", "feddf", "--distill-source", str(gan_cache)],
                   "FedDF + real test[:5000]": ["--aggregator", "feddf", "--distill-source", str(public_cache)],
                   "FedDF + noise": ["--aggregator", "feddf", "--distill-source", "noise"]}
    limit = ["--train-limit", str(args.train_limit)] if args.train_limit else []
    results: dict = {}
    t0 = time.time()
    for alpha in [float(a) for a in args.alphas.split(",")]:
        for name, extra in methods.items():
            for seed in [int(s) for s in args.seeds.split(",")]:
                if args.ablation:
                    tag = f"a{alpha}-{name}-s{seed}"
                else:
                    tag = f"a{alpha}-{name.split()[0].lower()}{'-' + name.split()[-1].lower() if '+' in name else ''}-s{seed}"
                    tag = tag.replace(":", "").replace("[", "").replace("]", "")
                run = out / tag
                if args.table_only:  # tabulate the finished runs only (a grid filled by several invocations)
                    if not finished(run, args.rounds):
                        continue
                else:
                    train_run(run, alpha, seed, args, [*limit, *extra])
                results.setdefault(f"{alpha}|{name}", []).append(summarise(run, args.target_acc, args.rounds))
    header, lines = (ablation_table if args.ablation else main_table)(results, args)
    finish(header + f"; total wall {time.time() - t0:.0f} s", lines, args,
           {"experiment": "fmnist-ablation" if args.ablation else "fmnist", "args": vars(args), "results": results})


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


def finished(run: Path, rounds: int) -> bool:
    """The run folder already holds at least `rounds` rounds."""
    m = run / "metrics.jsonl"
    return m.exists() and len(m.read_text().splitlines()) >= rounds


def train_run(run: Path, alpha: float, seed: int, args, extra: list[str]) -> None:
    """One `feddf train` of a grid with the script's settings (resumed; skipped once it has args.rounds rounds)."""
    if finished(run, args.rounds):
        return
    sh(["train", "--dataset", "fashion-mnist", "--arch", "cnn", "--clients", "20", "--fraction", "0.4",
        "--alpha", str(alpha), "--rounds", str(args.rounds), "--local-epochs", str(args.local_epochs),
        "--augment", "none", "--distill-steps", str(args.distill_steps), "--eval-every",
        str(args.eval_every), "--patience", str(args.patience), "--seed", str(seed), "--quiet",
        # the grid's rows name their clients' loss and ensemble adjustment against this base (CE clients, the
        # teachers' label priors taken out); a row's own flags come later and win
        "--local-loss", "ce", "--logit-adjust", "1", "--out", str(run), "--resume", *extra])


def finish(header: str, lines: list[str], args, figures: dict) -> None:
    """Print the markdown table (and write it to args.md), then the one JSON line of all figures."""
    table = header + "\n\n" + "\n".join(lines) + "\n"
    print(table)
    if args.md:
        (ROOT / args.md).write_text(table)
    print(json.dumps(figures))


def _header(args) -> str:
    lim = f", train-limit {args.train_limit}" if args.train_limit else ""
    return (f"Fashion-MNIST{lim}, 20 clients, C=0.4, cnn, {args.rounds} rounds x {args.local_epochs} local epochs, "
            f"≤{args.distill_steps} distillation steps (patience {args.patience}), seeds {args.seeds}; "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")


def main_table(results: dict, args) -> str:
    lines = [f"| α | method | final acc | best acc | rounds to {args.target_acc:.0%} | distill steps/round | "
             "local s/round | server s/round |", "|---|---|---|---|---|---|---|---|"]
    for key, runs in results.items():
        alpha, name = key.split("|")
        hits = [r["rounds_to_target"] for r in runs]
        hit_s = ", ".join("—" if h is None else str(h) for h in hits)
        lines.append(f"| {alpha} | {name} | {mean_std([r['final'] for r in runs])} | "
                     f"{mean_std([r['best'] for r in runs])} | {hit_s} | "
                     f"{statistics.mean(r['distill_steps'] for r in runs):.0f} | "
                     f"{statistics.mean(r['local_s'] for r in runs):.1f} | "
                     f"{statistics.mean(r['distill_s'] for r in runs):.1f} |")
    return _header(args), lines


def ablation_table(results: dict, args) -> str:
    """Validation columns decide; test columns are reported. Gap closure against FedAvg and real, same alpha."""
    lines = ["| α | variant | seeds | val all rounds | val last 3 | test all rounds | test last 3 | best test | "
             f"rounds to {args.target_acc:.0%} | gap closure (all / last 3) | distill steps/round | server s/round |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    m = lambda runs, k: statistics.mean(r[k] for r in runs)  # noqa: E731
    for key, runs in results.items():
        alpha, name = key.split("|")
        base, real = results.get(f"{alpha}|fedavg"), results.get(f"{alpha}|{args.reference}")
        gap = "—"
        if base and real and name not in ("fedavg", args.reference):
            g = [(m(runs, k) - m(base, k)) / (m(real, k) - m(base, k)) if m(real, k) != m(base, k) else float("nan")
                 for k in ("mean_all", "mean_last3")]
            gap = f"{g[0]:.2f} / {g[1]:.2f}"
        hits = ", ".join("—" if r["rounds_to_target"] is None else str(r["rounds_to_target"]) for r in runs)
        lines.append(f"| {alpha} | {name} | {len(runs)} | {mean_std([r['val_all'] for r in runs])} | "
                     f"{mean_std([r['val_last3'] for r in runs])} | {mean_std([r['mean_all'] for r in runs])} | "
                     f"{mean_std([r['mean_last3'] for r in runs])} | {mean_std([r['best'] for r in runs])} | {hits} | "
                     f"{gap} | {m(runs, 'distill_steps'):.0f} | {m(runs, 'distill_s'):.1f} |")
    return _header(args), lines


if __name__ == "__main__":
    main()
