"""Full-batch conjugate gradient and L-BFGS (`train.optimizer: cg | lbfgs`), run for real in this
process on one worker: against scipy.optimize.minimize on the same function, against Adam, through
a checkpoint, and the job rules around them. The 2-worker check is in test_search_algorithms.py."""

import numpy as np
import pytest

from finetune import full_batch
from finetune.data import load_data
from finetune.errors import JobError, UserError
from finetune.job import validate_job_dict
from finetune.train_loop import EpochTrainer

EPOCHS, ITERATIONS = 4, 5
MLP = {"base": "builtin:mlp"}
LOGISTIC = {"base": "builtin:mlp", "base_units": [], "head": {"units": []}}  # softmax regression


def make_job(model: dict, optimizer: str, **train):
    return validate_job_dict({
        "name": "t", "seed": 0, "dataset": {"source": "sklearn:breast_cancer"}, "model": model,
        "train": {"epochs": EPOCHS, "optimizer": optimizer, "optimizer_args": {"iterations": ITERATIONS}
                  if optimizer in ("cg", "lbfgs") else {}, **train}})


@pytest.fixture(scope="module")
def cancer():
    return load_data(make_job(MLP, "adam").dataset, seed=0)


def training_losses(job, data, epochs: int = EPOCHS) -> list[float]:
    trainer = EpochTrainer(job, data, seed=0, rank=0, world_size=1)
    return [trainer.train_epoch(epoch)["loss"] for epoch in range(1, epochs + 1)]


def scipy_reference(job, data, method: str) -> float:
    """scipy.optimize.minimize on the same model and loss, written plainly: the mean loss over the
    whole training split and its gradient from one GradientTape, one call per epoch of ITERATIONS
    iterations, as an epoch of the loop runs."""
    import keras
    import tensorflow as tf
    from scipy.optimize import minimize

    from finetune.models import create_model
    from finetune.optimization import create_loss

    keras.mixed_precision.set_global_policy("float64")
    keras.utils.set_random_seed(0)
    model = create_model(job, data)
    loss_fn = create_loss(job.train, data.num_classes)
    features, labels = tf.constant(data.train.features), tf.constant(data.train.labels)
    variables = model.trainable_variables
    cuts = np.cumsum([int(np.prod(v.shape)) for v in variables])[:-1]

    def objective(flat):
        for variable, piece in zip(variables, np.split(flat, cuts)):
            variable.assign(piece.reshape(variable.shape))
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(loss_fn(labels, model(features, training=False)))
        return float(loss), np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, variables)])

    weights = np.concatenate([v.numpy().ravel() for v in variables])
    for _ in range(EPOCHS):
        result = minimize(objective, weights, jac=True, method=method, options={"maxiter": ITERATIONS})
        weights = result.x
    return float(objective(weights)[0])


@pytest.mark.parametrize("model", [MLP, LOGISTIC], ids=["mlp", "logistic"])
def test_lbfgs_matches_scipy_and_beats_adam(cancer, model):
    lbfgs = training_losses(make_job(model, "lbfgs"), cancer)
    adam = training_losses(make_job(model, "adam", learning_rate=1e-2), cancer)
    reference = scipy_reference(make_job(model, "lbfgs"), cancer, "L-BFGS-B")
    assert lbfgs[-1] <= reference * (1 + 1e-6) + 1e-12, (lbfgs, reference)
    assert lbfgs[-1] < adam[-1], (lbfgs, adam)
    assert lbfgs == sorted(lbfgs, reverse=True)  # every epoch goes on from the last: the loss never rises


def test_cg_matches_scipy_and_beats_adam(cancer):
    cg = training_losses(make_job(MLP, "cg"), cancer)
    adam = training_losses(make_job(MLP, "adam", learning_rate=1e-2), cancer)
    reference = scipy_reference(make_job(MLP, "cg"), cancer, "CG")
    assert cg[-1] <= reference * (1 + 1e-6) + 1e-12, (cg, reference)
    assert cg[-1] < adam[-1], (cg, adam)


def test_an_epoch_reports_scipys_counts_and_validation(cancer):
    trainer = EpochTrainer(make_job(MLP, "lbfgs"), cancer, seed=0, rank=0, world_size=1)
    metrics = trainer.train_epoch(1)
    assert metrics["iterations"] == ITERATIONS and metrics["function_evaluations"] >= ITERATIONS
    assert metrics["val_accuracy"] > 0.9
    assert all(w.dtype == "float64" for w in trainer.model.get_weights())


def test_a_restored_checkpoint_goes_on_as_the_run_would_have(cancer, tmp_path):
    """Each epoch restarts the minimizer from the weights, so the checkpoint (the weights) is the
    whole state: a resumed epoch 3 equals the uninterrupted one (to 1e-4: the saved model's
    Normalization layer keeps its mean and variance at float32 precision)."""
    job = make_job(MLP, "lbfgs")
    uninterrupted = training_losses(job, cancer, epochs=3)
    first = EpochTrainer(job, cancer, seed=0, rank=0, world_size=1)
    first.train_epoch(1), first.train_epoch(2)
    first.save(str(tmp_path), epoch=2)
    resumed = EpochTrainer(job, cancer, seed=7, rank=0, world_size=1)  # another seed: the weights must come from the file
    assert resumed.restore(str(tmp_path)) == 2
    assert resumed.train_epoch(3)["loss"] == pytest.approx(uninterrupted[2], rel=1e-4)


def test_keras_only_fields_are_named_as_ignored():
    job = validate_job_dict({"name": "t", "model": {"head": {"dropout": 0.2}}, "train": {
        "optimizer": "lbfgs", "learning_rate": 0.01, "optimizer_args": {"momentum": 0.9, "maxcor": 5}},
        "search": {"space": {"train.weight_decay": {"uniform": [0.0, 0.1]}}}})
    ignored = full_batch.ignored_fields(job)
    assert set(ignored) == {"train.learning_rate", "model.head.dropout", "train.optimizer_args.momentum",
                            "train.weight_decay"}
    assert "ignore train.learning_rate" in full_batch.ignored_fields_note(job)
    assert full_batch.ignored_fields(validate_job_dict({"name": "t", "train": {"learning_rate": 0.01}})) == {}
    # A space that may choose cg names what cg trials ignore.
    chooser = validate_job_dict({"name": "t", "train": {"clipnorm": 1.0},
                                 "search": {"space": {"train.optimizer": {"choice": ["adam", "cg"]}}}})
    assert list(full_batch.ignored_fields(chooser)) == ["train.clipnorm"]


def test_full_batch_jobs_refuse_streaming_data_and_bad_arguments():
    with pytest.raises(JobError) as error:
        validate_job_dict({"name": "t", "dataset": {"in_memory": False},
                           "train": {"optimizer": "cg", "optimizer_args": {"iterations": 0, "gtol": -1}},
                           "search": {"space": {"train.optimizer": {"choice": ["adam", "lbfgs"]}}}})
    problems = {p.path: p.expected for p in error.value.problems}
    assert "streamed anew each epoch" in problems["train.optimizer"]
    assert "whole number >= 1" in problems["train.optimizer_args.iterations"]
    assert "number > 0" in problems["train.optimizer_args.gtol"]
    job = validate_job_dict({"name": "t", "train": {"optimizer": "lbfgs"}})
    with pytest.raises(UserError, match="this data streams"):
        full_batch.check_data_fits(job, streaming=True)
    full_batch.check_data_fits(job, streaming=False)


def test_a_keras_optimizer_leaves_the_full_batch_arguments_of_a_shared_optimizer_args():
    """A space choosing between lbfgs and adam shares one optimizer_args: adam leaves iterations."""
    from finetune.job import TrainSpec
    from finetune.optimization import create_optimizer

    assert type(create_optimizer(TrainSpec(optimizer="adam", optimizer_args={"iterations": 20, "gtol": 1e-6}))).__name__ == "Adam"
    with pytest.raises(UserError, match="momentum is not an argument of Adam"):
        create_optimizer(TrainSpec(optimizer="adam", optimizer_args={"momentum": 0.9}))
