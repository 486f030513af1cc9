"""Model registry: one table maps a model name to its constructor.

`build_model(name, width=..., num_classes=...)` is the only way the rest of the code makes a
model. The VGG-A family of report 004 (Santurkar et al.'s setting) lives here: `vgg`, `vgg_bn`
(BatchNorm after every convolution) and `vgg_bn_fc` (also after the hidden Linear layers).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from landscape.errors import UsageError

# VGG-A ("configuration A" of Simonyan & Zisserman): conv widths per stage, each stage ends in a 2x2 max-pool.
VGG_A_STAGES: tuple[tuple[int, ...], ...] = ((64,), (128,), (256, 256), (512, 512), (512, 512))
VGG_HIDDEN = 512


def scaled(channels: int, width: float) -> int:
    """A channel count multiplied by the width factor, at least 1."""
    return max(1, round(channels * width))


class VGG(nn.Module):
    """VGG-A for 32x32 inputs, optionally with BatchNorm after convolutions and hidden Linears."""

    def __init__(self, width: float = 1.0, num_classes: int = 10, batch_norm: bool = False,
                 batch_norm_fc: bool = False, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for stage in VGG_A_STAGES:
            for channels in stage:
                c_out = scaled(channels, width)
                layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(c_out))
                layers.append(nn.ReLU(inplace=True))
                c_in = c_out
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        spatial = max(1, image_size // 2 ** len(VGG_A_STAGES))
        hidden = scaled(VGG_HIDDEN, width)
        head: list[nn.Module] = []
        f_in = c_in * spatial * spatial
        for _ in range(2):
            head.append(nn.Linear(f_in, hidden))
            if batch_norm_fc:
                head.append(nn.BatchNorm1d(hidden))
            head.append(nn.ReLU(inplace=True))
            f_in = hidden
        head.append(nn.Linear(f_in, num_classes))
        self.classifier = nn.Sequential(*head)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def init_weights(model: nn.Module) -> None:
    """Xavier-normal weights and zero biases for conv and linear layers; BatchNorm weight 1, bias 0."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


ModelFactory = Callable[..., nn.Module]

MODELS: dict[str, ModelFactory] = {
    "vgg": lambda **kw: VGG(**kw),
    "vgg_bn": lambda **kw: VGG(batch_norm=True, **kw),
    "vgg_bn_fc": lambda **kw: VGG(batch_norm=True, batch_norm_fc=True, **kw),
}


def model_names() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(MODELS)


def check_model_name(name: str) -> None:
    """Raise UsageError naming the known models if `name` is not registered."""
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}: choose one of {', '.join(model_names())}")


def build_model(name: str, *, width: float = 1.0, num_classes: int = 10, image_size: int = 32) -> nn.Module:
    """Construct the registered model `name` (weights initialised from torch's global RNG)."""
    check_model_name(name)
    return MODELS[name](width=width, num_classes=num_classes, image_size=image_size)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
