"""The package layers import only downward (the contracts in pyproject.toml, by import-linter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_paper_lives_in_one_module() -> None:
    """Table 1's learning-rate list, the baseline and the warm-up count appear only in paper.py."""
    needles = ("range(-7, 1)", "WARMUP_TRIALS = ", '"filters": 64')
    hits = []
    for folder in ("mri_tune_core", "mri_tune", "searchers", "datasets", "experiments"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            hits += [(path.relative_to(REPO).as_posix(), n) for n in needles if n in text]
    assert sorted({path for path, _ in hits}) == ["mri_tune_core/paper.py"], hits
