import pytest
import torch

from feddf.errors import FeddfError
from feddf.models import MODELS, get_model, load_classifier, save_classifier


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_published_parameter_counts():
    # He et al. 2016, Table 6: ResNet-20 0.27 M, ResNet-32 0.46 M (CIFAR-10 head).
    assert n_params(get_model("resnet20", 10, 3)) == pytest.approx(0.27e6, rel=0.03)
    assert n_params(get_model("resnet32", 10, 3)) == pytest.approx(0.46e6, rel=0.03)
    # VGG-9 of FedMA/FedDF: 3.49 M.
    assert n_params(get_model("vgg9", 10, 3)) == pytest.approx(3.49e6, rel=0.01)
    # Depth 6n+2: resnet8 is strictly smaller than resnet20.
    assert n_params(get_model("resnet8", 10, 3)) < n_params(get_model("resnet20", 10, 3))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (3, 28), (1, 32)])
def test_forward_shapes(name, channels, size):
    torch.manual_seed(0)
    m = get_model(name, 7, channels).eval()
    with torch.no_grad():
        y = m(torch.randn(2, channels, size, size))
    assert y.shape == (2, 7)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("norm", ["gn", "none"])
def test_norm_options(norm):
    m = get_model("resnet8", 10, 3, norm=norm)
    kinds = {type(x).__name__ for x in m.modules()}
    assert "BatchNorm2d" not in kinds
    if norm == "gn":
        assert "GroupNorm" in kinds
    m.train()
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)  # GroupNorm works with batch size 1


def test_unknown_model_and_norm():
    with pytest.raises(FeddfError, match="unknown architecture 'resnet9'"):
        get_model("resnet9", 10)
    with pytest.raises(FeddfError, match="unknown norm"):
        get_model("resnet8", 10, norm="ln")


def test_classifier_roundtrip(tmp_path):
    torch.manual_seed(0)
    m = get_model("cnn", 10, 1).eval()
    path = tmp_path / "cnn.pt"
    save_classifier(path, m, arch="cnn", num_classes=10, in_channels=1, norm="bn", mean=[0.286], std=[0.353],
                    resolution=28, class_names=[str(i) for i in range(10)])
    c = load_classifier(path)
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    expected = m((x.float() / 255 - 0.286) / 0.353)
    assert torch.allclose(c.logits(x), expected, atol=1e-5)
    # RGB 32 px input is converted to the classifier's 1-channel 28 px input.
    assert c.logits(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)).shape == (3, 10)
    # A run folder with one model resolves to it.
    (tmp_path / "run" / "models").mkdir(parents=True)
    path.rename(tmp_path / "run" / "models" / "cnn.pt")
    assert load_classifier(tmp_path / "run").meta["arch"] == "cnn"


def test_classifier_bad_files(tmp_path):
    with pytest.raises(FeddfError, match="not found"):
        load_classifier(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(FeddfError, match="cannot read classifier"):
        load_classifier(bad)
    torch.save({"foo": 1}, tmp_path / "other.pt")
    with pytest.raises(FeddfError, match="not a feddf classifier"):
        load_classifier(tmp_path / "other.pt")


def _relu_first(model):
    """A copy in the textbook order conv-norm-ReLU-pool (the zoo pools first): same modules, swapped back."""
    import copy

    m = copy.deepcopy(model)
    layers = list(m.features)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], torch.nn.MaxPool2d) and isinstance(layers[i + 1], torch.nn.ReLU):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    m.features = torch.nn.Sequential(*layers)
    return m


@pytest.mark.parametrize("name,channels,size", [("cnn", 1, 28), ("vgg9", 3, 32)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pool_before_relu_is_the_same_floats(name, channels, size, channels_last):
    # the zoo runs max-pool before ReLU (a 4x smaller ReLU pass); the outputs, every gradient and the weights after
    # SGD steps must equal the conv-norm-ReLU-pool order's bit for bit, in both memory formats
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    new = get_model(name, 10, channels).to(memory_format=fmt)
    old = _relu_first(new)
    assert [type(x) for x in old.features] != [type(x) for x in new.features]
    x = torch.randn(16, channels, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (16,))
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (new, old)]
    for _ in range(3):
        outs = []
        for m, opt in zip((new, old), opts):
            opt.zero_grad()
            out = m(x)
            torch.nn.functional.cross_entropy(out, y).backward()
            outs.append(out.detach())
        assert torch.equal(outs[0], outs[1])
        assert all(torch.equal(p.grad, q.grad) for p, q in zip(new.parameters(), old.parameters()))
        for opt in opts:
            opt.step()
    assert all(torch.equal(p, q) for p, q in zip(new.state_dict().values(), old.state_dict().values()))
