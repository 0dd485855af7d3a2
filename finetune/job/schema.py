"""The job file's schema: what a job file may contain.

The pydantic models below are the contract. Every field has a type and a default, so a job states
only what differs. Rules that tie one field to another, and the translation of pydantic's errors
into problems a person reads, are in `finetune.job.validation`. Nothing here imports Ray or
TensorFlow: validating a job takes milliseconds.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from finetune import keras_names
from finetune.job.names import MAX_NAME_LENGTH, NAME_PATTERN, name_problem

# Full-batch optimizers that are not Keras optimizers: scipy.optimize.minimize over the flattened
# trainable weights (finetune.full_batch).
FULL_BATCH_OPTIMIZERS = ("cg", "lbfgs")
EMBEDDED_DATASETS = ("digits", "breast_cancer", "wine", "iris", "diabetes")
BUILTIN_MODELS = ("small_cnn", "mlp")

# What editors check of a name as it is typed (finetune.job.names checks it on load).
NAME_SCHEMA = {"pattern": NAME_PATTERN, "maxLength": MAX_NAME_LENGTH}


class _Strict(BaseModel):
    """Unknown keys are errors, not silently ignored; no number field takes NaN or an infinity
    (`1e400` is text to YAML, and infinite to pydantic)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# --- dataset -------------------------------------------------------------------------------------


class SplitSpec(_Strict):
    """How rows are held out: seeded, stratified fractions (default 0.2 and 0.2), or a column whose
    values (train, validation, test) name each row's split."""

    validation: Optional[float] = Field(None, gt=0, lt=1, description="fraction of rows for validation (default 0.2)")
    test: Optional[float] = Field(None, ge=0, lt=1, description="fraction of rows held out for the test (default 0.2)")
    column: Optional[str] = Field(None, description="a column whose values (train, validation, test) name each row's split")

    @model_validator(mode="after")
    def _fractions_or_column(self) -> "SplitSpec":
        if self.column is not None:
            if self.validation is not None or self.test is not None:
                raise ValueError("expected either a split column or validation/test fractions, not both")
            return self
        self.validation = 0.2 if self.validation is None else self.validation
        self.test = 0.2 if self.test is None else self.test
        if self.validation + self.test >= 1:
            raise ValueError(
                f"expected validation + test below 1, leaving rows for training "
                f"(got {self.validation} + {self.test} = {self.validation + self.test:g})"
            )
        return self


Format = Literal["parquet", "csv", "arrow", "images"]


class SourceSpec(_Strict):
    """Files of one split, when train, validation and test come separately."""

    source: str = Field(min_length=1, description="files, a folder, a glob or a URI of this split")
    format: Optional[Format] = Field(None, description="default: from the file names")


def _fraction(value: Any) -> Any:
    """`1/255` reads better than 0.00392156862745098 in a job file."""
    if isinstance(value, str) and "/" in value:
        numerator, _, denominator = value.partition("/")
        try:
            return float(numerator) / float(denominator)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"expected a number or a fraction such as 1/255, got {value!r}") from None
    return value


class DatasetSpec(_Strict):
    """Where the data is and how to read it. Paths are relative to the job file's folder, or URIs
    that pyarrow opens (file://, s3://, gs://, hdfs://), with credentials from the environment."""

    source: Optional[str] = Field(None, description="files, a folder, a glob, a URI, or sklearn:NAME")
    format: Optional[Format] = Field(None, description="parquet, csv, arrow or images; default: from the file names")
    label: str = Field("label", description="the column (or, for image folders, the folder level) holding the target")
    features: Optional[list[str]] = Field(None, description="default: every column but the label")
    image_column: Optional[str] = Field(None, description="a table column of image paths or encoded images")
    image_size: Optional[tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]]] = Field(
        None, description="[height, width] every image is resized to")
    channels: Optional[Literal[1, 3]] = Field(None, description="1 (grey) or 3 (RGB); default: from the first image")
    on_bad_image: Literal["error", "skip"] = Field(
        "error", description="an image that does not decode: stop the run (error) or skip and count it (skip)")
    classes: Optional[list[Union[str, int]]] = Field(
        None, description="keep only rows with these labels (others are dropped), e.g. digits 0-4")
    rescale: Optional[Annotated[float, Field(gt=0)]] = Field(
        None, description="multiply every input by this, e.g. 1/255 for 8-bit images")
    normalize: Union[Literal["auto"], bool] = Field(
        "auto", description="standardise inputs with the training split's mean and variance; auto: for builtin bases")
    in_memory: Union[Literal["auto"], bool] = Field(
        "auto", description="hold the data in memory (true) or stream it with Ray Data (false); auto: in memory "
                            "when under 1 GiB as model inputs")
    split: SplitSpec = Field(SplitSpec(), description="how validation and test rows are held out of one source")
    train: Optional[SourceSpec] = Field(None, description="the training split's own files (instead of source)")
    validation: Optional[SourceSpec] = Field(None, description="the validation split's own files")
    test: Optional[SourceSpec] = Field(None, description="the test split's own files (optional)")

    _rescale_fraction = field_validator("rescale", mode="before")(classmethod(lambda cls, v: _fraction(v)))

    @model_validator(mode="after")
    def _one_way_to_give_data(self) -> "DatasetSpec":
        if self.train is not None or self.validation is not None or self.test is not None:
            if self.source is not None:
                raise ValueError("expected either dataset.source or dataset.train/validation/test, not both")
            if self.train is None or self.validation is None:
                raise ValueError("expected both dataset.train and dataset.validation when splits come as files")
        elif self.source is None:
            self.source = "sklearn:digits"
        if self.source and self.source.startswith("sklearn:"):
            name = self.source.partition(":")[2]
            if name not in EMBEDDED_DATASETS:
                choices = ", ".join(f"sklearn:{n}" for n in EMBEDDED_DATASETS)
                raise ValueError(f"expected an embedded data set: {choices} (got {self.source!r})")
        return self

    @property
    def embedded(self) -> Optional[str]:
        """The scikit-learn data set's name, for sklearn:NAME sources."""
        return self.source.partition(":")[2] if self.source and self.source.startswith("sklearn:") else None


# --- model ---------------------------------------------------------------------------------------


def _activation(name: str) -> str:
    if name not in keras_names.ACTIVATIONS:
        raise ValueError(keras_names.unknown_name_message("activation", name, keras_names.ACTIVATIONS))
    return name


class HeadSpec(_Strict):
    """The new classification (or regression) head put on top of the base."""

    pooling: Literal["avg", "max", "flatten"] = Field(
        "avg", description="of a base's feature map; builtin:small_cnn hands a map of 4x4 or less flattened")
    units: list[Annotated[int, Field(gt=0)]] = Field([64], description="units of each hidden dense layer of the head")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout rate after each hidden layer")
    activation: str = Field("relu", description="a Keras activation of the hidden layers")
    batch_norm: bool = Field(False, description="batch normalisation after each hidden layer")

    _check_activation = field_validator("activation")(classmethod(lambda cls, v: _activation(v)))


class FreezeTop(_Strict):
    top_trainable: int = Field(ge=0, description="layers with weights at the top of the base left trainable")


class ModelSpec(_Strict):
    """A base (feature extractor) and a new head. Bases:

    - builtin:small_cnn, builtin:mlp: small models of our own, for tests and tabular data;
    - keras:NAME: any Keras Applications model (keras:MobileNetV3Small, keras:ResNet50...), with
      `weights: imagenet` (downloaded where the network allows), a local weights file, or none;
    - path/to/model.keras or a URI: a Keras 3 model, loaded with safe_mode, cut at `cut_at`;
    - registry:NAME@champion, @v3 or @<alias>: a version of model NAME in the model registry;
      registry:NAME@latest or registry:NAME@<run id>: the best model of an earlier run of NAME.
    """

    base: str = Field("builtin:small_cnn", description=(
        "builtin:small_cnn | builtin:mlp | keras:<Applications model> | a .keras file or URI | "
        "registry:NAME@champion | @v3 | @<alias> | @latest | @<run id>"))
    fallback_base: Optional[str] = Field(None, description=(
        "the base when `base` is a registry alias that names no version yet (the first night of a "
        "nightly job warm-started from registry:NAME@champion): builtin:, keras:, a .keras file"))
    keep_head: bool = Field(False, description=(
        "file and registry bases: keep the whole trained network, its head and output included, and go on "
        "training it (a warm start); model.head and cut_at are then not used, and the data must have the "
        "model's classes. When the base falls back to model.fallback_base, a new model is built as usual"))
    weights: Optional[str] = Field(None, description="keras: bases: imagenet, none or a weights file (default imagenet)")
    cut_at: Optional[str] = Field(None, description="file bases: the layer whose output the head takes (default: drop the last layer)")
    task: Literal["classification", "regression"] = Field(
        "classification", description="classification (one output per class) or regression (one number)")
    freeze: Union[Literal["all", "none"], FreezeTop] = Field(
        "none", description="phase 1: freeze the whole base, nothing, or all but its top layers")
    filters: list[Annotated[int, Field(gt=0)]] = Field([32, 32, 64], description="builtin:small_cnn conv filters")
    base_units: list[Annotated[int, Field(gt=0)]] = Field([64], description="builtin:mlp hidden layers")
    head: HeadSpec = Field(HeadSpec(), description="the new head put on top of the base")

    @field_validator("base")
    @classmethod
    def _known_base(cls, base: str) -> str:
        kind, sep, name = base.partition(":")
        if kind == "builtin" and sep:
            if name in BUILTIN_MODELS:
                return base
            raise ValueError(f"expected a builtin base: {', '.join('builtin:' + n for n in BUILTIN_MODELS)}")
        if kind == "keras" and sep:
            if name in keras_names.APPLICATIONS:
                return base
            raise ValueError(keras_names.unknown_name_message("Applications model", name, keras_names.APPLICATIONS))
        if kind == "registry" and sep:
            model_name, at, version = name.partition("@")
            problem = (name_problem(model_name) or name_problem(version)) if at else "expected a version after '@'"
            if problem is None:
                return base
            raise ValueError("expected registry:NAME@champion, registry:NAME@v3, registry:NAME@<alias>, "
                             f"registry:NAME@latest or registry:NAME@<run id>; {problem}")
        if base.endswith(".keras"):
            return base
        raise ValueError("expected builtin:small_cnn, builtin:mlp, keras:<Applications model>, "
                         "registry:NAME@champion, registry:NAME@latest, or the path or URI of a .keras file")

    @field_validator("fallback_base")
    @classmethod
    def _known_fallback(cls, base: Optional[str]) -> Optional[str]:
        if base is None:
            return None
        if base.startswith("registry:"):
            raise ValueError("expected a base that needs no registry: builtin:, keras: or a .keras file")
        return cls._known_base(base)

    @model_validator(mode="after")
    def _fields_fit_the_base(self) -> "ModelSpec":
        kind = self.base.partition(":")[0]
        if self.weights is not None and kind != "keras":
            raise ValueError("expected model.weights only with a keras: base (the others carry their weights)")
        if self.cut_at is not None and kind in ("builtin", "keras"):
            raise ValueError("expected model.cut_at only with a model file or registry base")
        if self.keep_head and kind in ("builtin", "keras"):
            raise ValueError("expected model.keep_head only with a model file or registry base (it continues a "
                             "trained model)")
        if self.keep_head and self.cut_at is not None:
            raise ValueError("expected model.keep_head or model.cut_at, not both: keep_head keeps every layer")
        if self.fallback_base is not None and kind != "registry":
            raise ValueError("expected model.fallback_base only with a registry: base (the others always exist)")
        return self


# --- training ------------------------------------------------------------------------------------


class AugmentSpec(_Strict):
    """Random image augmentation, applied in training only, by Keras layers inside the model (so it
    runs on the workers' cores and is inactive when the model predicts). Strengths are fractions:
    rotation of a full turn, zoom, shear and translation of the image size, contrast."""

    flip: Literal["none", "horizontal", "vertical", "both"] = Field("none", description="random flips")
    rotation: float = Field(0.0, ge=0, le=1, description="largest random rotation, as a fraction of a full turn")
    zoom: float = Field(0.0, ge=0, lt=1, description="largest random zoom, as a fraction of the image size")
    shear: float = Field(0.0, ge=0, lt=1, description="largest random shear, as a fraction of the image size")
    translate: float = Field(0.0, ge=0, lt=1, description="largest random shift, as a fraction of the image size")
    contrast: float = Field(0.0, ge=0, lt=1, description="largest random contrast change, as a fraction")

    @property
    def active(self) -> bool:
        return self.flip != "none" or any(
            getattr(self, name) > 0 for name in ("rotation", "zoom", "shear", "translate", "contrast")
        )


class FineTuneSpec(_Strict):
    """Phase 2 of fine-tuning: after `after_epoch`, unfreeze the top of the base and go on at a
    lower learning rate (BatchNorm layers stay frozen and in inference mode)."""

    after_epoch: int = Field(ge=1, description="the last epoch of phase 1; phase 2 starts after it")
    unfreeze_top: Union[Literal["all"], Annotated[int, Field(ge=1)]] = Field(
        "all", description="layers with weights at the top of the base to unfreeze")
    learning_rate_scale: float = Field(0.1, gt=0, le=1, description="phase 2's learning rate, as a fraction of phase 1's")


REGRESSION_LOSSES = ("mean_squared_error", "mse", "mean_absolute_error", "mae", "huber", "log_cosh",
                     "mean_squared_logarithmic_error", "msle", "mean_absolute_percentage_error", "mape")
REGRESSION_METRICS = ("mean_absolute_error", "mae", "mean_squared_error", "mse", "mean_absolute_percentage_error",
                      "mape", "mean_squared_logarithmic_error", "msle")


class TrainSpec(_Strict):
    epochs: int = Field(10, ge=1, description="epochs each trial trains at most")
    batch_size: int = Field(64, ge=1, description="global batch, divided among the workers")
    optimizer: str = Field("adam", description=(
        "a Keras optimizer name (adam, adamw, sgd, rmsprop, ...), or cg | lbfgs: full-batch conjugate gradient "
        "or L-BFGS (scipy.optimize.minimize over the whole training split; data held in memory)"))
    optimizer_args: dict[str, Any] = Field({}, description=(
        "the optimizer's own arguments, e.g. momentum; for cg and lbfgs: iterations (per epoch, default 20), "
        "gtol, and for lbfgs maxcor and ftol"))
    learning_rate: float = Field(1e-3, gt=0, description="the (peak) learning rate")
    learning_rate_schedule: Literal["constant", "cosine", "exponential", "step"] = Field(
        "constant", description="how the learning rate changes from epoch to epoch")
    warmup_epochs: int = Field(0, ge=0, description="epochs of linear warm-up from learning_rate / (warmup_epochs + 1)")
    decay_rate: float = Field(0.9, gt=0, le=1, description="exponential: factor per epoch; step: factor per step")
    step_epochs: int = Field(5, ge=1, description="step: epochs between drops")
    weight_decay: float = Field(0.0, ge=0, description="decoupled weight decay of the optimizer")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of crossentropy losses")
    clipnorm: Optional[float] = Field(None, gt=0, description="clip each gradient to this norm")
    mixed_precision: bool = Field(False, description="compute in float16 with float32 weights (GPUs only)")
    jit_compile: bool = Field(False, description="compile the training step with XLA (GPUs only)")
    loss: str = Field("sparse_categorical_crossentropy", description="a Keras loss")
    metrics: list[str] = Field(["accuracy"], description="Keras metrics reported every epoch, for training and validation (val_*)")
    augment: AugmentSpec = Field(AugmentSpec(), description="random image augmentation in training")
    fine_tune: Optional[FineTuneSpec] = Field(None, description="phase 2: unfreeze the base and go on at a lower rate")

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, name: str) -> str:
        if name.lower() not in keras_names.OPTIMIZERS + FULL_BATCH_OPTIMIZERS:
            raise ValueError(keras_names.unknown_name_message("optimizer", name, keras_names.OPTIMIZERS)
                             + f"; or a full-batch method: {', '.join(FULL_BATCH_OPTIMIZERS)}")
        return name.lower()

    @field_validator("optimizer_args")
    @classmethod
    def _own_arguments(cls, arguments: dict) -> dict:
        taken = {"learning_rate": "train.learning_rate", "weight_decay": "train.weight_decay",
                 "clipnorm": "train.clipnorm"}
        for name in arguments:
            if name in taken:
                raise ValueError(f"expected {taken[name]} rather than optimizer_args.{name}")
        return arguments

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, name: str) -> str:
        if name not in keras_names.LOSSES:
            raise ValueError(keras_names.unknown_name_message("loss", name, keras_names.LOSSES))
        return name

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, names: list[str]) -> list[str]:
        for name in names:
            if name not in keras_names.METRICS:
                raise ValueError(keras_names.unknown_name_message("metric", name, keras_names.METRICS))
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"expected each metric once; {', '.join(repeated)} is listed more than once: "
                             "remove the repeat")
        return names


# --- search --------------------------------------------------------------------------------------


class AshaScheduler(_Strict):
    """Asynchronous successive halving: stops the weaker trials at each rung."""

    type: Literal["asha"] = Field(description="asha")
    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it may be stopped")
    reduction_factor: float = Field(3, gt=1, description="1 in reduction_factor trials goes on at each rung; rungs "
                                                         "at grace_period x reduction_factor^k epochs")
    brackets: int = Field(1, ge=1, description="brackets of successive halving (more: asynchronous HyperBand)")


class HyperbandScheduler(_Strict):
    """Asynchronous HyperBand: ASHA over several brackets of grace periods (stop-only)."""

    type: Literal["hyperband"] = Field(description="hyperband")
    grace_period: int = Field(1, ge=1, description="epochs every trial of the first bracket runs before it may be stopped")
    reduction_factor: float = Field(3, gt=1, description="1 in reduction_factor trials goes on at each rung")
    brackets: int = Field(3, ge=1, description="brackets, each with its first rung reduction_factor times later")


class MedianScheduler(_Strict):
    """Median stopping rule: stops a trial below the median of the others at the same epoch."""

    type: Literal["median"] = Field(description="median")
    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it may be stopped")
    min_samples_required: int = Field(3, ge=1, description="trials that must have reached an epoch before any stops there")


class PbtScheduler(_Strict):
    """Population-based training: every `perturbation_interval` epochs, a trial in the bottom
    quantile copies the weights (checkpoint) and configuration of one in the top quantile and
    perturbs the mutated entries (x0.8 or x1.2, or a fresh sample with `resample_probability`).
    `search.num_samples` is the population."""

    type: Literal["pbt"] = Field(description="pbt")
    perturbation_interval: int = Field(2, ge=1, description="epochs between exploit/explore steps")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="bottom and top fraction of the population")
    resample_probability: float = Field(0.25, ge=0, le=1, description="chance a mutated value is drawn anew")
    mutate: Optional[list[str]] = Field(None, description=(
        "search.space entries PBT perturbs; default: every uniform, loguniform, quniform and randint entry "
        "without `when`. Other entries are drawn once per trial and copied on exploit"))


class NoScheduler(_Strict):
    """Every trial runs all its epochs."""

    type: Literal["none"] = Field(description="none")


Scheduler = Annotated[
    Union[AshaScheduler, HyperbandScheduler, MedianScheduler, PbtScheduler, NoScheduler],
    Field(discriminator="type"),
]


class SearchSpec(_Strict):
    metric: str = Field("val_accuracy", description="the reported metric that ranks trials, e.g. val_accuracy, val_loss")
    mode: Literal["max", "min"] = Field("max", description="max: higher metric is better; min: lower is better")
    num_samples: int = Field(1, ge=1, description="configurations sampled (each over the whole grid, if the space has grid entries)")
    algorithm: Literal["random", "grid", "tpe"] = Field("random", description=(
        "random: each trial samples the space (grid entries walked); grid: a space of grid entries only, "
        "walked num_samples times; tpe: Optuna's TPE proposes each trial from the results so far"))
    startup_trials: Optional[int] = Field(None, ge=1, description=(
        "tpe: trials proposed at random before TPE models the results; default num_samples // 3, "
        "between 3 and 10"))
    scheduler: Scheduler = Field(AshaScheduler(type="asha"), description=(
        "what stops weak trials early: asha, hyperband, median, pbt or none (a name, or {type: ..., options})"))
    space: dict[str, Any] = Field({}, description=(
        "dotted paths under model. or train. -> a domain (choice, grid, uniform, loguniform, randint, quniform) "
        "or a fixed value"))

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_by_name(cls, value: Any) -> Any:
        # `scheduler: none` reads better than `scheduler: {type: none}`; accept both.
        return {"type": value} if isinstance(value, str) else value


# --- resources -----------------------------------------------------------------------------------


class ResourcesSpec(_Strict):
    """What each trial asks of the cluster. Trial concurrency follows from it and the cluster."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers per trial")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs each worker reserves")
    use_gpu: bool = Field(False, description="give each worker GPUs")
    gpus_per_worker: float = Field(1, gt=0, description="used only with use_gpu: true")
    max_concurrent_trials: Union[Literal["auto"], Annotated[int, Field(ge=1)]] = Field(
        "auto", description="trials at once; auto: as many as the cluster's CPUs, GPUs and memory hold")
    max_failures: int = Field(2, ge=-1, description="restarts of a trial from its checkpoint; -1: unlimited")
    data_cpus: Union[Literal["auto"], Annotated[float, Field(ge=0)]] = Field(
        "auto",
        description=(
            "CPUs each trial leaves free for Ray Data to read and convert streaming data; "
            "auto: 1 when the data streams, 0 when it is held in memory"
        ),
    )
    executor: Literal["auto", "ray_train", "in_trial"] = Field(
        "auto",
        description=(
            "ray_train: each trial is a Ray Train run; in_trial: the same per-worker loop runs inside "
            "the Tune trial (one worker only, no Train start-up cost); auto: in_trial for one worker"
        ),
    )

    @field_validator("max_concurrent_trials", mode="before")
    @classmethod
    def _auto_or_count(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError("expected 'auto' (computed from the cluster) or a whole number >= 1")


# --- tracking ------------------------------------------------------------------------------------


class TrackingSpec(_Strict):
    """Where trials are recorded besides the run folder (finetune.tracking)."""

    tensorboard: Union[Literal["auto"], bool] = Field("auto", description=(
        "each trial writes its scalars and TensorBoard's HParams data under <run>/tensorboard/<trial id>/, so "
        "`tensorboard --logdir <run>` compares trials; auto: when the tensorboard package is installed and "
        "the run folder is local (pip install 'finetune[tensorboard]')"))
    mlflow: Optional[str] = Field(None, description=(
        "an MLflow tracking URI (sqlite:///path/mlflow.db, http://host:5000), or the path of an SQLite file "
        "(relative to the job file): each trial becomes an "
        "MLflow run with its parameters and per-epoch metrics, under a parent run for the search that holds "
        "the best model (pip install 'finetune[mlflow]')"))
    mlflow_experiment: Optional[str] = Field(None, description="the MLflow experiment; default: the job's name")


# --- the model registry and promotion ---------------------------------------------------------------


class RegistrySpec(_Strict):
    """Where registered models go, and how they are protected. Keys come from the environment only:
    FINETUNE_SIGNING_KEY (or FINETUNE_SIGNING_KEY_FILE), FINETUNE_ENCRYPTION_KEY (or _FILE)."""

    path: Optional[str] = Field(None, description=(
        "a folder (relative to the job file) or a pyarrow URI (s3://, gs://); default: FINETUNE_REGISTRY, "
        "else <storage_path>/registry"))
    encrypt: bool = Field(False, description=(
        "store model files encrypted at rest (AES-256-GCM, key from FINETUNE_ENCRYPTION_KEY)"))
    require_signature: bool = Field(False, description=(
        "refuse a registry model whose manifest is unsigned or not signed with FINETUNE_SIGNING_KEY"))


class PromoteSpec(_Strict):
    """The champion/challenger gate. After a run its best model (the challenger) is registered as a new
    version, and it becomes the champion only if it meets min_value, beats the champion by at least
    min_delta on the same held-out rows, and no class's recall drops by more than max_class_drop."""

    metric: Optional[str] = Field(None, description=(
        "test_loss or test_<a train.metrics entry>, measured on the held-out rows; default: search.metric "
        "with test_ for val_"))
    mode: Literal["auto", "max", "min"] = Field("auto", description="auto: min for losses and errors, else max")
    min_delta: float = Field(0.0, ge=0, description=(
        "how much better than the champion the challenger must be (a tie never promotes)"))
    min_value: Optional[float] = Field(None, description="the value the challenger must reach, champion or not")
    max_class_drop: Optional[float] = Field(None, ge=0, le=1, description=(
        "the most any class's recall may fall below the champion's (classification)"))
    holdout: Optional[str] = Field(None, description=(
        "a pinned data source (file, folder or URI, read like dataset.source) to judge both models on, "
        "instead of the run's test split; it should not change from night to night"))
    alias: str = Field("champion", description="the alias the gate moves")


# --- the job -------------------------------------------------------------------------------------


class Job(_Strict):
    name: str = Field(json_schema_extra=NAME_SCHEMA, description=(
        "names the run folder, <storage_path>/<name>/<run id>/, and the registry entry: letters, digits, "
        "'_', '-', '.'"))
    seed: int = Field(0, ge=0, le=2**32 - 1, description=(
        "the experiment seed (NumPy's range: 0 to 2**32 - 1); every trial's seed and every split derive from it"))
    storage_path: str = Field("runs", description=(
        "where runs go, <storage_path>/<name>/<run id>/: a folder (relative to the job file; runs/ of the "
        "working directory when unset) or a pyarrow URI (s3://, gs://)"))
    dataset: DatasetSpec = Field(DatasetSpec(), description="where the data is and how to read and split it")
    model: ModelSpec = Field(ModelSpec(), description="the base model and the new head")
    train: TrainSpec = Field(TrainSpec(), description="how each trial trains")
    search: SearchSpec = Field(SearchSpec(), description="the metric, the search space and the scheduler")
    resources: ResourcesSpec = Field(ResourcesSpec(), description="what each trial asks of the cluster")
    tracking: TrackingSpec = Field(TrackingSpec(), description="TensorBoard and MLflow records of the trials")
    registry: Optional[RegistrySpec] = Field(None, description=(
        "the model registry: a folder or URI, or {path, encrypt, require_signature}; a job with this "
        "or promote: registers its best model as a new version"))
    registry_name: Optional[str] = Field(None, json_schema_extra=NAME_SCHEMA,
                                         description="the model's name in the registry (default: name)")
    promote: Optional[PromoteSpec] = Field(None, description=(
        "the champion/challenger gate run after the search (finetune nightly uses it with defaults)"))

    @field_validator("registry", mode="before")
    @classmethod
    def _registry_path(cls, value: Any) -> Any:
        # `registry: s3://bucket/models` reads better than `registry: {path: s3://bucket/models}`.
        return {"path": value} if isinstance(value, str) else value

    @property
    def model_name(self) -> str:
        """The name the job's models have in the registry."""
        return self.registry_name or self.name

    @property
    def registers(self) -> bool:
        """Whether a run of this job registers its best model."""
        return self.registry is not None or self.promote is not None

    @field_validator("name", "registry_name")
    @classmethod
    def _name_is_a_folder(cls, name: str | None) -> str | None:
        problem = None if name is None else name_problem(name)
        if problem is not None:
            raise ValueError(problem)
        return name

    @property
    def executor(self) -> str:
        """The executor this job's trials use, with `auto` resolved."""
        if self.resources.executor != "auto":
            return self.resources.executor
        return "in_trial" if self.resources.num_workers == 1 else "ray_train"


def reported_metrics(metrics: list[str]) -> list[str]:
    """The per-epoch metrics every trial reports, for training and validation."""
    names = ["loss", *metrics]
    return names + [f"val_{n}" for n in names]


def scheduler_types() -> dict[str, type[BaseModel]]:
    """`search.scheduler.type` -> its model, from the `Scheduler` union itself."""
    members = get_args(get_args(Scheduler)[0])
    return {get_args(m.model_fields["type"].annotation)[0]: m for m in members}
