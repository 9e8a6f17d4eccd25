"""`--server-kernels` (feddf/federated/evaluation.py): the server's test and validation passes and its distillation
students computed one thread at a time, so a run is the same floats on one core or two (fused: on BN-folded copies;
portable: on plain copies); legacy is the old path. The batched engine's precomputed test logits are fuse's."""
import dataclasses
import json

import pytest
import torch
from torch import nn

from feddf.federated.client import predict_logits
from feddf.federated.config import TrainConfig
from feddf.federated.evaluation import eval_logits
from feddf.federated.setup import same_run
from feddf.models import get_model
from tests.conftest import run_cli


def _tf(u8):  # uint8 -> float, like the task's eval transform
    return u8.float() / 255 - 0.5


class Viewing(nn.Module):
    """A model that .view()s its activations: channels_last inputs break it, so it must evaluate in NCHW."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 28 * 28, 10)

    def forward(self, x):
        h = self.conv(x)
        return self.fc(h.view(h.shape[0], -1))


@pytest.fixture
def threads():
    n = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(n)


def test_portable_logits_are_the_same_floats_on_one_or_two_threads_and_close_to_legacy(threads):
    torch.manual_seed(0)
    models = [get_model("cnn", 10, 1), get_model("resnet8", 10, 1), Viewing()]
    for m in models[:2]:  # non-trivial BN statistics, as after training
        for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    models[0].train(), models[1].eval()
    images = torch.randint(0, 256, (1100, 1, 28, 28), dtype=torch.uint8)
    threads(1)
    one = eval_logits(models, images, _tf, 250, kernels="portable")
    fused_one = eval_logits(models, images, _tf, 250, kernels="fused")
    threads(2)
    two = eval_logits(models, images, _tf, 250, kernels="portable")
    assert one.shape == (3, 1100, 10)
    assert torch.equal(one, two)
    assert torch.equal(fused_one, eval_logits(models, images, _tf, 250, kernels="fused"))
    torch.testing.assert_close(fused_one, one, rtol=1e-5, atol=1e-5)  # folded BatchNorm: float rounding only
    assert not torch.equal(fused_one[:2], one[:2])  # (and it did fold: the floats moved)
    assert torch.equal(fused_one[2], one[2])  # Viewing has no BatchNorm and no pool: nothing to rewrite
    legacy = eval_logits(models, images, _tf, 250, kernels="legacy")
    assert torch.equal(legacy[0], predict_logits(models[0], images, _tf, 250))
    torch.testing.assert_close(one, legacy, rtol=1e-4, atol=1e-4)
    assert models[0].training and not models[1].training  # modes are the caller's; the copies were evaluated
    assert models[0].features[0].weight.is_contiguous()  # and no model was converted to channels_last


def test_a_feddf_run_is_the_same_on_one_core_or_two(tmp_path, fmnist_available):
    common = ["train", "--dataset", "fashion-mnist", "--arch", "cnn", "--aggregator", "feddf", "--distill-source",
              "noise", "--clients", "4", "--fraction", "0.5", "--rounds", "2", "--local-epochs", "1",
              "--train-limit", "1200", "--test-limit", "300", "--distill-steps", "12", "--eval-every", "4",
              "--alpha", "0.5", "--quiet"]
    rows, states = {}, {}
    for n in ("1", "2"):
        out = tmp_path / f"threads{n}"
        run_cli(*common, "--out", str(out), check=True, env={"OMP_NUM_THREADS": n})
        rows[n] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        states[n] = torch.load(out / "models" / "cnn.pt", weights_only=True)["state_dict"]
        assert json.loads((out / "config.json").read_text())["server_kernels"] == "fused"
    strip = lambda r: {k: v for k, v in r.items() if not k.endswith("seconds")}  # noqa: E731 - timings differ
    assert [strip(r) for r in rows["1"]] == [strip(r) for r in rows["2"]]
    assert all(r["distill_steps"]["cnn"] > 0 for r in rows["1"])  # the students did train
    assert all(torch.equal(states["1"][k], states["2"][k]) for k in states["1"])
    assert states["1"]["features.0.weight"].is_contiguous()  # saved in the layout every model loads


def test_old_run_folders_resume_with_legacy_server_kernels():
    now = dataclasses.asdict(TrainConfig(server_kernels="legacy").resolved())
    before = {k: v for k, v in now.items() if k != "server_kernels"}  # a config.json written before the option
    assert same_run(before, now) == ""
    assert "server_kernels" in same_run(before, {**now, "server_kernels": "portable"})
    portable = {**now, "server_kernels": "portable"}  # a run folder whose config records portable resumes only as portable
    assert "server_kernels" in same_run(portable, {**now, "server_kernels": "fused"})


def test_bad_server_kernels_is_one_line(tmp_path):
    p = run_cli("train", "--server-kernels", "fast", "--out", str(tmp_path / "x"))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "--server-kernels 'fast'" in p.stderr and "choose one of fused, portable, legacy" in p.stderr
    assert not (tmp_path / "x").exists()
    assert "--server-kernels" in run_cli("train", "--help", check=True).stdout


def test_fuse_evaluates_with_its_own_configs_kernels(tmp_path, fmnist_available, monkeypatch):
    # a caller may fuse one task under several configs (bench_round does): the round's cfg decides, not the task's
    from feddf.federated import evaluation
    from feddf.federated.aggregate import get_aggregator
    from feddf.federated.engines import train_clients
    from feddf.federated.fusion import fuse, sample_clients
    from feddf.federated.setup import load_task

    cfg = TrainConfig(dataset="fashion-mnist", arch="cnn", train_limit=900, test_limit=200, clients=3, fraction=1.0,
                      rounds=1, local_epochs=1, aggregator="feddf", distill_source="noise", distill_steps=4,
                      eval_every=2, progress=False, out=str(tmp_path / "run")).resolved()
    task = load_task(cfg, log=lambda s: None)
    server = {"cnn": task.initial_state("cnn")}
    ups = train_clients(cfg, task, 1, sample_clients(cfg, 1), server, "cpu")
    seen = []
    real = evaluation.eval_logits
    monkeypatch.setattr(evaluation, "eval_logits", lambda *a, **k: seen.append(a[5]) or real(*a, **k))
    for kernels in ("legacy", "portable", "fused"):
        seen.clear()
        fuse(1, dataclasses.replace(cfg, server_kernels=kernels), task, get_aggregator("feddf"), server, ups, "cpu")
        assert len(seen) >= 4 and set(seen) == {kernels}  # fedavg test, ensemble test, validations, student test


def test_the_batched_engines_test_logits_are_the_floats_fuse_computes(tmp_path, fmnist_available):
    # the batched engine computes each finished client's test pass on an idle core; fuse must get the same floats
    from feddf.federated.engines import train_clients
    from feddf.federated.fusion import sample_clients
    from feddf.federated.setup import load_task

    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = TrainConfig(dataset="fashion-mnist", arch="cnn", train_limit=900, test_limit=300, clients=3,
                          fraction=1.0, rounds=1, local_epochs=1, eval_batch_size=128, aggregator="fedavg",
                          progress=False, out=str(tmp_path / "run")).resolved()
        task = load_task(cfg, log=lambda s: None)
        ups = train_clients(cfg, task, 1, sample_clients(cfg, 1), {"cnn": task.initial_state("cnn")}, "cpu")
        assert all(u.test_logits is not None and u.test_logits[0] == "fused" for u in ups)
        fresh = task.test_logits([u.model for u in ups], "cpu", "fused")
        assert torch.equal(torch.stack([u.test_logits[1] for u in ups]), fresh)
        assert torch.equal(task.test_logits([u.model for u in ups], "cpu", "fused", [u.test_logits for u in ups]),
                           fresh)
        # logits of other kernels are not taken for these
        mixed = task.test_logits([u.model for u in ups], "cpu", "portable", [u.test_logits for u in ups])
        assert torch.equal(mixed, task.test_logits([u.model for u in ups], "cpu", "portable"))
        seq = train_clients(dataclasses.replace(cfg, client_engine="sequential"), task, 1, sample_clients(cfg, 1),
                            {"cnn": task.initial_state("cnn")}, "cpu")
        assert all(u.test_logits is None for u in seq)  # sequential: nothing idle, fuse computes them
    finally:
        torch.set_num_threads(n)
