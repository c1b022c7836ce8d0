"""The default grid's recipe, trained as it stands: its full-label ceiling must learn every class, or the shares of
full-label mIoU that its leaderboard shows measure the recipe's failure on rare classes rather than the annotation."""

from __future__ import annotations

from bench.cli import main
from bench.store import ResultStore

# Issue 19's bar for a ceiling a reader can trust: every class found, and an mIoU that partial labels must work for.
MIN_CLASS_IOU = 0.35
MIN_MIOU = 0.68


def test_the_full_label_ceiling_learns_every_class(tmp_path):
    out = tmp_path / "runs"
    assert main(["run", "--grid", "default", "--set", 'axes.maskers=["full"]', "--out", str(out)]) == 0
    with ResultStore(out / "results.sqlite", readonly=True) as store:
        (row,) = store.rows()
    metrics = row.metrics
    weakest = min(zip(metrics["best_iou"], metrics["class_names"]))
    assert weakest[0] >= MIN_CLASS_IOU, f"class {weakest[1]!r}: IoU {weakest[0]:.3f}"
    assert metrics["best_miou"] >= MIN_MIOU
