"""Bases, heads, freezing, the two fine-tuning phases and every optimizer, on real tiny models and
real data (digits, iris), in this process."""

from __future__ import annotations

import json
import math
import os

import keras
import numpy as np
import pytest

from finetune.data import LoadedData, Split, feature_statistics, load_data
from finetune.errors import JobError, UserError
from finetune.job import validate_job_dict
from finetune.keras_names import OPTIMIZERS
from finetune.models import base_layers_with_weights, create_model, parameter_counts
from finetune.optimization import create_optimizer, learning_rate_at
from finetune.evaluation import preflight
from finetune.train_loop import EpochTrainer


def make_job(**sections):
    return validate_job_dict({"name": "t", "seed": 0, **sections})


@pytest.fixture(scope="module")
def digits():
    return load_data(make_job().dataset, seed=0)


@pytest.fixture(scope="module")
def digits_rgb32(digits):
    """Digits upsampled to 32x32 and repeated to 3 channels, values 0..255: an image size Keras
    Applications accept."""
    def grow(split):
        images = np.kron(split.features[..., 0], np.ones((4, 4), dtype=np.float32)) * 255
        return Split(np.repeat(images[..., None], 3, axis=-1)[:256], split.labels[:256])

    train, validation = grow(digits.train), grow(digits.validation)
    mean, variance = feature_statistics(train.features)
    return LoadedData(train, validation, None, digits.classes, (32, 32, 3), mean, variance)


def trained_digits_model(tmp_path, digits, epochs=2) -> str:
    job = make_job(train={"epochs": epochs, "learning_rate": 3e-3})
    trainer = EpochTrainer(job, digits, seed=0, rank=0, world_size=1)
    for epoch in range(1, epochs + 1):
        trainer.train_epoch(epoch)
    path = str(tmp_path / "pretrained.keras")
    trainer.model.save(path)
    return path


# --- bases ---------------------------------------------------------------------------------------


def test_builtin_sizes_are_fields(digits):
    model = create_model(make_job(model={"filters": [8, 16]}), digits)
    convs = [layer for layer in model.get_layer("base").layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [8, 16]
    iris = load_data(make_job(dataset={"source": "sklearn:iris"}).dataset, seed=0)
    mlp = create_model(make_job(dataset={"source": "sklearn:iris"}, model={"base": "builtin:mlp", "base_units": [12, 6]}), iris)
    assert [d.units for d in mlp.get_layer("base").layers if isinstance(d, keras.layers.Dense)] == [12, 6]


def test_small_cnn_hands_a_small_map_to_the_head_flattened(digits):
    base = create_model(make_job(), digits).get_layer("base")
    assert [type(layer).__name__ for layer in base.layers[1:]] == ["Conv2D", "Conv2D", "MaxPooling2D", "Conv2D", "Flatten"]
    assert tuple(base.output.shape[1:]) == (4 * 4 * 64,)  # 8x8 digits, pooled to 4x4, 64 filters


def test_keras_application_without_weights_builds_and_trains(digits_rgb32):
    job = make_job(model={"base": "keras:MobileNetV3Small", "weights": "none", "head": {"units": [16]}},
                   train={"epochs": 1, "batch_size": 64})
    trainer = EpochTrainer(job, digits_rgb32, seed=0, rank=0, world_size=1)
    metrics = trainer.train_epoch(1)
    assert math.isfinite(metrics["loss"]) and metrics["trainable_params"] > 100_000


def test_keras_application_from_a_local_weights_file(tmp_path, digits_rgb32):
    source = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3))
    source.save_weights(tmp_path / "mobilenet.weights.h5")
    job = make_job(model={"base": "keras:MobileNetV3Small", "weights": str(tmp_path / "mobilenet.weights.h5")})
    model = create_model(job, digits_rgb32)
    inner = next(layer for layer in model.get_layer("base").layers if isinstance(layer, keras.Model))
    for expected, loaded in zip(source.get_weights(), inner.get_weights()):
        np.testing.assert_array_equal(expected, loaded)


def test_keras_application_preprocessing_matches_keras(digits_rgb32):
    """Each family's preprocess_input, rebuilt from standard layers so the saved model loads safely."""
    from finetune.models import application_preprocessing

    images = digits_rgb32.train.features[:4] * np.array([1.0, 0.7, 0.4], dtype=np.float32)
    for name, module in (("ResNet50", keras.applications.resnet), ("MobileNetV2", keras.applications.mobilenet_v2),
                         ("DenseNet121", keras.applications.densenet)):
        inputs = keras.Input((32, 32, 3))
        ours = keras.Model(inputs, application_preprocessing(name, inputs))(images)
        np.testing.assert_allclose(np.asarray(ours), module.preprocess_input(images.copy()), rtol=1e-5, atol=1e-3)


def test_imagenet_weights_without_network_is_a_clear_error(digits_rgb32, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(os.path.join(os.getcwd(), "no-such-cache-dir")))
    with pytest.raises(UserError, match="model.weights: could not get the imagenet weights"):
        create_model(make_job(model={"base": "keras:MobileNetV3Small", "weights": "imagenet"}), digits_rgb32)


def test_model_file_base_cut_at_a_layer(tmp_path, digits):
    path = trained_digits_model(tmp_path, digits, epochs=1)
    job = make_job(model={"base": path, "cut_at": "head_dense0", "head": {"units": [8]}})
    model = create_model(job, digits)
    assert model.get_layer("base").output.shape[-1] == 64  # head_dense0 of the trained model
    default = create_model(make_job(model={"base": path}), digits)
    trained = keras.models.load_model(path)
    assert default.get_layer("base").output.shape == trained.layers[-2].output.shape


def test_model_file_bad_inputs(tmp_path, digits):
    path = trained_digits_model(tmp_path, digits, epochs=1)
    with pytest.raises(UserError, match="model.cut_at: no layer 'nope'.*head_dense0"):
        create_model(make_job(model={"base": path, "cut_at": "nope"}), digits)
    with pytest.raises(UserError, match="model.base: no model file"):
        create_model(make_job(model={"base": str(tmp_path / "missing.keras")}), digits)
    (tmp_path / "text.keras").write_text("not a model")
    with pytest.raises(UserError, match="is not a Keras 3 model file"):
        create_model(make_job(model={"base": str(tmp_path / "text.keras")}), digits)
    iris = load_data(make_job(dataset={"source": "sklearn:iris"}).dataset, seed=0)
    with pytest.raises(UserError, match=r"takes inputs of shape \(8, 8, 1\), but the data has shape \(4,\)"):
        create_model(make_job(dataset={"source": "sklearn:iris"}, model={"base": path}), iris)


def test_model_file_asking_for_unsafe_deserialisation_is_refused(tmp_path, digits):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    unsafe = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(x)))
    unsafe.save(tmp_path / "unsafe.keras")
    with pytest.raises(UserError, match="unsafe deserialisation"):
        create_model(make_job(model={"base": str(tmp_path / "unsafe.keras")}), digits)


def test_registry_latest_and_run_id(tmp_path, digits):
    """Runs by name: the newest finished run or one run id, each checked against the manifest its
    run wrote before Keras loads it."""
    import shutil

    from finetune.registry.names import parse_reference
    from finetune.registry.runs import run_dir_of, run_model_bytes, write_run_manifest

    path = trained_digits_model(tmp_path, digits, epochs=1)
    for run_id in ("20260101-000000-aaaa", "20260102-000000-bbbb"):
        run_dir = tmp_path / "runs" / "pre" / run_id
        run_dir.mkdir(parents=True)
        shutil.copy(path, run_dir / "model.keras")
        (run_dir / "summary.json").write_text(json.dumps({"model_path": str(run_dir / "model.keras")}))
        write_run_manifest(str(run_dir), "pre")
    (tmp_path / "runs" / "pre" / "20260103-000000-cccc").mkdir()  # unfinished: no summary
    storage_path = str(tmp_path / "runs")
    assert run_dir_of(parse_reference("registry:pre@latest"), storage_path).endswith("bbbb")
    assert run_dir_of(parse_reference("registry:pre@20260101-000000-aaaa"), storage_path).endswith("aaaa")
    with pytest.raises(UserError, match="no finished run of 'other'"):
        run_dir_of(parse_reference("registry:other@latest"), storage_path)

    model = create_model(make_job(model={"base": "registry:pre@latest", "cut_at": "base"},
                                  storage_path=storage_path), digits)
    assert model.get_layer("base").count_params() > 0
    tampered = tmp_path / "runs" / "pre" / "20260102-000000-bbbb" / "model.keras"
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 1
    tampered.write_bytes(bytes(data))
    with pytest.raises(UserError, match="model.keras does not match its manifest"):
        run_model_bytes(str(tampered.parent))
    with pytest.raises(UserError, match="has no champion"):
        create_model(make_job(model={"base": "registry:pre@champion"}, storage_path=storage_path), digits)


# --- freezing and phases -------------------------------------------------------------------------


def test_freeze_modes(tmp_path, digits):
    path = trained_digits_model(tmp_path, digits, epochs=1)
    counts = {}
    for name, freeze in (("none", "none"), ("all", "all"), ("top1", {"top_trainable": 1})):
        model = create_model(make_job(model={"base": path, "freeze": freeze, "head": {"units": [16]}}), digits)
        counts[name] = parameter_counts(model)["trainable_params"]
        layers = base_layers_with_weights(model)
        trainable = [layer.name for layer in layers if layer.trainable]
        if name == "all":
            assert trainable == []
        if name == "top1":
            assert trainable == [layers[-1].name]
    assert counts["all"] < counts["top1"] < counts["none"]


def test_phase_two_unfreezes_the_top_and_lowers_the_learning_rate(tmp_path, digits):
    path = trained_digits_model(tmp_path, digits, epochs=1)
    job = make_job(model={"base": path, "freeze": "all", "head": {"units": [16]}},
                   train={"epochs": 3, "learning_rate": 1e-2,
                          "fine_tune": {"after_epoch": 1, "unfreeze_top": 2, "learning_rate_scale": 0.1}})
    trainer = EpochTrainer(job, digits, seed=0, rank=0, world_size=1)
    epochs = [trainer.train_epoch(e) for e in (1, 2, 3)]
    assert [m["phase"] for m in epochs] == [1, 2, 2]
    assert epochs[1]["trainable_params"] > epochs[0]["trainable_params"]
    assert epochs[0]["frozen_params"] > epochs[1]["frozen_params"]
    assert epochs[0]["learning_rate"] == pytest.approx(1e-2) and epochs[1]["learning_rate"] == pytest.approx(1e-3)
    assert all(math.isfinite(m["loss"]) for m in epochs)
    # A checkpoint taken in phase 2 resumes in phase 2, with the same trainable weights.
    trainer.save(str(tmp_path), epoch=3)
    resumed = EpochTrainer(job, digits, seed=0, rank=0, world_size=1)
    assert resumed.restore(str(tmp_path)) == 3 and resumed.phase == 2
    assert parameter_counts(resumed.model) == parameter_counts(trainer.model)


def test_batch_norm_stays_frozen_when_the_base_is_unfrozen(digits_rgb32):
    job = make_job(model={"base": "keras:MobileNetV3Small", "weights": "none", "freeze": "none"})
    model = create_model(job, digits_rgb32)
    norms = [layer for layer in base_layers_with_weights(model) if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and not any(layer.trainable for layer in norms)


# --- optimisation --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def iris():
    return load_data(make_job(dataset={"source": "sklearn:iris"}).dataset, seed=0)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_trains_one_epoch(optimizer, iris):
    args = {"momentum": 0.9, "nesterov": True} if optimizer == "sgd" else {}
    job = make_job(dataset={"source": "sklearn:iris"}, model={"base": "builtin:mlp", "head": {"units": [8]}},
                   train={"epochs": 1, "batch_size": 16, "optimizer": optimizer, "optimizer_args": args,
                          "learning_rate": 1e-2})
    metrics = EpochTrainer(job, iris, seed=0, rank=0, world_size=1).train_epoch(1)
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["val_loss"])


def test_unknown_optimizer_argument_names_the_field():
    job = make_job(train={"optimizer": "adam", "optimizer_args": {"momentum": 0.9}})
    with pytest.raises(UserError, match="train.optimizer_args: momentum is not an argument of Adam; it takes:.*beta_1"):
        create_optimizer(job.train)


def test_weight_decay_and_clipnorm_reach_the_optimizer():
    optimizer = create_optimizer(make_job(train={"optimizer": "adamw", "weight_decay": 0.01, "clipnorm": 1.0}).train)
    assert optimizer.weight_decay == pytest.approx(0.01) and optimizer.clipnorm == pytest.approx(1.0)


@pytest.mark.parametrize("schedule,expected", [
    ("constant", [0.05, 0.1, 0.1, 0.1, 0.1]),
    ("cosine", [0.05, 0.1, 0.1 * 0.5 * (1 + math.cos(math.pi / 4)), 0.05, 0.1 * 0.5 * (1 + math.cos(3 * math.pi / 4))]),
    ("exponential", [0.05, 0.1, 0.05, 0.025, 0.0125]),
    ("step", [0.05, 0.1, 0.1, 0.05, 0.05]),
])
def test_learning_rate_schedules_with_warmup(schedule, expected):
    train = make_job(train={"epochs": 5, "learning_rate": 0.1, "learning_rate_schedule": schedule,
                            "warmup_epochs": 1, "decay_rate": 0.5, "step_epochs": 2}).train
    assert [learning_rate_at(train, e) for e in range(1, 6)] == pytest.approx(expected)


def test_label_smoothing_raises_the_loss_of_confident_predictions(digits):
    plain = EpochTrainer(make_job(train={"epochs": 1}), digits, seed=0, rank=0, world_size=1)
    smooth = EpochTrainer(make_job(train={"epochs": 1, "label_smoothing": 0.2}), digits, seed=0, rank=0, world_size=1)
    labels = digits.train.labels[:8]
    confident = keras.ops.one_hot(labels, 10) * 0.99 + 0.001
    assert float(np.mean(smooth.loss_fn(labels, confident))) > float(np.mean(plain.loss_fn(labels, confident)))
    assert math.isfinite(smooth.train_epoch(1)["loss"])


def test_label_smoothing_on_a_loss_without_it_is_refused(digits):
    with pytest.raises(UserError, match="train.label_smoothing"):
        preflight(make_job(train={"loss": "kl_divergence", "label_smoothing": 0.1},
                           search={"metric": "val_loss", "mode": "min"}), digits)


def test_mixed_precision_and_jit_are_refused_on_cpu_and_run_where_asked():
    with pytest.raises(JobError, match="train.mixed_precision.*use_gpu"):
        make_job(train={"mixed_precision": True})
    with pytest.raises(JobError, match="train.jit_compile.*use_gpu"):
        make_job(train={"jit_compile": True})
    # The GPU code paths themselves, exercised on this CPU (slowly, as the refusal says).
    iris = load_data(make_job(dataset={"source": "sklearn:iris"}).dataset, seed=0)
    job = make_job(dataset={"source": "sklearn:iris"}, model={"base": "builtin:mlp"},
                   train={"epochs": 1, "batch_size": 16, "mixed_precision": True, "jit_compile": True},
                   resources={"use_gpu": True})
    try:
        trainer = EpochTrainer(job, iris, seed=0, rank=0, world_size=1)
        assert trainer.model.get_layer("base").layers[-1].compute_dtype == "float16"
        assert trainer.model.get_layer("output").compute_dtype == "float32"
        assert math.isfinite(trainer.train_epoch(1)["loss"])
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_regression_task_on_diabetes():
    job = make_job(dataset={"source": "sklearn:diabetes"}, model={"base": "builtin:mlp", "task": "regression"},
                   train={"epochs": 3, "batch_size": 32, "loss": "mse", "metrics": ["mae"], "learning_rate": 1e-2},
                   search={"metric": "val_mae", "mode": "min"})
    data = load_data(job.dataset, seed=0, task="regression")
    assert data.classes == [] and data.train.labels.dtype == np.float32
    trainer = EpochTrainer(job, data, seed=0, rank=0, world_size=1)
    first, *_, last = [trainer.train_epoch(e) for e in (1, 2, 3)]
    assert last["val_mae"] < first["val_mae"]
    assert trainer.model.get_layer("output").units == 1




@pytest.mark.parametrize("module,name", [("os", "system"), ("builtins", "exec"), ("subprocess", "Popen")])
def test_a_model_file_naming_code_outside_keras_is_refused_and_runs_nothing(tmp_path, digits, module, name):
    """A .keras file edited so that a layer names a function of another module: refused before
    Keras reads it, and nothing it names runs."""
    import zipfile

    inputs = keras.Input((8, 8, 1))
    keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs))).save(tmp_path / "plain.keras")
    with zipfile.ZipFile(tmp_path / "plain.keras") as archive:
        files = {n: archive.read(n) for n in archive.namelist()}
    config = json.loads(files["config.json"])
    marker = tmp_path / "ran"
    config["config"]["layers"][1].update(module=module, class_name=name, registered_name=None,
                                         config={"args": [f"touch {marker}"]})
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(tmp_path / "hostile.keras", "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    with pytest.raises(UserError, match=f"names code outside Keras \\({module}\\)"):
        create_model(make_job(model={"base": str(tmp_path / "hostile.keras")}), digits)
    assert not marker.exists()
