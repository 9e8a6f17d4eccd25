"""Client precision (feddf/federated/precision.py): bit packing, the binarised forward, the straight-through /
error-feedback training step on hand-sized tensors, payload sizes, and a mixed fp32 + binary FedDF run through the CLI
on real Fashion-MNIST whose metrics.jsonl upload bytes equal the packed sizes."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from feddf.cli import main
from feddf.federated import precision as P
from tests.conftest import run_cli

TINY = ["--dataset", "fashion-mnist", "--arch", "cnn", "--clients", "4", "--fraction", "1", "--rounds", "2",
        "--local-epochs", "1", "--train-limit", "400", "--test-limit", "200", "--distill-steps", "6",
        "--eval-every", "3", "--eval-batch-size", "200", "--quiet", "--distill-source", "noise"]


def data_bytes(state: dict, precision: str) -> int:
    """The tensor bytes of a payload, by hand: 1 bit a binarised weight + fp32 scale and mean per filter."""
    total = 0
    for t in state.values():
        if precision == "binary" and t.is_floating_point() and t.dim() >= 2:
            total += math.ceil(t.numel() / 8) + 8 * t.shape[0]
        elif precision in ("bf16", "fp16") and t.is_floating_point():
            total += 2 * t.numel()
        else:
            total += (4 if t.is_floating_point() else t.element_size()) * t.numel()
    return total


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (9,), (3, 5), (4, 3, 3, 3), (1000,)])
def test_pack_unpack_round_trips_bit_exactly(shape):
    bits = torch.rand(shape, generator=torch.Generator().manual_seed(len(shape))) > 0.5
    packed = P.pack_bits(bits)
    assert len(packed) == math.ceil(bits.numel() / 8)
    assert torch.equal(P.unpack_bits(packed, shape), bits)


def test_payload_round_trip_and_size_per_precision():
    from feddf.models import get_model

    torch.manual_seed(0)
    state = get_model("cnn", 10, 1).state_dict()
    state = {k: (v + torch.randn_like(v) if v.is_floating_point() else v + 3) for k, v in state.items()}
    for p in P.PRECISIONS:
        blob = P.encode(state, p)
        assert len(blob) == P.header_bytes(blob) + data_bytes(state, p)
        name, back = P.decode(blob)
        assert name == p and list(back) == list(state)
        for k, v in state.items():
            want = P.quantize(v, p) if v.is_floating_point() else v
            assert back[k].dtype == (torch.float32 if v.is_floating_point() else v.dtype)
            assert torch.equal(back[k], want), (p, k)  # bit-exact: what the client holds is what the server gets
    assert len(P.encode(state, "binary")) * 20 < len(P.encode(state, "fp32"))


def tiny_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 2, 2), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 2 * 2, 3))


def test_binarized_forward_equals_sign_times_scale_weights():
    net = tiny_net()
    w = torch.tensor([[[[0.5, -0.1], [0.2, 0.0]]], [[[-0.3, 0.4], [0.9, -1.0]]]])
    with torch.no_grad():
        net[0].weight.copy_(w)
    bn_before = {k: v.clone() for k, v in net[1].state_dict().items()}
    bias_before = net[0].bias.detach().clone()
    lin_w = net[3].weight.detach().clone()
    hooks = P.QuantizedTraining(net, "binary")
    # filter 0: mean 0.15, centred (0.35, -0.25, 0.05, -0.15), RMS sqrt(0.0525); filter 1: mean 0, RMS sqrt(0.515)
    mu = torch.tensor([0.15, 0.0]).view(2, 1, 1, 1)
    s = torch.tensor([math.sqrt(0.0525), math.sqrt(0.515)]).view(2, 1, 1, 1)
    want = torch.sign(w - mu) * s + mu
    assert torch.allclose(net[0].weight, want, atol=1e-6)
    assert torch.equal(net[0].bias, bias_before)  # biases and BatchNorm stay fp32
    assert all(torch.equal(v, bn_before[k]) for k, v in net[1].state_dict().items())
    x = torch.randn(5, 1, 3, 3)
    net.eval()
    manual = F.linear(net[1](F.conv2d(x, want, net[0].bias)).flatten(1),
                      P.debinarize(*P.binarize(lin_w)), net[3].bias)
    assert torch.allclose(net(x), manual, atol=1e-5)
    # the server decodes the upload into the very same weights (bit-exact)
    _, received = P.decode(P.encode(net.state_dict(), "binary", hooks.codes))
    assert all(torch.equal(received[k], v) for k, v in net.state_dict().items())


def test_straight_through_gradient_and_error_feedback_memory():
    lin = nn.Linear(3, 2)
    w0 = torch.tensor([[0.5, -0.1, 0.2], [-0.3, 0.4, 0.9]])
    b0 = torch.tensor([0.1, -0.2])
    with torch.no_grad():
        lin.weight.copy_(w0)
        lin.bias.copy_(b0)
    hooks = P.QuantizedTraining(lin, "binary")
    q0 = P.debinarize(*P.binarize(w0))
    assert torch.equal(lin.weight, q0) and torch.allclose(hooks.memory["weight"], w0 - q0)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    x, c = torch.tensor([[1.0, 2.0, -1.0]]), torch.tensor([[1.0, -2.0]])
    latent = w0.clone()
    for step in range(4):
        loss = (lin(x) * c).sum()  # dL/dW = c^T x whatever W is, dL/db = c
        opt.zero_grad()
        hooks.backward_step(loss, opt, lambda: None)
        g = c.t() @ x
        latent = latent - 0.1 * g  # STE: the gradient taken at the binarised weights moves the latent fp32 weights
        q = P.debinarize(*P.binarize(latent))
        assert torch.allclose(lin.weight, q, atol=1e-6), step
        assert torch.allclose(hooks.memory["weight"], latent - q, atol=1e-6), step  # the residual is remembered
        assert torch.allclose(lin.bias, b0 - 0.1 * (step + 1) * c[0], atol=1e-6)  # fp32 bias: plain SGD
    # the memory keeps updates the 1-bit weights cannot show: the sum lin.weight + memory is the latent trajectory
    assert torch.allclose(lin.weight + hooks.memory["weight"], w0 - 0.4 * (c.t() @ x), atol=1e-6)


def test_half_precision_clients_keep_half_representable_weights():
    net = tiny_net()
    hooks = P.QuantizedTraining(net, "bf16")
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with hooks.autocast():
        loss = net(torch.randn(4, 1, 3, 3)).square().mean()
    hooks.backward_step(loss, opt, lambda: None)
    for p in net.parameters():
        assert torch.equal(p, p.to(torch.bfloat16).float())
    assert hooks.autocast_dtype() == torch.bfloat16
    assert P.QuantizedTraining(tiny_net(), "fp16", "cpu").autocast_dtype() is None  # fp16 conv backward is slow on CPU


def test_mixed_fp32_binary_feddf_run_records_packed_upload_sizes(tmp_path, fmnist_available):
    from feddf.models import get_model

    out = tmp_path / "run"
    run_cli("train", *TINY, "--client-precision", "fp32,binary", "--out", str(out), check=True, timeout=400)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["client_precision"] == "fp32,binary"
    part = json.loads((out / "partition.json").read_text())
    assert [c["precision"] for c in part["clients"]] == ["fp32", "fp32", "binary", "binary"]
    state = get_model("cnn", 10, 1).state_dict()
    sizes = {p: P.header_bytes(P.encode(state, p)) + data_bytes(state, p) for p in ("fp32", "binary")}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for r in rows:
        assert r["upload_bytes"] == {"0": sizes["fp32"], "1": sizes["fp32"], "2": sizes["binary"],
                                     "3": sizes["binary"]}
        assert r["download_bytes"] == {str(k): sizes["fp32"] for k in range(4)}
        assert r["teachers"] == 4 and r["acc"]["cnn"]["distilled"] is not None
    assert sizes["binary"] * 20 < sizes["fp32"]
    rep = run_cli("compare", str(out), "--out", str(tmp_path / "rep"), check=True)
    mb = (2 * sizes["fp32"] + 2 * sizes["binary"]) / 1e6
    assert "upload MB/round" in rep.stdout and f"{mb:.3f}" in rep.stdout


@pytest.mark.parametrize("extra, message", [
    (["--client-precision", "int3"], "--client-precision int3: unknown precision int3"),
    (["--client-precision", "fp32,binary,fp32,binary,fp16"], "5 values for 4 clients"),
])
def test_bad_client_precision_is_one_line(tmp_path, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["train", *TINY, "--out", "r", *extra])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and message in lines[0], res.output
    assert not (tmp_path / "r").exists()


def test_help_lists_client_precision():
    res = CliRunner().invoke(main, ["train", "--help"])
    assert res.exit_code == 0 and "--client-precision" in res.output and "binary" in res.output


def test_a_run_folder_recorded_before_client_precision_still_resumes():
    import dataclasses

    from feddf.federated.config import TrainConfig
    from feddf.federated.setup import same_run

    now = dataclasses.asdict(TrainConfig(out="r").resolved())
    before = {k: v for k, v in now.items() if k != "client_precision"}
    assert same_run(before, now) == ""
    assert "client_precision" in same_run(before, {**now, "client_precision": "binary"})
