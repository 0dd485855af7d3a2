"""The job schema: defaults, every problem at once, extends, --set, and every shipped job file."""

from __future__ import annotations

import pytest
from conftest import JOBS, REPO, write_job

from finetune.errors import JobError
from finetune.job import Job, load_job, parse_override, set_path, validate_job_dict
from finetune.search_space import count_trials, parse_space, to_tune_space


@pytest.mark.parametrize("path", [*sorted(JOBS.glob("*.yaml")), *sorted((REPO / "bench").glob("*.yaml"))],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_job_loads_validates_and_translates(path):
    """Every job under jobs/ and bench/ binds to the schema, its space translates to Tune's, and
    its trial count follows."""
    job = load_job(path)
    assert job.name and job.storage_path.startswith(("/", "s3://"))
    tune_space = to_tune_space(job.search.space, fixed=job.model_dump(mode="json"))
    assert set(tune_space) == set(job.search.space)
    grid = 1
    for domain in parse_space(job.search.space).values():
        grid *= len(domain.args[0]) if domain.kind == "grid" else 1
    assert count_trials(job.search) == job.search.num_samples * grid >= 1


def test_defaults_fill_a_minimal_job():
    job = validate_job_dict({"name": "minimal"})
    assert job.dataset.source == "sklearn:digits"
    assert job.train.epochs >= 1 and job.search.num_samples == 1
    assert job.executor == "in_trial"


def test_contract_fields_are_read_as_written():
    job = load_job(JOBS / "digits.yaml")
    assert job.train.batch_size == 64 and job.resources.num_workers == 2
    assert job.search.scheduler.type == "asha" and job.search.scheduler.grace_period == 2
    assert job.executor == "ray_train"
    assert set(job.search.space) == {"train.learning_rate", "train.optimizer", "model.head.dropout",
                                     "model.head.units"}


def problems_of(raw: dict) -> dict[str, str]:
    with pytest.raises(JobError) as caught:
        validate_job_dict(raw, source="test.yaml")
    return {p.path: p.expected for p in caught.value.problems}


def test_every_problem_is_reported_at_once_with_its_path():
    problems = problems_of({
        "name": "ok",
        "seeed": 3,
        "train": {"epochs": 0, "optimizer": "adamm", "learning_rate": -1},
        "model": {"head": {"dropout": 1.5, "activation": "rellu"}},
        "search": {"scheduler": {"type": "asha", "grace_period": 0}, "space": {"train.lr": {"uniform": [0, 1]}}},
        "resources": {"num_workers": 0},
    })
    assert "did you mean 'seed'" in problems["seeed"]
    assert "greater than or equal to 1" in problems["train.epochs"]
    assert "did you mean adam" in problems["train.optimizer"]
    assert "greater than 0" in problems["train.learning_rate"]
    assert "less than 1" in problems["model.head.dropout"]
    assert "relu" in problems["model.head.activation"]
    assert "search.scheduler.grace_period" in problems
    assert "resources.num_workers" in problems
    assert "unknown field 'lr'" in problems["search.space.train.lr"]


def test_error_message_names_file_field_value_and_expectation():
    with pytest.raises(JobError) as caught:
        validate_job_dict({"name": "x", "train": {"batch_size": "big"}}, source="jobs/x.yaml")
    text = str(caught.value)
    assert text.startswith("jobs/x.yaml: 1 problem:")
    assert "train.batch_size: got 'big'; expected a valid integer" in text


def test_cross_field_rules():
    problems = problems_of({
        "name": "x", "train": {"epochs": 3, "batch_size": 1},
        "search": {"metric": "val_auc", "scheduler": {"type": "asha", "grace_period": 5}},
        "resources": {"num_workers": 2, "executor": "in_trial"},
    })
    assert "val_accuracy" in problems["search.metric"]
    assert "at most train.epochs" in problems["search.scheduler.grace_period"]
    assert "in_trial runs one worker" in problems["resources.executor"]
    assert "global batch" in problems["train.batch_size"]


def test_scheduler_by_bare_name_and_unknown_type():
    assert validate_job_dict({"name": "x", "search": {"scheduler": "none"}}).search.scheduler.type == "none"
    problems = problems_of({"name": "x", "search": {"scheduler": {"type": "bohb"}}})
    assert "asha, hyperband, median, pbt, none" in problems["search.scheduler.type"]


def test_space_values_are_checked_against_their_field():
    problems = problems_of({"name": "x", "search": {"space": {
        "train.optimizer": {"choice": ["adam", "sgdd"]},
        "model.head.dropout": {"uniform": [0.1, 1.2]},
        "train.learning_rate": {"loguniform": [0, 1]},
        "resources.num_workers": {"choice": [1, 2]},
        "model.head": {"choice": [1]},
        "train.epochs": {"randint": [5, 2]},
    }}})
    assert "did you mean sgd" in problems["search.space.train.optimizer"]
    assert "less than 1" in problems["search.space.model.head.dropout"]
    assert "low > 0" in problems["search.space.train.learning_rate"]
    assert "only those vary" in problems["search.space.resources.num_workers"]
    assert "not a whole section" in problems["search.space.model.head"]
    assert "low < high" in problems["search.space.train.epochs"]


def test_extends_merges_and_the_child_wins(tmp_path):
    write_job(tmp_path, "name: base\ntrain: {epochs: 7, batch_size: 32}\n", "base.yaml")
    child = write_job(tmp_path, "extends: base.yaml\nname: child\ntrain: {epochs: 2}\n", "child.yaml")
    job = load_job(child)
    assert (job.name, job.train.epochs, job.train.batch_size) == ("child", 2, 32)


def test_extends_cycle_and_missing_file_are_errors(tmp_path):
    write_job(tmp_path, "extends: b.yaml\nname: a\n", "a.yaml")
    write_job(tmp_path, "extends: a.yaml\nname: b\n", "b.yaml")
    with pytest.raises(JobError, match="cycle"):
        load_job(tmp_path / "a.yaml")
    with pytest.raises(JobError, match="existing job file"):
        load_job(tmp_path / "nope.yaml")


def test_set_overrides_any_field_including_search_space_keys():
    job = load_job(JOBS / "digits.yaml", ["train.epochs=3", "search.space.train.optimizer={choice: [sgd]}",
                                          "resources.num_workers=1"])
    assert job.train.epochs == 3 and job.executor == "in_trial"
    assert job.search.space["train.optimizer"] == {"choice": ["sgd"]}
    assert parse_override("model.head.units=[8, 16]") == ("model.head.units", [8, 16])
    with pytest.raises(JobError, match="PATH=VALUE"):
        parse_override("train.epochs")
    with pytest.raises(JobError, match="train.epochs"):
        load_job(JOBS / "digits.yaml", ["train.epochs=zero"])


def test_set_path_does_not_touch_the_original():
    original = {"train": {"epochs": 1}}
    assert set_path(original, "train.epochs", 5) == {"train": {"epochs": 5}}
    assert original == {"train": {"epochs": 1}}


def test_job_model_is_the_schema():
    schema = Job.model_json_schema()
    assert {"dataset", "model", "train", "search", "resources"} <= set(schema["properties"])
