"""After a run: register its best model as a new version, judge it against the champion on the same
held-out rows, and move the champion only when the gate says so.

Both models are measured in one Ray worker (`finetune.evaluation.judge_in_worker`); the driver
never imports TensorFlow. The champion's manifest, signature and decryption were checked before
the run started (`check_champion`), and are checked again where the worker loads it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from finetune import storage
from finetune.errors import UserError
from finetune.registry import gate
from finetune.registry.references import registry_root, require_signature
from finetune.registry.store import MODEL_FILE, ModelStore

CLASSES_FILE = "classes.json"
JOB_FILE = "job.yaml"


def rules_of(job) -> gate.Rules:
    promote = job.promote
    metric = promote.metric or "test_" + job.search.metric.removeprefix("val_")
    return gate.Rules(metric, promote.mode, promote.min_delta, promote.min_value, promote.max_class_drop)


def data_digest(fingerprint: dict) -> str:
    """One short, stable value for a run's data fingerprint: what the nightly compares."""
    import hashlib

    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()


def check_champion(job) -> None:
    """Before the run: the champion the gate will compare against loads clean (manifest, signature,
    decryption), so a tampered champion stops the night at once, with exit code 2."""
    if job.promote is None:
        return
    store = ModelStore(registry_root(job))
    version = store.alias(job.model_name, job.promote.alias)
    if version is not None:
        store.read_file(store.version(job.model_name, version), MODEL_FILE, require_signature(job))


def code_version() -> dict:
    """This package's version, and the git commit of its checkout when it runs from one."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = {"package": version("finetune")}
    except PackageNotFoundError:
        found = {"package": None}
    here = os.path.dirname(os.path.abspath(__file__))
    if shutil.which("git"):
        try:
            result = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
            if result.returncode == 0:
                found["git_commit"] = result.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return found


def register_and_judge(job, run_dir: str, summary: dict, data, holdout, night: dict | None, out) -> dict:
    """Register the run's model; with `promote:`, judge it and move the alias. Returns the
    summary's `promotion` section."""
    store = ModelStore(registry_root(job))
    name = job.model_name
    section: dict = {"registry": store.root, "name": name}
    measured = None
    champion = None
    if job.promote is not None:
        rows, label_map, where = (holdout[0], holdout[1], job.promote.holdout) if holdout else (data.test, None, "test split")
        champion = _champion(store, job)
        models = [{"file": storage.join(run_dir, MODEL_FILE)}]
        if champion is not None and champion["classes"] == data.classes:
            models.append({"base": f"registry:{name}@{champion['version']}"})
        from finetune import ray_cluster
        from finetune.evaluation import judge_in_worker

        measured = ray_cluster.run_in_worker(judge_in_worker, models, job.model_dump(mode="json"), rows,
                                             data.classes, label_map)
        section.update(holdout=where, rows=len(rows))

    files = {f: storage.read_bytes(storage.join(run_dir, f)) for f in (MODEL_FILE, CLASSES_FILE, JOB_FILE)}
    meta = {
        "run_id": os.path.basename(run_dir.rstrip("/")), "run_dir": run_dir, "job_name": job.name,
        "base": job.model.base, "best_config": summary["best_config"], "validation_metrics": summary["best_metrics"],
        "test_metrics": summary["test_metrics"], "held_out_metrics": measured[0]["metrics"] if measured else None,
        "classes": data.classes, "data_fingerprint": data.fingerprint, "data_digest": data_digest(data.fingerprint),
        "night": night, "code": code_version(),
    }
    info = store.register(name, files, meta, encrypt=bool(job.registry and job.registry.encrypt))
    section["version"] = info.version
    print(f"registered {name} {info.version} in {store.root}", file=out, flush=True)
    if job.promote is None:
        section.update(decision="registered", promoted=False, reason=f"registered {info.version}; the job has no "
                       "promote: section, so no alias moved.")
        return section

    alias = job.promote.alias
    challenger = gate.Scores(info.version, measured[0]["metrics"], measured[0]["recall"], data.classes)
    held = None
    if champion is not None:
        held = gate.Scores(champion["version"], measured[1]["metrics"] if len(measured) > 1 else {},
                           measured[1]["recall"] if len(measured) > 1 else None, champion["classes"])
    decision = gate.decide(rules_of(job), challenger, held, len(rows), alias)
    previous = champion["version"] if champion else None
    if decision.promote:
        try:
            store.set_alias(name, alias, info.version, decision.reason, metrics=_decisive(decision, challenger, held),
                            expected=previous)
        except UserError as error:  # another run moved the champion while this one was judged
            decision = gate.Decision(False, f"not promoted: {error}", decision.checks, decision.class_drops)
    section.update(
        alias=alias, metric=rules_of(job).metric, direction=rules_of(job).direction,
        decision="promoted" if decision.promote else "kept" if champion else "not promoted",
        promoted=decision.promote, reason=decision.reason, checks=decision.checks,
        previous_champion=previous, champion=info.version if decision.promote else previous,
        challenger={"version": info.version, "metrics": challenger.metrics, "per_class_recall": challenger.recall},
        champion_scores=None if held is None else {"version": held.version, "metrics": held.metrics,
                                                    "per_class_recall": held.recall},
        class_drops=decision.class_drops,
    )
    print(decision.reason, file=out, flush=True)
    return section


def _champion(store: ModelStore, job) -> dict | None:
    version = store.alias(job.model_name, job.promote.alias)
    if version is None:
        return None
    info = store.version(job.model_name, version)
    classes = json.loads(store.read_file(info, CLASSES_FILE, require_signature(job)))
    return {"version": version, "classes": classes}


def _decisive(decision: gate.Decision, challenger: gate.Scores, champion: gate.Scores | None) -> dict:
    """What the audit entry keeps: both models' values of every metric, and the checks."""
    return {"challenger": challenger.metrics, "champion": champion.metrics if champion else None,
            "checks": decision.checks}
