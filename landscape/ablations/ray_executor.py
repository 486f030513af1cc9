"""Running ablation cells as Ray tasks: a local Ray started for the command, or a cluster by address.

Each cell is one task that trains with the same code path as `landscape run` (`runner.run_job`). The
tasks need no shared filesystem: a task trains in a temporary folder of its node and, after every
epoch's checkpoint and at the end, sends the run file, its checkpoint and its snapshots to a
`ResultStore` actor pinned to the driver's node, which writes them atomically into `--results`. A task
that is retried (its worker or node died) first fetches the cell's latest files from the store and
resumes from the checkpoint. With `shared_results` (storage every node sees) tasks write there directly.
The driver shows one live line of cells done / running (with their epoch) / waiting / failed; Ctrl-C
cancels the tasks and leaves every finished cell and every last checkpoint in place.
"""
from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from landscape.ablations.runner import Job, cell_status, run_job
from landscape.engine.executors import start_ray
from landscape.errors import LandscapeError

RESULT_SUFFIXES = ("", ".ckpt")  # the run file and its checkpoint, beside the snapshots


def files_of(run_path: Path, skip: set[str] | None = None) -> dict[str, bytes]:
    """The run file, its checkpoint, its snapshots and its branch points, by name, as they are now (leaving out
    the names in `skip`: branch points already shipped, which never change)."""
    from landscape.files.weights_file import weights_path
    from landscape.training.checkpoint import branch_point_epochs, branch_point_path, branch_point_steps

    names = [run_path.with_name(run_path.name + suffix) for suffix in RESULT_SUFFIXES] + [weights_path(run_path)]
    names += [branch_point_path(run_path, epoch) for epoch in branch_point_epochs(run_path)]
    names += [branch_point_path(run_path, step=step) for step in branch_point_steps(run_path)]
    return {p.name: p.read_bytes() for p in names if p.exists() and p.name not in (skip or set())}


def make_store(ray):
    """The ResultStore actor class (defined once Ray is imported)."""

    @ray.remote(num_cpus=0)
    class ResultStore:
        """Writes the cells' files into the results folder (the driver's), keeps what each cell is doing."""

        def __init__(self):
            self.state: dict[str, str] = {}

        def started(self, key: str) -> None:
            self.state[key] = "running (epoch 0)"

        def epoch(self, key: str, epochs: int, total: int) -> None:
            self.state[key] = f"running (epoch {epochs}/{total})"

        def save(self, folder: str, files: dict[str, bytes], remove: list[str]) -> None:
            from landscape.files.atomic import write_atomically

            folder = Path(folder)
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in files.items():
                write_atomically(folder / name, lambda buffer, data=data: buffer.write(data))
            for name in remove:
                (folder / name).unlink(missing_ok=True)

        def latest(self, path: str) -> dict[str, bytes]:
            return files_of(Path(path))

        def status(self) -> dict[str, str]:
            return dict(self.state)

    return ResultStore


def cell_task(job: Job, store, shared: bool, threads: int) -> tuple[str, str | None, dict]:
    """One cell on a Ray worker: fetch its latest files, train or resume, ship the files after every epoch.

    Returns (outcome, error, the resources the scheduler gave the task)."""
    import shutil

    import ray

    key = str(job.path)
    resources = ray.get_runtime_context().get_assigned_resources()
    ray.get(store.started.remote(key))
    folder = job.path.parent if shared else Path(tempfile.mkdtemp(prefix="landscape-cell-"))
    local = replace(job, path=folder / job.path.name)
    if not shared:
        for name, data in ray.get(store.latest.remote(key)).items():  # a retry resumes from the last checkpoint
            (folder / name).write_bytes(data)
        if job.origin is not None:  # a child: its parent's run file and the state it branches from
            for name, data in ray.get(store.latest.remote(str(job.origin.parent))).items():
                (folder / name).write_bytes(data)
            local = replace(local, origin=replace(job.origin, parent=folder / job.origin.parent.name))
    sent: set[str] = set()  # branch points shipped already

    def shipped(run_path: Path, epochs: int) -> None:
        if not shared:
            files = files_of(run_path, sent)
            ray.get(store.save.remote(str(job.path.parent), files, []))
            sent.update(name for name in files if name.endswith(".ckpt") and (".epoch_" in name or ".step_" in name))
        ray.get(store.epoch.remote(key, epochs, job.config.epochs))

    try:
        outcome = run_job(local, threads, on_checkpoint=shipped)
        if not shared:
            final = files_of(local.path, sent)
            ray.get(store.save.remote(str(job.path.parent), final,
                                      [job.path.name + ".ckpt"] if job.path.name + ".ckpt" not in final else []))
        return outcome, None, resources
    except LandscapeError as exc:
        return "failed", str(exc), resources
    except Exception as exc:  # a bug in one cell must not stop the others
        return "failed", f"{type(exc).__name__}: {exc}", resources
    finally:
        if not shared:
            shutil.rmtree(folder, ignore_errors=True)


def run_jobs_on_ray(jobs: list[Job], *, address: str | None = None, cpus_per_cell: float = 1.0,
                    gpus_per_cell: float = 0.0, max_retries: int = 3, shared_results: bool = False, report=print,
                    progress: bool = True, init_options: dict | None = None) -> dict[str, int]:
    """Run the jobs as Ray tasks; report one line per finished cell and a live status line; return counts."""
    counts = {"trained": 0, "branched": 0, "resumed": 0, "skipped": 0, "failed": 0}
    todo = [job for job in jobs if cell_status(job.path) != "complete"]
    counts["skipped"] = len(jobs) - len(todo)
    if not todo:
        return counts
    ray, started = start_ray(address, init_options)
    pending: dict = {}
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        store = make_store(ray).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)).remote()
        threads = max(1, int(cpus_per_cell))
        task = ray.remote(cell_task).options(num_cpus=cpus_per_cell, num_gpus=gpus_per_cell, max_retries=max_retries,
                                             retry_exceptions=False)
        pending = {task.remote(job, store, shared_results, threads): job for job in todo}
        drive_tasks(ray, pending, store, counts, report, progress and sys.stderr.isatty())
    except KeyboardInterrupt:
        for ref in list(pending):
            ray.cancel(ref, force=True)
        report(f"interrupted: {len(pending)} cell(s) cancelled; finished cells and the last checkpoints are kept, "
               f"rerun the same command to go on")
        raise
    finally:
        if started:
            ray.shutdown()
    return counts


def drive_tasks(ray, pending: dict, store, counts: dict, report, live: bool) -> None:
    """Wait for the tasks, report each as it ends, keep a live line of what the others do."""
    total = len(pending)
    last = ""
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
        for ref in done:
            job = pending.pop(ref)
            try:
                outcome, error, resources = ray.get(ref)
            except Exception as exc:  # retries exhausted: the worker or node kept dying
                outcome, error, resources = "failed", f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}", {}
            counts[outcome] += 1
            where = f"{job.spec} / {job.cell} / seed {job.seed}"
            given = ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()))
            if live:
                sys.stderr.write("\r\033[K")
            report(f"{outcome:>8}  {where}" + (f": {error}" if error else f"  -> {job.path}") +
                   (f"  [{given}]" if given else ""))
        state = ray.get(store.status.remote())
        running = [state[str(job.path)] for job in pending.values() if str(job.path) in state]
        finished = total - len(pending)
        line = (f"cells: {finished - counts['failed']} done, {len(running)} running"
                + (f" ({', '.join(s.split('(')[1].rstrip(')') for s in running)})" if running else "")
                + f", {len(pending) - len(running)} waiting, {counts['failed']} failed")
        if live and line != last:
            sys.stderr.write(f"\r{line}\033[K")
            sys.stderr.flush()
            last = line
    if live:
        sys.stderr.write("\r\033[K")
    report(f"cells: {total - counts['failed']} done, 0 running, 0 waiting, {counts['failed']} failed")
