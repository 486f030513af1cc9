"""What a training loop records and how it reaches the host: step losses in blocks (never one sync per step),
probes and sharpness measurements gathered per epoch into the run file's arrays. Shared by `landscape run`
and the Recorder."""
from __future__ import annotations

import numpy as np
import torch

from landscape.files.run_file import PROBE_FIELDS


class StepLosses:
    """Step losses on their way to the host: stacked in blocks, copied without waiting, read when landed.

    On CUDA each block is copied into pinned memory with `non_blocking=True` and an event marks its
    arrival, so the training loop never waits for the GPU inside an epoch; `landed()` hands over the
    blocks whose copy has finished, `drain()` waits for the rest (at the epoch's end). On CPU the
    copies are immediate.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: list[torch.Tensor] = []
        self.in_flight: list[tuple[torch.Tensor, torch.cuda.Event | None]] = []

    def add(self, losses: torch.Tensor) -> None:
        self.pending.append(losses)

    def send(self) -> None:
        """Start copying the pending steps to the host as one [R, k] block."""
        if not self.pending:
            return
        block = torch.stack(self.pending, dim=1)
        self.pending.clear()
        host = torch.empty(block.shape, dtype=block.dtype, pin_memory=self.cuda)
        host.copy_(block, non_blocking=self.cuda)
        event = torch.cuda.Event() if self.cuda else None
        if event is not None:
            event.record()
        self.in_flight.append((host, event))

    def landed(self) -> list[np.ndarray]:
        """Blocks whose copy has finished, oldest first, as numpy [R, k]."""
        done = []
        while self.in_flight and (self.in_flight[0][1] is None or self.in_flight[0][1].query()):
            done.append(self.in_flight.pop(0)[0].numpy())
        return done

    def drain(self) -> list[np.ndarray]:
        """Send what is pending and wait for every block."""
        self.send()
        for _, event in self.in_flight:
            if event is not None:
                event.synchronize()
        return self.landed()


def probes_to_host(steps: list[int], values: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """An epoch's probes, one device-to-host copy per measure: step [P] and name -> [R, P(, J)]."""
    host = {"step": np.asarray(steps, dtype=np.int64)}
    for name in PROBE_FIELDS:
        host[name] = torch.stack([v[name] for v in values], dim=1).cpu().numpy() if values else None
    return host


def sharpness_to_host(steps: list[int], records: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """An epoch's sharpness measurements as the run file's datasets (one device-to-host copy per kind)."""
    host = {"step": np.asarray(steps, dtype=np.int64)}
    if records:
        host["top"] = torch.stack([r["top"] for r in records], dim=1).cpu().numpy()
        host["hvps"] = torch.stack([r["hvps"] for r in records], dim=1).cpu().numpy()
        checked = [(s, r["check"]) for s, r in zip(steps, records) if "check" in r]
        host["check_step"] = np.asarray([s for s, _ in checked], dtype=np.int64)
        if checked:
            host["check_top"] = torch.stack([c for _, c in checked], dim=1).cpu().numpy()
    return host
