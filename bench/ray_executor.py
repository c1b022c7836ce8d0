"""The Ray executor: each unfinished cell a Ray task, on an existing cluster (``--address`` or ``RAY_ADDRESS``) or on
a local one started for the run. Ray is an optional dependency (``pip install 'partialseg-bench[ray]'``).

A task asks for one GPU when the cluster has GPUs, otherwise ``cpus_per_cell`` CPUs. Its messages (start, epochs,
steps) come back through a Ray queue, its result as the task's return value; the driver alone writes the store. A
task whose worker or node dies is retried by Ray up to ``retries`` times (resuming from its last checkpoint when the
checkpoint folder is on a disk the nodes share), then recorded as failed with Ray's reason.

Checkpoints go to the driver's ``<out>/checkpoints`` when a worker can see it (the driver leaves a marker file there
and each task looks for it); otherwise to the worker's temporary folder, with ``best.pt`` sent back in the result.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import socket
import uuid

import torch

from bench.cell_job import CellJob, JobResult, run_job
from bench.executors import Driver, throttled
from registry.errors import UserError

INSTALL_HINT = "pip install 'partialseg-bench[ray]'"


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail in a second with one line, rather than after Ray's minute of reconnection attempts."""
    if address in ("auto", "local"):
        return
    host_port = address.removeprefix("ray://")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.1:6379) or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise UserError(f"--address {address}: cannot reach a Ray cluster there ({err.strerror or err})") from None


def _run_task(job: CellJob, messages) -> JobResult:
    """The body of a cell's Ray task, on whichever node Ray chose."""
    import ray

    device = torch.device("cuda" if ray.get_gpu_ids() else "cpu")
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    torch.set_num_threads(max(1, int(cpus)))
    return run_job(job, device, throttled(messages.put))


class RayExecutor:
    def __init__(self, address: str | None = None, retries: int = 2, cpus_per_cell: int = 1,
                 local_cpus: int | None = None, plugins: tuple[str, ...] = ()):
        """Connects at once (so a bad address fails before anything else happens): to ``address``, else to
        ``RAY_ADDRESS``, else to a new local cluster of ``local_cpus`` CPUs (default: all)."""
        self.ray = _import_ray()
        self.retries, self.cpus_per_cell, self.plugins = retries, cpus_per_cell, plugins
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            _check_reachable(address)
        self._started_here = not self.ray.is_initialized()
        if self._started_here:
            options = {"address": address} if address else {"num_cpus": local_cpus, "include_dashboard": False}
            try:
                self.ray.init(**options, log_to_driver=False, logging_level=logging.WARNING,
                              configure_logging=True)
            except ConnectionError as err:
                raise UserError(f"--address {address}: {err}") from None
        self.gpus = self.ray.cluster_resources().get("GPU", 0) > 0
        if not self.gpus and self.ray.cluster_resources().get("CPU", 0) < cpus_per_cell:
            raise UserError(f"--cpus-per-cell {cpus_per_cell}: the Ray cluster has only "
                            f"{self.ray.cluster_resources().get('CPU', 0):g} CPUs")

    def shutdown(self) -> None:
        if self._started_here and self.ray.is_initialized():
            self.ray.shutdown()

    def _shared_marker(self, job: CellJob) -> str:
        """A file in the checkpoint folder that only nodes sharing the driver's disk can see."""
        name = f".driver-{uuid.uuid4().hex}"
        job.checkpoint_root.mkdir(parents=True, exist_ok=True)
        (job.checkpoint_root / name).touch()
        return name

    def run(self, jobs: list[CellJob], driver: Driver) -> None:
        if not jobs:
            return
        from ray.util.queue import Queue

        marker = self._shared_marker(jobs[0])
        messages = Queue()
        resources = {"num_gpus": 1} if self.gpus else {}
        # A GPU cell in a fresh worker process (Ray's default for GPU tasks, said here because it matters): CUDA reads
        # the CUDA_VISIBLE_DEVICES that Ray sets for the task once per process, so a reused worker could train on
        # the GPU of its previous task.
        task = self.ray.remote(max_calls=1 if self.gpus else 0)(_run_task).options(
            num_cpus=self.cpus_per_cell, max_retries=self.retries, retry_exceptions=False, **resources)
        futures = {task.remote(dataclasses.replace(job, shared_marker=marker), messages): job for job in jobs}

        def forward_messages() -> None:
            while True:
                try:
                    driver.report(messages.get_nowait())
                except queue.Empty:  # ray.util.queue.Empty is one
                    return

        try:
            while futures:
                ready, _ = self.ray.wait(list(futures), num_returns=1, timeout=0.2)
                forward_messages()
                for ref in ready:
                    job = futures.pop(ref)
                    try:
                        result = self.ray.get(ref)
                    except self.ray.exceptions.RayError as err:  # the worker or node died, every retry
                        reason, tries = str(err).strip().splitlines()[0], self.retries + 1
                        result = JobResult(job.cell_id, [], None,
                                           f"{type(err).__name__} (tried {tries} time{'s' * (tries > 1)}): {reason}")
                    forward_messages()
                    driver.finish(result)
        except KeyboardInterrupt:
            for ref in futures:
                self.ray.cancel(ref, force=True)
            raise
        finally:
            (jobs[0].checkpoint_root / marker).unlink(missing_ok=True)
            self.ray.kill(messages.actor)
