"""An output folder (``--out``): the one place that knows its layout.

``<out>/results.sqlite`` is the results store (:mod:`bench.store`), the source of truth of every figure;
``<out>/checkpoints/<cell id>/`` holds a cell's checkpoints (:mod:`bench.checkpoints`: its resume state while it is
unfinished, its ``best.pt`` once it is finished); ``<out>/leaderboard.md`` is where a run writes its leaderboard unless
told otherwise. The experiment trackers' local stores (:mod:`bench.trackers`) are ``<out>/mlflow.db`` with artifacts in
``<out>/mlflow-artifacts/``, and ``<out>/tensorboard/<cell id>/``. One command at a time may write in a folder:
:meth:`OutputFolder.held` takes its lock.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.store import ResultStore
from registry.errors import UserError
from registry.locks import folder_lock, wait_for_writers

STORE_NAME = "results.sqlite"
STRAY_WRITERS_TIMEOUT = 60.0  # seconds a new run waits for the workers of a killed one to notice and end


class OutputFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def store_path(self) -> Path:
        return self.path / STORE_NAME

    @property
    def checkpoints(self) -> Path:
        """Absolute: the workers that write in it may run in another folder."""
        return (self.path / "checkpoints").resolve()

    def cell_checkpoints(self, cell_id: str) -> Path:
        return self.checkpoints / cell_id

    @property
    def leaderboard(self) -> Path:
        """Where a command writes the leaderboard when ``--leaderboard`` is not given: a run never writes over the
        published one unless asked to."""
        return self.path / "leaderboard.md"

    @property
    def mlflow_store(self) -> Path:
        return self.path / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.path / "mlflow-artifacts"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    def has_store(self) -> bool:
        return self.store_path.exists()

    @contextmanager
    def held(self) -> Iterator[ResultStore]:
        """The folder to oneself, its store open for writing: two commands writing one store would each believe they
        own its unfinished cells. Waits for the workers of a killed run that may still write checkpoints."""
        with folder_lock(self.path, f"another bench run is using {self.path}; wait for it or pass another --out"):
            with ResultStore(self.store_path) as store:
                wait_for_writers(self.checkpoints, STRAY_WRITERS_TIMEOUT,
                                 f"waiting for the workers of an earlier run to stop writing in {self.checkpoints}")
                yield store

    @contextmanager
    def reading(self) -> Iterator[ResultStore | None]:
        """The store opened read-only (it may be on a read-only disk), or None when the folder has none yet."""
        if not self.has_store():
            yield None
            return
        with ResultStore(self.store_path, readonly=True) as store:
            yield store

    def require_store(self, why: str = "run `bench run --grid NAME` first") -> ResultStore:
        """The store opened read-only; a UserError saying ``why`` it is wanted when there is none."""
        if not self.has_store():
            raise UserError(f"no results store at {self.store_path}: {why}")
        return ResultStore(self.store_path, readonly=True)

    def forget(self, store: ResultStore, cell_ids: list[str]) -> None:
        """Remove cells from the store and their checkpoints from the folder (``bench prune --delete``); the store
        must be this folder's, held."""
        store.delete(cell_ids)
        for cell_id in cell_ids:
            shutil.rmtree(self.cell_checkpoints(cell_id), ignore_errors=True)
