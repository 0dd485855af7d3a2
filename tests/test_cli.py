"""The command line as a user runs it: `python -m finetune run JOB`, in its own process."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, write_job

pytestmark = pytest.mark.ray


def test_python_m_finetune_run_prints_progress_and_writes_the_summary(tmp_path, tiny_job_text):
    job = write_job(tmp_path, tiny_job_text)
    result = subprocess.run([sys.executable, "-m", "finetune", "run", str(job), "--set", "train.epochs=2"],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trial 1/2 started" in result.stdout and "epoch 2/2" in result.stdout
    assert "best val_accuracy" in result.stdout  # the final table
    summary_path = result.stdout.strip().splitlines()[-1].removeprefix("summary: ")
    summary = json.load(open(summary_path))
    assert summary["num_trials"] == 2 and summary["model_path"].endswith("model.keras")
    assert "Traceback" not in result.stderr
