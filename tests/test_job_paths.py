"""Paths in a job file are resolved once, when the job loads: relative to the folder of the file that
names them, whatever the working directory; `--set` paths relative to the working directory."""

from __future__ import annotations

import os

import yaml
from conftest import write_job

from finetune.job import load_job, to_yaml


def project(tmp_path):
    """A job folder as a user makes one: the job, its model file and its data side by side."""
    folder = tmp_path / "project"
    (folder / "data").mkdir(parents=True)
    (folder / "base.keras").write_bytes(b"not read by these tests")
    write_job(folder, """
name: relative
storage_path: out/runs
dataset: {source: data/table.parquet}
model: {base: base.keras, cut_at: features, freeze: all}
search:
  space:
    model.base: {choice: [base.keras, ../other/base.keras, builtin:mlp]}
""")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return folder, elsewhere


def test_relative_paths_start_from_the_job_files_folder_whatever_the_working_directory(tmp_path, monkeypatch):
    folder, elsewhere = project(tmp_path)
    monkeypatch.chdir(elsewhere)
    job = load_job(os.path.relpath(folder / "job.yaml"))
    assert job.model.base == str(folder / "base.keras")
    assert job.dataset.source == str(folder / "data" / "table.parquet")
    assert job.storage_path == str(folder / "out" / "runs")
    assert job.search.space["model.base"] == {"choice": [str(folder / "base.keras"), str(tmp_path / "other" / "base.keras"),
                                                         "builtin:mlp"]}
    # What the run folder records (job.yaml) is the same absolute job, and reloads to itself.
    recorded = yaml.safe_load(to_yaml(job))
    assert recorded["model"]["base"] == str(folder / "base.keras")
    (elsewhere / "recorded.yaml").write_text(to_yaml(job))
    assert load_job(elsewhere / "recorded.yaml") == job


def test_extends_paths_start_from_the_file_that_names_them(tmp_path, monkeypatch):
    (tmp_path / "shared").mkdir()
    base = write_job(tmp_path / "shared", "name: base\ndataset: {source: data/x.csv}\nmodel: {base: models/m.keras}\n",
                     "base.yaml")
    child_dir = tmp_path / "team"
    child_dir.mkdir()
    child = write_job(child_dir, f"extends: {os.path.relpath(base, child_dir)}\nname: child\nstorage_path: runs\n")
    monkeypatch.chdir(tmp_path)
    job = load_job(child)
    assert job.dataset.source == str(tmp_path / "shared" / "data" / "x.csv")
    assert job.model.base == str(tmp_path / "shared" / "models" / "m.keras")
    assert job.storage_path == str(child_dir / "runs")


def test_set_paths_start_from_the_working_directory_and_storage_defaults_to_its_runs(tmp_path, monkeypatch):
    folder, elsewhere = project(tmp_path)
    monkeypatch.chdir(elsewhere)
    job = load_job(folder / "job.yaml", ["model.base=mine.keras", "dataset={source: d/*.csv}",
                                         "search.space.model.base={grid: [a.keras]}"])
    assert job.model.base == str(elsewhere / "mine.keras")
    assert job.dataset.source == str(elsewhere / "d" / "*.csv")
    assert job.search.space["model.base"] == {"grid": [str(elsewhere / "a.keras")]}
    unset = write_job(folder, "name: no-storage\n", "plain.yaml")
    assert load_job(unset).storage_path == str(elsewhere / "runs")


def test_names_and_uris_stay_as_written(tmp_path):
    job = load_job(write_job(tmp_path, """
name: names
storage_path: s3://bucket/runs
dataset: {source: sklearn:iris}
model: {base: keras:MobileNetV3Small, weights: imagenet}
"""))
    assert (job.storage_path, job.dataset.source, job.model.base, job.model.weights) == (
        "s3://bucket/runs", "sklearn:iris", "keras:MobileNetV3Small", "imagenet")
    other = load_job(write_job(tmp_path, "name: r\nmodel: {base: 'registry:digits@latest'}\n"
                                         "dataset: {source: 'file:///data/x.parquet'}\n", "r.yaml"))
    assert (other.model.base, other.dataset.source) == ("registry:digits@latest", "file:///data/x.parquet")
    weights = load_job(write_job(tmp_path, "name: w\nmodel: {base: keras:MobileNetV3Small, weights: w.weights.h5}\n",
                                 "w.yaml"))
    assert weights.model.weights == str(tmp_path / "w.weights.h5")
