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

# Batches Ray Data prepares ahead of the training step.
PREFETCH_BATCHES = 4


@dataclass
class Batches:
    dataset: Any  # tf.data.Dataset of (features, labels) batches
    steps: int  # batches per epoch


def in_memory_batches(split: Split, rank: int, world_size: int, batch_size: int, shuffle: bool, seed: int) -> Batches:
    import tensorflow as tf

    rows = np.arange(rank, len(split), world_size)
    if shuffle:
        # Training shards must be equal: at most N-1 rows of the split are left out.
        rows = rows[: len(split) // world_size]
    dataset = tf.data.Dataset.from_tensor_slices((split.features[rows], split.labels[rows]))
    if shuffle:
        dataset = dataset.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return Batches(dataset, math.ceil(len(rows) / batch_size))


def streaming_batches(shard, rows: int, input_shape: tuple[int, ...], batch_size: int, shuffle: bool,
                      seed: int) -> Batches:
    """`shard`: this worker's `ray.train.get_dataset_shard(...)` iterator, or a whole Ray Dataset
    when the loop runs in the Tune trial; `rows`: how many rows it yields."""
    import tensorflow as tf

    def batches():
        for batch in shard.iter_batches(
            batch_size=batch_size, batch_format="numpy", prefetch_batches=PREFETCH_BATCHES,
            local_shuffle_buffer_size=batch_size * 16 if shuffle else None,
            local_shuffle_seed=seed if shuffle else None,
        ):
            yield batch["features"], batch["label"]

    signature = (tf.TensorSpec((None, *input_shape), tf.float32), tf.TensorSpec((None,), tf.int32))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature).prefetch(2)
    return Batches(dataset, math.ceil(rows / batch_size))


def worker_batches(split: Split | StreamSplit, shard, rank: int, world_size: int, input_shape, batch_size: int,
                   shuffle: bool, seed: int) -> Batches:
    if isinstance(split, Split):
        return in_memory_batches(split, rank, world_size, batch_size, shuffle, seed)
    # streaming_split(equal=True) gives every worker floor(rows / N) rows.
    return streaming_batches(shard if shard is not None else split.dataset, len(split) // world_size,
                             input_shape, batch_size, shuffle, seed)
