"""Family 9 of the faults: labels that would break the leaderboard's Markdown (a pipe, a line break, backticks,
HTML), grid names that would share plot files, and plugins that call ``sys.exit()``: at import, in a builder, or
while a cell trains. Nothing ends silently; the tables keep their columns."""

from __future__ import annotations

import json
import re

import pytest
from user_faults import TINY, exported, one_line, run_main, write_grid

from bench.plots import plot_names, show_names

ODD_LABELS = ["u|net", "u`net`", "<b>x</b>", "a | b | c", "``", "a*b*c", "é ✓"]


def columns(line: str) -> int:
    """The cells of a Markdown table row: its pipes that are not escaped."""
    return len(re.findall(r"(?<!\\)\|", line)) - 1


@pytest.mark.parametrize("label", ODD_LABELS)
def test_a_label_of_any_text_keeps_every_table_s_columns(tmp_path, capsys, label):
    # a JSON string is a TOML basic string: the tab and the line break go in as escapes
    grid = write_grid(tmp_path, TINY.replace('{ name = "unet",', f'{{ name = "unet", label = {json.dumps(label)},'))
    code, _, err = run_main(capsys, "run", "--grid", str(grid), "--out", str(tmp_path / "runs"))
    assert code == 0, err
    board = (tmp_path / "runs" / "leaderboard.md").read_text()
    for table in re.findall(r"(?:^\|.*\n)+", board, flags=re.M):
        rows = table.splitlines()
        assert len({columns(row) for row in rows}) == 1, table  # every row as many cells as the header
    assert "<b>" not in re.sub(r"(`+).*?\1", "", board)  # an HTML tag only inside code, where it is text
    arguments = next(line for line in board.splitlines() if line.startswith("Arguments: "))
    assert arguments.count("`") % 2 == 0


@pytest.mark.parametrize("label", ["tab\there", "line\nbreak", "", "   ", "bell\u0007"])
def test_a_label_that_is_not_one_line_of_text_is_refused_with_its_line(tmp_path, capsys, label):
    grid = write_grid(tmp_path, TINY.replace('{ name = "unet",', f'{{ name = "unet", label = {json.dumps(label)},'))
    code, _, err = run_main(capsys, "run", "--grid", str(grid), "--out", str(tmp_path / "runs"))
    one_line(code, err, 2, f"{grid} line 9", "label must be a non-empty line of text")


def test_grid_names_that_a_file_name_would_merge_write_plots_of_their_own():
    names = ["exp 1", "exp_1", "exp/1", "Exp_1"]
    files = {file for name in names for file in [*plot_names("synthetic", name).values(),
                                                 *show_names("synthetic", name).values()]}
    assert len(files) == 5 * len(names)


def test_two_grids_of_one_name_in_two_folders_never_prune_each_other(tmp_path, capsys):
    """a/exp.toml and b/exp.toml are both grid "exp": each one's cells are another experiment for the other."""
    grids = []
    for folder, lr in (("a", "0.01"), ("b", "0.02")):
        (tmp_path / folder).mkdir()
        grids.append(write_grid(tmp_path / folder, TINY.replace("batch_size = 4", f"batch_size = 4\nlr = {lr}"),
                                "exp.toml"))
        assert run_main(capsys, "run", "--grid", str(grids[-1]), "--out", str(tmp_path / "runs"))[0] == 0
    code, stdout, _ = run_main(capsys, "prune", "--grid", str(grids[0]), "--out", str(tmp_path / "runs"), "--delete")
    assert code == 0 and "nothing to prune" in stdout and "come from another file" in stdout


EXITS = {  # where a plugin calls sys.exit(3), and what the user is told
    "at import": ("import sys\nsys.exit(3)\n", None, "cannot import plugin"),
    "in a builder": ("import sys\nfrom registry import register_arch\n"
                     "@register_arch('exiting_arch')\ndef exiting_arch(num_classes, in_chans=3):\n    sys.exit(3)\n",
                     '"exiting_arch"', "sys.exit(3) was called"),
}


@pytest.mark.parametrize("where", EXITS)
def test_a_plugin_s_sys_exit_before_training_is_one_line(tmp_path, capsys, where):
    source, arch, says = EXITS[where]
    plugin = tmp_path / "exiting.py"
    plugin.write_text(source)
    text = TINY.replace('{ name = "unet", base_channels = 4, depth = 3 }', arch) if arch else TINY
    grid = write_grid(tmp_path, text)
    code, _, err = run_main(capsys, "run", "--grid", str(grid), "--plugin", str(plugin), "--out",
                            str(tmp_path / "runs"))
    one_line(code, err, 2, says, "exiting.py")


def test_a_plugin_s_sys_exit_while_training_fails_its_cell_and_the_grid_goes_on(tmp_path, capsys):
    plugin = tmp_path / "exiting_loss.py"
    plugin.write_text("import sys\nfrom registry import register_loss\n"
                      "@register_loss('exiting_loss')\ndef exiting_loss(weight=None):\n"
                      "    def loss(logits, target):\n        sys.exit(4)\n    return loss\n")
    grid = write_grid(tmp_path, TINY.replace('losses = ["partial_ce"]', 'losses = ["exiting_loss", "partial_ce"]'))
    code, stdout, err = run_main(capsys, "run", "--grid", str(grid), "--plugin", str(plugin), "--out",
                                 str(tmp_path / "runs"))
    assert code == 1 and "1 cells run, 0 already finished, 1 failed" in stdout, err
    failed = [cell for cell in json.loads(exported(capsys, tmp_path / "runs")) if cell["status"] == "failed"]
    assert [cell["config"]["loss"]["name"] for cell in failed] == ["exiting_loss"]
    assert failed[0]["error"].startswith(f"SystemExit: sys.exit(4) was called while training the cell (by {plugin} "
                                         "line 6)")
    assert f"{plugin} line 6" in (tmp_path / "runs" / "leaderboard.md").read_text()
