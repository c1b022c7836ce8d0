"""``leaderboard.md``, generated from the results store: one table per dataset and grid, best first.

Cells that differ only by seed are one row, shown as mean ± standard deviation over their seeds. Weights trained
elsewhere and scored by ``bench evaluate`` are shown apart, in a section of their own per grid, and enter none of the
trained cells' tables. Nothing here is typed by hand except the reference experiment's published table, shown apart
and marked as such.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from scipy import stats
from tabulate import tabulate

from bench.plots import active_labels, budget_frontier, budget_points, show_names, write_plots
from bench.store import EVALUATION, CellRow
from registry.annotation import UNITS
from registry.files import write_atomically

PLOTS_FOLDER = "plots"

# The reference experiment (DESIGN.md section 4): LandCover.ai validation split, its per-batch-averaged mIoU,
# UNet (bilinear, 64 base) and UNet++ trained 12 epochs on an A100 80 GB.
REFERENCE_ROWS = [
    ("UNet++", "10 %", "0.5054", "0.5054", "0.8680"),
    ("UNet", "15 %", "0.4902", "0.4764", "0.8605"),
    ("UNet", "10 %", "0.4887", "0.4775", "0.8640"),
    ("UNet++", "15 %", "0.4705", "0.4630", "0.8398"),
]


def one_line(text: object) -> str:
    """``text`` on one line: a label or an error holding a line break would end a table row or a list item."""
    return " ".join(str(text).split())


def code(text: object) -> str:
    """``text`` as Markdown code, fenced with enough backticks for the backticks it holds."""
    text = one_line(text)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    padding = " " if longest else ""
    return f"{fence}{padding}{text}{padding}{fence}"


def markdown_table(lines: Iterable[Iterable[object]], headers: Iterable[object]) -> str:
    """A GitHub Markdown table; every cell on one line with its pipes escaped, so that a label holding ``|``
    cannot shift the columns after it, and its angle brackets too, so that it cannot open an HTML tag."""
    def cell(value: object) -> str:
        return one_line(value).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")

    return tabulate([[cell(value) for value in line] for line in lines], headers=[cell(h) for h in headers],
                    tablefmt="github", disable_numparse=True)


def mean_std(values: list[float | None], digits: int = 3) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def annotator_hours(row: CellRow) -> float | None:
    """A cell's annotator hours per 1000 training tiles (registry.annotation), None for a cell stored without its
    annotation counts."""
    return ((row.metrics or {}).get("annotation") or {}).get("hours_per_1000_tiles")


def hours_text(values: list[float | None]) -> str:
    """Hours, which span orders of magnitude between annotation styles: three significant figures, ± the spread
    over seeds."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1 or statistics.stdev(values) == 0:
        return f"{values[0]:.3g}"
    return f"{statistics.mean(values):.3g} ± {statistics.stdev(values):.2g}"


def same_numbers_key(config: object) -> str:
    """A config's JSON with numbers that are equal written alike (``0.0`` as ``0``): cells stored before numbers
    were made canonical (bench.grid, bench.recipe) group with the cells of the same experiment stored since."""
    def plain(value: object) -> object:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return json.dumps(plain(config), sort_keys=True)


def once_each(rows: list[CellRow]) -> list[CellRow]:
    """The rows without the repeats of a cell stored twice, under two identities that were one cell all along
    (``weight_decay = 0`` and ``0.0``, before numbers were made canonical): the first is kept."""
    seen, kept = set(), []
    for row in rows:
        key = (row.grid, same_numbers_key(row.config))
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept


def _experiment_key(row: CellRow) -> str:
    """Everything that defines the experiment except the seed."""
    config = {k: v for k, v in row.config.items() if k != "seed"}
    return same_numbers_key(config)


def has_test(rows: list[CellRow]) -> bool:
    """Whether any cell of a table was scored on a test split."""
    return any(r.metrics.get("test_miou") is not None for r in rows)


def has_scene_scores(rows: list[CellRow]) -> bool:
    """Whether any cell of a table was scored over whole scenes (its dataset's test scenes, or ``bench predict
    --labels``)."""
    return any(r.metrics.get("scene") is not None for r in rows)


def _full_label_key(row: CellRow, base_loss: bool = False) -> str:
    """What a cell shares with its full-label counterpart: everything but the seed, the masker and the fraction (and,
    with ``base_loss``, the loss's regularisers and label)."""
    config = {k: v for k, v in row.config.items() if k not in ("seed", "masker", "fraction")}
    if base_loss:
        config["loss"] = {"name": config["loss"]["name"], "kwargs": config["loss"]["kwargs"]}
    return same_numbers_key(config)


def full_label_shares(group: list[CellRow], rows: list[CellRow]) -> list[float] | None:
    """Each cell's best mIoU as a share of its full-label counterpart's (the cell with masker ``full`` and everything
    else equal except the seed): divided seed by seed where that seed ran with full labels, else by their mean.

    A cell whose loss has regularisers is compared with the full-label cell of its loss without them when the table
    has no full-label cell with them (a term on the unlabelled pixels has nothing to act on when every pixel is
    labelled, so grids leave that cell out). None when the table has no counterpart at all."""
    full = [r for r in rows if r.fully_labelled]
    key = _full_label_key(group[0])
    reference = {r.config["seed"]: r.metrics["best_miou"] for r in full if _full_label_key(r) == key}
    if not reference:
        base = _full_label_key(group[0], base_loss=True)
        reference = {r.config["seed"]: r.metrics["best_miou"] for r in full
                     if not r.config["loss"].get("regularizers") and _full_label_key(r, base_loss=True) == base}
    if not reference:
        return None
    fallback = statistics.mean(reference.values())
    return [r.metrics["best_miou"] / reference.get(r.config["seed"], fallback) for r in group]


TIE_P_VALUE = 0.05  # Welch's t-test: two entries whose p-value is at least this cannot be told apart


def tied_with_best(best: list[float], other: list[float]) -> bool:
    """Whether the seeds' values ``other`` cannot be told from ``best`` (the highest mean of their row): Welch's
    t-test (no equal variances assumed), two-sided, p >= TIE_P_VALUE. A side with one seed, or two sides without
    spread, cannot be tested: then only an equal mean ties."""
    if min(len(best), len(other)) < 2 or statistics.stdev(best) == statistics.stdev(other) == 0:
        return statistics.mean(other) == statistics.mean(best)
    return bool(stats.ttest_ind(best, other, equal_var=False).pvalue >= TIE_P_VALUE)


SUMMARY_FIXED = ("seed", "masker", "fraction", "arch", "loss")  # what varies across a summary table's cells


def per_seed(rows: list[CellRow], value: Callable[[CellRow], float | None]) -> list[float | None]:
    """``value`` of the rows, one per seed (the mean of that seed's rows; None where one of them has none)."""
    by_seed: dict[int, list[float | None]] = defaultdict(list)
    for r in rows:
        by_seed[r.config["seed"]].append(value(r))
    return [None if None in values else statistics.mean(values) for values in by_seed.values()]


def summary_table(rows: list[CellRow]) -> str | None:
    """The table at a glance: one row per annotation (masker, labelled % and annotator hours, cheapest first), one
    column per architecture · loss; each entry the best mIoU, mean ± std over seeds, with its share of the
    full-label mIoU where the table has one. In each row of several entries, the best mean and those tied with it
    (:func:`tied_with_best`) are bold. None for a single annotation, or when the cells also differ in anything else
    (a recipe, the dataset): an entry would then mix experiments."""
    rest = {same_numbers_key({k: v for k, v in r.config.items() if k not in SUMMARY_FIXED}) for r in rows}
    if len(rest) > 1:
        return None
    entries: dict[tuple[tuple[str, float], str], list[CellRow]] = defaultdict(list)
    for r in rows:
        annotation = (r.config["masker"]["label"], r.config["fraction"])
        entries[annotation, f"{r.config['arch']['label']} · {r.config['loss']['label']}"].append(r)
    # An annotation's labelled share and hours, one value per seed: its columns repeat the same seed's masks, and
    # counting each repeat would shrink the spread below the ranked rows' (the same seeds, once each).
    annotation_rows: dict[tuple[str, float], list[CellRow]] = defaultdict(list)
    for (annotation, _), group in entries.items():
        annotation_rows[annotation] += group
    labelled = {a: per_seed(group, lambda r: 100 * r.metrics["labelled_fraction"])
                for a, group in annotation_rows.items()}
    hours = {a: per_seed(group, annotator_hours) for a, group in annotation_rows.items()}
    priced = not any(None in group for group in hours.values())
    # cheapest annotation first: by its price where every cell has one, else by its labelled share
    annotations = sorted(labelled, key=lambda a: (statistics.mean(hours[a] if priced else labelled[a]), a))
    if len(annotations) < 2:
        return None
    columns = sorted({column for _, column in entries})
    lines = []
    for annotation in annotations:
        line = [f"{annotation[0]} · {statistics.mean(labelled[annotation]):.3g} %"
                + ("" if None in hours[annotation] else f" · {hours_text(hours[annotation])} h")]
        seeds = {column: [r.metrics["best_miou"] for r in entries[annotation, column]]
                 for column in columns if (annotation, column) in entries}
        best = max(seeds.values(), key=statistics.mean)
        for column in columns:
            if column not in seeds:
                line.append("–")
                continue
            group = entries[annotation, column]
            text = mean_std(seeds[column])
            if len(seeds) > 1 and tied_with_best(best, seeds[column]):
                text = f"**{text}**"
            shares = full_label_shares(group, rows) if not group[0].fully_labelled else None
            line.append(text + (f" ({100 * statistics.mean(shares):.0f} %)" if shares else ""))
        lines.append(line)
    return markdown_table(lines, ["annotation · labelled" + (" · annotator h / 1000 tiles" if priced else ""),
                                  *columns])


def _table(rows: list[CellRow]) -> str:
    groups: dict[str, list[CellRow]] = defaultdict(list)
    for row in rows:
        groups[_experiment_key(row)].append(row)
    with_full = any(r.fully_labelled for r in rows)
    class_names = rows[0].metrics.get("class_names") or [
        f"class {i}" for i in range(len(rows[0].metrics["final_iou"]))
    ]

    def best_mean(group: list[CellRow]) -> float:
        return statistics.mean(r.metrics["best_miou"] for r in group if r.metrics["best_miou"] is not None)

    test, scene = has_test(rows), has_scene_scores(rows)
    priced = any(annotator_hours(r) is not None for r in rows)
    lines = []
    for rank, group in enumerate(sorted(groups.values(), key=best_mean, reverse=True), start=1):
        first = group[0].config
        scores = [r.metrics for r in group]
        lines.append([
            rank,
            first["arch"]["label"],
            first["loss"]["label"],
            first["masker"]["label"],
            mean_std([100 * x["labelled_fraction"] for x in scores], 2),
            *([hours_text([annotator_hours(r) for r in group])] if priced else []),
            ", ".join(str(r.config["seed"]) for r in sorted(group, key=lambda r: r.config["seed"])),
            mean_std([x["best_miou"] for x in scores]),
            *([mean_std([100 * share for share in full_label_shares(group, rows) or []], 1)] if with_full else []),
            mean_std([x["final_miou"] for x in scores]),
            mean_std([x.get("best_per_batch_miou") for x in scores]),
            mean_std([x["final_per_batch_miou"] for x in scores]),
            mean_std([x["final_accuracy"] for x in scores]),
            *([mean_std([x.get("test_miou") for x in scores]), mean_std([x.get("test_per_batch_miou") for x in scores])]
              if test else []),
            *([mean_std([(x.get("scene") or {}).get("miou") for x in scores])] if scene else []),
            *[mean_std([x["final_iou"][i] for x in scores], 2) for i in range(len(class_names))],
            f"{statistics.mean(x['epoch_seconds'] for x in scores):.1f}",
            f"{statistics.mean(x['train_images_per_second'] for x in scores):.0f}",
            max(x["epochs"] for x in scores),  # an active cell's over all its rounds
            " / ".join(sorted({r.provenance["device"] for r in group})),
        ])
    headers = ["#", "architecture", "loss", "masker", "labelled %", *(["annotator h / 1000 tiles"] if priced else []),
               "seeds", "best mIoU",
               *(["% of full-label mIoU"] if with_full else []), "final mIoU",
               "best per-batch mIoU (ref-style)", "final per-batch mIoU (ref-style)", "pixel acc.",
               *(["test mIoU", "test per-batch mIoU (ref-style)"] if test else []),
               *(["scene mIoU"] if scene else []),
               *[f"IoU {name}" for name in class_names],
               "s / epoch", "train img/s", "epochs", "device"]
    return markdown_table(lines, headers)


def rounds_table(rows: list[CellRow]) -> str | None:
    """Active cells round by round: what each round was trained with (labelled share, annotator hours) and its best
    mIoU, mean ± std over seeds; None when the table has no active cell."""
    groups: dict[str, list[CellRow]] = defaultdict(list)
    for row in rows:
        if row.metrics.get("rounds"):
            groups[_experiment_key(row)].append(row)
    if not groups:
        return None
    lines = []
    for group in sorted(groups.values(), key=lambda g: (g[0].config["masker"]["label"], g[0].config["arch"]["label"],
                                                        g[0].config["loss"]["label"])):
        first = group[0].config
        seeds = ", ".join(str(r.config["seed"]) for r in sorted(group, key=lambda r: r.config["seed"]))
        for index in range(min(len(r.metrics["rounds"]) for r in group)):
            rounds = [r.metrics["rounds"][index] for r in group]
            lines.append([first["arch"]["label"], first["loss"]["label"], first["masker"]["label"], index,
                          mean_std([100 * x["labelled_fraction"] for x in rounds], 2),
                          hours_text([x["annotation"]["hours_per_1000_tiles"] for x in rounds]), seeds,
                          mean_std([x["best_miou"] for x in rounds])])
    return markdown_table(lines, ["architecture", "loss", "masker", "round", "labelled %", "annotator h / 1000 tiles",
                                  "seeds", "best mIoU"])


def frontier_table(rows: list[CellRow]) -> str | None:
    """The budget frontier (bench.plots.budget_frontier) as a table: at each budget, the cheapest point that beats
    every cheaper one, which architecture · loss · annotation reaches it (an active cell's with the round) and its
    best mIoU (mean ± std over seeds); None when no cell of the table was priced."""
    series = budget_points(rows)
    frontier = budget_frontier(series)
    if not frontier:
        return None
    rounds = active_labels(rows)
    lines = []
    for hours, miou, label in frontier:
        index, spread = next((i, std) for i, (h, m, std) in enumerate(series[label]) if (h, m) == (hours, miou))
        lines.append([f"{hours:.3g}", label + (f", round {index}" if label in rounds else ""),
                      f"{miou:.3f}" + (f" ± {spread:.3f}" if spread else "")])
    return markdown_table(lines, ["annotator h / 1000 tiles", "architecture · loss · annotation", "best mIoU"])


def _test_note(rows: list[CellRow]) -> str:
    if not has_test(rows):
        return ""
    tiles = sorted({r.metrics["test_tiles"] for r in rows if r.metrics.get("test_tiles") is not None})
    return (f" Test figures: the weights of each cell's best validation epoch, scored once on the test split "
            f"({' / '.join(map(str, tiles))} tiles).")


def _scene_note(rows: list[CellRow]) -> str:
    if not has_scene_scores(rows):
        return ""
    scored = [r.metrics["scene"] for r in rows if r.metrics.get("scene") is not None]
    scenes = sorted({len(s["scenes"]) for s in scored})
    return (f" Scene mIoU: the best weights mapping whole scenes (the dataset's test scenes, after training, or those "
            f"`bench predict --labels` scored last), one confusion matrix over {' / '.join(map(str, scenes))} "
            "scene(s), edges included; a dash where a cell has none.")


def _class_weights_note(recipe: dict) -> str:
    weights = recipe.get("class_weights")
    if weights is None:
        return ""
    if isinstance(weights, str):
        return f", class weights {weights} (of each cell's labelled training pixels)"
    return f", class weights {', '.join(f'{w:g}' for w in weights)}"


def unit_order(unit: str) -> tuple[int, str]:
    """The published units in registry.annotation's order, then a plugin's own."""
    return (UNITS.index(unit), "") if unit in UNITS else (len(UNITS), unit)


def _annotation_note(rows: list[CellRow]) -> str:
    """How the annotator hours were priced: the seconds per unit the table's cells share (``bench run`` prices a
    grid's stored cells at its current ``[annotation_cost]``)."""
    tables = {json.dumps(r.metrics["annotation"]["seconds_per_unit"], sort_keys=True)
              for r in rows if annotator_hours(r) is not None}
    if not tables:
        return ""
    if len(tables) > 1:
        return (" Annotator hours per 1000 training tiles: the partial masks' clicks, strokes and regions priced "
                "at more than one table of seconds per unit (rerun the grid to price them alike); "
                "docs/annotation-cost.md.")
    table = json.loads(tables.pop())
    costs = ", ".join(f"{unit} {table[unit]:g} s" for unit in sorted(table, key=unit_order) if table[unit])
    return (f" Annotator hours per 1000 training tiles: the partial masks' clicks, strokes and regions priced at "
            f"{costs or 'nothing'} (the rest 0; docs/annotation-cost.md).")


def _component_arguments(rows: list[CellRow]) -> list[str]:
    """A line naming the keyword arguments of each architecture, loss and masker that has some (the table shows
    labels only)."""
    described = {}
    for row in rows:
        for kind in ("arch", "loss", "masker"):
            component = row.config[kind]
            if component["kwargs"]:
                arguments = ", ".join(f"{k}={v}" for k, v in sorted(component["kwargs"].items()))
                described[component["label"]] = f"{code(component['label'])} = {component['name']}({arguments})"
    return [f"Arguments: {'; '.join(described[k] for k in sorted(described))}.", ""] if described else []


def captioned(caption: str, table: str | None) -> list[str]:
    """A leaderboard table's lines under its caption; none for a table that does not apply (None)."""
    return [] if table is None else [caption, "", table, ""]


def render(rows: Iterable[CellRow], failed: Iterable[CellRow] = (), store_path: str = "",
           plots: dict[tuple[str, str], list[tuple[str, str]]] | None = None) -> str:
    """The leaderboard's Markdown; ``plots`` maps a table's (dataset, grid) to its (alt text, relative path) images,
    linked under the table."""
    rows = once_each([r for r in rows if r.metrics])
    evaluations = [r for r in rows if r.kind == EVALUATION]
    rows = [r for r in rows if r.kind != EVALUATION]
    today = datetime.now(UTC).date().isoformat()
    out = [
        "# Leaderboard",
        "",
        (
            f"Generated by `bench leaderboard` from {code(store_path)} on {today}; do not edit by hand. "
            "mIoU is dataset-level (one confusion matrix over the whole validation split; classes absent from truth "
            "and prediction left out). *Best* is the best epoch, *final* the last; the IoU columns and pixel accuracy "
            "are final. *Per-batch mIoU* is the reference experiment's way (a mean of per-batch mIoUs), shown for "
            "comparison only. With several seeds: mean ± standard deviation; with one seed, differences of one or two "
            "mIoU points are within seed noise. Each row says the device it ran on."
        ),
        "",
    ]
    by_table: dict[tuple[str, str], list[CellRow]] = defaultdict(list)
    for row in rows:
        by_table[(row.dataset, row.grid)].append(row)
    if not by_table:
        out += ["No finished cells yet: run `bench run --grid default`.", ""]
    for (dataset, grid), table_rows in sorted(by_table.items()):
        recipe = table_rows[0].config["recipe"]
        dates = sorted(r.provenance["date"][:10] for r in table_rows)
        out += [
            f"## {one_line(dataset)} · grid {code(grid)}",
            "",
            (
                f"Dataset {code(json.dumps(table_rows[0].config['dataset']['kwargs'], sort_keys=True))}; "
                f"recipe: {recipe['optimizer']} lr {recipe['lr']:g}, weight decay {recipe['weight_decay']:g}, "
                f"{recipe['schedule']} schedule, batch {recipe['batch_size']}, "
                f"augment {', '.join(recipe['augment']) or 'none'}{_class_weights_note(recipe)}"
                f". Run {dates[0]}{'' if dates[0] == dates[-1] else ' to ' + dates[-1]}, code "
                f"{', '.join(sorted({r.provenance['code_revision'] for r in table_rows}))}."
                f"{_test_note(table_rows)}{_scene_note(table_rows)}{_annotation_note(table_rows)}"
            ),
            "",
            *_component_arguments(table_rows),
        ]
        out += captioned(
            "At a glance: best mIoU by annotation and by architecture · loss (mean ± std over seeds; in brackets, the "
            "share of the full-label mIoU). In bold, each row's best and the entries that Welch's t-test over the "
            f"seeds cannot tell from it (p ≥ {TIE_P_VALUE}; with one seed, the best alone). Every cell, ranked, below.",
            summary_table(table_rows))
        out += captioned(
            "Budget frontier: the best mIoU that this table reaches for at most so many annotator hours per 1000 "
            "training tiles, over every annotation, architecture and loss (an active cell counts at each round's "
            "labels); each line beats every cheaper one. Mean ± std over seeds.",
            frontier_table(table_rows))
        out += [_table(table_rows), ""]
        out += captioned(
            "Active annotation rounds: round 0 trains on the start masker's labels; after each round the cell's model "
            "picks the pixels labelled next (docs/active-rounds.md). Each round's best mIoU, with the labels it was "
            "trained with; the rows above give the last round's.",
            rounds_table(table_rows))
        images = (plots or {}).get((dataset, grid), [])
        if images:
            out += [" ".join(f"![{alt}]({link})" for alt, link in images), ""]
    failed = list(failed)
    if failed:
        out += ["## Failed cells", "", "Rerun the grid to retry them.", ""]
        out += [f"- {code(r.grid)} {one_line(r.label)}: {one_line((r.error or '').splitlines()[0] if r.error else '')}"
                for r in failed]
        out.append("")
    out += evaluated_sections(evaluations)
    out += [
        "## Reference experiment (published figures, not produced by this harness)",
        "",
        (
            "UNet (bilinear, 64 base) and UNet++ on LandCover.ai, random pixels, partial cross-entropy, 12 epochs, "
            "validation split, **per-batch-averaged mIoU**, on an A100 80 GB (about 18 min for UNet, 36 min for "
            "UNet++). Comparable only with rows on `landcoverai` and their per-batch column."
        ),
        "",
        markdown_table(REFERENCE_ROWS, ["architecture", "labelled", "best mIoU (per-batch)", "final mIoU (per-batch)",
                                        "final pixel acc."]),
        "",
    ]
    return "\n".join(out)


def evaluated_sections(rows: list[CellRow]) -> list[str]:
    """A section per dataset and grid of the evaluations filed under it, best dataset-level mIoU first."""
    by_table: dict[tuple[str, str], list[CellRow]] = defaultdict(list)
    for row in rows:
        by_table[(row.dataset, row.grid)].append(row)
    out = []
    for (dataset, grid), table_rows in sorted(by_table.items()):
        kwargs = json.dumps(table_rows[0].config["dataset"]["kwargs"], sort_keys=True)
        out += [
            f"## Evaluated weights · {one_line(dataset)} · grid {code(grid)} (external: not trained by this harness)",
            "",
            (
                f"Weights trained elsewhere, scored by `bench evaluate` on the grid's dataset {code(kwargs)} as its "
                "cells are: mIoU is dataset-level (one confusion matrix over the split), the per-batch mIoU is the "
                "reference experiment's way at the evaluation batch shown, pixel accuracy and IoU columns are over "
                "the split. These rows take no part in the tables, summaries and plots of the trained cells."
            ),
            "",
            _evaluated_table(table_rows),
            "",
        ]
    return out


def _evaluated_table(rows: list[CellRow]) -> str:
    class_names = rows[0].metrics["class_names"]
    lines = []
    for row in sorted(rows, key=lambda r: -math.inf if r.metrics["miou"] is None else r.metrics["miou"],
                      reverse=True):
        scores = row.metrics
        lines.append([
            row.config["arch"]["label"],
            Path(scores["weights_file"]).name,
            scores["weights_sha256"][:12],
            scores["split"],
            scores["tiles"],
            mean_std([scores["miou"]], 4),
            f"{mean_std([scores['per_batch_miou']], 4)} (batch {scores['eval_batch_size']})",
            mean_std([scores["accuracy"]], 4),
            *[mean_std([iou], 4) for iou in scores["iou"]],
            scores["precision"],
            row.provenance["device"],
            row.provenance["date"][:10],
        ])
    headers = ["architecture", "weights", "SHA-256", "split", "tiles", "mIoU", "per-batch mIoU (ref-style)",
               "pixel acc.", *[f"IoU {name}" for name in class_names], "precision", "device", "evaluated"]
    return markdown_table(lines, headers)


def write_leaderboard(rows: Iterable[CellRow], failed: Iterable[CellRow], path: Path, store_path: str) -> None:
    """``path`` and, in a folder ``plots/`` beside it, each table's label-efficiency and training-curves PNGs (linked
    under the table with the figures of ``bench show``, where they exist)."""
    path = Path(path)
    rows = list(rows)
    written = write_plots(rows, path.parent / PLOTS_FOLDER)
    links = {table: [(alt, f"{PLOTS_FOLDER}/{name}") for alt, name in images] for table, images in written.items()}
    for (dataset, grid), images in links.items():  # bench show's figures, where it has drawn them
        images += [(alt, f"{PLOTS_FOLDER}/{name}") for alt, name in show_names(dataset, grid).items()
                   if (path.parent / PLOTS_FOLDER / name).exists()]
    write_atomically(path, render(rows, failed, store_path, links))
