"""What the integrations send to an experiment tracker: one `log(name, value, step)` call per scalar (no torch).

`log` is any callable of (name, value, step): TensorBoard's `SummaryWriter.add_scalar`, a function around
`wandb.log`, or the Lightning loggers (`lightning_log`). Values are sent when they reach the host anyway (once
per epoch, as the run file is written), so tracking adds no host sync to the training loop. Names, with
`/lr=RATE` appended when a file records several rates:
- `landscape/loss`: the training loss of every step;
- `landscape/probe/loss_range`, `landscape/probe/gradient_predictiveness`, `landscape/probe/beta`: per probe,
  max - min of the loss over the step multipliers, max ||grad(p) - grad(w)||, and Santurkar's beta;
- `landscape/sharpness`: the top Hessian eigenvalue per measurement, and `landscape/sharpness_threshold`, the
  stability threshold it is compared with (2/lr for SGD, (2 + 2b)/lr with momentum b; none for Adam-family).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from landscape.views.analysis import stability_threshold

Log = Callable[[str, float, int], object]


def send_epoch(log: Log, lrs: list[float], config: dict, first_step: int, losses: np.ndarray,
               probes: dict | None, sharpness: dict | None) -> None:
    """Send one epoch's record: step losses [R, S] from `first_step`, probes and sharpness as the run file has
    them (`training.records`)."""
    def name(base: str, run: int) -> str:
        return base if len(lrs) == 1 else f"{base}/lr={lrs[run]:g}"

    for run in range(len(lrs)):
        for offset, value in enumerate(losses[run]):
            log(name("landscape/loss", run), float(value), first_step + offset)
        if probes is not None and probes.get("loss") is not None and len(probes["step"]):
            for p, step in enumerate(probes["step"]):
                loss = probes["loss"][run, p]
                log(name("landscape/probe/loss_range", run), float(np.max(loss) - np.min(loss)), int(step))
                log(name("landscape/probe/gradient_predictiveness", run), float(np.max(probes["grad_dist"][run, p])),
                    int(step))
                log(name("landscape/probe/beta", run), float(probes["beta"][run, p]), int(step))
        if sharpness is not None and "top" in sharpness and len(sharpness["step"]):
            threshold = stability_threshold(config, lrs[run])
            for m, step in enumerate(sharpness["step"]):
                log(name("landscape/sharpness", run), float(sharpness["top"][run, m, 0]), int(step))
                if threshold:
                    log(name("landscape/sharpness_threshold", run), float(threshold), int(step))


def lightning_log(trainer) -> Log:
    """A `log` that sends to every logger of a Lightning trainer (TensorBoard, CSV, W&B... as configured)."""
    def log(name: str, value: float, step: int) -> None:
        for logger in trainer.loggers:
            logger.log_metrics({name: value}, step=step)

    return log
