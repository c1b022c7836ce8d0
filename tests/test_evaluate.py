"""``bench evaluate``: weights trained elsewhere, scored on a grid's dataset as its cells are, against a NumPy
computation of the test's own; stored once, shown apart on the leaderboard, never taken for a cell of the grid; and
every bad weights file ending in one line, with nothing stored."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from user_faults import TINY, copy_store, exported, one_line, run_main, write_grid

import registry
from bench.checkpoints import BEST, read
from bench.grid import load_grid
from bench.plots import write_plots
from bench.show import best_cells
from bench.store import EVALUATION, ResultStore, stale_rows

ARCH = "unet:base_channels=4,depth=3"  # the tiny grid's architecture, as --arch gives it
DATASET = {"tile_size": 32, "train_size": 8, "val_size": 4, "test_size": 4}  # the tiny grid's dataset
BATCH = 8  # the tiny grid's evaluation batch: twice its batch_size, 4
NUM_CLASSES = 5


class Custom:
    """A class of this module: a file that pickles one cannot be read without importing it."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(grid file, output folder) of the tiny grid run for two epochs: one finished cell and its best.pt."""
    folder = tmp_path_factory.mktemp("trained")
    grid = write_grid(folder, TINY.replace("epochs = 1", "epochs = 2"))
    from bench.cli import main
    assert main(["run", "--grid", str(grid), "--out", str(folder / "runs")]) == 0
    return grid, folder / "runs"


@pytest.fixture
def out(trained, tmp_path):
    """A copy of the trained output folder, for a test to evaluate into."""
    return copy_store(trained[1], tmp_path / "runs")


def spread_model(num_classes: int = NUM_CLASSES, seed: int = 0) -> torch.nn.Module:
    """The tiny grid's architecture with weights that predict several classes (a fresh one predicts one alone)."""
    torch.manual_seed(seed)
    model = registry.create_arch("unet", num_classes=num_classes, in_chans=3, base_channels=4, depth=3)
    noise = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=noise) * 0.5)
    return model.eval()


def evaluate(capsys, grid: Path, out: Path, weights: Path, *extra: str) -> tuple[int, str, str]:
    return run_main(capsys, "evaluate", "--arch", ARCH, "--weights", str(weights), "--grid", str(grid), "--out",
                    str(out), "--device", "cpu", *extra)


def stored_evaluations(out: Path) -> list:
    with ResultStore(out / "results.sqlite", readonly=True) as store:
        return [row for row in store.rows("done") if row.kind == EVALUATION]


def numpy_figures(state: dict, split: str, batch: int) -> dict:
    """The figures of ``state`` on the tiny grid's split, from its predictions (normalised with the dataset's mean
    and std, CPU float32), counted and scored in float64 NumPy."""
    model = registry.create_arch("unet", num_classes=NUM_CLASSES, in_chans=3, base_channels=4, depth=3)
    model.load_state_dict(state)
    model = model.to(memory_format=torch.channels_last).eval()
    dataset = registry.create_dataset("synthetic", **DATASET)
    images, masks = dataset.split(split)
    mean, std = (np.float32(255) * np.array(values, np.float32) for values in (dataset.mean, dataset.std))
    batch_cms = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy((images[start:start + batch].astype(np.float32) - mean) / std).permute(0, 3, 1, 2)
        with torch.inference_mode():
            predicted = model(x.contiguous(memory_format=torch.channels_last)).argmax(1).numpy()
        cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.float64)
        np.add.at(cm, (masks[start:start + batch].astype(np.int64).ravel(), predicted.ravel()), 1)
        batch_cms.append(cm)

    def iou(cm):
        union = cm.sum(0) + cm.sum(1) - np.diag(cm)
        return np.where(union > 0, np.diag(cm) / np.maximum(union, 1), np.nan)

    cm = sum(batch_cms)
    return {"miou": np.nanmean(iou(cm)), "iou": iou(cm), "accuracy": np.trace(cm) / cm.sum(), "confusion_matrix": cm,
            "per_batch_miou": np.mean([np.nanmean(iou(b)) for b in batch_cms]), "predicted": cm.sum(0)}


def test_the_figures_are_those_of_an_independent_numpy_computation(trained, tmp_path, capsys):
    grid, _ = trained
    state = spread_model().state_dict()
    torch.save(state, tmp_path / "weights.pt")
    code, text, err = evaluate(capsys, grid, tmp_path / "runs", tmp_path / "weights.pt",
                               "--set", "recipe.eval_batch_size=3")  # 4 tiles: batches of 3 and 1
    assert code == 0, err
    (row,) = stored_evaluations(tmp_path / "runs")
    expected, m = numpy_figures(state, "val", 3), row.metrics
    assert (expected["predicted"] > 0).sum() >= 2  # not a model that predicts one class everywhere
    assert m["confusion_matrix"] == expected["confusion_matrix"].astype(int).tolist()
    assert m["miou"] == pytest.approx(expected["miou"], abs=1e-12)
    assert m["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert m["iou"] == [None if np.isnan(v) else pytest.approx(v, abs=1e-12) for v in expected["iou"]]
    assert m["per_batch_miou"] == pytest.approx(expected["per_batch_miou"], abs=1e-12)
    assert m["per_batch_miou"] != pytest.approx(m["miou"])  # two batches: the figures differ, as the reference's do
    assert (m["eval_batch_size"], m["split"], m["tiles"], m["precision"]) == (3, "val", 4, "float32")
    sha = hashlib.sha256((tmp_path / "weights.pt").read_bytes()).hexdigest()
    assert m["weights_sha256"] == sha and m["weights_file"] == str((tmp_path / "weights.pt").resolve())
    assert row.label == f"{ARCH} · weights.pt · val" and row.grid == "grid" and row.dataset == "synthetic"
    assert row.config["kind"] == EVALUATION and row.config["weights_sha256"] == sha
    assert row.config["arch"] == {"name": "unet", "label": ARCH, "kwargs": {"base_channels": 4, "depth": 3}}
    assert row.config["dataset"] == load_grid(str(grid)).dataset.as_config()
    assert row.provenance["grid_file"] == str(grid.resolve()) and "code_revision" in row.provenance
    shown = " ".join(text.split())
    assert f"mIoU (dataset-level) │ {m['miou']:.4f}" in shown
    assert f"per-batch mIoU (batches of 3) │ {m['per_batch_miou']:.4f}" in shown


def numpy1_names(path: Path) -> None:
    """Rewrite a torch.save file as numpy 1 pickles it: its scalar reconstructor under numpy.core."""
    source = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"cnumpy._core.multiarray\n" in data
                data = data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
            target.writestr(info.filename, data)


def reference_file(path: Path, state: dict) -> None:
    """A file as the reference experiment wrote its best_model.pth."""
    model = spread_model()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.zeros(2, 3, 32, 32)).mean().backward()
    optimizer.step()
    torch.save({"epoch": 12, "model_state_dict": state, "optimizer_state_dict": optimizer.state_dict(),
                "metrics": {"miou": np.mean([0.5, 0.4]), "iou": [np.float64(0.5), np.float64(0.4)],
                            "pixels": np.int64(4096)}}, path)


LAYOUTS = {  # name -> write(path, state)
    "the reference's": reference_file,
    "the reference's, pickled by numpy 1": lambda path, state: (reference_file(path, state), numpy1_names(path)),
    "a dict with model": lambda path, state: torch.save({"model": state, "epoch": 3}, path),
    "a DataParallel state": lambda path, state: torch.save({f"module.{k}": v for k, v in state.items()}, path),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_scores_as_the_bare_state_dict(layout, trained, tmp_path, capsys):
    grid, _ = trained
    state = spread_model().state_dict()
    torch.save(state, tmp_path / "bare.pt")
    LAYOUTS[layout](tmp_path / "other.pt", state)
    for name in ("bare.pt", "other.pt"):
        code, _, err = evaluate(capsys, grid, tmp_path / "runs", tmp_path / name)
        assert code == 0, err
    bare, other = sorted(stored_evaluations(tmp_path / "runs"), key=lambda r: r.label)
    assert bare.cell_id != other.cell_id  # other weights files, other evaluations
    for key in ("miou", "accuracy", "iou", "per_batch_miou", "confusion_matrix"):
        assert other.metrics[key] == bare.metrics[key]


def test_a_best_pt_scores_as_its_best_epoch_did(trained, out, capsys):
    grid, _ = trained
    with ResultStore(out / "results.sqlite", readonly=True) as store:
        (cell,) = store.rows("done")
    best = out / "checkpoints" / cell.cell_id / BEST
    for split in ("val", "test"):
        code, _, err = evaluate(capsys, grid, out, best, "--split", split)
        assert code == 0, err
    scored = {row.metrics["split"]: row.metrics for row in stored_evaluations(out)}
    # the epoch best.pt holds (of epochs tied on the best mIoU, the trainer keeps the last)
    epoch = next(h for h in cell.history if h["epoch"] == read(best)["epoch"])
    for key in ("miou", "accuracy", "iou", "per_batch_miou", "confusion_matrix"):
        assert scored["val"][key] == epoch[key], key
        assert scored["test"][key] == cell.metrics[f"test_{key}"], key
    assert scored["test"]["tiles"] == cell.metrics["test_tiles"]


def test_the_same_evaluation_again_stores_nothing_and_shows_the_stored_figures(trained, out, tmp_path, capsys):
    grid, _ = trained
    torch.save(spread_model().state_dict(), tmp_path / "weights.pt")
    assert evaluate(capsys, grid, out, tmp_path / "weights.pt")[0] == 0
    before = exported(capsys, out)
    (row,) = stored_evaluations(out)
    code, text, err = evaluate(capsys, grid, out, tmp_path / "weights.pt")
    assert code == 0, err
    assert exported(capsys, out) == before
    assert f"already evaluated: the figures stored on {row.finished_at[:10]}" in text
    assert f"{row.metrics['miou']:.4f}" in text
    # another split, batch or precision is another evaluation; the grid's other axes are not
    assert evaluate(capsys, grid, out, tmp_path / "weights.pt", "--set", "axes.fractions=[0.2]",
                    "--set", "recipe.epochs=5")[0] == 0
    assert exported(capsys, out) == before
    assert evaluate(capsys, grid, out, tmp_path / "weights.pt", "--set", "recipe.eval_batch_size=3")[0] == 0
    assert len(stored_evaluations(out)) == 2


def without_evaluations(board: str) -> str:
    """The leaderboard without its evaluated-weights sections, and without its date."""
    board = re.sub(r"## Evaluated weights .*?\n\n(?=## )", "", board, flags=re.DOTALL)
    return re.sub(r" on \d{4}-\d{2}-\d{2}; do not edit by hand", "", board)


def plot_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((folder / "plots").glob("*.png"))}


def test_the_leaderboard_shows_evaluations_apart_and_the_trained_tables_as_they_were(trained, out, tmp_path,
                                                                                     capsys):
    grid, _ = trained
    assert run_main(capsys, "leaderboard", "--out", str(out))[0] == 0
    before, plots = (out / "leaderboard.md").read_text(), plot_files(out)
    torch.save(spread_model().state_dict(), tmp_path / "weights.pt")
    assert evaluate(capsys, grid, out, tmp_path / "weights.pt")[0] == 0
    board = (out / "leaderboard.md").read_text()
    assert without_evaluations(board) == without_evaluations(before) and plot_files(out) == plots
    (row,) = stored_evaluations(out)
    m = row.metrics
    section = board[board.index("## Evaluated weights · synthetic · grid `grid` (external: not trained by this "
                                "harness)"):board.index("## Reference experiment")]
    (line,) = [line for line in section.splitlines() if line.startswith("| unet")]
    cells = [cell.strip() for cell in line.strip("|").split("|")]
    assert cells[:8] == [ARCH, "weights.pt", m["weights_sha256"][:12], "val", "4", f"{m['miou']:.4f}",
                         f"{m['per_batch_miou']:.4f} (batch {BATCH})", f"{m['accuracy']:.4f}"]
    assert cells[8:13] == ["–" if v is None else f"{v:.4f}" for v in m["iou"]]
    assert "| IoU background " in section and "| per-batch mIoU (ref-style) " in section


def test_an_evaluation_is_no_cell_of_its_grid(trained, out, tmp_path, capsys):
    """Not stale for prune (even with --delete, which forgets the grid's cell it no longer has), not among the cells
    bench show draws, not in the plots."""
    grid, _ = trained
    torch.save(spread_model().state_dict(), tmp_path / "weights.pt")
    assert evaluate(capsys, grid, out, tmp_path / "weights.pt")[0] == 0
    code, text, _ = run_main(capsys, "prune", "--grid", str(grid), "--out", str(out))
    assert code == 0 and "nothing to prune" in text
    with ResultStore(out / "results.sqlite", readonly=True) as store:
        rows = store.rows("done")
        edited = load_grid(str(grid), overrides=["axes.seeds=[1]"])
        stale, elsewhere = stale_rows(edited, store)
    (cell,) = [row for row in rows if row.kind != EVALUATION]
    assert stale == [cell] and elsewhere == []
    assert best_cells(load_grid(str(grid)), rows) == [cell]
    assert write_plots(stored_evaluations(out), tmp_path / "plots") == {}
    assert run_main(capsys, "prune", "--grid", str(grid), "--out", str(out), "--set", "axes.seeds=[1]",
                    "--delete")[0] == 0
    with ResultStore(out / "results.sqlite", readonly=True) as store:
        assert [row.kind for row in store.rows("done")] == [EVALUATION]
    assert run_main(capsys, "show", "--grid", str(grid), "--out", str(out), "--tiles", "1")[0] == 0


def test_export_keeps_evaluations_and_the_leaderboard_from_it_shows_them_again(trained, out, tmp_path, capsys):
    grid, _ = trained
    torch.save(spread_model().state_dict(), tmp_path / "weights.pt")
    assert evaluate(capsys, grid, out, tmp_path / "weights.pt")[0] == 0
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "grid.json").write_text(exported(capsys, out))
    assert run_main(capsys, "leaderboard", "--from", str(tmp_path / "results"), "--leaderboard",
                    str(tmp_path / "board.md"))[0] == 0
    store_board, export_board = (out / "leaderboard.md").read_text(), (tmp_path / "board.md").read_text()

    def section(board: str) -> str:
        return board[board.index("## Evaluated weights"):board.index("## Reference experiment")]

    assert section(export_board) == section(store_board)
    code, text, _ = run_main(capsys, "export", "--out", str(out))
    assert code == 0
    rows = {row["kind"]: row for row in csv.DictReader(io.StringIO(text))}
    evaluation = rows[EVALUATION]
    assert (evaluation["arch"], evaluation["loss"], evaluation["seed"], evaluation["split"]) == (ARCH, "", "", "val")
    assert float(evaluation["miou"]) == stored_evaluations(out)[0].metrics["miou"]
    assert "iou_background" in evaluation and rows["training"]["masker"] == "random_pixels"


def write_bytes(data: bytes):
    return lambda path: path.write_bytes(data)


def truncated(path: Path) -> None:
    torch.save(spread_model().state_dict(), path)
    path.write_bytes(path.read_bytes()[:3000])


def with_state(change):
    """A file of the tiny architecture's state, changed by ``change(state)``."""
    def write(path: Path) -> None:
        state = spread_model().state_dict()
        change(state)
        torch.save(state, path)
    return write


def first_conv_wider(state: dict) -> None:
    name = next(iter(state))
    state[name] = torch.zeros(state[name].shape[0] + 1, *state[name].shape[1:])


BAD = {  # name -> (write(path) or None for no file, extra arguments, fragments of the line)
    "no file": (None, (), ["w.pt: no such file"]),
    "random bytes": (write_bytes(np.random.default_rng(0).bytes(2000)), (), ["not a weights file torch can read"]),
    "a text file": (write_bytes(b"these are not weights\n"), (), ["not a weights file torch can read"]),
    "an empty file": (write_bytes(b""), (), ["an empty file, not a weights file"]),
    "a truncated zip": (truncated, (), ["w.pt is damaged"]),
    "a pickled class": (lambda path: torch.save({"model": spread_model().state_dict(), "extra": Custom()}, path), (),
                        ["refused: loading it would run code", f"{Custom.__module__}.Custom"]),
    "no weights in it": (lambda path: torch.save({"epoch": 3, "miou": 0.5}, path), (),
                         ["holds no model weights", "the keys epoch, miou"]),
    "a missing name": (with_state(lambda state: state.pop("head.bias")), (),
                       [f"does not fit {ARCH}: the file has no 'head.bias'"]),
    "an unexpected name": (with_state(lambda state: state.update(extra=torch.zeros(1))), (),
                           [f"does not fit {ARCH}: the file has 'extra', which the architecture does not"]),
    "a mis-shaped tensor": (with_state(first_conv_wider), (),
                            [f"does not fit {ARCH}: 'encoder.0.0.weight' is [5, 3, 3, 3] in the file, [4, 3, 3, 3] "
                             "in the architecture"]),
    "another class count": (lambda path: torch.save(spread_model(num_classes=7).state_dict(), path), (),
                            ["the weights are for 7 classes, the dataset has 5", "'head.weight' is [7, 4, 1, 1]"]),
    "a split the dataset lacks": (lambda path: torch.save(spread_model().state_dict(), path),
                                  ("--split", "test", "--set", "dataset.test_size=0"),
                                  ["--split test: dataset 'synthetic' has no test tiles; its splits: train, val"]),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_weights_are_one_line_and_nothing_is_stored(case, trained, out, tmp_path, capsys):
    grid, _ = trained
    write, extra, fragments = BAD[case]
    weights = tmp_path / "w.pt"
    if write is not None:
        write(weights)
    before = exported(capsys, out)
    code, _, err = evaluate(capsys, grid, out, weights, *extra)
    one_line(code, err, 2, *fragments)
    assert exported(capsys, out) == before
    assert json.loads(before) and not stored_evaluations(out)
