"""The JSON Schema of job files: generated from the pydantic models, shipped in the package, named
by every job file, accepting job files as people write them and rejecting broken ones."""

from __future__ import annotations

import json
import subprocess
import sys

import jsonschema
import pytest
import yaml
from conftest import REPO

from finetune.job.json_schema import SCHEMA_FILE, job_json_schema, schema_text, shipped_schema_text

JOB_FILES = sorted([*(REPO / "jobs").glob("*.yaml"), *(REPO / "bench").glob("*.yaml")])
COMMENT = "# yaml-language-server: $schema=../finetune/finetune-job.schema.json"


@pytest.fixture(scope="module")
def validator():
    schema = job_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_shipped_schema_is_the_generated_one():
    assert shipped_schema_text() == schema_text(), (
        f"finetune/{SCHEMA_FILE} is out of date: run `finetune schema > finetune/{SCHEMA_FILE}`")


def test_finetune_schema_prints_it():
    result = subprocess.run([sys.executable, "-m", "finetune", "schema"], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0 and json.loads(result.stdout) == job_json_schema()


def test_every_field_has_a_description():
    missing = []

    def walk(node, where):
        if isinstance(node, dict):
            for name, field in (node.get("properties") or {}).items():
                if not field.get("description"):
                    missing.append(f"{where}.{name}")
            for key, child in node.items():
                walk(child, f"{where}/{key}")
        elif isinstance(node, list):
            for child in node:
                walk(child, where)

    walk(job_json_schema(), "")
    assert not missing, "fields without description= in finetune/job/schema.py: " + ", ".join(missing)


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_job_file_names_the_schema_and_passes_it(path, validator):
    text = path.read_text()
    assert text.splitlines()[0] == COMMENT
    assert (path.parent / COMMENT.partition("$schema=")[2]).resolve() == REPO / "finetune" / SCHEMA_FILE
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(yaml.safe_load(text))]
    assert not errors, errors


@pytest.mark.parametrize("job", [
    {"extends": "digits.yaml", "search": {"num_samples": 3}},  # a job that extends another may leave name to it
    {"name": "x", "search": {"scheduler": "none"}},
    {"name": "x", "search": {"scheduler": {"type": "hyperband", "brackets": 2}}},
    {"name": "x", "dataset": {"rescale": "1/255", "image_size": [8, 8], "channels": 1}},
    {"name": "x", "model": {"freeze": {"top_trainable": 2}}, "resources": {"max_concurrent_trials": "auto"}},
    {"name": "x", "search": {"space": {
        "train.epochs": 3, "model.head.units": {"choice": [[32], [64]]}, "train.learning_rate": {"loguniform": [1e-4, 1e-1]},
        "train.optimizer": {"grid": ["adam", "sgd"]}, "model.head.dropout": {"quniform": [0, 0.5, 0.1]},
        "train.optimizer_args.momentum": {"uniform": [0.5, 0.9], "when": {"train.optimizer": "sgd"}}}}},
])
def test_accepts_job_files_as_people_write_them(job, validator):
    assert not list(validator.iter_errors(job))


@pytest.mark.parametrize("job, where", [
    ({"train": {"epochs": 3}}, ""),  # neither name nor extends
    ({"name": "x", "trian": {}}, ""),  # a misspelled section
    ({"name": "x", "train": {"epochs": 0}}, "train.epochs"),
    ({"name": "x", "train": {"batch_size": "big"}}, "train.batch_size"),
    ({"name": "x", "search": {"scheduler": "ashaa"}}, "search.scheduler"),
    ({"name": "x", "search": {"scheduler": {"type": "asha", "brackets": 0}}}, "search.scheduler"),
    ({"name": "x", "search": {"mode": "maximum"}}, "search.mode"),
    ({"name": "x", "search": {"space": {"train.learning_rate": {"loguniform": [1e-4]}}}}, "search.space.train.learning_rate"),
    ({"name": "x", "search": {"space": {"train.optimizer": {"choice": []}}}}, "search.space.train.optimizer"),
    ({"name": "x", "search": {"space": {"dataset.source": {"choice": ["a"]}}}}, "search.space"),
    ({"name": "x", "dataset": {"rescale": "a/b"}}, "dataset.rescale"),
    ({"name": "x", "resources": {"max_concurrent_trials": 0}}, "resources.max_concurrent_trials"),
    ({"name": "bad name"}, "name"),
])
def test_rejects_broken_job_files(job, where, validator):
    errors = list(validator.iter_errors(job))
    assert errors
    assert any(".".join(map(str, e.absolute_path)).startswith(where) for e in errors), [e.message for e in errors]


def test_the_schema_is_package_data():
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert SCHEMA_FILE in pyproject["tool"]["setuptools"]["package-data"]["finetune"]
