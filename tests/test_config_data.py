"""Option parsing and the device-side data pipeline, against hand-made inputs and numpy."""
import pickle

import numpy as np
import pytest
import torch

from landscape.training.config import RunConfig, parse_lrs
from landscape.training.config import parse_augment
from landscape.training.data import (Augmenter, Normalizer, eval_batches, load_dataset, read_cifar10,
                            steps_per_epoch, train_batches)
from landscape.errors import UsageError


def test_parse_lrs_accepts_rates():
    assert parse_lrs("1e-3, 2e-3,5e-4") == (1e-3, 2e-3, 5e-4)


@pytest.mark.parametrize("text", ["", "1e-3,,x", "x", "-1", "0", "1e-3,", "nan", "inf"])
def test_parse_lrs_rejects(text):
    with pytest.raises(UsageError):
        parse_lrs(text)


@pytest.mark.parametrize("field,value", [("epochs", 0), ("batch_size", -3), ("width", 0.0), ("dataset", "mnist"),
                                         ("optimizer", "lbfgs"), ("augment", "mixup"), ("lrs", (1e-3, 1e-3)),
                                         ("momentum", 1.5), ("train_subset", -1)])
def test_config_validation(field, value):
    with pytest.raises(UsageError):
        RunConfig(**{field: value}).validate()


def test_config_json_round_trip():
    config = RunConfig(model="vgg", lrs=(0.1, 0.01), width=0.5)
    assert RunConfig.from_json(config.to_json()) == config


def write_official_batches(folder, rng, n_per_batch=7, bytes_keys=True):
    """CIFAR-10's python layout: dicts with data [N, 3072] uint8 and labels, bytes keys as in the release."""
    folder.mkdir(parents=True)
    key = (lambda k: k.encode()) if bytes_keys else (lambda k: k)
    arrays = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({key("data"): data, key("labels"): labels, key("batch_label"): name}, f)
        arrays[name] = (data, labels)
    return arrays


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar_reader_matches_the_files(tmp_path, bytes_keys):
    arrays = write_official_batches(tmp_path / "cifar-10-batches-py", np.random.default_rng(0), bytes_keys=bytes_keys)
    train_x, train_y, test_x, test_y = read_cifar10(tmp_path / "cifar-10-batches-py")
    assert train_x.shape == (35, 3, 32, 32) and test_x.shape == (7, 3, 32, 32)
    # image 9 is the third image of data_batch_2; pixel (c, h, w) is data[c*1024 + h*32 + w]
    data, labels = arrays["data_batch_2"]
    assert train_x[9, 1, 5, 7] == data[2, 1 * 1024 + 5 * 32 + 7]
    assert train_y[9] == labels[2]
    assert np.array_equal(test_y, arrays["test_batch"][1])


def test_missing_cifar_names_the_place_and_the_fix(tmp_path):
    with pytest.raises(UsageError, match="--download"):
        load_dataset("cifar10", tmp_path, device=torch.device("cpu"))


def test_real_subset_loads(cifar_root):
    data = load_dataset("cifar10", cifar_root, device=torch.device("cpu"), train_subset=100)
    assert data.train.images.shape == (100, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert len(data.test) == 1017 and set(data.test.labels.tolist()) == set(range(10))


def test_normalizer_matches_formula():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    expected = (images.numpy() / 255.0 - np.array(mean)[None, :, None, None]) / np.array(std)[None, :, None, None]
    got = Normalizer(mean, std, torch.device("cpu"))(images).numpy()
    assert np.allclose(got, expected, atol=1e-5)


def test_steps_per_epoch():
    assert steps_per_epoch(256, 32) == 8
    assert steps_per_epoch(257, 32) == 8  # a trailing batch of one image is dropped (BatchNorm)
    assert steps_per_epoch(258, 32) == 9


def test_epoch_order_is_a_seeded_permutation():
    data = load_dataset("synthetic", ".", device=torch.device("cpu"), train_subset=100)
    identity = Normalizer((0, 0, 0), (1 / 255, 1 / 255, 1 / 255), torch.device("cpu"))  # x -> x as float

    def epoch_images(seed, epoch):
        batches = train_batches(data.train, identity, batch_size=32, seed=seed, epoch=epoch)
        return torch.cat([x for x, _ in batches])

    first, again, other_epoch = epoch_images(3, 0), epoch_images(3, 0), epoch_images(3, 1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other_epoch)
    # every image exactly once: compare sorted flattened rows with the source
    as_rows = lambda t: sorted(map(tuple, t.reshape(len(t), -1)[:, :16].tolist()))
    assert as_rows(first) == as_rows(data.train.images.float())


def test_eval_batches_cover_the_split_in_order():
    data = load_dataset("synthetic", ".", device=torch.device("cpu"))
    identity = Normalizer((0, 0, 0), (1 / 255, 1 / 255, 1 / 255), torch.device("cpu"))
    labels = torch.cat([y for _, y in eval_batches(data.test, identity, 100)])
    assert torch.equal(labels, data.test.labels)


def test_crop_flip_gives_per_image_crops_of_the_padded_image():
    images = torch.randint(1, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = Augmenter(parse_augment("crop-flip"), 32, seed=0, epoch=0, device=torch.device("cpu")).before_normalize(images).numpy()
    padded = np.pad(images.numpy(), ((0, 0), (0, 0), (4, 4), (4, 4)))
    flips = 0
    for i in range(len(images)):
        candidates = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                      if np.array_equal(out[i], (lambda c: c[..., ::-1] if f else c)(padded[i, :, dy:dy + 32, dx:dx + 32]))]
        assert candidates, f"image {i} is not a crop (or flipped crop) of its padded original"
        flips += candidates[0][2]
    assert 0 < flips < len(images)  # per-image flips, not one decision for the batch
