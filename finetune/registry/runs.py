"""Models of earlier runs, by name: `registry:NAME@latest` or `registry:NAME@<run id>`.

Runs are found where they were written, `<storage_path>/<NAME>/<run id>/`, and a run's model is
the best model its summary names. Each finished run's folder has a manifest of its model,
classes and job (SHA-256, signed with FINETUNE_SIGNING_KEY when it is set), checked before the
model is loaded, as a registry version's is.
"""

from __future__ import annotations

import json

from finetune import storage
from finetune.errors import UserError
from finetune.registry import integrity
from finetune.registry.names import LATEST, Reference

SUMMARY_FILE = "summary.json"
RUN_MANIFEST_FILES = ("model.keras", "classes.json", "job.yaml")


def write_run_manifest(run_dir: str, name: str) -> None:
    """The manifest of a run's model, classes and job, signed when FINETUNE_SIGNING_KEY is set."""
    files = {f: storage.read_bytes(storage.join(run_dir, f)) for f in RUN_MANIFEST_FILES
             if storage.exists(storage.join(run_dir, f))}
    about = {"name": name, "run_id": run_dir.rstrip("/").rpartition("/")[2].rpartition("\\")[2]}
    manifest = integrity.make_manifest(files, about, integrity.signing_key())
    storage.write_bytes(storage.join(run_dir, integrity.MANIFEST_FILE), json.dumps(manifest, indent=2).encode())


def run_dir_of(reference: Reference, storage_path: str) -> str:
    """The folder of the finished run a `@latest` or `@<run id>` reference names."""
    root = storage.join(storage.absolute(storage_path), reference.name)
    runs = completed_runs(root)
    if not runs:
        raise UserError(f"model.base: {reference}: no finished run of {reference.name!r} under {root} (storage_path "
                        f"{storage_path!r}). Run that job first, or name a .keras file.")
    if reference.ref == LATEST:
        run_id = runs[-1]
    elif reference.ref in runs:
        run_id = reference.ref
    else:
        raise UserError(f"model.base: {reference}: no finished run {reference.ref!r} of {reference.name!r}; "
                        f"runs: {', '.join(runs)}.")
    return storage.join(root, run_id)


def run_model_bytes(run_dir: str, require_signature: bool = False) -> bytes:
    """A finished run's model, checked against the run's manifest."""
    summary = storage.read_json(storage.join(run_dir, SUMMARY_FILE))
    if not summary.get("model_path"):
        raise UserError(f"model.base: run {run_dir} has no model (every trial failed).")
    where = f"run {run_dir}"
    manifest_path = storage.join(run_dir, integrity.MANIFEST_FILE)
    if not storage.exists(manifest_path):
        raise integrity.IntegrityError(f"{where}: no {integrity.MANIFEST_FILE}, so its model.keras cannot be "
                                       "checked before loading (a run of an older finetune). Run the job again, "
                                       "or name the file itself as model.base.")
    manifest = storage.read_json(manifest_path)
    integrity.check_signature(manifest, where, require_signature)
    data = storage.read_bytes(storage.join(run_dir, "model.keras"))
    integrity.check_file(manifest, "model.keras", data, f"{where} ({storage.join(run_dir, 'model.keras')})")
    return data


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
