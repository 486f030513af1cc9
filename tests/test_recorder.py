"""One's own training loop: the Recorder and the Lightning callback write files every command reads, record the
loop's own losses, and leave training bit-identical."""
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import landscape
from landscape.errors import UsageError
from tests.conftest import REPO
from tests.test_cli import landscape as run_cli

MODEL_DEFS = REPO / "tests" / "model_defs.py"


def cifar_batches(root, count=256, batch=32):
    from tests.test_api import cifar_pair

    x, y = cifar_pair(root, count)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, count, batch)]


def train(batches, path=None, epochs=2, **options):
    """A plain loop (SGD with momentum, a CNN with BatchNorm and dropout); the Recorder only if `path` is given."""
    sys.path.insert(0, str(REPO))
    from tests.model_defs import small_cnn

    torch.manual_seed(5)
    model = small_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    recorder = landscape.Recorder(path, model, optimizer, **options) if path else None
    losses = []
    for _ in range(epochs):
        model.train()
        for x, y in batches:
            optimizer.zero_grad()
            outputs = model(x)
            loss = F.cross_entropy(outputs, y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if recorder:
                recorder.step(loss, (x, y), outputs=outputs)
        if recorder:
            model.eval()
            with torch.no_grad():
                test = [F.cross_entropy(model(x), y).item() for x, y in batches[:2]]
            recorder.epoch(test_loss=float(np.mean(test)), test_acc=0.1)
    if recorder:
        recorder.close()
    return losses, model


def test_training_is_bit_identical_with_the_recorder_and_its_file_holds_the_loop(cifar_root, tmp_path, capsys):
    batches = cifar_batches(cifar_root)
    plain_losses, plain = train(batches)
    losses, model = train(batches, tmp_path / "mine.h5", probe_every=3, sharpness_every=4,
                          sharpness_data=batches[0], sharpness_check_every=2, dataset="cifar10",
                          data_root=str(cifar_root), batch_size=32, log_every=5)
    assert losses == plain_losses
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), model.state_dict().values()))
    run = landscape.read_run(tmp_path / "mine.h5")
    assert run.status == "complete" and run.epochs_done == 2 and run.steps == 16
    assert np.array_equal(run.train_loss[0], np.asarray(losses, dtype=np.float32))  # the loop's own losses
    assert list(run.probe["step"]) == [0, 3, 6, 9, 12, 15] and np.isfinite(run.probe["beta"]).all()
    assert list(run.sharpness["step"]) == [0, 4, 8, 12] and list(run.sharpness["check_step"]) == [0, 8]
    with h5py.File(tmp_path / "mine.weights.h5") as f:
        assert sorted(f["snapshots"]) == ["epoch_0000", "epoch_0001", "epoch_0002"]
        final = {k: v[0] for k, v in f["snapshots/epoch_0002"].items()}
    assert all(np.array_equal(final[k], v.numpy()) for k, v in model.state_dict().items())
    for command in (("info",), ("plot", "--out", tmp_path / "fig"),
                    ("report", "--out", tmp_path / "report.html"),
                    ("surface", "--model-def", f"{MODEL_DEFS}:small_cnn", "--grid", "-1:1:3", "--images", "64",
                     "--device", "cpu", "--quiet"),
                    ("hessian", "--model-def", f"{MODEL_DEFS}:small_cnn", "--epoch", "all", "--top-k", "1",
                     "--max-steps", "6", "--images", "64", "--device", "cpu", "--quiet")):
        code, out, err = run_cli(command[0], tmp_path / "mine.h5", *command[1:], capsys=capsys)
        assert code in (0, None), (command, err)
    assert landscape.read_hessian(tmp_path / "mine_hessian.h5").arrays["eigenvalues"].shape == (1, 3, 1)
    code, out, _ = run_cli("info", tmp_path / "mine.h5", capsys=capsys)
    assert "Recorder" in out and "checked against 2 cold Lanczos runs" in out


def test_the_probe_of_the_recorder_is_along_the_update_the_optimizer_took(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with landscape.Recorder(tmp_path / "p.h5", model, optimizer, probe_every=1, probe_multipliers=(1.0,)) as rec:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        rec.step(loss, (x, y))
    run = landscape.read_run(tmp_path / "p.h5")
    after = dict(model.named_parameters())
    step = torch.sqrt(sum(((after[n].detach() - before[n]) ** 2).sum() for n in before))
    assert run.probe["distance"][0, 0, 0] == pytest.approx(float(step), rel=1e-5)
    # at multiplier 1 the probe point is the new weights: its loss is the loss there
    new_loss = F.cross_entropy(model(x), y).item()
    assert run.probe["loss"][0, 0, 0] == pytest.approx(new_loss, rel=1e-5)


def test_bad_recorder_inputs_are_one_line_exceptions(tmp_path):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    (tmp_path / "taken.h5").write_text("x")
    for call, expected in [
        (lambda: landscape.Recorder(tmp_path / "a.h5", "model", optimizer), "torch.nn.Module"),
        (lambda: landscape.Recorder(tmp_path / "a.h5", model, [optimizer, optimizer]), "one optimizer per model"),
        (lambda: landscape.Recorder(tmp_path / "a.h5", model, optimizer, sharpness_every=5), "sharpness_data"),
        (lambda: landscape.Recorder(tmp_path / "taken.h5", model, optimizer), "already exists"),
    ]:
        with pytest.raises(UsageError, match=expected):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.h5"]


def test_the_lightning_callback_records_a_fit(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from landscape.integrations.lightning import LandscapeCallback

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, index):
            x, y = batch
            return F.cross_entropy(self(x), y)

        def validation_step(self, batch, index):
            x, y = batch
            logits = self(x)
            self.log("val_loss", F.cross_entropy(logits, y))
            self.log("val_acc", (logits.argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 6), torch.randint(0, 3, (64,)))
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[LandscapeCallback(tmp_path / "fit.h5", probe_every=2)])
    trainer.fit(Tiny(), loader, loader)
    run = landscape.read_run(tmp_path / "fit.h5")
    assert run.status == "complete" and run.steps == 8 and run.epochs_done == 2
    assert np.isfinite(run.train_loss).all() and np.isfinite(run.epoch["test_acc"]).all()
    assert list(run.probe["step"]) == [0, 2, 4, 6]
