"""Data loading: a job's `dataset:` section becomes checked train, validation and test splits.

The driver loads and checks the data once per run. Small data is held in memory and shared with
every trial through Ray's object store; large data stays a Ray Dataset that Ray Train shards and
streams to the workers. The test split never reaches a trial.

- `embedded`: scikit-learn's bundled data sets (no download).
- `files`: finding files (paths, folders, globs, URIs) and opening them with Ray Data.
- `convert`: rows -> model inputs, in Ray Data tasks (numeric columns, tensors, image decoding).
- `prepare`: the checks, the class list, the splits, in memory or streaming.
- `feed`: on each worker, a split -> tf.data batches.
"""

from __future__ import annotations

import hashlib

import numpy as np

from finetune.data.bundle import LoadedData, Split, StreamSplit, feature_statistics
from finetune.errors import DataError
from finetune.job import DatasetSpec

__all__ = ["LoadedData", "Split", "StreamSplit", "load_data", "check_fits_workers", "stratified_rows"]


def load_data(spec: DatasetSpec, seed: int, task: str = "classification") -> LoadedData:
    """The splits a dataset section describes, checked. File sources need Ray (Ray Data reads them).
    task: classification (labels become class indices) or regression (labels stay numbers)."""
    if spec.embedded:
        return load_embedded(spec, seed, task)
    from finetune.data.prepare import load_files

    return load_files(spec, seed, task)


def load_embedded(spec: DatasetSpec, seed: int, task: str = "classification") -> LoadedData:
    """scikit-learn's bundled data sets: real data, shipped with the package, no download."""
    from finetune.data.embedded import load_sklearn

    features, labels, classes = load_sklearn(spec.embedded)
    if (task == "regression") != (not classes):
        kind = "a regression target" if not classes else "classes"
        raise DataError(f"dataset.source: {spec.source} has {kind}; set model.task to "
                        f"{'regression' if not classes else 'classification'}.")
    if spec.classes is not None:
        unknown = [c for c in spec.classes if str(c) not in classes]
        if unknown:
            raise DataError(f"dataset.classes: {unknown} not among the classes of {spec.source}: {', '.join(classes)}.")
        keep = sorted(classes.index(str(c)) for c in spec.classes)  # kept classes keep their order
        rows = np.isin(labels, keep)
        features, labels = features[rows], np.searchsorted(np.array(keep), labels[rows]).astype(np.int32)
        classes = [classes[i] for i in keep]
    fingerprint = {"source": spec.source, "rows": int(len(labels)),
                   "sha256": hashlib.sha256(features.tobytes() + labels.tobytes()).hexdigest()}
    rows = stratified_rows(labels if classes else None, spec.split.validation, spec.split.test, seed, len(labels))
    splits = {name: Split(features[index], labels[index]) for name, index in rows.items()}
    mean, variance = feature_statistics(splits["train"].features)
    fingerprint["split_rows"] = {name: len(split) for name, split in splits.items()}
    return LoadedData(splits["train"], splits["validation"], splits.get("test"), classes,
                      tuple(features.shape[1:]), mean, variance, fingerprint)


def stratified_rows(labels: np.ndarray | None, validation: float, test: float, seed: int,
                    count: int | None = None) -> dict[str, np.ndarray]:
    """Row indices of seeded train, validation and test splits, each with the class proportions of
    the whole (labels None: a regression target, split at random)."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(labels) if labels is not None else count)
    result = {}

    def strata(subset):
        return labels[subset] if labels is not None else None

    try:
        if test > 0:
            rows, result["test"] = train_test_split(rows, test_size=test, random_state=seed, stratify=strata(rows))
        result["train"], result["validation"] = train_test_split(
            rows, test_size=validation / (1 - test), random_state=seed, stratify=strata(rows))
    except ValueError as error:
        counts = dict(zip(*np.unique(labels, return_counts=True)))
        rarest = min(counts, key=counts.get)
        raise DataError(
            f"dataset.split: cannot split {len(labels)} rows into validation {validation} and test {test} "
            f"with every class in each split (class {rarest!r} has {counts[rarest]} rows; {error}). "
            f"Use larger fractions, more data, or dataset.split.column."
        ) from None
    return result


def check_fits_workers(data: LoadedData, num_workers: int) -> None:
    """Every worker needs rows of each split it trains and evaluates on."""
    for name, split in (("train", data.train), ("validation", data.validation)):
        if len(split) < num_workers:
            raise DataError(
                f"dataset.split: the {name} split has {len(split)} rows, fewer than "
                f"resources.num_workers ({num_workers}); use more data, a larger split or fewer workers"
            )


def load_holdout(spec: DatasetSpec, source: str, seed: int, task: str, classes: list[str] | None):
    """The rows of a pinned held-out source (`promote.holdout`), read as the dataset's own files
    are (same format, label, features, image settings), whole: (rows, label map), where the label
    map takes the holdout's class indices to the run's (None for regression)."""
    from finetune.data.prepare import load_files

    whole = DatasetSpec.model_validate({**spec.model_dump(), "source": None, "split": {},
                                        "train": {"source": source, "format": spec.format},
                                        "validation": {"source": source, "format": spec.format}, "test": None})
    try:
        loaded = load_files(whole, seed, task)
    except DataError as error:
        raise DataError(f"promote.holdout: {source}: {str(error).replace('dataset.train.source', 'the holdout')}") from None
    if not classes:
        return loaded.train, None
    unknown = [c for c in loaded.classes if c not in classes]
    if unknown:
        raise DataError(f"promote.holdout: {source} has classes the run's data does not ({', '.join(unknown)}); "
                        f"expected only {', '.join(classes)}. Pin a holdout of the same classes.")
    return loaded.train, [classes.index(c) for c in loaded.classes]
