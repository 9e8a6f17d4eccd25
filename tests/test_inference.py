"""feddf/models/inference.py: the eval-time rewrites behind `--server-kernels fused` and the teachers keep the
model's function (BatchNorm folding: float rounding; the 2x2 max-pool: the same values) and never touch the model."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from feddf.federated.teachers import fold_batchnorm, prepare_teacher
from feddf.models import get_model
from feddf.models.inference import Max2x2, exact_pools, fold_conv_bn, inference_copy, max_2x2


def _trained_like(m: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, as after training."""
    g = torch.Generator().manual_seed(1)
    for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):
        bn.running_mean.copy_(torch.rand(bn.num_features, generator=g) * 0.4 - 0.2)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.weight.data.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.bias.data.copy_(torch.rand(bn.num_features, generator=g) - 0.5)
    return m


@pytest.mark.parametrize("shape", [(3, 4, 28, 28), (2, 5, 7, 7), (2, 3, 9, 6)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_max_2x2_is_max_pool2d_value_for_value(shape, channels_last):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).round()  # rounding: many ties
    x[0, 0, 0, 0] = float("nan")  # NaN propagates in both
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref, out = F.max_pool2d(x, 2), max_2x2(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)
    assert out.is_contiguous(memory_format=torch.channels_last) == ref.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("arch", ["cnn", "vgg9", "resnet8"])
def test_inference_copy_folds_every_batchnorm_and_keeps_the_function(arch):
    torch.manual_seed(0)
    model = _trained_like(get_model(arch, 10, 1)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rewritten = inference_copy(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in rewritten.modules())  # every pair found without tracing
    assert not any(type(m) is nn.MaxPool2d for m in rewritten.modules())
    assert not rewritten.training and not any(p.requires_grad for p in rewritten.parameters())
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        want = model.eval()(x)
        torch.testing.assert_close(rewritten(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rewritten.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)), want, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is not touched
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_only_pairs_known_to_compose_are_folded():
    class Sub(nn.Sequential):  # a Sequential subclass may wire its children differently
        def forward(self, x):
            return self[1](x) + self[0](x)

    class MyConv(nn.Conv2d):  # a subclass may compute something else (a binarised conv)
        pass

    hooked = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    hooked[0].register_forward_hook(lambda m, i, o: o * 2)
    model = nn.Sequential(Sub(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)), nn.Sequential(MyConv(4, 4, 1), nn.BatchNorm2d(4)),
                          nn.MaxPool2d(3), nn.MaxPool2d(2, padding=1), nn.MaxPool2d(2, ceil_mode=True))
    model.eval()
    assert fold_conv_bn(model) == 0 and fold_conv_bn(hooked.eval()) == 0
    assert exact_pools(model) == 0
    gn = get_model("cnn", 10, 1, norm="gn")
    assert fold_conv_bn(gn.eval()) == 0 and exact_pools(gn) == 3
    assert all(isinstance(gn.features[i], Max2x2) for i in (2, 6, 10))


def test_teachers_take_the_exact_pool_and_their_logits_do_not_move():
    torch.manual_seed(0)
    model = _trained_like(get_model("cnn", 10, 1)).eval()
    x = (torch.randn(64, 1, 28, 28) * 3).round().contiguous(memory_format=torch.channels_last)  # ties after conv
    teacher = prepare_teacher(model)
    assert not any(type(m) is nn.MaxPool2d for m in teacher.modules())
    old = fold_batchnorm(copy.deepcopy(model).eval()).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert torch.equal(teacher(x), old(x))  # what the teachers computed before the exact pool
