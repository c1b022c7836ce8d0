"""The leaderboard: seeds aggregated as mean ± std, best first, the reference table apart, failures listed."""

from __future__ import annotations

import statistics

from bench.leaderboard import render, summary_table, tied_with_best
from bench.store import CellRow


def row(arch: str, seed: int, best: float, grid: str = "g", status: str = "done", error: str | None = None,
        test: float | None = None) -> CellRow:
    config = {
        "version": 1, "grid": grid, "dataset": {"name": "synthetic", "label": "synthetic", "kwargs": {"tile_size": 64}},
        "arch": {"name": arch, "label": arch, "kwargs": {"base_channels": 8}},
        "loss": {"name": "partial_ce", "label": "partial_ce", "kwargs": {}},
        "masker": {"name": "random_pixels", "label": "random_pixels", "kwargs": {}},
        "fraction": 0.1, "seed": seed,
        "recipe": {"optimizer": "adam", "lr": 0.001, "weight_decay": 0.0, "schedule": "cosine", "batch_size": 8,
                   "augment": ["hflip"], "epochs": 3},
    }
    metrics = {
        "best_miou": best, "final_miou": best - 0.01, "best_per_batch_miou": best + 0.03,
        "final_per_batch_miou": best + 0.02, "final_accuracy": 0.9,
        "final_iou": [0.9, None, 0.5], "epoch_seconds": 2.0, "train_images_per_second": 100.0, "epochs": 3,
        "labelled_fraction": 0.1, "class_names": ["background", "building", "woodland"],
        **({"test_miou": test, "test_per_batch_miou": test + 0.04, "test_epoch": 2, "test_tiles": 16}
           if test is not None else {}),
    } if status == "done" else None
    return CellRow(f"{arch}{seed}{grid}", grid, "synthetic", f"{arch} seed {seed}", config, status, [], metrics,
                   {"device": "CPU test", "date": "2026-11-25T10:00:00+00:00", "code_revision": "abc123"},
                   error, 1, "t", None)


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]


def test_seeds_are_one_row_with_mean_and_std_best_first():
    rows = [row("unet", 0, 0.50), row("unet", 1, 0.54), row("unetplusplus", 0, 0.60)]
    lines = table_lines(render(rows, store_path="runs/results.sqlite"))
    assert len(lines) == 2
    assert "unetplusplus" in lines[0] and "| 0.600 " in lines[0]
    expected = f"{statistics.mean([0.50, 0.54]):.3f} ± {statistics.stdev([0.50, 0.54]):.3f}"
    assert "unet " in lines[1] and expected in lines[1] and "| 0, 1 " in lines[1]


def parse_tables(text: str) -> list[list[dict[str, str]]]:
    """Every ranked table of a leaderboard as a list of {header: cell} rows."""
    tables, headers = [], None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| #"):
            headers = cells
            tables.append([])
        elif headers and line.startswith("| ") and line[2].isdigit():
            tables[-1].append(dict(zip(headers, cells, strict=True)))
        elif not line.startswith("|"):
            headers = None
    return tables


def test_best_and_final_per_batch_columns():
    (table,) = parse_tables(render([row("unet", 0, 0.5), row("unet", 1, 0.54)], store_path="s"))
    (line,) = table
    assert line["best per-batch mIoU (ref-style)"] == f"{0.55:.3f} ± {statistics.stdev([0.53, 0.57]):.3f}"
    assert line["final per-batch mIoU (ref-style)"] == f"{0.54:.3f} ± {statistics.stdev([0.52, 0.56]):.3f}"


def test_test_columns_only_where_a_table_has_test_figures():
    rows = [row("unet", 0, 0.5, grid="a", test=0.40), row("unet", 1, 0.54, grid="a", test=0.46),
            row("unetplusplus", 0, 0.6, grid="a"), row("unet", 0, 0.5, grid="b")]
    text = render(rows, store_path="s")
    with_test, without = parse_tables(text)
    assert with_test[0]["architecture"] == "unetplusplus"
    assert with_test[0]["test mIoU"] == "–" and with_test[0]["test per-batch mIoU (ref-style)"] == "–"
    assert with_test[1]["test mIoU"] == f"{0.43:.3f} ± {statistics.stdev([0.40, 0.46]):.3f}"
    assert with_test[1]["test per-batch mIoU (ref-style)"] == f"{0.47:.3f} ± {statistics.stdev([0.44, 0.50]):.3f}"
    assert "test mIoU" not in without[0]
    section_a = text[text.index("grid `a`"):text.index("grid `b`")]
    section_b = text[text.index("grid `b`"):text.index("## Reference")]
    assert "best validation epoch" in section_a.split("\n\n")[1] and "(16 tiles)" in section_a
    assert "test split" not in section_b


def test_columns_per_class_absent_iou_and_device():
    text = render([row("unet", 0, 0.5)], store_path="s")
    header = next(line for line in text.splitlines() if line.startswith("| #"))
    for name in ("IoU background", "IoU building", "IoU woodland", "per-batch mIoU (ref-style)", "pixel acc.",
                 "s / epoch", "train img/s", "device"):
        assert name in header
    line = table_lines(text)[0]
    assert "| –" in line  # the building IoU does not exist: a dash, not 0 or nan
    assert "CPU test" in line
    assert "`unet` = unet(base_channels=8)" in text


def test_one_table_per_grid_and_reference_apart():
    text = render([row("unet", 0, 0.5, grid="a"), row("unet", 0, 0.6, grid="b")], store_path="s")
    assert "## synthetic · grid `a`" in text and "## synthetic · grid `b`" in text
    reference = text[text.index("## Reference experiment"):]
    assert "published figures, not produced by this harness" in reference and "0.5054" in reference


def test_failed_cells_are_listed_with_their_first_error_line():
    failed = row("unet", 3, 0.0, status="failed", error="TrainingDiverged: loss became nan\nTraceback ...")
    text = render([row("unet", 0, 0.5)], [failed], store_path="s")
    assert "## Failed cells" in text and "TrainingDiverged: loss became nan" in text and "Traceback" not in text


def test_empty_store_says_how_to_start():
    assert "run `bench run --grid default`" in render([], store_path="s")


def with_masker(cell: CellRow, masker: str, fraction: float) -> CellRow:
    cell.config["masker"] = {"name": masker, "label": masker, "kwargs": {}}
    cell.config["fraction"] = fraction
    return cell


def test_share_of_full_label_miou_pairs_seeds_with_their_full_label_cell():
    rows = [with_masker(row("unet", 0, 0.60), "full", 1.0), with_masker(row("unet", 1, 0.50), "full", 1.0),
            row("unet", 0, 0.57), row("unet", 1, 0.50),  # random_pixels at 10 %
            row("unetplusplus", 0, 0.55)]  # no full-label unetplusplus: no share
    (table,) = parse_tables(render(rows, store_path="s"))
    by_masker = {(line["architecture"], line["masker"]): line for line in table}
    shares = [100 * 0.57 / 0.60, 100 * 0.50 / 0.50]
    expected = f"{statistics.mean(shares):.1f} ± {statistics.stdev(shares):.1f}"
    assert by_masker["unet", "random_pixels"]["% of full-label mIoU"] == expected
    assert by_masker["unet", "full"]["% of full-label mIoU"] == "100.0 ± 0.0"
    assert by_masker["unetplusplus", "random_pixels"]["% of full-label mIoU"] == "–"


def test_no_share_column_without_a_full_label_cell():
    (table,) = parse_tables(render([row("unet", 0, 0.5)], store_path="s"))
    assert "% of full-label mIoU" not in table[0]


def test_a_regularised_loss_is_compared_with_the_full_label_cell_of_its_base_loss():
    """Grids leave out full labels + a regulariser (nothing unlabelled to act on): the regularised cells are then
    shares of the plain loss's full-label cell; a full-label cell with the regulariser, where there is one, wins."""
    def regularised(cell):
        cell.config["loss"] = {**cell.config["loss"], "label": "partial_ce + 0.1 * entropy",
                               "regularizers": [{"name": "entropy", "weight": 0.1, "kwargs": {}}]}
        return cell

    rows = [with_masker(row("unet", 0, 0.60), "full", 1.0), regularised(row("unet", 0, 0.45))]
    (table,) = parse_tables(render(rows, store_path="s"))
    by_loss = {line["loss"]: line for line in table}
    assert by_loss["partial_ce + 0.1 * entropy"]["% of full-label mIoU"] == f"{100 * 0.45 / 0.60:.1f}"
    rows.append(regularised(with_masker(row("unet", 0, 0.50), "full", 1.0)))
    (table,) = parse_tables(render(rows, store_path="s"))
    shares = {(line["loss"], line["masker"]): line["% of full-label mIoU"] for line in table}
    assert shares["partial_ce + 0.1 * entropy", "random_pixels"] == f"{100 * 0.45 / 0.50:.1f}"


def summary_cells(text: str) -> dict[tuple[str, str], str]:
    """{(annotation, column): entry} of a summary table's Markdown."""
    lines = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()]
    headers, body = lines[0], lines[2:]
    return {(line[0], header): cell for line in body for header, cell in zip(headers[1:], line[1:], strict=True)}


def test_summary_one_row_per_annotation_fewest_labels_first_one_column_per_arch_and_loss():
    def cell(seed, best, masker="random_pixels", fraction=0.1, measured=0.1, loss="partial_ce", arch="unet"):
        c = with_masker(row(arch, seed, best), masker, fraction)
        c.config["loss"] = {**c.config["loss"], "label": loss}
        c.metrics["labelled_fraction"] = measured
        return c

    rows = [cell(0, 0.60, "full", 1.0, 1.0), cell(1, 0.50, "full", 1.0, 1.0),
            cell(0, 0.54), cell(1, 0.50), cell(0, 0.45, "points", 1.0, 0.0005),
            cell(0, 0.48, "points", 1.0, 0.0005, loss="partial_ce + crf"),
            cell(0, 0.40, "points", 1.0, 0.0005, arch="unetplusplus")]
    table = summary_table(rows)
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == [
        "points · 0.05 %", "random_pixels · 10 %", "full · 100 %"]
    cells = summary_cells(table)
    assert {column for _, column in cells} == {"unet · partial_ce", "unet · partial_ce + crf",
                                                  "unetplusplus · partial_ce"}
    shares = [100 * 0.54 / 0.60, 100 * 0.50 / 0.50]
    assert cells["random_pixels · 10 %", "unet · partial_ce"] == (
        f"{statistics.mean([0.54, 0.50]):.3f} ± {statistics.stdev([0.54, 0.50]):.3f} ({statistics.mean(shares):.0f} %)")
    assert cells["points · 0.05 %", "unet · partial_ce"] == f"0.450 ({100 * 0.45 / 0.60:.0f} %)"  # seed 0's full cell
    # the row's best, in bold; its share is of the base loss's full-label cell
    assert cells["points · 0.05 %", "unet · partial_ce + crf"] == f"**0.480** ({100 * 0.48 / 0.60:.0f} %)"
    assert cells["points · 0.05 %", "unetplusplus · partial_ce"] == "0.400"  # no full-label UNet++: no share
    assert cells["full · 100 %", "unet · partial_ce"] == f"{statistics.mean([0.6, 0.5]):.3f} ± " \
                                                        f"{statistics.stdev([0.6, 0.5]):.3f}"
    assert cells["random_pixels · 10 %", "unet · partial_ce + crf"] == "–"
    assert "At a glance" in render(rows, store_path="s")


def test_welch_ties_by_hand():
    """Three seeds a side with a standard deviation of 0.01: Welch's t is d / (0.01 * sqrt(2/3)) with 4 degrees of
    freedom, whose two-sided 5 % critical value is 2.776 (a t table): a difference of means of 0.020 (t = 2.45) cannot
    be told apart, one of 0.025 (t = 3.06) can."""
    best = [0.60, 0.61, 0.62]
    assert tied_with_best(best, [0.58, 0.59, 0.60])
    assert not tied_with_best(best, [0.575, 0.585, 0.595])
    assert tied_with_best(best, best)
    assert not tied_with_best([0.6, 0.6], [0.5, 0.5])  # no spread on either side: only equal means tie
    assert tied_with_best([0.6, 0.6], [0.6, 0.6])
    assert not tied_with_best([0.61], [0.60, 0.62, 0.61, 0.55])  # one seed: not testable
    assert tied_with_best([0.61], [0.61])


def test_summary_bolds_each_row_s_best_and_the_entries_tied_with_it():
    def cell(arch, seed, best, masker="random_pixels", fraction=0.1):
        c = with_masker(row(arch, seed, best), masker, fraction)
        c.metrics["labelled_fraction"] = fraction
        return c

    values = {"a": [0.60, 0.61, 0.62], "b": [0.575, 0.585, 0.595], "c": [0.58, 0.59, 0.60]}
    rows = [cell(arch, seed, value) for arch, seeds in values.items() for seed, value in enumerate(seeds)]
    rows += [cell("a", 0, 0.70, "full", 1.0), cell("b", 0, 0.71, "full", 1.0)]  # one seed each: the best alone
    cells = summary_cells(summary_table(rows))
    bold = {key for key, entry in cells.items() if entry.startswith("**")}
    assert bold == {("random_pixels · 10 %", "a · partial_ce"), ("random_pixels · 10 %", "c · partial_ce"),
                    ("full · 100 %", "b · partial_ce")}
    assert cells["random_pixels · 10 %", "c · partial_ce"] == "**0.590 ± 0.010**"  # no full-label c: no share
    assert "Welch's t-test" in render(rows, store_path="s")


def test_no_summary_for_one_annotation_or_cells_that_differ_in_their_recipe():
    assert summary_table([row("unet", 0, 0.5), row("unetplusplus", 0, 0.6)]) is None
    longer = with_masker(row("unet", 0, 0.6), "full", 1.0)
    longer.config["recipe"] = {**longer.config["recipe"], "epochs": 30}
    assert summary_table([row("unet", 0, 0.5), longer]) is None
    assert "At a glance" not in render([row("unet", 0, 0.5), longer], store_path="s")


def test_annotator_hours_rank_the_glance_and_get_a_column_where_cells_were_priced():
    def cell(seed, best, masker, fraction, hours):
        c = with_masker(row("unet", seed, best), masker, fraction)
        c.metrics["labelled_fraction"] = fraction
        if hours is not None:
            c.metrics["annotation"] = {"counts": {"tile": 10, "point": 30}, "hours_per_1000_tiles": hours,
                                       "seconds_per_unit": {"point": 2.4, "stroke": 0.0, "region": 79.0}}
        return c

    # random pixels label more pixels than blocks but cost more: the glance goes by hours
    rows = [cell(0, 0.5, "random_pixels", 0.1, 270.0), cell(0, 0.55, "blocks", 0.2, 120.0),
            cell(0, 0.45, "points_per_class", 0.003, 2.5), cell(1, 0.47, "points_per_class", 0.003, 2.7),
            cell(0, 0.6, "full", 1.0, 350.0)]
    text = render(rows, store_path="s")
    table = summary_table(rows)
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == [
        "points_per_class · 0.3 % · 2.6 ± 0.14 h", "blocks · 20 % · 120 h", "random_pixels · 10 % · 270 h",
        "full · 100 % · 350 h"]
    assert "annotation · labelled · annotator h / 1000 tiles" in table.splitlines()[0]
    ranked = {line["masker"]: line for line in parse_tables(text)[0]}
    assert ranked["points_per_class"]["annotator h / 1000 tiles"] == "2.6 ± 0.14"
    assert ranked["full"]["annotator h / 1000 tiles"] == "350"
    assert "priced at point 2.4 s, region 79 s (the rest 0" in text

    unpriced = [with_masker(row("unet", 0, 0.5), "random_pixels", 0.1), with_masker(row("unet", 0, 0.6), "full", 1.0)]
    text = render(unpriced, store_path="s")
    assert "annotator h" not in text and "Annotator hours" not in text


def test_active_cells_get_a_line_per_round_with_the_spread_over_seeds():
    def active(seed, mious, hours):
        cell = with_masker(row("unet", seed, mious[-1]), "active", 1.0)
        cell.metrics["rounds"] = [
            {"round": index, "best_miou": miou, "labelled_fraction": 0.001 * (index + 1),
             "annotation": {"hours_per_1000_tiles": h}} for index, (miou, h) in enumerate(zip(mious, hours))]
        return cell

    rows = [active(0, [0.50, 0.60], [3.0, 6.0]), active(1, [0.52, 0.64], [3.0, 6.5]), row("unet", 0, 0.4)]
    board = render(rows, store_path="s")
    table = board[board.index("Active annotation rounds"):].split("\n\n")[1]
    lines = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    assert lines == [
        ["unet", "partial_ce", "active", "0", "0.10 ± 0.00", "3", "0, 1",
         f"0.510 ± {statistics.stdev([0.50, 0.52]):.3f}"],
        ["unet", "partial_ce", "active", "1", "0.20 ± 0.00", f"6.25 ± {statistics.stdev([6.0, 6.5]):.2g}", "0, 1",
         f"0.620 ± {statistics.stdev([0.60, 0.64]):.3f}"],
    ]
    assert "Active annotation rounds" not in render([row("unet", 0, 0.4)], store_path="s")


def test_the_budget_frontier_table_names_what_reaches_each_budget_with_its_spread():
    def priced(seed, best, masker, fraction, hours, rounds=None):
        cell = with_masker(row("unet", seed, best), masker, fraction)
        cell.metrics["annotation"] = {"counts": {"point": 1}, "seconds_per_unit": {}, "hours_per_1000_tiles": hours}
        if rounds:
            cell.metrics["rounds"] = [{"round": i, "best_miou": m, "labelled_fraction": 0.001,
                                       "annotation": {"hours_per_1000_tiles": h}} for i, (m, h) in enumerate(rounds)]
        return cell

    # clicks at 2 h; blocks cost more and score less (off the frontier); an active cell's second round at 6 h beats
    # the clicks, its first round at 3 h does not; full labels on top
    rows = [priced(0, 0.40, "points", 0.001, 2.0), priced(1, 0.44, "points", 0.001, 2.0),
            priced(0, 0.38, "blocks", 0.02, 40.0),
            priced(0, 0.55, "active", 0.002, 6.0, rounds=[(0.39, 3.0), (0.55, 6.0)]),
            priced(0, 0.60, "full", 1.0, 300.0)]
    board = render(rows, store_path="s")
    table = board[board.index("Budget frontier"):].split("\n\n")[1]
    lines = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    assert lines == [
        ["2", "unet · partial_ce · points", f"0.420 ± {statistics.stdev([0.40, 0.44]):.3f}"],
        ["6", "unet · partial_ce · active, round 1", "0.550"],
        ["300", "unet · partial_ce · full", "0.600"],
    ]
    assert "Budget frontier" not in render([row("unet", 0, 0.4)], store_path="s")


def test_the_glance_spreads_an_annotation_s_hours_over_seeds_as_the_ranked_rows_do():
    """Two losses train on the same seeds' masks: the glance's hours are the spread over those seeds, each counted
    once, equal to each ranked row's, not a spread over the repeated cells (which would be narrower)."""
    hours_by_seed = [40.0, 43.0, 45.0]

    def cell(seed, loss, masker="blocks", fraction=0.02, hours=None):
        c = with_masker(row("unet", seed, 0.5 + 0.01 * seed), masker, fraction)
        c.config["loss"] = {**c.config["loss"], "label": loss}
        c.metrics["labelled_fraction"] = fraction
        c.metrics["annotation"] = {"counts": {"tile": 10, "region": 5},
                                   "hours_per_1000_tiles": hours_by_seed[seed] if hours is None else hours,
                                   "seconds_per_unit": {"point": 2.4, "stroke": 0.0, "region": 79.0}}
        return c

    rows = [cell(seed, loss) for seed in range(3) for loss in ("partial_ce", "partial_ce + crf")]
    rows += [cell(seed, "partial_ce", "full", 1.0, 350.0) for seed in range(3)]
    spread = f"{statistics.mean(hours_by_seed):.3g} ± {statistics.stdev(hours_by_seed):.2g}"
    assert spread != f"{statistics.mean(hours_by_seed * 2):.3g} ± {statistics.stdev(hours_by_seed * 2):.2g}"
    glance = [line.split("|")[1].strip() for line in summary_table(rows).splitlines()[2:]]
    assert glance[0] == f"blocks · 2 % · {spread} h"
    ranked = [line for line in parse_tables(render(rows, store_path="s"))[0] if line["masker"] == "blocks"]
    assert [line["annotator h / 1000 tiles"] for line in ranked] == [spread, spread]
