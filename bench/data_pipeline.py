"""Does the streaming input pipeline keep up with training? (issue: real data in, through Ray Data)

    python bench/data_pipeline.py [--rows 1000000] [--columns 32] [--batch-size 1024] [--workers 2]

Writes a Parquet table of ROWS x COLUMNS float32 values (plus a 10-class label) to a temporary
folder, then measures, in one run on one Ray:

1. training: rows per second the training step consumes with WORKERS Ray Train workers (Multi-
   WorkerMirroredStrategy, the per-worker loop every trial runs), global batch BATCH, with the
   rows already in memory: the rate at which training asks for data.
2. pipeline, for each path the runner has: rows per second delivered to WORKERS concurrent
   consumers with no training, through finetune.data.feed as a worker's loop would pull them:
   - in memory: the table read by Ray Data once, held as arrays, sharded by row;
   - streaming: Ray Data reads and converts the files every epoch, split equally
     (`streaming_split(WORKERS, equal=True)`, as Ray Train does).
3. the same Ray Train run fed by each pipeline, end to end.

Prints a Markdown table for docs/benchmarks.md. The target: pipeline >= 3 x training.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import threading
import time

import numpy as np


def write_table(folder: str, rows: int, columns: int, files: int = 8) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    per_file = rows // files
    for index in range(files):
        values = rng.standard_normal((per_file, columns), dtype=np.float32)
        labels = (values[:, :4].sum(axis=1) > 0).astype(np.int32) * 5 + rng.integers(0, 5, per_file, dtype=np.int32)
        table = pa.table({**{f"f{j}": values[:, j] for j in range(columns)}, "label": labels})
        pq.write_table(table, os.path.join(folder, f"part-{index}.parquet"), row_group_size=64_000)
    return folder


def job_for(source: str, workers: int, batch_size: int, in_memory: bool, epochs: int = 2):
    from finetune.job import validate_job_dict

    return validate_job_dict({
        "name": "bench-pipeline", "seed": 0,
        "dataset": {"source": source, "label": "label", "in_memory": in_memory,
                    "split": {"validation": 0.05, "test": 0.05}},
        "model": {"base": "builtin:mlp", "head": {"units": [64]}},
        "train": {"epochs": epochs, "batch_size": batch_size, "learning_rate": 1e-3},
        "search": {"num_samples": 1, "scheduler": "none"},
        "resources": {"num_workers": workers, "cpus_per_worker": 0.5, "data_cpus": 1},
    })


def measure_pipeline(data, workers: int, batch_size: int) -> float:
    """Rows per second delivered as tf.data batches to `workers` concurrent consumers (threads),
    through the same finetune.data.feed functions a worker's loop uses, with no training."""
    from finetune.data.feed import in_memory_batches, streaming_batches

    per_worker_batch = batch_size // workers
    if data.streaming:
        shards = data.train.dataset.streaming_split(workers, equal=True)
        feeds = [streaming_batches(shards[rank], len(data.train) // workers, data.input_shape, per_worker_batch,
                                   shuffle=True, seed=rank) for rank in range(workers)]
    else:
        feeds = [in_memory_batches(data.train, rank, workers, per_worker_batch, shuffle=True, seed=rank)
                 for rank in range(workers)]
    delivered = [0] * workers

    def consume(rank: int) -> None:
        for features, _ in feeds[rank].dataset:
            delivered[rank] += int(features.shape[0])

    started = time.perf_counter()
    threads = [threading.Thread(target=consume, args=(rank,)) for rank in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(delivered) / (time.perf_counter() - started)


def measure_training(job, data) -> float:
    """Rows per second consumed by a Ray Train run of the per-worker loop, in its last (warm) epoch:
    the same TensorflowTrainer a trial starts, fed from memory or by the streaming pipeline."""
    import ray
    import ray.train
    from ray.train.tensorflow import TensorflowTrainer

    from finetune.train_loop import train_worker
    from finetune.trial import DataHandle
    datasets = {"train": data.train.dataset, "validation": data.validation.dataset} if data.streaming else None
    with tempfile.TemporaryDirectory() as run_dir:
        config = {"job": job.model_dump(mode="json"), "seed": 0, "data": DataHandle(ray.put(data.without_test())),
                  "trial_dir": os.path.join(run_dir, "trial"), "trial_started_at": time.time()}
        trainer = TensorflowTrainer(
            train_loop_per_worker=train_worker, train_loop_config=config, datasets=datasets,
            scaling_config=ray.train.ScalingConfig(num_workers=job.resources.num_workers,
                                                   resources_per_worker={"CPU": job.resources.cpus_per_worker}),
            run_config=ray.train.RunConfig(name="bench", storage_path=run_dir),
        )
        history = trainer.fit().metrics_dataframe
    return float(history["samples_per_second"].iloc[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=1024, help="global batch")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from finetune import ray_cluster
    from finetune.data import load_data
    from quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    capacity = ray_cluster.connect()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        write_table(folder, args.rows, args.columns)
        print(f"wrote {args.rows:,} x {args.columns} float32 in {time.perf_counter() - started:.1f}s", flush=True)
        rows = []
        for in_memory in (True, False):
            job = job_for(folder, args.workers, args.batch_size, in_memory=in_memory, epochs=3)
            started = time.perf_counter()
            data = load_data(job.dataset, 0)
            load_seconds = time.perf_counter() - started
            pipeline = [measure_pipeline(data, args.workers, args.batch_size) for _ in range(3)]
            training = measure_training(job, data)
            label = "in memory (what `in_memory: auto` picks for this table)" if in_memory else "streaming (`in_memory: false`)"
            print(f"{label}: load {load_seconds:.1f}s, pipeline {[round(p) for p in pipeline]}, training {training:,.0f}",
                  flush=True)
            rows.append((label, load_seconds, statistics.median(pipeline), training))
        memory_job = job_for(folder, args.workers, args.batch_size, in_memory=True, epochs=3)
        consumption = measure_training(memory_job, load_data(memory_job.dataset, 0))  # rows ready in memory

    print()
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, {capacity.memory / 2**30:.0f} GiB for Ray; "
          f"{args.rows:,} rows x {args.columns} float32 columns (Parquet, 8 files), global batch {args.batch_size}, "
          f"{args.workers} workers, builtin:mlp")
    print()
    print(f"Training consumes {consumption:,.0f} rows/s ({args.workers} Ray Train workers, rows already in memory, "
          "last of 3 epochs).")
    print()
    print("| path | load + checks (s) | pipeline alone, rows/s (median of 3) | pipeline / training (target >= 3) "
          "| training fed by it, rows/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, load_seconds, pipeline, training in rows:
        print(f"| {label} | {load_seconds:.1f} | {pipeline:,.0f} | {pipeline / consumption:.1f} | {training:,.0f} |")


if __name__ == "__main__":
    main()
