"""`--client-engine batched` against `sequential` (feddf/federated/engines.py) and the portable kernels behind it
(feddf/federated/kernels.py), on real Fashion-MNIST: equal tensor for tensor after a round, equal runs over three
rounds through the CLI, the fall-back of a model that draws random numbers, and old run folders."""
import dataclasses
import json

import pytest
import torch

from feddf.federated.config import TrainConfig
from feddf.federated.engines import plan, train_clients
from feddf.federated.fusion import sample_clients
from feddf.federated.kernels import Probe, probe
from feddf.federated.setup import load_task, same_run
from tests.conftest import run_cli


@pytest.fixture
def two_threads():
    """The batched engine runs as many clients at once as PyTorch has intra-op threads: make that 2 here."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def _task(tmp_path, **kw):
    base = dict(dataset="fashion-mnist", train_limit=1500, test_limit=300, clients=6, fraction=1.0, rounds=1,
                local_epochs=1, alpha=0.3, aggregator="fedavg", progress=False, out=str(tmp_path / "run"))
    cfg = TrainConfig(**{**base, **kw}).resolved()
    return cfg, load_task(cfg, log=lambda s: None)


def _states(updates):
    return [{k: v.clone() for k, v in u.model.state_dict().items()} for u in updates]


def _assert_equal(a, b):
    assert [u.cid for u in a] == [u.cid for u in b]
    for ua, ub in zip(a, b):
        assert ua.payload == ub.payload  # the encoded uploads, byte for byte
        sa, sb = ua.model.state_dict(), ub.model.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), ua.cid


def test_batched_equals_sequential_tensor_for_tensor_mixed_precision_and_fedprox(tmp_path, fmnist_available,
                                                                                  two_threads):
    cfg, task = _task(tmp_path, arch="cnn", aggregator="fedprox", client_precision="fp32,binary,bf16")
    selected = sample_clients(cfg, 1)
    together, alone = plan(cfg, task, selected, "cpu")
    assert len(together) == len(selected) and alone == []  # all of them really ran side by side
    server = {"cnn": task.initial_state("cnn")}
    batched = train_clients(cfg, task, 1, selected, server, "cpu")
    sequential = train_clients(dataclasses.replace(cfg, client_engine="sequential"), task, 1, selected, server, "cpu")
    _assert_equal(batched, sequential)
    sizes = {len(task.client_indices[k]) for k in selected}
    assert len(sizes) > 1  # clients of different sizes (different step counts) trained together
    assert {u.precision for u in batched} == {"fp32", "binary", "bf16"}


def test_a_portable_client_does_not_depend_on_the_thread_count(tmp_path, fmnist_available):
    cfg, task = _task(tmp_path, arch="cnn", client_engine="sequential", clients=2)
    server = {"cnn": task.initial_state("cnn")}
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = train_clients(cfg, task, 1, [0, 1], server, "cpu")
        torch.set_num_threads(1)
        one = train_clients(cfg, task, 1, [0, 1], server, "cpu")
    finally:
        torch.set_num_threads(n)
    _assert_equal(two, one)
    assert torch.get_num_threads() == n  # one_thread() restored the count


def test_probe_decides_from_the_model_code():
    from feddf.models import get_model
    from tests.custom_models import build

    assert probe(lambda: get_model("cnn", 10, 1), (1, 28, 28)) == Probe(channels_last=True, rng_free=True)
    p = probe(lambda: build(num_classes=10, in_channels=1), (1, 28, 28))  # dropout + .view
    assert p.channels_last is False and p.rng_free is False
    state = torch.get_rng_state()
    probe(lambda: get_model("cnn", 10, 1), (1, 28, 28))
    assert torch.equal(state, torch.get_rng_state())  # the probe leaves the global generator alone


def test_a_model_that_draws_random_numbers_trains_alone_and_still_equals_sequential(tmp_path, fmnist_available,
                                                                                  two_threads):
    cfg, task = _task(tmp_path, archs=["cnn", "tests.custom_models:build"], aggregator="feddf",
                      distill_source="noise", clients=4)
    selected = sample_clients(cfg, 1)
    together, alone = plan(cfg, task, selected, "cpu")
    custom = [k for k in selected if task.client_arch[k] != "cnn"]
    assert custom and set(alone) == set(custom) and set(together) == set(selected) - set(custom)
    server = {a: task.initial_state(a) for a in cfg.archs}
    _assert_equal(train_clients(cfg, task, 1, selected, server, "cpu"),
                  train_clients(dataclasses.replace(cfg, client_engine="sequential"), task, 1, selected, server,
                                "cpu"))


def test_legacy_kernels_train_alone_and_old_run_folders_resume_with_them(tmp_path, fmnist_available, two_threads):
    cfg, task = _task(tmp_path, arch="cnn", client_kernels="legacy")
    assert plan(cfg, task, [0, 1, 2], "cpu") == ([], [0, 1, 2])
    now = dataclasses.asdict(cfg)
    before = {k: v for k, v in now.items() if k != "client_kernels"}  # a config.json written before the option
    assert same_run(before, now) == ""
    assert "client_kernels" in same_run(before, {**now, "client_kernels": "portable"})
    assert same_run(now, {**now, "client_engine": "sequential"}) == ""  # the engine never changes results


def test_three_rounds_through_the_cli_are_identical_batched_and_sequential(tmp_path, fmnist_available):
    common = ["train", "--dataset", "fashion-mnist", "--arch", "cnn", "--aggregator", "feddf", "--distill-source",
              "noise", "--clients", "4", "--fraction", "0.5", "--rounds", "3", "--local-epochs", "1",
              "--train-limit", "1200", "--test-limit", "300", "--distill-steps", "12", "--eval-every", "4",
              "--alpha", "0.5", "--quiet"]
    runs = {}
    for engine in ("batched", "sequential"):
        out = tmp_path / engine
        run_cli(*common, "--client-engine", engine, "--out", str(out), check=True, env={"OMP_NUM_THREADS": "2"})
        runs[engine] = out
    rows = {e: [json.loads(line) for line in (o / "metrics.jsonl").read_text().splitlines()] for e, o in runs.items()}
    strip = lambda r: {k: v for k, v in r.items() if not k.endswith("seconds")}  # noqa: E731 - timings differ
    assert [strip(r) for r in rows["batched"]] == [strip(r) for r in rows["sequential"]]
    assert len(rows["batched"]) == 3
    assert {"fedavg", "ensemble_test", "distill"} <= set(rows["batched"][0]["server_seconds"])
    assert {"batches", "students", "validation"} <= set(rows["batched"][0]["server_seconds"]["distill_parts"])
    a, b = (torch.load(o / "models" / "cnn.pt", weights_only=True) for o in runs.values())
    sa, sb = a["state_dict"], b["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert json.loads((runs["batched"] / "config.json").read_text())["client_kernels"] == "portable"


def test_bad_engine_or_kernels_is_one_line(tmp_path):
    for flag, value in (("--client-engine", "vmap"), ("--client-kernels", "fast")):
        p = run_cli("train", flag, value, "--out", str(tmp_path / "x"))
        assert p.returncode == 1 and "Traceback" not in p.stderr
        assert f"{flag} '{value}'" in p.stderr and "choose one of" in p.stderr
        assert not (tmp_path / "x").exists()


def test_help_names_the_engines():
    p = run_cli("train", "--help", check=True)
    assert "--client-engine" in p.stdout and "--client-kernels" in p.stdout and "batched" in p.stdout
