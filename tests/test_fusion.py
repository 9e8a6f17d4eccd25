"""The FedDF server step alone (feddf/federated/fusion.py) on a tiny real Fashion-MNIST task: the average it starts
from, the best-on-validation rule, architectures without replies, and equality with what `feddf train` records."""
import json

import torch

from feddf.federated.aggregate import get_aggregator, weighted_average
from feddf.federated.config import TrainConfig
from feddf.federated.fusion import client_step, fuse, sample_clients
from feddf.federated.setup import load_task


def _task(tmp_path, **kw):
    cfg = TrainConfig(dataset="fashion-mnist", train_limit=300, test_limit=200, clients=3, fraction=1.0, rounds=1,
                      local_epochs=1, distill_source="noise", distill_steps=6, eval_every=3, eval_batch_size=200,
                      progress=False, out=str(tmp_path / "run"), **kw).resolved()
    return cfg, load_task(cfg, log=lambda s: None)


def _updates(cfg, task, server, r=1):
    return [client_step(cfg, task, r, k, server[task.client_arch[k]], torch.device("cpu")) for k in range(cfg.clients)]


def test_fedavg_step_is_the_weighted_average(tmp_path, fmnist_available):
    cfg, task = _task(tmp_path, arch="cnn", aggregator="fedavg")
    server = {"cnn": task.initial_state("cnn")}
    ups = _updates(cfg, task, server)
    res = fuse(1, cfg, task, get_aggregator("fedavg"), server, ups, torch.device("cpu"))
    want = weighted_average([u.model.state_dict() for u in ups], [u.n for u in ups])
    assert set(res.server["cnn"]) == set(want)
    for k, v in want.items():
        assert torch.equal(res.server["cnn"][k], v), k
    m = res.metrics
    assert m["distill_steps"] == {"cnn": 0} and m["best_step"] == {"cnn": None} and m["teachers"] == 3
    assert all(u.class_counts is None for u in ups)  # FedAvg's server step never uses them: they stay home
    assert m["acc"]["cnn"]["distilled"] is None and 0 < m["acc"]["cnn"]["fedavg"] <= 1
    assert server["cnn"] is task.initial_state("cnn")  # the caller's states are not modified


def test_feddf_step_keeps_best_on_validation_and_idle_archs(tmp_path, fmnist_available):
    cfg, task = _task(tmp_path, archs=["cnn", "resnet8"], aggregator="feddf")
    server = {a: task.initial_state(a) for a in cfg.archs}
    ups = [u for u in _updates(cfg, task, server) if u.arch == "cnn"]  # resnet8 gets no reply this round
    res = fuse(1, cfg, task, get_aggregator("feddf"), server, ups, torch.device("cpu"))
    m = res.metrics
    assert set(m["val_acc"]) == {"cnn", "resnet8"} and m["teachers"] == len(ups)
    for a in cfg.archs:
        assert m["val_acc"][a]["distilled"] >= m["val_acc"][a]["fedavg"]  # the start counts: never worse
        assert m["best_step"][a] is not None and 0 < m["distill_steps"][a] <= cfg.distill_steps
    # without replies resnet8's student starts from its unchanged server state
    start = task.new_model("resnet8", server["resnet8"])
    if m["best_step"]["resnet8"] == 0:
        for k, v in start.state_dict().items():
            assert torch.equal(res.server["resnet8"][k], v), k


def test_train_records_what_fuse_computes(tmp_path, fmnist_available):
    """`feddf train` calls this same step: replaying round 1 by hand gives the recorded metrics and model."""
    from feddf.federated.runner import run

    cfg, task = _task(tmp_path, arch="cnn", aggregator="feddf")
    run(cfg, log=lambda s: None)
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    server = {"cnn": task.initial_state("cnn")}
    res = fuse(1, cfg, task, get_aggregator("feddf"), server, _updates(cfg, task, server), torch.device("cpu"))
    for key, value in res.metrics.items():
        assert row[key] == json.loads(json.dumps(value)), key  # same seeds, same order: equal, not close
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["server"]["cnn"]
    for k, v in res.server["cnn"].items():
        assert torch.equal(saved[k], v), k


def test_sample_clients_is_seeded_and_sized(tmp_path):
    from feddf.federated.config import TrainConfig

    cfg = TrainConfig(clients=20, fraction=0.4, seed=3)
    picks = [sample_clients(cfg, r) for r in (1, 2)]
    assert all(len(p) == 8 and p == sorted(set(p)) and 0 <= p[0] and p[-1] < 20 for p in picks)
    assert picks[0] != picks[1] and sample_clients(cfg, 1) == picks[0]


def test_ensemble_fedavg_adds_each_architectures_average_as_a_teacher(tmp_path, fmnist_available):
    """--ensemble-fedavg: the FedAvg model of every architecture that got replies teaches next to the clients (an
    idle architecture adds none); the ensemble accuracy is that of the teachers actually used."""
    from feddf.federated.teachers import ensemble_scores
    from feddf.federated.client import accuracy

    cfg, task = _task(tmp_path, archs=["cnn", "resnet8"], aggregator="feddf", ensemble_fedavg=True, logit_adjust=0.0)
    server = {a: task.initial_state(a) for a in cfg.archs}
    ups = [u for u in _updates(cfg, task, server) if u.arch == "cnn"]
    res = fuse(1, cfg, task, get_aggregator("feddf"), server, ups, torch.device("cpu"))
    assert res.metrics["teachers"] == len(ups) + 1  # + the cnn FedAvg model; resnet8 had no replies
    avg = task.new_model("cnn", weighted_average([u.model.state_dict() for u in ups], [u.n for u in ups]))
    logits = task.test_logits([u.model for u in ups] + [avg], "cpu")
    assert res.metrics["ensemble_acc"] == accuracy(ensemble_scores(logits, cfg.ensemble), task.test_labels)


def test_logit_adjust_subtracts_each_teachers_label_prior(tmp_path, fmnist_available):
    """--logit-adjust: each client sends its label counts; the ensemble that teaches (and whose accuracy is
    recorded) is the clients' logits minus tau * log of their smoothed label priors; the FedAvg teacher of
    --ensemble-fedavg gets the pooled counts of the clients it averages; a client without counts is refused."""
    import numpy as np
    import pytest

    from feddf.errors import FeddfError
    from feddf.federated.client import accuracy
    from feddf.federated.teachers import ensemble_scores, label_prior_adjustment

    cfg, task = _task(tmp_path, arch="cnn", aggregator="feddf", alpha=0.1, logit_adjust=0.7, ensemble_fedavg=True)
    server = {"cnn": task.initial_state("cnn")}
    ups = _updates(cfg, task, server)
    for u in ups:  # the counts are the client's own training labels
        want = np.bincount(task.train_labels[task.client_indices[u.cid]].numpy(), minlength=10)
        assert u.class_counts == want.tolist() and sum(u.class_counts) == u.n
    res = fuse(1, cfg, task, get_aggregator("feddf"), server, ups, torch.device("cpu"))
    avg = task.new_model("cnn", weighted_average([u.model.state_dict() for u in ups], [u.n for u in ups]))
    counts = [u.class_counts for u in ups] + [np.sum([u.class_counts for u in ups], 0).tolist()]
    adj = label_prior_adjustment(counts, 0.7)
    logits = task.test_logits([u.model for u in ups] + [avg], "cpu") - adj[:, None, :]
    assert res.metrics["ensemble_acc"] == accuracy(ensemble_scores(logits, cfg.ensemble), task.test_labels)
    import dataclasses

    plain = dataclasses.replace(cfg, logit_adjust=0.0)  # --logit-adjust 0: no client sends its counts
    assert not plain.server_uses_label_counts() and cfg.server_uses_label_counts()
    assert [u.class_counts for u in _updates(plain, task, server)] == [None] * cfg.clients
    ups[1].class_counts = None
    with pytest.raises(FeddfError, match="label counts"):
        fuse(1, cfg, task, get_aggregator("feddf"), server, ups, torch.device("cpu"))
