"""What data loading hands to the search: the splits, the classes and the input statistics."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


@dataclass
class Split:
    """A split held in memory: shared with every trial once, through Ray's object store."""

    features: np.ndarray  # float32, (rows, *input_shape)
    labels: np.ndarray  # int32 class indices, (rows,)

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, rows: int) -> "Split":
        return Split(self.features[:rows], self.labels[:rows])


@dataclass
class StreamSplit:
    """A split too large to hold in memory: a Ray Dataset with columns `features` and `label`,
    read, decoded and converted by Ray Data each epoch and sharded to the Train workers."""

    dataset: Any  # ray.data.Dataset
    rows: int
    preview: Split  # the first rows of the source's first file(s) that fall in this split
    sources: tuple = ()  # ((job field, finetune.data.files.Files), ...): the files it reads every epoch

    def __len__(self) -> int:
        return self.rows

    def head(self, rows: int) -> Split:
        if len(self.preview) >= min(2, rows):
            return self.preview.head(rows)
        # The first rows read all belong to other splits (a split column sorted by split, say). Ray
        # Data's take cancels its read tasks once it has enough, which can crash Ray 2.60's core
        # (see data/files.first_rows); a rare case, so it is the fallback, not the rule.
        batch = self.dataset.take_batch(rows, batch_format="numpy")
        return Split(np.asarray(batch["features"], np.float32), np.asarray(batch["label"], np.int32))


@dataclass
class LoadedData:
    train: Split | StreamSplit
    validation: Split | StreamSplit
    test: Split | StreamSplit | None
    classes: list[str]  # class index -> class name; travels with the model (classes.json)
    input_shape: tuple[int, ...]
    feature_mean: np.ndarray  # of the training split, per feature (tables) or per channel (images)
    feature_variance: np.ndarray
    fingerprint: dict = field(default_factory=dict)
    skipped_rows: int = 0  # bad images skipped with on_bad_image: skip

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def streaming(self) -> bool:
        return isinstance(self.train, StreamSplit)

    def feature_stats(self) -> tuple[np.ndarray, np.ndarray]:
        return self.feature_mean, self.feature_variance

    def changed_source(self) -> str | None:
        """For streaming data, the first file the splits read that is gone or changed since the run
        resolved it, as `field: what became of it`; None when every file is as it was."""
        from finetune.data.files import changed_file

        for split in (self.train, self.validation):
            for field_name, files in getattr(split, "sources", ()):
                change = changed_file(files)
                if change is not None:
                    return f"{field_name}: {change}"
        return None

    def without_test(self) -> "LoadedData":
        """What trials receive: the test split stays with the driver."""
        return replace(self, test=None)

    def head(self, rows: int) -> "LoadedData":
        """A few rows of each split, in memory: for the driver's pre-flight training step."""
        return replace(self, train=self.train.head(rows), validation=self.validation.head(rows), test=None)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance per feature (tables) or per channel (images). A feature constant in the
    training split gets variance 1, so it is only centred: Keras' Normalization divides by
    max(sqrt(variance), 1e-7), and a value the training rows never had there (a pixel blank in
    every training image) would reach the model multiplied by millions. scikit-learn's
    StandardScaler does the same (sklearn/preprocessing/_data.py, _handle_zeros_in_scale)."""
    axes = tuple(range(features.ndim - 1)) if features.ndim > 2 else (0,)
    variance = features.var(axis=axes, dtype=np.float64)
    return features.mean(axis=axes, dtype=np.float64), np.where(variance > 1e-12, variance, 1.0)
