"""Model building: a base (a feature extractor) plus a new head sized to the data.

Imports Keras, so only the training loop and the driver's pre-flight and test evaluation import it.
"""

from __future__ import annotations

import keras

from finetune.data import LoadedData
from finetune.errors import UserError
from finetune.job import AugmentSpec, HeadSpec, Job

# Losses that expect one sigmoid output per example (binary classification).
BINARY_LOSSES = ("binary_crossentropy", "bce", "binary_focal_crossentropy", "hinge", "squared_hinge")


def create_model(job: Job, data: LoadedData) -> keras.Model:
    """Input preprocessing, base, head, and the output layer that the data and the loss call for.

    Preprocessing lives inside the model, so the saved model takes raw inputs: `dataset.rescale`,
    then standardisation with the training split's statistics (`dataset.normalize`), then, for
    images, the random augmentation of `train.augment` (active in training only).
    """
    spec, loss = job.model, job.train.loss
    inputs = keras.Input(shape=data.input_shape, name="features")
    x = create_preprocessing(job, data, inputs)
    features = create_base(spec.base, x, data.input_shape)
    hidden = create_head(spec.head, features)
    if loss in BINARY_LOSSES:
        if data.num_classes != 2:
            raise UserError(
                f"train.loss: {loss!r} is for two classes; the data has {data.num_classes}. "
                "Use sparse_categorical_crossentropy for more classes."
            )
        outputs = keras.layers.Dense(1, activation="sigmoid", name="output")(hidden)
    else:
        outputs = keras.layers.Dense(data.num_classes, activation="softmax", name="output")(hidden)
    return keras.Model(inputs, outputs, name=spec.base.replace(":", "_"))


def create_preprocessing(job: Job, data: LoadedData, inputs) -> keras.KerasTensor:
    x = inputs
    dataset, augment = job.dataset, job.train.augment
    if dataset.rescale is not None:
        x = keras.layers.Rescaling(dataset.rescale, name="rescale")(x)
    normalize = dataset.normalize if dataset.normalize != "auto" else job.model.base.startswith("builtin:")
    if normalize:
        mean, variance = data.feature_stats()
        if dataset.rescale is not None:  # the statistics are of the raw inputs
            mean, variance = mean * dataset.rescale, variance * dataset.rescale**2
        x = keras.layers.Normalization(mean=mean, variance=variance, name="normalize")(x)
    if augment.active:
        if len(data.input_shape) != 3:
            raise UserError(f"train.augment: augmentation is for images; the data has shape {data.input_shape}. "
                            "Remove train.augment for tabular data.")
        x = create_augmentation(augment)(x)
    return x


def create_augmentation(augment: AugmentSpec) -> keras.Sequential:
    """Keras' random image layers (the successor of ImageDataGenerator); identity at inference."""
    layers = []
    if augment.flip != "none":
        mode = "horizontal_and_vertical" if augment.flip == "both" else augment.flip
        layers.append(keras.layers.RandomFlip(mode))
    if augment.rotation:
        layers.append(keras.layers.RandomRotation(augment.rotation))
    if augment.zoom:
        layers.append(keras.layers.RandomZoom(augment.zoom))
    if augment.shear:
        layers.append(keras.layers.RandomShear(x_factor=augment.shear, y_factor=augment.shear))
    if augment.translate:
        layers.append(keras.layers.RandomTranslation(augment.translate, augment.translate))
    if augment.contrast:
        layers.append(keras.layers.RandomContrast(augment.contrast))
    return keras.Sequential(layers, name="augment")


def create_base(base: str, x, input_shape: tuple[int, ...]) -> keras.KerasTensor:
    kind, _, name = base.partition(":")
    rank = len(input_shape)
    if name == "small_cnn":
        if rank != 3:
            raise UserError(
                f"model.base: builtin:small_cnn needs images (height, width, channels); the data has "
                f"shape {tuple(input_shape)}. Use builtin:mlp for tabular data."
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
