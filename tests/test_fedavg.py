"""FedAvg / FedAvgM server rules against hand-computed values, BatchNorm buffers included; drop-worst selection."""
import pytest
import torch
from torch import nn

from feddf.errors import FeddfError
from feddf.federated.aggregate import (FedAvg, FedAvgM, drop_worst, get_aggregator, server_momentum_step,
                                       weighted_average)


def _net(seed):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    m.train()
    m(torch.randn(4, 1, 6, 6))  # moves BN running stats and num_batches_tracked
    if seed == 2:
        m(torch.randn(4, 1, 6, 6))
    return m


def test_weighted_average_equals_hand_computed_mean_for_every_tensor():
    nets = [_net(s) for s in (0, 1, 2)]
    states = [n.state_dict() for n in nets]
    sizes = [10, 30, 60]
    avg = FedAvg("size").aggregate("a", states[0], states, sizes, set())
    for key in states[0]:
        if key.endswith("num_batches_tracked"):
            assert int(avg[key]) == 2  # max of the counters (1, 1, 2)
            continue
        hand = (10 * states[0][key] + 30 * states[1][key] + 60 * states[2][key]) / 100
        torch.testing.assert_close(avg[key], hand, rtol=1e-6, atol=1e-7)
    assert "1.running_mean" in avg and "1.running_var" in avg  # BN buffers are part of the average
    uni = FedAvg("uniform").aggregate("a", states[0], states, sizes, set())
    torch.testing.assert_close(uni["3.weight"], sum(s["3.weight"] for s in states) / 3)


def test_weighted_average_rejects_bad_weights_and_fedavg_without_clients_keeps_prev():
    s = {"w": torch.ones(2)}
    with pytest.raises(ValueError):
        weighted_average([s, s], [1.0])
    with pytest.raises(ValueError):
        weighted_average([s], [0.0])
    prev = {"w": torch.full((2,), 3.0)}
    out = FedAvg().aggregate("a", prev, [], [], {"w"})
    assert torch.equal(out["w"], prev["w"]) and out["w"] is not prev["w"]


def test_server_momentum_step_matches_hand_computation_over_two_rounds():
    names = {"w"}
    prev = {"w": torch.tensor([1.0, 2.0]), "bn": torch.tensor([5.0])}
    avg1 = {"w": torch.tensor([0.0, 1.0]), "bn": torch.tensor([7.0])}
    new1, buf1 = server_momentum_step(prev, avg1, None, 0.9, names)
    torch.testing.assert_close(buf1["w"], torch.tensor([1.0, 1.0]))     # d = prev - avg
    torch.testing.assert_close(new1["w"], torch.tensor([0.0, 1.0]))     # first step = plain FedAvg
    assert torch.equal(new1["bn"], avg1["bn"])                          # buffers from the average
    avg2 = {"w": torch.tensor([-1.0, 1.0]), "bn": torch.tensor([1.0])}
    new2, buf2 = server_momentum_step(new1, avg2, buf1, 0.9, names)
    torch.testing.assert_close(buf2["w"], torch.tensor([0.9 + 1.0, 0.9 + 0.0]))
    torch.testing.assert_close(new2["w"], torch.tensor([0.0 - 1.9, 1.0 - 0.9]))


def test_fedavgm_keeps_one_buffer_per_arch_and_round_trips_its_state():
    agg = get_aggregator("fedavgm", weighting="uniform", server_momentum=0.5)
    assert isinstance(agg, FedAvgM)
    prev = {"w": torch.zeros(1)}
    out = agg.aggregate("a", prev, [{"w": torch.ones(1)}, {"w": torch.full((1,), 3.0)}], [1, 1], {"w"})
    torch.testing.assert_close(out["w"], torch.full((1,), 2.0))
    other = get_aggregator("fedavgm", server_momentum=0.5)
    other.load_state_dict(agg.state_dict())
    a2 = agg.aggregate("a", out, [{"w": torch.full((1,), 2.0)}], [1], {"w"})
    b2 = other.aggregate("a", out, [{"w": torch.full((1,), 2.0)}], [1], {"w"})
    torch.testing.assert_close(a2["w"], b2["w"])
    torch.testing.assert_close(a2["w"], torch.full((1,), 2.0 + 0.5 * 2.0))  # momentum keeps moving: w - 0.5*(-2)
    with pytest.raises(FeddfError, match="--server-momentum"):
        FedAvgM(server_momentum=1.0)
    with pytest.raises(FeddfError, match="unknown --aggregator"):
        get_aggregator("scaffold")


def test_drop_worst_threshold_then_outliers():
    # under 1.2 / 10 = 0.12: clients 1 and 3 leave FedAvg and the teachers
    assert drop_worst([0.5, 0.1, 0.6, 0.05], 10) == ([0, 2], [0, 2])
    # nobody under the floor: the outlier rule (mean - 1.5 std of all but the best) removes client 4 as a teacher only
    avg, teach = drop_worst([0.80, 0.82, 0.81, 0.83, 0.40], 10)
    assert avg == [0, 1, 2, 3, 4] and teach == [0, 1, 2, 3]


def test_fedprox_term_pulls_local_training_towards_the_global_model():
    from feddf.cache.augment import BatchTransform
    from feddf.federated.client import LocalSpec, local_train

    torch.manual_seed(0)
    x = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 3, (64,))
    tf = BatchTransform(1, 8, (0.5,), (0.25,), "none")

    def drift(mu):
        m = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
        torch.manual_seed(1)
        nn.init.normal_(m[1].weight)
        start = [p.detach().clone() for p in m.parameters()]
        out = local_train(m, x, y, LocalSpec(epochs=3, lr=0.1, batch_size=16, prox_mu=mu, augment="none"), tf,
                          torch.Generator().manual_seed(0))
        assert out["steps"] == 12
        return sum(float((p.detach() - s).pow(2).sum()) for p, s in zip(m.parameters(), start)) ** 0.5

    assert drift(5.0) < 0.5 * drift(0.0)
