"""The registry's job fields, nightly planning and nightly submission, without Ray: paths resolved
when the job loads, every problem at once, and what a night decides from its date and its data."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, write_job

from finetune.errors import JobError, RunFailedError, UserError
from finetune.job import load_job
from finetune.registry import nightly
from finetune.registry.promotion import data_digest
from finetune.registry.store import ModelStore
from finetune.submit import plan_submission


def test_registry_paths_start_from_the_job_file(tmp_path, monkeypatch):
    (tmp_path / "jobs").mkdir()
    job = load_job(write_job(tmp_path / "jobs", """
name: n
registry: ../models
model: {base: 'registry:n@champion', fallback_base: ../base.keras}
promote: {holdout: ../pinned.parquet}
"""))
    assert job.registry.path == str(tmp_path / "models")
    assert job.model.fallback_base == str(tmp_path / "base.keras")
    assert job.promote.holdout == str(tmp_path / "pinned.parquet")
    mapping = load_job(write_job(tmp_path / "jobs", "name: n\nregistry: {path: reg, encrypt: true}\n", "m.yaml"))
    assert (mapping.registry.path, mapping.registry.encrypt) == (str(tmp_path / "jobs" / "reg"), True)
    uri = load_job(write_job(tmp_path / "jobs", "name: n\nregistry: s3://bucket/models\n", "u.yaml"))
    assert uri.registry.path == "s3://bucket/models"
    monkeypatch.chdir(tmp_path)
    overridden = load_job(tmp_path / "jobs" / "m.yaml", ["registry.path=here"])
    assert overridden.registry.path == str(tmp_path / "here")


def test_registry_fields_report_every_problem_at_once(tmp_path):
    with pytest.raises(JobError) as raised:
        load_job(write_job(tmp_path, """
name: registry
dataset: {split: {validation: 0.2, test: 0.0}}
promote: {metric: test_auc, alias: 'a/b'}
"""))
    text = str(raised.value)
    assert "4 problems" in text
    assert "promote.metric: got 'test_auc'; expected one of: test_loss, test_accuracy" in text
    assert "promote.holdout: got None; expected held-out rows" in text
    assert "promote.alias: got 'a/b'; expected a name without '/'" in text
    assert "runs of a job named 'registry' would share <storage_path>/registry/" in text
    with pytest.raises(JobError, match="keep_head only with a model file or registry base"):
        load_job(write_job(tmp_path, "name: n\nmodel: {base: builtin:mlp, keep_head: true}\n"))
    with pytest.raises(JobError, match="fallback_base only with a registry: base"):
        load_job(write_job(tmp_path, "name: n\nmodel: {base: builtin:mlp, fallback_base: builtin:mlp}\n"))
    with pytest.raises(JobError, match="a base that needs no registry"):
        load_job(write_job(tmp_path, "name: n\nmodel: {base: 'registry:n@champion', fallback_base: 'registry:m@v1'}\n"))
    with pytest.raises(JobError, match="model.base: got 'registry:../x@v1'"):
        load_job(write_job(tmp_path, "name: n\nmodel: {base: 'registry:../x@v1'}\n"))


def test_nightly_dates_and_submission_ids():
    assert nightly.night_date("2026-02-28") == "2026-02-28"
    for bad in ("2026-02-30", "26-1-1", "yesterday"):
        with pytest.raises(UserError, match="--date: .* expected YYYY-MM-DD"):
            nightly.night_date(bad)
    assert len(nightly.night_date(None)) == 10
    assert nightly.submission_id("digits", "2026-01-02") == "nightly-digits-2026-01-02"
    assert nightly.run_id("2026-01-02", "abcdef0123", force=False) == "20260102-nightly-abcdef01"
    assert nightly.run_id("2026-01-02", "abcdef0123", force=True).startswith("20260102-nightly-abcdef01-")


def test_a_night_knows_when_it_has_nothing_to_do(tmp_path):
    job = load_job(write_job(tmp_path, f"name: n\nstorage_path: {tmp_path / 'runs'}\npromote: {{}}\n"))
    night, data = nightly.Night("2026-01-02"), {"rows": 10}
    first = nightly.plan(job, night, data)
    assert first.run_id == nightly.run_id("2026-01-02", data_digest(data), False)
    run_dir = tmp_path / "runs" / "n" / first.run_id
    assert nightly.claim_run_dir(job, first.run_id) == str(run_dir)  # exclusive: a second start gets None
    assert nightly.claim_run_dir(job, first.run_id) is None
    assert "was started earlier" in nightly.plan(job, night, data).message
    (run_dir / "summary.json").write_text(json.dumps({"status": "finished"}))
    again = nightly.plan(job, night, data)
    assert again.run_id is None and "already ran on this data" in again.message
    assert nightly.plan(job, nightly.Night("2026-01-02", force=True), data).run_id.endswith("f")
    (run_dir / "summary.json").write_text(json.dumps({"status": "failed"}))
    with pytest.raises(RunFailedError, match="already ran on this data and failed") as failed:
        nightly.plan(job, night, data)
    assert failed.value.exit_code == 1

    store = ModelStore(str(tmp_path / "runs" / "registry"))
    store.register("n", {"model.keras": b"m"}, {"data_digest": data_digest({"rows": 11})})
    store.set_alias("n", "champion", "v1", "first")
    skipped = nightly.plan(job, nightly.Night("2026-01-03"), {"rows": 11})
    assert skipped.run_id is None and "is the data the champion v1 of n was trained on" in skipped.message
    assert nightly.plan(job, nightly.Night("2026-01-03"), {"rows": 12}).run_id is not None


def test_nightly_submission_fixes_the_date_and_the_id(tmp_path):
    entrypoint, submission_id = plan_submission(str(REPO / "jobs" / "digits-nightly.yaml"), [], str(REPO),
                                                nightly=True, date="2026-01-05")
    assert entrypoint == "python -m finetune nightly jobs/digits-nightly.yaml --date 2026-01-05"
    assert submission_id == "nightly-digits-nightly-2026-01-05"
    forced, given = plan_submission(str(REPO / "jobs" / "digits-nightly.yaml"), ["train.epochs=2"], str(REPO),
                                    submission_id="mine", nightly=True, date="2026-01-05", force=True)
    assert forced.endswith("--date 2026-01-05 --force --set train.epochs=2") and given == "mine"
    with pytest.raises(UserError, match="--date and --force are for nightly jobs"):
        plan_submission(str(REPO / "jobs" / "digits.yaml"), [], str(REPO), date="2026-01-05")
