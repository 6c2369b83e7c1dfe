"""Every benchmark script starts: its imports resolve from benchmarks/ (its own folder comes
first on sys.path, so no script there may share a name with a package the project imports)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = ["faults.py", "faults_search.py", "generalization.py", "search.py", "searcher_bench.py",
           "selection.py", "store.py", "train.py"]


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


def test_a_recipe_with_a_field_that_does_not_exist_is_refused_before_any_work(
        tmp_path: Path) -> None:
    store = tmp_path / "never.h5"
    for recipe, says in (("shipped/filterz=4", "'filterz=4' must be field=value"),
                         ("shipped/filters=four", "filters takes an integer, not 'four'"),
                         ("shipped/augment=x", "'augment=x' must be field=value")):
        run = subprocess.run([sys.executable, str(BENCHMARKS / "generalization.py"),
                              "--recipes", recipe, "--store", str(store)], cwd=BENCHMARKS,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode != 0 and says in run.stderr, run.stderr[-2000:]
        assert not store.exists()
