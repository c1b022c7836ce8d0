"""The results store: finished rows are never rewritten, and every state survives a reopen."""

from __future__ import annotations

import math

import pytest

from bench.store import ResultStore


@pytest.fixture
def store(tmp_path):
    s = ResultStore(tmp_path / "results.sqlite")
    yield s
    s.close()


def start(store, cell_id="c1"):
    store.start(cell_id, "grid", "synthetic", "label", {"seed": 0}, {"device": "cpu"})


def test_lifecycle_and_reopen(store, tmp_path):
    start(store)
    row = store.get("c1")
    assert row.status == "running" and row.attempts == 1 and row.history == []
    store.record_epoch("c1", [{"epoch": 1, "miou": 0.5}])
    store.finish("c1", [{"epoch": 1, "miou": 0.5}], {"best_miou": 0.5, "iou": [0.5, math.nan]})
    store.close()
    reopened = ResultStore(tmp_path / "results.sqlite")
    row = reopened.get("c1")
    assert row.status == "done" and row.finished_at is not None
    assert row.metrics == {"best_miou": 0.5, "iou": [0.5, None]}  # NaN stored as null, not as invalid JSON
    assert row.config == {"seed": 0} and row.provenance == {"device": "cpu"}
    reopened.close()


def test_done_row_is_never_rewritten(store):
    start(store)
    store.finish("c1", [{"epoch": 1}], {"best_miou": 0.7})
    before = store.get("c1")
    start(store)  # a later run starting the same cell
    store.record_epoch("c1", [])
    store.fail("c1", "boom")
    store.interrupt("c1")
    store.finish("c1", [], {"best_miou": 0.1})
    assert store.get("c1") == before


def test_failed_and_interrupted_cells_can_be_retried(store):
    start(store)
    store.fail("c1", "RuntimeError: boom")
    assert store.get("c1").status == "failed" and "boom" in store.get("c1").error
    start(store)
    row = store.get("c1")
    assert row.status == "running" and row.attempts == 2 and row.error is None
    store.interrupt("c1")
    assert store.get("c1").status == "interrupted"


def test_rows_by_status(store):
    for cell_id in ("a", "b", "c"):
        start(store, cell_id)
    store.finish("a", [], {"best_miou": 0.1})
    store.fail("b", "x")
    assert [r.cell_id for r in store.rows("done")] == ["a"]
    assert [r.cell_id for r in store.rows("failed")] == ["b"]
    assert len(store.rows(None)) == 3


def test_a_row_added_finished_is_done_at_once_and_never_rewritten(store):
    config = {"kind": "evaluation", "split": "val"}
    store.add_done("e1", "grid", "synthetic", "label", config, {"device": "cpu"}, {"miou": 0.5})
    row = store.get("e1")
    assert row.status == "done" and row.finished_at is not None and row.kind == "evaluation" and row.history == []
    store.add_done("e1", "grid", "synthetic", "label", config, {"device": "cpu"}, {"miou": 0.1})
    assert store.get("e1") == row
    start(store)
    assert store.get("c1").kind == "training"
