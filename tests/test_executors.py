"""Executors: a pool of worker processes and a local Ray cluster run a grid to the same results as the sequential
executor, each cell stored once; a worker killed in the middle of a cell is replaced and the cell retried (resuming
from its checkpoint) or, past the retry budget, recorded as failed with the reason; bad options are one line, exit 2,
and leave the store untouched."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from grids import synthetic_grid

import registry
from bench.executors import DevicePoolExecutor, parse_devices
from bench.grid import parse_grid
from bench.outputs import OutputFolder
from bench.runner import run_grid
from bench.store import ResultStore
from registry.errors import UserError

HERE = Path(__file__).parent
PLUGIN = str(HERE / "dying_arch.py")
CPU = torch.device("cpu")
GRID = synthetic_grid(32, 8, 8, arch="ARCH", fractions="0.2, 0.5", epochs=3, batch_size=8)
STEPS_PER_EPOCH = 4
DETERMINISTIC = ("best_miou", "final_miou", "final_accuracy", "confusion_matrix", "test_miou", "test_epoch")


@pytest.fixture(scope="module", autouse=True)
def plugin():
    if "dying_unet" not in registry.list_archs():
        registry.import_plugin_module(PLUGIN)


def grid_for(tmp_path: Path, **arch):
    kwargs = {"base_channels": 4, "depth": 3, **arch}
    spec = "{ name = \"dying_unet\", " + ", ".join(f"{k} = {v!r}".replace("'", '"').replace("True", "true")
                                                  for k, v in kwargs.items()) + " }"
    text = GRID.replace("ARCH", spec)
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return parse_grid(text, path)


def stored(out: Path) -> dict[str, object]:
    store = ResultStore(out / "results.sqlite")
    try:
        return {row.cell_id: row for row in store.rows(status=None)}
    finally:
        store.close()


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The reference: the grid run cell after cell in this process, one thread; metrics by labelled fraction (cells of
    grids with other plugin arguments have other identities, the same numbers)."""
    tmp = tmp_path_factory.mktemp("sequential")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as every worker below: another thread count sums in another order
    try:
        run_grid(grid_for(tmp), OutputFolder(tmp / "runs"), CPU)
    finally:
        torch.set_num_threads(threads)
    return {row.config["fraction"]: row.metrics for row in stored(tmp / "runs").values()}


def assert_same_results(rows, reference) -> None:
    assert sorted(row.config["fraction"] for row in rows.values()) == sorted(reference)
    for row in rows.values():
        assert row.status == "done", row.error
        for key in DETERMINISTIC:
            assert row.metrics[key] == reference[row.config["fraction"]][key], (row.label, key)


def test_pool_of_two_workers_matches_sequential(tmp_path, sequential):
    summary = run_grid(grid_for(tmp_path), OutputFolder(tmp_path / "runs"), CPU,
                       executor=DevicePoolExecutor([CPU, CPU], plugins=(PLUGIN,), threads=1))
    rows = stored(tmp_path / "runs")
    assert_same_results(rows, sequential)
    assert sorted(summary.done) == sorted(rows) and all(row.attempts == 1 for row in rows.values())
    assert {row.provenance["where"].split()[-1] for row in rows.values()} == {"cpu"}


def test_a_pool_worker_can_start_a_dataloaders_worker_processes(tmp_path):
    """The DataLoader path with loader workers inside a pool worker (as on a GPU, where they default to 8): a
    daemonic pool worker could not start them."""
    text = GRID.replace("ARCH", '{ name = "unet", base_channels = 4, depth = 3 }').replace(
        "epochs = 3", 'epochs = 1\ndata_path = "loader"\nnum_workers = 1')
    (tmp_path / "grid.toml").write_text(text)
    grid = parse_grid(text, tmp_path / "grid.toml")
    summary = run_grid(grid, OutputFolder(tmp_path / "runs"), CPU, executor=DevicePoolExecutor([CPU], threads=1))
    rows = stored(tmp_path / "runs")
    assert not summary.failed, [row.error for row in rows.values()]
    assert len(rows) == 2 and all(row.metrics["data_path"] == "loader (1 workers)" for row in rows.values())


def test_pool_worker_killed_mid_cell_is_replaced_and_the_cell_resumed(tmp_path, sequential):
    marker = tmp_path / "died"
    grid = grid_for(tmp_path, marker=str(marker), at_step=STEPS_PER_EPOCH + 2)  # in the second epoch
    pool = DevicePoolExecutor([CPU, CPU], plugins=(PLUGIN,), threads=1)
    summary = run_grid(grid, OutputFolder(tmp_path / "runs"), CPU, executor=pool)
    assert marker.exists() and not summary.failed
    rows = stored(tmp_path / "runs")
    assert sorted(row.attempts for row in rows.values()) == [1, 2]
    retried = next(row for row in rows.values() if row.attempts == 2)
    assert [h["resumed"] for h in retried.history] == [False, True, False]  # from the first epoch's checkpoint
    assert_same_results(rows, sequential)  # a killed worker costs time, not numbers


def test_pool_gives_up_after_the_retries_and_records_why(tmp_path):
    grid = grid_for(tmp_path, marker=str(tmp_path / "died"), at_step=2, every_time=True)
    summary = run_grid(grid, OutputFolder(tmp_path / "runs"), CPU,
                       executor=DevicePoolExecutor([CPU], retries=1, plugins=(PLUGIN,), threads=1))
    rows = stored(tmp_path / "runs")
    assert sorted(summary.failed) == sorted(rows) and len(rows) == 2
    for row in rows.values():
        assert row.status == "failed" and row.attempts == 2
        assert "the worker on cpu died (exit code -9), 2 times: gave up" in row.error


def test_devices_are_checked():
    assert parse_devices("cpu,cpu") == [CPU, CPU]
    gpus = torch.cuda.device_count()
    with pytest.raises(UserError, match=f"GPU {gpus} does not exist"):
        parse_devices(f"{gpus}")
    with pytest.raises(UserError, match="GPU indices or 'cpu'"):
        parse_devices("cpu,x")


# -- Ray --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster of 2 CPUs for the module (starting one takes seconds)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_matches_sequential_and_retries_a_killed_worker(tmp_path, sequential, ray_cluster):
    """One cell's worker is killed in its second epoch: Ray starts the task again, it resumes from the checkpoint
    on the shared disk, and the grid ends with every cell stored once, with the sequential executor's numbers."""
    from bench.ray_executor import RayExecutor

    marker = tmp_path / "died"
    grid = grid_for(tmp_path, marker=str(marker), at_step=STEPS_PER_EPOCH + 2)
    summary = run_grid(grid, OutputFolder(tmp_path / "runs"), CPU, executor=RayExecutor(retries=2, plugins=(PLUGIN,)))
    assert marker.exists() and not summary.failed
    rows = stored(tmp_path / "runs")
    assert sorted(summary.done) == sorted(rows) and sorted(row.attempts for row in rows.values()) == [1, 2]
    assert_same_results(rows, sequential)
    checkpoints = tmp_path / "runs" / "checkpoints"
    assert not list(checkpoints.glob(".driver-*"))  # the shared-disk marker is cleaned up
    assert all((checkpoints / cell_id / "best.pt").exists() for cell_id in rows)


def test_ray_records_the_cell_failed_when_its_retries_are_spent(tmp_path, ray_cluster):
    from bench.ray_executor import RayExecutor

    grid = grid_for(tmp_path, marker=str(tmp_path / "died"), at_step=2, every_time=True)
    summary = run_grid(grid, OutputFolder(tmp_path / "runs"), CPU, executor=RayExecutor(retries=0, plugins=(PLUGIN,)))
    rows = stored(tmp_path / "runs")
    assert sorted(summary.failed) == sorted(rows) and len(rows) == 2
    for row in rows.values():
        assert row.status == "failed" and row.attempts == 1 and "(tried 1 time)" in row.error


# -- bad options ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    (["--devices", "7"], "--devices: GPU 7 does not exist"),
    (["--executor", "ray", "--address", "127.0.0.1:9"], "--address 127.0.0.1:9: cannot reach a Ray cluster there"),
    (["--executor", "ray", "--devices", "0"], "--devices is for the local executor"),
    (["--address", "127.0.0.1:9"], "--address is for --executor ray"),
])
def test_bad_options_are_one_line_exit_2_store_untouched(tmp_path, options, message):
    (tmp_path / "grid.toml").write_text(GRID.replace("ARCH", '{ name = "unet", base_channels = 4, depth = 3 }'))
    result = subprocess.run([sys.executable, "-m", "bench", "run", "--grid", "grid.toml", *options], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_ray_not_installed_says_how_to_install(tmp_path):
    (tmp_path / "grid.toml").write_text(GRID.replace("ARCH", '{ name = "unet", base_channels = 4, depth = 3 }'))
    (tmp_path / "ray").mkdir()  # a package named ray that cannot be imported hides the installed one
    (tmp_path / "ray" / "__init__.py").write_text("raise ImportError('no ray here')\n")
    result = subprocess.run([sys.executable, "-m", "bench", "run", "--grid", "grid.toml", "--executor", "ray"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2
    assert "pip install 'partialseg-bench[ray]'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


# -- one cell over several processes (torchrun --ddp) -----------------------------------------------------------------

DDP_GRID = GRID.replace("ARCH", '{ name = "unet", base_channels = 4, depth = 3 }').replace(
    "batch_size = 8", 'batch_size = 8\noptimizer = "sgd"\nlr = 0.05\naugment = []\nsync_batchnorm = true')


def test_ddp_run_over_two_processes_matches_one_and_writes_each_cell_once(tmp_path):
    """The same grid through `bench run` and through `torchrun --nproc-per-node 2 -m bench run --ddp` (gloo): every
    cell stored once, by rank 0, with the metrics of one process (within float rounding: SGD, no augmentation,
    synchronised BatchNorm)."""
    (tmp_path / "grid.toml").write_text(DDP_GRID)
    single = subprocess.run([sys.executable, "-m", "bench", "run", "--grid", "grid.toml", "--out", "one"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False)
    assert single.returncode == 0, single.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                             "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "bench", "run",
                             "--grid", "grid.toml", "--out", "two", "--ddp"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, env=environment,
                            check=False)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = stored(tmp_path / "one"), stored(tmp_path / "two")
    assert set(one) == set(two) and len(two) == 2
    for cell_id, row in two.items():
        assert row.status == "done" and row.attempts == 1
        assert len(row.history) == 3
        for key in ("best_miou", "final_miou", "test_miou"):
            assert row.metrics[key] == pytest.approx(one[cell_id].metrics[key], abs=0.01), key
        assert row.history[-1]["train_loss"] == pytest.approx(one[cell_id].history[-1]["train_loss"], rel=2e-3)


def torchrun(tmp_path: Path, *arguments: str, timeout: int) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "bench", *arguments],
                          cwd=tmp_path, capture_output=True, text=True, timeout=timeout, env=environment,
                          check=False)


@pytest.mark.parametrize("failing_rank", [0, 1])
def test_ddp_error_on_one_rank_stops_every_rank_and_a_rerun_resumes(tmp_path, failing_rank):
    """A rank that fails alone (here, the forward raises on one rank in epoch 2) must not leave the other waiting in a
    collective, nor let it go on to the next cell: every process stops, torchrun exits non-zero, the cell's epoch 1 is
    kept, and the same command run again (the failure happened once) resumes from there and finishes the grid."""
    marker = tmp_path / "failed-once"
    grid_for(tmp_path, marker=str(marker), at_step=STEPS_PER_EPOCH + 2, raise_on_rank=failing_rank)
    command = ("run", "--grid", "grid.toml", "--plugin", PLUGIN, "--ddp")
    failed = torchrun(tmp_path, *command, timeout=180)  # a hang would end here, in a TimeoutExpired
    assert failed.returncode != 0 and marker.exists()
    assert f"rank {failing_rank} alone failed at step {STEPS_PER_EPOCH + 2}" in failed.stderr
    (first,) = stored(tmp_path / "runs").values()  # the second cell never started
    assert first.status != "done" and [h["epoch"] for h in first.history] == [1]
    if failing_rank == 0:
        assert first.status == "failed" and "the process group was stopped" in first.error

    resumed = torchrun(tmp_path, *command, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = stored(tmp_path / "runs")
    assert len(rows) == 2 and all(row.status == "done" and len(row.history) == 3 for row in rows.values())
    assert rows[first.cell_id].history[0] == first.history[0] and rows[first.cell_id].history[1]["resumed"]


def test_ddp_without_torchrun_is_one_line(tmp_path):
    (tmp_path / "grid.toml").write_text(DDP_GRID)
    environment = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR")}
    result = subprocess.run([sys.executable, "-m", "bench", "run", "--grid", "grid.toml", "--ddp"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env=environment, check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "--ddp needs a process group: launch with torchrun" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_bench_run_on_a_local_ray_cluster_from_the_command_line(tmp_path):
    """The whole command: a local Ray cluster started for the run and stopped after it, each cell's line saying where
    it ran, every cell stored once, the leaderboard written."""
    (tmp_path / "grid.toml").write_text(GRID.replace("ARCH", '{ name = "unet", base_channels = 4, depth = 3 }'))
    environment = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run([sys.executable, "-m", "bench", "run", "--grid", "grid.toml", "--executor", "ray"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, env=environment,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("▶") == 2 and "2 cells run, 0 already finished, 0 failed" in result.stdout
    rows = stored(tmp_path / "runs")
    assert len(rows) == 2 and all(row.status == "done" and row.attempts == 1 for row in rows.values())
    assert all(row.provenance["where"].endswith(" cpu") for row in rows.values())
    assert (tmp_path / "runs" / "leaderboard.md").exists()
