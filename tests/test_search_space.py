"""Search-space entries: their domains, their translation to Ray Tune, conditional entries, the
number of trials a space makes, and the schedulers."""

from __future__ import annotations

import numpy as np
import pytest

from finetune.job import validate_job_dict
from finetune.search_space import count_trials, parse_domain, to_tune_space
from finetune.tuner import create_scheduler


def test_domains_translate_to_tune():
    from ray import tune

    space = to_tune_space({
        "a": {"choice": [1, 2]}, "b": {"grid": [1, 2]}, "c": {"uniform": [0, 1]},
        "d": {"loguniform": [1e-4, 1e-1]}, "e": {"randint": [2, 4]}, "f": {"quniform": [0, 1, 0.25]}, "g": 7,
    })
    assert isinstance(space["a"], tune.search.sample.Categorical)
    assert space["b"] == {"grid_search": [1, 2]}
    assert isinstance(space["d"].get_sampler(), tune.search.sample.LogUniform)
    assert (space["e"].lower, space["e"].upper) == (2, 5)  # the job's randint includes its upper end
    assert space["g"] == 7
    samples = {space["e"].sample() for _ in range(200)}
    assert samples == {2, 3, 4}


def test_bad_domains_say_what_was_expected():
    with pytest.raises(ValueError, match=r"\[low, high, step\]"):
        parse_domain({"quniform": [0, 1]})
    with pytest.raises(ValueError, match="non-empty list"):
        parse_domain({"choice": []})
    with pytest.raises(ValueError, match="exactly one domain key"):
        parse_domain({"choice": [1], "uniform": [0, 1]})
    assert parse_domain({"units": 3}).kind == "fixed"


def test_conditional_space_entries_appear_only_with_their_condition():
    from ray.tune.search.variant_generator import generate_variants

    from finetune.search_space import to_tune_space

    space = {"train.optimizer": {"choice": ["adam", "sgd"]},
             "train.optimizer_args.momentum": {"uniform": [0.5, 0.99], "when": {"train.optimizer": "sgd"}}}
    validate_job_dict({"name": "t", "search": {"space": space}})  # validates
    seen = set()
    for seed in range(40):
        np.random.seed(seed)
        _, config = next(generate_variants({"space": to_tune_space(space), "seed": seed}))
        optimizer, momentum = config["space"]["train.optimizer"], config["space"]["train.optimizer_args.momentum"]
        assert (momentum is not None) == (optimizer == "sgd")
        if momentum is not None:
            assert 0.5 <= momentum <= 0.99
        seen.add(optimizer)
    assert seen == {"adam", "sgd"}


def test_grid_entries_multiply_the_trials():
    spec = validate_job_dict({"name": "t", "search": {"num_samples": 2, "space": {
        "train.optimizer": {"grid": ["adam", "sgd", "rmsprop"]}, "train.learning_rate": {"uniform": [0.1, 0.2]}}}})
    assert count_trials(spec.search) == 6


@pytest.mark.parametrize("kind,cls", [("asha", "AsyncHyperBandScheduler"), ("hyperband", "AsyncHyperBandScheduler"),
                                      ("median", "MedianStoppingRule"), ("none", "FIFOScheduler")])
def test_schedulers(kind, cls):
    spec = validate_job_dict({"name": "t", "search": {"scheduler": {"type": kind}}})
    assert type(create_scheduler(spec)).__name__ == cls


def test_conditional_entries_sharing_a_prefix_draw_independently():
    """Two conditional entries whose paths share their first 8 bytes and more: across trials their
    draws are uncorrelated (they were identical when only 8 bytes of the path seeded the stream)."""
    from ray.tune.search.variant_generator import generate_variants

    condition = {"when": {"train.optimizer": "adam"}}
    space = {"train.optimizer": "adam",
             "train.optimizer_args.beta_1": {"uniform": [0.0, 1.0], **condition},
             "train.optimizer_args.beta_2": {"uniform": [0.0, 1.0], **condition}}
    first, second = [], []
    for seed in range(300):
        _, config = next(generate_variants({"space": to_tune_space(space), "seed": seed}))
        first.append(config["space"]["train.optimizer_args.beta_1"])
        second.append(config["space"]["train.optimizer_args.beta_2"])
    assert len(set(first)) == 300 and all(a != b for a, b in zip(first, second))
    correlation = np.corrcoef(first, second)[0, 1]
    assert abs(correlation) < 0.2, correlation  # fixed seeds: the same figure every run
