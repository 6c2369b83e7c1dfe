"""Report pieces on synthetic trials, and every report file of a real (tiny) search."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_run_search import trained_search  # noqa: F401  (the session's search)

from mri_tune.results.report import plot_search_progress, running_stats, top_table
from mri_tune.results.trials import TrialRecord, rank_trials

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _trial(index: int, loss: float, error: float = 0.5, **config) -> TrialRecord:
    base = {"num_blocks": 3, "convs_per_block": 1, "filters": 8, "kernel_size": 3,
            "learning_rate": 1e-3, "batch_size": 16, "epochs": 2, "augmentation": True}
    ok = math.isfinite(loss)
    return TrialRecord(f"t{index:02d}", index, {**base, **config}, "TERMINATED", loss, error,
                       1 if ok else 0, 2 if ok else 0, f"/ckpt/{index}" if ok else None)


def test_running_stats_ignore_failed_trials() -> None:
    minimum, median = running_stats(np.array([np.nan, 3.0, 1.0, np.nan, 2.0]))
    np.testing.assert_array_equal(minimum, [np.nan, 3.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(median, [np.nan, 3.0, 2.0, 2.0, 2.0])


def test_search_progress_figure_is_written(tmp_path) -> None:
    trials = [_trial(i, loss) for i, loss in enumerate([1.2, 0.9, np.nan, 1e22, 0.7, 0.6])]
    out = plot_search_progress(trials, warmup_end=3, baseline=trials[0],
                               out=tmp_path / "progress.png")
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 10_000


def test_top_table_lists_the_best_trials_in_order() -> None:
    trials = [_trial(0, 1.0), _trial(1, 0.5, filters=16), _trial(2, np.nan), _trial(3, 0.7)]
    lines = top_table(rank_trials(trials), top=2)
    assert len(lines) == 4  # header, separator, two rows
    assert lines[2].startswith("| 1 | t01 | 0.5000 |") and "| 16 |" in lines[2]
    assert lines[3].startswith("| 2 | t03 | 0.7000 |")


@pytest.mark.slow
def test_report_writes_every_file(trained_search) -> None:  # noqa: F811
    report = trained_search.out / "report"
    for name in ("search_progress.png", "confusion.png"):
        assert (report / name).read_bytes()[:8] == PNG_MAGIC
    text = (report / "report.md").read_text()
    for needle in ("![search progress](search_progress.png)", "![confusion matrices]",
                   "| rank | trial | val loss |", "| volume | accuracy |"):
        assert needle in text
    evaluation = json.loads((report / "evaluation.json").read_text())
    listed = evaluation["models"]["ensemble"]["volumes"]
    assert len(listed) == evaluation["num_volumes"]
    flagged = [v for v in listed if v["uncertain"] or not v["correct"]]
    # Every volume is a row of the report's listing, and the flagged ones get a profile page.
    assert all(f"| `{v['path']}`" in text for v in listed)
    assert ("flagged_profiles.png" in text) == bool(flagged)
    if flagged:
        assert (report / "flagged_profiles.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_report_command_writes_into_out(trained_search, tmp_path) -> None:  # noqa: F811
    from mri_tune.cli import main

    assert main(["report", "--experiment", str(trained_search.experiment), "--ensemble",
                 str(trained_search.ensemble), "--store", str(trained_search.store),
                 "--out", str(tmp_path / "r")]) == 0
    assert {p.name for p in (tmp_path / "r").iterdir()} - {"flagged_profiles.png"} == {
        "report.md", "search_progress.png", "confusion.png", "evaluation.json"}
