"""TensorFlow work of the driver's, done in a Ray worker: the pre-flight training step before a
run, the test evaluation of the best model after it, and the promotion gate's judging of the best
model and the champion on the same rows. The driver itself never imports
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
            f"{str(error).splitlines()[0]}. Check that the base takes inputs of this shape (dataset.image_size, "
            "dataset.channels, dataset.features), that train.loss fits the labels (sparse_categorical_crossentropy "
            "for class indices), and that model.task matches the label (classification or regression)."
        ) from None


def evaluate_in_worker(model_path: str, job_dict: dict, test: Split | StreamSplit, num_classes: int,
                       input_shape: tuple[int, ...]) -> tuple[dict, dict]:
    """The best model, loaded as any Keras user would load it, scored on the held-out test split.
    Only the test split travels here, not the whole data set. Returns its metrics and, for the
    report, what the driver cannot compute without the model: the confusion matrix
    (classification) or the true and predicted values (regression; `finetune.report` plots them)."""
    import keras
    import numpy as np

    from finetune.optimization import encode_labels, label_encoding

    job = Job.model_validate(job_dict)
    with tempfile.TemporaryDirectory() as directory:
        local = storage.fetch_to_local(model_path, os.path.join(directory, os.path.basename(model_path)))
        model = keras.models.load_model(local)
    encoding = label_encoding(job.train.loss, job.model.task)
    details = PredictionTally(job.model.task, encoding, num_classes)
    if isinstance(test, Split):
        labels = encode_labels(test.labels, encoding, num_classes)
        scores = model.evaluate(test.features, labels, batch_size=256, verbose=0, return_dict=True)
        details.add(test.labels, model.predict(test.features, batch_size=256, verbose=0))
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
        for batch in test.dataset.iter_batches(batch_size=256, batch_format="numpy"):
            details.add(np.asarray(batch["label"]), model.predict(batch["features"], verbose=0))
    return {name: float(value) for name, value in scores.items()}, details.result()


class PredictionTally:
    """The test split's predictions, gathered batch by batch: a confusion matrix of counts (rows:
    true class, columns: predicted class), or for regression up to MAX_POINTS (true, predicted)
    pairs, evenly spaced over the split."""

    MAX_POINTS = 5000

    def __init__(self, task: str, encoding: str, num_classes: int):
        import numpy as np

        self.task, self.encoding, self.num_classes = task, encoding, num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.true: list[float] = []
        self.predicted: list[float] = []

    def add(self, labels, outputs) -> None:
        import numpy as np

        outputs = np.asarray(outputs, dtype=np.float64)
        if self.task == "regression":
            self.true.extend(np.asarray(labels, dtype=np.float64).ravel().tolist())
            self.predicted.extend(outputs.reshape(len(outputs), -1)[:, 0].tolist())
            return
        if self.encoding == "binary":
            predicted = (outputs.reshape(-1) >= 0.5).astype(np.int64)
        else:
            predicted = outputs.reshape(len(outputs), -1).argmax(axis=1)
        np.add.at(self.matrix, (np.asarray(labels, dtype=np.int64).ravel(), predicted), 1)

    def result(self) -> dict:
        if self.task == "regression":
            step = max(1, len(self.true) // self.MAX_POINTS)
            return {"kind": "residuals", "true": self.true[::step], "predicted": self.predicted[::step],
                    "rows": len(self.true)}
        return {"kind": "confusion_matrix", "counts": self.matrix.tolist()}


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
