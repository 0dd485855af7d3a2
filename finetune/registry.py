"""Models of earlier runs, by name: `registry:NAME@latest` or `registry:NAME@<run id>`.

Runs are found where they were written, `<storage_path>/<NAME>/<run id>/`, and a run's model is
the best model its summary names. Promotion (`@champion`) and version numbers (`@v3`) belong to the
model registry proper, which this is the first piece of.
"""

from __future__ import annotations

from finetune import storage
from finetune.errors import UserError

SUMMARY_FILE = "summary.json"


def resolve(base: str, storage_path: str) -> str:
    """The model file a registry reference names."""
    name, _, version = base.removeprefix("registry:").partition("@")
    root = storage.join(storage.absolute(storage_path), name)
    if version in ("champion",) or (version.startswith("v") and version[1:].isdigit()):
        raise UserError(f"model.base: {base}: promoted (@champion) and numbered (@v3) models need the model "
                        f"registry, which does not exist yet. Use registry:{name}@latest or "
                        f"registry:{name}@<run id> (a folder under {root}).")
    runs = completed_runs(root)
    if not runs:
        raise UserError(f"model.base: {base}: no finished run of {name!r} under {root} (storage_path "
                        f"{storage_path!r}). Run that job first, or name a .keras file.")
    if version == "latest":
        run_id = runs[-1]
    elif version in runs:
        run_id = version
    else:
        raise UserError(f"model.base: {base}: no finished run {version!r} of {name!r}; runs: {', '.join(runs)}.")
    summary = storage.read_json(storage.join(root, run_id, SUMMARY_FILE))
    if not summary.get("model_path"):
        raise UserError(f"model.base: {base}: run {run_id} has no model (every trial failed).")
    return summary["model_path"]


def completed_runs(root: str) -> list[str]:
    """Run ids under a job's folder whose search ended (finished, or failed with no model), oldest
    first (ids sort by start time); an interrupted run is not one of them until it is resumed."""
    return [run for run in storage.list_dirs(root) if run_status(storage.join(root, run)) in ("finished", "failed")]


def run_status(run_dir: str) -> str | None:
    """A run's status as its summary records it (finished, failed, interrupted), or None when it
    has no summary (it is running, or its driver was killed)."""
    location = storage.join(run_dir, SUMMARY_FILE)
    # A summary without a status predates interruptions: its run ended.
    return storage.read_json(location).get("status", "finished") if storage.exists(location) else None
