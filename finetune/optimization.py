"""What a trial optimises and how: the optimizer, the learning-rate schedule, the loss (with label
smoothing) and the per-example metrics, all from the job's `train:` section.

Imported by the training loop on every worker; imports Keras lazily.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

from finetune.errors import UserError
from finetune.job import TrainSpec

# The arguments of train.optimizer cg and lbfgs (finetune.full_batch.METHOD_OPTIONS and iterations).
FULL_BATCH_ARGUMENTS = ("iterations", "gtol", "ftol", "maxcor")

# Losses whose labels are one-hot vectors; binary losses take a single 0/1 value; every other
# classification loss takes class indices.
ONE_HOT_LOSSES = ("categorical_crossentropy", "categorical_focal_crossentropy", "categorical_hinge",
                  "kl_divergence", "kld")
BINARY_LOSSES = ("binary_crossentropy", "bce", "binary_focal_crossentropy", "hinge", "squared_hinge")
SMOOTHABLE_LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy", "bce",
                     "categorical_focal_crossentropy", "binary_focal_crossentropy")


def create_optimizer(train: TrainSpec, learning_rate_scale: float = 1.0, mixed_precision: bool = False):
    """The Keras optimizer `train.optimizer` names, with its own `optimizer_args`, weight decay and
    gradient clipping. Unknown arguments are a user error naming train.optimizer_args."""
    import keras

    # A search may choose between cg/lbfgs and Keras optimizers under one optimizer_args: their
    # own arguments (iterations, gtol...) are no Keras optimizer's, and a Keras trial leaves them.
    arguments = {k: v for k, v in train.optimizer_args.items() if k not in FULL_BATCH_ARGUMENTS}
    config = {"learning_rate": train.learning_rate * learning_rate_scale, **arguments}
    if train.weight_decay:
        config["weight_decay"] = train.weight_decay
    if train.clipnorm:
        config["clipnorm"] = train.clipnorm
    cls = type(keras.optimizers.get(train.optimizer))
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(arguments) - accepted)
    if unknown:
        raise UserError(f"train.optimizer_args: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not "
                        f"an argument of {cls.__name__}; it takes: {', '.join(sorted(accepted))}.")
    try:
        optimizer = cls(**config)
    except (TypeError, ValueError) as error:
        raise UserError(f"train.optimizer_args: {cls.__name__} refuses {arguments}: {error}") from None
    return keras.optimizers.LossScaleOptimizer(optimizer) if mixed_precision else optimizer


def learning_rate_at(train: TrainSpec, epoch: int, scale: float = 1.0) -> float:
    """The learning rate of a 1-based epoch: linear warm-up, then the schedule over the epochs left."""
    base = train.learning_rate * scale
    index = epoch - 1
    if index < train.warmup_epochs:
        return base * (index + 1) / (train.warmup_epochs + 1)
    done = index - train.warmup_epochs
    span = max(1, train.epochs - train.warmup_epochs)
    if train.learning_rate_schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * done / span))
    if train.learning_rate_schedule == "exponential":
        return base * train.decay_rate**done
    if train.learning_rate_schedule == "step":
        return base * train.decay_rate ** (done // train.step_epochs)
    return base


def label_encoding(loss: str, task: str = "classification") -> str:
    """How labels reach the loss: class indices, one-hot vectors, a 0/1 column, or a number."""
    if task == "regression":
        return "value"
    if loss in BINARY_LOSSES:
        return "binary"
    if loss in ONE_HOT_LOSSES:
        return "one_hot"
    return "sparse"


def encode_labels(labels, encoding: str, num_classes: int):
    """Labels as the loss takes them (`encoding` from `label_encoding`): one-hot vectors, a float
    column, or the class indices as they are. Keras ops, so it serves NumPy arrays (the test
    evaluation) and tensors inside a tf.data pipeline (the training loop) alike."""
    import keras

    if encoding == "one_hot":
        return keras.ops.one_hot(labels, num_classes)
    if encoding in ("binary", "value"):
        return keras.ops.cast(keras.ops.expand_dims(labels, -1), "float32")
    return labels


def create_loss(train: TrainSpec, num_classes: int, task: str = "classification") -> Callable:
    """A per-example loss function (labels, predictions) -> (batch,)."""
    import keras

    name, smoothing = train.loss, train.label_smoothing
    if smoothing and name not in SMOOTHABLE_LOSSES:
        raise UserError(f"train.label_smoothing: applies to cross-entropy losses ({', '.join(SMOOTHABLE_LOSSES)}), "
                        f"not {name!r}. Set it to 0.")
    if not smoothing:
        function = keras.losses.get(name)
        if task == "regression":
            return lambda labels, predictions: function(labels, predictions)
        return function
    if name == "sparse_categorical_crossentropy":
        # Keras' sparse cross-entropy has no label smoothing: smooth the equivalent one-hot labels.
        def smoothed(labels, predictions):
            one_hot = keras.ops.one_hot(keras.ops.cast(labels, "int32"), num_classes)
            return keras.losses.categorical_crossentropy(one_hot, predictions, label_smoothing=smoothing)

        return smoothed
    function = keras.losses.get(name)
    return lambda labels, predictions: function(labels, predictions, label_smoothing=smoothing)


def per_example_metric(name: str, loss: str, task: str = "classification") -> Callable:
    """The per-example function behind a metric name; its mean over examples is the metric."""
    import keras

    encoding = label_encoding(loss, task)
    if name == "accuracy":
        name = {"binary": "binary_accuracy", "one_hot": "categorical_accuracy",
                "sparse": "sparse_categorical_accuracy"}.get(encoding, name)
    needs = {"sparse_categorical_accuracy": "sparse", "sparse_top_k_categorical_accuracy": "sparse",
             "sparse_categorical_crossentropy": "sparse", "categorical_accuracy": "one_hot",
             "top_k_categorical_accuracy": "one_hot", "categorical_crossentropy": "one_hot",
             "binary_accuracy": "binary", "binary_crossentropy": "binary"}.get(name)
    if needs and needs != encoding:
        raise UserError(
            f"train.metrics: {name!r} needs {needs} labels, but train.loss {loss!r} trains on "
            f"{encoding} labels; use 'accuracy', which follows the loss"
        )
    function = getattr(keras.metrics, name, None)
    if callable(function) and not isinstance(function, type):
        return function
    return keras.losses.get(name)
