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
            f"{str(error).splitlines()[0]}. Check that the base takes inputs of this shape (dataset.image_size, "
            "dataset.channels, dataset.features), that train.loss fits the labels (sparse_categorical_crossentropy "
            "for class indices), and that model.task matches the label (classification or regression)."
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
