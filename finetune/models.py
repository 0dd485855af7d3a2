"""Model building: input preprocessing, a base (feature extractor), a new head, an output layer
sized to the data, and the freezing that fine-tuning needs.

Bases are built-in models, Keras Applications, or trained Keras models from a file, a URI or an
earlier run. Everything in a built model is a standard Keras layer, so the saved `.keras` file
loads with `keras.models.load_model` (safe_mode on) and no code of ours.

Imports Keras: only the training loop and the driver's pre-flight and test evaluation import it.
"""

from __future__ import annotations

import os
import sys
import tempfile

import keras
import numpy as np

from finetune import _compat, storage
from finetune.data import LoadedData
from finetune.errors import UserError
from finetune.job import AugmentSpec, HeadSpec, Job, ModelSpec
from finetune.optimization import BINARY_LOSSES

BASE_LAYER = "base"  # the name of the base sub-model inside a built model

# How each Keras Applications family expects its input (keras.applications.<module>.preprocess_input),
# rebuilt from standard layers: "tf" scales to [-1, 1]; "torch" scales to [0, 1] and standardises
# with ImageNet statistics; "caffe" turns RGB into BGR and subtracts the ImageNet mean; "included"
# models carry their own preprocessing.
PREPROCESSING = {
    "convnext": "included", "efficientnet": "included", "efficientnet_v2": "included", "mobilenet_v3": "included",
    "mobilenet": "tf", "mobilenet_v2": "tf", "inception_v3": "tf", "inception_resnet_v2": "tf",
    "xception": "tf", "nasnet": "tf", "resnet_v2": "tf",
    "densenet": "torch",
    "resnet": "caffe", "vgg16": "caffe", "vgg19": "caffe",
}
IMAGENET_MEAN_RGB = np.array([123.68, 116.779, 103.939], dtype=np.float32)
IMAGENET_TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def create_model(job: Job, data: LoadedData) -> keras.Model:
    """Preprocessing, base, head and output; the base frozen as `model.freeze` says (phase 1)."""
    spec = job.model
    if spec.keep_head:
        return continued_model(job, data)
    inputs = keras.Input(shape=data.input_shape, name="features")
    x = create_preprocessing(job, data, inputs)
    base = create_base(job, data.input_shape, x.shape[1:])
    # A trained base runs in inference mode, so its BatchNorm statistics stay as trained even
    # after it is unfrozen (Keras' transfer-learning guide).
    features = base(x, training=False) if has_trained_weights(spec) else base(x)
    hidden = create_head(spec.head, features)
    outputs = create_output(job, data, hidden)
    model = keras.Model(inputs, outputs, name=f"finetune_{spec.base.partition(':')[2] or 'model'}"[:60]
                        .replace("/", "_").replace(".", "_").replace("@", "_"))
    freeze_base(model, spec.freeze)
    return model


def has_trained_weights(spec: ModelSpec) -> bool:
    """Whether the base arrives trained: a model file or an earlier run's model, or a Keras
    Applications model with weights (imagenet or a file); not builtin: bases, nor keras: ones with
    `weights: none`, which start from random weights like any new model."""
    kind = spec.base.partition(":")[0]
    if kind == "builtin":
        return False
    return kind != "keras" or spec.weights != "none"


def create_output(job: Job, data: LoadedData, hidden) -> keras.KerasTensor:
    loss = job.train.loss
    # float32 outputs keep the loss numerically sound under mixed precision; a float64 model (cg,
    # lbfgs: finetune.full_batch) keeps float64 to its end.
    dtype = "float64" if keras.config.dtype_policy().name == "float64" else "float32"
    if job.model.task == "regression":
        return keras.layers.Dense(1, name="output", dtype=dtype)(hidden)
    if loss in BINARY_LOSSES:
        if data.num_classes != 2:
            raise UserError(f"train.loss: {loss!r} is for two classes; the data has {data.num_classes}. "
                            "Use sparse_categorical_crossentropy for more classes.")
        return keras.layers.Dense(1, activation="sigmoid", name="output", dtype=dtype)(hidden)
    return keras.layers.Dense(data.num_classes, activation="softmax", name="output", dtype=dtype)(hidden)


# --- preprocessing -------------------------------------------------------------------------------


def create_preprocessing(job: Job, data: LoadedData, inputs) -> keras.KerasTensor:
    """Preprocessing lives inside the model, so the saved model takes raw inputs: `dataset.rescale`,
    standardisation with the training split's statistics (`dataset.normalize`; by default for
    built-in bases), then, for images, the random augmentation of `train.augment` (training only)."""
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


# --- bases ---------------------------------------------------------------------------------------


def create_base(job: Job, data_shape: tuple, preprocessed_shape: tuple) -> keras.Model:
    """The base as a sub-model named `base`. data_shape: the shape of the data's inputs;
    preprocessed_shape: of what the model's preprocessing hands the base (the same shape for
    images and tables; builtin bases are sized by it)."""
    spec = job.model
    kind, _, name = spec.base.partition(":")
    if kind == "builtin":
        return builtin_base(name, spec, tuple(preprocessed_shape))
    if kind == "keras":
        return application_base(name, spec.weights, tuple(data_shape))
    return file_base(job, tuple(data_shape))


# builtin:small_cnn flattens a final feature map this small (in each side) for the head.
SMALL_MAP = 4


def builtin_base(name: str, spec: ModelSpec, input_shape: tuple) -> keras.Model:
    inputs = keras.Input(shape=input_shape)
    if name == "small_cnn":
        if len(input_shape) != 3:
            raise UserError(f"model.base: builtin:small_cnn needs images (height, width, channels); the data has "
                            f"shape {input_shape}. Use builtin:mlp for tabular data.")
        # 3x3 convolutions and one 2x2 max-pool before the last. When the map left is small (4x4
        # on 8x8 digits), the base hands it to the head flattened, so the head's dense layer sees
        # where the strokes are; global pooling of so small a map threw that layout away. On
        # digits, of the 12 configurations the default search samples, 1 reached 0.9 validation
        # accuracy in 12 epochs with the pooled map, 8 with the flattened one.
        x = inputs
        for i, filters in enumerate(spec.filters):
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{i + 1}")(x)
            if i == len(spec.filters) - 2 and min(x.shape[1:3]) >= 4:
                x = keras.layers.MaxPooling2D(2, name="pool")(x)
        if max(x.shape[1:3]) <= SMALL_MAP:
            x = keras.layers.Flatten(name="flatten_map")(x)
        return keras.Model(inputs, x, name=BASE_LAYER)
    x = keras.layers.Flatten(name="flatten_input")(inputs) if len(input_shape) > 1 else inputs
    for i, units in enumerate(spec.base_units):
        x = keras.layers.Dense(units, activation="relu", name=f"dense{i + 1}")(x)
    return keras.Model(inputs, x, name=BASE_LAYER)


def application_base(name: str, weights: str | None, data_shape: tuple) -> keras.Model:
    """A Keras Applications model without its top, wrapped with the preprocessing it expects.
    Grey images are repeated to three channels."""
    if len(data_shape) != 3:
        raise UserError(f"model.base: keras:{name} needs images (height, width, channels); the data has "
                        f"shape {data_shape}.")
    constructor = getattr(keras.applications, name)
    weights = resolve_weights(name, weights)
    inputs = keras.Input(shape=data_shape)
    x = inputs
    if data_shape[-1] == 1:
        x = keras.layers.Concatenate(name="grey_to_rgb")([x, x, x])
    elif data_shape[-1] != 3:
        raise UserError(f"model.base: keras:{name} needs 1 or 3 channels; the data has {data_shape[-1]}.")
    x = application_preprocessing(name, x)
    try:
        network = constructor(include_top=False, weights=weights, input_shape=(*data_shape[:2], 3))
    except ValueError as error:
        raise UserError(f"model.base: keras:{name} does not accept images of shape {data_shape}: "
                        f"{str(error).splitlines()[0]} Set dataset.image_size to a size it takes.") from None
    except Exception as error:  # a failed download raises URLError, HTTPError, or Exception("URL fetch failure")
        raise UserError(f"model.weights: could not get the {weights} weights of keras:{name}: "
                        f"{str(error).splitlines()[0]}. Without network access use weights: none, or a local "
                        f"weights file (weights: path/to/file.weights.h5).") from None
    return keras.Model(inputs, network(x), name=BASE_LAYER)


def resolve_weights(name: str, weights: str | None) -> str | None:
    """imagenet (default), none, or a weights file: a path or URI, fetched to a local file."""
    if weights is None or weights == "imagenet":
        return "imagenet"
    if weights == "none":
        return None
    if not storage.exists(weights):
        raise UserError(f"model.weights: no weights file at {weights!r} for keras:{name}. "
                        "Expected imagenet, none, or the path or URI of a weights file.")
    if storage.is_local(weights) and "://" not in weights:
        return os.path.abspath(weights)
    local = os.path.join(tempfile.mkdtemp(prefix="finetune-weights-"), os.path.basename(weights))
    return storage.fetch_to_local(weights, local)


def application_preprocessing(name: str, x) -> keras.KerasTensor:
    module = sys.modules[getattr(keras.applications, name).__module__].__name__.rpartition(".")[2]
    mode = PREPROCESSING.get(module, "included")
    if mode == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess_tf")(x)
    if mode == "torch":
        x = keras.layers.Rescaling(1 / 255.0, name="preprocess_scale")(x)
        return keras.layers.Normalization(mean=IMAGENET_TORCH_MEAN, variance=IMAGENET_TORCH_STD**2,
                                          name="preprocess_torch")(x)
    if mode == "caffe":
        # RGB -> BGR and minus the mean, as one fixed 1x1 convolution.
        flip = keras.layers.Conv2D(3, 1, name="preprocess_caffe", trainable=False)
        y = flip(x)
        flip.set_weights([np.eye(3, dtype=np.float32)[::-1].reshape(1, 1, 3, 3), -IMAGENET_MEAN_RGB[::-1].copy()])
        return y
    return x


def file_base(job: Job, data_shape: tuple) -> keras.Model:
    """A trained Keras 3 model from a file, URI, earlier run or registry version, cut at `cut_at`
    (default: all but its last layer)."""
    spec = job.model
    trained = load_base_model(spec.base, job)
    names = [layer.name for layer in trained.layers]
    if spec.cut_at is not None and spec.cut_at not in names:
        raise UserError(f"model.cut_at: no layer {spec.cut_at!r} in {spec.base}; its layers are: {', '.join(names)}.")
    cut = trained.get_layer(spec.cut_at) if spec.cut_at else trained.layers[-2]
    output = output_in_model(cut)
    check_input_shape(trained, spec.base, data_shape)
    return keras.Model(trained.inputs, output, name=BASE_LAYER)


def check_input_shape(trained: keras.Model, base: str, data_shape: tuple) -> None:
    expected = tuple(trained.inputs[0].shape[1:])
    if len(expected) != len(data_shape) or any(e is not None and e != d for e, d in zip(expected, data_shape)):
        raise UserError(f"model.base: {base} takes inputs of shape {expected}, but the data has shape "
                        f"{data_shape}. Set dataset.image_size / dataset.channels to match, or use another base.")


def continued_model(job: Job, data: LoadedData) -> keras.Model:
    """`model.keep_head`: the trained model itself, every layer and weight as it was saved (its own
    preprocessing, base, head and output), to go on training: a warm start. Only `model.freeze`
    applies, to its `base` sub-model when it has one."""
    spec = job.model
    trained = load_base_model(spec.base, job)
    check_input_shape(trained, spec.base, data.input_shape)
    outputs = trained.outputs[0].shape[-1]
    expected = 1 if job.model.task == "regression" or job.train.loss in BINARY_LOSSES else data.num_classes
    if outputs != expected:
        raise UserError(f"model.keep_head: {spec.base} has {outputs} outputs, but this job needs {expected} "
                        f"({data.num_classes} classes, loss {job.train.loss}). Continue only a model of the same "
                        "classes, or drop keep_head to train a new head on its base.")
    names = [layer.name for layer in trained.layers]
    if BASE_LAYER in names:
        freeze_base(trained, spec.freeze)
    elif spec.freeze != "none":
        raise UserError(f"model.freeze: {spec.base} has no '{BASE_LAYER}' sub-model to freeze (its layers: "
                        f"{', '.join(names)}). Use freeze: none with keep_head.")
    return trained


def load_base_model(base: str, job: Job, field: str = "model.base") -> keras.Model:
    """A model base as a Keras model: a registry version or earlier run verified against its
    manifest (and decrypted) before Keras reads a byte, or a file as it is."""
    if not base.startswith("registry:"):
        return load_model_file(base, field)
    from finetune.registry.references import model_bytes

    return load_model_bytes(model_bytes(base, job), base, field)


def load_model_bytes(data: bytes, where: str, field: str) -> keras.Model:
    """Keras loads from a file: the verified bytes go to one that only this user can read, in a
    folder only this user can enter, removed as soon as the model is loaded."""
    with tempfile.TemporaryDirectory(prefix="finetune-model-") as directory:  # mode 0700
        local = os.path.join(directory, "model.keras")
        handle = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        return _load_keras(local, where, field)


def output_in_model(layer) -> keras.KerasTensor:
    """A layer's output where the model calls it. For a nested model (a sub-model such as a saved
    model's `base`), `.output` is the sub-model's own graph; its call in the outer model is what
    the head must take (finetune._compat.call_outputs)."""
    if isinstance(layer, keras.Model) and _compat.has_call(layer):
        return _compat.call_outputs(layer)
    return layer.output


def load_model_file(location: str, field: str) -> keras.Model:
    if not storage.exists(location):
        raise UserError(f"{field}: no model file at {location!r}. Expected the path or URI of a .keras file.")
    with tempfile.TemporaryDirectory(prefix="finetune-model-") as directory:
        local = storage.fetch_to_local(location, os.path.join(directory, "model.keras"))
        return _load_keras(local, location, field)


def _load_keras(local: str, location: str, field: str) -> keras.Model:
    try:
        foreign = foreign_modules(local)
        if foreign:
            raise UserError(f"{field}: {location} names code outside Keras ({', '.join(foreign)}), which this "
                            "runner never imports. Expected a model made of Keras' own layers, saved with "
                            "model.save('model.keras').")
        return keras.models.load_model(local, compile=False, safe_mode=True)
    except UserError:
        raise
    except ValueError as error:
        text = str(error)
        if "safe_mode" in text or "unsafe" in text.lower() or "Lambda" in text:
            raise UserError(f"{field}: {location} asks for unsafe deserialisation (a Lambda layer or "
                            f"arbitrary code), which this runner refuses: {text.splitlines()[0]}") from None
        raise UserError(f"{field}: {location} is not a Keras 3 model file: {text.splitlines()[0]}") from None
    except Exception as error:  # zipfile.BadZipFile, KeyError, OSError for a file that is not a .keras archive
        raise UserError(f"{field}: {location} is not a Keras 3 model file (.keras): "
                        f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from None


def foreign_modules(path: str) -> list[str]:
    """The Python modules outside Keras that a `.keras` file's config names for its layers,
    functions or objects. Keras' safe_mode refuses lambdas and, since 3.9, modules outside Keras,
    but it has been bypassed before (CVE-2025-1550, CVE-2025-9906): the file is checked here,
    without Keras, before it is loaded."""
    import json
    import zipfile

    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    found: set[str] = set()
    pending = [config]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            module = node.get("module")
            if isinstance(module, str) and module != "keras" and not module.startswith("keras."):
                found.add(module)
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return sorted(found)


# --- head and freezing ---------------------------------------------------------------------------


def create_head(spec: HeadSpec, features) -> keras.KerasTensor:
    """Pooling (for feature maps), then dense blocks of units, batch norm, activation and dropout."""
    x = features
    if len(x.shape) == 4:
        pool = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D,
                "flatten": keras.layers.Flatten}[spec.pooling]
        x = pool(name=f"head_{spec.pooling}_pool")(x)
    elif len(x.shape) > 2:
        x = keras.layers.Flatten(name="head_flatten")(x)
    for i, units in enumerate(spec.units):
        x = keras.layers.Dense(units, name=f"head_dense{i}")(x)
        if spec.batch_norm:
            x = keras.layers.BatchNormalization(name=f"head_bn{i}")(x)
        x = keras.layers.Activation(spec.activation, name=f"head_act{i}")(x)
        if spec.dropout > 0:
            x = keras.layers.Dropout(spec.dropout, name=f"head_dropout{i}")(x)
    return x


def base_layers_with_weights(model: keras.Model) -> list[keras.layers.Layer]:
    """The base's layers that hold weights, bottom to top, nested models flattened."""
    found = []

    def walk(layer):
        if isinstance(layer, keras.Model) or hasattr(layer, "layers") and layer.layers:
            for inner in layer.layers:
                walk(inner)
        elif layer.weights:
            found.append(layer)

    walk(model.get_layer(BASE_LAYER))
    return found


def freeze_base(model: keras.Model, freeze, unfreeze_top: int | str | None = None) -> None:
    """Phase 1 (`model.freeze`): all, none, or all but the top K layers with weights. Phase 2
    (`unfreeze_top`): the top K (or all) unfrozen. BatchNorm layers stay frozen throughout."""
    layers = base_layers_with_weights(model)
    if unfreeze_top is not None:
        keep = len(layers) if unfreeze_top == "all" else int(unfreeze_top)
        chosen = layers[len(layers) - keep:] if keep else []
        for layer in chosen:
            layer.trainable = True
    elif freeze != "none":
        top = 0 if freeze == "all" else freeze.top_trainable
        for i, layer in enumerate(layers):
            layer.trainable = i >= len(layers) - top if top else False
    for layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def parameter_counts(model: keras.Model) -> dict[str, int]:
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = int(sum(np.prod(w.shape) for w in model.weights))
    return {"trainable_params": trainable, "frozen_params": total - trainable}
