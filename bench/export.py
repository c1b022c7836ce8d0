"""``bench export``: the stored cells as a table for a spreadsheet or pandas (CSV), or whole (JSON).

The CSV has one row per cell and only flat values: the cell's identity (grid, dataset, the labels of its architecture,
loss and masker, fraction, seed), its status and kind (``training``, or ``evaluation`` for weights trained elsewhere
and scored by ``bench evaluate``, which have an architecture and no loss, masker, fraction or seed), every scalar
metric, the per-class IoUs as one column per class (``best_iou_road``), an active cell's rounds as three columns each
(``round1_best_miou``, ``round1_labelled_fraction``, ``round1_hours_per_1000_tiles``), where and when it ran, and its
full configuration as a JSON string. Confusion matrices and per-epoch histories are left to the JSON, which holds every
stored field of every cell.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Iterable
from pathlib import Path

from bench.store import CellRow
from registry.errors import UserError

IDENTITY = ("cell_id", "grid", "dataset", "arch", "loss", "masker", "fraction", "seed", "status", "kind")
LEADING = ("labelled_fraction", "best_miou", "final_miou", "test_miou")  # the metrics a reader looks for first
RUN = ("device", "code_revision", "attempts", "started_at", "finished_at", "error", "config")


def cell_record(row: CellRow) -> dict[str, object]:
    """One CSV row: identity, the scalar metrics in their stored order, per-class lists spread over one column per
    class, then where and when the cell ran."""
    config, metrics = row.config, row.metrics or {}
    record: dict[str, object] = {
        "cell_id": row.cell_id, "grid": row.grid, "dataset": row.dataset, "arch": config["arch"]["label"],
        "loss": _label(config.get("loss")), "masker": _label(config.get("masker")), "fraction": config.get("fraction"),
        "seed": config.get("seed"), "status": row.status, "kind": row.kind,
    }
    class_names = metrics.get("class_names", [])
    for key, value in metrics.items():
        if isinstance(value, dict):  # the scene-level scores (test scenes, bench predict): scalars, IoU per class
            for name, item in value.items():
                if isinstance(item, dict):
                    record.update({f"{key}_{name}_{k}": v for k, v in item.items()})
                elif not isinstance(item, list):
                    record[f"{key}_{name}"] = item
        elif not isinstance(value, list):
            record[key] = value
        elif key == "rounds":  # an active cell's rounds: a few figures of each
            for stage in value:
                record.update({f"round{stage['round']}_best_miou": stage["best_miou"],
                               f"round{stage['round']}_labelled_fraction": stage["labelled_fraction"],
                               f"round{stage['round']}_hours_per_1000_tiles":
                                   stage["annotation"]["hours_per_1000_tiles"]})
        elif key != "class_names" and len(value) == len(class_names) and not any(isinstance(v, (list, dict))
                                                                                  for v in value):
            record.update({f"{key}_{name}": v for name, v in zip(class_names, value)})
    provenance = row.provenance or {}
    record.update(device=provenance.get("device"), code_revision=provenance.get("code_revision"),
                  attempts=row.attempts, started_at=row.started_at, finished_at=row.finished_at, error=row.error,
                  config=json.dumps(config, sort_keys=True))
    return record


def _label(component: dict | None) -> str | None:
    """A component's label; None where the row has none (an evaluation has no loss or masker)."""
    return component["label"] if component is not None else None


def to_csv(rows: Iterable[CellRow]) -> str:
    """The cells as CSV: identity, the main metrics, the other metrics in order of first appearance (the union over
    the cells), then where and when they ran; a value a cell does not have (no test split, a class absent from both
    truth and prediction) is an empty field."""
    records = [cell_record(row) for row in rows]
    metrics = dict.fromkeys(key for record in records for key in record if key not in (*IDENTITY, *RUN))
    columns = [*IDENTITY, *(key for key in LEADING if key in metrics), *(key for key in metrics if key not in LEADING),
               *RUN]
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return text.getvalue()


def to_json(rows: Iterable[CellRow]) -> str:
    """Every stored field of every cell: configuration, metrics with the confusion matrices, history, provenance."""
    return json.dumps([dataclasses.asdict(row) for row in rows], indent=1) + "\n"


FORMATS = {"csv": to_csv, "json": to_json}
ROW_FIELDS = {f.name for f in dataclasses.fields(CellRow)}


def read_export(source: Path) -> list[CellRow]:
    """The cells of a JSON file written by :func:`to_json` (``bench export --format json``), or of every ``*.json``
    file in a folder of them: results kept without their store, as the repository keeps the published ones."""
    source = Path(source)
    if source.is_dir():
        files = sorted(source.glob("*.json"))
        if not files:
            raise UserError(f"--from {source}: no .json file in this folder")
        return [row for path in files for row in read_export(path)]
    try:
        records = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--from {source}: no such file or folder") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"--from {source}: not a JSON export of cells ({err})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) and set(r) == ROW_FIELDS for r in records):
        raise UserError(f"--from {source}: not what `bench export --format json` writes (a list of cells with the "
                        f"fields {', '.join(sorted(ROW_FIELDS))})")
    return [CellRow(**record) for record in records]
