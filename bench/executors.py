"""Executors: what runs the cells of a grid. The driver (:func:`bench.runner.run_grid`) hands an executor the jobs of
the unfinished cells and a :class:`Driver` (the run's recorder); the executor runs them wherever it runs them and
passes every message and result to the driver, from the driver's thread. Executors never touch the results store.

- :class:`SequentialExecutor`: one cell after another in this process (the default);
- :class:`DevicePoolExecutor`: one worker process per listed device, each taking the next unfinished cell;
- :class:`bench.ray_executor.RayExecutor`: each cell a Ray task, on a local or remote cluster;
- :class:`DistributedExecutor`: under torchrun, every cell trained by all the processes together.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import threading
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from bench import distributed
from bench.cell_job import CellJob, JobMessage, JobResult, Report, Step, run_job
from bench.identity import Grid
from bench.outputs import OutputFolder
from bench.train import TrainingDiverged
from registry.errors import UserError

STEP_REPORT_SECONDS = 0.5  # workers in other processes report steps at most this often: the bar, not the pipe
DRIVER_CHECK_SECONDS = 0.2  # how often a worker looks whether its driver is still alive
EXIT_ORPHANED = 3  # the exit code of a worker that ended because its driver was gone


class Driver(Protocol):
    """What an executor reports to, from the driver's thread only: the jobs' messages as they arrive, a job whose
    worker died and that goes back to the queue, and each job's result (one per job, the last word on its cell)."""

    def report(self, message: JobMessage) -> None: ...
    def retry(self, cell_id: str, reason: str) -> None: ...
    def finish(self, result: JobResult) -> None: ...


class Executor(Protocol):
    plugins: tuple[str, ...]  # the --plugin modules, which a worker in another process imports too

    def run(self, jobs: list[CellJob], driver: Driver) -> None: ...


class SequentialExecutor:
    """Cells one after another in this process, on one device."""

    def __init__(self, device: torch.device, plugins: tuple[str, ...] = ()):
        self.device, self.plugins = device, plugins

    def run(self, jobs: list[CellJob], driver: Driver) -> None:
        for job in jobs:
            driver.finish(run_job(job, self.device, driver.report))


def parse_devices(text: str) -> list[torch.device]:
    """``--devices 0,1,3`` (GPU indices) or ``cpu,cpu`` (CPU workers, the cores shared among them)."""
    devices = []
    count = torch.cuda.device_count()
    for item in (part.strip() for part in text.split(",")):
        if item == "cpu":
            devices.append(torch.device("cpu"))
        elif item.isdigit() and int(item) < count:
            devices.append(torch.device("cuda", int(item)))
        elif item.isdigit():
            known = f"GPUs 0 to {count - 1}" if count else "no GPU"
            raise UserError(f"--devices: GPU {item} does not exist (this machine has {known})")
        else:
            raise UserError(f"--devices takes GPU indices or 'cpu', separated by commas (e.g. 0,1,2,3), not {item!r}")
    if not devices:
        raise UserError("--devices names no device")
    return devices


def throttled(report: Report) -> Report:
    """``report`` with step messages thinned to one every STEP_REPORT_SECONDS; the others pass unchanged."""
    last = [0.0]

    def send(message: JobMessage) -> None:
        if isinstance(message, Step):
            now = time.monotonic()
            if now - last[0] < STEP_REPORT_SECONDS and message.step != message.total:
                return
            last[0] = now
        report(message)

    return send


def exit_when_parent_dies(parent: int) -> None:
    """Start a thread that ends this process at once (no clean-up: its checkpoints are written atomically) when the
    process ``parent`` that started it is gone, as when the driver of a run is killed: a worker must never go on
    writing into a folder that a resumed run uses. An orphan is adopted by another process, so its parent changes."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(DRIVER_CHECK_SECONDS)
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="driver-watchdog", daemon=True).start()


def _worker_main(device: torch.device, threads: int, connection, driver: int) -> None:
    """A pool worker: jobs in from ``connection`` until ``None``; messages and results (a :class:`JobResult`) out
    through it. Each send is written to the pipe before it returns, so whatever the worker said before it died reaches
    the driver."""
    exit_when_parent_dies(driver)
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    report = throttled(connection.send)
    try:
        while (job := connection.recv()) is not None:
            connection.send(run_job(job, device, report))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):  # Ctrl-C reaches the whole process group; a driver gone
        pass


@dataclass
class _Worker:
    device: torch.device
    process: multiprocessing.Process
    connection: Any
    job: CellJob | None = None

    def messages(self) -> list[JobMessage | JobResult]:
        """What the worker has sent and the driver not yet read (all of it, once the worker is dead)."""
        received = []
        try:
            while self.connection.poll():
                received.append(self.connection.recv())
        except (EOFError, OSError):  # the worker is gone and everything it wrote has been read
            pass
        return received


class DevicePoolExecutor:
    """One worker process per device (spawned, so CUDA starts fresh in each), each taking the next unfinished cell.

    A worker that dies (killed, out of memory, a crashed driver of the GPU) is replaced; its cell goes back to the
    queue, resumes from its last checkpoint, and after ``retries`` such deaths is recorded as failed with the reason.
    A worker whose driver dies ends too (:func:`exit_when_parent_dies`).
    """

    def __init__(self, devices: list[torch.device], retries: int = 2, plugins: tuple[str, ...] = (),
                 threads: int | None = None):
        """``threads``: torch threads per worker; by default the machine's cores shared out among the workers."""
        self.devices, self.retries, self.plugins = devices, retries, plugins
        self.threads = threads or max(1, (os.cpu_count() or 1) // len(devices))
        self._context = multiprocessing.get_context("spawn")

    def _start(self, slot: int) -> _Worker:
        device = self.devices[slot]
        ours, theirs = self._context.Pipe()
        # Not daemonic: a daemonic process may not have children, and a cell on the DataLoader path starts its
        # loader's worker processes. The run's `finally` stops the workers instead.
        process = self._context.Process(target=_worker_main, args=(device, self.threads, theirs, os.getpid()),
                                        name=f"bench-worker-{slot}", daemon=False)
        process.start()
        theirs.close()  # the worker's end lives in the worker alone: its death is then an end of file here
        return _Worker(device, process, ours)

    def run(self, jobs: list[CellJob], driver: Driver) -> None:
        pending, deaths = deque(jobs), Counter()
        workers = [self._start(slot) for slot in range(len(self.devices))]

        def handle(worker: _Worker, message: JobMessage | JobResult) -> None:
            if isinstance(message, JobResult):
                worker.job = None
                driver.finish(message)
            else:
                driver.report(message)

        try:
            while pending or any(w.job for w in workers):
                for worker in workers:
                    if worker.job is None and pending:
                        worker.job = pending.popleft()
                        worker.connection.send(worker.job)
                multiprocessing.connection.wait([w.connection for w in workers] + [w.process.sentinel for w in workers],
                                                timeout=0.2)
                for slot, worker in enumerate(workers):
                    for message in worker.messages():  # a dead worker's last words count: a result means no loss
                        handle(worker, message)
                    if worker.process.is_alive():
                        continue
                    worker.process.join()
                    job, code = worker.job, worker.process.exitcode
                    worker.connection.close()
                    workers[slot] = self._start(slot)
                    if job is None:
                        continue
                    deaths[job.cell_id] += 1
                    reason = f"the worker on {worker.device} died (exit code {code})"
                    if deaths[job.cell_id] <= self.retries:
                        driver.retry(job.cell_id, reason)
                        pending.appendleft(job)
                    else:
                        driver.finish(JobResult(job.cell_id, [], None,
                                                  f"{reason}, {deaths[job.cell_id]} times: gave up"))
        finally:  # a worker still busy is stopped (its cell resumes from its checkpoint); the idle ones are told to end
            for worker in workers:
                if worker.job is not None:
                    worker.process.terminate()
                else:
                    try:
                        worker.connection.send(None)
                    except OSError:  # it is already gone
                        pass
            for worker in workers:
                worker.process.join(timeout=10)
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join()


def raised_by_every_rank(err: Exception) -> bool:
    """Whether, under ``--ddp``, every rank raises ``err`` at the same point, so that all of them can record the cell
    failed and go on to the next one together: a check before training (``UserError``: the ranks hold the same data
    and recipe) or a diverged loss (tested after the ranks averaged it). Any other error may be this rank's alone (out
    of memory, a broken tile in its share) while the others wait for it in a collective: then this process stops, and
    torchrun stops the others."""
    return isinstance(err, (UserError, TrainingDiverged))


class DistributedExecutor:
    """``bench run --ddp`` under torchrun: every cell trained by all the processes together (DistributedDataParallel).

    Rank 0 is the driver: it alone holds the output folder, reads and writes the store, and announces the cells to
    train; the other ranks (:func:`train_announced_cells`) receive that list and train the same cells in the same
    order, writing nothing. Rank 0 always announces, an empty list when it stops before training, so that no rank
    waits forever. An error that only some ranks may have raised stops the process (:func:`raised_by_every_rank`);
    rank 0 records the cell failed first, and a rerun retries it.
    """

    def __init__(self, device: torch.device, plugins: tuple[str, ...] = ()):
        self.device, self.plugins = device, plugins
        self._announced = False
        self._peers_may_wait = False  # set when this rank stopped in the middle of a cell

    def run(self, jobs: list[CellJob], driver: Driver) -> None:
        self._announce([job.cell_id for job in jobs])
        for job in jobs:
            try:
                result = run_job(job, self.device, driver.report, raised_by_every_rank)
            except Exception as err:
                self._peers_may_wait = True
                driver.finish(JobResult(job.cell_id, [], None,
                                          f"{type(err).__name__} on rank 0: {err}; the process group was stopped",
                                          traceback.format_exc()))
                raise
            driver.finish(result)

    def shutdown(self) -> None:
        if self._peers_may_wait:  # a collective would wait for them forever: torchrun ends the processes instead
            return
        if not self._announced:
            self._announce([])
        distributed.close_process_group()

    def _announce(self, cell_ids: list[str]) -> None:
        self._announced = True
        torch.distributed.broadcast_object_list([cell_ids], src=0)


def train_announced_cells(grid: Grid, out: OutputFolder, device: torch.device, plugins: tuple[str, ...] = ()) -> None:
    """The part of a rank other than 0 in ``bench run --ddp``: train the cells rank 0 announces; record nothing.
    An error of this rank's alone propagates and ends the process (the group is left as it is: torchrun stops the
    other ranks, which may be waiting for this one in a collective)."""
    announced = [None]
    torch.distributed.broadcast_object_list(announced, src=0)
    for cell_id in announced[0]:
        run_job(CellJob(grid, cell_id, out.checkpoints, plugins), device, lambda message: None, raised_by_every_rank)
    distributed.close_process_group()
