"""What makes a model file trustworthy before it is loaded: SHA-256 manifests, HMAC-SHA256
signatures of them, and AES-256-GCM encryption at rest.

Keras' `safe_mode` has been bypassed (CVE-2025-1550, fixed in Keras 3.9; CVE-2025-9906, fixed in
3.11), so a model file is checked here, byte for byte, before `keras.models.load_model` sees it.

Keys come from the environment only, never from a job file: `FINETUNE_SIGNING_KEY` (any string of
at least 32 characters) or `FINETUNE_SIGNING_KEY_FILE`; `FINETUNE_ENCRYPTION_KEY` (32 bytes as 64
hex digits or base64) or `FINETUNE_ENCRYPTION_KEY_FILE`. No message, file or log line holds a key
or anything derived from one but a signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets

from finetune.errors import UserError

MANIFEST_FILE = "manifest.json"
SIGNING_KEY = "FINETUNE_SIGNING_KEY"
ENCRYPTION_KEY = "FINETUNE_ENCRYPTION_KEY"
ENCRYPTED_SUFFIX = ".enc"
# An encrypted file: this magic, a 12-byte nonce, then AES-256-GCM ciphertext and its 16-byte tag.
MAGIC = b"FTAESGCM1"
NONCE_BYTES = 12
MIN_SIGNING_KEY_CHARS = 32
KEY_HINT = "python -c 'import secrets; print(secrets.token_hex(32))'"


class IntegrityError(UserError):
    """A model file that does not match its manifest, a signature that does not verify, or a key
    that is missing or wrong. Loading stops before Keras opens anything."""


# --- keys ------------------------------------------------------------------------------------------


def _secret(variable: str) -> tuple[str | None, str]:
    """The value of `variable`, or of the file `variable_FILE` names, and where it came from."""
    value = os.environ.get(variable)
    if value:
        return value.strip(), variable
    path = os.environ.get(f"{variable}_FILE")
    if not path:
        return None, variable
    try:
        with open(path) as handle:
            return handle.read().strip(), f"{variable}_FILE ({path})"
    except OSError as error:
        raise IntegrityError(f"{variable}_FILE: cannot read the key file {path}: {error.strerror}.") from None


def signing_key() -> bytes | None:
    """The HMAC key, or None when neither FINETUNE_SIGNING_KEY nor its _FILE is set."""
    value, source = _secret(SIGNING_KEY)
    if value is None:
        return None
    if len(value) < MIN_SIGNING_KEY_CHARS:
        raise IntegrityError(f"{source}: the signing key is shorter than {MIN_SIGNING_KEY_CHARS} characters; "
                             f"use a long random one, e.g. `{KEY_HINT}`.")
    return value.encode()


def encryption_key(why: str) -> bytes:
    """The AES-256 key; an IntegrityError saying which variable to set when there is none."""
    value, source = _secret(ENCRYPTION_KEY)
    if value is None:
        raise IntegrityError(f"{why}: set {ENCRYPTION_KEY} (32 bytes as 64 hex digits or base64, e.g. `{KEY_HINT}`) "
                             f"or {ENCRYPTION_KEY}_FILE (a file holding it) to the key the registry uses.")
    key = _decode_key(value)
    if key is None:
        raise IntegrityError(f"{source}: expected 32 bytes as 64 hex digits or as base64; the value set is neither "
                             f"(its length is {len(value)} characters). Make one with `{KEY_HINT}`.")
    return key


def _decode_key(text: str) -> bytes | None:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        try:
            key = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if "-" in text or "_" in text else None,
                                   validate=True)
        except (binascii.Error, ValueError):
            return None
    return key if len(key) == 32 else None


# --- manifests and signatures -----------------------------------------------------------------------


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_manifest(files: dict[str, bytes], about: dict, key: bytes | None) -> dict:
    """The SHA-256 and size of every file, what they are (`about`: name, version, encrypted...),
    and, with a key, an HMAC-SHA256 signature over all of it."""
    manifest = {"about": about, "files": {name: {"sha256": digest(data), "bytes": len(data)}
                                          for name, data in sorted(files.items())}}
    if key is not None:
        manifest["signature"] = {"algorithm": "HMAC-SHA256", "value": _sign(manifest, key)}
    return manifest


def _canonical(manifest: dict) -> bytes:
    unsigned = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":")).encode()


def _sign(manifest: dict, key: bytes) -> str:
    return hmac.new(key, _canonical(manifest), hashlib.sha256).hexdigest()


def check_signature(manifest: dict, where: str, require_signature: bool) -> str:
    """Verify the manifest's signature with FINETUNE_SIGNING_KEY. Returns how it stands:
    `signed` (verified), `unsigned` (accepted: no signature is required). Raises for a signature
    that does not verify, and under `require_signature` for an unsigned manifest or no key."""
    key = signing_key()
    signature = manifest.get("signature")
    if signature is None:
        if require_signature:
            raise IntegrityError(f"{where}: its manifest is not signed, and registry.require_signature is on. "
                                 f"It was written without {SIGNING_KEY}; re-register it with the key set, or "
                                 "turn require_signature off to accept unsigned versions.")
        return "unsigned"
    if key is None:
        if require_signature:
            raise IntegrityError(f"{where}: registry.require_signature is on but {SIGNING_KEY} is not set, so "
                                 f"the signature cannot be checked. Set {SIGNING_KEY} (or {SIGNING_KEY}_FILE) to "
                                 "the key it was signed with.")
        return "unsigned"
    if not isinstance(signature, dict) or not hmac.compare_digest(str(signature.get("value", "")),
                                                                   _sign(manifest, key)):
        raise IntegrityError(f"{where}: the manifest's signature does not verify with {SIGNING_KEY}: it was "
                             "signed with another key, or the manifest was changed after it was signed. "
                             "Do not load it; check the key, or restore the files from a backup.")
    return "signed"


def check_file(manifest: dict, file_name: str, data: bytes, where: str) -> None:
    """`data` is the file the manifest lists under `file_name`, byte for byte."""
    entry = manifest.get("files", {}).get(file_name)
    if entry is None:
        raise IntegrityError(f"{where}: {file_name} is not in its manifest, so it cannot be trusted. "
                             "Re-register the model.")
    found = digest(data)
    if not hmac.compare_digest(found, str(entry.get("sha256"))):
        raise IntegrityError(f"{where}: {file_name} does not match its manifest (SHA-256 {found[:16]}..., "
                             f"expected {str(entry.get('sha256'))[:16]}...): it was changed or damaged after it "
                             "was written. It is not loaded. Restore it from a backup, or promote another "
                             "version (`finetune models promote NAME vN --reason ...`).")


# --- encryption --------------------------------------------------------------------------------------


def encrypt(data: bytes, key: bytes, context: str) -> bytes:
    """AES-256-GCM with a fresh nonce; `context` (which model, which version, which file) is bound
    as associated data, so an encrypted file moved to another version does not decrypt."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = secrets.token_bytes(NONCE_BYTES)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, data, context.encode())


def decrypt(data: bytes, key: bytes, context: str, where: str) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not data.startswith(MAGIC):
        raise IntegrityError(f"{where}: not a file this registry encrypted (no {MAGIC.decode()} header).")
    nonce = data[len(MAGIC):len(MAGIC) + NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, data[len(MAGIC) + NONCE_BYTES:], context.encode())
    except InvalidTag:
        raise IntegrityError(f"{where}: cannot decrypt it with the key in {ENCRYPTION_KEY}: that is not the key it "
                             f"was encrypted with (or the file was changed). Set {ENCRYPTION_KEY} to the "
                             "registry's key.") from None
