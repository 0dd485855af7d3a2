"""`finetune nightly JOB`: one retraining a night, safe to run twice.

The run id comes from the night's date (UTC, or `--date` for a backfill) and the data's
fingerprint, so a second start on the same night with the same data finds its run and does
nothing; a night whose data is the champion's, or the newest version's, is skipped the same way.
`--force` runs anyway, under a run id of its own. The submission id for `ray job submit
--submission-id` comes from the job's name and the date alone (it is needed before the data is
read, on the machine that submits).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import date as Date
from datetime import datetime, timezone

from finetune import storage
from finetune.errors import RunFailedError, UserError
from finetune.registry.names import check_name
from finetune.registry.promotion import data_digest
from finetune.registry.references import registry_root
from finetune.registry.runs import SUMMARY_FILE
from finetune.registry.store import ModelStore

DATE_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Night:
    date: str  # YYYY-MM-DD
    force: bool = False

    def submission_id(self, job_name: str) -> str:
        return submission_id(job_name, self.date)

    def as_dict(self, job_name: str) -> dict:
        return {"date": self.date, "forced": self.force, "submission_id": self.submission_id(job_name)}


def night_date(text: str | None) -> str:
    """`--date YYYY-MM-DD` checked, or today's date in UTC."""
    if text is None:
        return datetime.now(timezone.utc).date().isoformat()
    try:
        if not DATE_PATTERN.fullmatch(text):
            raise ValueError
        return Date.fromisoformat(text).isoformat()
    except ValueError:
        raise UserError(f"--date: {text!r} is not a date; expected YYYY-MM-DD, such as 2026-11-24.") from None


def submission_id(job_name: str, date: str) -> str:
    return f"nightly-{check_name(job_name, 'name')}-{date}"


def run_id(date: str, digest: str, force: bool) -> str:
    """`20261124-nightly-<8 hex of the data digest>`; a forced run adds the time it started."""
    base = f"{date.replace('-', '')}-nightly-{digest[:8]}"
    return f"{base}-{time.strftime('%H%M%S', time.gmtime())}f" if force else base


def nightly_job(job):
    """A nightly job always registers and judges its model: `promote:` with its defaults when the
    job has none."""
    if job.promote is not None:
        return job
    from finetune.job.schema import PromoteSpec
    from finetune.job.validation import validate_job_dict

    return validate_job_dict({**job.model_dump(mode="json"), "promote": PromoteSpec().model_dump(mode="json")},
                             source=f"job {job.name!r} (finetune nightly adds promote: with its defaults)")


@dataclass(frozen=True)
class Plan:
    run_id: str | None  # None: nothing to do
    message: str


def plan(job, night: Night, fingerprint: dict) -> Plan:
    """Whether this night has anything to do, and under which run id. A night that already ran on
    this data and failed is a failure again (exit 1), so the scheduler keeps alerting."""
    digest = data_digest(fingerprint)
    chosen = run_id(night.date, digest, night.force)
    if night.force:
        return Plan(chosen, f"night {night.date}: --force, running as {chosen}")
    run_dir = storage.join(storage.absolute(job.storage_path), job.name, chosen)
    summary_path = storage.join(run_dir, SUMMARY_FILE)
    if storage.exists(summary_path):
        summary = storage.read_json(summary_path)
        if summary.get("status") == "failed":
            raise RunFailedError(f"night {night.date}: this night already ran on this data and failed ({summary_path}). "
                                 "Nothing was started. Fix the cause, then run it again with --force.", exit_code=1)
        return Plan(None, f"nothing to do: night {night.date} already ran on this data as {chosen} "
                          f"({summary_path}); use --force to run it again")
    if storage.exists(run_dir):
        return Plan(None, f"nothing to do: night {night.date} on this data was started earlier as {run_dir} and "
                          "has not finished (it is still running, or its driver was killed: continue it with "
                          f"`finetune resume {run_dir}`); use --force to start another run")
    store = ModelStore(registry_root(job))
    versions = store.versions(job.model_name)
    champion = store.alias(job.model_name, job.promote.alias if job.promote else "champion")
    judged = [(f"the champion {champion}", champion)] if champion else []
    if versions:
        judged.append((f"the newest version {versions[-1].version}", versions[-1].version))
    for label, version in judged:
        if store.version(job.model_name, version).meta.get("data_digest") == digest:
            return Plan(None, f"nothing to do: night {night.date}'s data (digest {digest[:8]}) is the data "
                              f"{label} of {job.model_name} was trained on; use --force to train on it again")
    return Plan(chosen, f"night {night.date}: new data (digest {digest[:8]}), running as {chosen}")


def claim_run_dir(job, run_id: str) -> str | None:
    """Create the night's run folder, or None when another process created it first. On a local or
    NFS folder the creation is exclusive (mkdir), so of two starts racing past `plan` one runs;
    object stores have no such thing (see finetune.registry.store)."""
    run_dir = storage.join(storage.absolute(job.storage_path), job.name, run_id)
    if not storage.is_local(run_dir):
        storage.make_dirs(run_dir)
        return run_dir
    return run_dir if storage.make_new_dir(run_dir) else None
