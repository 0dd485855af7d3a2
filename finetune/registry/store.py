"""The model registry's store: numbered, immutable versions of each model, aliases (`champion`,
`staging`...) and the audit log of every alias change, on any pyarrow file system.

    <registry>/<NAME>/versions/v3/   model.keras (model.keras.enc when encrypted), classes.json,
                                     job.yaml, version.json, manifest.json (SHA-256 of each, signed)
    <registry>/<NAME>/audit/         one JSON object per alias change, never rewritten
    <registry>/<NAME>/.lock          local and NFS folders: the lock every change takes
    <registry>/<NAME>/claims/        object stores: version numbers, claimed write-once

The aliases are what the audit log says: each alias change is one new entry, written once, and the
current aliases are the entries folded in order. So a change and its audit entry cannot part, and
no change is lost to another writer's read-modify-write.

What each kind of store guarantees:
- A local or NFS folder: every change (a new version's number, an alias change) happens under a
  real lock (`filelock`, fcntl locks, which NFS serves through its lock manager). A version is
  written under `.staging/` and renamed into `versions/` whole. Numbers are never given twice, and
  an alias change checks, under the lock, that the alias still points where its caller judged it.
- Object stores (s3://, gs://): there is no lock and no rename. A version's files are written to
  keys never written before, its manifest last; a version without its manifest is not listed.
  Its number is claimed with a write-once marker (`claims/v3-<token>`) that is listed back: a
  writer that sees another claim on the same number moves on to the next, so a number is never
  given twice (S3 and GCS list what was written, strongly consistent). Audit entries are
  write-once objects too, so none is lost; but two alias changes at the same moment both land and
  the later one wins: the check that the champion did not move meanwhile is not atomic there.
  Let one writer promote at a time (the nightly CronJob's `concurrencyPolicy: Forbid`).

Nothing here imports TensorFlow. The API for other tools (an MLflow mirror, a dashboard) is
`names`, `versions`, `version`, `aliases`, `alias`, `history`.
"""

from __future__ import annotations

import getpass
import json
import os
import random
import secrets
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

from finetune import storage
from finetune.errors import UserError
from finetune.registry import integrity
from finetune.registry.names import CHAMPION, VERSION_PATTERN, Reference, check_alias, check_name

MODEL_FILE = "model.keras"
VERSION_FILE = "version.json"
VERSIONS = "versions"
AUDIT = "audit"
CLAIMS = "claims"
STAGING = ".staging"
LOCK_FILE = ".lock"
LOCK_TIMEOUT_S = 300
CLAIM_ATTEMPTS = 50
KEEP = object()  # set_alias: no expectation about the alias's current version


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str  # "v3"
    path: str  # the version's folder
    meta: dict  # version.json

    @property
    def number(self) -> int:
        return int(self.version[1:])


def who() -> dict:
    """The user and host making a change, for the version's metadata and the audit log."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry
        user = str(os.getuid())
    return {"user": user, "host": socket.gethostname()}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class ModelStore:
    """One registry: a folder or URI holding models by name."""

    def __init__(self, root: str):
        self.root = storage.absolute(root)
        self.local = storage.is_local(self.root)

    def __repr__(self) -> str:
        return f"ModelStore({self.root!r})"

    # -- where things are --

    def model_dir(self, name: str) -> str:
        return storage.join(self.root, check_name(name, "registry name"))

    def _versions_dir(self, name: str) -> str:
        return storage.join(self.model_dir(name), VERSIONS)

    @contextmanager
    def _lock(self, name: str):
        """The model's lock on a local or NFS folder; nothing on an object store (see above)."""
        if not self.local:
            yield
            return
        from filelock import FileLock, Timeout

        folder = self.model_dir(name).removeprefix("file://")
        os.makedirs(folder, exist_ok=True)
        lock = FileLock(os.path.join(folder, LOCK_FILE), timeout=LOCK_TIMEOUT_S)
        try:
            with lock:
                yield
        except Timeout:
            raise UserError(f"registry: {folder} has been locked by another process for over {LOCK_TIMEOUT_S} s "
                            f"({os.path.join(folder, LOCK_FILE)}). If no finetune process is running, the lock is "
                            "stale only if its holder hangs; find and stop that process.") from None

    # -- reading --

    def names(self) -> list[str]:
        """The model names in this registry."""
        return [n for n in storage.list_dirs(self.root) if storage.exists(storage.join(self.root, n, VERSIONS))]

    def versions(self, name: str) -> list[VersionInfo]:
        """Every complete version of `name`, oldest first."""
        found = []
        for folder in storage.list_dirs(self._versions_dir(name)):
            if not VERSION_PATTERN.fullmatch(folder):
                continue
            path = storage.join(self._versions_dir(name), folder)
            if storage.exists(storage.join(path, integrity.MANIFEST_FILE)):  # written last: the version is whole
                found.append(VersionInfo(name, folder, path, storage.read_json(storage.join(path, VERSION_FILE))))
        return sorted(found, key=lambda v: v.number)

    def version(self, name: str, version: str) -> VersionInfo:
        path = storage.join(self._versions_dir(name), version)
        if not VERSION_PATTERN.fullmatch(version) or not storage.exists(storage.join(path, integrity.MANIFEST_FILE)):
            have = ", ".join(v.version for v in self.versions(name)) or "none"
            raise UserError(f"registry: {name} has no version {version!r} in {self.root} (versions: {have}).")
        return VersionInfo(name, version, path, storage.read_json(storage.join(path, VERSION_FILE)))

    def history(self, name: str) -> list[dict]:
        """Every alias change of `name`, oldest first: time, user, host, alias, from, to, action,
        reason and the metrics that decided it."""
        folder = storage.join(self.model_dir(name), AUDIT)
        return [storage.read_json(storage.join(folder, f)) for f in storage.list_files(folder) if f.endswith(".json")]

    def aliases(self, name: str) -> dict[str, str]:
        """alias -> version, as the audit log leaves them."""
        current: dict[str, str] = {}
        for entry in self.history(name):
            if entry.get("to"):
                current[entry["alias"]] = entry["to"]
            else:
                current.pop(entry["alias"], None)
        return current

    def alias(self, name: str, alias: str = CHAMPION) -> str | None:
        return self.aliases(name).get(alias)

    def resolve(self, reference: Reference) -> VersionInfo:
        """The version a `registry:NAME@v3` or `registry:NAME@<alias>` reference names."""
        if reference.kind == "version":
            return self.version(reference.name, reference.ref)
        version = self.alias(reference.name, reference.ref)
        if version is None:
            known = ", ".join(sorted(self.aliases(reference.name))) or "none"
            raise UserError(f"{reference}: {reference.name} has no {reference.ref} in the registry {self.root} "
                            f"(aliases: {known}). Promote a version first (`finetune models promote "
                            f"{reference.name} vN --alias {reference.ref} --reason ...`), or set model.fallback_base.")
        return self.version(reference.name, version)

    # -- verifying --

    def manifest(self, info: VersionInfo) -> dict:
        return storage.read_json(storage.join(info.path, integrity.MANIFEST_FILE))

    def verify(self, info: VersionInfo, require_signature: bool = False) -> dict:
        """Check the manifest's signature and every file against it. Returns what was checked."""
        where = f"registry {self.root}: {info.name} {info.version}"
        manifest = self.manifest(info)
        signature = integrity.check_signature(manifest, where, require_signature)
        for file_name in manifest.get("files", {}):
            location = storage.join(info.path, file_name)
            if not storage.exists(location):
                raise integrity.IntegrityError(f"{where}: {file_name} is missing; the version is incomplete. "
                                               "Restore it from a backup, or promote another version.")
            integrity.check_file(manifest, file_name, storage.read_bytes(location), f"{where} ({location})")
        return {"name": info.name, "version": info.version, "files": sorted(manifest.get("files", {})),
                "signature": signature, "encrypted": bool(manifest.get("about", {}).get("encrypted"))}

    def read_file(self, info: VersionInfo, file_name: str, require_signature: bool = False) -> bytes:
        """One file of a version, checked against the verified manifest, decrypted when the
        registry encrypted it. Nothing is written to disk."""
        where = f"registry {self.root}: {info.name} {info.version}"
        manifest = self.manifest(info)
        integrity.check_signature(manifest, where, require_signature)
        about = manifest.get("about", {})
        stored = file_name + integrity.ENCRYPTED_SUFFIX if file_name in about.get("encrypted_files", []) else file_name
        location = storage.join(info.path, stored)
        if not storage.exists(location):
            raise integrity.IntegrityError(f"{where}: {stored} is missing ({location}).")
        data = storage.read_bytes(location)
        integrity.check_file(manifest, stored, data, f"{where} ({location})")
        if stored == file_name:
            return data
        key = integrity.encryption_key(f"{where} is encrypted")
        return integrity.decrypt(data, key, _context(info.name, about["uid"], file_name), f"{where} ({location})")

    # -- writing --

    def register(self, name: str, files: dict[str, bytes], meta: dict, encrypt: bool = False) -> VersionInfo:
        """A new version holding `files` (the model, classes.json, job.yaml...) and `meta`, under
        the next number. With `encrypt`, the model file is stored encrypted (AES-256-GCM)."""
        check_name(name, "registry name")
        key = integrity.signing_key()
        uid = secrets.token_hex(8)
        stored: dict[str, bytes] = {}
        encrypted = []
        for file_name, data in files.items():
            if encrypt and file_name == MODEL_FILE:
                aes = integrity.encryption_key("registry.encrypt is on")
                stored[file_name + integrity.ENCRYPTED_SUFFIX] = integrity.encrypt(data, aes, _context(name, uid, file_name))
                encrypted.append(file_name)
            else:
                stored[file_name] = data

        def finish(version: str) -> dict[str, bytes]:
            info = {**meta, "name": name, "version": version, "created": now(), **who()}
            with_meta = {**stored, VERSION_FILE: json.dumps(info, indent=2, default=str).encode()}
            about = {"name": name, "version": version, "uid": uid, "encrypted": bool(encrypted),
                     "encrypted_files": encrypted}
            manifest = integrity.make_manifest(with_meta, about, key)
            return {**with_meta, integrity.MANIFEST_FILE: json.dumps(manifest, indent=2).encode()}

        if self.local:
            staging = storage.join(self.model_dir(name), STAGING, uid)
            for file_name, data in stored.items():
                storage.write_bytes(storage.join(staging, file_name), data)
            with self._lock(name):
                version = f"v{self._next_number(name)}"
                written = finish(version)
                for file_name in (VERSION_FILE, integrity.MANIFEST_FILE):
                    storage.write_bytes(storage.join(staging, file_name), written[file_name])
                storage.make_dirs(self._versions_dir(name))
                os.rename(staging.removeprefix("file://"),
                          storage.join(self._versions_dir(name), version).removeprefix("file://"))
        else:
            version = f"v{self._claim_number(name)}"
            written = finish(version)
            manifest = written.pop(integrity.MANIFEST_FILE)
            for file_name, data in written.items():
                storage.write_bytes(storage.join(self._versions_dir(name), version, file_name), data)
            storage.write_bytes(storage.join(self._versions_dir(name), version, integrity.MANIFEST_FILE), manifest)
        return self.version(name, version)

    def _taken_numbers(self, name: str) -> list[int]:
        folders = [f for f in storage.list_dirs(self._versions_dir(name)) if VERSION_PATTERN.fullmatch(f)]
        claims = [c.partition("-")[0] for c in storage.list_files(storage.join(self.model_dir(name), CLAIMS))]
        return [int(v[1:]) for v in folders + claims if VERSION_PATTERN.fullmatch(v)]

    def _next_number(self, name: str) -> int:
        return max(self._taken_numbers(name), default=0) + 1

    def _claim_number(self, name: str) -> int:
        """A version number no other writer holds, on a store without locks: write a claim no one
        else writes, list the claims of that number, and keep it only if ours is alone."""
        claims = storage.join(self.model_dir(name), CLAIMS)
        for _ in range(CLAIM_ATTEMPTS):
            number = self._next_number(name)
            mine = f"v{number}-{secrets.token_hex(8)}"
            storage.write_bytes(storage.join(claims, mine), json.dumps({"time": now(), **who()}).encode())
            if [c for c in storage.list_files(claims) if c.partition("-")[0] == f"v{number}"] == [mine]:
                return number
            time.sleep(random.uniform(0.05, 0.5))  # another writer claimed it too: both move on
        raise UserError(f"registry {self.root}: could not claim a version number of {name} in {CLAIM_ATTEMPTS} "
                        "attempts: too many writers at once. Run one promotion at a time.")

    def set_alias(self, name: str, alias: str, version: str | None, reason: str, metrics: dict | None = None,
                  expected=KEEP, action: str = "promote") -> dict:
        """Point `alias` at `version` (None removes it) and append the change to the audit log.

        expected: the version the caller judged the alias to be at (None: unset). If it moved
        meanwhile, nothing changes and a UserError says so (checked under the lock on local and
        NFS folders; see the module's notes for object stores)."""
        check_alias(alias, "--alias")
        if not reason or not reason.strip():
            raise UserError("--reason: say why the alias changes; it goes into the audit log.")
        with self._lock(name):
            if version is not None:
                self.version(name, version)
            history = self.history(name)
            current = self.aliases(name).get(alias)
            if expected is not KEEP and current != expected:
                raise UserError(f"registry: {name}'s {alias} moved from {expected or 'nothing'} to {current} while "
                                f"{version} was being judged; nothing changed. Judge {version} against {current} again.")
            entry = {"sequence": len(history) + 1, "time": now(), **who(), "name": name, "alias": alias,
                     "from": current, "to": version, "action": action, "reason": reason.strip(),
                     "metrics": metrics or {}}
            file_name = f"{entry['sequence']:08d}-{entry['time'].replace(':', '')}-{secrets.token_hex(4)}.json"
            storage.write_json(storage.join(self.model_dir(name), AUDIT, file_name), entry)
        return entry

    def champion_stack(self, name: str, alias: str = CHAMPION) -> list[str]:
        """The versions `alias` held, as a stack: a promotion pushes, a rollback pops."""
        stack: list[str] = []
        for entry in self.history(name):
            if entry["alias"] != alias:
                continue
            if entry["action"] == "rollback":
                stack = stack[:-1]
            elif entry.get("to") is None:
                stack = []
            elif not stack or stack[-1] != entry["to"]:
                stack.append(entry["to"])
        return stack

    def rollback(self, name: str, reason: str, alias: str = CHAMPION) -> dict:
        """Give `alias` back to the version that held it before the current one."""
        with self._lock(name):
            stack = self.champion_stack(name, alias)
            if len(stack) < 2:
                held = f"only {stack[0]} has been {alias}" if stack else f"no version has been {alias}"
                raise UserError(f"rollback: {name} has no {alias} before the current one ({held}). "
                                f"Promote a version instead: finetune models promote {name} vN --reason ...")
            current, previous = stack[-1], stack[-2]
            if self.alias(name, alias) != current:
                raise UserError(f"rollback: {name}'s {alias} is {self.alias(name, alias)}, not {current}; "
                                "the audit log and the alias disagree. Promote the version you want instead.")
        return self.set_alias(name, alias, previous, reason, expected=current, action="rollback")


def _context(name: str, uid: str, file_name: str) -> str:
    return f"finetune-registry/{name}/{uid}/{file_name}"
