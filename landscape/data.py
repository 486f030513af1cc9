"""Datasets as uint8 tensors on the training device, and the batches cut from them.

A split is loaded once (`load_dataset`), moved to the device whole, and every batch is sliced,
augmented and normalised there. Shuffling and augmentation draw from generators seeded by
(seed, epoch), so an epoch's batches depend on nothing but the seed and the epoch number.
CIFAR-10 is read from the official python batches by our own reader, so subsets work too.
"""
from __future__ import annotations

import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from landscape.errors import UsageError

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CROP_PADDING = 4


@dataclass
class Split:
    """Images as uint8 [N, C, H, W] and labels as int64 [N], on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass
class Dataset:
    """A train and a test split with what is needed to normalise them."""

    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def image_size(self) -> int:
        return self.train.images.shape[-1]


def load_dataset(name: str, root: str | Path, *, device: torch.device, train_subset: int = 0,
                 download: bool = False, seed: int = 0) -> Dataset:
    """Load dataset `name` onto `device`; `train_subset` > 0 keeps the first N training images."""
    if name == "cifar10":
        arrays = read_cifar10(cifar10_folder(root, download))
        mean, std, classes = CIFAR10_MEAN, CIFAR10_STD, 10
    elif name == "synthetic":
        arrays = make_synthetic(seed)
        mean, std, classes = (0.5, 0.5, 0.5), (0.2887, 0.2887, 0.2887), 10
    else:
        raise UsageError(f"--dataset {name!r} is unknown: choose cifar10 or synthetic")
    train_x, train_y, test_x, test_y = arrays
    if train_subset:
        if train_subset > len(train_y):
            raise UsageError(f"--train-subset {train_subset} exceeds the {len(train_y)} training images")
        train_x, train_y = train_x[:train_subset], train_y[:train_subset]

    def to_split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(torch.from_numpy(x).to(device), torch.from_numpy(y).long().to(device))

    return Dataset(name, to_split(train_x, train_y), to_split(test_x, test_y), classes, mean, std)


def cifar10_folder(root: str | Path, download: bool) -> Path:
    """The folder holding CIFAR-10's batches under `root` (or `root` itself); download if asked."""
    root = Path(root)
    for folder in (root / CIFAR10_FOLDER, root):
        if all((folder / f).is_file() for f in CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,)):
            return folder
    if download:
        download_cifar10(root)
        return root / CIFAR10_FOLDER
    raise UsageError(
        f"CIFAR-10 not found: expected {CIFAR10_FOLDER}/data_batch_1..5 and test_batch under {root}; "
        f"pass --download, or unpack cifar-10-python.tar.gz there, or point --data-root at it")


def download_cifar10(root: Path) -> None:
    """Fetch the full CIFAR-10 with torchvision into `root`; a clear error when offline."""
    from torchvision.datasets import CIFAR10

    try:
        root.mkdir(parents=True, exist_ok=True)
        CIFAR10(str(root), train=True, download=True)
    except Exception as exc:  # URLError, socket errors, checksum failures all mean the same to the user
        raise UsageError(
            f"could not download CIFAR-10 into {root} ({type(exc).__name__}: {exc}); "
            f"without network, place the unpacked {CIFAR10_FOLDER}/ folder there") from None


def read_cifar10(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the official python batches: uint8 images [N, 3, 32, 32] and int64 labels."""

    def read(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for name in names:
            with open(folder / name, "rb") as f:
                raw = pickle.load(f, encoding="latin1")
            batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}  # official: bytes keys
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch["labels"], dtype=np.int64))
        return np.concatenate(images), np.concatenate(labels)

    try:
        return (*read(CIFAR10_TRAIN_FILES), *read((CIFAR10_TEST_FILE,)))
    except (pickle.UnpicklingError, AttributeError, KeyError, ValueError, EOFError) as exc:
        raise UsageError(f"CIFAR-10 batch files in {folder} are unreadable ({exc}); download them again") from None


def make_synthetic(seed: int, n_train: int = 2048, n_test: int = 512,
                   classes: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random 3x32x32 images whose label is the argmax of a fixed random linear map (learnable)."""
    rng = np.random.default_rng(seed + 12345)
    projection = rng.standard_normal((3 * 32 * 32, classes))
    images = rng.integers(0, 256, size=(n_train + n_test, 3, 32, 32), dtype=np.uint8)
    centred = images.reshape(len(images), -1).astype(np.float64) / 255.0 - 0.5
    labels = np.argmax(centred @ projection, axis=1).astype(np.int64)
    return images[:n_train], labels[:n_train], images[n_train:], labels[n_train:]


class Normalizer:
    """uint8 images to normalised float32, as (x / 255 - mean) / std, on the images' device."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
        mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() * self.scale + self.shift


def epoch_generator(seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator whose stream depends only on (seed, epoch)."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + epoch)


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches per epoch: every image once; a trailing batch of one image is dropped (BatchNorm)."""
    steps = math.ceil(n / batch_size)
    return steps - 1 if steps > 1 and n % batch_size == 1 else steps


def train_batches(split: Split, normalize: Normalizer, *, batch_size: int, seed: int, epoch: int,
                  augment: str = "none") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled, optionally augmented, normalised batches of one epoch, all made on the device."""
    device = split.images.device
    order = torch.randperm(len(split), generator=epoch_generator(seed, epoch)).to(device)
    aug_gen = epoch_generator(seed + 7919, epoch, device) if augment != "none" else None
    for step in range(steps_per_epoch(len(split), batch_size)):
        index = order[step * batch_size:(step + 1) * batch_size]
        images = split.images[index]
        if aug_gen is not None:
            images = crop_flip(images, aug_gen)
        yield normalize(images), split.labels[index]


def eval_batches(split: Split, normalize: Normalizer,
                 batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The split in order, normalised, in batches of `batch_size`."""
    for start in range(0, len(split), batch_size):
        yield normalize(split.images[start:start + batch_size]), split.labels[start:start + batch_size]


def crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = CROP_PADDING) -> torch.Tensor:
    """Per-image random crop from a zero-padded copy and a horizontal flip with probability 1/2."""
    n, _, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (n, 1, 1), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (n, 1, 1), generator=generator, device=device)
    rows = top + torch.arange(h, device=device).view(1, h, 1)
    cols = left + torch.arange(w, device=device).view(1, 1, w)
    batch = torch.arange(n, device=device).view(n, 1, 1)
    cropped = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
    flip = torch.rand(n, generator=generator, device=device) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), cropped.flip(3), cropped).contiguous()
