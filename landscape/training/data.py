"""Datasets as uint8 tensors on the training device, and the batches cut from them.

A split is loaded once (`load_dataset`), moved to the device whole, and every batch is sliced,
augmented and normalised there. Shuffling and augmentation draw from generators seeded by
(seed, epoch), so an epoch's batches depend on nothing but the seed and the epoch number.
CIFAR-10/100 are read from the official python batches by our own reader, so subsets work too.
Image folders (Imagenette, report 002's ImageNet subset) are decoded once, resized to the image
size, by DataLoader workers; a set too large for the GPU stays in pinned host memory and each batch
is copied over as it is cut.
"""
from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from landscape.training.config import parse_augment
from landscape.errors import UsageError
from landscape.engine.memory import check_dataset_fits

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_FOLDER = "cifar-100-python"
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = {"cifar10": 32, "cifar100": 32, "synthetic": 32, "imagenette": 224, "imagefolder": 64}
IMAGENETTE_FOLDERS = {"full": "imagenette2", "320": "imagenette2-320", "160": "imagenette2-160"}
DEVICE_MEMORY_SHARE = 0.5  # a dataset larger than this share of free GPU memory stays on the host


@dataclass
class Split:
    """Images as uint8 [N, C, H, W] and labels as int64 [N]; batches are made on `device`.

    The tensors live on `device`, or in pinned host memory when the split is too large for it.
    """

    images: torch.Tensor
    labels: torch.Tensor
    device: torch.device

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
                 download: bool = False, seed: int = 0, image_size: int = 0,
                 imagenette_size: str = "320") -> Dataset:
    """Load dataset `name` for training on `device`; `train_subset` > 0 keeps the first N training images."""
    size = image_size or DEFAULT_IMAGE_SIZE.get(name, 32)
    if name == "cifar10":
        arrays = read_cifar10(cifar_folder(root, download, "cifar10"))
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    elif name == "cifar100":
        arrays = read_cifar100(cifar_folder(root, download, "cifar100"))
        mean, std = CIFAR100_MEAN, CIFAR100_STD
    elif name == "synthetic":
        arrays = make_synthetic(seed)
        mean, std = (0.5, 0.5, 0.5), (0.2887, 0.2887, 0.2887)
    elif name == "imagenette":
        arrays = read_image_folder(imagenette_folder(root, imagenette_size, download), size)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif name == "imagefolder":
        arrays = read_image_folder(Path(root), size)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        raise UsageError(f"--dataset {name!r} is unknown: choose cifar10, cifar100, imagenette, imagefolder or synthetic")
    train_x, train_y, test_x, test_y = arrays
    if train_subset:
        if train_subset > len(train_y):
            raise UsageError(f"--train-subset {train_subset} exceeds the {len(train_y)} training images")
        train_x, train_y = train_x[:train_subset], train_y[:train_subset]
    if train_x.shape[-1] != size:
        check_dataset_fits(len(train_y) + len(test_y), size, device, f"--image-size {size}")
        train_x, test_x = resize_square(train_x, size), resize_square(test_x, size)
    classes = {"cifar10": 10, "cifar100": 100, "synthetic": 10}.get(name) or int(max(train_y.max(), test_y.max())) + 1
    storage = split_storage(train_x.nbytes + test_x.nbytes, device)

    def to_split(x: np.ndarray, y: np.ndarray) -> Split:
        images, labels = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y).long()
        if storage.type == "cpu" and device.type == "cuda":
            images, labels = images.pin_memory(), labels.pin_memory()
        return Split(images.to(storage), labels.to(storage), device)

    return Dataset(name, to_split(train_x, train_y), to_split(test_x, test_y), classes, mean, std)


def split_storage(nbytes: int, device: torch.device) -> torch.device:
    """Where the images live: on the training device, unless a GPU has too little free memory for them."""
    if device.type != "cuda":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    return device if nbytes < DEVICE_MEMORY_SHARE * free else torch.device("cpu")


def resize_square(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 images [N, C, H, W] to size x size (antialiased bilinear)."""
    out = F.interpolate(torch.from_numpy(images).float(), size=(size, size), mode="bilinear", antialias=True,
                        align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


CIFAR_LAYOUT = {  # dataset -> (folder, files that must exist, torchvision class name)
    "cifar10": (CIFAR10_FOLDER, CIFAR10_TRAIN_FILES + (CIFAR10_TEST_FILE,), "CIFAR10"),
    "cifar100": (CIFAR100_FOLDER, ("train", "test"), "CIFAR100"),
}


def cifar_folder(root: str | Path, download: bool, name: str = "cifar10",
                 fetch: str = "pass --download, or unpack the python version there, or point --data-root at it",
                 ) -> Path:
    """The folder holding CIFAR's python batches under `root` (or `root` itself); download if asked. `fetch` says
    how the caller's user asks for the download (a flag on the command line, an argument in Python)."""
    root = Path(root)
    folder_name, files, _ = CIFAR_LAYOUT[name]
    for folder in (root / folder_name, root):
        if all((folder / f).is_file() for f in files):
            return folder
        folders = [folder / f for f in files if (folder / f).is_dir()]
        if folders:
            raise UsageError(f"{folders[0]} is a folder, not a {name} batch file; replace it with the batch file")
    if download:
        download_with_torchvision(name, root)
        return root / folder_name
    raise UsageError(
        f"{name} not found: expected {folder_name}/ ({', '.join(files[:2])}...) under {root}; "
        f"{fetch}")


def download_with_torchvision(name: str, root: Path, **kwargs) -> None:
    """Fetch a dataset with torchvision into `root`; a clear error when offline."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, CIFAR_LAYOUT[name][2] if name in CIFAR_LAYOUT else "Imagenette")
    try:
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), download=True, **kwargs)
    except Exception as exc:  # URLError, socket errors, checksum failures all mean the same to the user
        raise UsageError(f"could not download {name} into {root} ({type(exc).__name__}: {exc}); "
                         f"without network, place the unpacked files there yourself") from None


def imagenette_folder(root: str | Path, size: str, download: bool) -> Path:
    """root/imagenette2[-320|-160] with train/ and val/; downloaded with torchvision if asked."""
    folder = Path(root) / IMAGENETTE_FOLDERS[size]
    if not (folder / "train").is_dir() and download:
        for split in ("train", "val"):
            download_with_torchvision("imagenette", Path(root), split=split,
                                      size=size if size == "full" else f"{size}px")
    if not (folder / "train").is_dir():
        raise UsageError(f"Imagenette not found: expected {folder}/train and {folder}/val; pass --download, "
                         f"or unpack {IMAGENETTE_FOLDERS[size]}.tgz under {root}")
    return folder


def read_image_folder(root: Path, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decode root/train/<class>/* and root/val/<class>/* (or test/) into uint8 [N, 3, size, size], resized
    (shorter side) and centre-cropped, by DataLoader workers; labels follow train's sorted class folders."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    eval_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or eval_dir is None:
        raise UsageError(f"image folder {root} needs train/<class>/ and val/<class>/ (or test/) subfolders; "
                         f"point --data-root at the folder holding them")
    transform = v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    train = ImageFolder(str(root / "train"), transform=transform)
    evaluation = ImageFolder(str(eval_dir), transform=transform)
    if evaluation.classes != train.classes:
        raise UsageError(f"{eval_dir} has other class folders than {root / 'train'}; they must match")
    check_dataset_fits(len(train) + len(evaluation), size, torch.device("cpu"), f"image folder {root} at --image-size")

    def decode(dataset) -> tuple[np.ndarray, np.ndarray]:
        loader = torch.utils.data.DataLoader(dataset, batch_size=256, num_workers=min(8, os.cpu_count() or 1))
        images, labels = zip(*((x.as_subclass(torch.Tensor), y) for x, y in loader))
        return torch.cat(images).numpy(), torch.cat(labels).numpy().astype(np.int64)

    return (*decode(train), *decode(evaluation))


def cifar10_tensors(root: str | Path = "data", split: str = "train", count: int | None = None,
                    download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from its python batches under `root`, normalised as `landscape run` does: (images float32 [N, 3,
    32, 32], labels int64 [N]), the first `count` of `split` (train or test). A tensor pair any API call takes."""
    if split not in ("train", "test"):
        raise UsageError(f"split {split!r} is unknown: choose train or test")
    train_x, train_y, test_x, test_y = read_cifar10(cifar_folder(
        root, download, fetch="give download=True, or unpack the python version there, or give its folder as root"))
    images, labels = (train_x, train_y) if split == "train" else (test_x, test_y)
    if count is not None:
        images, labels = images[:count], labels[:count]
    normalize = Normalizer(CIFAR10_MEAN, CIFAR10_STD, torch.device("cpu"))
    return normalize(torch.from_numpy(np.ascontiguousarray(images))), torch.from_numpy(labels).long()


def read_cifar10(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read CIFAR-10's official python batches: uint8 images [N, 3, 32, 32] and int64 labels."""
    return (*read_cifar_batches(folder, CIFAR10_TRAIN_FILES, "labels"),
            *read_cifar_batches(folder, (CIFAR10_TEST_FILE,), "labels"))


class CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR's batch files hold: dicts, lists, strings, bytes, numbers and numpy arrays.

    Anything else (a class, a function, `os.system`...) is refused before it is looked up, so a crafted
    batch file cannot run code.
    """

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               *((module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
                 for name in ("_reconstruct", "scalar")),
               *((module, "_frombuffer") for module in ("numpy.core.numeric", "numpy._core.numeric"))}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise UnsafePickle(f"{module}.{name}")
        return super().find_class(module, name)


class UnsafePickle(pickle.UnpicklingError):
    """A pickle names something a dataset file never contains."""


def read_cifar_batches(folder: Path, names: tuple[str, ...], label_key: str,
                       classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate pickled CIFAR batches (bytes keys as released, or str keys) into images and labels,
    checking what they hold: no code, uint8 images of 3x32x32, integer labels in [0, classes)."""
    images, labels = [], []
    for name in names:
        path = folder / name
        if path.is_dir():
            raise UsageError(f"CIFAR batch {path} is a folder, not a file; replace it with the batch file")
        try:
            with open(path, "rb") as f:
                raw = CifarUnpickler(f, encoding="latin1").load()
            if not isinstance(raw, dict):
                raise ValueError(f"holds a {type(raw).__name__}, not a dict")
            batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}
            data = np.asarray(batch["data"])
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise ValueError(f"its data is {data.dtype} {data.shape}, not uint8 [N, 3072]")
            label = np.asarray(batch[label_key])
            if label.ndim != 1 or len(label) != len(data) or not np.issubdtype(label.dtype, np.integer):
                raise ValueError(f"its {label_key} are not {len(data)} integers")
        except UnsafePickle as exc:
            raise UsageError(f"CIFAR batch file {path} names {exc}, which a CIFAR batch never holds; refusing to "
                             f"unpickle it (it could run code): replace it with the official file") from None
        except MemoryError:
            raise UsageError(f"CIFAR batch file {path} asks for more memory than this machine has while unpickling "
                             f"(a CIFAR batch holds 10,000 small images); replace it with the official file") from None
        except (pickle.UnpicklingError, AttributeError, KeyError, ValueError, EOFError, TypeError, IndexError,
                OSError, OverflowError) as exc:
            raise UsageError(f"CIFAR batch file {path} is unreadable ({type(exc).__name__}: {exc}); "
                             f"download it again") from None
        if label.size and (label.min() < 0 or label.max() >= classes):
            raise UsageError(f"CIFAR batch file {path} has labels outside [0, {classes}) (found {label.min()} to "
                             f"{label.max()}); the file is damaged or of another dataset: replace it")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(label.astype(np.int64))
    return np.concatenate(images), np.concatenate(labels)


def read_cifar100(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read CIFAR-100's python files `train` and `test` (fine labels)."""
    return (*read_cifar_batches(folder, ("train",), "fine_labels", 100),
            *read_cifar_batches(folder, ("test",), "fine_labels", 100))


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
    """Shuffled, optionally augmented, normalised batches of one epoch, made on the split's device."""
    device = split.device
    order = torch.randperm(len(split), generator=epoch_generator(seed, epoch)).to(split.images.device)
    augmenter = Augmenter(parse_augment(augment), split.images.shape[-1], seed, epoch, device)
    for step in range(steps_per_epoch(len(split), batch_size)):
        index = order[step * batch_size:(step + 1) * batch_size]
        images = split.images[index].to(device, non_blocking=True)
        labels = split.labels[index].to(device, non_blocking=True)
        yield augmenter.after_normalize(normalize(augmenter.before_normalize(images))), labels


def eval_batches(split: Split, normalize: Normalizer,
                 batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The split in order, normalised, in batches of `batch_size`."""
    for start in range(0, len(split), batch_size):
        images = split.images[start:start + batch_size].to(split.device, non_blocking=True)
        yield normalize(images), split.labels[start:start + batch_size].to(split.device, non_blocking=True)


class Augmenter:
    """The `--augment` switches of one epoch, each drawing new randomness for every image.

    crop, hflip and vflip run vectorised on the device from a generator seeded by (seed, epoch);
    rrc (RandomResizedCrop), jitter (ColorJitter), autoaugment (CIFAR-10 policy) and erasing
    (RandomErasing, after normalisation as in report 004) are torchvision.transforms.v2, applied image by
    image so each image gets its own parameters, under torch's global generator seeded per batch and
    restored afterwards (the training stream, e.g. dropout, is untouched).
    """

    def __init__(self, switches: list[tuple[str, float | None]], size: int, seed: int, epoch: int,
                 device: torch.device):
        from torchvision.transforms import v2

        self.switches = switches
        self.device = device
        self.generator = epoch_generator(seed + 7919, epoch, device) if switches else None
        self.batch_seeds = epoch_generator(seed + 104729, epoch) if switches else None
        per_image = {
            "rrc": lambda v: v2.RandomResizedCrop(size, scale=(v, 1.0), antialias=True),
            "jitter": lambda v: v2.ColorJitter(brightness=v, contrast=v, saturation=v),
            "autoaugment": lambda v: v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10),
            "erasing": lambda v: v2.RandomErasing(p=v, scale=(0.02, 0.1), ratio=(0.3, 3.3)),
        }
        self.transforms = {name: per_image[name](value) for name, value in switches if name in per_image}

    def before_normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Geometric and colour switches on uint8 images, in the order given."""
        for name, value in self.switches:
            if name == "crop":
                images = random_crop(images, self.generator, int(value))
            elif name in ("hflip", "vflip"):
                images = random_flip(images, self.generator, value, dim=3 if name == "hflip" else 2)
            elif name in ("rrc", "jitter", "autoaugment"):
                images = self.per_image(self.transforms[name], images)
        return images

    def after_normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RandomErasing, on normalised images."""
        if "erasing" in self.transforms:
            images = self.per_image(self.transforms["erasing"], images)
        return images

    def per_image(self, transform, images: torch.Tensor) -> torch.Tensor:
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=self.batch_seeds))
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return torch.stack([transform(image) for image in images])


def random_crop(images: torch.Tensor, generator: torch.Generator, padding: int) -> torch.Tensor:
    """Per-image random crop of the original size from a copy zero-padded by `padding` on each side."""
    n, _, h, w = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (n, 1, 1), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (n, 1, 1), generator=generator, device=device)
    rows = top + torch.arange(h, device=device).view(1, h, 1)
    cols = left + torch.arange(w, device=device).view(1, 1, w)
    batch = torch.arange(n, device=device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_flip(images: torch.Tensor, generator: torch.Generator, p: float, dim: int) -> torch.Tensor:
    """Flip each image along `dim` (3: horizontal, 2: vertical) with probability `p`, independently."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < p
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(dim), images)
