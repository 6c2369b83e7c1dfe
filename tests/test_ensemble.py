"""Ranking of trials and softmax averaging; the real ensemble folder of a tiny search."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_run_search import trained_search  # noqa: F401  (the session's search)

from mri_tune.errors import InputError
from mri_tune.results.ensemble import Ensemble, load_ensemble
from mri_tune.results.trials import TrialRecord, rank_trials
from mri_tune.training.inference import predict_proba
from mri_tune.training.model import CNNSpec, RegionCNN


def _record(index: int, loss: float, checkpoint: str | None = "/c") -> TrialRecord:
    return TrialRecord(f"t{index}", index, {}, "TERMINATED", loss, 0.1, 1, 1, checkpoint)


def test_rank_trials_orders_by_best_validation_loss_and_drops_failures() -> None:
    trials = [_record(0, 0.8), _record(1, math.nan, None), _record(2, 0.3), _record(3, 0.8),
              _record(4, 0.1, None)]
    assert [t.trial_id for t in rank_trials(trials)] == ["t2", "t0", "t3"]


def test_a_trial_that_differs_only_in_epochs_and_ends_with_the_same_model_is_left_out() -> None:
    from mri_tune.results.trials import distinct_models

    def trial(index, loss, best_epoch, **config):
        return TrialRecord(f"t{index}", index, config, "TERMINATED", loss, 0.1, best_epoch, 8,
                           "/c")

    ranked = [trial(0, 0.5, 5, lr=0.01, epochs=8),
              trial(1, 0.5, 5, lr=0.01, epochs=6),  # the same model as t0: left out
              trial(2, 0.5, 5, lr=0.02, epochs=6),  # another learning rate
              trial(3, 0.6, 5, lr=0.01, epochs=4),  # another loss: another model
              trial(4, 0.5, 4, lr=0.01, epochs=6)]  # best at another epoch
    assert [t.trial_id for t in distinct_models(ranked)] == ["t0", "t2", "t3", "t4"]
    assert distinct_models(ranked[2:]) == ranked[2:]


def _model(seed: int) -> RegionCNN:
    spec = CNNSpec(num_blocks=3, convs_per_block=1, filters=4, kernel_size=3)
    return RegionCNN(spec, 4, (32, 32), generator=torch.Generator().manual_seed(seed)).eval()


def test_ensemble_averages_member_softmax() -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32), dtype=np.uint8)
    models = [_model(1), _model(2), _model(3)]
    ensemble = Ensemble(models, ("head", "abdomen", "pelvis", "spine"), (32, 32), {}, [{}] * 3)
    expected = np.mean([predict_proba(m, images) for m in models], axis=0)
    got = ensemble.predict_proba(images)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)


def test_ensemble_rejects_slices_of_another_size() -> None:
    ensemble = Ensemble([_model(1)], ("a", "b", "c", "d"), (32, 32), {}, [{}])
    with pytest.raises(InputError, match=r"\(N, 32, 32\)"):
        ensemble.predict_proba(np.zeros((2, 64, 64), dtype=np.uint8))


def test_a_folder_without_ensemble_json_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(InputError, match="not an ensemble folder"):
        load_ensemble(tmp_path)


@pytest.mark.slow
def test_ensemble_folder_is_self_contained(trained_search) -> None:  # noqa: F811
    folder = trained_search.ensemble
    manifest = json.loads((folder / "ensemble.json").read_text())
    members = manifest["members"]
    assert 1 <= len(members) <= trained_search.top
    losses = [m["val_loss"] for m in members]
    assert losses == sorted(losses)
    assert manifest["classes"] == ["head", "abdomen", "pelvis", "spine"]
    assert manifest["preprocessing"]["size"] == manifest["image_size"][0]
    assert manifest["baseline"] is not None  # the search ran the paper's baseline first
    for m in members:
        assert (folder / m["weights"]).is_file() and m["trial_id"]
    loaded = load_ensemble(folder)
    assert len(loaded.models) == len(members)


@pytest.mark.slow
def test_ensemble_command_takes_the_top_trials(trained_search, tmp_path, capsys) -> None:  # noqa: F811
    from mri_tune.cli import main
    from mri_tune.results.trials import load_trials

    assert main(["ensemble", "--experiment", str(trained_search.experiment), "--top", "2",
                 "--out", str(tmp_path / "ens")]) == 0
    members = json.loads((tmp_path / "ens" / "ensemble.json").read_text())["members"]
    best_two = rank_trials(load_trials(trained_search.experiment))[:2]
    assert [m["trial_id"] for m in members] == [t.trial_id for t in best_two]
    assert "ensemble of 2 trials" in capsys.readouterr().out


def test_a_folder_that_is_no_experiment_is_a_clear_error(tmp_path) -> None:
    from mri_tune.results.ensemble import build_ensemble

    with pytest.raises(InputError, match="not a Ray Tune experiment folder"):
        build_ensemble(tmp_path, tmp_path / "ens")
