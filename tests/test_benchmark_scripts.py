"""Every benchmark script starts: its imports resolve from benchmarks/ (its own folder comes
first on sys.path, so no script there may share a name with a package the project imports)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = ["faults.py", "faults_search.py", "generalization.py", "search.py", "searcher_bench.py",
           "store.py", "train.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_script_starts_and_explains_itself(script: str) -> None:
    run = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"], cwd=BENCHMARKS,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("usage:")


def test_every_script_is_listed() -> None:
    # objective_ranking.py takes a search folder and has no --help; searcher_problems.py is a module
    scripts = {p.name for p in BENCHMARKS.glob("*.py")} - {"objective_ranking.py",
                                                         "searcher_problems.py"}
    assert scripts == set(SCRIPTS)


def test_no_script_shadows_a_project_package() -> None:
    packages = {"mri_tune", "mri_tune_core", "mri_tune_datasets", "searchers", "datasets"}
    assert not {p.stem for p in BENCHMARKS.glob("*.py")} & packages
