"""Barriers between pairs of a spec's models, as tasks for an executor (this process or Ray workers).

A branching spec pairs each cell's two children of one parent seed (Frankle et al. 2020's instability);
any other spec pairs the seeds of a cell two by two, 0 with 1, 2 with 3, ... (Entezari et al. 2022,
Ainsworth et al. 2023). Each pair is `connectivity.connect` from the first model to the second on the
cell's training and test images (BatchNorm recomputed at every point): `barrier` measures the straight
line, `barrier_aligned` also the line after weight matching. The numbers go into the first model's row of
the measures table (the second model's row stays empty, so a pair counts once); each path is written to
`pairs/<row>.h5` beside the table, a path file `landscape plot` and `info` read.

Columns: `barrier_<metric>` (training images) and `barrier_test_<metric>` (test images) for the loss and the
accuracy drop on the line; `aligned_barrier_...` after matching; `barrier_reduction_loss` and
`barrier_reduction_test_loss` = the line's loss barrier minus the aligned one.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from landscape.ablations.final_model import cached_model
from landscape.ablations.results import collect
from landscape.ablations.spec import Spec
from landscape.engine.batches import BatchSet
from landscape.engine.measures import MeasureOptions
from landscape.errors import UsageError

PAIR_GROUPS = {"barrier": "none", "barrier_aligned": "weights"}  # measure group -> connect's alignment
POINTS = 11  # points on each path, its two ends included


@dataclass
class PairTask:
    """Connect model A to model B (same skeleton) on the cell's images; picklable."""

    module: nn.Module
    state_a: dict
    state_b: dict
    batches: BatchSet
    test_batches: BatchSet
    align: str
    points: int = POINTS
    device: str = "auto"

    def __call__(self):
        from landscape.connectivity.connect import connect

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" \
            else torch.device(self.device)
        model = copy.deepcopy(self.module)
        model.load_state_dict(self.state_a, assign=True)
        return connect(model.to(device), self.state_b, self.batches.to(device), test_data=self.test_batches.to(device),
                       align=self.align, points=self.points, device=device)


@dataclass
class Pair:
    """One pair: the row its numbers go to, what the other model is, the column that says it is done, the task."""

    row: str
    other: str
    column: str
    task: PairTask


def pair_values(connection) -> dict[str, float]:
    """The measures table's columns from one `Connection`."""
    out = {}
    for path, prefix in (("line", "barrier"), ("aligned_line", "aligned_barrier")):
        for split, middle in (("train", ""), ("test", "_test")):
            for metric, value in connection.barriers.get(path, {}).get(split, {}).items():
                out[f"{prefix}{middle}_{metric}"] = float(value)
    for middle in ("", "_test"):
        if f"aligned_barrier{middle}_loss" in out:
            out[f"barrier_reduction{middle}_loss"] = out[f"barrier{middle}_loss"] - out[f"aligned_barrier{middle}_loss"]
    return out


def pair_tasks(spec: Spec, preset: str, root: Path, options: MeasureOptions, images: int, test_images: int,
               device: torch.device, on_ray: bool, data_root: str | None = None,
               cache: dict | None = None) -> list[Pair]:
    """Every pair of the spec's finished models (see the module docstring); models already in `cache` are not read
    again."""
    from landscape.files.run_file import read_run

    align = "weights" if "barrier_aligned" in options.measures else "none"
    column = "aligned_barrier_test_loss" if align == "weights" else "barrier_test_loss"
    pairs = []
    for row in collect(spec, preset, root):
        runs = sorted(row.runs, key=lambda run: int(run.config.get("seed", 0)))
        if spec.branching:
            twins = [spec.twin_path(root, preset, row.cell, int(run.config.get("seed", 0))) for run in runs]
            couples = [(run, read_run(twin)) for run, twin in zip(runs, twins) if twin.is_file()]
            couples = [(a, b) for a, b in couples if b.status == "complete"]
        else:
            couples = list(zip(runs[0::2], runs[1::2]))
        for run_a, run_b in couples:
            seeds = [int(run.config.get("seed", 0)) for run in (run_a, run_b)]
            try:
                a = cached_model(run_a, images, test_images, device, data_root, cache)
                b = cached_model(run_b, images, test_images, device, data_root, cache)
            except UsageError as exc:
                raise UsageError(f"cell {row.cell.label} (seeds {seeds[0]}, {seeds[1]}): {exc}") from None
            other = f"{run_b.path.name}" if spec.branching else f"{row.cell.label} seed{seeds[1]}"
            pairs.append(Pair(f"{row.cell.label} seed{seeds[0]}", other, column,
                              PairTask(a.module, {**a.params, **a.buffers}, {**b.params, **b.buffers}, a.batches,
                                       a.test_batches, align, device="auto" if on_ray else str(device))))
    return pairs
