"""How well do the round's client models vote, by ensemble rule? Validation accuracy only (docs/training.md).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/experiment_ensemble_rules.py --seed 0 --rounds 10

FedAvg on real Fashion-MNIST with the settings of benchmarks/experiment_fmnist.py (20 clients, C = 0.4, `cnn`, 2
local epochs, alpha 0.1). After each round's local training (fusion.client_step, the clients `feddf train` trains),
the round's 8 client models are scored on the server's labelled validation split under each rule; the test split is
never touched. Rules, z_i = client i's logits, p_i = softmax(z_i), n_ic its label counts, pi_i its smoothed prior
(n_ic + s) / (n_i + K s):
  avg-logits / avg-probs          the paper's plain averages
  class-share-probs / -logits     teacher i weighted per class by n_ic / sum_j n_jc
  divide-prior-probs              mean of p_i / pi_i (s = 1)
  adjust s<s> t<tau>              mean of z_i - tau * log pi_i (--logit-adjust tau; feddf uses s = 1)
The next round starts from the FedAvg model, so the rows are FedAvg's rounds. Ends with one JSON line of figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from feddf.federated.aggregate import get_aggregator  # noqa: E402
from feddf.federated.config import TrainConfig  # noqa: E402
from feddf.federated.fusion import client_step, sample_clients  # noqa: E402
from feddf.federated.setup import load_task, predict_logits  # noqa: E402


def rules(z: torch.Tensor, counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Teacher logits (T, B, K) and label counts (T, K) -> {rule: scores (B, K)} (module docstring)."""
    p = F.softmax(z, 2)
    share = (counts / counts.sum(0, keepdim=True).clamp_min(1))[:, None, :]  # (T, 1, K)
    out = {"avg-logits": z.mean(0), "avg-probs": p.mean(0), "class-share-probs": (share * p).sum(0),
           "class-share-logits": (share * z).sum(0)}
    prior1 = (counts + 1) / (counts + 1).sum(1, keepdim=True)
    out["divide-prior-probs"] = (p / prior1[:, None, :]).mean(0)
    for s in (0.1, 1.0, 10.0):
        log_prior = torch.log((counts + s) / (counts + s).sum(1, keepdim=True))[:, None, :]
        for tau in (0.5, 1.0, 1.5):
            out[f"adjust s{s:g} t{tau:g}"] = (z - tau * log_prior).mean(0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--alpha", type=float, default=0.1)
    args = ap.parse_args()
    cfg = TrainConfig(dataset="fashion-mnist", arch="cnn", clients=20, fraction=0.4, alpha=args.alpha,
                      rounds=args.rounds, local_epochs=2, augment="none", seed=args.seed, test_split="test[5000:]",
                      aggregator="fedavg", out="runs/ensemble-rules", progress=False).resolved()
    task = load_task(cfg, log=lambda s: None, source=False)
    hist = torch.as_tensor(task.hist, dtype=torch.float32)
    agg, server = get_aggregator("fedavg"), task.initial_state("cnn")

    def val_logits(model):
        return predict_logits(model, task.val_images, task.eval_tf, 1000, "cpu")

    def acc(scores):
        return (scores.argmax(1) == task.val_labels).float().mean().item()

    rows = []
    for r in range(1, args.rounds + 1):
        sel = sample_clients(cfg, r)
        ups = [client_step(cfg, task, r, k, server, "cpu") for k in sel]
        server = agg.aggregate("cnn", server, [u.model.state_dict() for u in ups], [u.n for u in ups],
                               task.param_names["cnn"])
        z = torch.stack([val_logits(u.model) for u in ups])
        row = {"round": r, "fedavg": acc(val_logits(task.new_model("cnn", server)))}
        row.update({k: acc(v) for k, v in rules(z, hist[sel]).items()})
        rows.append(row)
        print(json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
    keys = [k for k in rows[0] if k != "round"]
    means = {k: round(statistics.mean(r[k] for r in rows), 4) for k in keys}
    print("\n| rule | mean validation accuracy over rounds |\n|---|---|")
    for k in sorted(keys, key=lambda k: -means[k]):
        print(f"| {k} | {means[k]:.3f} |")
    print(json.dumps({"experiment": "ensemble-rules", "seed": args.seed, "alpha": args.alpha, "rounds": args.rounds,
                      "mean_val_acc": means, "per_round": rows}))


if __name__ == "__main__":
    main()
