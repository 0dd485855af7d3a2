"""TensorFlow work of the driver's, done in a Ray worker: the pre-flight training step before a
run, and the test evaluation of the best model after it. The driver itself never imports
TensorFlow; a worker has it imported already (or imports it once), on any node of a cluster."""

from __future__ import annotations

import math
import os
import tempfile

from finetune import storage
from finetune.data import LoadedData, Split, StreamSplit
from finetune.errors import UserError
from finetune.job import Job


def preflight_in_worker(job_dict: dict, data_handle) -> None:
    """`preflight` on a few rows of the run's data: one real step before any trial."""
    import ray

    preflight(Job.model_validate(job_dict), ray.get(data_handle.ref))


def preflight(job: Job, data: LoadedData) -> None:
    """One real training step and one evaluation on a few rows, in the driver, before any trial:
    a model that does not fit the data, or a loss that does not fit the labels, fails here with a
    clear message instead of in every trial."""
    from finetune.train_loop import EpochTrainer

    few = data.head(max(2, min(job.train.batch_size, 64)))
    try:
        trainer = EpochTrainer(job, few, seed=job.seed, rank=0, world_size=1)
        trainer.train_epoch(1)
    except UserError:
        raise
    except (ValueError, TypeError) as error:
        raise UserError(
            f"model and data do not fit together ({job.model.base} on data of shape "
            f"{data.input_shape} with {data.num_classes} classes, loss {job.train.loss}): "
            f"{str(error).splitlines()[0]}"
        ) from None


def evaluate_in_worker(model_path: str, job_dict: dict, test: Split | StreamSplit, num_classes: int,
                       input_shape: tuple[int, ...]) -> dict:
    """The best model, loaded as any Keras user would load it, scored on the held-out test split.
    Only the test split travels here, not the whole data set."""
    import keras

    from finetune.optimization import encode_labels, label_encoding

    job = Job.model_validate(job_dict)
    with tempfile.TemporaryDirectory() as directory:
        local = storage.fetch_to_local(model_path, os.path.join(directory, os.path.basename(model_path)))
        model = keras.models.load_model(local)
    encoding = label_encoding(job.train.loss, job.model.task)
    if isinstance(test, Split):
        scores = model.evaluate(test.features, encode_labels(test.labels, encoding, num_classes), batch_size=256, verbose=0, return_dict=True)
    else:
        import tensorflow as tf

        def batches():
            for batch in test.dataset.iter_batches(batch_size=256, batch_format="numpy"):
                yield batch["features"], encode_labels(batch["label"], encoding, num_classes)

        label_spec = tf.TensorSpec(
            (None, num_classes) if encoding == "one_hot" else (None, 1) if encoding in ("binary", "value") else (None,),
            tf.int32 if encoding == "sparse" else tf.float32)
        batched = tf.data.Dataset.from_generator(batches, output_signature=(
            tf.TensorSpec((None, *input_shape), tf.float32), label_spec))
        # A known length, so Keras does not warn that the generator "ran out of data".
        batched = batched.apply(tf.data.experimental.assert_cardinality(math.ceil(len(test) / 256)))
        scores = model.evaluate(batched, verbose=0, return_dict=True)
    return {name: float(value) for name, value in scores.items()}


def judge_in_worker(models: list[dict], job_dict: dict, rows: Split | StreamSplit, classes: list[str] | None,
                    label_map: list[int] | None = None) -> list[dict]:
    """The gate's measurements: each model on the very same held-out rows, compiled alike with the
    job's loss and metrics, with each class's recall. A registry model (the champion) is verified
    against its manifest, and decrypted, before Keras loads it.

    models: {"file": path} (the run's own model) or {"base": "registry:NAME@v3"}.
    label_map: for a pinned holdout, its label index -> the run's class index.
    Returns, per model: {"metrics": {"test_<name>": value}, "recall": {class: recall} | None}."""
    import numpy as np

    from finetune.models import load_base_model, load_model_file
    from finetune.optimization import encode_labels, label_encoding

    job = Job.model_validate(job_dict)
    features, labels = _held_out_arrays(rows)
    if label_map is not None:
        labels = np.asarray(label_map, dtype=np.int32)[labels]
    num_classes = len(classes) if classes else 1
    encoding = label_encoding(job.train.loss, job.model.task)
    targets = encode_labels(labels, encoding, num_classes)
    results = []
    for entry in models:
        model = (load_model_file(entry["file"], "the run's model") if "file" in entry
                 else load_base_model(entry["base"], job, "the champion"))
        model.compile(loss=job.train.loss, metrics=list(job.train.metrics))
        scores = model.evaluate(features, targets, batch_size=256, verbose=0, return_dict=True)
        recall = None
        if classes:
            predicted = model.predict(features, batch_size=256, verbose=0)
            predicted = (predicted[:, 0] > 0.5).astype(np.int32) if predicted.shape[-1] == 1 else predicted.argmax(-1)
            recall = {name: float(np.mean(predicted[labels == index] == index))
                      for index, name in enumerate(classes) if np.any(labels == index)}
        results.append({"metrics": {f"test_{name}": float(value) for name, value in scores.items()}, "recall": recall})
    return results


def _held_out_arrays(rows: Split | StreamSplit):
    """The held-out rows in memory, once, for every model judged on them."""
    import numpy as np

    if isinstance(rows, Split):
        return rows.features, rows.labels
    features, labels = [], []
    for batch in rows.dataset.iter_batches(batch_size=1024, batch_format="numpy"):
        features.append(np.asarray(batch["features"], np.float32))
        labels.append(np.asarray(batch["label"]))
    return np.concatenate(features), np.concatenate(labels)
