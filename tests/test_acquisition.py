"""Active annotation rounds: each strategy picks exactly the pixels a hand-worked probability map says; picks never
repeat and never fall on a pixel that is labelled or not annotated; an active cell stopped anywhere resumes with the
same picks and ends as an uninterrupted one; a grid that asks for an acquisition that cannot run is refused in one
line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from grids import TINY_UNET, synthetic_grid
from user_faults import Stop, one_line, run_main, stop_after, write_grid

import bench.checkpoints
import bench.train
from bench.acquisition import NO_PICK, acquire, pick_tile, picked_pixels, uncertainty, with_picks
from bench.cell_job import GridData
from bench.cli import main
from bench.data import Normalizer
from bench.device import choose_precision
from bench.grid import parse_grid
from bench.plots import budget_points
from bench.show import annotations_figure
from bench.store import ResultStore
from registry.annotation import PUBLISHED_COSTS, priced
from registry.maskers.active import Acquisition

CPU = torch.device("cpu")
FLOAT32 = choose_precision(CPU, False)
# One 1x4 tile of three classes; by entropy the order is 3, 1, 0, 2, by margin 0, 3, 1, 2 (a hand-worked example:
# pixel 0 is torn between two classes, pixel 1 spread over three).
PROBABILITIES = np.array([[0.5, 0.5, 0.0], [0.4, 0.3, 0.3], [0.8, 0.1, 0.1], [0.34, 0.33, 0.33]])


class FixedOutput(torch.nn.Module):
    """A model whose class probabilities are given: ``[N, C, H, W]``, whatever the images (batches in order)."""

    def __init__(self, probabilities: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", torch.log(probabilities.clamp_min(1e-9)))
        self.seen = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch = self.logits[self.seen:self.seen + len(images)]
        self.seen += len(images)
        return batch


def one_row_tile(probabilities: np.ndarray):
    """(model, images, partial, full) for one 1xW tile with these per-pixel class probabilities ``[W, C]``."""
    width, classes = probabilities.shape
    model = FixedOutput(torch.tensor(probabilities.T[None, :, None, :], dtype=torch.float32))
    images = np.zeros((1, 1, width, 3), np.uint8)
    partial = np.full((1, 1, width), -1, np.int8)
    full = np.zeros((1, 1, width), np.int8)
    return model, images, partial, full


def run_acquire(model, images, partial, full, strategy, per_round, min_distance=0.0, round_index=1, seed=0,
                num_classes=3):
    settings = Acquisition(strategy, per_round, 1, min_distance)
    return acquire(model, images, partial, full, settings, round_index, seed, num_classes,
                   Normalizer((0.5,) * 3, (0.25,) * 3, CPU), 8, FLOAT32)


def test_entropy_and_margin_scores_against_a_float64_computation():
    p = torch.tensor(PROBABILITIES.T[None, :, None, :], dtype=torch.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(PROBABILITIES * np.log(PROBABILITIES), axis=1)
    ordered = np.sort(PROBABILITIES, axis=1)
    np.testing.assert_allclose(uncertainty(p, "entropy")[0, 0].numpy(), entropy, rtol=1e-6)
    np.testing.assert_allclose(uncertainty(p, "margin")[0, 0].numpy(), ordered[:, -2] - ordered[:, -1], atol=1e-7)


@pytest.mark.parametrize(("strategy", "expected"), [("entropy", [3, 1]), ("margin", [0, 3])])
def test_a_fixed_model_s_most_uncertain_pixels_are_picked(strategy, expected):
    picks = run_acquire(*one_row_tile(PROBABILITIES), strategy, per_round=2)
    assert picks.tolist() == [expected]


def test_labelled_and_not_annotated_pixels_are_never_picked():
    model, images, partial, full = one_row_tile(PROBABILITIES)
    partial[0, 0, 3] = full[0, 0, 3]  # labelled already
    full[0, 0, 1] = partial[0, 0, 1] = -1  # not annotated: no label to take
    picks = run_acquire(model, images, partial, full, "entropy", per_round=4)
    assert picks.tolist() == [[0, 2, NO_PICK, NO_PICK]]  # the two candidates, by entropy; the rest unfilled


def test_ties_go_to_the_lower_index_and_min_distance_spaces_the_picks():
    scores = np.zeros((3, 3))
    candidates = np.ones((3, 3), bool)
    assert pick_tile(scores, candidates, 4).tolist() == [0, 1, 2, 3]
    # At 1.2 the four neighbours at 1 are too close, not the diagonal ones at sqrt 2: a checkerboard; at 1.5 all
    # eight neighbours are; at 2.5 the corners 2 apart are, not the opposite one at 2 sqrt 2.
    assert pick_tile(scores, candidates, 9, min_distance=1.2).tolist() == [0, 2, 4, 6, 8]
    assert pick_tile(scores, candidates, 9, min_distance=1.5).tolist() == [0, 2, 6, 8]
    assert pick_tile(scores, candidates, 9, min_distance=2.5).tolist() == [0, 8]
    # min_distance 1 or less lets neighbours be picked
    assert pick_tile(scores, candidates, 9, min_distance=1).tolist() == list(range(9))


def test_min_distance_holds_between_every_two_picks_of_a_tile():
    scores = np.random.default_rng(0).random((20, 20))
    picked = pick_tile(scores, np.ones((20, 20), bool), 20, min_distance=3.5)
    rows, columns = np.divmod(picked, 20)
    gaps = np.hypot(rows[:, None] - rows[None], columns[:, None] - columns[None])
    assert len(picked) == 20 and gaps[~np.eye(len(picked), dtype=bool)].min() >= 3.5
    assert picked[0] == np.argmax(scores)  # the best candidate comes first


def test_class_balanced_takes_turns_rarest_class_first():
    # predicted classes of a 2x4 tile, and entropies: class 1 (rarest) picks first (pixel 3), then 0 (pixel 0), 2
    # (pixel 5), 1 again (pixel 6), 0 again (pixel 7).
    predicted = np.array([[0, 0, 1, 1], [2, 2, 1, 0]])
    scores = np.array([[0.9, 0.1, 0.2, 0.8], [0.5, 0.6, 0.3, 0.4]])
    picked = pick_tile(scores, np.ones((2, 4), bool), 5, predicted=predicted, class_turns=[1, 0, 2])
    assert picked.tolist() == [3, 0, 5, 6, 7]
    # through acquire, the turns follow the partial masks' labelled counts: class 0 has none, class 2 one, class 1
    # two; predicted classes 0, 1, 1, 2, 0 on pixels 0-4, pixel 4 labelled already.
    probabilities = np.array([[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.8, 0.1, 0.1]])
    model, images, partial, full = one_row_tile(probabilities)
    full[0, 0] = [0, 1, 1, 2, 2]
    partial[0, 0, 4] = 2
    others = np.array([[[1, 1, -1, -1, -1]]], np.int8)  # another tile's labels: class 1 is the commonest
    model.logits = torch.cat([model.logits, model.logits])
    picks = run_acquire(model, np.concatenate([images, images]), np.concatenate([partial, others]),
                        np.concatenate([full, np.ones_like(full)]), "class_balanced", per_round=3)
    # tile 0: class 0 first (pixel 0, then no candidate of class 0 left but pixel 4, which is labelled), class 2
    # (pixel 3), class 1 (pixel 1, the higher entropy of 1 and 2)
    assert picks[0].tolist() == [0, 3, 1]


def test_random_picks_are_distinct_candidates_drawn_anew_each_round():
    rng = np.random.default_rng(1)
    full = rng.integers(-1, 3, (4, 8, 8)).astype(np.int8)
    partial = np.where(rng.random((4, 8, 8)) < 0.3, full, -1).astype(np.int8)
    images = np.zeros((4, 8, 8, 3), np.uint8)
    first = run_acquire(None, images, partial, full, "random", per_round=10, round_index=1)
    again = run_acquire(None, images, partial, full, "random", per_round=10, round_index=1)
    other = run_acquire(None, images, partial, full, "random", per_round=10, round_index=2)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    for tile, chosen in enumerate(first):
        chosen = chosen[chosen != NO_PICK]
        candidates = np.flatnonzero((full[tile] >= 0) & (partial[tile] < 0))
        assert len(set(chosen)) == len(chosen) == min(10, len(candidates))
        assert set(chosen) <= set(candidates)
    masks = with_picks(partial, full, [first])
    assert np.count_nonzero(masks >= 0) == np.count_nonzero(partial >= 0) + picked_pixels([first])
    assert ((masks == full) | (masks == -1)).all() and ((partial < 0) | (masks == partial)).all()


ACTIVE = ('{ name = "active", strategy = "STRATEGY", per_round = 12, rounds = 2, '
          'start = { name = "points_per_image", count = 4 }, min_distance = 2, restart = RESTART }')


def active_grid(tmp_path, strategy="entropy", restart="false", name="grid.toml"):
    path = tmp_path / name
    path.write_text(synthetic_grid(16, 8, 4, arch=TINY_UNET, maskers=ACTIVE.replace("STRATEGY", strategy)
                                   .replace("RESTART", restart), fractions="1.0", epochs=2, batch_size=8,
                                   recipe='class_weights = "inverse_sqrt_frequency"'))
    return parse_grid(path.read_text(), path)


def comparable(history):
    return [{k: v for k, v in h.items() if k not in ("train_seconds", "eval_seconds", "resumed")} for h in history]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    folder = tmp_path_factory.mktemp("active")
    grid = active_grid(folder)
    cell = grid.cells[0]
    history, metrics = bench.train.train_cell(cell, GridData(grid).for_cell(cell), CPU, folder / "ckpt")
    return grid, history, metrics


def test_rounds_add_their_picks_to_the_labels_and_the_annotation(straight):
    grid, history, metrics = straight
    assert [h["round"] for h in history] == [0, 0, 1, 1, 2, 2]
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    start = 16 * 4
    assert rounds[0]["labelled_pixels"] == start
    assert start < rounds[1]["labelled_pixels"] <= start + 16 * 12
    assert rounds[1]["labelled_pixels"] < rounds[2]["labelled_pixels"] <= start + 2 * 16 * 12
    assert metrics["labelled_fraction"] == rounds[2]["labelled_fraction"]
    assert rounds[2]["labelled_fraction"] == rounds[2]["labelled_pixels"] / (16 * 32 ** 2)
    for summary in rounds:  # one click per labelled pixel, at the grid's price
        counts = summary["annotation"]["counts"]
        assert counts == {"tile": 16, "point": summary["labelled_pixels"]}
        assert math.isclose(summary["annotation"]["hours_per_1000_tiles"],
                            counts["point"] * 2.4 / 16 * 1000 / 3600)
        epochs = [h for h in history if h["round"] == summary["round"]]
        assert summary["best_miou"] == max(h["miou"] for h in epochs)
    assert metrics["annotation"] == rounds[-1]["annotation"]
    assert metrics["best_miou"] == rounds[-1]["best_miou"]  # the cell's figure is its last round's
    assert metrics["epochs"] == 6


@pytest.mark.parametrize("stop", [1, 2, 3])  # mid round 0; between round 0 and its picks; mid round 1
def test_a_stopped_acquisition_resumes_to_the_same_end(tmp_path, straight, stop):
    grid, history, metrics = straight
    cell = grid.cells[0]
    data = GridData(grid).for_cell(cell)
    with pytest.raises(Stop):
        bench.train.train_cell(cell, data, CPU, tmp_path, on_epoch=stop_after(stop))
    resumed, resumed_metrics = bench.train.train_cell(cell, data, CPU, tmp_path)
    assert comparable(resumed) == comparable(history)
    assert resumed_metrics["rounds"] == metrics["rounds"]


def test_a_stop_after_the_picks_resumes_with_those_picks_not_new_ones(tmp_path, straight, monkeypatch):
    """Stopped as round 1 begins (its picks in the resume state, no epoch of it trained): the resumed run picks
    only for round 2, and ends as the uninterrupted one."""
    grid, history, metrics = straight
    cell = grid.cells[0]
    data = GridData(grid).for_cell(cell)
    real_save = bench.checkpoints.save_resume_state

    def save_then_stop(state, folder):
        real_save(state, folder)
        if state.get("round") == 1 and state["epoch"] == 2:  # round 1's picks kept, none of its epochs trained
            raise Stop

    monkeypatch.setattr(bench.checkpoints, "save_resume_state", save_then_stop)
    with pytest.raises(Stop):
        bench.train.train_cell(cell, data, CPU, tmp_path)
    monkeypatch.setattr(bench.checkpoints, "save_resume_state", real_save)
    rounds_picked = []
    real_acquire = bench.train.acquire
    monkeypatch.setattr(bench.train, "acquire", lambda *a, **k: rounds_picked.append(a[5]) or real_acquire(*a, **k))
    resumed, resumed_metrics = bench.train.train_cell(cell, data, CPU, tmp_path)
    assert rounds_picked == [2] and comparable(resumed) == comparable(history)
    assert resumed_metrics["rounds"] == metrics["rounds"]


def test_restart_trains_each_round_from_the_initial_weights(tmp_path):
    grid = active_grid(tmp_path, restart="true")
    cell = grid.cells[0]
    history, metrics = bench.train.train_cell(cell, GridData(grid).for_cell(cell), CPU, tmp_path / "ckpt")
    assert len(metrics["rounds"]) == 3 and [h["round"] for h in history] == [0, 0, 1, 1, 2, 2]
    continued = active_grid(tmp_path, name="continued.toml").cells[0]
    assert cell.cell_id != continued.cell_id  # restart is part of the cell's identity


@pytest.mark.parametrize(("field", "value", "message"), [
    ("strategy", '"loudest"', "strategy must be one of 'entropy', 'margin', 'random', 'class_balanced'"),
    ("rounds", "0", "rounds must be a positive integer, not 0"),
    ("per_round", "-3", "per_round must be a positive integer, not -3"),
    ("start", '"active"', "start must be another masker, not 'active'"),
    ("start", '"clicks"', "start: unknown masker 'clicks'"),
    ("start", "{ name = \"points_per_image\", count = 0 }", "count must be a positive integer, not 0"),
])
def test_an_acquisition_that_cannot_be_built_is_refused_with_its_line(tmp_path, capsys, field, value, message):
    grid = write_grid(tmp_path, synthetic_grid(maskers=f'{{ name = "active", {field} = {value} }}'))
    one_line(*run_main(capsys, "run", "--grid", str(grid), "--out", str(tmp_path / "out"))[::2], 2, message,
             "line 11")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("masker", "message"), [
    ('{ name = "active", per_round = 1025 }', "per_round 1025 is more than the 1024 pixels of a 32x32 tile"),
    ('{ name = "active", start = { name = "eroded", width = 30 } }',
     "its start masker labels no pixel of the training split"),
])
def test_an_acquisition_its_tiles_cannot_honour_is_refused_before_training(tmp_path, capsys, masker, message):
    grid = write_grid(tmp_path, synthetic_grid(maskers=masker))
    one_line(*run_main(capsys, "run", "--grid", str(grid), "--out", str(tmp_path / "out"))[::2], 2, message,
             "line 11")
    assert not (tmp_path / "out").exists()


def stored(out) -> dict:
    with ResultStore(out / "results.sqlite", readonly=True) as store:
        return {row.cell_id: row for row in store.rows()}


def test_a_run_stores_the_rounds_shows_them_and_prices_them_anew_without_retraining(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    text = synthetic_grid(8, 4, 4, maskers=ACTIVE.replace("STRATEGY", "random").replace("RESTART", "false")
                          + ', "full"', fractions="1.0", epochs=1)
    grid.write_text(text)
    out = tmp_path / "runs"
    assert main(["run", "--grid", str(grid), "--out", str(out)]) == 0
    first = {row.config["masker"]["name"]: row for row in stored(out).values()}
    active = first["active"]
    assert [r["round"] for r in active.metrics["rounds"]] == [0, 1, 2]
    board = (out / "leaderboard.md").read_text()
    table = board[board.index("Active annotation rounds"):].split("\n\n")[1]
    lines = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    assert lines == [  # a line per round: its labels, hours and best mIoU
        ["unet", "partial_ce", "active", str(r["round"]), f"{100 * r['labelled_fraction']:.2f}",
         f"{r['annotation']['hours_per_1000_tiles']:.3g}", "0", f"{r['best_miou']:.3f}"]
        for r in active.metrics["rounds"]]
    series = budget_points(stored(out).values())
    rounds_line = next(line for label, line in series.items() if label.endswith("active"))
    assert [(hours, miou) for hours, miou, _ in rounds_line] == sorted(
        (r["annotation"]["hours_per_1000_tiles"], r["best_miou"]) for r in active.metrics["rounds"])
    assert (out / "plots" / "synthetic-g-budget.png").exists()
    # bench show's annotations: the active column has every round's picks, read from the cell's best.pt
    parsed = parse_grid(text, grid)
    figure = annotations_figure(parsed, GridData(parsed), 2, out / "checkpoints")
    titles = [ax.get_title() for ax in figure.axes[2:3]]
    assert titles[0].startswith("active (after round 2)")
    start_only = annotations_figure(parsed, GridData(parsed), 2, tmp_path / "elsewhere").axes[2].get_title()
    assert start_only.startswith("active (start masks)")
    shares = [float(title.split("\n")[1].split(" %")[0]) for title in (titles[0], start_only)]
    assert shares[0] > shares[1]

    grid.write_text(text + "\n[annotation_cost]\npoint = 1\n")
    capsys.readouterr()
    assert main(["run", "--grid", str(grid), "--out", str(out)]) == 0
    assert "0 cells run, 2 already finished" in capsys.readouterr().out
    again = next(row for row in stored(out).values() if row.config["masker"]["name"] == "active")
    costs = {**PUBLISHED_COSTS, "point": 1.0}
    assert [r["annotation"] for r in again.metrics["rounds"]] == [
        priced(r["annotation"]["counts"], costs) for r in active.metrics["rounds"]]
    assert again.metrics["annotation"] == again.metrics["rounds"][-1]["annotation"]
    assert again.history == active.history and again.finished_at == active.finished_at


def test_the_best_few_of_a_large_tile_are_the_head_of_its_whole_order():
    """Picks without spacing or turns come from the candidates at or above the count-th best score only: the same
    pixels, in the same order, as the whole sorted order gives, ties included."""
    rng = np.random.default_rng(3)
    scores = np.round(rng.random((64, 64)), 2)  # many ties
    candidates = rng.random((64, 64)) < 0.7
    flat = np.flatnonzero(candidates)
    whole = flat[np.lexsort((flat, -scores.reshape(-1)[flat]))]
    for count in (1, 7, 50, len(flat)):
        assert pick_tile(scores, candidates, count).tolist() == whole[:count].tolist()


def test_the_csv_export_gives_each_round_its_columns(straight, tmp_path):
    """A cell with as many rounds as classes must not have its rounds taken for per-class values."""
    from bench.export import cell_record
    from bench.store import CellRow

    _, history, metrics = straight
    rounds = [{**metrics["rounds"][0], "round": index} for index in range(5)]  # five rounds, five classes
    row = CellRow("c", "g", "synthetic", "l", {"arch": {"label": "unet"}, "loss": {"label": "partial_ce"},
                                               "masker": {"label": "active"}, "fraction": 1.0, "seed": 0},
                  "done", history, {**metrics, "rounds": rounds, "class_names": ["a", "b", "c", "d", "e"]}, {}, None,
                  1, "", None)
    record = cell_record(row)
    assert [record[f"round{index}_best_miou"] for index in range(5)] == [r["best_miou"] for r in rounds]
    assert record["round4_hours_per_1000_tiles"] == rounds[4]["annotation"]["hours_per_1000_tiles"]
    assert not any(key.startswith("rounds") for key in record)


def test_a_pool_worker_runs_an_acquisition_as_this_process_does(tmp_path):
    from bench.executors import DevicePoolExecutor
    from bench.outputs import OutputFolder
    from bench.runner import run_grid

    grid = active_grid(tmp_path, strategy="margin")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the worker: another thread count sums in another order
    try:
        run_grid(grid, OutputFolder(tmp_path / "here"), CPU)
    finally:
        torch.set_num_threads(threads)
    run_grid(grid, OutputFolder(tmp_path / "pool"), CPU, executor=DevicePoolExecutor([CPU], threads=1))
    (here,), (pooled,) = stored(tmp_path / "here").values(), stored(tmp_path / "pool").values()
    assert pooled.status == "done" and pooled.metrics["rounds"] == here.metrics["rounds"]
    assert comparable(pooled.history) == comparable(here.history)
