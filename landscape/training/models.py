"""Model registry: one table (MODELS) maps a model name to its constructor and the options it takes.

`build_model(name, width=..., num_classes=..., **options)` is the only way the rest of the code
makes a model. The VGG-A family of report 004 (Santurkar et al.'s setting) lives here: `vgg`,
`vgg_bn` (BatchNorm after every convolution) and `vgg_bn_fc` (also after the hidden Linear
layers); the ResNets live in `landscape.training.resnet`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from landscape.errors import UsageError
from landscape.training.resnet import ACTIVATIONS, CIFAR_DEPTHS, IMAGENET_DEPTHS, NORMS, STEMS, cifar_resnet, imagenet_resnet

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
    """Xavier-normal weights and zero biases for conv and linear layers; BatchNorm weight 1, bias 0.

    A shape-only build (the meta device) draws nothing: there are no values, and torch's meta `normal_` imports
    torch._dynamo, a second of every command's start."""
    if any(p.is_meta for p in model.parameters()):
        return
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry: the constructor, the ablation options it takes, its torchvision weights enum."""

    build: Callable[..., nn.Module]
    options: tuple[str, ...] = ()
    weights: str | None = None  # torchvision weights enum name, for --pretrained


RESNET_OPTIONS = ("stem", "norm", "residual", "dropout", "activation")
# option -> default; a model that does not take an option accepts only its default
MODEL_OPTION_DEFAULTS = {"stem": "auto", "norm": "bn", "residual": True, "dropout": 0.0, "activation": "relu",
                         "pretrained": False}

MODELS: dict[str, ModelSpec] = {
    "vgg": ModelSpec(lambda **kw: VGG(**kw)),
    "vgg_bn": ModelSpec(lambda **kw: VGG(batch_norm=True, **kw)),
    "vgg_bn_fc": ModelSpec(lambda **kw: VGG(batch_norm=True, batch_norm_fc=True, **kw)),
    **{f"resnet{d}": ModelSpec(partial(imagenet_resnet, d), RESNET_OPTIONS + (("pretrained",) if d != 14 else ()),
                               f"ResNet{d}_Weights" if d != 14 else None) for d in IMAGENET_DEPTHS},
    **{f"resnet{d}": ModelSpec(partial(cifar_resnet, d), RESNET_OPTIONS) for d in CIFAR_DEPTHS},
}


def model_names() -> list[str]:
    """Every registered model name, in registry order."""
    return list(MODELS)


def check_model_name(name: str) -> None:
    """Raise UsageError naming the known models if `name` is not registered."""
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}: choose one of {', '.join(model_names())}")


def check_model_options(name: str, options: dict) -> None:
    """Raise UsageError if an option is set away from its default for a model that does not take it."""
    check_model_name(name)
    for option, value in options.items():
        if option not in MODELS[name].options and value != MODEL_OPTION_DEFAULTS[option]:
            flag = "--no-residual" if option == "residual" else f"--{option}"
            raise UsageError(f"{flag} does not apply to {name}: it is an option of the ResNets"
                             + (" with an ImageNet layout (resnet18..resnet152)" if option == "pretrained" else ""))
    for option, allowed in (("norm", NORMS), ("activation", ACTIVATIONS), ("stem", STEMS + ("auto",))):
        if option in options and options[option] not in allowed:
            raise UsageError(f"--{option} {options[option]!r} is unknown: choose one of {', '.join(allowed)}")
    if not 0 <= options.get("dropout", 0.0) < 1:
        raise UsageError(f"--dropout must be in [0, 1), got {options['dropout']}")


def build_model(name: str, *, width: float = 1.0, num_classes: int = 10, image_size: int = 32,
                **options) -> nn.Module:
    """Construct the registered model `name` (weights from torch's global RNG, or ImageNet if `pretrained`).

    `options` are the ablation switches of MODEL_OPTION_DEFAULTS; each model takes the ones its
    registry entry lists.
    """
    check_model_options(name, options)
    spec = MODELS[name]
    kwargs = {k: v for k, v in options.items() if k in spec.options and k != "pretrained"}
    if kwargs.get("stem") == "auto":
        del kwargs["stem"]
    if spec.options:
        model = spec.build(width=width, num_classes=num_classes, **kwargs)
    else:
        model = spec.build(width=width, num_classes=num_classes, image_size=image_size)
    if options.get("pretrained"):
        load_imagenet_weights(model, name, spec.weights, width=width, **kwargs)
    return model


def load_imagenet_weights(model: nn.Module, name: str, weights_enum: str, *, width: float, **options) -> None:
    """Load torchvision's ImageNet weights into `model`, all but the classifier; clear error offline."""
    if width != 1.0 or options.get("norm", "bn") != "bn" or options.get("stem", "imagenet") != "imagenet" \
            or not options.get("residual", True):
        raise UsageError(f"--pretrained needs the torchvision architecture of {name}: width 1, --norm bn, "
                         f"the ImageNet stem and residual connections")
    import torchvision

    weights = torchvision.models.get_weight(f"{weights_enum}.IMAGENET1K_V1")
    try:
        state = weights.get_state_dict(progress=False)
    except Exception as exc:  # offline: URLError and friends
        target = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise UsageError(f"cannot fetch ImageNet weights for {name} ({type(exc).__name__}); "
                         f"place {Path(weights.url).name} at {target}") from None
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("fc.") for k in missing):
        raise UsageError(f"ImageNet weights for {name} do not fit the model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_size_mb(model: nn.Module) -> float:
    """Parameters and buffers in MiB, as a saved state dict takes (report 003's 'size' column)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2 ** 20
