"""VGG-A family: parameter counts by hand, BatchNorm placement, output shapes, initialisation."""
import pytest
import torch
from torch import nn

from landscape.errors import UsageError
from landscape.training.models import build_model, count_parameters, model_names


def vgg_a_parameter_count(width: float, batch_norm: bool, batch_norm_fc: bool, classes: int = 10) -> int:
    """Counted by hand from the VGG-A table: conv k*k*cin*cout + cout, BN 2*c, linear in*out + out."""
    convs = [64, 128, 256, 256, 512, 512, 512, 512]
    total, c_in = 0, 3
    for c in convs:
        c = max(1, round(c * width))
        total += 9 * c_in * c + c + (2 * c if batch_norm else 0)
        c_in = c
    hidden = max(1, round(512 * width))
    total += c_in * hidden + hidden + hidden * hidden + hidden + hidden * classes + classes
    if batch_norm_fc:
        total += 2 * 2 * hidden
    return total


def test_vgg_a_full_width_hand_count():
    # 9,750,922 = 9,220,480 in the eight convolutions + 530,442 in the three linear layers.
    assert count_parameters(build_model("vgg")) == 9_750_922


@pytest.mark.parametrize("width", [1.0, 0.125, 0.5])
@pytest.mark.parametrize("name,bn,bn_fc", [("vgg", False, False), ("vgg_bn", True, False), ("vgg_bn_fc", True, True)])
def test_parameter_counts(name, bn, bn_fc, width):
    assert count_parameters(build_model(name, width=width)) == vgg_a_parameter_count(width, bn, bn_fc)


@pytest.mark.parametrize("name", ["vgg", "vgg_bn", "vgg_bn_fc"])
def test_output_shape(name):
    model = build_model(name, width=0.125, num_classes=7)
    assert model(torch.randn(5, 3, 32, 32)).shape == (5, 7)


def layer_kinds(model: nn.Module) -> list[str]:
    return [type(m).__name__ for m in model.modules() if not isinstance(m, (nn.Sequential, type(model)))]


def test_batchnorm_placement():
    plain, bn, bn_fc = (layer_kinds(build_model(n, width=0.125)) for n in ("vgg", "vgg_bn", "vgg_bn_fc"))
    assert "BatchNorm2d" not in plain and "BatchNorm1d" not in plain
    # conv -> BN -> ReLU after each of the 8 convolutions
    conv_positions = [i for i, k in enumerate(bn) if k == "Conv2d"]
    assert len(conv_positions) == 8
    assert all(bn[i + 1] == "BatchNorm2d" and bn[i + 2] == "ReLU" for i in conv_positions)
    assert "BatchNorm1d" not in bn
    # strategy 2: BatchNorm1d after the two hidden Linear layers, not after the last one
    linear_positions = [i for i, k in enumerate(bn_fc) if k == "Linear"]
    assert [bn_fc[i + 1] for i in linear_positions[:2]] == ["BatchNorm1d", "BatchNorm1d"]
    assert linear_positions[-1] == len(bn_fc) - 1


def test_initialisation():
    torch.manual_seed(0)
    model = build_model("vgg_bn_fc")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert torch.all(m.bias == 0)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    # Xavier normal: std = sqrt(2 / (fan_in + fan_out)); the 512x512x3x3 conv has 2.4M samples
    conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    expected = (2 / (512 * 9 + 512 * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.01)


def test_unknown_model_lists_known_names():
    with pytest.raises(UsageError) as err:
        build_model("resnet9000")
    for name in model_names():
        assert name in str(err.value)
