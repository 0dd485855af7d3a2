"""A streaming run (`dataset.in_memory: false`) reads its files again every epoch. A file that
disappears or changes while it runs ends each trial with a message naming the file, on one worker
and on two Ray Train workers (where a worker left waiting for another inside a collective step
would hang), and the run exits 2 with the reason once."""

from __future__ import annotations

import io
import shutil

import pyarrow.parquet as pq
import pytest
from conftest import REPO, write_job

from finetune.errors import RunFailedError
from finetune.job import load_job
from finetune.runner import run_job

pytestmark = pytest.mark.ray


class ChangeFileOnce:
    """A Tune callback that, at the first result of epoch 1, removes or rewrites a file. Class
    attributes: Tune pickles its callbacks with the experiment."""

    done: list = []

    @classmethod
    def make(cls, path: str, how: str):
        from ray.tune import Callback

        cls.done.clear()

        class _Change(Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                if result["epoch"] == 1 and not cls.done:
                    cls.done.append(how)
                    if how == "remove":
                        shutil.move(path, path + ".moved")
                    else:  # the same columns, other rows: what a pipeline rewriting its output does
                        table = pq.read_table(path)
                        pq.write_table(table.slice(0, table.num_rows // 2), path)

        return _Change()


def streaming_job(tmp_path, workers: int):
    source = tmp_path / "digits.parquet"
    shutil.copy(REPO / "data" / "digits.parquet", source)
    resources = "{num_workers: 1}" if workers == 1 else "{num_workers: 2, cpus_per_worker: 0.5, max_failures: 1}"
    job = load_job(write_job(tmp_path, f"""
name: streaming
storage_path: {tmp_path / 'runs'}
dataset: {{source: {source}, in_memory: false}}
model: {{base: builtin:mlp, head: {{units: [16]}}}}
train: {{epochs: 6, batch_size: 64}}
search: {{num_samples: 1, scheduler: none}}
resources: {resources}
"""))
    return job, str(source)


@pytest.mark.slow
def test_a_streaming_file_that_is_rewritten_ends_the_trial_naming_it(ray_session, tmp_path):
    """(What each kind of change reads as, tested on files alone: tests/test_data_messages.py.)"""
    job, source = streaming_job(tmp_path, workers=1)
    with pytest.raises(RunFailedError) as caught:
        run_job(job, out=io.StringIO(), callbacks=[ChangeFileOnce.make(source, "rewrite")])
    message = str(caught.value)
    assert ChangeFileOnce.done == ["rewrite"]
    assert f"dataset.source: {source} changed (" in message and "while the run was reading it" in message, message
    assert "put the file back as it was, or start a new run" in message
    assert caught.value.exit_code == 2  # a user error: the trial was not retried


@pytest.mark.slow
def test_two_ray_train_workers_end_cleanly_when_their_file_disappears(ray_session, tmp_path):
    """Rank 0 finds the file gone before an epoch while rank 1 would wait for it in the epoch's
    first all-reduce: the run ends with the reason, it does not hang."""
    job, source = streaming_job(tmp_path, workers=2)
    with pytest.raises(RunFailedError) as caught:
        run_job(job, out=io.StringIO(), callbacks=[ChangeFileOnce.make(source, "remove")])
    assert f"dataset.source: {source} disappeared while the run was reading it" in str(caught.value)
    assert caught.value.exit_code == 2

