"""`--local-loss ce|balanced-softmax|fedlc` (feddf/federated/losses.py): each loss against a value computed by hand on
a tiny batch, its use by every aggregator and the Flower client path (fusion.client_step), the config record, and
bad values."""
import dataclasses
import json
import math

import pytest
import torch

from feddf.federated.config import TrainConfig
from feddf.federated.losses import local_loss, logit_offset
from tests.conftest import run_cli

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
LABELS = torch.tensor([0, 1])
COUNTS = [6, 3, 0]


def _ce_by_hand(rows, labels):
    total = 0.0
    for z, y in zip(rows, labels):
        total += -z[y] + math.log(sum(math.exp(v) for v in z if v != -math.inf))
    return total / len(rows)


def test_ce_is_plain_cross_entropy():
    assert logit_offset("ce", COUNTS) is None
    assert local_loss(LOGITS, LABELS, None).item() == pytest.approx(_ce_by_hand(LOGITS.tolist(), [0, 1]), abs=1e-6)


def test_balanced_softmax_by_hand():
    # Laplace-smoothed prior (n_c + 1) / (n + K) = (7/12, 4/12, 1/12), added as log to the logits
    prior = [7 / 12, 4 / 12, 1 / 12]
    rows = [[z + math.log(p) for z, p in zip(row, prior)] for row in LOGITS.tolist()]
    off = logit_offset("balanced-softmax", COUNTS)
    assert off.tolist() == pytest.approx([math.log(p) for p in prior], abs=1e-6)
    assert local_loss(LOGITS, LABELS, off).item() == pytest.approx(_ce_by_hand(rows, [0, 1]), abs=1e-6)


def test_fedlc_by_hand_and_an_absent_class_leaves_the_softmax():
    tau = 0.5
    rows = [[z - tau * n ** -0.25 if n else -math.inf for z, n in zip(row, COUNTS)] for row in LOGITS.tolist()]
    off = logit_offset("fedlc", COUNTS, tau)
    assert off[:2].tolist() == pytest.approx([-tau * 6 ** -0.25, -tau * 3 ** -0.25], abs=1e-6)
    assert off[2].item() == -math.inf
    logits = LOGITS.clone().requires_grad_()
    loss = local_loss(logits, LABELS, off)
    assert loss.item() == pytest.approx(_ce_by_hand(rows, [0, 1]), abs=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[:, 2].abs().max() == 0  # no push on the unseen class
    assert logit_offset("fedlc", COUNTS, 0.0)[:2].tolist() == [0.0, 0.0]


def test_every_loss_trains_clients_differently_and_deterministically(tmp_path, fmnist_available):
    from feddf.federated.engines import train_clients
    from feddf.federated.setup import load_task

    cfg = TrainConfig(dataset="fashion-mnist", train_limit=900, test_limit=200, clients=3, fraction=1.0, rounds=1,
                      local_epochs=1, alpha=0.1, aggregator="fedavg", arch="cnn", progress=False,
                      out=str(tmp_path / "r")).resolved()
    task = load_task(cfg, log=lambda s: None)
    server = {"cnn": task.initial_state("cnn")}
    uploads = {}
    for loss in ("ce", "balanced-softmax", "fedlc"):
        c = dataclasses.replace(cfg, local_loss=loss)
        first = [u.payload for u in train_clients(c, task, 1, [0, 1, 2], server, "cpu")]
        assert first == [u.payload for u in train_clients(c, task, 1, [0, 1, 2], server, "cpu")]
        uploads[loss] = first
    assert len({tuple(v) for v in uploads.values()}) == 3  # three different trainings


@pytest.mark.parametrize("aggregator", ["fedavg", "feddf"])
def test_the_cli_records_the_loss(tmp_path, fmnist_available, aggregator):
    out = tmp_path / aggregator
    run_cli("train", "--arch", "cnn", "--aggregator", aggregator, "--distill-source", "noise", "--clients", "3",
            "--rounds", "1", "--local-epochs", "1", "--train-limit", "600", "--test-limit", "200",
            "--distill-steps", "6", "--eval-every", "3", "--local-loss", "fedlc", "--fedlc-tau", "0.5", "--quiet",
            "--out", str(out), check=True)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["local_loss"] == "fedlc" and cfg["fedlc_tau"] == 0.5
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--local-loss", "focal"], "--local-loss 'focal': choose one of ce, balanced-softmax, fedlc"),
    (["--fedlc-tau", "-1"], "--fedlc-tau"),
])
def test_bad_values_are_one_line(tmp_path, args, message):
    p = run_cli("train", *args, "--out", str(tmp_path / "x"))
    assert p.returncode == 1 and message in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_an_old_config_without_the_keys_is_the_same_run():
    from feddf.federated.setup import same_run

    now = dataclasses.asdict(TrainConfig(out="r", local_loss="ce").resolved())
    before = {k: v for k, v in now.items() if k not in ("local_loss", "fedlc_tau")}
    assert same_run(before, now) == ""  # a config without the key trained CE clients
    assert "local_loss" in same_run(before, {**now, "local_loss": "balanced-softmax"})
    assert "local_loss" in same_run(before, dataclasses.asdict(TrainConfig(out="r").resolved()))  # FedDF's default
