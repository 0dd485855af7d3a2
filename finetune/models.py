"""Model building: a base (a feature extractor) plus a new head sized to the data.

Imports Keras, so only the training loop and the driver's pre-flight and test evaluation import it.
"""

from __future__ import annotations

import keras
import numpy as np

from finetune.errors import UserError
from finetune.job import HeadSpec, ModelSpec

# Losses that expect one sigmoid output per example (binary classification).
BINARY_LOSSES = ("binary_crossentropy", "bce", "binary_focal_crossentropy", "hinge", "squared_hinge")


def create_model(
    spec: ModelSpec,
    input_shape: tuple[int, ...],
    num_classes: int,
    loss: str,
    feature_stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> keras.Model:
    """Base, then head, then the output layer that the data and the loss call for."""
    inputs = keras.Input(shape=input_shape, name="features")
    features = create_base(spec.base, inputs, feature_stats)
    hidden = create_head(spec.head, features)
    if loss in BINARY_LOSSES:
        if num_classes != 2:
            raise UserError(
                f"train.loss: {loss!r} is for two classes; the data has {num_classes}. "
                "Use sparse_categorical_crossentropy for more classes."
            )
        outputs = keras.layers.Dense(1, activation="sigmoid", name="output")(hidden)
    else:
        outputs = keras.layers.Dense(num_classes, activation="softmax", name="output")(hidden)
    return keras.Model(inputs, outputs, name=spec.base.replace(":", "_"))


def create_base(base: str, inputs, feature_stats) -> keras.KerasTensor:
    """The built-in bases standardise their input with the training split's statistics (a
    Normalization layer saved with the model), which makes them learn several times faster."""
    kind, _, name = base.partition(":")
    rank = len(inputs.shape) - 1
    x = inputs
    if feature_stats is not None:
        mean, variance = feature_stats
        x = keras.layers.Normalization(mean=mean, variance=variance, name="normalize")(x)
    if name == "small_cnn":
        if rank != 3:
            raise UserError(
                f"model.base: builtin:small_cnn needs images (height, width, channels); the data has "
                f"shape {tuple(inputs.shape[1:])}. Use builtin:mlp for tabular data."
            )
        x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1")(x)
        x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
        x = keras.layers.MaxPooling2D(2, name="pool1")(x)
        return keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3")(x)
    if name == "mlp":
        x = keras.layers.Flatten(name="flatten_input")(x) if rank > 1 else x
        return keras.layers.Dense(64, activation="relu", name="base_dense")(x)
    raise UserError(f"model.base: unknown base {base!r}")


def create_head(spec: HeadSpec, features) -> keras.KerasTensor:
    """Pooling (for feature maps), then dense blocks of units, activation and dropout."""
    x = features
    if len(x.shape) == 4:
        pool = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D,
                "flatten": keras.layers.Flatten}[spec.pooling]
        x = pool(name=f"head_{spec.pooling}_pool")(x)
    for i, units in enumerate(spec.units):
        x = keras.layers.Dense(units, name=f"head_dense{i}")(x)
        if spec.batch_norm:
            x = keras.layers.BatchNormalization(name=f"head_bn{i}")(x)
        x = keras.layers.Activation(spec.activation, name=f"head_act{i}")(x)
        if spec.dropout > 0:
            x = keras.layers.Dropout(spec.dropout, name=f"head_dropout{i}")(x)
    return x
