"""The transfer-set levers: gen-time filtering (--labeler --min-confidence --balance), per-round selection by
the ensemble (--distill-select), mixup and temperature of transfer batches, class-conditional DCGAN checkpoints."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from feddf.cache import format as fmt
from feddf.cli import main
from feddf.generators.select import keep_draws
from tests.conftest import random_dcgan_checkpoint, run_cli


# ---- gen-time filtering ----------------------------------------------------------------------------------------
def test_keep_draws_rule_and_counts():
    pred = np.array([0, 0, 1, 0, 1, 2, 0, 2])
    conf = np.array([.9, .5, .95, .99, .7, .85, .9, .3])
    keep, st = keep_draws(pred, conf, n=4, k=3, min_confidence=0.8, balance=True)
    # cap ceil(4/3) = 2: draws 0, 3 (class 0), 2 (class 1), 5 (class 2); draw 1 and 4 are unconfident; stop at 4 kept
    assert keep.tolist() == [0, 2, 3, 5]
    assert st["kept_per_class"].tolist() == [2, 1, 1] and st["low"].tolist() == [1, 1, 0]
    assert st["drawn"] == 6 and st["capped"].tolist() == [0, 0, 0]
    # continued in a second call (the state carries): over the cap now for class 0
    keep, st = keep_draws(np.array([0, 1]), np.array([.9, .9]), n=5, k=3, min_confidence=0.8, balance=True, state=st)
    assert keep.tolist() == [1] and st["capped"].tolist() == [1, 0, 0] and st["spare"] == [(6, 0)]
    # no filter at all: everything kept in order
    keep, _ = keep_draws(pred, conf, n=8, k=3, min_confidence=None, balance=False)
    assert keep.tolist() == list(range(8))


@pytest.fixture(scope="module")
def gen_setup(tmp_path_factory):
    from feddf.models import get_model, save_classifier

    d = tmp_path_factory.mktemp("gen")
    ckpt = random_dcgan_checkpoint(d / "netG.pth", nc=1)
    # a random cnn predicts one class for everything: re-centre its last layer on the generator's features so that
    # its predictions spread over the 4 classes with a range of confidences (a stand-in for a trained labeler)
    _gen(ckpt, d / "calib.h5", 480)
    with h5py.File(d / "calib.h5", "r", swmr=True) as f:
        x = torch.from_numpy(f[fmt.IMAGES][:]).float().div(255).sub(0.5).div(0.5)
    torch.manual_seed(0)
    model = get_model("cnn", 4, 1).eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    feats = []
    hook = last.register_forward_hook(lambda mod, inp, out: feats.append(inp[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    mu, sd = feats[0].mean(0), feats[0].std(0) + 1e-6
    with torch.no_grad():
        w = torch.randn(4, mu.numel()) / sd / mu.numel() ** 0.5 * 3
        last.weight.copy_(w)
        last.bias.copy_(-(w @ mu))
    save_classifier(d / "labeler.pt", model, arch="cnn", num_classes=4, in_channels=1, norm="bn", mean=[0.5],
                    std=[0.5], resolution=16, class_names=["a", "b", "c", "d"])
    return ckpt, d / "labeler.pt"


def _gen(ckpt, out, n, *extra):
    r = CliRunner().invoke(main, ["gen", "--generator", "dcgan", "--checkpoint", str(ckpt), "--n", str(n),
                                  "--resolution", "16", "--out", str(out), "--quiet", "--json", *extra],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_gen_filter_keeps_confident_balanced_draws_and_records_them(tmp_path, gen_setup, monkeypatch):
    ckpt, labeler = gen_setup
    n = 120
    filt = ["--labeler", str(labeler), "--min-confidence", "0.6", "--balance", "--chunk-images", "16"]
    _gen(ckpt, tmp_path / "f.h5", n, *filt, "--batch-size", "64")
    with h5py.File(tmp_path / "f.h5", "r", swmr=True) as f:
        sel = json.loads(f.attrs["selection"])
        images, pred, conf = f[fmt.IMAGES][:], f[fmt.LABELER_PRED][:], f[fmt.LABELER_CONF][:]
        counts = f[fmt.LABELER_COUNTS][:]
    assert sel["kept"] == n and sum(sel["kept_per_class"]) == n and sel["drawn"] > n
    assert sel["drawn"] == sum(sel["drawn_per_class"])
    assert [d - k - lo - c for d, k, lo, c in zip(sel["drawn_per_class"], sel["kept_per_class"],
                                                  sel["dropped_low_confidence_per_class"],
                                                  sel["dropped_over_cap_per_class"])] == [0] * 4
    assert (conf >= 0.6).all() and counts.tolist() == sel["kept_per_class"] == np.bincount(pred, minlength=4).tolist()
    if not sel["refilled_over_cap"]:
        assert max(sel["kept_per_class"]) <= sel["cap"] == 30
    # the kept images are exactly the draws the rule names: rebuild the rule from an unfiltered cache of all draws
    _gen(ckpt, tmp_path / "all.h5", sel["drawn"], "--labeler", str(labeler))
    with h5py.File(tmp_path / "all.h5", "r", swmr=True) as f:
        all_images, all_pred, all_conf = f[fmt.IMAGES][:], f[fmt.LABELER_PRED][:], f[fmt.LABELER_CONF][:]
    keep, st = keep_draws(all_pred, all_conf, n=n, k=4, min_confidence=0.6, balance=True)
    if not sel["refilled_over_cap"]:
        np.testing.assert_array_equal(images, all_images[keep])
        assert st["low"].tolist() == sel["dropped_low_confidence_per_class"]

    # interrupted after two chunks (an error inside the writer), then the same command resumes: identical cache,
    # although the batch size differs (the kept set depends on seed + labeler + settings only)
    from feddf.cache.writer import CacheWriter

    calls = {"n": 0}
    orig = CacheWriter.append

    def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 4:
            raise RuntimeError("simulated crash")
        return orig(self, *a, **k)

    monkeypatch.setattr(CacheWriter, "append", failing)
    r = CliRunner().invoke(main, ["gen", "--generator", "dcgan", "--checkpoint", str(ckpt), "--n", str(n),
                                  "--resolution", "16", "--out", str(tmp_path / "r.h5"), "--quiet", *filt,
                                  "--batch-size", "8"])
    assert r.exit_code != 0
    monkeypatch.setattr(CacheWriter, "append", orig)
    with h5py.File(tmp_path / "r.h5", "r", swmr=True) as f:
        assert 0 < int(f[fmt.COMMITTED][()]) < n
    s = _gen(ckpt, tmp_path / "r.h5", n, *filt, "--batch-size", "8")
    assert s["resumed_from"] > 0 and s["selection"]["kept"] == n
    with h5py.File(tmp_path / "r.h5", "r", swmr=True) as f:
        np.testing.assert_array_equal(f[fmt.IMAGES][:], images)
        np.testing.assert_array_equal(f[fmt.LABELER_PRED][:], pred)


def test_gen_filter_bad_input(tmp_path, gen_setup):
    ckpt, labeler = gen_setup
    base = ["gen", "--generator", "dcgan", "--checkpoint", str(ckpt), "--n", "50", "--resolution", "16", "--quiet"]
    for extra, needle in ((["--balance"], "--labeler"), (["--labeler", str(labeler), "--min-confidence", "1.5"],
                                                         "--min-confidence"),
                          (["--labeler", str(labeler), "--balance", "--oversample", "0.5"], "--oversample"),
                          (["--labeler", str(labeler), "--min-confidence", "0.99", "--oversample", "1"],
                           "raise --oversample")):
        r = CliRunner().invoke(main, [*base, *extra, "--out", str(tmp_path / "x.h5")])
        assert r.exit_code == 1 and needle in r.output and "Traceback" not in r.output, r.output


# ---- per-round selection, mixup, temperature -------------------------------------------------------------------
class _Pool:
    """A finite in-memory source like CacheSource with a pool."""

    def __init__(self, pool):
        self.pool, self.n = pool, len(pool)

    def batches(self, batch_size, seed):
        from feddf.federated.sources import _pool_batches

        yield from _pool_batches(self.pool, batch_size, seed)


def _stream(select, fraction=0.25, mixup=0.0, seed=3, cache=None, source=None):
    from feddf.cache.augment import BatchTransform
    from feddf.federated.transfer import TransferStream

    torch.manual_seed(0)
    pool = torch.randint(0, 256, (200, 1, 8, 8), dtype=torch.uint8)
    tf = BatchTransform(channels=1, resolution=8, mean=(0.5,), std=(0.5,))
    return TransferStream(source or _Pool(pool), tf, tf, batch_size=16, seed=seed, device="cpu", num_classes=3,
                          select=select, fraction=fraction, mixup_alpha=mixup, cache=cache), pool, tf


def _models(n=3):
    torch.manual_seed(1)
    return [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)) for _ in range(n)]


def test_low_entropy_and_hard_selection_are_deterministic_and_right():
    from feddf.federated.distill import TargetCache
    from feddf.federated.teachers import TeacherEnsemble, ensemble_target
    from feddf.federated.transfer import entropy

    ens = TeacherEnsemble(_models(), fold_bn=False, channels_last=False)
    cache = TargetCache(200, 3)
    stream, pool, tf = _stream("low-entropy", cache=cache)
    batches = [b for _, b in zip(range(8), stream.bind(ens, {}))]
    ent = entropy(ensemble_target(ens.logits(tf(pool)), "avg-logits", 1.0)[0])
    expect = torch.sort(torch.argsort(ent, stable=True)[:50]).values
    assert stream.kept.tolist() == expect.tolist()  # the 50 most confident of 200
    ids = torch.cat([i for i, _ in batches])
    assert set(ids.tolist()) == set(expect.tolist())  # 8 x 16 = 128 draws: 2.56 passes over exactly the kept ids
    assert bool(cache.filled[expect].all()) and int(cache.filled.sum()) == 200  # the scoring pass filled all targets
    again, _, _ = _stream("low-entropy", cache=TargetCache(200, 3))
    for (i1, x1), (i2, x2) in zip(batches, again.bind(ens, {})):
        assert torch.equal(i1, i2) and torch.equal(x1, x2)  # same round seed + teachers -> same batches

    student = _models(1)[0]
    hard, _, _ = _stream("hard")
    next(hard.bind(ens, {"s": student}))
    p = ensemble_target(ens.logits(tf(pool)), "avg-logits", 1.0)[0]
    kl = torch.nn.functional.kl_div(torch.log_softmax(student(tf(pool)), 1), p, reduction="none").sum(1)
    assert hard.kept.tolist() == torch.sort(torch.argsort(-kl.detach(), stable=True)[:50]).values.tolist()
    assert student.training  # put back as it was


def test_window_selection_for_endless_sources_and_mixup():
    from feddf.federated.sources import NoiseSource
    from feddf.federated.teachers import TeacherEnsemble
    from feddf.federated.transfer import mixup

    ens = TeacherEnsemble(_models(), fold_bn=False, channels_last=False)
    s1, _, _ = _stream("low-entropy", fraction=0.5, source=NoiseSource(1, 8))
    s2, _, _ = _stream("low-entropy", fraction=0.5, source=NoiseSource(1, 8))
    b1 = [x for _, (_, x) in zip(range(3), s1.bind(ens, {}))]
    b2 = [x for _, (_, x) in zip(range(3), s2.bind(ens, {}))]
    assert all(x.shape == (16, 1, 8, 8) and torch.equal(x, y) for x, y in zip(b1, b2))
    # mixup: convex combinations of pairs in the batch, per-sample lam in [0, 1], seeded; alpha 0 = identity
    x = torch.randn(32, 1, 4, 4)
    m1, m2 = mixup(x, 1.0, np.random.default_rng(0)), mixup(x, 1.0, np.random.default_rng(0))
    assert torch.equal(m1, m2) and not torch.equal(m1, x)
    assert torch.equal(mixup(x, 0.0, np.random.default_rng(0)), x)
    assert (m1.amin((1, 2, 3)) >= x.amin() - 1e-6).all() and (m1.amax((1, 2, 3)) <= x.amax() + 1e-6).all()
    mixed, _, _ = _stream("none", mixup=1.0)
    ids, xb = next(iter(mixed))
    assert ids is None and xb.shape == (16, 1, 8, 8)  # mixed samples are new samples: no target reuse


def test_temperature_softens_the_target():
    from feddf.federated.teachers import distill_loss, ensemble_target
    from feddf.federated.transfer import entropy

    logits = torch.randn(4, 16, 10) * 3
    p1, _ = ensemble_target(logits, "avg-logits", 1.0)
    p4, _ = ensemble_target(logits, "avg-logits", 4.0)
    assert (entropy(p4) > entropy(p1)).all()
    s = torch.randn(16, 10)
    assert distill_loss(s * 4, p4, torch.zeros(16), 4.0) == pytest.approx(
        float(distill_loss(s, p4, torch.zeros(16), 1.0)), rel=1e-5)  # T scales the student's logits too


def test_train_with_selection_and_mixup_resumes_exactly(tmp_path, fmnist_available):
    base = ["train", "--arch", "cnn", "--distill-source", "noise", "--clients", "4", "--local-epochs", "1",
            "--train-limit", "400", "--test-limit", "200", "--distill-steps", "12", "--eval-every", "4", "-q",
            "--distill-select", "low-entropy", "--select-fraction", "0.5", "--distill-mixup", "0.5",
            "--temperature", "4", "--seed", "1"]
    run_cli(*base, "--rounds", "2", "--out", str(tmp_path / "full"), check=True)
    run_cli(*base, "--rounds", "1", "--out", str(tmp_path / "part"), check=True)
    run_cli(*base, "--rounds", "2", "--out", str(tmp_path / "part"), "--resume", check=True)

    def rows(p):
        out = [json.loads(line) for line in (p / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in out]

    assert rows(tmp_path / "full") == rows(tmp_path / "part")
    cfg = json.loads((tmp_path / "full" / "config.json").read_text())
    assert cfg["distill_select"] == "low-entropy" and cfg["distill_mixup"] == 0.5 and cfg["select_fraction"] == 0.5
    assert cfg["distill_bn"] == "running"  # the default, recorded
    from feddf.errors import FeddfError
    from feddf.federated.config import TrainConfig

    for bad, needle in (({"select_fraction": 0.0}, "--select-fraction"), ({"distill_select": "easy"}, "--distill-"
                                                                                                       "select"),
                        ({"distill_mixup": -1.0}, "--distill-mixup")):
        with pytest.raises(FeddfError, match=needle):
            TrainConfig(**bad).resolved()


# ---- class-conditional DCGAN ------------------------------------------------------------------------------------
def test_conditional_dcgan_trains_and_loads_through_gen(tmp_path, fmnist_available):
    def cli(*args):
        r = CliRunner().invoke(main, list(args), catch_exceptions=False)
        assert r.exit_code == 0, r.output

    cli("gan-train", "--conditional", "--data", "fashion-mnist:test[:5000]", "--limit", "128", "--epochs", "1",
        "--ngf", "8", "--ndf", "8", "--nz", "16", "--out", str(tmp_path / "g"), "--quiet")
    ckpt = tmp_path / "g" / "netG_epoch_1.pth"
    state = torch.load(ckpt, weights_only=True)
    assert int(state["num_classes"]) == 10 and state["main.0.weight"].shape[0] == 16 + 10
    cli("gen", "--generator", "dcgan", "--checkpoint", str(ckpt), "--n", "60", "--resolution", "28", "--classes",
        "0,3,7", "--out", str(tmp_path / "c.h5"), "--quiet")
    with h5py.File(tmp_path / "c.h5", "r", swmr=True) as f:
        labels = f[fmt.LABELS][:]
        assert sorted(set(labels.tolist())) == [0, 3, 7] and np.bincount(labels)[[0, 3, 7]].tolist() == [20] * 3
        assert json.loads(f.attrs["label_names"])[3] == "Dress"  # names from the gan-train run's config.json
    from feddf.generators import get_generator

    g = get_generator("dcgan", checkpoint=str(ckpt))
    z = torch.randn(2, 16).repeat(2, 1)
    with torch.no_grad():
        x = g.forward(z, torch.tensor([0, 0, 5, 5]), None)
    assert g.num_classes == 10 and x.shape == (4, 1, 32, 32) and not torch.allclose(x[:2], x[2:])
    cli("gan-train", "--conditional", "--data", str(tmp_path / "c.h5"), "--epochs", "1", "--batch-size", "16",
        "--ngf", "8", "--ndf", "8", "--out", str(tmp_path / "g2"), "--quiet")  # a labelled cache is labelled data too


def test_help_lists_the_new_options():
    for cmd, opts in ((["gen"], ["--min-confidence", "--balance", "--oversample"]),
                      (["train"], ["--distill-select", "--select-fraction", "--distill-mixup", "--distill-bn",
                                  "--ensemble-fedavg", "--logit-adjust"]),
                      (["gan-train"], ["--conditional"])):
        r = CliRunner().invoke(main, [*cmd, "--help"])
        assert r.exit_code == 0 and all(o in r.output for o in opts), r.output


def test_runs_from_before_the_new_options_still_resume():
    import dataclasses

    from feddf.federated.config import TrainConfig
    from feddf.federated.setup import same_run

    now = dataclasses.asdict(TrainConfig(distill_source="noise").resolved())
    old = {k: v for k, v in now.items() if k not in ("distill_mixup", "distill_select", "select_fraction")}
    assert same_run(old, now) == ""  # a saved config without the new keys used their defaults
    assert "distill_select" in same_run(old, {**now, "distill_select": "hard"})


def test_distill_bn_option_default_and_old_runs():
    """--distill-bn: default running, recorded in config.json; a bad value gets one line; a run folder from before
    the option (students in train mode) resumes only with --distill-bn train, and the refusal names the key."""
    import dataclasses

    from feddf.federated.config import TrainConfig
    from feddf.federated.setup import same_run

    now = dataclasses.asdict(TrainConfig(distill_source="noise").resolved())
    assert now["distill_bn"] == "running"
    old = {k: v for k, v in now.items() if k != "distill_bn"}
    assert "distill_bn: 'train' -> 'running'" in same_run(old, now)
    assert same_run(old, {**now, "distill_bn": "train"}) == ""
    r = CliRunner().invoke(main, ["train", "--distill-bn", "frozen", "--distill-source", "noise"])
    assert r.exit_code != 0 and "distill-bn" in r.output and "train, running" in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert "--distill-bn" in CliRunner().invoke(main, ["train", "--help"]).output


def test_logit_adjust_option_default_and_old_runs():
    """--logit-adjust: default 0 (the clients keep their label counts), recorded in config.json; a negative or
    non-finite value gets one line; a run folder from before the option (the plain ensemble) resumes with the
    default, and with --logit-adjust 1 the refusal names the key."""
    import dataclasses

    from feddf.federated.config import TrainConfig
    from feddf.federated.setup import same_run

    now = dataclasses.asdict(TrainConfig(distill_source="noise").resolved())
    assert now["logit_adjust"] == 0.0
    old = {k: v for k, v in now.items() if k != "logit_adjust"}
    assert same_run(old, now) == ""
    assert "logit_adjust: 0.0 -> 1.0" in same_run(old, {**now, "logit_adjust": 1.0})
    for bad, fix in (("-1", "0 = the paper"), ("nan", "finite")):
        r = CliRunner().invoke(main, ["train", "--logit-adjust", bad, "--distill-source", "noise"])
        assert r.exit_code == 1 and f"--logit-adjust {bad}" in r.output and fix in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1, r.output
    assert "--logit-adjust" in CliRunner().invoke(main, ["train", "--help"]).output
