"""ResNets: the ImageNet family (18-152) and He et al.'s CIFAR family (20-110), with ablation switches.

Module names follow torchvision's ResNet (conv1, bn1, layer1..4, fc; blocks with conv1/bn1/...,
downsample.0/.1), so ImageNet weights load unchanged. Switches for the reports' ablations:
`stem` ("imagenet": 7x7/2 conv + max-pool; "cifar": 3x3/1 conv, no pool), `width` (channel
multiplier), `norm` ("bn", "in" InstanceNorm, "none"), `residual` (False: the plain net of the same
depth), `dropout` (before the classifier), `activation` ("relu", "leaky_relu", "silu").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from landscape.training.config import ACTIVATIONS, NORMS, STEMS  # noqa: F401  (the choices, shared with the options)


# depth -> (block, blocks per stage) for the ImageNet family (He et al. 2016, Table 1); ResNet-14 is
# report 002's shallower variant (4 stages, 6 basic blocks; its split over stages is our choice)
IMAGENET_DEPTHS = {14: ("basic", (1, 2, 2, 1)), 18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
                   101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}
CIFAR_DEPTHS = (20, 32, 44, 56, 110)  # 6n + 2 layers, 3 stages of n basic blocks, 16/32/64 channels


def make_norm(kind: str, channels: int) -> nn.Module:
    """The normalization layer after a convolution."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "in":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def make_activation(kind: str) -> nn.Module:
    return {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.01), "silu": nn.SiLU}[kind]()


def conv(c_in: int, c_out: int, kernel: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=bias)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; the shortcut is identity, a 1x1 projection, or (option A) padded subsampling."""

    expansion = 1

    def __init__(self, c_in: int, channels: int, stride: int, norm: str, activation: str, residual: bool,
                 shortcut: str = "projection"):
        super().__init__()
        bias = norm == "none"
        self.conv1 = conv(c_in, channels, 3, stride, bias)
        self.bn1 = make_norm(norm, channels)
        self.conv2 = conv(channels, channels, 3, 1, bias)
        self.bn2 = make_norm(norm, channels)
        self.act = make_activation(activation)
        self.residual = residual
        self.downsample = None
        self.pad_shortcut = None
        if residual and (stride != 1 or c_in != channels):
            if shortcut == "projection":
                self.downsample = nn.Sequential(conv(c_in, channels, 1, stride, bias), make_norm(norm, channels))
            else:
                self.pad_shortcut = (stride, channels - c_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + self.shortcut(x)
        return self.act(out)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            return self.downsample(x)
        if self.pad_shortcut is not None:  # He et al.'s option A: subsample, zero-pad the new channels
            stride, extra = self.pad_shortcut
            return F.pad(x[:, :, ::stride, ::stride], (0, 0, 0, 0, extra // 2, extra - extra // 2))
        return x


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here, as torchvision), 1x1 expand by 4."""

    expansion = 4

    def __init__(self, c_in: int, channels: int, stride: int, norm: str, activation: str, residual: bool,
                 shortcut: str = "projection"):
        super().__init__()
        bias = norm == "none"
        out = channels * self.expansion
        self.conv1 = conv(c_in, channels, 1, 1, bias)
        self.bn1 = make_norm(norm, channels)
        self.conv2 = conv(channels, channels, 3, stride, bias)
        self.bn2 = make_norm(norm, channels)
        self.conv3 = conv(channels, out, 1, 1, bias)
        self.bn3 = make_norm(norm, out)
        self.act = make_activation(activation)
        self.residual = residual
        self.downsample = None
        if residual and (stride != 1 or c_in != out):
            self.downsample = nn.Sequential(conv(c_in, out, 1, stride, bias), make_norm(norm, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (self.downsample(x) if self.downsample is not None else x)
        return self.act(out)


class ResNet(nn.Module):
    """A residual network: stem, stages of blocks, global average pool, optional dropout, linear classifier."""

    def __init__(self, block: str, stage_blocks: tuple[int, ...], stage_channels: tuple[int, ...], *,
                 num_classes: int = 10, stem: str = "imagenet", width: float = 1.0, norm: str = "bn",
                 residual: bool = True, dropout: float = 0.0, activation: str = "relu", shortcut: str = "projection"):
        super().__init__()
        block_cls = BasicBlock if block == "basic" else Bottleneck
        channels = [max(1, round(c * width)) for c in stage_channels]
        c_in = channels[0]
        bias = norm == "none"
        if stem == "imagenet":
            self.conv1 = conv(3, c_in, 7, 2, bias)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = conv(3, c_in, 3, 1, bias)
            self.maxpool = nn.Identity()
        self.bn1 = make_norm(norm, c_in)
        self.act = make_activation(activation)
        for index, (blocks, c) in enumerate(zip(stage_blocks, channels)):
            layers = []
            for b in range(blocks):
                stride = 2 if index > 0 and b == 0 else 1
                layers.append(block_cls(c_in, c, stride, norm, activation, residual, shortcut))
                c_in = c * block_cls.expansion
            setattr(self, f"layer{index + 1}", nn.Sequential(*layers))
        self.stages = len(stage_blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and not m.weight.is_meta:  # shape-only builds: see models.init_weights
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act(self.bn1(self.conv1(x))))
        for index in range(self.stages):
            x = getattr(self, f"layer{index + 1}")(x)
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))


def imagenet_resnet(depth: int, **options) -> ResNet:
    """ResNet-18/34/50/101/152 (torchvision layout); `stem="cifar"` gives report 004's adjusted ResNet."""
    block, blocks = IMAGENET_DEPTHS[depth]
    return ResNet(block, blocks, (64, 128, 256, 512), **options)


def cifar_resnet(depth: int, **options) -> ResNet:
    """He et al.'s CIFAR ResNet-20/32/44/56/110: 3x3 stem, 16/32/64 channels, option-A shortcuts."""
    n = (depth - 2) // 6
    options.setdefault("stem", "cifar")
    return ResNet("basic", (n, n, n), (16, 32, 64), shortcut="padding", **options)
