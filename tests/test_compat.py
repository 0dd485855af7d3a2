"""The private corners of Ray and Keras stay fenced in finetune/_compat.py, checked against the
installed versions."""

from __future__ import annotations

import re
from importlib.metadata import version

from conftest import REPO

from finetune import _compat

# What reaches into a library's private or internal parts.
PRIVATE = re.compile(r"keras\.src\b|ray\._private\b|\._internal\b|ray\.train\.v2\b|autoscaler\._private"
                     r"|\._local_tuner\b|\._run_config\b|_inbound_nodes\b|experiment_driver_staging_path"
                     r"|_ot_(trials|study)\b|_completed_trials\b|_get_max_pending_trials\b")


def test_installed_ray_and_keras_are_the_versions_the_private_corners_were_checked_against():
    checked = _compat.CHECKED_VERSIONS
    installed = {"ray": version("ray"), "keras": version("keras")}
    hint = ("finetune/_compat.py was checked against {checked}; the installed {name} is {installed}. Re-check "
            "each corner in finetune/_compat.py against it, then move CHECKED_VERSIONS.")
    assert installed["ray"] == checked["ray"], hint.format(checked=checked, name="ray", installed=installed["ray"])
    assert installed["keras"].split(".")[:2] == checked["keras"].split("."), hint.format(
        checked=checked, name="keras", installed=installed["keras"])


def test_no_module_but_compat_touches_a_private_corner():
    offenders = []
    for path in sorted([*(REPO / "finetune").rglob("*.py"), *(REPO / "tests").glob("*.py"), *(REPO / "bench").glob("*.py")]):
        if path.name in ("_compat.py", "test_compat.py"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if PRIVATE.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "private corners outside finetune/_compat.py:\n" + "\n".join(offenders)


def test_the_worker_environment_leaves_the_jobs_own_variables_alone(monkeypatch):
    """Under `ray job submit --runtime-env`, a variable the job sets wins; Ray would refuse the
    same variable from both (ray/_private/worker.py)."""
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert _compat.worker_runtime_env() == {"env_vars": _compat.WORKER_ENVIRONMENT}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR",
                       '{"runtime_env": {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "0"}, "working_dir": "x"}}')
    assert "TF_CPP_MIN_LOG_LEVEL" not in _compat.worker_runtime_env()["env_vars"]
    assert "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" in _compat.worker_runtime_env()["env_vars"]
