"""Tampered, foreign and locked-away model files, refused as a user meets them: the CLI in its own
process (`finetune models verify|export`, `finetune run` with a registry base), exit code 2, one
message naming the file or the variable to set, no traceback, and no key anywhere it should not be.

These refusals come before Ray starts; the model files are real Keras files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, write_job

from finetune.registry.store import ModelStore

SIGNING = "s" * 20 + "igning-key-for-tests-0123456789"
OTHER_SIGNING = "o" * 20 + "ther-signing-key-for-tests-0123"
AES = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
OTHER_AES = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory) -> bytes:
    import keras

    inputs = keras.Input((64,), name="features")
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="output")(hidden))
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model.save(path)
    return path.read_bytes()


def clean_env(**keys) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FINETUNE_")}
    env.update(keys)
    return env


def register(root: Path, model_bytes: bytes, encrypt: bool = False, **keys):
    """A version written by the store with these keys in the environment, as a run would."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("FINETUNE_")}
    os.environ.update(keys)
    try:
        store = ModelStore(str(root))
        info = store.register("digits", {"model.keras": model_bytes, "classes.json": b'["0"]', "job.yaml": b"name: d\n"},
                              {"run_id": "r"}, encrypt=encrypt)
        store.set_alias("digits", "champion", info.version, "test")
        return info
    finally:
        for k in keys:
            os.environ.pop(k, None)
        os.environ.update(saved)


def finetune(*args, env: dict, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "finetune", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def refused(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
    return result.stderr


def no_key_anywhere(root: Path, result: subprocess.CompletedProcess, *keys: str) -> None:
    for key in keys:
        assert key not in result.stdout + result.stderr
        for path in root.rglob("*"):
            if path.is_file():
                assert key.encode() not in path.read_bytes(), path


def test_a_flipped_byte_is_refused_by_verify_export_and_a_run(tmp_path, model_bytes):
    root = tmp_path / "registry"
    register(root, model_bytes)
    env = clean_env()
    assert finetune("models", "verify", "digits", "--registry", str(root), env=env).returncode == 0
    model = root / "digits" / "versions" / "v1" / "model.keras"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))

    message = refused(finetune("models", "verify", "digits", "--registry", str(root), env=env),
                      "digits v1", str(model), "model.keras does not match its manifest")
    assert "changed or damaged" in message
    refused(finetune("models", "export", "digits@champion", str(tmp_path / "out"), "--registry", str(root), env=env),
            "model.keras does not match its manifest")
    assert not (tmp_path / "out" / "model.keras").exists()

    job = write_job(tmp_path, f"""
name: warm
storage_path: {tmp_path / 'runs'}
registry: {root}
model: {{base: 'registry:digits@champion', keep_head: true}}
""")
    refused(finetune("run", str(job), env=env), "model.keras does not match its manifest", str(model))
    assert not (tmp_path / "runs" / "warm").exists()


def test_a_wrong_signing_key_is_refused(tmp_path, model_bytes):
    root = tmp_path / "registry"
    register(root, model_bytes, FINETUNE_SIGNING_KEY=SIGNING)
    good = finetune("models", "verify", "digits@v1", "--registry", str(root), env=clean_env(FINETUNE_SIGNING_KEY=SIGNING))
    assert good.returncode == 0 and "signed" in good.stdout
    result = finetune("models", "verify", "digits@v1", "--registry", str(root),
                      env=clean_env(FINETUNE_SIGNING_KEY=OTHER_SIGNING))
    refused(result, "digits v1", "signature does not verify with FINETUNE_SIGNING_KEY")
    no_key_anywhere(root, result, SIGNING, OTHER_SIGNING)
    # A changed manifest (its digest of model.keras replaced) fails the signature, not only the digest.
    manifest = root / "digits" / "versions" / "v1" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"bytes"', '"bytes" ', 1).replace('"name": "digits"',
                                                                                      '"name": "digits2"', 1))
    refused(finetune("models", "verify", "digits", "--registry", str(root), env=clean_env(FINETUNE_SIGNING_KEY=SIGNING)),
            "signature does not verify")


def test_an_unsigned_version_is_refused_when_signatures_are_required(tmp_path, model_bytes):
    root = tmp_path / "registry"
    register(root, model_bytes)
    env = clean_env(FINETUNE_SIGNING_KEY=SIGNING)
    refused(finetune("models", "verify", "digits", "--require-signature", "--registry", str(root), env=env),
            "digits v1", "manifest is not signed", "require_signature")
    job = write_job(tmp_path, f"""
name: warm
storage_path: {tmp_path / 'runs'}
registry: {{path: {root}, require_signature: true}}
model: {{base: 'registry:digits@v1', cut_at: dense}}
""")
    refused(finetune("run", str(job), env=env), "digits v1", "manifest is not signed")
    # Without a key, a required signature cannot be checked: the variable to set is named.
    refused(finetune("run", str(job), env=clean_env()), "FINETUNE_SIGNING_KEY")


def test_encrypted_models_need_the_right_key(tmp_path, model_bytes):
    root = tmp_path / "registry"
    register(root, model_bytes, encrypt=True, FINETUNE_ENCRYPTION_KEY=AES)
    stored = root / "digits" / "versions" / "v1" / "model.keras.enc"
    assert stored.exists() and not (root / "digits" / "versions" / "v1" / "model.keras").exists()
    assert model_bytes[:64] not in stored.read_bytes()  # not the plain archive

    # Verifying the digests needs no key; reading the model does.
    assert finetune("models", "verify", "digits", "--registry", str(root), env=clean_env()).returncode == 0
    out = tmp_path / "out"
    refused(finetune("models", "export", "digits@champion", str(out), "--registry", str(root), env=clean_env()),
            "digits v1 is encrypted", "set FINETUNE_ENCRYPTION_KEY")
    wrong = finetune("models", "export", "digits@champion", str(out), "--registry", str(root),
                     env=clean_env(FINETUNE_ENCRYPTION_KEY=OTHER_AES))
    refused(wrong, "model.keras.enc", "cannot decrypt it with the key in FINETUNE_ENCRYPTION_KEY")
    refused(finetune("models", "export", "digits@champion", str(out), "--registry", str(root),
                     env=clean_env(FINETUNE_ENCRYPTION_KEY="not-a-key")), "FINETUNE_ENCRYPTION_KEY: expected 32 bytes")
    assert not (out / "model.keras").exists()
    no_key_anywhere(root, wrong, AES, OTHER_AES)

    key_file = tmp_path / "aes.key"
    key_file.write_text(AES + "\n")
    good = finetune("models", "export", "digits@champion", str(out), "--registry", str(root),
                    env=clean_env(FINETUNE_ENCRYPTION_KEY_FILE=str(key_file)))
    assert good.returncode == 0, good.stderr
    assert (out / "model.keras").read_bytes() == model_bytes
    assert (out / "classes.json").read_text() == '["0"]'
    assert oct((out / "model.keras").stat().st_mode & 0o777) == "0o600"
    import keras

    assert keras.models.load_model(out / "model.keras").output_shape == (None, 10)

    job = write_job(tmp_path, f"""
name: warm
storage_path: {tmp_path / 'runs'}
registry: {root}
model: {{base: 'registry:digits@champion', keep_head: true}}
""")
    refused(finetune("run", str(job), env=clean_env()), "set FINETUNE_ENCRYPTION_KEY")
    assert not (tmp_path / "runs" / "warm").exists()


def test_models_commands_as_a_user_types_them(tmp_path, model_bytes):
    """From another folder, with a relative --registry: list, show, promote, history, rollback."""
    root = tmp_path / "registry"
    register(root, model_bytes)
    ModelStore(str(root)).register("digits", {"model.keras": model_bytes, "classes.json": b"[]", "job.yaml": b""},
                                   {"run_id": "r2"})
    env = clean_env()
    listed = finetune("models", "list", "--registry", "registry", env=env, cwd=tmp_path)
    assert listed.returncode == 0 and "digits: 2 version(s)" in listed.stdout and "v1 [champion]" in listed.stdout
    shown = finetune("models", "show", "digits@v2", "--registry", "registry", env=env, cwd=tmp_path)
    assert shown.returncode == 0 and '"run_id": "r2"' in shown.stdout
    assert finetune("models", "promote", "digits", "v2", "--reason", "by hand", "--registry", "registry", env=env,
                    cwd=tmp_path).returncode == 0
    back = finetune("models", "rollback", "digits", "--registry", "registry", env=env, cwd=tmp_path)
    assert back.returncode == 0 and "rolled back v2 -> v1" in back.stdout
    history = finetune("models", "history", "digits", "--registry", "registry", env=env, cwd=tmp_path)
    assert [line.split("  ")[2] for line in history.stdout.splitlines()] == [
        "promote champion: - -> v1", "promote champion: v1 -> v2", "rollback champion: v2 -> v1"]
    refused(finetune("models", "promote", "digits", "v7", "--reason", "x", "--registry", "registry", env=env,
                     cwd=tmp_path), "no version 'v7'")
    refused(finetune("models", "show", "../etc@v1", "--registry", "registry", env=env, cwd=tmp_path),
            "not a usable name")
    refused(finetune("models", "promote", "digits", "v1", "--alias", "v2", "--reason", "x", "--registry", "registry",
                     env=env, cwd=tmp_path), "cannot be an alias")
