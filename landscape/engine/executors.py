"""Where chunks of work run: this process, local processes, or a pool of Ray actors on one machine or a cluster.

Two kinds of work: grid points of a surface (`map_points(evaluator, chunks, on_result, should_stop)`, each
chunk a pass of points evaluated by a `surface.PointEvaluator`) and independent tasks such as one Hessian
measurement per (run, snapshot) (`run_tasks(tasks, on_result, should_stop)`, each task a picklable callable).
Results come back to the caller's process in the order they land; the caller alone writes files.

`Processes` runs independent tasks in `workers` spawned processes of this machine, each with `threads` torch threads
(on a CPU, two one-thread processes do more per second than one two-thread process), so a task's values are those of
this process with the same threads. `RayExecutor` starts `workers` actors, each with `cpus_per_worker` CPUs (its
torch threads) and `gpus_per_worker` GPUs (fractions pack several on one GPU). Each actor receives the evaluator
once through the object store (model skeleton, centre, directions, batches) and then evaluates tasks of whole
passes, so its values are those of this process: bit-identical on CPU with the same threads, within float rounding
on GPUs. An actor or node that dies has its task re-queued on another actor and is replaced; `should_stop` (Ctrl-C)
cancels what is in flight and keeps what has landed.
"""
from __future__ import annotations

import math
import os
import signal
import socket
from typing import Callable

import numpy as np

from landscape.errors import RunFailed, UsageError
from landscape.options import check_gpus, in_range, non_negative, option_name

KILL_WORKER_ENV = "LANDSCAPE_TEST_KILL_WORKER"  # fault injection for the tests: MARKER:N


class InProcess:
    """Everything in this process, one chunk after another."""

    threads = None

    def __enter__(self) -> "InProcess":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def map_points(self, evaluator, chunks: list[np.ndarray], on_result: Callable, should_stop: Callable) -> None:
        for chunk in chunks:
            if should_stop():
                return
            on_result(chunk, evaluator.evaluate(chunk))

    def run_tasks(self, tasks: list[Callable], on_result: Callable, should_stop: Callable) -> None:
        for index, task in enumerate(tasks):
            if should_stop():
                return
            on_result(index, task())


def import_ray():
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install -e '.[ray]' (or pip install ray)") from None
    return ray


def check_address(address: str | None) -> None:
    """A cluster address must be host:port, ray://host:port or `auto`, and answer there; refuse quickly, in one line."""
    if address in (None, "auto"):
        return
    text = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--address {address!r} is not host:port (e.g. 127.0.0.1:6379), ray://host:port or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as exc:
        raise UsageError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one with "
                         f"`ray start --head`, or leave --address out to use a local Ray") from None


def start_ray(address: str | None, init_options: dict | None = None):
    """Connect to the cluster at `address` (`auto`: the running one) or start a local one; return (ray, started)."""
    ray = import_ray()
    check_address(address)
    if ray.is_initialized():
        return ray, False
    import logging

    logging.getLogger("ray").setLevel(logging.ERROR)  # Ray's notices (token auth...) would break our one-line output
    options = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        if address:
            ray.init(address=address, **options)
        else:
            # Ray starts its workers at niceness 15: beside any other work they would get almost no CPU (measured:
            # a local grid 100 times slower beside two busy processes). Ours do the command's work: priority 0.
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(**{**options, **(init_options or {})})
    except ConnectionError as exc:
        raise UsageError(f"--address {address}: {' '.join(str(exc).split())[:160]}") from None
    return ray, True


def ray_test_options() -> dict:
    """Resources declared to a local Ray: LANDSCAPE_RAY_NUM_GPUS lets the tests give a GPU-less machine a GPU
    resource, to check that fractional requests reach the scheduler."""
    gpus = os.environ.get("LANDSCAPE_RAY_NUM_GPUS")
    return {"num_gpus": float(gpus)} if gpus else {}


def maybe_kill_self(done: int) -> None:
    """Fault injection for the tests: with KILL_WORKER_ENV=MARKER:N, the first worker to finish its N-th task
    kills itself by SIGKILL (once: the marker file says it happened)."""
    target = os.environ.get(KILL_WORKER_ENV)
    if not target:
        return
    marker, _, count = target.rpartition(":")
    if done == int(count):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


class PointWorker:
    """A Ray actor's state: one evaluator on its device, set up once; evaluates tasks of whole passes."""

    def __init__(self, evaluator, threads: int, use_gpu: bool):
        import torch

        torch.set_num_threads(threads)
        device = torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")
        self.evaluator = evaluator.to(device)
        self.done = 0

    def evaluate(self, chunks: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        values = [self.evaluator.evaluate(chunk) for chunk in chunks]
        self.done += 1
        maybe_kill_self(self.done)
        return values

    def pid(self) -> int:
        return os.getpid()


def fetch(ray, ref):
    """ray.get, with an error of ours raised in a worker raised here as itself (one line for the user)."""
    from landscape.errors import LandscapeError

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, LandscapeError):
            raise exc.cause from None
        raise


def run_task(task, threads: int):
    """One task in a worker (a local process or a Ray worker), with `threads` torch threads."""
    import torch

    torch.set_num_threads(threads)
    return task()


class Processes:
    """Independent tasks in `workers` local processes, each with `threads` torch threads (module docstring)."""

    def __init__(self, workers: int, threads: int):
        self.workers, self.threads = workers, threads

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def run_tasks(self, tasks: list[Callable], on_result: Callable, should_stop: Callable) -> None:
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from multiprocessing import get_context

        if not tasks:
            return
        with ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)), mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_task, task, self.threads): index for index, task in enumerate(tasks)}
            try:
                for future in as_completed(futures):
                    if should_stop():
                        break
                    on_result(futures[future], future.result())
            finally:  # stopped or failed: tasks not started stay undone
                for future in futures:
                    future.cancel()


class RayExecutor:
    """Chunks and tasks on Ray actors and tasks (see the module docstring).

    `address`: None starts a local Ray for the call (all this machine's cores and GPUs) and stops it after;
    `auto` joins the cluster running here; `host:port` a remote head. `points_per_task` (default: about four
    tasks per worker) is rounded to whole passes."""

    def __init__(self, address: str | None = None, workers: int = 0, cpus_per_worker: float = 1.0,
                 gpus_per_worker: float = 0.0, points_per_task: int = 0, max_retries: int = 3,
                 init_options: dict | None = None, report: Callable[[str], None] | None = None, dash: str = ""):
        self.dash = dash  # how errors name the options: "--" for the command line, "" for Python
        non_negative(self.option("workers"), workers)
        in_range(self.option("cpus-per-worker"), cpus_per_worker, 0, math.inf, low_open=True)
        check_gpus(self.option("gpus-per-worker"), gpus_per_worker)
        non_negative(self.option("points-per-task"), points_per_task)
        non_negative(self.option("max-retries"), max_retries)
        check_address(address)
        self.address, self.workers = address, workers
        self.cpus_per_worker, self.gpus_per_worker = cpus_per_worker, gpus_per_worker
        self.points_per_task, self.max_retries = points_per_task, max_retries
        self.init_options = init_options if init_options is not None else ray_test_options()
        self.report = report or (lambda line: None)
        self.ray, self.started, self.depth = None, False, 0

    def __enter__(self) -> "RayExecutor":
        """Start (or join) Ray and check that one worker fits, before anything is written."""
        if self.depth == 0:
            self.ray, self.started = start_ray(self.address, self.init_options)
            try:
                self.check_fits(self.ray)
            except BaseException:
                self.close()
                raise
        self.depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.close()

    def close(self) -> None:
        if self.started and self.ray is not None:
            self.ray.shutdown()
        self.ray, self.started = None, False

    def option(self, name: str) -> str:
        return option_name(name, self.dash)

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus_per_worker))

    def worker_count(self, ray, tasks: int) -> int:
        """As asked, else as many as the cluster's CPUs (and GPUs) hold, at most one per task."""
        if self.workers:
            return min(self.workers, tasks)
        resources = ray.cluster_resources()
        fit = int(resources.get("CPU", 1) // self.cpus_per_worker)
        if self.gpus_per_worker:
            fit = min(fit, int(resources.get("GPU", 0) // self.gpus_per_worker))
        if fit < 1:
            raise UsageError(f"the Ray cluster cannot hold one worker of {self.cpus_per_worker:g} CPU(s) and "
                             f"{self.gpus_per_worker:g} GPU(s) (it has {resources.get('CPU', 0):g} CPUs, "
                             f"{resources.get('GPU', 0):g} GPUs): lower {self.option('cpus-per-worker')} or "
                             f"{self.option('gpus-per-worker')}")
        return max(1, min(fit, tasks))

    def check_fits(self, ray) -> None:
        resources = ray.cluster_resources()
        if self.cpus_per_worker > resources.get("CPU", 0) or self.gpus_per_worker > resources.get("GPU", 0):
            raise UsageError(f"one worker asks for {self.cpus_per_worker:g} CPU(s) and {self.gpus_per_worker:g} "
                             f"GPU(s), but the Ray cluster has {resources.get('CPU', 0):g} CPUs and "
                             f"{resources.get('GPU', 0):g} GPUs: lower {self.option('cpus-per-worker')} or "
                             f"{self.option('gpus-per-worker')}")

    def map_points(self, evaluator, chunks: list[np.ndarray], on_result: Callable, should_stop: Callable) -> None:
        if not chunks:
            return
        with self:
            ray = self.ray
            per_pass = max(len(c) for c in chunks)
            tasks = self.group(chunks, per_pass, ray)
            count = self.worker_count(ray, len(tasks))
            import torch

            shared = ray.put(evaluator.to(torch.device("cpu")))
            actor = ray.remote(PointWorker).options(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker,
                                                    max_restarts=0)

            def spawn():
                return actor.remote(shared, self.threads, self.gpus_per_worker > 0)

            self.report(f"surface on Ray: {count} worker(s) of {self.cpus_per_worker:g} CPU, "
                        f"{self.gpus_per_worker:g} GPU; {len(tasks)} task(s) of up to "
                        f"{max(sum(len(c) for c in t) for t in tasks)} points")
            idle = [spawn() for _ in range(count)]
            queue = list(range(len(tasks)))
            running: dict = {}
            retries = 0
            while queue or running:
                while queue and idle and not should_stop():
                    worker = idle.pop()
                    index = queue.pop(0)
                    running[worker.evaluate.remote(tasks[index])] = (index, worker)
                if should_stop():
                    for worker in idle + [worker for _, worker in running.values()]:
                        ray.kill(worker)  # its task ends with it (actor tasks cannot be force-cancelled)
                    return
                done, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
                for ref in done:
                    index, worker = running.pop(ref)
                    try:
                        values = fetch(ray, ref)
                    except ray.exceptions.RayActorError as exc:  # the actor (or its node) died: do its task again
                        retries += 1
                        if retries > self.max_retries * max(1, count):
                            raise RunFailed(f"Ray workers kept dying ({retries} times; the points done are kept): "
                                            f"{' '.join(str(exc).split())[:160]}") from None
                        self.report(f"a surface worker died; its {sum(len(c) for c in tasks[index])} points go to "
                                    f"another (retry {retries})")
                        queue.insert(0, index)
                        idle.append(spawn())
                        continue
                    for chunk, value in zip(tasks[index], values):
                        on_result(chunk, value)
                    idle.append(worker)
            for worker in idle:
                ray.kill(worker)

    def group(self, chunks: list[np.ndarray], per_pass: int, ray) -> list[list[np.ndarray]]:
        """Consecutive passes grouped into tasks of about `points_per_task` points (whole passes)."""
        points = sum(len(c) for c in chunks)
        if self.points_per_task:
            size = self.points_per_task
        else:
            workers = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1) // self.cpus_per_worker))
            size = max(per_pass, math.ceil(points / (4 * workers)))
        passes = max(1, round(size / per_pass))
        return [chunks[i:i + passes] for i in range(0, len(chunks), passes)]

    def run_tasks(self, tasks: list[Callable], on_result: Callable, should_stop: Callable) -> None:
        if not tasks:
            return
        with self:
            ray = self.ray
            remote = ray.remote(run_task).options(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker,
                                                  max_retries=self.max_retries, retry_exceptions=False)
            pending = {remote.remote(task, self.threads): index for index, task in enumerate(tasks)}
            self.report(f"on Ray: {len(tasks)} task(s) of {self.cpus_per_worker:g} CPU, {self.gpus_per_worker:g} GPU")
            while pending:
                if should_stop():
                    for ref in pending:
                        ray.cancel(ref, force=True)
                    return
                done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for ref in done:
                    on_result(pending.pop(ref), fetch(ray, ref))
