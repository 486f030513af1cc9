"""Image folders, augmentation switches, TOML configs, and short ResNet runs end to end."""
import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from landscape.cli.main import main
from landscape.training.config import RunConfig, load_config_file, parse_augment
from landscape.training.data import Augmenter, load_dataset
from landscape.errors import UsageError
from landscape.training.runner import train


def write_jpeg_tree(root, classes=("cat", "dog", "emu"), per_class=4, seed=0):
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                size = (40 + 8 * i, 30 + 4 * c)  # differing sizes and aspect ratios
                colour = (60 * c, 255 - 60 * c, 128)
                pixels = np.full((size[1], size[0], 3), colour, dtype=np.uint8)
                pixels += rng.integers(0, 10, pixels.shape, dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=95)


def test_image_folder_of_generated_jpegs_loads(tmp_path):
    write_jpeg_tree(tmp_path)
    data = load_dataset("imagefolder", tmp_path, device=torch.device("cpu"), image_size=16)
    assert data.train.images.shape == (12, 3, 16, 16) and data.train.images.dtype == torch.uint8
    assert data.num_classes == 3 and sorted(data.train.labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    # class "dog" (label 1) was drawn with colour (60, 195, 128): JPEG keeps it within a few levels
    dog = data.train.images[data.train.labels == 1].float().mean(dim=(0, 2, 3))
    assert torch.allclose(dog, torch.tensor([64.5, 199.5, 132.5]), atol=6)


def test_image_folder_without_val_is_a_usage_error(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(UsageError, match="val"):
        load_dataset("imagefolder", tmp_path, device=torch.device("cpu"))


def test_imagenette_missing_says_where(tmp_path):
    with pytest.raises(UsageError, match="imagenette2-320"):
        load_dataset("imagenette", tmp_path, device=torch.device("cpu"))


def augment(spec, images, seed=0, epoch=0):
    a = Augmenter(parse_augment(spec), images.shape[-1], seed, epoch, torch.device("cpu"))
    return a.after_normalize(a.before_normalize(images).float()) if "erasing" in spec else a.before_normalize(images)


def test_vertical_flip_is_per_image_with_its_probability():
    images = torch.randint(0, 256, (400, 3, 8, 8), dtype=torch.uint8)
    out = augment("vflip:0.1", images)
    flipped = torch.tensor([torch.equal(o, i.flip(1)) and not torch.equal(o, i) for o, i in zip(out, images)])
    unchanged = torch.tensor([torch.equal(o, i) for o, i in zip(out, images)])
    assert bool((flipped | unchanged).all())
    assert 20 <= int(flipped.sum()) <= 65  # about 10 % of 400


def test_torchvision_switches_draw_per_image_and_repeat_per_seed():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    first, again = augment("rrc:0.2,jitter:0.3,autoaugment", images), augment("rrc:0.2,jitter:0.3,autoaugment", images)
    assert torch.equal(first, again)
    assert first.shape == images.shape and first.dtype == torch.uint8
    # the same image repeated gets different outputs: parameters are drawn per image
    same = images[:1].repeat(8, 1, 1, 1)
    out = augment("rrc:0.2", same)
    assert len({o.sum().item() for o in out}) > 1
    # and the global stream is untouched
    state = torch.get_rng_state()
    augment("jitter:0.3", images)
    assert torch.equal(state, torch.get_rng_state())


def test_report004_preset_expands():
    assert [n for n, _ in parse_augment("report004")] == ["crop", "hflip", "jitter", "autoaugment", "erasing"]
    with pytest.raises(UsageError):
        parse_augment("crop:4,sparkle")


def test_toml_config_and_overrides(tmp_path, capsys):
    spec = tmp_path / "run.toml"
    spec.write_text('model = "resnet20"\nlrs = [0.1, 0.05]\noptimizer = "sgd"\ndataset = "synthetic"\n'
                    'train-subset = 128\nbatch_size = 64\nepochs = 1\nwidth = 0.25\n')
    values = load_config_file(spec)
    assert RunConfig(**values).lrs == (0.1, 0.05) and values["train_subset"] == 128
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--config", str(spec), "--epochs", "2", "--out", str(tmp_path / "r.h5"), "--quiet"])
    assert exit_info.value.code == 0
    with h5py.File(tmp_path / "r.h5") as f:
        assert f["epoch/test_acc"].shape == (2, 2)  # the flag overrode the file's epochs
        assert f.attrs["model"] == "resnet20"


@pytest.mark.parametrize("text,match", [('modle = "vgg"', "modle"), ("epochs = 'x'", "epochs"), ("epochs = [", "TOML")])
def test_bad_toml_names_the_file_and_key(tmp_path, text, match):
    spec = tmp_path / "bad.toml"
    spec.write_text(text)
    with pytest.raises(UsageError, match=match) as err:
        load_config_file(spec)
    assert "bad.toml" in str(err.value)


def test_schedule_label_smoothing_and_early_stopping_are_recorded(tmp_path, tiny_config):
    config = tiny_config(model="resnet20", width=0.25, optimizer="sgd", lrs=(0.05, 1e-9), epochs=4,
                         schedule="step", step_size=2, gamma=0.5, label_smoothing=0.1, patience=1, min_delta=0.5)
    path = train(config, tmp_path / "r.h5", progress=False)
    with h5py.File(path) as f:
        lr = f["epoch/lr"][...]
        stopped = f["stopped_epoch"][...]
        # min_delta 0.5 can never be met: every run stops after its first epoch without gain (epoch 2)
        assert stopped.tolist() == [2, 2]
        assert lr.shape == (2, 2) and np.allclose(lr[0], [0.05, 0.05])
        assert f["train/loss"].shape[1] == 2 * 8
        assert "stopped early" in f.attrs["message"]
        assert np.all(f["epoch/best_epoch"][...] >= 1)


@pytest.mark.slow
def test_resnet_on_real_cifar(tmp_path, cifar_root):
    config = RunConfig(model="resnet20", lrs=(0.1, 0.02), optimizer="sgd", data_root=str(cifar_root),
                       train_subset=512, epochs=2, batch_size=64, augment="crop-flip", schedule="cosine",
                       device="cpu")
    path = train(config, tmp_path / "resnet20.h5", progress=False)
    with h5py.File(path) as f:
        loss = f["train/loss"][...]
        assert loss.shape == (2, 16) and np.all(np.isfinite(loss))
        assert abs(loss[0, 0] - np.log(10)) < 1.0  # starts near chance
        assert f.attrs["parameters"] == 269_722  # He et al.'s 0.27M
        assert np.all(f["epoch/test_acc"][...] > 0.05)
