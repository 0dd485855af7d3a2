"""The model registry: numbered, immutable versions of each model with a champion, the gate that
decides promotions, and the checks that keep a tampered or foreign model file from being loaded.

- `names`: safe model names and aliases, and `registry:NAME@REF` references.
- `store`: versions, aliases, the audit log and the lock, on any pyarrow file system; the API
  other tools read (`ModelStore.versions`, `.aliases`, `.alias`, `.history`).
- `integrity`: SHA-256 manifests, HMAC-SHA256 signatures, AES-256-GCM encryption, keys.
- `runs`: models of earlier runs (`registry:NAME@latest`, `@<run id>`) and their manifests.
- `references`: which registry a job uses; pinning and loading a registry base.
- `gate`: the champion/challenger decision, on plain values.
- `promotion`: after a run, register its model, judge it against the champion, move the alias.
- `nightly`: `finetune nightly`: one run a night, from the date and the data.
- `commands`: `finetune models list|show|promote|rollback|verify|export`.
"""

from finetune.job.names import check_name, name_problem
from finetune.registry.names import Reference, check_alias, parse_reference
from finetune.registry.runs import SUMMARY_FILE, run_status
from finetune.registry.store import ModelStore, VersionInfo

__all__ = ["ModelStore", "Reference", "SUMMARY_FILE", "VersionInfo", "check_alias", "check_name", "name_problem",
           "parse_reference", "run_status"]
