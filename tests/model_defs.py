"""Model definitions for the --model-def tests (FILE.py:FACTORY)."""
import torch
from torch import nn


def resnet18(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18, random weights."""
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=num_classes)


def small_cnn(num_classes: int = 10) -> nn.Module:
    """A small CNN with BatchNorm and dropout for 32x32 images."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.1), nn.Linear(32, num_classes))


def broken() -> nn.Module:
    raise RuntimeError("this factory is broken on purpose")


def not_a_module():
    return {"weight": torch.zeros(3)}
