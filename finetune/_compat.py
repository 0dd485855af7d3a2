"""Every private or internal corner of Ray, Ray Tune and Keras this runner touches, and every
process-wide setting it makes, in one place.

Each corner names the version it was checked against and the upstream code or issue that explains
it. `tests/test_compat.py` fails, naming this file, when the installed Ray or Keras differs from
`CHECKED_VERSIONS`: re-check each corner below before moving the pin.
"""

from __future__ import annotations

import json
import logging
import os
import re

# Ray exactly (its internals move between releases); Keras by minor version.
CHECKED_VERSIONS = {"ray": "2.60.0", "keras": "3.15"}


# --- process-wide settings, made once before Ray starts ------------------------------------------

# Read by Ray Tune in the driver process (documented at
# https://docs.ray.io/en/latest/tune/api/env.html unless noted).
DRIVER_ENVIRONMENT = {
    # Tune snapshots its state at every kept checkpoint and warns about it each epoch; the
    # snapshots are what `--resume` needs, the warnings are noise.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Tune's own status tables would interleave with our progress lines (RAY_AIR_NEW_OUTPUT=0 is the
    # classic reporter with verbose=0: silent), and a failed trial's traceback is kept in its
    # error.txt; the progress line and the summary give the reason.
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
    # Tune's TensorBoard, JSON and CSV loggers are added by default; the runner adds the JSON and
    # CSV ones itself (finetune.tuner.run_callbacks) and leaves out TensorBoard's.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # A trial that fails for good ends without raising and with no report of its metric
    # (finetune.failures); Tune's check that every result holds the metric would refuse its end
    # (ray/tune/execution/tune_controller.py, _validate_result_metrics, which counts the trial's
    # config as a reported value). Trials that train report the metric every epoch: the job
    # validates that it is one they report.
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Ctrl-C and SIGTERM stop a run through finetune.stopping, the same way for both; Tune's own
    # SIGINT handler would take SIGINT alone (ray/tune/tune.py, _setup_signal_catching).
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    # A trial's error is kept in its error.txt and reported by the runner; the futures Tune drops
    # when a run stops half-way would print that traceback again at exit, as "Unhandled error"
    # (ray/_private/worker.py, raise_errors, reads it each time).
    "RAY_IGNORE_UNHANDLED_ERRORS": "1",
}

# Every Ray worker process of the run (trials, Train controllers and workers, data tasks), through
# the job's runtime environment.
WORKER_ENVIRONMENT = {
    # TensorFlow's C++ start-up chatter.
    "TF_CPP_MIN_LOG_LEVEL": "2",
    # Ray Train v2's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (default
    # 2 s), and each ray.train.report waits for that poll: a 0.2 s epoch would take 2 s. Internal:
    # ray/train/v2/_internal/constants.py; TensorflowTrainer.fit() passes it from the trial's own
    # environment to the controller (ENV_VARS_TO_PROPAGATE).
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.05",
}


def configure_driver() -> None:
    """Set the driver's process-wide settings (a variable the user set keeps its value); call
    before Ray starts."""
    for name, value in DRIVER_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    logging.getLogger("ray.tune.tune").setLevel(logging.CRITICAL)  # "Trials did not complete: [...]"


def worker_runtime_env() -> dict:
    """The runtime environment a driver passes to `ray.init`: WORKER_ENVIRONMENT, less the
    variables the job's own runtime environment (`ray job submit --runtime-env`) already sets, which
    win. Ray merges the two per variable and refuses a variable set in both
    (ray/_private/worker.py, _merge_runtime_env). The job supervisor hands the job's runtime
    environment to the driver in RAY_JOB_CONFIG_JSON_ENV_VAR (internal:
    ray/_private/runtime_env/constants.py)."""
    submitted = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("runtime_env") or {}
    taken = set((submitted.get("env_vars") or {}))
    return {"env_vars": {k: v for k, v in WORKER_ENVIRONMENT.items() if k not in taken}}


# --- Ray core ------------------------------------------------------------------------------------


def local_ray_resources() -> dict[str, float]:
    """CPUs, GPUs and memory that `ray.init()` would give a local Ray on this machine, computed by
    the code Ray's node runs at start-up, without starting anything: ResourceAndLabelSpec.resolve
    (ray/_private/resource_and_label_spec.py). For the test that finetune.local_resources, which
    estimates the same without importing Ray, agrees with Ray."""
    from ray._private.resource_and_label_spec import ResourceAndLabelSpec

    spec = ResourceAndLabelSpec().resolve(is_head=True, node_ip_address="127.0.0.1")
    return {"CPU": float(spec.num_cpus), "GPU": float(spec.num_gpus), "memory": float(spec.memory),
            "object_store_memory": float(spec.object_store_memory)}


# --- Ray Tune ------------------------------------------------------------------------------------


def set_restored_callbacks(tuner, callbacks: list) -> None:
    """`Tuner.restore` brings back the callbacks pickled with the experiment, which hold the old
    driver's output stream; there is no public way to give a restored tuner new ones
    (ray-project/ray#41364)."""
    tuner._local_tuner._run_config.callbacks = callbacks


def driver_staging_path(trial) -> str:
    """The driver's local folder where Tune writes its experiment snapshot before copying it to
    storage (ray/tune/experiment/trial.py, `trial.storage`, a StorageContext)."""
    return trial.storage.experiment_driver_staging_path


def end_tune_run_gracefully() -> None:
    """Ask the running `Tuner.fit()` to end as it does on Ctrl-C: stop the trials, save the
    experiment state with the unfinished trials unfinished (so a restore resumes them), and return
    its results. Tune's run loop installs one handler for SIGINT and SIGUSR1 that sets its
    "interrupted" event, and installs it for SIGUSR1 even when TUNE_DISABLE_SIGINT_HANDLER is set
    (ray/tune/tune.py, _setup_signal_catching); it is called here directly, in the main thread,
    from a Tune callback (so the loop has installed it), rather than by raising the signal."""
    import signal

    handler = signal.getsignal(signal.SIGUSR1)
    if callable(handler):
        handler(signal.SIGUSR1, None)


def trial_statuses_in_snapshot(snapshot_text: bytes) -> dict[str, str]:
    """trial id -> status (PENDING, RUNNING, PAUSED, TERMINATED, ERROR) as an
    `experiment_state-*.json` records it: each trial's state is a JSON document of the trial's
    attributes (ray/tune/experiment/trial.py, `get_json_state`, `__getstate__`)."""
    snapshot = json.loads(snapshot_text)
    statuses = {}
    for trial in snapshot.get("trial_data", []):
        state = json.loads(trial[0])
        statuses[state["trial_id"]] = state["status"]
    return statuses


def checkpoints_named_in_snapshot(snapshot_text: bytes) -> set[tuple[bytes, bytes]]:
    """(trial folder, checkpoint folder) for every checkpoint an `experiment_state-*.json` names.
    Each trial's state is a JSON document holding its checkpoint manager pickled and hex-encoded,
    with every checkpoint's full path inside (ray/tune/execution/experiment_state.py,
    ray/tune/experiment/trial.py `get_json_state`)."""
    snapshot = json.loads(snapshot_text)
    named = set()
    for part in (part for trial in snapshot.get("trial_data", []) for part in trial):
        for blob in re.findall(r'"value": "([0-9a-f]+)"', part):
            named.update(re.findall(rb"([^/\x00-\x1f]+)/(checkpoint_\d{6})", bytes.fromhex(blob)))
    return named


def optuna_trial_of(searcher, trial_id: str):
    """The Optuna trial Ray's OptunaSearch asked for a Tune trial (ray/tune/search/optuna/
    optuna_search.py, `_ot_trials`); finetune.tpe tells it its outcome itself, since OptunaSearch
    tells a scheduler-stopped trial as COMPLETE."""
    return searcher._ot_trials[trial_id]


def optuna_study_of(searcher):
    return searcher._ot_study  # OptunaSearch._setup_study


def optuna_was_told(searcher, trial_id: str) -> bool:
    return trial_id in searcher._completed_trials  # OptunaSearch.on_trial_complete's record


def mark_optuna_told(searcher, trial_id: str) -> None:
    searcher._completed_trials.add(trial_id)


def saved_optuna_search(tune_dir: str):
    """(the Optuna study, {Tune trial id: its number in the study}) from the newest searcher state
    Tune saved in a run's Tune folder: OptunaSearch.save pickles its attributes whole into
    searcher-state-<session>.pkl (ray/tune/search/searcher.py, CKPT_FILE_TMPL). For tests and
    for looking into a TPE run; local folders only."""
    import pickle

    newest = max(n for n in os.listdir(tune_dir) if n.startswith("searcher-state-"))
    with open(os.path.join(tune_dir, newest), "rb") as saved:
        state = pickle.load(saved)
    return state["_ot_study"], {trial_id: trial.number for trial_id, trial in state["_ot_trials"].items()}


def max_pending_trials(search_alg) -> int:
    """How many trials Tune keeps pending for a search algorithm (ray/tune/execution/
    tune_controller.py, _get_max_pending_trials). Before ray-project/ray#63770 (in Ray 2.60) it was 1
    for every searcher but the basic generator, whatever its ConcurrencyLimiter allowed, and trials
    ran one at a time (workaround: TUNE_MAX_PENDING_TRIALS_PG). For the test that keeps it so."""
    from ray.tune.execution.tune_controller import _get_max_pending_trials

    return _get_max_pending_trials(search_alg)
def data_parallel_trainer():
    """Ray Train v2's `DataParallelTrainer`, which `TensorflowTrainer` is with Ray's TensorFlow
    backend config (ray/train/v2/tensorflow/tensorflow_trainer.py); we give it our own backend
    (finetune.train_backend). `ray.train.DataParallelTrainer` still names the v1 class in 2.60."""
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    return DataParallelTrainer


# --- Keras ---------------------------------------------------------------------------------------


# Keras imports two libraries for features a training worker never uses, both optional there
# (`except ImportError`): scikit-learn for its scikit-learn wrappers (keras/src/wrappers/fixes.py,
# sklearn_wrapper.py) and matplotlib.pyplot for keras.visualization (keras/src/visualization/
# plot_image_gallery.py). In a fresh process they are about 1.5 s of the 5.5 s of CPU that
# `import keras` costs on this project's machine (python -X importtime; docs/benchmarks.md).
KERAS_OPTIONAL_IMPORTS = ("sklearn", "matplotlib.pyplot")


def import_keras_for_training():
    """Keras, imported without its optional scikit-learn and matplotlib extras when this process
    has not imported them yet. Only for processes that train (Ray Train workers, in-trial
    trials); afterwards both import normally, but this process' keras.wrappers and
    keras.visualization stay without them."""
    import importlib
    import sys

    if "keras" in sys.modules or "tensorflow" in sys.modules:  # importing TensorFlow imports Keras
        return importlib.import_module("keras")
    blocked = [name for name in KERAS_OPTIONAL_IMPORTS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # `import name` raises ImportError (the import system's rule)
    try:
        import keras
    finally:
        for name in blocked:
            if sys.modules.get(name) is None:
                del sys.modules[name]
    return keras


def keras_optional_imports_kept_out() -> bool:
    """Whether this process' Keras was imported without scikit-learn and matplotlib.pyplot (for the
    test of import_keras_for_training: the modules that hold them are Keras' own)."""
    import keras.src.visualization.plot_image_gallery as gallery
    import keras.src.wrappers.fixes as fixes

    return fixes.sklearn is None and gallery.plt is None


def call_outputs(layer):
    """A nested model's output where the outer model calls it: its last inbound node. `.output` of
    a sub-model is its own graph's; Keras 3 has no public accessor for the call
    (keras/src/ops/node.py, Layer._inbound_nodes)."""
    outputs = layer._inbound_nodes[-1].outputs
    return outputs[0] if isinstance(outputs, (list, tuple)) else outputs


def has_call(layer) -> bool:
    return bool(layer._inbound_nodes)


def registered_keras_names() -> dict[str, dict]:
    """Keras' own registries of the names `keras.optimizers.get`, `keras.losses.get` and
    `keras.activations.get` accept (keras/src/*/__init__.py, ALL_OBJECTS_DICT), for the test that
    keeps finetune.keras_names in step with Keras."""
    from keras.src.activations import ALL_OBJECTS_DICT as activations
    from keras.src.losses import ALL_OBJECTS_DICT as losses
    from keras.src.optimizers import ALL_OBJECTS_DICT as optimizers

    return {"activations": activations, "losses": losses, "optimizers": optimizers}


def working_dir_packaging():
    """Ray's packaging of a job's `--working-dir` (ray/_private/runtime_env/packaging.py:
    create_package, GCS_STORAGE_MAX_SIZE), for the test that the checkout's upload fits."""
    from ray._private.runtime_env import packaging

    return packaging


def ray_up_config_util():
    """What `ray up` runs on a cluster config before it contacts a cloud
    (ray/autoscaler/_private/util.py: prepare_config, validate_config), for the test of
    cluster/ray-up-aws.yaml."""
    from ray.autoscaler._private import util

    return util


def asha_rungs(scheduler) -> list[list[float]]:
    """Each bracket's rung milestones of a built AsyncHyperBandScheduler, smallest first
    (ray/tune/schedulers/async_hyperband.py: `_brackets`, each a `_Bracket` whose `_rungs` are
    (milestone, recorded) pairs, largest first), for the test that finetune.plan's rungs are Ray's."""
    return [sorted(milestone for milestone, _ in bracket._rungs) for bracket in scheduler._brackets]


def send_worker_output_to(handler) -> None:
    """Hand what Ray workers print to `handler(batch)` instead of printing it on the driver's
    terminal. With `log_to_driver=True`, `ray.init` registers Ray's printer as the "ray_print_logs"
    handler of the driver's worker-output dispatcher (ray/_private/worker.py, connect;
    ray/_private/ray_logging/__init__.py, WorkerStandardStreamDispatcher); there is no public way
    to redirect it (https://docs.ray.io/en/latest/ray-observability/user-guides/configure-logging.html
    offers only log_to_driver on or off). A batch is a dict with ip, pid, is_err, lines,
    actor_name, task_name."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher

    global_worker_stdstream_dispatcher.remove_handler("ray_print_logs")
    global_worker_stdstream_dispatcher.remove_handler("finetune_run_log")
    global_worker_stdstream_dispatcher.add_handler("finetune_run_log", handler)
