"""A PyTorch Lightning callback on the Recorder: `Trainer(callbacks=[LandscapeCallback("runs/mine.h5", ...)])`.

Needs the optional extra `pip install -e '.[lightning]'`. Every optimizer step (`trainer.global_step`, so
gradient accumulation counts steps, not batches) is recorded with the loss `training_step` returned; at the
end of each training epoch the validation numbers the module logged (`val_loss`, `val_acc` by default) go
into the run file as the epoch's test loss and accuracy; the file is closed when fitting ends (`failed` if
it raised). The keyword arguments are the Recorder's (probes, sharpness, snapshots, loss or closure). What it
records also goes to the trainer's loggers (`integrations.tracking`), unless `log=` says otherwise.
"""
from __future__ import annotations

from pathlib import Path

from landscape.errors import UsageError
from landscape.integrations.tracking import lightning_log

try:
    import lightning.pytorch as pl
except ImportError:  # the older package name
    try:
        import pytorch_lightning as pl
    except ImportError:
        raise UsageError("LandscapeCallback needs PyTorch Lightning: pip install -e '.[lightning]' "
                         "(or pip install lightning)") from None


def loss_of(outputs):
    """The loss a `training_step` returned: a tensor, or a dict with 'loss'."""
    if isinstance(outputs, dict):
        return outputs.get("loss")
    return outputs


class LandscapeCallback(pl.Callback):
    """Records a Lightning fit into a run file (see the module docstring)."""

    def __init__(self, path: str | Path, *, test_loss_key: str = "val_loss", test_acc_key: str = "val_acc",
                 **recorder_options):
        super().__init__()
        self.path, self.options = Path(path), recorder_options
        self.test_loss_key, self.test_acc_key = test_loss_key, test_acc_key
        self.recorder = None
        self.last_step = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        from landscape.integrations.recorder import Recorder

        if not trainer.optimizers:
            raise UsageError("LandscapeCallback: the LightningModule configured no optimizer")
        optimizer = trainer.optimizers[0]
        optimizer = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps the torch one
        options = dict(self.options)
        if "log" not in options and trainer.loggers:  # what it records also goes to the trainer's own loggers
            options["log"] = lightning_log(trainer)
        self.recorder = Recorder(self.path, pl_module, optimizer, epochs=trainer.max_epochs, **options)
        self.last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.recorder is None or trainer.global_step == self.last_step:
            return  # no optimizer step on this batch (gradient accumulation)
        self.last_step = trainer.global_step
        loss = loss_of(outputs)
        if loss is None:
            raise UsageError("LandscapeCallback: training_step returned no loss (return it, or a dict with 'loss')")
        self.recorder.step(loss, batch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.recorder is None:
            return
        metrics = trainer.callback_metrics
        value = lambda key: float(metrics[key]) if key in metrics else None  # noqa: E731
        self.recorder.epoch(test_loss=value(self.test_loss_key), test_acc=value(self.test_acc_key))

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.recorder is not None:
            self.recorder.close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self.recorder is not None:
            interrupted = isinstance(exception, KeyboardInterrupt)
            self.recorder.close("interrupted" if interrupted else "failed",
                                f"{type(exception).__name__}: {' '.join(str(exception).split())[:200]}")
