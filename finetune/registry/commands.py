"""`finetune models list|show|history|promote|rollback|verify|export`: the registry by hand.

The registry is `--registry`, else FINETUNE_REGISTRY, else `runs/registry` of the working
directory (where a job with no storage_path keeps it). Nothing here imports TensorFlow: export
writes the verified, decrypted bytes without loading them.
"""

from __future__ import annotations

import json
import os
import sys

from finetune import storage
from finetune.errors import UserError
from finetune.registry.names import check_alias, check_name, parse_reference
from finetune.registry.promotion import JOB_FILE
from finetune.registry.references import DEFAULT_FOLDER, REGISTRY_VARIABLE
from finetune.registry.store import MODEL_FILE, ModelStore, who

DEFAULT_REGISTRY = os.path.join("runs", DEFAULT_FOLDER)


def open_store(location: str | None) -> ModelStore:
    location = location or os.environ.get(REGISTRY_VARIABLE) or DEFAULT_REGISTRY
    return ModelStore(location)


def list_models(store: ModelStore, name: str | None, out=None) -> int:
    out = out or sys.stdout
    names = [check_name(name, "NAME")] if name else store.names()
    if not names:
        print(f"no models in {store.root}", file=out)
        return 0
    for model in names:
        versions = store.versions(model)
        aliases = store.aliases(model)
        by_version: dict[str, list[str]] = {}
        for alias, version in aliases.items():
            by_version.setdefault(version, []).append(alias)
        print(f"{model}: {len(versions)} version(s) in {store.root}", file=out)
        for info in versions:
            held = info.meta.get("held_out_metrics") or info.meta.get("test_metrics") or {}
            shown = " ".join(f"{k} {v:.4f}" for k, v in list(held.items())[:3])
            tags = f" [{', '.join(sorted(by_version.get(info.version, [])))}]" if info.version in by_version else ""
            print(f"  {info.version}{tags}  {info.meta.get('created', '')[:19]}  run {info.meta.get('run_id')}  {shown}",
                  file=out)
    return 0


def show(store: ModelStore, text: str, out=None) -> int:
    out = out or sys.stdout
    reference = parse_reference(text, "NAME[@VERSION|ALIAS]")
    info = store.resolve(reference)
    aliases = sorted(a for a, v in store.aliases(reference.name).items() if v == info.version)
    manifest = store.manifest(info)
    shown = {**info.meta, "aliases": aliases, "path": info.path, "files": manifest.get("files"),
             "signed": "signature" in manifest, "encrypted": bool(manifest.get("about", {}).get("encrypted"))}
    print(json.dumps(shown, indent=2, default=str), file=out)
    return 0


def history(store: ModelStore, name: str, out=None) -> int:
    out = out or sys.stdout
    entries = store.history(check_name(name, "NAME"))
    if not entries:
        print(f"{name}: no alias changes in {store.root}", file=out)
    for entry in entries:
        print(f"{entry['time'][:19]}  {entry['user']}@{entry['host']}  {entry['action']} {entry['alias']}: "
              f"{entry['from'] or '-'} -> {entry['to'] or '-'}  ({entry['reason']})", file=out)
    return 0


def promote(store: ModelStore, name: str, version: str, alias: str, reason: str | None, out=None) -> int:
    out = out or sys.stdout
    check_alias(alias, "--alias")
    info = store.version(check_name(name, "NAME"), version)
    store.verify(info)
    entry = store.set_alias(name, alias, info.version, reason or "", metrics={"by_hand": True})
    print(f"{name}: {alias} {entry['from'] or '-'} -> {entry['to']} ({entry['reason']})", file=out)
    mirror_to_mlflow(store, name, alias, info.version, out)
    return 0


def rollback(store: ModelStore, name: str, alias: str, reason: str | None, out=None) -> int:
    out = out or sys.stdout
    reason = reason or f"rolled back by {who()['user']}"
    entry = store.rollback(check_name(name, "NAME"), reason, alias)
    print(f"{name}: {alias} rolled back {entry['from']} -> {entry['to']} ({entry['reason']})", file=out)
    mirror_to_mlflow(store, name, alias, entry["to"], out)
    return 0


def mirror_to_mlflow(store: ModelStore, name: str, alias: str, version: str, out) -> None:
    """When the version's job tracked to MLflow (`tracking.mlflow`, as the run mirrored the version
    and the gate's alias there), move MLflow's alias as well (finetune.tracking.mirror_alias)."""
    from finetune.job.safe_yaml import decode_utf8, load_yaml

    try:
        job = load_yaml(decode_utf8(store.read_file(store.version(name, version), JOB_FILE)))
    except UserError as error:  # an encrypted version without its key, say: ours moved, MLflow's not
        print(f"warning: MLflow's alias not checked: {error}", file=sys.stderr)
        return
    tracking = job.get("tracking") if isinstance(job, dict) else None  # as the run wrote it: a mapping
    uri = tracking.get("mlflow") if isinstance(tracking, dict) else None
    if uri:
        from finetune.tracking import mirror_alias

        line = mirror_alias(uri, name, alias, version)
        print(line, file=sys.stderr if line.startswith("warning:") else out)


def verify(store: ModelStore, text: str, require_signature: bool, out=None) -> int:
    """NAME: every version; NAME@REF: that one. Any failure raises (exit code 2)."""
    out = out or sys.stdout
    if "@" in text:
        infos = [store.resolve(parse_reference(text, "NAME[@VERSION|ALIAS]"))]
    else:
        infos = store.versions(check_name(text, "NAME"))
        if not infos:
            raise UserError(f"verify: {text} has no versions in {store.root}.")
    for info in infos:
        report = store.verify(info, require_signature)
        print(f"{info.name} {info.version}: ok ({len(report['files'])} files match the manifest; "
              f"{report['signature']}{', encrypted' if report['encrypted'] else ''})", file=out)
    return 0


def export(store: ModelStore, text: str, directory: str, require_signature: bool, out=None) -> int:
    """A verified, decrypted model.keras and its classes.json in DIR, for serving."""
    out = out or sys.stdout
    info = store.resolve(parse_reference(text, "NAME@VERSION|ALIAS"))
    store.verify(info, require_signature)
    model = store.read_file(info, MODEL_FILE, require_signature)
    classes = store.read_file(info, "classes.json", require_signature)
    os.makedirs(directory, exist_ok=True)
    # The decrypted model is readable by this user only, as the key that decrypted it is.
    storage.write_bytes(os.path.join(os.path.abspath(directory), MODEL_FILE), model, mode=0o600)
    storage.write_bytes(os.path.join(os.path.abspath(directory), "classes.json"), classes)
    print(f"exported {info.name} {info.version} to {os.path.abspath(directory)}: {MODEL_FILE}, classes.json", file=out)
    return 0
