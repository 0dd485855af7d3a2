"""`registry:NAME@REF` as a model base: which registry, which version, and the verified bytes.

Before a run starts, the driver pins a job's registry base (`registry:NAME@champion` becomes
`registry:NAME@v3`, `@latest` becomes `@<run id>`), so every trial of the run, and a resumed run,
trains from the same model even if the champion moves meanwhile; with no champion yet it takes
`model.fallback_base`. It checks that version's manifest, signature and decryption then, before
Ray starts, and every load in a worker checks them again on the bytes it loads.
"""

from __future__ import annotations

import os

from finetune import storage
from finetune.errors import UserError
from finetune.registry.names import Reference, parse_reference
from finetune.registry.runs import run_dir_of, run_model_bytes
from finetune.registry.store import MODEL_FILE, ModelStore

REGISTRY_VARIABLE = "FINETUNE_REGISTRY"
DEFAULT_FOLDER = "registry"  # under storage_path


def registry_root(job) -> str:
    """The job's `registry.path`, else FINETUNE_REGISTRY, else `<storage_path>/registry`."""
    if job.registry is not None and job.registry.path:
        return storage.absolute(job.registry.path)
    if os.environ.get(REGISTRY_VARIABLE):
        return storage.absolute(os.environ[REGISTRY_VARIABLE])
    return storage.join(storage.absolute(job.storage_path), DEFAULT_FOLDER)


def require_signature(job) -> bool:
    return bool(job.registry is not None and job.registry.require_signature)


def settle_registry(job):
    """The job with its registry's location written in (registering jobs only), so that the run
    folder's job.yaml, trials and a resumed run use the registry the driver chose."""
    if not job.registers:
        return job
    from finetune.job.schema import RegistrySpec

    spec = job.registry or RegistrySpec()
    return job.model_copy(update={"registry": spec.model_copy(update={"path": registry_root(job)})})


def pin_base(job) -> tuple[object, str | None]:
    """The job with its registry base pinned to one version or run, checked; and a line saying
    what was pinned (None for bases that are not registry references)."""
    if not job.model.base.startswith("registry:"):
        return job, None
    reference = parse_reference(job.model.base)
    if reference.kind == "run":
        run_dir = run_dir_of(reference, job.storage_path)
        run_model_bytes(run_dir, require_signature(job))
        pinned = Reference(reference.name, run_dir.rstrip("/").rpartition("/")[2].rpartition(os.sep)[2])
        return _with_base(job, str(pinned)), f"model.base: {reference} is run {pinned.ref}, verified"
    store = ModelStore(registry_root(job))
    if reference.kind == "alias" and store.alias(reference.name, reference.ref) is None:
        fallback = job.model.fallback_base
        if fallback is None:
            store.resolve(reference)  # raises: no such alias, and how to fix it
        model = job.model.model_copy(update={"base": fallback, "fallback_base": None, "keep_head": False,
                                             "cut_at": None if not fallback.endswith(".keras") else job.model.cut_at})
        return (job.model_copy(update={"model": model}),
                f"model.base: {reference.name} has no {reference.ref} yet in {store.root}; starting from "
                f"model.fallback_base {fallback}")
    info = store.resolve(reference)
    store.read_file(info, MODEL_FILE, require_signature(job))  # manifest, signature, decryption: all before Ray
    pinned = Reference(reference.name, info.version)
    return _with_base(job, str(pinned)), f"model.base: {reference} is {info.version}, verified"


def _with_base(job, base: str):
    return job.model_copy(update={"model": job.model.model_copy(update={"base": base})})


def model_bytes(base: str, job) -> bytes:
    """The model a registry base names, verified (and decrypted) in memory."""
    reference = parse_reference(base)
    if reference.kind == "run":
        return run_model_bytes(run_dir_of(reference, job.storage_path), require_signature(job))
    store = ModelStore(registry_root(job))
    return store.read_file(store.resolve(reference), MODEL_FILE, require_signature(job))


def check_can_register(job) -> None:
    """What registering the run's model will need, checked before anything starts: the keys the
    registry's settings ask for."""
    if not job.registers:
        return
    from finetune.registry import integrity

    integrity.signing_key()  # a key that is set must be usable
    if job.registry is not None and job.registry.encrypt:
        integrity.encryption_key("registry.encrypt is on")
    if require_signature(job) and integrity.signing_key() is None:
        raise UserError(f"registry.require_signature: is on, but {integrity.SIGNING_KEY} is not set, so the new "
                        f"version could not be signed. Set {integrity.SIGNING_KEY} (or {integrity.SIGNING_KEY}_FILE).")
