"""The embedded fine-tuning example, end to end on a real local Ray: a model pretrained on digits
0-4, fine-tuned in two phases on few rows of digits 5-9, beats the same architecture trained from
scratch for the same epochs, on the test split."""

import io

import pytest
from conftest import JOBS

from finetune.job import load_job
from finetune.runner import run_job

pytestmark = pytest.mark.ray


@pytest.mark.slow
def test_fine_tuned_beats_scratch_at_equal_epochs(ray_session, tmp_path):
    storage = f"storage_path={tmp_path / 'runs'}"
    pretrain = run_job(load_job(JOBS / "digits-pretrain.yaml", [storage]), out=io.StringIO())
    assert pretrain["test_metrics"]["accuracy"] > 0.9
    one: list[str] = []  # the job as shipped: three trial seeds, the best by validation is tested
    fine_tuned = run_job(load_job(JOBS / "digits-finetune.yaml", [storage, *one]), out=io.StringIO())
    scratch = run_job(load_job(JOBS / "digits-finetune.yaml", [
        storage, *one, "model.base=builtin:small_cnn", "model.cut_at=null", "model.freeze=none",
        "train.fine_tune=null", "train.learning_rate=3.0e-3"]), out=io.StringIO())
    assert fine_tuned["classes"] == scratch["classes"] == ["5", "6", "7", "8", "9"]
    assert fine_tuned["best_metrics"]["phase"] == 2
    print("fine-tuned", fine_tuned["test_metrics"], "scratch", scratch["test_metrics"])
    # Measured 0.960 against 0.938 (628 test rows): a lead of at least one point, not a tie by noise.
    assert fine_tuned["test_metrics"]["accuracy"] > scratch["test_metrics"]["accuracy"] + 0.01, (
        fine_tuned["test_metrics"], scratch["test_metrics"])
