"""The command line as a user runs it: `python -m finetune run JOB`, in its own process."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
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


def test_bad_data_exits_2_with_one_message_and_leaves_nothing_behind(tmp_path):
    """Data too small for the workers: found by the driver before any trial, no traceback."""
    pq.write_table(pa.table({"x": np.arange(8.0), "label": ["a", "b"] * 4}), tmp_path / "t.parquet")
    job = write_job(tmp_path, f"""
name: small
storage_path: {tmp_path / 'runs'}
dataset: {{source: {tmp_path / 't.parquet'}, split: {{validation: 0.25, test: 0.25}}}}
model: {{base: builtin:mlp}}
resources: {{num_workers: 3, cpus_per_worker: 0.5}}
""")
    result = subprocess.run([sys.executable, "-m", "finetune", "run", str(job)], capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "dataset.split: the validation split has 2 rows, fewer than resources.num_workers (3)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()
