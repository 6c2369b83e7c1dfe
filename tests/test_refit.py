"""The ensemble's models trained again on the training and validation splits (results/refit.py)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from test_run_search import trained_search  # noqa: F401  (the session's search)

from mri_tune.data.store import SliceStore
from mri_tune.errors import InputError
from mri_tune.experiment.resources import task_resources
from mri_tune.experiment.settings import settings_from_options
from mri_tune.results.ensemble import load_ensemble
from mri_tune.results.evaluate import evaluate
from mri_tune.results.refit import TRAINED_ON, check_refit_splits, refit_ensemble
from mri_tune.training.checkpoint import read_checkpoint
from mri_tune.training.config import specs_from_config
from mri_tune.training.run import train_from_store
from mri_tune_core.store_format import SPLITS


def _one_small_epoch():
    return specs_from_config({"num_blocks": 3, "convs_per_block": 1, "filters": 4,
                              "kernel_size": 3, "learning_rate": 0.01, "batch_size": 32,
                              "epochs": 1, "augmentation": False}, images_per_epoch=64, seed=0)


def test_training_on_two_splits_sees_both(sample_store: Path) -> None:
    store = SliceStore(sample_store)
    spec, config = _one_small_epoch()
    one = train_from_store(store, spec, config)
    both = train_from_store(store, spec, config, train_splits=TRAINED_ON)
    n_train, n_val = store.split_size("train"), store.split_size("validation")
    assert len(one.train_labels) == n_train
    assert len(both.train_labels) == n_train + n_val
    validation = store.load_split("validation").labels
    assert torch.equal(both.train_labels[n_train:], validation)
    assert torch.equal(both.val_labels, validation)  # still reported, now in-sample


def test_task_resources_ask_what_a_trial_asks() -> None:
    config = {"num_blocks": 5, "convs_per_block": 3, "filters": 64, "kernel_size": 5,
              "batch_size": 64}
    assert task_resources(2.0, None, False, (128, 128))(config) == {"num_cpus": 2.0,
                                                                     "num_gpus": 0.0}
    assert task_resources(1.0, 0.5, True, (128, 128))(config)["num_gpus"] == 0.5
    shared = task_resources(1.0, None, True, (128, 128))(config)["num_gpus"]
    assert 0 < shared <= 1


@pytest.fixture(scope="module")
def refit(trained_search, tmp_path_factory):  # noqa: F811
    """`mri-tune ensemble --refit` on the session's search: its top 2 trials and the baseline
    trained again on both splits (a local Ray of this process), and the report of that ensemble."""
    from mri_tune.cli import main

    out = tmp_path_factory.mktemp("refit")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["ensemble", "--experiment", str(trained_search.experiment), "--top", "2",
                     "--out", str(out / "ensemble"), "--refit"]) == 0
        assert main(["report", "--experiment", str(trained_search.experiment), "--ensemble",
                     str(out / "ensemble"), "--store", str(trained_search.store), "--out",
                     str(out / "report")]) == 0
    return out, printed.getvalue()


@pytest.mark.slow
def test_refit_models_are_new_and_trained_on_both_splits(trained_search, refit) -> None:  # noqa: F811
    """Every member and the baseline is a new model, trained for its trial's best epoch count on
    both splits; the trial's own checkpoints are left as they were."""
    out, printed = refit
    folder = out / "ensemble"
    manifest = json.loads((folder / "ensemble.json").read_text())
    assert manifest["refit"]["trained_on"] == ["train", "validation"]
    entries = manifest["members"] + [manifest["baseline"]]
    assert len(entries) == 3
    for entry in entries:
        assert entry["trained_on"] == ["train", "validation"]
        assert entry["refit_epochs"] == entry["epoch"]
        payload = read_checkpoint(folder / entry["weights"])
        assert payload["epoch"] == entry["epoch"] == len(payload["history"])
        assert "optimizer" not in payload and "rng" not in payload
        trial = [p for p in trained_search.experiment.iterdir()
                 if f"_{entry['trial_id']}_" in p.name]
        assert len(trial) == 1
        kept = sorted(trial[0].glob("checkpoint_*/checkpoint.pt"))
        assert kept  # the trial's own checkpoints are still there, and all differ from the refit
        for path in kept:
            weights = read_checkpoint(path)["model"]
            assert any(not torch.equal(payload["model"][k], weights[k]) for k in weights)
    assert len(load_ensemble(folder).models) == 2
    assert printed.count("(refit on train + validation)") == 2
    report = (out / "report" / "report.md").read_text()
    assert "trained again, from scratch, on the training and validation splits" in report
    assert "refit failed" not in report


def test_run_search_refits_unless_told_not_to() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "run_search", Path(__file__).resolve().parents[1] / "experiments" / "run_search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert settings_from_options(vars(module.parse_args([]))).refit is True
    assert settings_from_options(vars(module.parse_args(["--no-refit"]))).refit is False


@pytest.mark.slow
def test_a_failed_refit_keeps_the_trials_member(trained_search, tmp_path: Path) -> None:  # noqa: F811
    import ray

    folder = tmp_path / "ensemble"
    shutil.copytree(trained_search.ensemble, folder)
    before = {p.name: p.read_bytes() for p in (folder / "members").iterdir()}
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        refit_ensemble(folder, tmp_path / "no_such_store.h5",
                       lambda config: {"num_cpus": 1, "num_gpus": 0})
    finally:
        ray.shutdown()
    manifest = json.loads((folder / "ensemble.json").read_text())
    for entry in manifest["members"]:
        assert entry["trained_on"] == ["train"]
        assert "no_such_store.h5" in entry["refit_error"]
    assert {p.name: p.read_bytes() for p in (folder / "members").iterdir()} == before
    assert not list(folder.rglob("*.partial"))
    assert len(load_ensemble(folder).models) == len(manifest["members"])


def test_refit_splits_name_the_training_split_and_store_splits_once() -> None:
    assert check_refit_splits(["validation", "train"]) == TRAINED_ON  # store order
    assert check_refit_splits(["test", "train", "validation"]) == SPLITS
    for bad in (["validation", "test"], ["train", "train"], ["train", "holdout"], "train"):
        with pytest.raises(InputError, match="train,validation,test"):
            check_refit_splits(bad)


def test_training_on_every_split_sees_the_test_people(sample_store: Path) -> None:
    store = SliceStore(sample_store)
    spec, config = _one_small_epoch()
    every = train_from_store(store, spec, config, train_splits=SPLITS)
    sizes = [store.split_size(s) for s in SPLITS]
    assert len(every.train_labels) == sum(sizes)
    assert torch.equal(every.train_labels[sum(sizes[:2]):], store.load_split("test").labels)


@pytest.mark.slow
def test_a_model_to_deploy_learns_every_split_and_refuses_a_test_figure(
        trained_search, tmp_path: Path) -> None:  # noqa: F811
    from mri_tune.cli import main

    folder = tmp_path / "deploy"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["ensemble", "--experiment", str(trained_search.experiment), "--top", "1",
                     "--out", str(folder), "--refit", "--refit-splits",
                     "train,validation,test"]) == 0
    manifest = json.loads((folder / "ensemble.json").read_text())
    assert manifest["refit"]["trained_on"] == list(SPLITS)
    assert all(e["trained_on"] == list(SPLITS) for e in manifest["members"]
               + [manifest["baseline"]])
    assert "(refit on train + validation + test)" in printed.getvalue()
    with pytest.raises(InputError, match="trained on the test split"):
        evaluate(folder, trained_search.store, "test")
    assert evaluate(folder, trained_search.store, "train").num_volumes > 0  # in-sample, allowed
    assert main(["ensemble", "--experiment", str(trained_search.experiment), "--out",
                 str(tmp_path / "never"), "--refit", "--refit-splits", "validation"]) == 2
    assert not (tmp_path / "never").exists()  # refused before any work
