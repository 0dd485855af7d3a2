"""A trial's failure marker: why a trial failed for good, in `<run>/trials/<trial id>/failure.json`.

A failure that would only repeat (a user error, a loss that became NaN) is recorded here and the
trial ends without raising, so Tune does not retry it; Tune retries only what raises (a killed
process, a lost node). The driver reads the markers for the progress lines, the summary and the
exit code.
"""

from __future__ import annotations

from finetune import storage

FAILURE_FILE = "failure.json"
# What caused it:
USER_ERROR = "user_error"  # bad input that only a change to the job or its files fixes
NON_FINITE = "non_finite_loss"  # the loss became NaN or infinite


def record_failure(trial_dir: str, reason: str, kind: str, **details) -> None:
    """Mark a trial failed for good. Any worker of the trial may write it; each writes the same."""
    storage.write_json(storage.join(trial_dir, FAILURE_FILE), {"reason": reason, "kind": kind, **details})


def read_failure(trial_dir: str) -> dict | None:
    marker = storage.join(trial_dir, FAILURE_FILE)
    return storage.read_json(marker) if storage.exists(marker) else None


def trial_failures(run_dir: str) -> dict[str, dict]:
    """trial id -> its failure marker, for the trials of a run that failed for good."""
    trials = storage.join(run_dir, "trials")
    found = {trial_id: read_failure(storage.join(trials, trial_id)) for trial_id in storage.list_dirs(trials)}
    return {trial_id: marker for trial_id, marker in found.items() if marker is not None}
