"""FedDF server distillation on tensors and tiny models: ensemble maths, fast teacher paths, KL reduction, early
stopping, best-on-validation, target reuse, and heterogeneous prototypes that beat their FedAvg start."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from feddf.data.synthetic import make
from feddf.errors import FeddfError
from feddf.federated.aggregate import weighted_average
from feddf.federated.client import LocalSpec, accuracy, local_train, predict_logits
from feddf.federated.distill import DistillSpec, TargetCache, distill, prefetched
from feddf.federated.partition import partition
from feddf.federated.sources import _pool_batches
from feddf.federated.teachers import TeacherEnsemble, distill_loss, ensemble_scores, ensemble_target
from feddf.models import get_model

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap fallback of adaptive pooling


def _models(arch, n, seed=0, c=1, k=10):
    torch.manual_seed(seed)
    return [get_model(arch, k, c).eval() for _ in range(n)]


def test_ensemble_rules_match_their_definitions():
    torch.manual_seed(0)
    z = torch.randn(3, 5, 4)  # (teachers, batch, classes)
    s = torch.randn(5, 4, requires_grad=True)
    t = 2.0
    p, c = ensemble_target(z, "avg-logits", t)
    torch.testing.assert_close(p, F.softmax(z.mean(0) / t, 1))
    assert torch.all(c == 0)
    p, c = ensemble_target(z, "avg-probs", t)
    torch.testing.assert_close(p, F.softmax(z / t, 2).mean(0))
    # avg-losses: the mean of per-teacher KLs, in value and in gradient
    p, c = ensemble_target(z, "avg-losses", t)
    direct = sum(F.kl_div(F.log_softmax(s / t, 1), F.softmax(zi / t, 1), reduction="batchmean") for zi in z) / 3
    ours = distill_loss(s, p, c, t)
    torch.testing.assert_close(ours, direct)
    g1, = torch.autograd.grad(direct, s)
    g2, = torch.autograd.grad(ours, s)
    torch.testing.assert_close(g1, g2)
    assert torch.equal(ensemble_scores(z, "avg-logits").argmax(1), z.mean(0).argmax(1))
    with pytest.raises(FeddfError, match="--ensemble"):
        ensemble_target(z, "median", 1.0)


@pytest.mark.parametrize("arch", ["cnn", "resnet8"])
def test_fast_teacher_paths_equal_the_plain_loop(arch):
    teachers = _models(arch, 3)
    for m in teachers:  # non-trivial BN statistics, so folding has something to fold
        m.train()(torch.randn(16, 1, 28, 28) * 2 + 1)
        m.eval()
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        ref = torch.stack([m(x) for m in teachers])
    fast = TeacherEnsemble(teachers)  # BN folded + channels_last + inference_mode
    torch.testing.assert_close(fast.logits(x), ref, rtol=1e-4, atol=1e-4)
    vm = TeacherEnsemble(teachers, batched=True)  # one vmapped call over the stacked weights
    torch.testing.assert_close(vm.logits(x), ref, rtol=1e-4, atol=1e-4)
    bf = TeacherEnsemble(teachers, precision="bf16")
    assert (ensemble_scores(bf.logits(x), "avg-logits").argmax(1) == ref.mean(0).argmax(1)).float().mean() >= 0.75
    p, _ = fast.target(x)
    torch.testing.assert_close(p, F.softmax(ref.mean(0), 1), rtol=1e-4, atol=1e-5)
    assert not p.is_inference()  # usable in the student's backward
    with pytest.raises(FeddfError, match="no teachers"):
        TeacherEnsemble([])


def test_auto_batching_stacks_small_architectures_only(monkeypatch):
    from feddf.federated import teachers as tmod

    small, big = _models("resnet8", 3), _models("cnn", 2)
    n_small = sum(p.numel() for p in small[0].parameters())
    n_big = sum(p.numel() for p in big[0].parameters())
    assert n_small < n_big
    monkeypatch.setattr(tmod, "VMAP_MAX_PARAMS", (n_small + n_big) // 2)
    mixed = [small[0], big[0], small[1], big[1], small[2]]
    ens = TeacherEnsemble(mixed, batched="auto")
    assert len(ens._fns) == 3  # one vmapped group of the 3 small nets, the 2 big ones each on their own
    assert len(TeacherEnsemble(mixed, batched=True)._fns) == 2 and len(TeacherEnsemble(mixed)._fns) == 5
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        ref = torch.stack([m.eval()(x) for m in mixed])
    torch.testing.assert_close(ens.logits(x), ref, rtol=1e-4, atol=1e-4)  # still in the original teacher order


def _batches(n=40, b=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(None, torch.randn(b, 1, 16, 16, generator=g)) for _ in range(n)]


def _kl_to_ensemble(student, ens, xs):
    student.eval()
    with torch.no_grad():
        return float(sum(distill_loss(student(x), *ens.target(x), 1.0) for x in xs) / len(xs))


def test_distillation_lowers_kl_to_the_ensemble():
    ens = TeacherEnsemble(_models("cnn", 3, seed=1))
    student = _models("cnn", 1, seed=2)[0]
    held_out = [x for _, x in _batches(3, seed=99)]
    before = _kl_to_ensemble(student, ens, held_out)
    rising = iter(range(1000))  # validation always improves: no early stop, the last weights are the best
    res = distill({"cnn": student}, ens, _batches(60), lambda m: next(rising) / 1000,
                  DistillSpec(steps=60, eval_every=20, patience=1000, lr=3e-3))["cnn"]
    after = _kl_to_ensemble(student, ens, held_out)
    assert res.steps == 60 and res.best_step == 60 and not res.stopped_early
    assert after < 0.7 * before, (before, after)


def test_early_stopping_and_the_fedavg_start_kept_when_nothing_improves():
    ens = TeacherEnsemble(_models("cnn", 2, seed=1))
    student = _models("cnn", 1, seed=2)[0]
    start = copy.deepcopy(student.state_dict())
    res = distill({"cnn": student}, ens, _batches(100), lambda m: 0.5,
                  DistillSpec(steps=100, eval_every=10, patience=30))["cnn"]
    assert res.stopped_early and res.steps == 30 and res.best_step == 0
    assert [h["step"] for h in res.history] == [10, 20, 30]
    assert all(torch.equal(v, start[k]) for k, v in student.state_dict().items())


def test_best_on_validation_weights_are_kept():
    ens = TeacherEnsemble(_models("cnn", 2, seed=1))
    student = _models("cnn", 1, seed=2)[0]
    scores = iter([0.1, 0.3, 0.6, 0.2, 0.2, 0.2])  # init, then steps 10..50: the best is step 20
    snaps = {}

    def validate(m):
        v = next(scores)
        snaps[v] = copy.deepcopy(m.state_dict())
        return v

    res = distill({"cnn": student}, ens, _batches(50), validate,
                  DistillSpec(steps=50, eval_every=10, patience=1000))["cnn"]
    assert res.best_step == 20 and res.best_val == 0.6 and res.steps == 50
    assert all(torch.equal(v, snaps[0.6][k]) for k, v in student.state_dict().items())


def test_target_cache_and_prefetch_do_not_change_the_result():
    pool = torch.randint(0, 256, (96, 1, 16, 16), dtype=torch.uint8)
    to_x = lambda u8: (u8.float() / 255 - 0.5) / 0.25  # noqa: E731

    def run(cache, prefetch):
        ens = TeacherEnsemble(_models("cnn", 2, seed=1))
        student = _models("cnn", 1, seed=2)[0]
        batches = ((ids if cache else None, to_x(u8)) for ids, u8 in _pool_batches(pool, 32, seed=5))
        c = TargetCache(len(pool), 10) if cache else None
        distill({"cnn": student}, ens, batches, lambda m: 0.0, DistillSpec(steps=12, eval_every=100,
                patience=1000, prefetch=prefetch), c)
        return student.state_dict(), c

    ref, _ = run(False, 0)
    got, c = run(True, 2)
    assert c.misses == 96 and c.hits == 12 * 32 - 96  # every sample's target computed exactly once
    assert all(torch.allclose(v.float(), ref[k].float(), atol=1e-6) for k, v in got.items())


def test_prefetch_hands_producer_errors_to_the_consumer():
    def bad():
        yield 1
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        list(prefetched(bad(), 2))
    assert list(prefetched(iter(range(5)), 2)) == [0, 1, 2, 3, 4]


def test_prefetch_runs_ahead_through_the_step0_validation_and_stops_on_close():
    """The teachers' thread starts before the step-0 validation and fills up to `prefetch` batches during it."""
    import threading
    read = []
    deep = threading.Event()

    def batches():
        for i in range(40):
            read.append(i)
            if len(read) >= 6:
                deep.set()
            yield None, torch.randn(4, 1, 16, 16)

    def validate(m):  # the step-0 validation waits (at most 10 s) until the producer is 6 batches in
        if not deep.is_set():
            deep.wait(10)
        return 0.0
    ens = TeacherEnsemble(_models("cnn", 1, seed=1))
    distill({"cnn": _models("cnn", 1, seed=2)[0]}, ens, batches(), validate,
            DistillSpec(steps=30, eval_every=100, patience=1000, prefetch=8))
    assert deep.is_set()  # 6 batches were read before step 1 could be taken
    assert len(read) == 30  # and never more than the step budget

    never = prefetched(iter(range(1000)), 2)  # closed without being read: the thread ends
    never.close()
    assert not never.thread.is_alive()


def test_heterogeneous_prototypes_each_beat_their_fedavg_start():
    """Two architectures, two non-iid clients each; every prototype learns from all four teachers."""
    from types import SimpleNamespace

    from feddf.cache.augment import BatchTransform

    xs, ys = make(1200, seed=11, size=32)
    vx, vy = make(400, seed=12, size=32)
    ux, _ = make(1024, seed=13, size=32)  # unlabelled transfer set
    xs, ys, vx, vy, ux = map(torch.from_numpy, (xs, ys, vx, vy, ux))
    info = SimpleNamespace(channels=3, size=32, mean=(0.5,) * 3, std=(0.18,) * 3)
    tf = BatchTransform(3, 32, info.mean, info.std, "none")
    parts = partition("dirichlet", ys.numpy(), 4, 0.3, seed=0)
    archs = ["cnn", "resnet8", "cnn", "resnet8"]
    torch.manual_seed(0)
    init = {a: get_model(a, 10, 3).state_dict() for a in ("cnn", "resnet8")}
    clients = []
    for k, a in enumerate(archs):
        m = get_model(a, 10, 3)
        m.load_state_dict(init[a])
        idx = torch.from_numpy(parts[k])
        local_train(m, xs[idx], ys[idx], LocalSpec(epochs=6, lr=0.05, batch_size=32, augment="none"), tf,
                    torch.Generator().manual_seed(k))
        clients.append((a, m, len(idx)))
    students = {}
    for a in ("cnn", "resnet8"):
        mine = [(m, n) for arch, m, n in clients if arch == a]
        students[a] = get_model(a, 10, 3)
        students[a].load_state_dict(weighted_average([m.state_dict() for m, _ in mine], [n for _, n in mine]))
    start_acc = {a: accuracy(predict_logits(s, vx, tf), vy) for a, s in students.items()}
    ens = TeacherEnsemble([m for _, m, _ in clients])
    # bf16 teachers (the CPU default where native) keep the trained ensemble's predictions
    vxf = tf(vx)
    acc32 = accuracy(ensemble_scores(ens.logits(vxf), "avg-logits"), vy)
    acc16 = accuracy(ensemble_scores(TeacherEnsemble([m for _, m, _ in clients], precision="bf16").logits(vxf),
                                     "avg-logits"), vy)
    assert abs(acc16 - acc32) <= 0.01, (acc32, acc16)
    batches = ((None, tf(u8)) for _, u8 in _pool_batches(ux, 64, seed=1))
    res = distill(students, ens, batches, lambda m: accuracy(predict_logits(m, vx, tf), vy),
                  DistillSpec(steps=80, eval_every=20, patience=1000, lr=2e-3))
    for a, r in res.items():
        final = accuracy(predict_logits(students[a], vx, tf), vy)
        assert r.init_val == pytest.approx(start_acc[a])
        assert r.best_val > r.init_val + 0.02, (a, r.init_val, r.best_val)
        assert final == pytest.approx(r.best_val)  # the best-on-validation prototype is what remains
    assert np.isfinite([r.best_val for r in res.values()]).all()


def test_student_batchnorm_modes():
    """bn="running" (the default): the students' BatchNorm normalises with, and keeps, the FedAvg start's running
    statistics while every weight learns (BN's affine ones too); bn="train" (the paper code) re-estimates the
    statistics on the transfer batches: shifted inputs (a generator's) move them."""
    assert DistillSpec().bn == "running"
    teachers = _models("cnn", 2, seed=1)
    for bn in ("running", "train"):
        torch.manual_seed(0)
        student = get_model("cnn", 10, 1)
        student.train()(torch.randn(64, 1, 28, 28))
        student.eval()
        bns = [m for m in student.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        mean0 = [m.running_mean.clone() for m in bns]
        weight0 = [m.weight.detach().clone() for m in bns]
        batches = [(None, torch.randn(16, 1, 28, 28) * 3 + 2) for _ in range(6)]
        scores = iter([0.0, 1.0, 1.0, 1.0])  # the start, then every validation improves: the last weights are kept
        distill({"cnn": student}, TeacherEnsemble(teachers), batches, lambda m: next(scores),
                DistillSpec(steps=6, eval_every=6, patience=100, prefetch=0, bn=bn))
        moved = any(not torch.equal(m.running_mean, m0) for m, m0 in zip(bns, mean0))
        learned = any(not torch.equal(m.weight.detach(), w0) for m, w0 in zip(bns, weight0))
        assert learned, bn
        assert moved == (bn == "train"), bn


def test_label_prior_adjustment_is_tau_log_of_the_smoothed_prior():
    from feddf.errors import FeddfError
    from feddf.federated.teachers import label_prior_adjustment

    adj = label_prior_adjustment([[3, 0, 1], [0, 0, 0]], 1.0)  # (3+1, 0+1, 1+1) / (4 + 3); an empty client: uniform
    assert torch.allclose(adj, torch.log(torch.tensor([[4 / 7, 1 / 7, 2 / 7], [1 / 3, 1 / 3, 1 / 3]])))
    assert torch.allclose(label_prior_adjustment([[3, 0, 1]], 0.5), 0.5 * adj[:1])
    assert torch.equal(label_prior_adjustment([[3, 0, 1]], 0.0), torch.zeros(1, 3))
    assert torch.isfinite(label_prior_adjustment([[10 ** 6, 0]], 1.0)).all()
    with pytest.raises(FeddfError, match="label counts"):
        label_prior_adjustment([3, 0, 1], 1.0)
    with pytest.raises(FeddfError, match="label counts"):
        label_prior_adjustment([[3, -1]], 1.0)


def test_teacher_ensemble_subtracts_its_adjustment_in_every_rule():
    """ens.adjust (T, K) is taken off every teacher's logits before the rule: a teacher biased towards a class by
    +b on that logit, adjusted by b, teaches exactly what the unbiased teacher does."""
    torch.manual_seed(0)
    teachers = [nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).eval() for _ in range(2)]
    x = torch.randn(5, 3, 2, 2)
    plain = TeacherEnsemble(teachers, fold_bn=False, channels_last=False)
    raw = plain.logits(x)
    bias = torch.tensor([[2.0, 0, 0, 0], [0, 0, -1.5, 0]])
    for mode in ("avg-logits", "avg-probs", "avg-losses"):
        ens = TeacherEnsemble(teachers, mode=mode, fold_bn=False, channels_last=False)
        ens.adjust = bias
        assert torch.allclose(ens.logits(x), raw - bias[:, None, :])
        p, c = ens.target(x)
        q, d = ensemble_target(raw - bias[:, None, :], mode, 1.0)
        assert torch.allclose(p, q) and torch.allclose(c, d)
