"""The job file: its schema, loading (`extends:`, `--set`) and validation.

The pydantic models below are the contract. Every field has a type and a default, so a job states
only what differs, and `finetune validate` reports every problem at once with its field path.
Nothing here imports Ray or TensorFlow: validating a job takes milliseconds.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from finetune import keras_names, search_space
from finetune.errors import JobError, Problem

EMBEDDED_DATASETS = ("digits", "breast_cancer", "wine", "iris", "diabetes")
BUILTIN_MODELS = ("small_cnn", "mlp")


class _Strict(BaseModel):
    """Unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


# --- dataset -------------------------------------------------------------------------------------


class SplitSpec(_Strict):
    """How rows are held out: seeded, stratified fractions (default 0.2 and 0.2), or a column whose
    values (train, validation, test) name each row's split."""

    validation: Optional[float] = Field(None, gt=0, lt=1, description="default 0.2")
    test: Optional[float] = Field(None, ge=0, lt=1, description="default 0.2")
    column: Optional[str] = None

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


FORMATS = ("parquet", "csv", "arrow", "images")


class SourceSpec(_Strict):
    """Files of one split, when train, validation and test come separately."""

    source: str = Field(min_length=1)
    format: Optional[Literal["parquet", "csv", "arrow", "images"]] = None


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
    """Where the data is and how to read it. Paths are relative to the current directory, or URIs
    that pyarrow opens (file://, s3://, gs://, hdfs://), with credentials from the environment."""

    source: Optional[str] = Field(None, description="files, a folder, a glob, a URI, or sklearn:NAME")
    format: Optional[Literal["parquet", "csv", "arrow", "images"]] = None
    label: str = "label"
    features: Optional[list[str]] = Field(None, description="default: every column but the label")
    image_column: Optional[str] = Field(None, description="a table column of image paths or encoded images")
    image_size: Optional[tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]]] = None
    channels: Optional[Literal[1, 3]] = None
    on_bad_image: Literal["error", "skip"] = "error"
    classes: Optional[list[Union[str, int]]] = Field(
        None, description="keep only rows with these labels (others are dropped), e.g. digits 0-4")
    rescale: Optional[Annotated[float, Field(gt=0)]] = None
    normalize: Union[Literal["auto"], bool] = Field("auto", description="auto: for builtin bases")
    in_memory: Union[Literal["auto"], bool] = Field("auto", description="auto: when the files are small")
    split: SplitSpec = SplitSpec()
    train: Optional[SourceSpec] = None
    validation: Optional[SourceSpec] = None
    test: Optional[SourceSpec] = None

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
    units: list[Annotated[int, Field(gt=0)]] = [64]
    dropout: float = Field(0.0, ge=0, lt=1)
    activation: str = "relu"
    batch_norm: bool = False

    _check_activation = field_validator("activation")(classmethod(lambda cls, v: _activation(v)))


class FreezeTop(_Strict):
    top_trainable: int = Field(ge=0, description="layers with weights at the top of the base left trainable")


class ModelSpec(_Strict):
    """A base (feature extractor) and a new head. Bases:

    - builtin:small_cnn, builtin:mlp: small models of our own, for tests and tabular data;
    - keras:NAME: any Keras Applications model (keras:MobileNetV3Small, keras:ResNet50...), with
      `weights: imagenet` (downloaded where the network allows), a local weights file, or none;
    - path/to/model.keras or a URI: a Keras 3 model, loaded with safe_mode, cut at `cut_at`;
    - registry:NAME@latest or registry:NAME@<run id>: the best model of an earlier run of NAME.
    """

    base: str = "builtin:small_cnn"
    weights: Optional[str] = Field(None, description="keras: bases: imagenet, none or a weights file (default imagenet)")
    cut_at: Optional[str] = Field(None, description="file bases: the layer whose output the head takes (default: drop the last layer)")
    task: Literal["classification", "regression"] = "classification"
    freeze: Union[Literal["all", "none"], FreezeTop] = Field(
        "none", description="phase 1: freeze the whole base, nothing, or all but its top layers")
    filters: list[Annotated[int, Field(gt=0)]] = Field([32, 32, 64], description="builtin:small_cnn conv filters")
    base_units: list[Annotated[int, Field(gt=0)]] = Field([64], description="builtin:mlp hidden layers")
    head: HeadSpec = HeadSpec()

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
            if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*@[A-Za-z0-9_.-]+", name):
                return base
            raise ValueError("expected registry:NAME@latest or registry:NAME@<run id>")
        if base.endswith(".keras"):
            return base
        raise ValueError("expected builtin:small_cnn, builtin:mlp, keras:<Applications model>, "
                         "registry:NAME@latest, or the path or URI of a .keras file")

    @model_validator(mode="after")
    def _fields_fit_the_base(self) -> "ModelSpec":
        kind = self.base.partition(":")[0]
        if self.weights is not None and kind != "keras":
            raise ValueError("expected model.weights only with a keras: base (the others carry their weights)")
        if self.cut_at is not None and kind in ("builtin", "keras"):
            raise ValueError("expected model.cut_at only with a model file or registry base")
        return self


# --- training ------------------------------------------------------------------------------------


class AugmentSpec(_Strict):
    """Random image augmentation, applied in training only, by Keras layers inside the model (so it
    runs on the workers' cores and is inactive when the model predicts). Strengths are fractions:
    rotation of a full turn, zoom, shear and translation of the image size, contrast."""

    flip: Literal["none", "horizontal", "vertical", "both"] = "none"
    rotation: float = Field(0.0, ge=0, le=1)
    zoom: float = Field(0.0, ge=0, lt=1)
    shear: float = Field(0.0, ge=0, lt=1)
    translate: float = Field(0.0, ge=0, lt=1)
    contrast: float = Field(0.0, ge=0, lt=1)

    @property
    def active(self) -> bool:
        return self.flip != "none" or any(
            getattr(self, name) > 0 for name in ("rotation", "zoom", "shear", "translate", "contrast")
        )


class FineTuneSpec(_Strict):
    """Phase 2 of fine-tuning: after `after_epoch`, unfreeze the top of the base and go on at a
    lower learning rate (BatchNorm layers stay frozen and in inference mode)."""

    after_epoch: int = Field(ge=1)
    unfreeze_top: Union[Literal["all"], Annotated[int, Field(ge=1)]] = Field(
        "all", description="layers with weights at the top of the base to unfreeze")
    learning_rate_scale: float = Field(0.1, gt=0, le=1)


SCHEDULES = ("constant", "cosine", "exponential", "step")
REGRESSION_LOSSES = ("mean_squared_error", "mse", "mean_absolute_error", "mae", "huber", "log_cosh",
                     "mean_squared_logarithmic_error", "msle", "mean_absolute_percentage_error", "mape")
REGRESSION_METRICS = ("mean_absolute_error", "mae", "mean_squared_error", "mse", "mean_absolute_percentage_error",
                      "mape", "mean_squared_logarithmic_error", "msle")


class TrainSpec(_Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1, description="global batch, divided among the workers")
    optimizer: str = "adam"
    optimizer_args: dict[str, Any] = Field({}, description="the optimizer's own arguments, e.g. momentum")
    learning_rate: float = Field(1e-3, gt=0)
    learning_rate_schedule: Literal["constant", "cosine", "exponential", "step"] = "constant"
    warmup_epochs: int = Field(0, ge=0, description="epochs of linear warm-up from learning_rate / (warmup_epochs + 1)")
    decay_rate: float = Field(0.9, gt=0, le=1, description="exponential: factor per epoch; step: factor per step")
    step_epochs: int = Field(5, ge=1, description="step: epochs between drops")
    weight_decay: float = Field(0.0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    clipnorm: Optional[float] = Field(None, gt=0)
    mixed_precision: bool = False
    jit_compile: bool = False
    loss: str = "sparse_categorical_crossentropy"
    metrics: list[str] = ["accuracy"]
    augment: AugmentSpec = AugmentSpec()
    fine_tune: Optional[FineTuneSpec] = None

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, name: str) -> str:
        if name.lower() not in keras_names.OPTIMIZERS:
            raise ValueError(keras_names.unknown_name_message("optimizer", name, keras_names.OPTIMIZERS))
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
        if len(set(names)) != len(names):
            raise ValueError("expected each metric once")
        return names


# --- search --------------------------------------------------------------------------------------


class AshaScheduler(_Strict):
    """Asynchronous successive halving: stops the weaker trials at each rung."""

    type: Literal["asha"]
    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it may be stopped")
    reduction_factor: float = Field(3, gt=1)
    brackets: int = Field(1, ge=1)


class HyperbandScheduler(_Strict):
    """Asynchronous HyperBand: ASHA over several brackets of grace periods (stop-only)."""

    type: Literal["hyperband"]
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(3, gt=1)
    brackets: int = Field(3, ge=1)


class MedianScheduler(_Strict):
    """Median stopping rule: stops a trial below the median of the others at the same epoch."""

    type: Literal["median"]
    grace_period: int = Field(1, ge=1)
    min_samples_required: int = Field(3, ge=1)


class NoScheduler(_Strict):
    """Every trial runs all its epochs."""

    type: Literal["none"]


Scheduler = Annotated[
    Union[AshaScheduler, HyperbandScheduler, MedianScheduler, NoScheduler],
    Field(discriminator="type"),
]


class SearchSpec(_Strict):
    metric: str = "val_accuracy"
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(1, ge=1)
    scheduler: Scheduler = AshaScheduler(type="asha")
    space: dict[str, Any] = {}

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_by_name(cls, value: Any) -> Any:
        # `scheduler: none` reads better than `scheduler: {type: none}`; accept both.
        return {"type": value} if isinstance(value, str) else value


# --- resources -----------------------------------------------------------------------------------


class ResourcesSpec(_Strict):
    """What each trial asks of the cluster. Trial concurrency follows from it and the cluster."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers per trial")
    cpus_per_worker: float = Field(1, gt=0)
    use_gpu: bool = False
    gpus_per_worker: float = Field(1, gt=0, description="used only with use_gpu: true")
    max_concurrent_trials: Union[Literal["auto"], Annotated[int, Field(ge=1)]] = "auto"
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


# --- the job -------------------------------------------------------------------------------------


class Job(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    seed: int = 0
    storage_path: str = "runs"
    dataset: DatasetSpec = DatasetSpec()
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    search: SearchSpec = SearchSpec()
    resources: ResourcesSpec = ResourcesSpec()

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


# --- loading -------------------------------------------------------------------------------------


def load_job(path: str | Path, overrides: list[str] = ()) -> Job:
    """Read a job file, resolve `extends:`, apply `--set path=value` overrides and validate."""
    path = Path(path)
    raw = read_job_dict(path)
    for override in overrides:
        dotted, value = parse_override(override)
        raw = set_path(raw, dotted, value)
    return validate_job_dict(raw, source=str(path))


def read_job_dict(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The job as a plain dict, with its `extends:` chain merged (the child wins)."""
    resolved = path.resolve()
    if resolved in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, resolved))
        raise JobError(str(path), [Problem("extends", str(path), f"expected no cycle; found {chain}")])
    if not path.is_file():
        raise JobError(str(path), [Problem("", str(path), "expected an existing job file (YAML)")])
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise JobError(str(path), [Problem("", "invalid YAML", f"expected valid YAML: {error}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise JobError(str(path), [Problem("", data, "expected a mapping of fields at the top level")])
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise JobError(str(path), [Problem("extends", parent, "expected the path of another job file")])
    base = read_job_dict(path.parent / parent, (*_seen, resolved))
    return deep_merge(base, data)


def deep_merge(base: dict, update: dict) -> dict:
    """Mappings merge key by key; anything else (lists included) in `update` replaces."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "space":
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_override(text: str) -> tuple[str, Any]:
    """`train.epochs=3` -> ("train.epochs", 3); the value is read as YAML."""
    dotted, sep, value = text.partition("=")
    if not sep or not dotted.strip():
        raise JobError(
            "--set", [Problem("--set", text, "expected PATH=VALUE, for example --set train.epochs=3")]
        )
    try:
        return dotted.strip(), yaml.safe_load(value)
    except yaml.YAMLError as error:
        raise JobError("--set", [Problem(dotted, value, f"expected a YAML value: {error}")]) from None


def split_path(dotted: str) -> list[str]:
    """Field path to keys. Search-space keys are dotted paths themselves: `search.space.train.lr`
    addresses the single key `train.lr` of `search.space`."""
    if dotted.startswith("search.space."):
        return ["search", "space", dotted[len("search.space."):]]
    return dotted.split(".")


def set_path(data: dict, dotted: str, value: Any) -> dict:
    """A copy of `data` with the field at `dotted` set to `value`, creating mappings on the way."""
    result = copy.deepcopy(data)
    node = result
    keys = split_path(dotted)
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value
    return result


def validate_job_dict(raw: dict, source: str = "<job>") -> Job:
    """A validated Job, or a JobError listing every problem with its path, value and expectation."""
    problems: list[Problem] = []
    try:
        job = Job.model_validate(raw)
    except ValidationError as error:
        job = None
        problems.extend(_problems_from(error, raw))
    problems.extend(_space_problems(raw))
    if job is not None:
        problems.extend(_cross_field_problems(job))
    if problems:
        raise JobError(source, problems)
    return job


def _cross_field_problems(job: Job) -> list[Problem]:
    """Rules that tie one field to another."""
    problems = []
    reported = reported_metrics(job.train.metrics)
    if job.search.metric not in reported:
        problems.append(Problem(
            "search.metric", job.search.metric,
            f"expected a metric the trials report: {', '.join(reported)} (add it to train.metrics)",
        ))
    grace = getattr(job.search.scheduler, "grace_period", None)
    if grace is not None and grace > job.train.epochs:
        problems.append(Problem(
            "search.scheduler.grace_period", grace,
            f"expected at most train.epochs ({job.train.epochs}); lower grace_period or raise epochs",
        ))
    if job.resources.executor == "in_trial" and job.resources.num_workers > 1:
        problems.append(Problem(
            "resources.executor", "in_trial",
            f"expected ray_train or auto with num_workers {job.resources.num_workers}: in_trial runs one worker",
        ))
    fine_tune = job.train.fine_tune
    if fine_tune is not None and fine_tune.after_epoch >= job.train.epochs:
        problems.append(Problem("train.fine_tune.after_epoch", fine_tune.after_epoch,
                                f"expected fewer than train.epochs ({job.train.epochs}), so phase 2 has epochs"))
    if fine_tune is not None and job.model.freeze == "none":
        problems.append(Problem("train.fine_tune", "phase 2 with model.freeze: none",
                                "expected model.freeze: all or {top_trainable: K}: phase 2 unfreezes what phase 1 froze"))
    if job.train.warmup_epochs >= job.train.epochs:
        problems.append(Problem("train.warmup_epochs", job.train.warmup_epochs,
                                f"expected fewer than train.epochs ({job.train.epochs})"))
    for flag in ("mixed_precision", "jit_compile"):
        if getattr(job.train, flag) and not job.resources.use_gpu:
            problems.append(Problem(f"train.{flag}", True, (
                "expected resources.use_gpu: true; on CPUs float16 math is emulated and XLA compilation of "
                "these small steps costs more than it saves, so the run would only be slower")))
    if job.model.task == "regression":
        if job.train.loss not in REGRESSION_LOSSES:
            problems.append(Problem("train.loss", job.train.loss,
                                    f"expected a regression loss with model.task regression: {', '.join(REGRESSION_LOSSES)}"))
        wrong = [m for m in job.train.metrics if m not in REGRESSION_METRICS]
        if wrong:
            problems.append(Problem("train.metrics", wrong,
                                    f"expected regression metrics with model.task regression: {', '.join(REGRESSION_METRICS)}"))
    elif job.train.loss in REGRESSION_LOSSES:
        problems.append(Problem("train.loss", job.train.loss,
                                "expected a classification loss; for a numeric target set model.task: regression"))
    if job.train.batch_size < job.resources.num_workers:
        problems.append(Problem(
            "train.batch_size", job.train.batch_size,
            f"expected at least resources.num_workers ({job.resources.num_workers}): it is the global batch",
        ))
    return problems


def _space_problems(raw: dict) -> list[Problem]:
    """Each search-space entry: a known domain with sane bounds, at a field that exists, with every
    value it can take valid for that field."""
    space = (raw.get("search") or {}).get("space") if isinstance(raw.get("search"), dict) else None
    if not isinstance(space, dict):
        return []
    problems = []
    for dotted, spec in space.items():
        where = f"search.space.{dotted}"
        try:
            domain = search_space.parse_domain(spec)
        except ValueError as error:
            problems.append(Problem(where, spec, str(error)))
            continue
        for other, _ in domain.when:
            if other not in space and _field_exists(other):
                problems.append(Problem(f"{where}.when", other, f"expected a search-space entry or a field: {_field_exists(other)}"))
        field_problem = _field_exists(dotted)
        if field_problem:
            problems.append(Problem(where, dotted, field_problem))
            continue
        for value in domain.values_to_check():
            candidate = set_path(raw, dotted, value)
            candidate.get("search", {}).pop("space", None)
            try:
                Job.model_validate(candidate)
            except ValidationError as error:
                for problem in _problems_from(error, candidate):
                    if problem.path == dotted or problem.path.startswith(dotted + "."):
                        problems.append(Problem(where, value, problem.expected))
                        break
    try:
        for dotted, what in search_space.check_conditions(space):
            problems.append(Problem(f"search.space.{dotted}.when", space[dotted].get("when"), what))
    except ValueError:
        pass  # malformed entries are reported above
    return problems


# Only these sections may vary from trial to trial: the data set is loaded and split once per run,
# and the search and resources sections describe the run itself.
SEARCHABLE_SECTIONS = ("model", "train")


def _field_exists(dotted: str) -> str | None:
    """None if `dotted` names a searchable field of the job, else what is wrong."""
    keys = dotted.split(".")
    if keys[0] not in SEARCHABLE_SECTIONS:
        return f"expected a field under {' or '.join(SEARCHABLE_SECTIONS)}: only those vary between trials"
    model: type[BaseModel] | None = Job
    for i, key in enumerate(keys):
        if model is None:
            return None  # inside a free-form mapping: any key is allowed
        fields = model.model_fields
        if key not in fields:
            return _unknown_key_message(key, list(fields), ".".join(keys[:i]) or "the job")
        model = _as_model(fields[key].annotation)
    if model is not None:
        return "expected a single field, not a whole section; name a field inside it"
    return None


def _as_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _unknown_key_message(key: str, known: list[str], parent: str) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown field {key!r} in {parent}; {hint}expected one of: {', '.join(known)}"


def _problems_from(error: ValidationError, raw: dict) -> list[Problem]:
    problems = []
    for item in error.errors():
        loc = [str(part) for part in item["loc"]]
        # Discriminated unions add the tag to the location: scheduler.asha.grace_period.
        if len(loc) >= 3 and loc[:2] == ["search", "scheduler"] and loc[2] in {"asha", "hyperband", "median", "none"}:
            loc = loc[:2] + loc[3:]
        path = ".".join(loc)
        kind = item["type"]
        got = item.get("input")
        if kind == "extra_forbidden":
            parent = ".".join(loc[:-1])
            model = _model_at(loc[:-1], raw)
            known = list(model.model_fields) if model else []
            expected = _unknown_key_message(loc[-1], known, parent or "the job")
        elif kind == "missing":
            expected = "expected this required field to be set"
            got = "nothing"
        elif kind == "union_tag_invalid":
            expected = "expected scheduler type one of: asha, hyperband, median, none"
            got = (got or {}).get("type") if isinstance(got, dict) else got
            path = "search.scheduler.type"
        else:
            message = item["msg"]
            message = re.sub(r"^Value error, ", "", message)
            message = re.sub(r"^Input should be ", "expected ", message)
            message = re.sub(r"^String should match pattern .*", "expected letters, digits, '_', '-' or '.', starting with a letter or digit", message)
            expected = message if message.startswith("expected") else f"expected {message[0].lower()}{message[1:]}"
        if isinstance(got, dict) and path == "":
            got = "the job"
        problems.append(Problem(path, got, expected))
    return problems


SCHEDULERS = {"asha": AshaScheduler, "hyperband": HyperbandScheduler, "median": MedianScheduler, "none": NoScheduler}


def _model_at(loc: list[str], raw: dict) -> type[BaseModel] | None:
    """The schema model at a location of the raw job, for listing the fields it accepts."""
    model: type[BaseModel] | None = Job
    node: Any = raw
    for key in loc:
        node = node.get(key) if isinstance(node, dict) else None
        if model is None or key not in model.model_fields:
            return None
        if key == "scheduler":
            kind = node if isinstance(node, str) else (node or {}).get("type") if isinstance(node, dict) else None
            model = SCHEDULERS.get(kind)
        else:
            model = _as_model(model.model_fields[key].annotation)
    return model


def to_yaml(job: Job) -> str:
    """The fully resolved job, as a file that reproduces it."""
    return yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)
