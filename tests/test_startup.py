"""The start-up clock of a trial (finetune.startup) and what the processes that only steer a
Ray Train run import: the Tune trial and the Train controller never import TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from finetune.startup import PHASES, StartupClock, process_started_at


def test_a_process_start_comes_from_proc_and_precedes_now():
    started = process_started_at()  # this test process: started before the test, maybe long before
    assert started is not None and started <= time.time()
    before = time.time()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        child_started = process_started_at(child.pid)
        # /proc counts in clock ticks (1/100 s) from a boot time in whole seconds
        assert child_started is not None and started <= child_started and abs(child_started - before) < 2
    finally:
        child.kill()
        child.wait()
    assert process_started_at(2**22 + 12345) is None  # no such process


def test_marks_count_once_and_travel_as_a_dict():
    clock = StartupClock(trial_started_at=100.0, marks={"fit": 101.0})
    clock.mark("worker_process", 104.5)
    clock.mark("worker_process", 120.0)  # a restarted worker passes again: the first mark stays
    again = StartupClock(clock.trial_started_at, clock.marks)  # as it crosses into another process
    again.mark("loop", 106.25)
    assert again.relative() == {"startup.fit": 1.0, "startup.worker_process": 4.5, "startup.loop": 6.25}
    assert list(again.relative()) == [f"startup.{p}" for p in PHASES if p in again.marks]


def test_what_steers_a_ray_train_run_imports_no_tensorflow():
    """The trial builds the trainer with finetune.train_backend's backend config, and the Train
    controller unpickles it and the report callback: none of that may import TensorFlow (about 5 s
    of CPU per process, docs/benchmarks.md). Ray's own TensorflowConfig would."""
    code = ("import sys, json; import finetune.trial, finetune.train_backend, finetune.train_to_tune; "
            "from finetune.train_backend import MultiWorkerConfig; MultiWorkerConfig().backend_cls; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_the_backend_gives_every_worker_the_whole_cluster_and_its_own_index(monkeypatch):
    from finetune.train_backend import _set_tf_config

    monkeypatch.delenv("TF_CONFIG", raising=False)
    _set_tf_config(["10.0.0.1:4000", "10.0.0.2:4001"], 1)
    assert json.loads(os.environ["TF_CONFIG"]) == {
        "cluster": {"worker": ["10.0.0.1:4000", "10.0.0.2:4001"]}, "task": {"type": "worker", "index": 1}}


def test_a_training_process_imports_keras_without_its_optional_extras_which_still_import_after():
    """finetune._compat.import_keras_for_training: Keras imported with scikit-learn and
    matplotlib.pyplot kept out (Keras treats both as optional), and both importable afterwards."""
    code = ("import sys; from finetune import _compat; from finetune.train_loop import configure_tensorflow; "
            "configure_tensorflow(1); "
            "kept_out = _compat.keras_optional_imports_kept_out() and 'sklearn' not in sys.modules; "
            "import sklearn, matplotlib.pyplot; print(kept_out, hasattr(sys.modules['keras'], 'layers'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]
