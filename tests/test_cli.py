"""The command line as a user runs it: `python -m finetune ...`, in its own process. Tests that
start a Ray are marked `ray`; the CLI's refusals of bad input start none."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, write_job



@pytest.mark.ray
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
    # Through a pipe: plain lines, no terminal control, and Ray's and the workers' noise (the token
    # warning, TensorFlow's start-up lines) in the run folder's ray.log instead.
    assert "\x1b[" not in result.stdout
    assert result.stderr == ""
    assert "Started a local Ray instance" in open(os.path.join(summary["run_dir"], "ray.log")).read()
    assert f"report: {summary['run_dir']}/report.html" in result.stdout


@pytest.mark.ray
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


def relative_project(tmp_path, epochs: int, space: str = "{}"):
    """A job folder with a relative model file and relative data, and another working directory."""
    from test_relative_paths import make_project

    folder, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    make_project(folder)
    write_job(folder, f"""
name: relative
dataset: {{source: data/digits.parquet}}
model: {{base: models/base.keras, cut_at: features, freeze: all, head: {{units: [32]}}}}
train: {{epochs: {epochs}, batch_size: 64, learning_rate: 1.0e-2}}
search: {{num_samples: 2, scheduler: none, space: {space}}}
""")
    elsewhere.mkdir()
    return folder, elsewhere


@pytest.mark.ray
def test_a_run_whose_trials_all_fail_on_a_user_error_exits_2_with_the_reason_once(tmp_path):
    # The job itself is sound (the pre-flight step passes); each trial's sampled layer is not.
    folder, elsewhere = relative_project(tmp_path, epochs=2, space="{model.cut_at: {choice: [nope]}}")
    result = subprocess.run([sys.executable, "-m", "finetune", "run", "../project/job.yaml", "-q"], cwd=elsewhere,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "started" not in result.stdout and "epoch" not in result.stdout  # -q: only the result
    assert "every trial failed, so there is no model" in result.stderr
    assert result.stderr.count("model.cut_at: no layer 'nope'") == 1  # two trials, one reason, said once
    assert "Fix the job or the files it names" in result.stderr and "Traceback" not in result.stderr
    summary = json.loads(next((elsewhere / "runs" / "relative").glob("*/summary.json")).read_text())
    assert summary["status"] == "failed" and summary["num_failed"] == 2 and summary["model_path"] is None
    report = (elsewhere / "runs" / "relative" / os.path.basename(summary["run_dir"]) / "report.html").read_text()
    assert "No trial produced a model" in report and "no layer &#x27;nope&#x27;" in report
    assert "No trial reported val_accuracy, so there are no learning curves." in report


@pytest.mark.slow
@pytest.mark.ray
def test_a_killed_run_resumes_from_a_third_directory_and_finds_the_same_files(tmp_path):
    """A driver killed with every process it started (as a pod is): `finetune resume RUN` from
    another directory reads the job's absolute paths and finishes the run."""
    import signal

    folder, elsewhere = relative_project(tmp_path, epochs=30)
    driver = subprocess.Popen([sys.executable, "-m", "finetune", "run", "../project/job.yaml", "--set",
                               "search.num_samples=1"], cwd=elsewhere, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    for line in driver.stdout:
        if "epoch 3/30" in line:
            break
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    run_dir = next((elsewhere / "runs" / "relative").iterdir())
    assert not (run_dir / "summary.json").exists()
    third = tmp_path / "third"
    third.mkdir()
    resumed = subprocess.run([sys.executable, "-m", "finetune", "resume", str(run_dir)], cwd=third,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["trials"][0]["epochs"] == 30
    epochs = pq.read_table(run_dir / "metrics.parquet").column("epoch").to_pylist()
    assert epochs == list(range(1, 31))
    assert not list(third.iterdir())  # nothing written where the resume ran


def run_cli(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "finetune", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_cli_validate_is_fast_and_starts_no_ray():
    code = ("import sys, time; t = time.time(); from finetune.cli import main; "
            "rc = main(['validate', 'jobs/digits.yaml']); "
            "print(rc, time.time() - t, 'ray' in sys.modules, 'tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    rc, seconds, ray_loaded, tf_loaded = result.stdout.split()[-4:]
    assert rc == "0" and float(seconds) < 1.0
    assert ray_loaded == "False" and tf_loaded == "False"


def test_cli_bad_job_exits_2_with_every_problem_and_no_traceback(tmp_path):
    bad = write_job(tmp_path, "name: x\ntrain: {epochs: 0, optimizer: adamm}\nfoo: 1\n")
    result = run_cli("validate", str(bad))
    assert result.returncode == 2
    assert "3 problems" in result.stderr and "train.epochs" in result.stderr and "foo" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_run_rejects_a_bad_job_before_starting_ray(tmp_path):
    bad = write_job(tmp_path, f"name: x\nstorage_path: {tmp_path / 'runs'}\ntrain: {{loss: nope}}\n")
    result = run_cli("run", str(bad))
    assert result.returncode == 2 and "train.loss" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_missing_model_file_is_refused_by_validate_and_run_before_ray_starts(tmp_path):
    from test_job_paths import project

    folder, elsewhere = project(tmp_path)
    (folder / "base.keras").unlink()
    job = os.path.relpath(folder / "job.yaml", elsewhere)
    for command in ("validate", "run"):
        result = run_cli(command, job, "--set", "search.space={}", cwd=elsewhere)
        assert result.returncode == 2, (command, result.stderr[-2000:])
        assert f"model.base: got '{folder / 'base.keras'}'; expected an existing file" in result.stderr
        assert "Traceback" not in result.stderr and "Ray" not in result.stderr
    assert not (folder / "out").exists() and not (elsewhere / "runs").exists()


def test_the_command_ends_as_python_would_without_native_teardown(tmp_path):
    """`end_process` (the pyarrow exit-abort workaround, apache/arrow#34314) keeps what a normal
    exit promises: the exit code, non-daemon threads finished, atexit handlers run, and piped
    output flushed, here into a file."""
    script = (
        "import atexit, sys, threading, time\n"
        "from finetune.cli import end_process\n"
        "atexit.register(lambda: print('atexit ran', end=''))\n"
        "threading.Thread(target=lambda: (time.sleep(0.5), print('thread done', end=' ')), daemon=False).start()\n"
        "print('buffered', end=' ')\n"
        "sys.stderr.write('to stderr')\n"
        "end_process(3)\n"
    )
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("w") as stdout, err.open("w") as stderr:
        code = subprocess.run([sys.executable, "-c", script], stdout=stdout, stderr=stderr, cwd=REPO).returncode
    assert code == 3
    assert out.read_text() == "buffered thread done atexit ran"
    assert err.read_text() == "to stderr"


def test_the_installed_command_and_python_m_share_the_exit_path():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["finetune"] == "finetune.cli:entry"
    assert "entry()" in (REPO / "finetune" / "__main__.py").read_text()
