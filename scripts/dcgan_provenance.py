"""Write the provenance file of the shipped `dcgan-fashion-mnist` generator from the runs that produced it.

    .venv/bin/python scripts/dcgan_provenance.py --gan-run runs/dcgan-fmnist --labeler runs/labeler-fmnist \
        --audit reports/dcgan-fmnist-provenance/report.json

How the shipped weights were made (the commands recorded below; docs/generators.md repeats them):
    feddf gan-train --data 'fashion-mnist:test[:5000]' --epochs 20 --ngf 32 --ndf 32 --seed 0 --out runs/dcgan-fmnist
    cp runs/dcgan-fmnist/netG_epoch_20.pth feddf/generators/weights/dcgan-fashion-mnist.pth
    feddf train --dataset fashion-mnist --arch cnn --aggregator fedavg --clients 1 --fraction 1 --rounds 1 \
        --local-epochs 3 --partition iid --augment none --seed 0 --out runs/labeler-fmnist     # the labeler
    feddf gen --generator dcgan-fashion-mnist --n 20000 --seed 0 --out cache/dcgan-fashion-mnist-28px-20000.h5
    feddf audit cache/dcgan-fashion-mnist-28px-20000.h5 --labeler runs/labeler-fmnist \
        --reference 'fashion-mnist:test[:5000]' --out reports/dcgan-fmnist-provenance
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "feddf/generators/weights/dcgan-fashion-mnist.pth"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gan-run", default="runs/dcgan-fmnist")
    ap.add_argument("--labeler", default="runs/labeler-fmnist")
    ap.add_argument("--audit", default="reports/dcgan-fmnist-provenance/report.json")
    args = ap.parse_args()
    from feddf.utils import sha256_file

    gan = json.loads((ROOT / args.gan_run / "config.json").read_text())
    log = [json.loads(x) for x in (ROOT / args.gan_run / "log.jsonl").read_text().splitlines() if x.strip()]
    lab_cfg = json.loads((ROOT / args.labeler / "config.json").read_text())
    lab_metrics = [json.loads(x) for x in (ROOT / args.labeler / "metrics.jsonl").read_text().splitlines()]
    audit = json.loads((ROOT / args.audit).read_text())
    src = audit["sources"][0]
    lab = src["labeler"]
    cfg = gan["config"]
    prov = {
        "name": "dcgan-fashion-mnist",
        "file": WEIGHTS.name,
        "sha256": sha256_file(WEIGHTS),
        "format": "pytorch/examples DCGAN netG state_dict, 32x32 variant (last layer a 1x1 transposed conv)",
        "architecture": gan["generator"],
        "data": {"dataset": cfg["data"], "n": gan["source"]["n"],
                 "why": "the public split: test[5000:] is the test set of every experiment and clients train on "
                        "the train split, so neither ever sees these 5000 images"},
        "training": {k: cfg[k] for k in ("epochs", "batch_size", "lr", "beta1", "ndf", "ngf", "nz", "size", "seed")}
        | {"final_epoch": log[-1], "wall_seconds": round(sum(r["seconds"] for r in log), 1),
           "hardware": "2 CPU cores (shared)"},
        "command": (f"feddf gan-train --data '{cfg['data']}' --epochs {cfg['epochs']} --ngf {cfg['ngf']} "
                    f"--ndf {cfg['ndf']} --seed {cfg['seed']} --out {args.gan_run}"),
        "versions": gan["versions"],
        "coverage": {
            "measured_with": ("feddf gen --generator dcgan-fashion-mnist --n 20000 --seed 0 && feddf audit "
                              f"<cache> --labeler {args.labeler} --reference 'fashion-mnist:test[:5000]'"),
            "n": lab["n"],
            "labeler": {"arch": lab_cfg["archs"][0] if lab_cfg.get("archs") else lab_cfg["arch"],
                        "test_split": lab_cfg.get("test_split"),
                        "test_accuracy": lab_metrics[-1]["acc"][next(iter(lab_metrics[-1]["acc"]))]["fedavg"],
                        "command": "feddf train --dataset fashion-mnist --arch cnn --aggregator fedavg --clients 1 "
                                   "--fraction 1 --rounds 1 --local-epochs 3 --partition iid --augment none "
                                   f"--seed 0 --out {args.labeler}"},
            "effective_classes": round(lab["effective_classes"], 3),
            "entropy_nats": round(lab["entropy_nats"], 4),
            "mean_confidence": round(lab["mean_confidence"], 4),
            "low_confidence_share": lab["low_confidence_share"],
            "low_confidence_threshold": lab["low_confidence_threshold"],
            "tv_to_uniform": round(lab["tv_to_uniform"], 4),
            "per_class_share": {c["name"]: c["share"] for c in lab["per_class"]},
        },
        "fid": src["fid"] if src["fid"].get("available") else f"unavailable: {src['fid']['reason']}",
    }
    out = WEIGHTS.with_suffix(".json")
    out.write_text(json.dumps(prov, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
