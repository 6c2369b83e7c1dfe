"""Drawing training slices: every region alike, a person by slices ** people_power."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from mri_tune.errors import InputError, SpecError
from mri_tune.training.config import TrainConfig, baseline_specs
from mri_tune.training.trainer import Slices, Trainer, build_model, region_draw_weights
from tests.test_train import CLASSES, CONFIG, TINY, VALIDATION

# Class 0: person 7 has 9 slices, person 3 has 1; class 2: person 5 has 2 slices. No class 1.
LABELS = torch.tensor([0] * 10 + [2] * 2)
PEOPLE = torch.tensor([7] * 9 + [3] + [5] * 2)


def mass(weights: torch.Tensor, mask: torch.Tensor) -> float:
    return float(weights[mask].sum())


@pytest.mark.parametrize(("power", "ratio"), [(0.0, 1.0), (0.5, 3.0), (1.0, 9.0)])
def test_regions_are_drawn_alike_and_people_by_a_power_of_their_slices(
        power: float, ratio: float) -> None:
    weights = region_draw_weights(LABELS, PEOPLE, power)
    assert weights.sum().item() == pytest.approx(1.0)
    # Two regions present: each is drawn half the time, however many slices it has.
    assert mass(weights, LABELS == 0) == pytest.approx(0.5)
    assert mass(weights, LABELS == 2) == pytest.approx(0.5)
    # Within region 0, person 7 (9 slices) against person 3 (1 slice): 9 ** power.
    assert mass(weights, PEOPLE == 7) / mass(weights, PEOPLE == 3) == pytest.approx(ratio)
    # The slices of one person in one region are drawn alike.
    assert torch.unique(weights[PEOPLE == 7]).numel() == 1


def test_without_people_every_slice_is_its_own_person() -> None:
    weights = region_draw_weights(LABELS, None, 0.5)
    assert mass(weights, LABELS == 0) == pytest.approx(0.5)
    assert torch.allclose(weights[:10], torch.full((10,), 0.05, dtype=torch.float64))
    with pytest.raises(InputError, match="one person id per training slice"):
        region_draw_weights(LABELS, PEOPLE[:3], 0.5)


def test_the_trainer_draws_by_person_with_an_unweighted_loss_and_a_seed() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 255, (12, 32, 32), generator=generator, dtype=torch.uint8)
    train = Slices(images, LABELS, PEOPLE)
    assert CONFIG.sampling == "regions"
    config = dataclasses.replace(CONFIG, people_power=0.0)

    def trainer(cfg: TrainConfig) -> Trainer:
        return Trainer(build_model(TINY, len(CLASSES), (32, 32), "cpu", cfg.seed), train,
                       VALIDATION, cfg, CLASSES)

    people = trainer(config)
    order = people._draw_order(20_000)
    share = torch.bincount(LABELS[order], minlength=4).double() / order.numel()
    assert share[0] == pytest.approx(0.5, abs=0.02) and share[2] == pytest.approx(0.5, abs=0.02)
    in_region_0 = PEOPLE[order][LABELS[order] == 0]
    assert (in_region_0 == 3).double().mean() == pytest.approx(0.5, abs=0.02)
    assert torch.equal(people.loss_weights, torch.ones(4))
    assert torch.equal(trainer(config)._draw_order(50), trainer(config)._draw_order(50))

    paper = trainer(dataclasses.replace(config, sampling="slices"))
    assert paper.draw_weights is None
    assert torch.equal(paper.loss_weights, paper.weights)
    assert sorted(paper._draw_order(12).tolist()) == list(range(12))  # a permutation


def test_sampling_is_validated_and_the_paper_recipe_keeps_its_own() -> None:
    with pytest.raises(SpecError, match="sampling"):
        dataclasses.replace(CONFIG, sampling="volumes")
    with pytest.raises(SpecError, match="people_power"):
        dataclasses.replace(CONFIG, people_power=1.5)
    assert baseline_specs()[1].sampling == "slices"
    restored = TrainConfig.from_dict(CONFIG.to_dict())
    assert (restored.sampling, restored.people_power) == ("regions", 1.0)


@pytest.mark.slow
def test_training_from_a_store_draws_by_the_people_of_its_volume_table(
        sample_store: Path) -> None:
    from mri_tune.data.store import SliceStore, person_of_volume
    from mri_tune.training.run import train_from_store

    store = SliceStore(sample_store)
    config = TrainConfig(learning_rate=0.01, batch_size=32, epochs=1, augmentation=False,
                         images_per_epoch=32)
    trainer = train_from_store(store, TINY, config)
    split = store.load_split("train")
    person = person_of_volume(store.volumes())[split.volume]
    expected = region_draw_weights(split.labels, person, config.people_power)
    torch.testing.assert_close(trainer.draw_weights, expected)
    by_people = train_from_store(store, TINY, dataclasses.replace(config, people_power=0.0))
    # More than one person per region in this split, so a person is not a slice.
    torch.testing.assert_close(by_people.draw_weights,
                               region_draw_weights(split.labels, person, 0.0))
    assert not torch.allclose(by_people.draw_weights, region_draw_weights(split.labels, None, 0.0))
