"""The per-worker loop, run for real on one worker in this process: it learns, it checkpoints and
resumes, and bad model/data combinations fail before any trial."""

import math

import numpy as np
import pytest

from finetune.data import load_data
from finetune.errors import UserError
from finetune.job import validate_job_dict
from finetune.evaluation import preflight
from finetune.train_loop import EpochTrainer


def make_job(**sections):
    return validate_job_dict({"name": "t", "seed": 0, **sections})


@pytest.fixture(scope="module")
def digits():
    return load_data(make_job().dataset, seed=0)


def test_epochs_reduce_the_loss_and_report_every_metric(digits):
    job = make_job(train={"epochs": 3, "learning_rate": 3e-3, "metrics": ["accuracy", "sparse_top_k_categorical_accuracy"]})
    trainer = EpochTrainer(job, digits, seed=0, rank=0, world_size=1)
    first = trainer.train_epoch(1)
    third = [trainer.train_epoch(e) for e in (2, 3)][-1]
    for key in ("loss", "accuracy", "sparse_top_k_categorical_accuracy", "val_loss", "val_accuracy",
                "val_sparse_top_k_categorical_accuracy", "epoch_seconds", "samples_per_second"):
        assert math.isfinite(third[key]), key
    assert third["loss"] < first["loss"]
    assert third["val_accuracy"] > 0.5
    assert 0 <= third["val_accuracy"] <= third["val_sparse_top_k_categorical_accuracy"] <= 1


def test_validation_metrics_match_keras_evaluate(digits):
    job = make_job(train={"epochs": 1})
    trainer = EpochTrainer(job, digits, seed=0, rank=0, world_size=1)
    metrics = trainer.train_epoch(1)
    scores = trainer.model.evaluate(digits.validation.features, digits.validation.labels, verbose=0,
                                    return_dict=True)
    assert metrics["val_loss"] == pytest.approx(scores["loss"], rel=1e-4)
    assert metrics["val_accuracy"] == pytest.approx(scores["accuracy"], abs=1e-6)


def test_checkpoint_restores_weights_optimizer_and_epoch(digits, tmp_path):
    job = make_job(train={"epochs": 2})
    trainer = EpochTrainer(job, digits, seed=0, rank=0, world_size=1)
    trainer.train_epoch(1)
    trainer.save(str(tmp_path), epoch=1)
    resumed = EpochTrainer(job, digits, seed=5, rank=0, world_size=1)
    assert resumed.restore(str(tmp_path)) == 1
    for a, b in zip(trainer.model.get_weights(), resumed.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert int(resumed.optimizer.iterations.numpy()) == int(trainer.optimizer.iterations.numpy()) > 0
    assert math.isfinite(resumed.train_epoch(2)["loss"])


def test_the_checkpoint_written_while_the_epoch_validates_is_the_epochs_own(digits, tmp_path):
    """train_epoch(epoch, folder) writes the checkpoint in a thread during validation: it must hold
    the same weights and optimizer state as a save after the epoch, and trials resumed from either
    must go on the same."""
    job = make_job(train={"epochs": 3})
    trainer = EpochTrainer(job, digits, seed=0, rank=0, world_size=1)
    overlapped, after = tmp_path / "during", tmp_path / "after"
    overlapped.mkdir(), after.mkdir()
    trainer.train_epoch(1, str(overlapped))
    trainer.save(str(after), epoch=1)
    restored = []
    for folder in (overlapped, after):
        resumed = EpochTrainer(job, digits, seed=0, rank=0, world_size=1)
        assert resumed.restore(str(folder)) == 1
        restored.append(resumed)
    for a, b in zip(restored[0].model.get_weights(), restored[1].model.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(restored[0].optimizer.variables, restored[1].optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    going_on = [trainer.train_epoch(2) for trainer in restored]
    assert going_on[0]["loss"] == pytest.approx(going_on[1]["loss"], rel=1e-6)
    assert going_on[0]["val_loss"] == pytest.approx(going_on[1]["val_loss"], rel=1e-6)


def test_a_checkpoint_that_cannot_be_written_fails_the_epoch(digits, tmp_path):
    job = make_job(train={"epochs": 1})
    trainer = EpochTrainer(job, digits, seed=0, rank=0, world_size=1)
    with pytest.raises(OSError):
        trainer.train_epoch(1, str(tmp_path / "no" / "such" / "folder"))


@pytest.mark.parametrize("loss", ["binary_crossentropy", "categorical_crossentropy"])
def test_label_encodings_follow_the_loss(loss):
    data = load_data(make_job(dataset={"source": "sklearn:breast_cancer"}).dataset, seed=0)
    job = make_job(dataset={"source": "sklearn:breast_cancer"}, model={"base": "builtin:mlp"},
                   train={"loss": loss, "epochs": 1})
    metrics = EpochTrainer(job, data, seed=0, rank=0, world_size=1).train_epoch(1)
    assert metrics["val_accuracy"] > 0.6


def test_preflight_rejects_a_cnn_on_tabular_data():
    job = make_job(dataset={"source": "sklearn:iris"}, model={"base": "builtin:small_cnn"})
    data = load_data(job.dataset, seed=0)
    with pytest.raises(UserError, match="small_cnn needs images"):
        preflight(job, data)


def test_preflight_rejects_a_binary_loss_on_ten_classes(digits):
    with pytest.raises(UserError, match="two classes"):
        preflight(make_job(train={"loss": "binary_crossentropy"}), digits)


def test_metric_that_contradicts_the_loss_is_a_user_error(digits):
    with pytest.raises(UserError, match="needs one_hot labels"):
        preflight(make_job(train={"metrics": ["categorical_accuracy"]}, search={"metric": "val_loss", "mode": "min"}), digits)
