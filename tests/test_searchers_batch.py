"""Large spaces (the candidate-set path), canonical duplicates, batch rules, the pending cap."""

from __future__ import annotations

import numpy as np
import pytest
from ray import tune
from ray.tune.search import Searcher
from scipy.special import log_ndtr

from searchers import GPSearch
from searchers.batch import BelieverUpdates, ThompsonSampler, log_local_penalty
from searchers.candidates import coordinate_neighbours, perturbed_rows, quasi_random_rows
from searchers.gp import correlation
from searchers.settings import BATCH_RULES
from searchers.space import build_space
from tests.test_searchers import FAST_FIT, Driver, key, loss, make

WIDE = {f"x{i}": tune.uniform(0.0, 1.0) for i in range(10)}  # 64^10: never enumerated


def wide_loss(config: dict) -> float:
    return float(sum((config[f"x{i}"] - 0.25) ** 2 for i in range(10)))


def wide(**kwargs) -> GPSearch:
    options = {"space": WIDE, "metric": "loss", "mode": "min", "seed": 0, "warmup_trials": 8,
               "fit": FAST_FIT}
    return GPSearch(**{**options, **kwargs})


def test_ten_continuous_dimensions_use_candidates_and_improve_on_warmup():
    searcher = wide()
    driver = Driver(searcher, 1, wide_loss)
    proposed = driver.run(30)
    assert not searcher.core._exhaustive
    assert driver.sources[8:] == ["model"] * 22
    assert len({key(c) for c in proposed}) == 30
    losses = [wide_loss(c) for c in proposed]
    assert min(losses[8:]) < 0.5 * min(losses[:8])


def test_candidate_path_save_restore_continues_identically(tmp_path):
    straight = Driver(wide(), 4, wide_loss)
    straight.run(24)
    first = wide()
    driver = Driver(first, 4, wide_loss)
    driver.run(14)
    first.save(str(tmp_path / "s.pkl"))
    fresh = GPSearch()
    fresh.restore(str(tmp_path / "s.pkl"))
    driver.searcher = fresh
    driver.run(24)
    assert [key(c) for c in driver.proposed] == [key(c) for c in straight.proposed]


def test_configurations_the_space_rounds_together_are_never_proposed_twice():
    # 3 x 2 canonical configurations, written several ways
    space = {"n": tune.qrandint(8, 24, 8), "act": tune.choice(["relu", "relu", "gelu"])}
    first = {"n": 17, "act": "relu"}  # rounds to n = 16
    searcher = GPSearch(space=space, metric="m", mode="min", seed=0, warmup_trials=2,
                        points_to_evaluate=[first], fit=FAST_FIT)
    driver = Driver(searcher, 2, lambda c: float(c["n"]))
    while True:
        driver.fill()
        if not driver.pending:
            break
        driver.step()
    canonical = [(c["n"] - c["n"] % 8, c["act"]) for c in driver.proposed]
    assert len(driver.proposed) == 6 == len(set(canonical))
    assert searcher.suggest("more") == Searcher.FINISHED


@pytest.mark.parametrize("rule", BATCH_RULES)
@pytest.mark.parametrize("space", ["grid", "wide"])
def test_every_batch_rule_keeps_16_pending_distinct_and_uses_the_model(rule, space):
    if space == "wide":
        searcher, objective = wide(batch_rule=rule, mix_switch=4), wide_loss
    else:
        searcher, objective = make(batch_rule=rule, mix_switch=4), loss
    searcher.set_max_concurrency(16)
    driver = Driver(searcher, 16, objective)
    proposed = driver.run(40)
    assert len({key(c) for c in proposed}) == 40
    assert driver.sources.count("model") >= 20  # 16 random while nothing is known, then 24


@pytest.mark.parametrize("pending, same_as", [(8, "kriging_believer"), (20, "thompson")])
def test_mix_is_the_believer_below_its_switch_and_thompson_from_it(pending, same_as):
    runs = {}
    for rule in ("mix", same_as):
        searcher = wide(batch_rule=rule, mix_switch=16)
        searcher.set_max_concurrency(pending)
        driver = Driver(searcher, pending, wide_loss)
        runs[rule] = [key(c) for c in driver.run(pending + 12)]
        assert driver.sources.count("model") >= 10
    assert runs["mix"] == runs[same_as]


def test_mix_builds_its_thompson_sampler_at_the_refit_only_when_a_draw_comes_next():
    for pending, built in ((3, False), (17, True)):
        searcher = wide(batch_rule="mix", mix_switch=16, warmup_trials=4)
        driver = Driver(searcher, pending + 1, wide_loss)
        driver.run(pending + 8)
        driver.fill()
        trial_id, config = driver.pending.pop(0)
        searcher.on_trial_complete(trial_id, {"loss": wide_loss(config)})  # refit here
        assert len(searcher.core.pending) == pending
        assert (searcher.core._model.thompson is not None) == built


def test_qei_gain_is_the_batch_expected_improvement_of_the_exact_joint_posterior():
    """The q-EI score of a candidate, from the believer's factors, equals a brute-force estimate
    on the joint Gaussian of (noisy pending losses, the candidate's latent loss)."""
    from searchers.grid import table_rows

    searcher = make(batch_rule="qei", qei_samples=20000, warmup_trials=6)
    searcher.set_max_concurrency(4)
    driver = Driver(searcher, 4, loss)
    driver.run(14)
    driver.fill()
    core = searcher.core
    assert core.settings.batch_rule == "qei" and len(core.pending) == 4
    model = core._ensure_model()
    believer_log_acq = core._log_acquisition(model, model.mean,
                                             np.sqrt(core._believer_variance(model)), 0)
    scores = core._log_qei(model, believer_log_acq)
    params = model.posterior.params
    pending = np.array(list(core.pending.values()), dtype=np.int64)
    rng = np.random.default_rng(1)
    for position in np.argsort(-scores)[[0, 5, 40]]:
        points = np.vstack([pending, model.rows[position]])  # (5, D)
        prior = params.signal_variance * table_rows(core._tables(params, points), points,
                                                    len(points))
        whitened = model.posterior.whiten(core._cross(model, points))
        covariance = prior - whitened.T @ whitened
        covariance[:4, :4] += params.noise_variance * np.eye(4)  # pending: noisy observations
        mean = core._cross(model, points).T @ model.posterior.alpha
        draws = rng.multivariate_normal(mean, covariance, size=400_000)
        without = np.maximum(model.best - draws[:, :4].min(axis=1), 0)
        with_it = np.maximum(model.best - draws.min(axis=1), 0)
        exact = (with_it - without).mean()
        assert exact > 0.01  # a real gain, not a tie at zero
        assert np.exp(scores[position]) == pytest.approx(exact, rel=0.05)


def test_kriging_believer_shrinks_the_variance_at_the_pending_point_to_the_noise():
    # one input at 0, candidates at 0.5 and 1; a pending point at 1 (RBF, length scale 0.5)
    def k(a, b):
        return correlation(np.subtract.outer(a, b) ** 2 / 0.25, "rbf")
    x, candidates, noise = np.array([0.0]), np.array([0.5, 1.0]), 1e-6
    lower = np.linalg.cholesky(k(x, x) + noise * np.eye(1))
    cand_w = np.linalg.solve(lower, k(x, candidates))
    variance = 1.0 - (cand_w**2).sum(0)
    w = np.linalg.solve(lower, k(x, np.array([1.0])))[:, 0]
    shrunk = BelieverUpdates().add((1,), w, k(candidates, np.array([1.0]))[:, 0], np.empty(0),
                                   1.0, noise, cand_w, variance)
    assert shrunk[1] == pytest.approx(0.0, abs=1e-5)  # the pending point itself is "known"
    assert 0.0 < shrunk[0] < variance[0]  # its neighbour learns part of it


def test_local_penalty_is_phi_at_the_pending_point_and_vanishes_far_away():
    distance = np.array([0.0, 1.0, 100.0])
    penalty = log_local_penalty(distance, mean_p=0.5, sd_p=0.2, best=0.0, lipschitz=1.0)
    assert penalty[0] == pytest.approx(log_ndtr(-0.5 / 0.2))
    assert penalty[0] < penalty[1] < penalty[2] and penalty[2] == pytest.approx(0.0, abs=1e-9)


def test_thompson_draws_have_the_posterior_covariance():
    rng = np.random.default_rng(0)
    prior = np.array([[1.0, 0.8], [0.8, 1.0]])
    whitened = np.array([[0.6, 0.3]])  # one observation
    sampler = ThompsonSampler.build(np.array([0, 1]), np.array([0.1, -0.2]), prior, whitened)
    draws = np.stack([sampler.draw(rng) for _ in range(20000)])
    np.testing.assert_allclose(draws.mean(0), [0.1, -0.2], atol=0.02)
    np.testing.assert_allclose(np.cov(draws.T), prior - whitened.T @ whitened, atol=0.02)


def test_candidate_generators_stay_in_range_and_move():
    space = build_space({"a": tune.uniform(0, 1), "b": tune.choice(["p", "q", "r"]),
                         "c": tune.randint(0, 5)})
    rng = np.random.default_rng(0)
    rows = quasi_random_rows(space.shape, 100, rng)
    assert rows.shape == (100, 3) and (rows >= 0).all() and (rows < space.shape).all()
    centre = np.array([[10, 1, 2]])
    moved = perturbed_rows(centre, space.dimensions, 50, np.full(3, 0.1), rng)
    assert (moved != centre).any(axis=1).all() and (moved < space.shape).all()
    neighbours = coordinate_neighbours(centre[0], space.dimensions)
    assert ((neighbours != centre).sum(axis=1) == 1).all()
    assert {tuple(r) for r in neighbours if r[0] == 10 and r[2] == 2} == {(10, 0, 2), (10, 2, 2)}


def test_pending_cap_is_a_fraction_of_the_remaining_budget():
    searcher = make(budget=20, pending_fraction=0.25)
    assert [searcher.suggest(str(i)) is not None for i in range(6)] == [True] * 5 + [False]
    for i in range(5):
        searcher.on_trial_complete(str(i), {"loss": 1.0 + i})
    # 15 left: at most 3 pending
    assert [searcher.suggest(f"b{i}") is not None for i in range(4)] == [True] * 3 + [False]
    assert searcher.core.pending_cap() == 3
