"""Experiment trackers: optional sinks of a run's events (``bench run --track mlflow[:URI] --track tensorboard``).

They mirror what the results store holds, as the run goes: per epoch the training loss, mIoU, pixel accuracy,
per-class IoU, learning rate and seconds (the epoch is the step), then the cell's final scores under ``result/``. The
store stays the source of truth: the first error a tracker meets while logging (its server gone, a full disk) is one
:class:`TrackerWarning`, after which that tracker logs nothing more, and the run goes on. docs/tracking.md says how
to look at what they logged.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from bench.cell_job import grid_data
from bench.outputs import OutputFolder
from bench.runner import RunEvents
from registry.errors import UserError

if TYPE_CHECKING:
    from bench.identity import Cell, Grid

TRACKERS = ("mlflow", "tensorboard")
PACKAGES = {"mlflow": "mlflow", "tensorboard": "torch.utils.tensorboard"}  # what each tracker imports
MAX_PARAM_LENGTH = 500  # older MLflow servers refuse longer param values (newer ones 6000); see config.json
BATCH_PARAMS = 100  # MLflow's most params in one log_batch
PREFIX = "partialseg."  # our MLflow tags, by which a rerun finds its runs


class TrackerWarning(UserWarning):
    """A tracker failed while logging and stopped; the run went on."""


def open_trackers(specs: list[str], out: OutputFolder) -> list[Tracker]:
    """The trackers of ``--track`` values: ``mlflow`` (a store in the output folder ``out``), ``mlflow:URI``,
    ``tensorboard`` (folders in ``out``). A bad value or a missing package is a UserError, before anything is
    trained."""
    chosen: dict[str, str] = {}  # name -> its URI ("" for the default)
    for spec in specs:
        name, _, uri = spec.partition(":")
        if name not in TRACKERS or (uri and name != "mlflow"):
            raise UserError(f"--track {spec}: the trackers are mlflow, mlflow:URI and tensorboard")
        if name in chosen:  # two would log every figure twice
            raise UserError(f"--track {name} is given twice")
        _require(name)
        chosen[name] = uri
    return [MLflowTracker(uri, out) if name == "mlflow" else TensorBoardTracker(out)
            for name, uri in chosen.items()]


def _require(name: str) -> None:
    if name == "mlflow":
        # MLflow 3 sends usage reports to its makers unless told not to, from the moment it is imported; the harness
        # reaches no network unasked (MLFLOW_DISABLE_TELEMETRY=false lets it)
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        importlib.import_module(PACKAGES[name])
    except ImportError:
        raise UserError(f"--track {name} needs the {name} package: pip install 'partialseg-bench[{name}]'") from None


def guarded(event):
    """A tracker's event that never raises: the first error is a warning, and the tracker is off for the rest of the
    run (an error escaping a sink would fail the cell, or stop the run)."""

    @functools.wraps(event)
    def guarded_event(self: Tracker, *args: Any) -> None:
        if self.broken:
            return
        try:
            event(self, *args)
        except Exception as err:  # noqa: BLE001  (whatever a tracker's library raises)
            self.broken = True
            warnings.warn(f"--track {self.name} stopped logging: {_one_line(err)} (the results store has every "
                          "result)", TrackerWarning, stacklevel=2)

    return guarded_event


class Tracker(RunEvents):
    """A run's events mirrored to a tracker; a context manager that closes what it opened, telling a grid that ended
    from one that an exception (Ctrl-C) stopped and a rerun of the same command resumes."""

    name = ""

    def __init__(self) -> None:
        self.broken = False
        self.class_names: list[str] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.close(kind is None)

    def close(self, ended: bool) -> None: ...

    def leaderboard_written(self, leaderboard: Path, plots: list[Path]) -> None:
        """Called once the leaderboard and its plots were regenerated, after the run."""

    def _log(self, cell: Cell, scalars: dict[str, float], step: int) -> None: ...

    @guarded
    def epoch_done(self, cell: Cell, record: dict[str, Any]) -> None:
        self._log(cell, self.scalars(record), record["epoch"])

    def _name_classes(self, grid: Grid) -> None:
        # the epoch records hold per-class lists; the grid's dataset, already built for the run, names them
        self.class_names = [_clean(name) for name in grid_data(grid).dataset.class_names]

    def scalars(self, figures: dict[str, Any], prefix: str = "") -> dict[str, float]:
        """The numbers of an epoch record or of the final metrics by tracker name: numbers as they are, per-class
        lists as ``name/<class>``, dicts (regularisers) as ``name/<key>``; flags, strings, the confusion matrix
        and scores that do not exist (NaN, null in the store: the IoU of an absent class) are left out."""
        out = {}
        for key, value in figures.items():
            if isinstance(value, dict):
                out.update(self.scalars({f"{key}/{k}": v for k, v in value.items()}, prefix))
            elif isinstance(value, list) and len(value) == len(self.class_names) and all(
                    v is None or _is_number(v) for v in value):
                out.update(self.scalars(dict(zip((f"{key}/{c}" for c in self.class_names), value)), prefix))
            elif _is_number(value) and math.isfinite(value) and key != "epoch":  # the epoch is the step
                out[_clean(prefix + key)] = float(value)
        return out


def _one_line(err: Exception) -> str:
    return f"{type(err).__name__}: {next(iter(str(err).strip().splitlines()), '')}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _clean(name: str) -> str:
    """A name MLflow accepts for a metric or a param: letters, digits, ``_ - . / `` and spaces."""
    return re.sub(r"[^\w\-./ ]", "_", str(name))


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as dotted keys (``arch.kwargs.depth``); lists and other values as JSON."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[_clean(prefix + key)] = value if isinstance(value, str) else json.dumps(value)
    return out


class MLflowTracker(Tracker):
    """The grid one parent run, each cell a run nested under it, in the experiment ``partialseg-bench/<grid name>``.
    Runs are found again by tags (the cell's id; the grid's name and file), so a rerun of the same command continues
    the runs an interrupted one left. The default store is ``OUT/mlflow.db`` with artifacts in
    ``OUT/mlflow-artifacts``."""

    name = "mlflow"

    def __init__(self, uri: str, out: OutputFolder):
        super().__init__()
        from mlflow.tracking import MlflowClient

        self.artifacts = None
        if not uri:  # a local store: no server to start, and `mlflow ui` reads it
            out.path.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{out.mlflow_store.resolve()}"
            self.artifacts = out.mlflow_artifacts.resolve().as_uri()
        # A URI of no known kind fails here, before any training (a server is only reached when logging); a new
        # local store is made here too, without MLflow's and alembic's lines about it in the run's display.
        logging.disable(logging.INFO)
        try:
            self.client = MlflowClient(tracking_uri=uri)
        except Exception as err:  # noqa: BLE001
            raise UserError(f"--track mlflow:{uri}: {_one_line(err)}") from None
        finally:
            logging.disable(logging.NOTSET)
        self.experiment = self.parent = None
        self.runs: dict[str, str] = {}  # cell id -> run id, of the cells in hand

    def _find(self, tag: str, value: str):
        found = self.client.search_runs([self.experiment], f"tags.`{PREFIX}{tag}` = '{value}'", max_results=1)
        return found[0] if found else None

    def _reopen(self, run) -> str:
        self.client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id

    @guarded
    def grid_started(self, grid: Grid, todo: list[Cell], finished: int) -> None:
        self._name_classes(grid)
        name = f"partialseg-bench/{grid.name}"
        experiment = self.client.get_experiment_by_name(name)
        self.experiment = (experiment.experiment_id if experiment is not None
                           else self.client.create_experiment(name, artifact_location=self.artifacts))
        # two grid files of one name are two grids (as the store's provenance tells them apart)
        key = hashlib.sha256(f"{grid.name}\0{grid.path.resolve()}".encode()).hexdigest()[:16]
        parent = self._find("grid_key", key)
        self.parent = self._reopen(parent) if parent is not None else self.client.create_run(
            self.experiment, run_name=grid.name,
            tags={f"{PREFIX}grid_key": key, f"{PREFIX}grid": grid.name, f"{PREFIX}grid_file": str(grid.path)},
        ).info.run_id

    @guarded
    def cell_started(self, cell: Cell, resume_epoch: int, host: str) -> None:
        run = self._find("cell_id", cell.cell_id)
        if run is not None and resume_epoch == 0 and run.data.metrics:
            # trained again from scratch (its resume state was lost): the store forgot those epochs, and so do we
            self.client.delete_run(run.info.run_id)
            run = None
        if run is not None:
            self.runs[cell.cell_id] = self._reopen(run)
            return
        tags = {"mlflow.parentRunId": self.parent, f"{PREFIX}cell_id": cell.cell_id, f"{PREFIX}grid": cell.grid,
                f"{PREFIX}label": cell.label}
        run_id = self.runs[cell.cell_id] = self.client.create_run(self.experiment, run_name=cell.label,
                                                                  tags=tags).info.run_id
        from mlflow.entities import Param

        params = [Param(key, value[:MAX_PARAM_LENGTH])
                  for key, value in {"cell_id": cell.cell_id, **flatten(cell.config)}.items()]
        for start in range(0, len(params), BATCH_PARAMS):
            self.client.log_batch(run_id, params=params[start:start + BATCH_PARAMS])
        self.client.log_dict(run_id, cell.config, "config.json")

    def _log(self, cell: Cell, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.runs[cell.cell_id], metrics=[Metric(k, v, now, step) for k, v in scalars.items()])

    @guarded
    def cell_done(self, cell: Cell, metrics: dict[str, Any]) -> None:
        run_id = self.runs[cell.cell_id]
        self._log(cell, self.scalars(metrics, "result/"), metrics["epochs"])
        matrices = {key: metrics[key] for key in ("confusion_matrix", "test_confusion_matrix") if key in metrics}
        self.client.log_dict(run_id, {"class_names": metrics["class_names"], "rows": "true class",
                                      "columns": "predicted class", **matrices}, "confusion_matrix.json")
        self.client.set_terminated(self.runs.pop(cell.cell_id), "FINISHED")

    @guarded
    def cell_failed(self, cell: Cell, error: str) -> None:
        if cell.cell_id in self.runs:  # a cell lost before it reported its start has no run
            self.client.set_terminated(self.runs.pop(cell.cell_id), "FAILED")

    @guarded
    def leaderboard_written(self, leaderboard: Path, plots: list[Path]) -> None:
        if self.parent is None:
            return
        self.client.log_artifact(self.parent, str(leaderboard))
        for plot in plots:
            self.client.log_artifact(self.parent, str(plot), "plots")

    @guarded
    def close(self, ended: bool) -> None:
        # KILLED, not FAILED: what an interruption left, the same command resumes
        for run_id in self.runs.values():
            self.client.set_terminated(run_id, "KILLED")
        self.runs.clear()
        if self.parent is not None:
            self.client.set_terminated(self.parent, "FINISHED" if ended else "KILLED")


class TensorBoardTracker(Tracker):
    """The same scalars through ``torch.utils.tensorboard``, one log folder per cell (``OUT/tensorboard/<cell
    id>``), the epoch as the global step."""

    name = "tensorboard"

    def __init__(self, out: OutputFolder):
        super().__init__()
        self.folder = out.tensorboard
        self.writers: dict[str, Any] = {}  # cell id -> its SummaryWriter, of the cells in hand

    @guarded
    def grid_started(self, grid: Grid, todo: list[Cell], finished: int) -> None:
        self._name_classes(grid)

    @guarded
    def cell_started(self, cell: Cell, resume_epoch: int, host: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if cell.cell_id in self.writers:  # a retry after its worker died
            self.writers.pop(cell.cell_id).close()
        folder = self.folder / cell.cell_id
        new = not folder.exists()
        # A resumed cell appends to its folder; purge_step hides whatever an earlier attempt logged after the epoch
        # it resumes from (all of it for a cell trained again from scratch), as the store forgot it.
        writer = self.writers[cell.cell_id] = SummaryWriter(str(folder), purge_step=resume_epoch + 1)
        if new:  # TensorBoard names runs by their folders: the cell's label says which one it is
            writer.add_text("cell", f"{cell.label} (grid {cell.grid}, cell {cell.cell_id})", 0)

    def _log(self, cell: Cell, scalars: dict[str, float], step: int) -> None:
        writer = self.writers[cell.cell_id]
        for key, value in scalars.items():
            writer.add_scalar(key, value, step)
        writer.flush()  # TensorBoard shows an epoch as soon as it is stored

    @guarded
    def cell_done(self, cell: Cell, metrics: dict[str, Any]) -> None:
        self._log(cell, self.scalars(metrics, "result/"), metrics["epochs"])
        self.writers.pop(cell.cell_id).close()

    @guarded
    def cell_failed(self, cell: Cell, error: str) -> None:
        if cell.cell_id in self.writers:
            self.writers.pop(cell.cell_id).close()

    @guarded
    def close(self, ended: bool) -> None:
        while self.writers:
            self.writers.popitem()[1].close()
