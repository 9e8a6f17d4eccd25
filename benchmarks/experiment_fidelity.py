"""Does fidelity predict usefulness? Audit distillation sources of graded quality and relate each metric to the FedDF
accuracy gain the source gives over FedAvg (Fashion-MNIST, alpha = 0.1) — a small, single-seed version.

    .venv/bin/python benchmarks/experiment_fidelity.py --out runs/exp-fidelity      # ~35 min on 2 heavily shared cores

Sources (all 28 px gray caches): uniform pixel noise; a randomly initialised DCGAN (the shipped architecture,
variance-preserving random weights); an early DCGAN (`feddf gan-train --epochs 1` on test[:5000]); the shipped
DCGAN; the real public split test[:5000] (`feddf cache import`). Each source is distilled from by one
`feddf train --aggregator feddf` run; one FedAvg run is the baseline (same seed, same partition). A labeler
(FedAvg on the full train split, alpha = 100, 2 rounds) audits every source against test[5000:] with --limit so
every source is scanned at the same size. Gains: the FedDF run's final accuracy minus FedAvg's, and — less noisy —
the mean over rounds of (distilled model - that round's FedAvg model), both on test[5000:]. Prints the table and
Spearman's rho of each metric against both gains; ends with one JSON line. Finished runs are skipped on a re-run.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FEDDF = [sys.executable, "-m", "feddf"]
METRICS = ("precision", "recall", "density", "coverage")


def sh(args: list[str]) -> None:
    print("$ feddf " + " ".join(args), flush=True)
    subprocess.run(FEDDF + args, check=True, cwd=ROOT)


def accuracies(run: Path) -> dict:
    """final test accuracy, and the mean over rounds of (distilled - the same round's FedAvg model): what
    distillation from the source added, measured inside one run (each round's FedAvg start is logged)."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    arch = next(iter(rows[-1]["acc"]))
    a = [r["acc"][arch] for r in rows]
    accs = [x["distilled"] if x.get("distilled") is not None else x["fedavg"] for x in a]
    gains = [x["distilled"] - x["fedavg"] for x in a if x.get("distilled") is not None]
    return {"final": accs[-1], "round_gain": sum(gains) / len(gains) if gains else 0.0,
            "round_gains": gains}


def make_sources(out: Path, n: int) -> dict[str, Path]:
    import numpy as np
    import torch

    from feddf.cache.writer import CacheWriter
    from feddf.generators.dcgan import Generator, random_init

    src = {"noise": out / "noise.h5", "dcgan-random": out / "dcgan-random.h5", "dcgan-early": out / "dcgan-early.h5",
           "dcgan-shipped": out / "dcgan-shipped.h5", "real-test[:5000]": out / "real.h5"}
    if not src["noise"].exists():
        rng = np.random.default_rng(0)
        w = CacheWriter(src["noise"], n=n, channels=1, resolution=28, attrs={"kind": "imported", "source": "noise"})
        w.append(rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8), -np.ones(n, np.int64))
        w.finish()
        w.close()
    if not src["dcgan-random"].exists():
        torch.manual_seed(0)
        ckpt = out / "netG_random.pth"
        torch.save(random_init(Generator(nz=100, ngf=32, nc=1, size=32)).state_dict(), ckpt)
        sh(["gen", "--generator", "dcgan", "--checkpoint", str(ckpt), "--n", str(n), "--resolution", "28",
            "--out", str(src["dcgan-random"]), "--quiet"])
    if not src["dcgan-early"].exists():
        sh(["gan-train", "--data", "fashion-mnist:test[:5000]", "--epochs", "1", "--out", str(out / "gan-early"),
            "--quiet"])
        ckpt = sorted((out / "gan-early").glob("**/netG*.pth"))[-1]
        sh(["gen", "--generator", "dcgan", "--checkpoint", str(ckpt), "--n", str(n), "--resolution", "28",
            "--out", str(src["dcgan-early"]), "--quiet"])
    if not src["dcgan-shipped"].exists():
        sh(["gen", "--generator", "dcgan-fashion-mnist", "--n", str(n), "--seed", "0", "--out",
            str(src["dcgan-shipped"]), "--quiet"])
    if not src["real-test[:5000]"].exists():
        sh(["cache", "import", "fashion-mnist:test[:5000]", "--out", str(src["real-test[:5000]"]), "-q"])
    return src


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/exp-fidelity")
    ap.add_argument("--n", type=int, default=5000, help="images per generated source")
    ap.add_argument("--rounds", type=int, default=1, help="1 fits a shared 2-core machine; more rounds, more signal")
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--distill-steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = (ROOT / a.out) if not Path(a.out).is_absolute() else Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sources = make_sources(out, a.n)
    common = ["train", "--dataset", "fashion-mnist", "--arch", "cnn", "--clients", "20", "--fraction", "0.4",
              "--alpha", "0.1", "--rounds", str(a.rounds), "--local-epochs", str(a.local_epochs), "--augment", "none",
              "--distill-steps", str(a.distill_steps), "--eval-every", "50", "--patience", "150", "--seed",
              str(a.seed), "--quiet", "--resume"]
    runs = {name: ["--aggregator", "feddf", "--distill-source", str(p)] for name, p in sources.items()}
    runs["fedavg"] = ["--aggregator", "fedavg"]
    for name, extra in runs.items():
        if not (out / "runs" / name / "models").is_dir():
            sh(common + ["--out", str(out / "runs" / name), *extra])
    labeler = out / "labeler"
    if not (labeler / "models").is_dir():
        sh(["train", "--dataset", "fashion-mnist", "--arch", "cnn", "--aggregator", "fedavg", "--clients", "2",
            "--fraction", "1", "--alpha", "100", "--rounds", "2", "--local-epochs", "2", "--augment", "none",
            "--seed", "0", "--quiet", "--out", str(labeler)])
    if not (out / "audit" / "report.json").is_file():
        sh(["audit", *map(str, sources.values()), "--labeler", str(labeler), "--reference",
            "fashion-mnist:test[5000:]", "--limit", "5000", "--kid-subsets", "50", "--out", str(out / "audit"), "-q"])
    rep = json.loads((out / "audit" / "report.json").read_text())
    base_final = accuracies(out / "runs" / "fedavg")["final"]
    rows = []
    for s, name in zip(rep["sources"], sources):
        ev = s["fidelity"]["labeler"]
        acc = accuracies(out / "runs" / name)
        covs = [r["coverage"] for r in ev["per_class"] if r["coverage"] is not None]
        rows.append({"source": name, **{m: ev["overall"][m] for m in METRICS}, "kid": ev["overall"]["kid"]["value"],
                     "min_class_coverage": min(covs), "gain_final": acc["final"] - base_final,
                     "gain_round": acc["round_gain"], "round_gains": acc["round_gains"], "final": acc["final"]})
    from scipy.stats import spearmanr

    print(f"FedAvg: final {base_final:.4f}")
    print("| source | precision | recall | density | coverage | min class cov. | KID | FedDF final | vs FedAvg | "
          "distillation gain / round |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['source']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['density']:.3f} | {r['coverage']:.3f} "
              f"| {r['min_class_coverage']:.3f} | {r['kid']:.4f} | {r['final']:.4f} | {r['gain_final']:+.4f} | "
              f"{r['gain_round']:+.4f} |")
    rho = {}
    for m in (*METRICS, "min_class_coverage", "kid"):
        sign = -1 if m == "kid" else 1            # lower KID is better: correlate -KID
        rho[m] = {g: float(spearmanr([sign * r[m] for r in rows], [r[g] for r in rows]).statistic)
                  for g in ("gain_final", "gain_round")}
        print(f"spearman({m}{' (negated)' if sign < 0 else ''}, gain): vs FedAvg {rho[m]['gain_final']:+.2f}, "
              f"per round {rho[m]['gain_round']:+.2f}")
    print(json.dumps({"experiment": "fidelity-vs-gain", "fedavg_final": base_final,
                      "rows": rows, "spearman": rho, "rounds": a.rounds, "seed": a.seed}))


if __name__ == "__main__":
    main()
