"""What `--resume` needs from a run whose driver was killed: Tune's experiment snapshot, whole.

Tune writes its snapshot (`experiment_state-*.json`, the searcher's `*-state-*.json`) in the
driver's local staging folder, then copies it to the run's storage in a background thread, in
place. A driver killed with SIGKILL can leave two kinds of damage behind, both seen in this
project's tests on Ray 2.60:

- a snapshot file cut short mid-copy (an empty searcher state: Tune then restores a trial with an
  empty config);
- a snapshot naming a trial checkpoint that no longer exists: Tune deletes a trial's older
  checkpoint as soon as a newer one registers (`CheckpointConfig(num_to_keep)`) and writes the
  snapshot a moment later ("Could not recover from checkpoint as it does not exist on storage
  anymore").

`SnapshotKeeper` keeps a second copy of each snapshot file, written whole (storage.write_bytes),
and `repair_snapshot` mends both kinds before `Tuner.restore` reads the folder.
"""

from __future__ import annotations

import json
import os
import pickle
import re

from ray.tune import Callback

from finetune import _compat, storage
from finetune.errors import StorageError

KEPT_FOLDER = "snapshot"  # inside the run's Tune folder
# experiment_state-<t>.json, basic-variant-state-<t>.json; with a searcher (TPE) search_gen_state-<t>.json
# and searcher-state-<t>.pkl (ray/tune/search/search_generator.py and searcher.py, CKPT_FILE_TMPL).
_SNAPSHOT_FILE = re.compile(r"(experiment_state|.+[-_]state)-.+\.(json|pkl)$")


class SnapshotKeeper(Callback):
    """After each controller step, copies Tune's snapshot files that changed from the driver's
    staging folder (where they are complete: Tune writes them there synchronously, before its
    step ends) to `<tune folder>/snapshot/`, each file whole."""

    def __init__(self, tune_dir: str):
        self.kept_dir = storage.join(tune_dir, KEPT_FOLDER)
        self.seen: dict[str, int] = {}

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if not trials:
            return
        staging = _compat.driver_staging_path(trials[0])
        if not os.path.isdir(staging):
            return
        for name in os.listdir(staging):
            path = os.path.join(staging, name)
            if not _SNAPSHOT_FILE.match(name) or not os.path.isfile(path):
                continue
            changed = os.stat(path).st_mtime_ns
            if self.seen.get(name) == changed:
                continue
            with open(path, "rb") as snapshot:
                try:
                    storage.write_bytes(storage.join(self.kept_dir, name), snapshot.read())
                except StorageError:
                    # Full or read-only storage: the copy kept before stays whole, and the trials'
                    # next checkpoints, refused too, stop the run (finetune.stopping).
                    continue
            self.seen[name] = changed


def repair_snapshot(tune_dir: str) -> list[str]:
    """Mend what a killed driver left in `tune_dir`, before Tune reads it. Returns what was mended."""
    return [*_restore_cut_files(tune_dir), *_restore_missing_checkpoints(tune_dir)]


def _restore_cut_files(tune_dir: str) -> list[str]:
    """A snapshot file that does not read whole is replaced by its kept copy."""
    kept_dir = storage.join(tune_dir, KEPT_FOLDER)
    restored = []
    for name in _snapshot_files(kept_dir):
        location = storage.join(tune_dir, name)
        if storage.exists(location) and _readable(name, storage.read_bytes(location)):
            continue
        storage.write_bytes(location, storage.read_bytes(storage.join(kept_dir, name)))
        restored.append(location)
    return restored


def _restore_missing_checkpoints(tune_dir: str) -> list[str]:
    """A checkpoint the snapshot names that no longer exists is replaced by a copy of the newest
    checkpoint its trial has. A checkpoint records its own epoch (train_loop.STATE_FILE), so the
    trial resumes from where it really was, under the name Tune expects."""
    snapshots = sorted(n for n in _snapshot_files(tune_dir) if n.startswith("experiment_state-"))
    if not snapshots:
        return []
    referenced = _compat.checkpoints_named_in_snapshot(storage.read_bytes(storage.join(tune_dir, snapshots[-1])))
    restored = []
    for trial_dir, checkpoint in sorted(referenced):
        trial_location = storage.join(tune_dir, trial_dir.decode())
        existing = [n for n in storage.list_dirs(trial_location) if n.startswith("checkpoint_")]
        whole = [n for n in existing if _whole_checkpoint(storage.join(trial_location, n))]
        if not whole or checkpoint.decode() in existing:
            continue
        missing = storage.join(trial_location, checkpoint.decode())
        storage.copy_tree(storage.join(trial_location, max(whole)), missing)
        restored.append(missing)
    return restored


def _whole_checkpoint(location: str) -> bool:
    """Whether a trial's checkpoint folder holds its state and a model archive that is not cut
    short: a full disk can leave a folder half-copied, which Tune never registered."""
    import io
    import zipfile

    from finetune.train_loop import MODEL_FILE, STATE_FILE

    try:
        json.loads(storage.read_bytes(storage.join(location, STATE_FILE)))
        return zipfile.is_zipfile(io.BytesIO(storage.read_bytes(storage.join(location, MODEL_FILE))))
    except (OSError, ValueError):
        return False


def _snapshot_files(location: str) -> list[str]:
    return [name for name in storage.list_files(location) if _SNAPSHOT_FILE.match(name)]


def _readable(name: str, data: bytes) -> bool:
    """Whether a snapshot file is whole: experiment states are JSON, searcher states pickles
    (despite their `.json` name)."""
    try:
        if name.startswith("experiment_state-"):
            json.loads(data)
        else:
            pickle.loads(data)
        return True
    except Exception:
        return False
