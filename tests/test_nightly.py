"""`finetune nightly` over simulated nights on a real local Ray, with real Parquet files that change
from night to night, a signed and encrypted registry, and a pinned holdout:

- night 1: no champion yet; the fallback base trains and becomes the champion;
- the same night again: nothing to do, exit 0;
- night 2, worse data (labels shuffled): registered, not promoted, and the summary says why;
- night 3, better data: warm-started from the champion (its first-epoch loss far below a fresh
  model's on the same data), registered and promoted;
- night 4, data unchanged: skipped; `--force` runs it anyway; `--date` backfills an earlier night;
- rollback gives the champion back to the one before.

One Ray for the whole module (the CLI runs in this process, `finetune.cli.main`); tiny MLPs, few
epochs."""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import write_job

from finetune.cli import main
from finetune.registry.store import ModelStore

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SIGNING = "nightly-test-signing-key-0123456789abcdef"
AES = "a1" * 32
NAME = "digits-night"


@pytest.fixture(scope="module", autouse=True)
def keys():
    """The keys in the environment before Ray starts, so that its workers (which load the champion)
    have them, as pods have them from a Secret. Not in any job file."""
    saved = {k: os.environ.get(k) for k in ("FINETUNE_SIGNING_KEY", "FINETUNE_ENCRYPTION_KEY", "FINETUNE_REGISTRY")}
    os.environ.update(FINETUNE_SIGNING_KEY=SIGNING, FINETUNE_ENCRYPTION_KEY=AES)
    os.environ.pop("FINETUNE_REGISTRY", None)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    """Digits as Parquet: a fixed holdout, and the nights' data sets drawn from the other rows."""
    from finetune.data.embedded import digits_table

    folder = tmp_path_factory.mktemp("nightly")
    table = digits_table()
    order = np.random.default_rng(0).permutation(table.num_rows)
    pq.write_table(table.take(order[:400]), folder / "holdout.parquet")
    pool = table.take(order[400:])
    shuffled = pool.slice(0, 700)
    noisy = shuffled.set_column(shuffled.schema.get_field_index("label"), "label",
                                [np.random.default_rng(1).permutation(shuffled.column("label").to_numpy())])
    return {"folder": folder, "small": pool.slice(0, 400), "worse": noisy, "better": pool, "backfill": pool.slice(200, 600)}


def set_data(nights, which: str) -> None:
    pq.write_table(nights[which], nights["folder"] / "latest.parquet")


@pytest.fixture(scope="module")
def job(nights):
    folder = nights["folder"]
    return write_job(folder, f"""
name: {NAME}
seed: 0
storage_path: runs
registry: {{path: registry, encrypt: true, require_signature: true}}
dataset: {{source: latest.parquet, label: label, split: {{validation: 0.2, test: 0.2}}}}
model:
  base: registry:{NAME}@champion
  fallback_base: builtin:mlp
  keep_head: true
  base_units: [64]
  head: {{units: [32]}}
train: {{epochs: 4, batch_size: 32, learning_rate: 3.0e-3}}
search: {{num_samples: 1, scheduler: none}}
resources: {{num_workers: 1}}
promote: {{metric: test_accuracy, min_delta: 0.002, min_value: 0.6, max_class_drop: 0.5, holdout: holdout.parquet}}
""")


def cli(*argv: str) -> tuple[int, str]:
    """`finetune ARGS` in this process, its output kept (a StringIO, which Tune can pickle with the
    progress printer that writes to it)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    assert "Traceback" not in err.getvalue()
    return code, out.getvalue() + err.getvalue()


def nightly(job, *args) -> tuple[int, str]:
    return cli("nightly", str(job), *args)


def summary_of(printed: str) -> dict:
    line = [x for x in printed.splitlines() if x.startswith("summary: ")][-1]
    return json.load(open(line.removeprefix("summary: ")))


def first_epoch_loss(summary: dict) -> float:
    rows = pq.read_table(summary["metrics_path"]).to_pylist()
    return [r["loss"] for r in rows if r["epoch"] == 1][0]


def test_three_nights_a_rerun_a_force_a_backfill_and_a_rollback(ray_session, nights, job):
    folder = nights["folder"]
    store = ModelStore(str(folder / "registry"))

    # Night 1: no champion yet, so the fallback base; judged by min_value alone.
    set_data(nights, "small")
    code, printed = nightly(job, "--date", "2026-01-01")
    assert code == 0, printed
    assert f"submission id nightly-{NAME}-2026-01-01" in printed
    assert "has no champion yet" in printed and "fallback_base builtin:mlp" in printed
    first = summary_of(printed)
    promotion = first["promotion"]
    assert (promotion["version"], promotion["decision"], promotion["champion"]) == ("v1", "promoted", "v1")
    assert promotion["reason"].startswith("promoted v1 to champion: there is no champion yet")
    assert promotion["holdout"].endswith("holdout.parquet") and promotion["rows"] == 400
    assert set(promotion["challenger"]["per_class_recall"]) == {str(d) for d in range(10)}
    assert os.path.basename(first["run_dir"]).startswith("20260101-nightly-")
    assert first["night"] == {"date": "2026-01-01", "forced": False, "submission_id": f"nightly-{NAME}-2026-01-01"}

    # The same night again, same data: nothing to do.
    code, printed = nightly(job, "--date", "2026-01-01")
    assert code == 0 and "nothing to do: night 2026-01-01 already ran on this data" in printed
    assert [v.version for v in store.versions(NAME)] == ["v1"]

    # Night 2: worse data, warm-started from v1: registered, not promoted.
    set_data(nights, "worse")
    code, printed = nightly(job, "--date", "2026-01-02")
    assert code == 0, printed
    assert f"registry:{NAME}@champion is v1, verified" in printed
    worse = summary_of(printed)["promotion"]
    assert (worse["version"], worse["decision"], worse["promoted"], worse["champion"]) == ("v2", "kept", False, "v1")
    assert worse["reason"].startswith("kept champion v1; v2 is registered but not promoted")
    assert worse["champion_scores"]["version"] == "v1"
    assert worse["challenger"]["metrics"]["test_accuracy"] < worse["champion_scores"]["metrics"]["test_accuracy"]
    assert "below champion v1's" in worse["reason"]

    # Night 3: better data, warm-started from the champion: promoted.
    set_data(nights, "better")
    code, printed = nightly(job, "--date", "2026-01-03")
    assert code == 0, printed
    third = summary_of(printed)
    better = third["promotion"]
    assert (better["version"], better["decision"], better["champion"]) == ("v3", "promoted", "v3")
    assert better["reason"].startswith("promoted v3 to champion, replacing v1: test_accuracy")
    assert better["previous_champion"] == "v1" and store.alias(NAME) == "v3"
    # It trained from the champion's weights: the same job from a fresh model, on the same data.
    code, printed = cli("run", str(job), "--set", "model.base=builtin:mlp", "--set", "model.keep_head=false",
                        "--set", "model.fallback_base=null", "--set", "promote=null", "--set", "registry=null")
    assert code == 0, printed
    fresh = summary_of(printed)
    warm_loss, fresh_loss = first_epoch_loss(third), first_epoch_loss(fresh)
    assert warm_loss < 0.5 * fresh_loss, (warm_loss, fresh_loss)

    # Night 4, data unchanged since night 3: the champion's data, so skipped; --force runs it.
    code, printed = nightly(job, "--date", "2026-01-04")
    assert code == 0 and "is the data the champion v3" in printed and "nothing to do" in printed
    assert len(store.versions(NAME)) == 3
    code, printed = nightly(job, "--date", "2026-01-04", "--force")
    assert code == 0, printed
    forced = summary_of(printed)
    assert forced["promotion"]["version"] == "v4" and forced["night"]["forced"] is True
    assert os.path.basename(forced["run_dir"]).startswith("20260104-nightly-")

    # A backfill of an earlier night, on that night's data.
    set_data(nights, "backfill")
    code, printed = nightly(job, "--date", "2025-12-31")
    assert code == 0, printed
    backfill = summary_of(printed)
    assert os.path.basename(backfill["run_dir"]).startswith("20251231-nightly-")
    assert backfill["promotion"]["version"] == "v5" and backfill["night"]["date"] == "2025-12-31"

    # Every version is whole, signed and encrypted; the audit log has each promotion.
    assert [v.version for v in store.versions(NAME)] == ["v1", "v2", "v3", "v4", "v5"]
    code, printed = cli("models", "verify", NAME, "--require-signature", "--registry", str(folder / "registry"))
    assert code == 0 and printed.count("4 files match the manifest; signed, encrypted") == 5, printed
    champions = [s["promotion"]["version"] for s in (first, third, forced, backfill) if s["promotion"]["promoted"]]
    assert [e["to"] for e in store.history(NAME)] == champions
    assert store.version(NAME, "v3").meta["data_digest"] == store.version(NAME, "v4").meta["data_digest"]

    # Rollback: the champion before the current one.
    code, printed = cli("models", "rollback", NAME, "--reason", "test", "--registry", str(folder / "registry"))
    assert code == 0 and "rolled back" in printed
    assert store.alias(NAME) == champions[-2]

    # The keys are nowhere on disk.
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert SIGNING.encode() not in data and AES.encode() not in data, path
