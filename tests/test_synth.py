"""Server-side synthesis of the transfer set (feddf/federated/synth.py, pool.py): each loss term against a value
computed by hand, the generator's start, and real `feddf train` runs with a synth: source - deterministic, resumed
==, its pools written as caches that `feddf cache verify` and `feddf audit` read, bad settings refused in one line
with nothing written, and the same rounds on Flower's simulation engine."""
import json
import math
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli

ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TINY = ["--dataset", "fashion-mnist", "--arch", "cnn", "--clients", "3", "--fraction", "1", "--local-epochs", "1",
        "--train-limit", "300", "--test-limit", "200", "--distill-steps", "6", "--eval-every", "3",
        "--eval-batch-size", "200", "--augment", "none", "--synth-steps", "2", "--synth-batch-size", "8",
        "--distill-pool", "48", "--distill-batch-size", "16", "--quiet"]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def untimed(rows: list[dict]) -> list[dict]:
    """Rows without wall-clock figures (they differ between any two runs) or the pool's file name."""
    out = []
    for r in rows:
        r = {k: v for k, v in r.items() if not k.endswith("_seconds")}
        if "pool" in r:
            pool = {k: v for k, v in r["pool"].items() if k != "saved"}
            pool["synth"] = {k: v for k, v in pool["synth"].items() if not k.endswith("_s")}
            r["pool"] = pool
        out.append(r)
    return out


# ---- the loss terms ------------------------------------------------------------------------------------------
def test_cross_entropy_term_by_hand():
    from feddf.federated.synth import loss_ce

    logits, y = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    want = (-math.log(math.e ** 2 / (math.e ** 2 + 1)) - math.log(1 / (1 + math.e))) / 2
    assert loss_ce(logits, y).item() == pytest.approx(want, rel=1e-6)


def test_batchnorm_term_by_hand_and_its_hooks():
    from torch import nn

    from feddf.federated.synth import BNStats, loss_bn

    stats = [(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 4.0]))]
    assert loss_bn(stats).item() == pytest.approx(math.sqrt(5) + 3.0)  # ||(1, 2)|| + ||(0, -3)||
    bn = nn.BatchNorm2d(2).eval()
    hooks = BNStats(bn)
    x = torch.tensor([[[[1.0, 3.0]], [[0.0, 0.0]]], [[[1.0, 3.0]], [[2.0, 2.0]]]])  # (2, 2, 1, 2)
    bn(x)
    (mean, var, rm, rv), = hooks.take()
    hooks.close()
    assert mean.tolist() == [2.0, 1.0] and var.tolist() == [1.0, 1.0]  # per channel, biased variance
    assert rm.tolist() == [0.0, 0.0] and rv.tolist() == [1.0, 1.0] and not bn._forward_hooks


def test_adversarial_term_counts_only_samples_where_student_and_ensemble_agree():
    from feddf.federated.synth import loss_adv

    ens = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # agrees on sample 0 only
    p = torch.softmax(ens[0], 0)
    q = torch.softmax(student[0], 0)
    kl0 = float((p * (p / q).log()).sum())
    assert loss_adv(student, ens).item() == pytest.approx(-kl0 / 2, rel=1e-5)
    t = 2.0  # at temperature T: T^2 KL of the softened distributions
    p, q = torch.softmax(ens[0] / t, 0), torch.softmax(student[0] / t, 0)
    assert loss_adv(student, ens, t).item() == pytest.approx(-t * t * float((p * (p / q).log()).sum()) / 2, rel=1e-5)


def test_diversity_term_by_hand():
    from feddf.federated.synth import loss_div

    z = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    x = torch.tensor([[0.0, 0.0, 0.0], [3.0, 3.0, 3.0]])
    # pairs (0,1) and (1,0): |dx| mean 3, dz^2 mean 1 -> product 3; the diagonal contributes 0; mean over 4 pairs
    assert loss_div(z, x).item() == pytest.approx(math.exp(-6 / 4))


def test_unconditional_dcgan_starts_as_itself_and_scratch_is_conditional_at_once():
    from feddf.federated.synth import build_generator
    from feddf.generators import get_generator

    gen, meta = build_generator("dcgan-fashion-mnist", 1, 10, seed=0)
    base = get_generator("dcgan-fashion-mnist").module.eval()
    z = torch.randn(4, 100, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(gen.eval()(z, torch.tensor([0, 3, 5, 9])), base(z))  # zero embedding: the DCGAN itself
    assert meta["generator"] == "dcgan-fashion-mnist" and meta["weights_hash"].startswith("sha256:")
    scratch, _ = build_generator("scratch", 1, 10, seed=0)
    with torch.no_grad():
        a, b = scratch.eval()(z[:1], torch.tensor([0])), scratch(z[:1], torch.tensor([1]))
    assert not torch.equal(a, b) and a.shape == (1, 1, 32, 32)


def test_mixed_labels_by_hand_and_as_generator_input():
    import torch.nn.functional as F

    from feddf.federated.synth import CondGenerator, build_generator, loss_ce, mix_labels

    y = torch.tensor([0, 3, 5, 9, 2, 2, 7, 1])
    g = torch.Generator().manual_seed(0)
    assert torch.equal(mix_labels(y, 10, 0.0, g), F.one_hot(y, 10).float())
    assert torch.equal(torch.rand(1, generator=g), torch.rand(1, generator=torch.Generator().manual_seed(0)))
    soft = mix_labels(y, 10, 1.0, torch.Generator().manual_seed(1))  # every row mixes two classes
    assert torch.equal(soft.argmax(1), y) and torch.allclose(soft.sum(1), torch.ones(8))
    assert all(int((row > 0).sum()) == 2 and 0.5 <= float(row.max()) < 1 for row in soft)
    # cross-entropy against a mixture: -sum_k q_k log softmax(z)_k
    z, q = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.75, 0.25]])
    want = -(0.75 * math.log(math.e ** 2 / (math.e ** 2 + 1)) + 0.25 * math.log(1 / (math.e ** 2 + 1)))
    assert loss_ce(z, q).item() == pytest.approx(want, rel=1e-6)
    gen, _ = build_generator("scratch", 1, 10, seed=0)
    assert isinstance(gen, CondGenerator)
    zz = torch.randn(8, gen.nz, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():  # a one-hot row is the class itself; a mixture conditions on the weighted embedding
        assert torch.allclose(gen.eval()(zz, F.one_hot(y, 10).float()), gen(zz, y), atol=1e-6)
        want = gen.base(zz + soft @ gen.embed.weight)
        assert torch.allclose(gen(zz, soft), want, atol=1e-6)


def test_a_mixed_label_synth_run_keeps_the_labelled_class(tmp_path, fmnist_available):
    out = tmp_path / "run"
    run_cli("train", *TINY, "--distill-source", "synth:scratch", "--synth-mix", "0.5", "--rounds", "1",
            "--out", str(out), check=True, env=ENV)
    row, = metrics(out)
    assert row["pool"]["n"] == 48 and sum(row["pool"]["synth"]["labels"]) == 48
    assert json.loads((out / "config.json").read_text())["synth_mix"] == 0.5


# ---- real runs ------------------------------------------------------------------------------------------------
def test_synth_run_is_deterministic_resumes_exactly_and_its_pools_are_caches(tmp_path, fmnist_available):
    a, b, pools = tmp_path / "a", tmp_path / "b", tmp_path / "pools"
    args = [*TINY, "--distill-source", "synth:dcgan-fashion-mnist"]
    run_cli("train", *args, "--rounds", "2", "--out", str(a), "--save-pool", str(pools), check=True, env=ENV)
    run_cli("train", *args, "--rounds", "1", "--out", str(b), check=True, env=ENV)
    p = run_cli("train", *args, "--rounds", "2", "--out", str(b), "--resume", env=ENV)
    assert p.returncode == 0, p.stderr[-2000:]
    assert untimed(metrics(a)) == untimed(metrics(b))  # the generator's state came back from checkpoint.pt
    ca, cb = (torch.load(r / "checkpoint.pt", weights_only=True) for r in (a, b))
    assert all(torch.equal(v, cb["source"]["generator"][k]) for k, v in ca["source"]["generator"].items())
    for row in metrics(a):
        pool = row["pool"]
        assert pool["n"] == 48 and pool["from"] == "synth" and pool["synth"]["steps"] == 2
        assert sum(pool["synth"]["labels"]) == 48 and {"ce", "bn", "adv", "div", "agree"} <= set(pool["synth"]["loss"])
        assert pool["teacher_forwards"] == 3 * 48  # every pool image labelled once by each of the 3 teachers
        assert row["server_seconds"]["pool"] > 0
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["distill_pool"] == 48 and cfg["hashes"]["source"]["kind"] == "synth"
    assert cfg["hashes"]["source"]["name"] == "synth:dcgan-fashion-mnist"
    for r in (1, 2):
        cache = pools / f"round-{r:03d}.h5"
        v = run_cli("cache", "verify", str(cache), env=ENV)
        assert v.returncode == 0, v.stdout + v.stderr
        info = json.loads(run_cli("cache", "info", str(cache), "--json", check=True, env=ENV).stdout)
        assert info["n"] == 48 and info["channels"] == 1 and info["resolution"] == 28
    aud = run_cli("audit", str(pools / "round-002.h5"), "--labeler", str(a), "--no-fid", "--out",
                  str(tmp_path / "audit"), env=ENV)
    assert aud.returncode == 0, aud.stdout + aud.stderr
    assert (tmp_path / "audit" / "report.json").is_file()


def test_scratch_generator_learns_across_rounds_and_keeps_its_memory(tmp_path, fmnist_available):
    out, again = tmp_path / "run", tmp_path / "again"
    args = [*TINY, "--distill-source", "synth:scratch", "--synth-memory", "1"]
    run_cli("train", *args, "--rounds", "3", "--out", str(out), check=True, env=ENV)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["source"]["optimizer"]["state"]  # Adam moments: the generator took its steps
    # --synth-memory 1: from round 2 on the pool is the new 48 images plus the previous round's 48
    assert [(r["pool"]["n"], r["pool"]["synth"]["kept_rounds"]) for r in metrics(out)] == [(48, 0), (96, 1), (96, 1)]
    assert [len(x) for x in ckpt["source"]["memory"]["images"]] == [48]
    run_cli("train", *args, "--rounds", "2", "--out", str(again), check=True, env=ENV)
    run_cli("train", *args, "--rounds", "3", "--out", str(again), "--resume", check=True, env=ENV)
    assert untimed(metrics(again)) == untimed(metrics(out))  # the kept pool came back from checkpoint.pt
    assert json.loads((out / "config.json").read_text())["hashes"]["source"]["generator"] == "scratch"


def test_a_pool_drawn_from_a_cache_each_round(tmp_path, fmnist_available):
    cache, out = tmp_path / "c.h5", tmp_path / "run"
    run_cli("gen", "--generator", "dcgan-fashion-mnist", "--n", "200", "--out", str(cache), check=True, env=ENV)
    run_cli("train", *TINY, "--distill-source", str(cache), "--distill-pool", "64", "--rounds", "2", "--out",
            str(out), check=True, env=ENV)
    rows = metrics(out)
    assert [r["pool"]["n"] for r in rows] == [64, 64] and rows[0]["pool"]["of"] == 200
    assert all(r["pool"]["teacher_forwards"] == 3 * 64 for r in rows)  # 6 steps x 16 >= 64: all seen once


@pytest.mark.parametrize("flags, message", [
    (["--distill-source", "synth:scratch", "--synth-bn", "-1"], "--synth-bn -1"),
    (["--distill-source", "synth:scratch", "--synth-ce", "nan"], "--synth-ce nan"),
    (["--distill-source", "synth:scratch", "--distill-pool", "0"], "--distill-pool 0"),
    (["--distill-source", "synth:scratch", "--synth-labels", "zipf"], "--synth-labels 'zipf'"),
    (["--distill-source", "synth:biggan-deep-128"], "adapts a DCGAN generator"),
    (["--distill-source", "synth:dcgan", "--synth-checkpoint", "CKPT3"], "makes 3-channel images"),
    (["--distill-source", "synth:"], "name the generator"),
    (["--distill-source", "synth:scratch", "--synth-memory", "-1"], "--synth-memory -1"),
    (["--distill-source", "synth:scratch", "--synth-mix", "1.5"], "--synth-mix 1.5"),
])
def test_bad_synthesis_settings_are_one_line_and_write_nothing(tmp_path, flags, message):
    from tests.conftest import random_dcgan_checkpoint

    ckpt = random_dcgan_checkpoint(tmp_path / "rgb.pth", nc=3)
    out = tmp_path / "run"
    flags = [str(ckpt) if f == "CKPT3" else f for f in flags]
    p = run_cli("train", *TINY, "--rounds", "1", *flags, "--out", str(out), env=ENV)
    assert p.returncode == 1 and message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_flower_simulation_with_synthesis_equals_feddf_train(tmp_path, fmnist_available):
    pytest.importorskip("flwr")
    from tests.test_flower import leftovers

    args = [*TINY, "--clients", "2", "--distill-source", "synth:scratch", "--rounds", "2"]
    sim, ref = tmp_path / "sim", tmp_path / "ref"
    p = run_cli("flower", "simulate", *args, "--out", str(sim), "--state-dir", str(tmp_path / "state"), env=ENV,
                timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    run_cli("train", *args, "--out", str(ref), check=True, env=ENV)
    flower_only = {"replied", "missing", "failed", "node_seconds", "received"}
    rows = [{k: v for k, v in r.items() if k not in flower_only} for r in untimed(metrics(sim))]
    assert rows == untimed(metrics(ref))
    ca, cb = (torch.load(r / "checkpoint.pt", weights_only=True) for r in (sim, ref))
    assert all(torch.equal(v, cb["source"]["generator"][k]) for k, v in ca["source"]["generator"].items())
    assert not leftovers(json.loads((tmp_path / "state" / "processes.json").read_text()).values())


def test_a_run_that_sends_label_counts_says_so_once_and_records_it(tmp_path, fmnist_available):
    base = [*TINY, "--distill-source", "noise", "--rounds", "1"]
    p = run_cli("train", *base, "--local-loss", "ce", "--logit-adjust", "1", "--out", str(tmp_path / "counts"),
                check=True, env=ENV)
    assert p.stdout.count("label counts: every client sends") == 1
    assert json.loads((tmp_path / "counts" / "config.json").read_text())["sends"]["label_counts"] is True
    q = run_cli("train", *base, "--out", str(tmp_path / "private"), check=True, env=ENV)  # the defaults
    assert "label counts:" not in q.stdout
    cfg = json.loads((tmp_path / "private" / "config.json").read_text())
    assert cfg["sends"] == {"model": True, "example_count": True, "label_counts": False}
    assert cfg["local_loss"] == "balanced-softmax" and cfg["logit_adjust"] == 0.0
    assert all(r["teachers"] == 3 for r in metrics(tmp_path / "private"))
