"""Running the cells of ablation specs: only those (and seeds) whose run files are missing or incomplete.

Each cell and seed is one `landscape run` into `<root>/<spec>/<preset>/<cell>_seed<k>.h5`. A
complete file is left alone; an incomplete one (interrupted, failed, killed) is resumed from its
checkpoint; a missing one is trained. A failing cell is reported and the others go on. With
`jobs` > 1 cells run in parallel processes (CPU), each with its share of the cores; on a GPU they
run one after another.

A branching spec (a `branch_epoch` axis) runs in two waves: first one parent per seed
(`parent_seed<k>.h5`, keeping its state at every kept epoch, and after the step each fractional branch epoch
falls on), then two children per cell and seed, each branched from its parent at the cell's epoch under its own
data order (`training/branch.py`).
"""
from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import h5py

from tqdm import tqdm

from landscape.ablations.spec import Spec
from landscape.training.config import RunConfig
from landscape.errors import LandscapeError
from landscape.progress import bar

DEFAULT_ROOT = Path("artifacts/ablations")


@dataclass
class Origin:
    """Where a child run starts: its parent's run file, the epoch (a fraction: the step it falls on), and the
    child's data order."""

    parent: Path
    epoch: int | float
    data_seed: int


@dataclass
class Job:
    """One run file to produce (a child of a parent run when `origin` is set)."""

    spec: str
    cell: str
    seed: int
    path: Path
    config: RunConfig
    origin: Origin | None = None
    keep_epochs: tuple[float, ...] = ()  # a parent: the fractional epochs to keep its state after (as steps)


def cell_status(path: Path) -> str:
    """'missing', 'complete', 'incomplete' (resumable) or 'damaged', read with h5py alone."""
    if not path.exists():
        return "missing"
    try:
        with h5py.File(path, "r") as f:
            return "complete" if f.attrs.get("status") == "complete" else "incomplete"
    except Exception:
        return "damaged"


def plan(spec: Spec, preset: str, seeds: int, root: Path, data_root: str | None = None) -> list[Job]:
    """Every run file the spec needs under `preset` (cells sharing a file, as horizons do, listed once)."""
    if spec.branching:
        return branching_plan(spec, preset, seeds, root, data_root)
    jobs, seen = [], set()
    for cell in spec.cells:
        for seed in range(seeds):
            path = spec.result_path(root, preset, cell, seed)
            if path in seen:
                continue
            seen.add(path)
            config = spec.config(cell, preset, seed)
            if data_root is not None:
                config = replace(config, data_root=str(data_root))
            jobs.append(Job(spec.name, cell.label, seed, path, config))
    return jobs


def branching_plan(spec: Spec, preset: str, seeds: int, root: Path, data_root: str | None) -> list[Job]:
    """The parents (one per seed), then two children per cell and seed."""
    from landscape.ablations.spec import child_data_seed

    extra = {} if data_root is None else {"data_root": str(data_root)}
    fractions = tuple(sorted({epoch for epoch in (c.branch_epochs[preset] for c in spec.cells)
                              if isinstance(epoch, float)}))
    jobs = [Job(spec.name, "parent", seed, spec.parent_path(root, preset, seed),
                replace(spec.config(spec.cells[0], preset, seed), **extra), keep_epochs=fractions)
            for seed in range(seeds)]
    for cell in spec.cells:
        for seed in range(seeds):
            parent = jobs[seed]
            for child, path in enumerate((spec.result_path(root, preset, cell, seed),
                                          spec.twin_path(root, preset, cell, seed))):
                data_seed = child_data_seed(seed, child)
                jobs.append(Job(spec.name, f"{spec.axes[0]}={cell.label}, child {child}", seed, path,
                                replace(parent.config, data_seed=data_seed, branch_points=False, snapshot_every=0,
                                        branch_steps=()),
                                Origin(parent.path, cell.branch_epochs[preset], data_seed)))
    return jobs


def job_waves(jobs: list[Job]) -> list[list[Job]]:
    """The jobs in the order they can run: runs from scratch first, then the children of those runs."""
    return [wave for wave in ([j for j in jobs if j.origin is None], [j for j in jobs if j.origin is not None])
            if wave]


def run_in_waves(jobs: list[Job], run_wave) -> dict[str, int]:
    """`run_wave(jobs) -> counts` for each wave (job_waves) in turn, counts summed; a wave with a failed, interrupted
    or unstarted job ends the command before the next (its children would fail)."""
    counts: dict[str, int] = {}
    waves = job_waves(jobs) or [[]]
    for index, wave in enumerate(waves):
        for key, count in run_wave(wave).items():
            counts[key] = counts.get(key, 0) + count
        later = sum(len(w) for w in waves[index + 1:])
        if later and (counts.get("failed") or counts.get("interrupted") or "not started" in counts):
            counts["not started"] = counts.get("not started", 0) + later  # their parents did not all finish
            break
    return counts


def run_job(job: Job, threads: int | None = None, on_checkpoint=None, download: bool = False) -> str:
    """Train or resume one job; returns 'trained', 'resumed' or 'skipped'. Raises on failure.

    `on_checkpoint(path, epochs_done)` is called after every epoch's checkpoint."""
    status = cell_status(job.path)
    if status == "complete":
        return "skipped"
    if status == "damaged":
        raise LandscapeError(f"{job.path} is damaged; delete it to train the cell again")
    from landscape.training.runner import resume, train

    config = replace(job.config, threads=threads or job.config.threads)
    if status == "incomplete":
        resume(job.path, progress=False, on_checkpoint=on_checkpoint, download=download)  # with the run's threads
        return "resumed"
    if job.origin is not None:
        from landscape.training.branch import branch, branch_point_of

        if cell_status(job.origin.parent) != "complete":
            raise LandscapeError(f"its parent {job.origin.parent} has not finished; rerun the command to train it")
        branch(job.origin.parent, job.path, **branch_point_of(job.origin.parent, job.origin.epoch),
               data_seed=job.origin.data_seed, progress=False, download=download, on_checkpoint=on_checkpoint,
               options={name: getattr(config, name) for name in ("threads", "device", "branch_points", "snapshot_every",
                                                                 "branch_steps")})
        return "branched"
    if job.keep_epochs:
        from landscape.training.branch import steps_of_epochs

        config = replace(config, branch_steps=tuple(sorted(set(config.branch_steps)
                                                           | set(steps_of_epochs(config, job.keep_epochs, download)))))
    train(config, job.path, progress=False, on_checkpoint=on_checkpoint, download=download)
    return "trained"


def threads_per_cell(threads: int | str, workers: int) -> int:
    """Each of `workers` cells' threads: N as given, else the cores this process may use (or, with 'auto', those
    other processes do not keep busy now) shared out."""
    from landscape.machine import idle_cores, usable_cores

    if threads and threads != "auto":
        return threads
    return max(1, (idle_cores() if threads == "auto" else usable_cores()) // workers)


def _worker(job: Job, threads: int, download: bool = False) -> tuple[str, str | None]:
    try:
        return run_job(job, threads, download=download), None
    except LandscapeError as exc:
        return "failed", str(exc)
    except Exception as exc:  # a bug in one cell must not stop the others; say what it was
        return "failed", f"{type(exc).__name__}: {exc}"


STOPPED_HINT = "its checkpoint is saved; rerun the same `landscape ablate run` command to go on"


def run_jobs(jobs: list[Job], workers: int = 1, report=print, progress: bool = True, threads: int = 0,
             download: bool = False) -> dict[str, int]:
    """Run the jobs (in `workers` processes if > 1); report one line per job; return counts per outcome.

    The first SIGINT or SIGTERM stops the whole command: the running cells save their checkpoints and no further
    cell starts (counted as 'interrupted')."""
    from landscape.stopping import StopSignals

    counts = {"trained": 0, "branched": 0, "resumed": 0, "skipped": 0, "failed": 0, "interrupted": 0}
    todo = [job for job in jobs if cell_status(job.path) != "complete"]
    counts["skipped"] = len(jobs) - len(todo)
    if any(job.config.device == "cuda" for job in todo):
        workers = 1  # one GPU: cells one after another
    workers = max(1, min(workers, len(todo)))

    cells = bar(len(todo), "cells", "cell", progress)

    def record(job: Job, outcome: str, error: str | None, stopped: bool) -> None:
        if stopped and outcome == "failed":
            outcome, error = "interrupted", STOPPED_HINT
        counts[outcome] += 1
        where = f"{job.spec} / {job.cell} / seed {job.seed}"
        cells.update(1)
        report(f"{outcome:>8}  {where}" + (f": {error}" if error else f"  -> {job.path}"))

    with StopSignals() as signals:
        if workers == 1:
            for job in todo:
                record(job, *_worker(job, threads, download), signals.received is not None)
                if signals.received is not None:
                    break
        else:
            share = threads_per_cell(threads, workers)
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(_worker, job, share, download): job for job in todo}
                for future in as_completed(futures):
                    if signals.received is not None:
                        for other in futures:
                            other.cancel()  # cells not started yet stay missing
                    if future.cancelled():
                        continue
                    record(futures[future], *future.result(), signals.received is not None)
    cells.close()
    if signals.received is not None:
        left = len(todo) - sum(counts[k] for k in ("trained", "branched", "resumed", "failed", "interrupted"))
        counts["not started"] = left
        report(f"stopped by {signals.name}: {left} cell(s) not started; the finished cells and the running cells' "
               f"checkpoints are kept: rerun the same command to go on")
    return counts


def print_err(line: str) -> None:
    try:
        tqdm.write(line, file=sys.stderr)  # above a live bar, or a plain line
    except AttributeError:  # tqdm's class lock is gone while another thread closes the last bar (seen at Ctrl-C)
        sys.stderr.write(line + "\n")
