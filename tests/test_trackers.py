"""Experiment trackers (bench.trackers): what MLflow and TensorBoard hold after a run, read back with their own readers,
is what the results store holds; a cell interrupted mid-run continues its MLflow run and TensorBoard folder; a tracker
that fails mid-run is one warning and loses no cell; a missing package or a bad --track value is one line."""

from __future__ import annotations

import contextlib
import errno
import json
import sys
from pathlib import Path

import pytest
import torch
from grids import synthetic_grid
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from bench.grid import parse_grid
from bench.leaderboard import write_leaderboard
from bench.outputs import OutputFolder
from bench.runner import Broadcast, RunEvents, run_grid
from bench.store import ResultStore
from bench.trackers import TrackerWarning, flatten, open_trackers
from registry.errors import UserError

CPU = torch.device("cpu")
EPOCHS = 3
GRID = synthetic_grid(16, 8, 8, fractions="0.2, 0.5", epochs=EPOCHS, batch_size=8)
BOTH = ["mlflow", "tensorboard"]
# what every epoch record is logged as, besides the per-class IoU ("iou/<class>")
EPOCH_SCALARS = ("train_loss", "miou", "accuracy", "per_batch_miou", "lr", "train_seconds", "eval_seconds")


class InterruptSecondCell(RunEvents):
    """Ctrl-C after the first epoch of the second cell (after the trackers, before it among the sinks, logged it)."""

    def __init__(self):
        self.started: list[str] = []

    def cell_started(self, cell, resume_epoch, host):
        self.started.append(cell.cell_id)

    def epoch_done(self, cell, record):
        if len(self.started) == 2 and record["epoch"] == 1:
            raise KeyboardInterrupt


def write_grid(folder: Path, text: str = GRID):
    path = folder / "grid.toml"
    path.write_text(text)
    return parse_grid(text, path)


def run_tracked(grid, out: Path, specs: list[str], *sinks: RunEvents, after=lambda trackers: None) -> None:
    trackers = open_trackers(specs, OutputFolder(out))
    with contextlib.ExitStack() as stack:
        for tracker in trackers:
            stack.enter_context(tracker)
        run_grid(grid, OutputFolder(out), CPU, Broadcast(*trackers, *sinks))
        after(trackers)


@pytest.fixture(scope="module", autouse=True)
def no_mlflow_telemetry():
    """MLflow is imported by the tests only after this (and by bench.trackers, which says the same): imported before,
    it would note an installation id in ~/.config and send usage reports."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        yield


def client_of(out: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")


def all_runs(client) -> list:
    experiment = client.get_experiment_by_name("partialseg-bench/grid")
    return client.search_runs([experiment.experiment_id])


def cell_runs(client) -> dict:
    return {run.data.tags["partialseg.cell_id"]: run for run in all_runs(client)
            if "partialseg.cell_id" in run.data.tags}


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def read_artifact(run, name: str, folder: Path) -> str:
    from mlflow.artifacts import download_artifacts

    return Path(download_artifacts(artifact_uri=f"{run.info.artifact_uri}/{name}", dst_path=str(folder))).read_text()


def stored_rows(out: Path):
    with ResultStore(out / "results.sqlite", readonly=True) as store:
        return store.rows("done")


def write_board(out: Path, trackers) -> None:
    """The leaderboard and its plots, as `bench run` writes them after the grid, then handed to the trackers."""
    board = out / "leaderboard.md"
    with ResultStore(out / "results.sqlite", readonly=True) as store:
        write_leaderboard(store.rows("done"), store.rows("failed"), board, str(store.path))
    for tracker in trackers:
        tracker.leaderboard_written(board, sorted((out / "plots").glob("*.png")))


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A grid of two cells run with both trackers, interrupted after the first epoch of its second cell, then run
    again by the same command: (output folder, MLflow runs by cell id after the interruption, the interrupted
    cell's id)."""
    work = tmp_path_factory.mktemp("tracked")
    grid, out = write_grid(work), work / "runs"
    interrupt = InterruptSecondCell()
    with pytest.raises(KeyboardInterrupt):
        run_tracked(grid, out, BOTH, interrupt)
    before = cell_runs(client_of(out))
    run_tracked(grid, out, BOTH, after=lambda trackers: write_board(out, trackers))
    return out, before, interrupt.started[1]


def test_mlflow_holds_every_epoch_and_the_final_scores_of_the_store(tracked):
    out, _, _ = tracked
    client, rows = client_of(out), stored_rows(out)
    runs = cell_runs(client)
    assert len(rows) == 2 and sorted(runs) == sorted(row.cell_id for row in rows)
    for row in rows:
        run_id, names = runs[row.cell_id].info.run_id, row.metrics["class_names"]
        expected = {key: [(h["epoch"], h[key]) for h in row.history] for key in EPOCH_SCALARS}
        for index, name in enumerate(names):  # an absent class's IoU (null in the store) is not logged
            expected[f"iou/{name}"] = [(h["epoch"], h["iou"][index]) for h in row.history
                                       if h["iou"][index] is not None]
        for key, values in expected.items():
            assert history(client, run_id, key) == values, (row.label, key)
        for key in ("best_miou", "final_miou", "final_accuracy", "epoch_seconds", "test_miou", "best_epoch"):
            assert history(client, run_id, f"result/{key}") == [(EPOCHS, row.metrics[key])], key
        final_iou = dict(zip(names, row.metrics["final_iou"]))
        assert {name: history(client, run_id, f"result/final_iou/{name}") for name in names} == {
            name: [(EPOCHS, value)] if value is not None else [] for name, value in final_iou.items()}


def test_cells_are_runs_nested_under_one_run_of_the_grid_with_their_config(tracked, tmp_path):
    out, _, _ = tracked
    client, rows = client_of(out), stored_rows(out)
    runs = all_runs(client)
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert parent.info.run_name == "grid" and parent.data.tags["partialseg.grid"] == "grid"
    assert parent.info.status == "FINISHED"
    children = cell_runs(client)
    assert len(runs) == 3 and len(children) == 2
    for row in rows:
        run = children[row.cell_id]
        assert run.info.status == "FINISHED" and run.info.run_name == row.label
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["partialseg.label"] == row.label
        assert run.data.params == {"cell_id": row.cell_id, **flatten(row.config)}
        assert run.data.params["arch.kwargs.base_channels"] == "4"
        assert json.loads(read_artifact(run, "config.json", tmp_path)) == row.config


def test_the_confusion_matrices_are_artifacts_equal_to_the_stored_ones(tracked, tmp_path):
    out, _, _ = tracked
    runs = cell_runs(client_of(out))
    for row in stored_rows(out):
        logged = json.loads(read_artifact(runs[row.cell_id], "confusion_matrix.json", tmp_path))
        assert logged["confusion_matrix"] == row.metrics["confusion_matrix"]
        assert logged["test_confusion_matrix"] == row.metrics["test_confusion_matrix"]
        assert logged["class_names"] == row.metrics["class_names"]


def test_an_interrupted_cell_continues_its_run_and_the_grid_its_parent(tracked):
    out, before, interrupted = tracked
    client = client_of(out)
    after = cell_runs(client)
    assert before[interrupted].info.status == "KILLED"
    assert {cell_id: run.info.run_id for cell_id, run in after.items()} == {
        cell_id: run.info.run_id for cell_id, run in before.items()}  # one run per cell, the same one
    assert before[interrupted].data.tags["mlflow.parentRunId"] == after[interrupted].data.tags["mlflow.parentRunId"]
    (row,) = [row for row in stored_rows(out) if row.cell_id == interrupted]
    assert [h["resumed"] for h in row.history] == [False, True, False]  # it did resume after its first epoch
    for key in ("miou", "train_loss"):
        assert [step for step, _ in history(client, after[interrupted].info.run_id, key)] == [1, 2, 3]


def test_tensorboard_holds_the_same_scalars_one_folder_per_cell(tracked):
    out, _, interrupted = tracked
    rows = stored_rows(out)
    assert sorted(path.name for path in (out / "tensorboard").iterdir()) == sorted(row.cell_id for row in rows)
    for row in rows:
        events = EventAccumulator(str(out / "tensorboard" / row.cell_id))
        events.Reload()
        for key in EPOCH_SCALARS:  # the resumed cell's too: steps 1..3 once each, nothing logged twice
            scalars = events.Scalars(key)
            assert [s.step for s in scalars] == [1, 2, 3], (row.label, key)
            assert [s.value for s in scalars] == pytest.approx([h[key] for h in row.history], rel=1e-6)
        name = row.metrics["class_names"][0]
        assert [s.value for s in events.Scalars(f"iou/{name}")] == pytest.approx(
            [h["iou"][0] for h in row.history], rel=1e-6)
        (text,) = events.Tensors("cell/text_summary")
        assert text.tensor_proto.string_val == [f"{row.label} (grid grid, cell {row.cell_id})".encode()]
        assert [(s.step, s.value) for s in events.Scalars("result/best_miou")] == [
            (EPOCHS, pytest.approx(row.metrics["best_miou"], rel=1e-6))]
    assert interrupted in {row.cell_id for row in rows}


def test_the_leaderboard_and_its_plots_are_artifacts_of_the_grids_run(tracked):
    from mlflow.artifacts import list_artifacts

    out, _, _ = tracked
    (parent,) = [run for run in all_runs(client_of(out)) if "mlflow.parentRunId" not in run.data.tags]
    root = parent.info.artifact_uri
    assert [Path(a.path).name for a in list_artifacts(artifact_uri=root)] == ["leaderboard.md", "plots"]
    plots = sorted(path.name for path in (out / "plots").glob("*.png"))
    assert len(plots) == 3  # label efficiency, annotation budget, training curves
    assert sorted(Path(a.path).name for a in list_artifacts(artifact_uri=f"{root}/plots")) == plots


def test_a_tracker_failing_mid_run_warns_once_and_the_cells_still_land_in_the_store(tmp_path, monkeypatch):
    grid = write_grid(tmp_path, GRID.replace("[0.2, 0.5]", "[0.2]").replace(f"epochs = {EPOCHS}", "epochs = 2"))
    out = tmp_path / "runs"
    from mlflow.tracking import MlflowClient

    log_batch, add_scalar = MlflowClient.log_batch, SummaryWriter.add_scalar

    def server_gone(self, run_id, metrics=(), **kwargs):
        if any(metric.step == 2 for metric in metrics):
            raise ConnectionError("the server went away\nand said more")
        return log_batch(self, run_id, metrics=metrics, **kwargs)

    def disk_full(self, tag, value, step):
        if step == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return add_scalar(self, tag, value, step)

    monkeypatch.setattr(MlflowClient, "log_batch", server_gone)
    monkeypatch.setattr(SummaryWriter, "add_scalar", disk_full)
    with pytest.warns(TrackerWarning) as caught:
        run_tracked(grid, out, BOTH)
    assert sorted(str(w.message) for w in caught if w.category is TrackerWarning) == [
        "--track mlflow stopped logging: ConnectionError: the server went away (the results store has every result)",
        "--track tensorboard stopped logging: OSError: [Errno 28] No space left on device (the results store has "
        "every result)"]
    (row,) = stored_rows(out)
    assert [h["epoch"] for h in row.history] == [1, 2]
    (run,) = cell_runs(client_of(out)).values()
    assert history(client_of(out), run.info.run_id, "miou") == [(1, row.history[0]["miou"])]


def test_a_cell_trained_again_from_scratch_starts_a_new_run(tmp_path):
    """Its resume state lost, a cell starts over (resume epoch 0) and the store forgets its epochs: its run too."""
    grid, out = write_grid(tmp_path), tmp_path / "runs"
    cell = grid.cells[0]
    for attempt, miou in enumerate((0.5, 0.25)):
        (tracker,) = open_trackers(["mlflow"], OutputFolder(out))
        with contextlib.suppress(KeyboardInterrupt), tracker:
            tracker.grid_started(grid, list(grid.cells), 0)
            tracker.cell_started(cell, 0, "here")
            tracker.epoch_done(cell, {"epoch": 1, "miou": miou})
            if attempt == 0:
                raise KeyboardInterrupt
    client = client_of(out)
    (run,) = cell_runs(client).values()
    assert history(client, run.info.run_id, "miou") == [(1, 0.25)]


@pytest.mark.parametrize(("name", "modules"), [("mlflow", ["mlflow"]),
                                               ("tensorboard", ["tensorboard", "torch.utils.tensorboard"])])
def test_a_missing_package_is_one_line_naming_the_install(tmp_path, monkeypatch, name, modules):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(UserError) as raised:
        open_trackers([name], OutputFolder(tmp_path))
    assert str(raised.value) == f"--track {name} needs the {name} package: pip install 'partialseg-bench[{name}]'"
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(("specs", "message"), [
    (["wandb"], "--track wandb: the trackers are mlflow, mlflow:URI and tensorboard"),
    (["tensorboard:logs"], "--track tensorboard:logs: the trackers are mlflow, mlflow:URI and tensorboard"),
    (["mlflow", "mlflow:http://127.0.0.1:5000"], "--track mlflow is given twice"),
])
def test_bad_track_values_are_refused(tmp_path, specs, message):
    with pytest.raises(UserError) as raised:
        open_trackers(specs, OutputFolder(tmp_path))
    assert str(raised.value) == message


def test_the_smoke_grid_tracked_from_the_command_line_reads_back_equal_to_the_store(tmp_path, capsys):
    """`bench run --grid smoke --track mlflow --track tensorboard`: one MLflow run per stored cell under the grid's,
    every epoch's scores equal to the store's in both trackers, the leaderboard and the grid's figures logged."""
    from mlflow.artifacts import list_artifacts

    from bench.cli import main
    from bench.plots import plot_names, show_names

    out = tmp_path / "runs"
    assert main(["run", "--grid", "smoke", "--out", str(out), "--track", "mlflow", "--track", "tensorboard"]) == 0
    capsys.readouterr()
    rows = stored_rows(out)
    client = client_of(out)
    experiment = client.get_experiment_by_name("partialseg-bench/smoke")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    by_cell = {run.data.tags["partialseg.cell_id"]: run for run in runs if run is not parent}
    assert sorted(by_cell) == sorted(row.cell_id for row in rows) and len(rows) == 2
    for row in rows:
        run = by_cell[row.cell_id]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
        events = EventAccumulator(str(out / "tensorboard" / row.cell_id))
        events.Reload()
        for key in EPOCH_SCALARS:
            expected = [(h["epoch"], pytest.approx(h[key], rel=1e-6)) for h in row.history]
            assert history(client, run.info.run_id, key) == expected, key
            assert [(s.step, s.value) for s in events.Scalars(key)] == expected, key
        assert run.data.metrics["result/best_miou"] == pytest.approx(row.metrics["best_miou"], rel=1e-6)
    figures = [*plot_names("synthetic", "smoke").values(), *show_names("synthetic", "smoke").values()]
    logged = sorted(Path(a.path).name for a in list_artifacts(artifact_uri=f"{parent.info.artifact_uri}/plots"))
    assert logged == sorted(name for name in figures if (out / "plots" / name).exists()) and len(logged) >= 2
    assert parent.info.status == "FINISHED"
