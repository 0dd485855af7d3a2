"""Jobs submitted to a real Ray head on loopback: `ray job submit` and `finetune submit`. The driver
joins the cluster through RAY_ADDRESS and starts no Ray of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.ray
RUNTIME_ENV = {"excludes": ["runs/", ".venv/", ".git/", ".pytest_cache/", "__pycache__/"],
               "env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}}


def summary_under(root: Path) -> dict:
    summaries = list(root.glob("*/*/summary.json"))
    assert len(summaries) == 1, summaries
    return json.loads(summaries[0].read_text())


def test_ray_job_submit_runs_the_job_on_the_cluster(ray_head, tmp_path):
    runs = tmp_path / "runs"
    command = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", ray_head.dashboard,
               "--working-dir", str(REPO), "--runtime-env-json", json.dumps(RUNTIME_ENV), "--",
               "python", "-m", "finetune", "run", "jobs/iris-csv.yaml", "--set", f"storage_path={runs}",
               "--set", "search.num_samples=2", "--set", "train.epochs=12"]
    result = subprocess.run(command, env=ray_head.env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stdout.lower()
    summary = summary_under(runs)
    assert summary["num_trials"] == 2 and summary["test_metrics"]["accuracy"] > 0.5
    # The driver joined the head (2 CPUs, set by ray start) instead of starting a Ray of its own.
    assert summary["cluster"]["started_here"] is False and summary["cluster"]["cpus"] == 2


@pytest.mark.slow
def test_finetune_submit_follows_the_logs_and_refuses_a_duplicate_id(ray_head, tmp_path):
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "finetune", "submit", "jobs/wine-arrow.yaml", "--address", ray_head.dashboard,
               "--runtime-env", "cluster/runtime_env.yaml", "--submission-id", "test-wine-1",
               "--set", f"storage_path={runs}", "--set", "search.num_samples=1", "--set", "train.epochs=10"]
    result = subprocess.run(command, cwd=REPO, env=ray_head.env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "submitted test-wine-1" in result.stdout and "trial 1/1 started" in result.stdout
    assert "test-wine-1: SUCCEEDED" in result.stdout
    assert summary_under(runs)["num_trials"] == 1
    again = subprocess.run(command, cwd=REPO, env=ray_head.env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--submission-id: test-wine-1 already exists" in again.stderr
    assert "Traceback" not in again.stderr


def test_plan_with_an_address_asks_that_cluster(ray_head):
    """The head was started with 2 CPUs; the plan reads them from it and leaves it running."""
    result = subprocess.run([sys.executable, "-m", "finetune", "plan", "jobs/digits.yaml", "--address",
                             ray_head.gcs_address, "--set", "resources.num_workers=1"], cwd=REPO, env=ray_head.env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"cluster: the cluster at {ray_head.gcs_address}: 2 CPUs, 0 GPUs" in result.stdout
    assert "trials at once: 2, bound by CPUs" in result.stdout
    assert result.stderr == "" and ray_head.process.poll() is None


@pytest.mark.slow
def test_finetune_submit_nightly_runs_one_night_and_a_second_submission_follows_it(ray_head, tmp_path):
    """`finetune submit --nightly`: the driver on the cluster runs `finetune nightly` under the
    night's submission id and registers the night's model; a second submission that night (a
    retried CronJob pod) starts nothing and follows the night's job to its end."""
    runs = tmp_path / "runs"
    command = [sys.executable, "-m", "finetune", "submit", "jobs/digits-nightly.yaml", "--nightly", "--date", "2026-01-01",
               "--address", ray_head.dashboard, "--runtime-env", "cluster/runtime_env.yaml",
               "--set", f"storage_path={runs}", "--set", "search.num_samples=1", "--set", "train.epochs=3",
               "--set", "promote.min_value=0.5"]
    result = subprocess.run(command, cwd=REPO, env=ray_head.env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "submitted nightly-digits-nightly-2026-01-01" in result.stdout
    assert "python -m finetune nightly jobs/digits-nightly.yaml --date 2026-01-01" in result.stdout
    assert "nightly-digits-nightly-2026-01-01: SUCCEEDED" in result.stdout
    summary = summary_under(runs)
    assert summary["night"]["date"] == "2026-01-01" and summary["cluster"]["started_here"] is False
    assert summary["promotion"]["version"] == "v1" and summary["promotion"]["decision"] == "promoted"
    again = subprocess.run(command, cwd=REPO, env=ray_head.env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "was already submitted" in again.stdout and "SUCCEEDED" in again.stdout
    assert len(list(runs.glob("digits-nightly/*/summary.json"))) == 1
