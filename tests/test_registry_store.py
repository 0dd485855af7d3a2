"""The registry's store on real files: names, versions, aliases, the audit log, rollback, and what
20 processes promoting at once leave behind. No Ray, no TensorFlow: the store handles bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from finetune.errors import UserError
from finetune.registry.names import check_alias, check_name, parse_reference
from finetune.registry.store import ModelStore


def register(store: ModelStore, name: str = "digits", tag: str = "a", **meta):
    files = {"model.keras": f"model bytes {tag}".encode(), "classes.json": b'["0", "1"]', "job.yaml": b"name: x\n"}
    return store.register(name, files, {"run_id": f"run-{tag}", **meta})


@pytest.mark.parametrize("bad", ["", "..", "a/b", "a\\b", "x..y", "a\nb", "tab\there", "-lead", ".hidden", "a" * 101,
                                 "caf\u00e9", 3])
def test_names_that_would_become_bad_paths_are_refused(bad):
    with pytest.raises(UserError, match="registry name: .* is not a usable name"):
        check_name(bad, "registry name")


def test_aliases_cannot_look_like_versions_or_runs():
    assert check_alias("staging", "--alias") == "staging"
    for bad in ("v3", "latest", "20261124-101500-ab12"):
        with pytest.raises(UserError, match="cannot be an alias"):
            check_alias(bad, "--alias")
    assert parse_reference("registry:digits@v3").kind == "version"
    assert parse_reference("registry:digits@champion").kind == "alias"
    assert parse_reference("registry:digits@latest").kind == "run"
    assert parse_reference("registry:digits@20261124-nightly-0123abcd").kind == "run"
    assert parse_reference("digits").ref == "champion"
    with pytest.raises(UserError, match="not a usable name"):
        parse_reference("registry:../etc@v1")


def test_versions_are_numbered_whole_and_described(tmp_path):
    store = ModelStore(str(tmp_path / "registry"))
    first, second = register(store, tag="a"), register(store, tag="b", note="second")
    assert [v.version for v in store.versions("digits")] == ["v1", "v2"]
    assert store.names() == ["digits"]
    assert second.meta["note"] == "second" and second.meta["run_id"] == "run-b"
    for key in ("created", "user", "host", "name", "version"):
        assert second.meta[key], key
    manifest = json.loads((tmp_path / "registry" / "digits" / "versions" / "v2" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.keras", "classes.json", "job.yaml", "version.json"}
    assert store.read_file(first, "model.keras") == b"model bytes a"
    assert store.verify(second)["signature"] == "unsigned"
    # Nothing is left under .staging once a version is in place.
    assert os.listdir(tmp_path / "registry" / "digits" / ".staging") == []


def test_a_half_written_version_is_not_listed_and_its_number_not_reused(tmp_path):
    """What a writer killed midway leaves on an object store: a version folder without its
    manifest (written last). Readers skip it; the next version takes the next number."""
    store = ModelStore(str(tmp_path / "registry"))
    register(store, tag="a")
    half = tmp_path / "registry" / "digits" / "versions" / "v2"
    half.mkdir()
    (half / "model.keras").write_bytes(b"half")
    assert [v.version for v in store.versions("digits")] == ["v1"]
    assert register(store, tag="c").version == "v3"
    with pytest.raises(UserError, match="no version 'v2'"):
        store.version("digits", "v2")


def test_aliases_history_and_rollback(tmp_path):
    store = ModelStore(str(tmp_path / "registry"))
    for tag in "abc":
        register(store, tag=tag)
    assert store.alias("digits") is None
    store.set_alias("digits", "champion", "v1", "first", metrics={"test_accuracy": 0.9})
    store.set_alias("digits", "champion", "v2", "better")
    store.set_alias("digits", "staging", "v3", "try it")
    store.set_alias("digits", "champion", "v3", "better again")
    assert store.aliases("digits") == {"champion": "v3", "staging": "v3"}

    assert store.rollback("digits", "v3 misbehaves")["to"] == "v2"
    assert store.rollback("digits", "v2 too")["to"] == "v1"
    with pytest.raises(UserError, match="no champion before the current one .only v1 has been champion"):
        store.rollback("digits", "again")
    history = store.history("digits")
    assert [(e["action"], e["alias"], e["from"], e["to"]) for e in history] == [
        ("promote", "champion", None, "v1"), ("promote", "champion", "v1", "v2"), ("promote", "staging", None, "v3"),
        ("promote", "champion", "v2", "v3"), ("rollback", "champion", "v3", "v2"), ("rollback", "champion", "v2", "v1")]
    assert history[0]["metrics"] == {"test_accuracy": 0.9} and history[0]["reason"] == "first"
    assert all(e["user"] and e["host"] and e["time"] for e in history)

    with pytest.raises(UserError, match="moved from v2 to v1"):
        store.set_alias("digits", "champion", "v3", "judged against v2", expected="v2")
    with pytest.raises(UserError, match="--reason"):
        store.set_alias("digits", "champion", "v3", "  ")
    with pytest.raises(UserError, match="no version 'v9'"):
        store.set_alias("digits", "champion", "v9", "nope")


PROMOTER = textwrap.dedent("""
    import sys
    from finetune.registry.store import ModelStore

    root, index, local = sys.argv[1], sys.argv[2], sys.argv[3] == "local"
    store = ModelStore(root)
    store.local = local  # False: the object-store path (claims, no lock), here on real local files
    files = {"model.keras": f"model {index}".encode(), "classes.json": b"[]", "job.yaml": b"name: x"}
    info = store.register("digits", files, {"run_id": f"run-{index}"})
    if local:
        store.set_alias("digits", "champion", info.version, f"process {index}", metrics={"process": int(index)})
    print(info.version)
""")


def run_promoters(root, count: int, mode: str) -> list[str]:
    processes = [subprocess.Popen([sys.executable, "-c", PROMOTER, str(root), str(i), mode],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(count)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-2000:]
    return [stdout.strip() for stdout, _ in outputs]


def test_20_processes_promoting_at_once_lose_nothing(tmp_path):
    """20 separate processes each register a version and make it champion at the same moment: every
    version is there once, with its own model, one champion is set, and the audit log holds all 20
    changes as one unbroken chain (each change starts from where the one before it left)."""
    root = tmp_path / "registry"
    given = run_promoters(root, 20, "local")
    store = ModelStore(str(root))
    versions = store.versions("digits")
    assert sorted(given) == sorted(f"v{i}" for i in range(1, 21))
    assert [v.version for v in versions] == [f"v{i}" for i in range(1, 21)]
    assert sorted(v.meta["run_id"] for v in versions) == sorted(f"run-{i}" for i in range(20))
    for info in versions:  # each version holds its own process's model, whole
        assert store.read_file(info, "model.keras") == f"model {info.meta['run_id'][4:]}".encode()
    history = store.history("digits")
    assert len(history) == 20 and [e["sequence"] for e in history] == list(range(1, 21))
    assert sorted(e["to"] for e in history) == sorted(given)
    assert history[0]["from"] is None
    assert all(later["from"] == earlier["to"] for earlier, later in zip(history, history[1:]))
    assert store.aliases("digits") == {"champion": history[-1]["to"]}


def test_20_processes_claim_distinct_numbers_without_a_lock(tmp_path):
    """The object-store path, which has no lock: write-once claims still give each of 20
    concurrent writers its own number (gaps allowed), and every version is whole."""
    root = tmp_path / "registry"
    given = run_promoters(root, 20, "claims")
    assert len(set(given)) == 20
    store = ModelStore(str(root))
    assert sorted(v.version for v in store.versions("digits")) == sorted(given)
    assert sorted(v.meta["run_id"] for v in store.versions("digits")) == sorted(f"run-{i}" for i in range(20))
