"""On each worker: a split becomes a tf.data pipeline of this worker's batches.

In memory, worker i takes rows i, i+N, i+2N... of a split. Streaming, Ray Train has already split
the Ray Dataset into equal shards (`streaming_split(equal=True)`), and Ray Data reads, decodes and
converts in the background while the worker trains. Either way every worker runs the same number
of training steps, since each step all-reduces gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from finetune.data.bundle import Split, StreamSplit

# Rows Ray Data hands over at once, and how many such chunks it prepares ahead of training.
CHUNK_ROWS = 8192
PREFETCH_CHUNKS = 2


@dataclass
class Batches:
    dataset: Any  # tf.data.Dataset of (features, labels) batches
    steps: int  # batches per epoch


def in_memory_batches(split: Split, rank: int, world_size: int, batch_size: int, shuffle: bool, seed: int) -> Batches:
    """This worker's rows of an in-memory split, batched. Each epoch draws a new permutation of
    row indices and gathers whole batches from it: one op per batch, not one per row (a tf.data
    shuffle buffer over the rows ran at a third of the rate)."""
    import tensorflow as tf

    rows = np.arange(rank, len(split), world_size)
    steps = math.ceil(len(rows) / batch_size)
    if not shuffle:  # evaluation: the rows in order, no per-epoch permutation to draw
        dataset = tf.data.Dataset.from_tensor_slices((split.features[rows], split.labels[rows]))
        return Batches(dataset.batch(batch_size).cache().prefetch(tf.data.AUTOTUNE), steps)
    # Training shards must be equal: at most N-1 rows of the split are left out.
    rows = rows[: len(split) // world_size]
    features, labels = tf.constant(split.features[rows]), tf.constant(split.labels[rows])
    count, steps = len(rows), math.ceil(len(rows) / batch_size)
    epochs = iter(range(1 << 62))

    def order():
        yield np.random.default_rng([seed, next(epochs)]).permutation(count)

    def batches_of(indices):
        return tf.data.Dataset.range(steps).map(lambda i: indices[i * batch_size:(i + 1) * batch_size])

    dataset = (tf.data.Dataset.from_generator(order, output_signature=tf.TensorSpec((count,), tf.int64))
               .flat_map(batches_of)
               .map(lambda index: (tf.gather(features, index), tf.gather(labels, index)),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .prefetch(tf.data.AUTOTUNE))
    return Batches(dataset, steps)


def streaming_batches(shard, rows: int, input_shape: tuple[int, ...], batch_size: int, shuffle: bool,
                      seed: int) -> Batches:
    """`shard`: this worker's `ray.train.get_dataset_shard(...)` iterator, or a whole Ray Dataset
    when the loop runs in the Tune trial; `rows`: how many rows it yields.

    Ray Data hands over large chunks; each chunk is shuffled and trimmed to a whole number of
    batches (the rest carried into the next chunk), and tf.data cuts it into batches in C++. Python
    is crossed once per chunk, not once per batch: a per-batch generator ran at half the rate."""
    import tensorflow as tf

    epochs = iter(range(1 << 62))
    chunk_rows = max(CHUNK_ROWS // batch_size, 1) * batch_size

    def chunks():
        rng = np.random.default_rng([seed, next(epochs)])
        carried_features = carried_labels = None
        for chunk in shard.iter_batches(batch_size=chunk_rows, batch_format="numpy",
                                        prefetch_batches=PREFETCH_CHUNKS):
            features, labels = chunk["features"], chunk["label"]
            if shuffle:
                order = rng.permutation(len(labels))
                features, labels = features[order], labels[order]
            if carried_labels is not None and len(carried_labels):
                features = np.concatenate([carried_features, features])
                labels = np.concatenate([carried_labels, labels])
            whole = len(labels) // batch_size * batch_size
            if whole:
                yield features[:whole], labels[:whole]
            carried_features, carried_labels = features[whole:], labels[whole:]
        if carried_labels is not None and len(carried_labels):
            yield carried_features, carried_labels

    signature = (tf.TensorSpec((None, *input_shape), tf.float32), tf.TensorSpec((None,), tf.int32))
    dataset = tf.data.Dataset.from_generator(chunks, output_signature=signature).prefetch(1)
    dataset = dataset.flat_map(lambda f, l: tf.data.Dataset.from_tensor_slices((f, l)).batch(batch_size))
    return Batches(dataset.prefetch(tf.data.AUTOTUNE), math.ceil(rows / batch_size))


def worker_batches(split: Split | StreamSplit, shard, rank: int, world_size: int, input_shape, batch_size: int,
                   shuffle: bool, seed: int) -> Batches:
    if isinstance(split, Split):
        return in_memory_batches(split, rank, world_size, batch_size, shuffle, seed)
    # streaming_split(equal=True) gives every worker floor(rows / N) rows.
    return streaming_batches(shard if shard is not None else split.dataset, len(split) // world_size,
                             input_shape, batch_size, shuffle, seed)
