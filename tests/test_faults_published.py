"""Family 10 of the faults: the published leaderboard is not a scratch file. A user's run writes its own leaderboard
beside its store, never the repository's; the repository's is made from the results it holds (``results/``, exported
cells without checkpoints) by one command, and that command gives it back as committed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from user_faults import run_main, write_grid

ROOT = Path(__file__).resolve().parent.parent


def without_date(text: str) -> str:
    return re.sub(r" on \d{4}-\d{2}-\d{2}; do not edit by hand", "", text)


def test_the_published_leaderboard_is_made_again_from_the_results_in_the_repository(tmp_path, capsys):
    """Beside the figures `bench show` drew (from checkpoints, which the repository does not keep), the command
    gives back the committed leaderboard, word for word but for its date."""
    (tmp_path / "plots").mkdir()
    for figure in [*ROOT.glob("plots/*-annotations.png"), *ROOT.glob("plots/*-predictions.png")]:
        shutil.copy(figure, tmp_path / "plots")
    board = tmp_path / "leaderboard.md"
    code, _, err = run_main(capsys, "leaderboard", "--from", str(ROOT / "results"), "--leaderboard", str(board))
    assert code == 0, err
    published = (ROOT / "leaderboard.md").read_text()
    made = board.read_text().replace(f"`{ROOT / 'results'}`", "`results`")
    assert without_date(made) == without_date(published)


def test_a_run_and_its_leaderboard_leave_the_published_one_alone(tmp_path, capsys, monkeypatch):
    """Run from a folder that holds a published leaderboard, as the README's first command is: it is not
    touched, and the run's own goes beside its store."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "leaderboard.md").write_text("published\n")
    write_grid(tmp_path)
    assert run_main(capsys, "run", "--grid", "grid.toml")[0] == 0
    assert run_main(capsys, "leaderboard")[0] == 0
    assert (tmp_path / "leaderboard.md").read_text() == "published\n" and not (tmp_path / "plots").exists()
    assert "grid `grid`" in (tmp_path / "runs" / "leaderboard.md").read_text()
    assert (tmp_path / "runs" / "plots").is_dir()


def test_results_that_are_not_an_export_are_one_line(tmp_path, capsys):
    (tmp_path / "broken.json").write_text('[{"cell_id": "x"}]')
    code, _, err = run_main(capsys, "leaderboard", "--from", str(tmp_path), "--leaderboard", str(tmp_path / "b.md"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: --from {tmp_path / 'broken.json'}: not what `bench export --format json` writes")
