"""A HuggingFace `Trainer` callback on the Recorder: `Trainer(..., callbacks=[HFCallback("runs/bert.h5", ...)])`.

Needs the optional extra `pip install -e '.[hf]'` (transformers). Every optimizer step (`state.global_step`, so
gradient accumulation counts steps, not micro-batches) is recorded with the loss the trainer computed for it:
the mean of its micro-batches' `loss` outputs, read by a forward hook on the model (kept on the device; nothing
of training is changed). Probes and sharpness use the step's last micro-batch and the model's own loss
(`model(**batch).loss`), so dict batches need no closure. Each evaluation's `eval_loss` (and the metric key
you name, default `eval_accuracy`) becomes the epoch's test numbers; an epoch of the run file is the
trainer's epoch. The file is closed when training ends. Keyword arguments are the Recorder's.

A Trainer tells its callbacks nothing when `train()` raises, so a file whose training stopped that way is marked
`failed` (its lock released) when the same callback's next `train()` begins, or when the process exits, whichever
comes first; `callback.close_failed(reason)` does it at once.
"""
from __future__ import annotations

import atexit
import weakref
from pathlib import Path

import torch

from landscape.errors import UsageError

try:
    from transformers import TrainerCallback
except ImportError:
    raise UsageError("HFCallback needs HuggingFace transformers: pip install -e '.[hf]' (or pip install "
                     "transformers)") from None


def model_loss(model, batch):
    """The mean loss a HuggingFace model computes for a batch that holds its labels."""
    out = model(**batch) if isinstance(batch, dict) else model(*batch)
    loss = out["loss"] if isinstance(out, dict) or hasattr(out, "keys") else getattr(out, "loss", None)
    if loss is None:
        raise UsageError("HFCallback: the model returned no loss for a batch (give the batches their labels)")
    return loss


ABANDONED = "trainer.train() ended without on_train_end (an exception or an interrupt inside it)"


def close_at_exit(reference: weakref.ref) -> None:
    callback = reference()
    if callback is not None:
        callback.close_failed("the process ended while training: " + ABANDONED)


class HFCallback(TrainerCallback):
    """Records a `Trainer.train()` into a run file (see the module docstring)."""

    def __init__(self, path: str | Path, *, test_acc_key: str = "eval_accuracy", **recorder_options):
        self.path, self.options, self.test_acc_key = Path(path), recorder_options, test_acc_key
        self.recorder = None
        self.hook = None
        self.micro_losses: list = []
        self.last_batch = None
        self.pending_eval: dict = {}
        self.epoch_open = False  # an epoch ended and waits for the evaluation that follows it
        self.exit_registered = False

    def capture(self, module, args, kwargs, output) -> None:
        """Forward hook: the loss and inputs of each training micro-batch (not of evaluation; probes and sharpness run
        copies of the model without its hooks)."""
        if not module.training or self.recorder is None:
            return
        loss = output.get("loss") if hasattr(output, "get") else getattr(output, "loss", None)
        if loss is not None:
            self.micro_losses.append(loss.detach())
            self.last_batch = dict(kwargs) if kwargs else args

    def close_failed(self, reason: str = ABANDONED) -> None:
        """Mark an unfinished recording `failed` with `reason` and release its lock (nothing if none is open)."""
        if self.recorder is None or self.recorder.closed:
            return
        if self.hook is not None:
            self.hook.remove()
        self.micro_losses, self.pending_eval, self.epoch_open = [], {}, False
        self.recorder.close("failed", reason)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        from landscape.integrations.recorder import Recorder

        self.close_failed()  # an earlier train() of this callback that raised
        if model is None or optimizer is None:
            raise UsageError("HFCallback: the trainer has no model or optimizer yet; attach the callback to a Trainer "
                             "(Trainer(..., callbacks=[HFCallback(...)]))")
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        options = {"closure": model_loss, "epochs": int(args.num_train_epochs) or None,
                   "batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps,
                   **self.options}
        self.recorder = Recorder(self.path, model, optimizer, **options)
        self.hook = model.register_forward_hook(self.capture, with_kwargs=True)
        if not self.exit_registered:
            atexit.register(close_at_exit, weakref.ref(self))
            self.exit_registered = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.recorder is None or not self.micro_losses:
            return
        loss = torch.stack(self.micro_losses).float().mean()
        batch, self.micro_losses = self.last_batch, []
        self.recorder.step(loss, batch)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.pending_eval = dict(metrics or {})
        if self.epoch_open:  # the evaluation at the end of an epoch (eval_strategy="epoch") closes it
            self.close_epoch()

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.recorder is None:
            return
        self.epoch_open = True
        if str(getattr(args, "eval_strategy", "no")).lower().rpartition(".")[2] != "epoch":
            self.close_epoch()  # no evaluation follows: the epoch has the numbers of the last one, if any

    def close_epoch(self) -> None:
        value = lambda key: float(self.pending_eval[key]) if key in self.pending_eval else None  # noqa: E731
        self.recorder.epoch(test_loss=value("eval_loss"), test_acc=value(self.test_acc_key))
        self.pending_eval, self.epoch_open = {}, False

    def on_train_end(self, args, state, control, **kwargs):
        if self.recorder is None:
            return
        if self.epoch_open:
            self.close_epoch()
        self.hook.remove()
        self.recorder.close()
