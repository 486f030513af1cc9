"""ResNets against torchvision and hand counts; the ablation switches really change the network."""
import pytest
import torch
import torchvision
from torch import nn

from landscape.errors import UsageError
from landscape.training.models import build_model, count_parameters, model_size_mb
from landscape.training.resnet import BasicBlock


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_imagenet_resnets_match_torchvision(depth):
    ours = build_model(f"resnet{depth}", num_classes=1000)
    theirs = getattr(torchvision.models, f"resnet{depth}")()
    assert count_parameters(ours) == count_parameters(theirs)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}


def test_resnet18_computes_what_torchvision_computes_with_the_same_weights():
    theirs = torchvision.models.resnet18(num_classes=10).eval()
    ours = build_model("resnet18", num_classes=10).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_model_sizes_match_report_003():
    # report 003, Table 1: 45, 83, 98, 170, 230 MB for ResNet-18..152 (fp32 weights, 1000-class head)
    sizes = [model_size_mb(build_model(f"resnet{d}", num_classes=1000)) for d in (18, 34, 50, 101, 152)]
    assert [round(s) for s in sizes] == [45, 83, 98, 170, 230]


def cifar_resnet_count(n: int, classes: int = 10) -> int:
    """He et al.'s CIFAR ResNet with option-A shortcuts, counted by hand: 3x3 convs without bias, BN 2c."""
    total = 3 * 9 * 16 + 2 * 16  # stem
    c_in = 16
    for c in (16, 32, 64):
        for _ in range(n):
            total += 9 * c_in * c + 2 * c + 9 * c * c + 2 * c
            c_in = c
    return total + 64 * classes + classes


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_resnet_counts(depth):
    assert count_parameters(build_model(f"resnet{depth}")) == cifar_resnet_count((depth - 2) // 6)


def test_resnet20_has_about_0_27m_parameters():
    assert round(count_parameters(build_model("resnet20")) / 1e6, 2) == 0.27


def test_cifar_stem_keeps_resolution():
    imagenet = build_model("resnet18", width=0.25)
    cifar = build_model("resnet18", width=0.25, stem="cifar")
    assert imagenet.conv1.kernel_size == (7, 7) and isinstance(imagenet.maxpool, nn.MaxPool2d)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1) and isinstance(cifar.maxpool, nn.Identity)
    shapes = {}
    for name, model in (("imagenet", imagenet), ("cifar", cifar)):
        model.layer4.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape[-1]))
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert shapes == {"imagenet": 1, "cifar": 4}


def test_no_residual_really_removes_the_skip():
    torch.manual_seed(0)
    plain = build_model("resnet20", residual=False).eval()
    residual = build_model("resnet20").eval()
    block = plain.layer1[0]
    x = torch.randn(2, 16, 8, 8)
    by_hand = torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))))
    assert torch.allclose(block(x), by_hand)
    rblock = residual.layer1[0]
    rblock.load_state_dict(block.state_dict())
    assert torch.allclose(rblock(x), torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x))))) + x))
    # ImageNet layout: the projection shortcuts go away with the skips
    with_skips, without = build_model("resnet18"), build_model("resnet18", residual=False)
    projections = sum(p.numel() for n, p in with_skips.named_parameters() if "downsample" in n)
    assert count_parameters(with_skips) - count_parameters(without) == projections > 0


@pytest.mark.parametrize("norm,kind", [("in", nn.InstanceNorm2d), ("none", nn.Identity)])
def test_norm_replaces_batchnorm(norm, kind):
    model = build_model("resnet20", norm=norm)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert all(isinstance(b.bn1, kind) and isinstance(b.bn2, kind) for b in blocks)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all((c.bias is not None) == (norm == "none") for c in convs)  # without a norm the convs get biases
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("activation,kind", [("leaky_relu", nn.LeakyReLU), ("silu", nn.SiLU)])
def test_activation_switch(activation, kind):
    model = build_model("resnet20", activation=activation)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert any(isinstance(m, kind) for m in model.modules())


def test_dropout_sits_before_the_classifier():
    model = build_model("resnet20", dropout=0.5)
    seen = []
    model.fc.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model.train()
    model(torch.randn(4, 3, 32, 32))
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.5
    assert (seen[0] == 0).float().mean() > 0.3  # about half the features dropped
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("model,options", [("vgg", {"norm": "in"}), ("vgg_bn", {"dropout": 0.1}),
                                           ("resnet20", {"pretrained": True}), ("resnet18", {"norm": "group"}),
                                           ("resnet18", {"pretrained": True, "width": 0.5})])
def test_options_a_model_does_not_take_are_refused(model, options):
    with pytest.raises(UsageError):
        build_model(model, **options)


def test_pretrained_offline_names_the_weights_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.hub.set_dir(str(tmp_path / "hub"))
    with pytest.raises(UsageError, match=r"resnet18-f37072fd\.pth"):
        build_model("resnet18", pretrained=True)
