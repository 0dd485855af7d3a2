"""Search algorithms without starting Ray: TPE's proposals from the job's space (seeded,
conditional, list choices), what it tells Optuna of each way a trial ends, the concurrency Tune
gives it, and the PBT scheduler's mutations."""

from __future__ import annotations

import pytest

from finetune import _compat
from finetune.failures import USER_ERROR, record_failure
from finetune.job import validate_job_dict
from finetune.search_space import ClampToSpace, parse_domain, pbt_mutations
from finetune.searchers import create_search_alg
from finetune.tpe import TpeSearch
from finetune.tuner import create_scheduler

SPACE = {
    "train.learning_rate": {"loguniform": [1.0e-4, 1.0e-1]},
    "train.optimizer": {"choice": ["adam", "sgd"]},
    "train.optimizer_args.momentum": {"uniform": [0.5, 0.99], "when": {"train.optimizer": "sgd"}},
    "model.head.units": {"choice": [[32], [64], [128]]},
    "model.head.dropout": {"quniform": [0.0, 0.5, 0.1]},
    "train.epochs": {"randint": [2, 3]},
}


def tpe_job(seed: int = 0, **search):
    return validate_job_dict({"name": "t", "seed": seed, "train": {"epochs": 3},
                              "search": {"algorithm": "tpe", "num_samples": 12, "space": SPACE, **search}})


def proposals(job, tmp_path, count: int) -> list[dict]:
    searcher = TpeSearch(job, str(tmp_path))
    return [searcher.suggest(f"trial_{i}") for i in range(count)]


def test_tpe_proposals_follow_the_space_and_the_seed(tmp_path):
    first = proposals(tpe_job(seed=0), tmp_path, 6)
    assert first == proposals(tpe_job(seed=0), tmp_path, 6)  # a rerun proposes the same first trials
    assert first != proposals(tpe_job(seed=1), tmp_path, 6)
    for config in first:
        space = config["space"]
        assert set(space) == set(SPACE)
        assert 1e-4 <= space["train.learning_rate"] <= 0.1
        assert space["model.head.units"] in ([32], [64], [128])  # list options decoded from their JSON
        assert round(space["model.head.dropout"] * 10, 9) == round(space["model.head.dropout"] * 10)
        assert space["train.epochs"] in (2, 3)
        assert (space["train.optimizer_args.momentum"] is not None) == (space["train.optimizer"] == "sgd")
        assert isinstance(config["seed"], int)
    assert len({c["seed"] for c in first}) == 6
    # Every proposal makes a valid trial job.
    from finetune.trial import trial_job

    for config in first:
        trial_job(tpe_job().model_dump(mode="json"), config["space"])


def test_tpe_tells_optuna_how_each_trial_ended(tmp_path):
    from optuna.trial import TrialState

    searcher = TpeSearch(tpe_job(), str(tmp_path))
    for trial_id in ("done", "stopped", "failed", "erred"):
        searcher.suggest(trial_id)
    # Tune gives the searcher each result a trial goes on from, and its last one with its end.
    for epoch, value in ((1, 0.5), (2, 0.8)):
        searcher.on_trial_result("done", {"epoch": epoch, "val_accuracy": value})
    searcher.on_trial_complete("done", result={"epoch": 3, "val_accuracy": 0.7})
    searcher.on_trial_result("stopped", {"epoch": 1, "val_accuracy": 0.4})
    searcher.on_trial_complete("stopped", result={"epoch": 2, "val_accuracy": 0.3})  # stopped by ASHA at epoch 2
    searcher.on_trial_result("failed", {"epoch": 1, "val_accuracy": 0.4})
    record_failure(str(tmp_path / "trials" / "failed"), "loss became nan at epoch 2", USER_ERROR)
    searcher.on_trial_complete("failed", result={"epoch": 1, "val_accuracy": 0.4})
    searcher.on_trial_complete("erred", error=True)
    searcher.on_trial_complete("done")  # told once only
    states = {t.number: (t.state, t.value) for t in searcher.study.trials}
    assert states == {0: (TrialState.COMPLETE, 0.8),  # its best epoch, the value the run picks by
                      1: (TrialState.PRUNED, 0.3),  # a scheduler stopped it: pruned, at its last value
                      2: (TrialState.FAIL, None), 3: (TrialState.FAIL, None)}


def test_tpe_runs_as_many_trials_at_once_as_planned(tmp_path):
    """ray-project/ray#63770: Tune keeps as many trials pending as the ConcurrencyLimiter allows,
    not 1; without it TPE trials ran one at a time."""
    from ray.tune.search import SearchGenerator

    search_alg = create_search_alg(tpe_job(), str(tmp_path), concurrency=3)
    assert _compat.max_pending_trials(SearchGenerator(search_alg)) == 3


def test_tpe_refuses_grid_entries_and_pbt():
    from finetune.errors import JobError

    with pytest.raises(JobError, match="cannot walk a fixed grid"):
        validate_job_dict({"name": "t", "search": {"algorithm": "tpe", "space": {"train.optimizer": {"grid": ["adam"]}}}})
    with pytest.raises(JobError, match="a TPE study cannot record"):
        validate_job_dict({"name": "t", "train": {"epochs": 4}, "search": {
            "algorithm": "tpe", "scheduler": "pbt", "space": {"train.learning_rate": {"uniform": [0.1, 0.2]}}}})


def test_pbt_mutates_the_numeric_entries_within_their_ranges():
    job = validate_job_dict({"name": "t", "train": {"epochs": 6}, "search": {
        "num_samples": 4, "scheduler": {"type": "pbt", "perturbation_interval": 2}, "space": SPACE}})
    scheduler = create_scheduler(job)
    assert type(scheduler).__name__ == "PopulationBasedTraining"
    mutations = pbt_mutations(job.search.space, None)
    assert set(mutations) == {"train.learning_rate", "model.head.dropout"}  # not conditional, choice or epochs
    clamp = ClampToSpace(mutations)
    config = clamp({"space": {"train.learning_rate": 0.5, "model.head.dropout": 0.57}})
    assert config["space"] == {"train.learning_rate": 0.1, "model.head.dropout": 0.5}
    assert ClampToSpace({"x": parse_domain({"randint": [1, 4]})})({"space": {"x": 4.8}})["space"]["x"] == 4


def test_pbt_refuses_ray_train_saying_what_to_use():
    from finetune.errors import JobError

    with pytest.raises(JobError, match="use resources.num_workers: 1 with pbt, or asha"):
        validate_job_dict({"name": "t", "train": {"epochs": 4}, "resources": {"num_workers": 2}, "search": {
            "scheduler": "pbt", "space": {"train.learning_rate": {"uniform": [0.1, 0.2]}}}})


def test_tpe_with_an_empty_space_still_proposes_a_whole_configuration(tmp_path):
    job = validate_job_dict({"name": "t", "search": {"algorithm": "tpe", "num_samples": 2}})
    config = TpeSearch(job, str(tmp_path)).suggest("only")
    assert config["space"] == {} and isinstance(config["seed"], int)
