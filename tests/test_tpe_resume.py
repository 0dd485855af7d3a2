"""A TPE run whose driver was killed resumes with its study: `finetune run --resume` in real
subprocesses joined to a real Ray head (so that the killed driver's Ray is not left behind)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from conftest import REPO, write_job

from finetune import _compat

pytestmark = pytest.mark.ray

JOB = """
name: tpe-resume
seed: 4
storage_path: {runs}
dataset: {{source: sklearn:iris}}
model: {{base: builtin:mlp, base_units: [16], head: {{units: []}}}}
train: {{epochs: 3, batch_size: 32}}
search:
  algorithm: tpe
  num_samples: 6
  startup_trials: 2
  scheduler: none
  space:
    train.learning_rate: {{loguniform: [1.0e-3, 1.0e-1]}}
    train.optimizer: {{choice: [adam, rmsprop]}}
resources: {{num_workers: 1, max_concurrent_trials: 1}}
"""


@pytest.mark.slow
def test_a_resumed_tpe_run_continues_its_study(ray_head, tmp_path):
    from optuna.trial import TrialState

    job_file = write_job(tmp_path, JOB.format(runs=tmp_path / "runs"))
    env = {**ray_head.env, "RAY_ADDRESS": ray_head.gcs_address}
    driver = subprocess.Popen([sys.executable, "-m", "finetune", "run", str(job_file)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    completed = 0
    for line in driver.stdout:
        completed += "completed after" in line
        if completed == 3:
            break
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert completed == 3, "fewer than three trials finished before the driver was killed"
    run_dir = next((tmp_path / "runs" / "tpe-resume").iterdir())
    assert not (run_dir / "summary.json").exists()

    resumed = subprocess.run([sys.executable, "-m", "finetune", "run", str(job_file), "--resume"], cwd=REPO,
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming {run_dir}" in resumed.stdout and "search: tpe with none" in resumed.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["num_trials"] == 6 and summary["num_completed"] == 6, summary["trials"]
    study, by_id = _compat.saved_optuna_search(str(run_dir / "tune"))
    # One study of six trials, each told once: the resumed driver asked the study it restored for
    # the trials it still had to run, rather than starting a new study from trial 0.
    assert [t.number for t in study.trials] == list(range(6))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert sorted(by_id) == sorted(t["trial_id"] for t in summary["trials"])
    for outcome in summary["trials"]:
        params = study.trials[by_id[outcome["trial_id"]]].params
        assert params["space/train.learning_rate"] == outcome["config"]["train.learning_rate"]
