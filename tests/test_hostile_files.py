"""Experiment folders, checkpoints, ensemble folders and stores that were edited, damaged or
crafted: each ends in an InputError or StoreError naming the file and the fix, and nothing in
them runs as code."""

from __future__ import annotations

import json
import math
import pickle
import random
import shutil
from pathlib import Path

import h5py
import pytest
import torch
from test_run_search import trained_search  # noqa: F401  (the session's search)

from mri_tune.cli import main
from mri_tune.data.store import SliceStore
from mri_tune.errors import InputError, StoreError
from mri_tune.experiment.record import SEARCH_RECORD
from mri_tune.results.ensemble import load_ensemble
from mri_tune.results.trials import load_trials
from mri_tune.training.checkpoint import load_checkpoint, read_checkpoint


class _Planted:
    """A pickle that creates a file when it is loaded: proof that loading ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _plant(experiment: Path, marker: Path) -> None:
    """Put `_Planted` in the newest experiment state where Ray's decoder unpickles it."""
    state = sorted(experiment.glob("experiment_state-*.json"))[-1]
    data = json.loads(state.read_text())
    trial = json.loads(data["trial_data"][0][0])
    trial["storage"] = {"_type": "CLOUDPICKLE_FALLBACK",
                        "value": pickle.dumps(_Planted(marker)).hex()}
    data["trial_data"][0][0] = json.dumps(trial)
    state.write_text(json.dumps(data))


# ---- experiment folders -------------------------------------------------------------------


@pytest.mark.slow
def test_load_trials_reads_what_experiment_analysis_reads(trained_search) -> None:  # noqa: F811
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(trained_search.experiment), default_metric="val_loss",
                                  default_mode="min")
    frames = analysis.trial_dataframes
    ours = {t.trial_id: t for t in load_trials(trained_search.experiment)}
    assert set(ours) == {t.trial_id for t in analysis.trials}
    for trial in analysis.trials:
        mine, frame = ours[trial.trial_id], frames[trial.trial_id]
        assert (mine.config, mine.status) == (dict(trial.config), str(trial.status))
        if "val_loss" not in frame or frame["val_loss"].isna().all():
            assert math.isnan(mine.best_val_loss) and mine.checkpoint is None
            continue
        best = frame["val_loss"].idxmin()
        assert mine.best_val_loss == frame.loc[best, "val_loss"]
        assert mine.best_val_error == frame.loc[best, "val_error"]
        assert mine.best_epoch == frame.loc[best, "epoch"]
        assert mine.epochs_run == frame["epoch"].max()
        checkpoint = analysis.get_best_checkpoint(trial)
        assert mine.checkpoint == (None if checkpoint is None else checkpoint.path)


@pytest.mark.slow
def test_a_crafted_experiment_state_runs_no_code(trained_search, tmp_path) -> None:  # noqa: F811
    from ray.tune import ExperimentAnalysis

    copy = tmp_path / "experiment"
    shutil.copytree(trained_search.experiment, copy)
    marker = tmp_path / "ran"
    _plant(copy, marker)
    try:
        ExperimentAnalysis(str(copy))  # Ray's reader runs the planted code ...
    except Exception:  # noqa: BLE001 - it may then fail on what the code returned: beside the point
        pass
    assert marker.exists()
    marker.unlink()
    assert len(load_trials(copy)) == trained_search.num_samples  # ... ours does not
    assert main(["ensemble", "--experiment", str(copy), "--top", "1",
                 "--out", str(tmp_path / "ens")]) == 0
    assert not marker.exists()


@pytest.mark.slow
def test_ensemble_takes_a_relative_experiment_path(trained_search, tmp_path,  # noqa: F811
                                                   monkeypatch, capsys) -> None:
    monkeypatch.chdir(trained_search.out)
    relative = trained_search.experiment.relative_to(trained_search.out)
    assert main(["ensemble", "--experiment", str(relative), "--top", "1",
                 "--out", str(tmp_path / "ens")]) == 0
    manifest = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert manifest["experiment"] == str(trained_search.experiment.resolve())


@pytest.mark.slow
def test_an_experiment_not_written_by_the_search_is_refused(trained_search,  # noqa: F811
                                                            tmp_path) -> None:
    copy = tmp_path / "experiment"
    shutil.copytree(trained_search.experiment, copy)
    (copy / SEARCH_RECORD).unlink()
    with pytest.raises(InputError, match=f"holds no {SEARCH_RECORD}"):
        load_trials(copy)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["not json", "no trial_data", "trial outside"])
def test_a_damaged_experiment_state_is_a_clear_error(trained_search, tmp_path,  # noqa: F811
                                                     damage) -> None:
    copy = tmp_path / "experiment"
    shutil.copytree(trained_search.experiment, copy)
    state = sorted(copy.glob("experiment_state-*.json"))[-1]
    data = json.loads(state.read_text())
    if damage == "not json":
        state.write_text("{ no")
    elif damage == "no trial_data":
        state.write_text(json.dumps({"runner_data": {}}))
    else:
        trial = json.loads(data["trial_data"][0][0])
        trial["relative_logdir"] = "../../etc"
        data["trial_data"][0][0] = json.dumps(trial)
        state.write_text(json.dumps(data))
    with pytest.raises(InputError, match=state.name):
        load_trials(copy)


def test_a_folder_without_state_is_a_clear_error(tmp_path) -> None:
    assert main(["ensemble", "--experiment", str(tmp_path), "--out", str(tmp_path / "e")]) == 2


# ---- checkpoints ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_checkpoint(trained_search) -> Path:  # noqa: F811
    return next(trained_search.ensemble.glob("members/*.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "random bytes", "empty", "planted pickle",
                                    "a list", "keys removed"])
def test_a_bad_checkpoint_is_a_clear_error(good_checkpoint, tmp_path, damage) -> None:
    path = tmp_path / "checkpoint.pt"
    marker = tmp_path / "ran"
    good = good_checkpoint.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "random bytes":
        # Not one draw but many fixed ones: random bytes stop the unpickler in several ways
        # (UnpicklingError, IndexError, KeyError, UnicodeDecodeError), and each must read as
        # a corrupt checkpoint, every run.
        for seed in range(1, 200):
            path.write_bytes(random.Random(seed).randbytes(4096))
            with pytest.raises(InputError, match="checkpoint.pt"):
                load_checkpoint(path)
        path.write_bytes(random.Random(0).randbytes(4096))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "planted pickle":
        torch.save({"format_version": 1, "model": _Planted(marker)}, path)
    elif damage == "a list":
        torch.save([1, 2, 3], path)
    else:
        payload = torch.load(good_checkpoint, weights_only=True)
        del payload["spec"], payload["model"]
        torch.save(payload, path)
    with pytest.raises(InputError, match="checkpoint.pt") as error:
        load_checkpoint(path)
    assert "mri-tune" in str(error.value)  # the fix names where a good checkpoint comes from
    assert not marker.exists()
    assert main(["predict", "--model", str(path), str(tmp_path / "none.nii.gz")]) == 2


@pytest.mark.slow
def test_a_checkpoint_whose_weights_do_not_fit_its_spec_is_a_clear_error(
        good_checkpoint, tmp_path) -> None:
    payload = read_checkpoint(good_checkpoint)
    payload["spec"] = {**payload["spec"], "filters": payload["spec"]["filters"] * 2}
    torch.save(payload, tmp_path / "checkpoint.pt")
    with pytest.raises(InputError, match="does not match its description"):
        load_checkpoint(tmp_path)


# ---- ensemble folders -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["not json", "a list", "no members", "member file gone",
                                    "member outside"])
def test_a_bad_ensemble_json_is_a_clear_error(trained_search, tmp_path,  # noqa: F811
                                              damage) -> None:
    folder = tmp_path / "ens"
    shutil.copytree(trained_search.ensemble, folder)
    path = folder / "ensemble.json"
    manifest = json.loads(path.read_text())
    if damage == "not json":
        path.write_text("{ members")
    elif damage == "a list":
        path.write_text("[]")
    elif damage == "no members":
        del manifest["members"]
        path.write_text(json.dumps(manifest))
    elif damage == "member file gone":
        (folder / manifest["members"][0]["weights"]).unlink()
    else:
        manifest["members"][0]["weights"] = "../../../etc/passwd"
        path.write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="ensemble.json"):
        load_ensemble(folder)
    assert main(["predict", "--model", str(folder), str(tmp_path / "none.nii.gz")]) == 2


# ---- stores ---------------------------------------------------------------------------------


@pytest.mark.parametrize("edit", ["classes not json", "split_ranges a list", "no image_size",
                                  "split past the end"])
def test_a_hand_edited_store_is_a_store_error(sample_store, tmp_path, edit) -> None:
    path = tmp_path / "store.h5"
    shutil.copy(sample_store, path)
    with h5py.File(path, "r+") as f:
        if edit == "classes not json":
            f.attrs["classes"] = "head, spine"
        elif edit == "split_ranges a list":
            f.attrs["split_ranges"] = "[1, 2]"
        elif edit == "no image_size":
            del f.attrs["image_size"]
        else:
            ranges = json.loads(f.attrs["split_ranges"])
            ranges["test"] = [ranges["test"][0], ranges["test"][1] + 1000]
            f.attrs["split_ranges"] = json.dumps(ranges)
    with pytest.raises(StoreError, match="store.h5") as error:
        SliceStore(path).load_split("test")
    assert "mri-tune ingest" in str(error.value)
