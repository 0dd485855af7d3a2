"""Data loading: a job's `dataset:` section becomes train, validation and test splits.

The driver loads and splits the data once per run, checks it, and shares the train and validation
splits with every trial through Ray's object store; the test split never leaves the driver, so
neither training nor the search sees it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from finetune.errors import DataError
from finetune.job import DatasetSpec


@dataclass
class Split:
    features: np.ndarray  # float32, (rows, *input_shape)
    labels: np.ndarray  # int32 class indices, (rows,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class LoadedData:
    train: Split
    validation: Split
    test: Split | None
    classes: list[str]  # class index -> class name; travels with the model
    fingerprint: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.features.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def feature_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of the training split per feature (tabular) or per channel (images),
        for a Normalization layer."""
        features = self.train.features
        axes = tuple(range(features.ndim - 1)) if features.ndim > 2 else (0,)
        return features.mean(axis=axes), features.var(axis=axes)

    def without_test(self) -> "LoadedData":
        """What trials receive: the test split stays with the driver."""
        return LoadedData(self.train, self.validation, None, self.classes, self.fingerprint)


def load_data(spec: DatasetSpec, seed: int) -> LoadedData:
    """Load the data set a job names and split it by seeded, stratified fractions."""
    kind, _, name = spec.source.partition(":")
    if kind != "sklearn":
        raise DataError(f"dataset.source: {spec.source!r} is not a supported source")
    features, labels, classes = _load_embedded(name)
    fingerprint = {
        "source": spec.source,
        "rows": int(len(labels)),
        "sha256": hashlib.sha256(features.tobytes() + labels.tobytes()).hexdigest(),
    }
    train, validation, test = split_stratified(features, labels, spec.split.validation, spec.split.test, seed)
    return LoadedData(train, validation, test, classes, fingerprint)


def _load_embedded(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's bundled data sets: real data, shipped with the package, no download."""
    from sklearn import datasets

    if name == "digits":
        bunch = datasets.load_digits()
        # 8x8 grey images with values 0..16, as (rows, 8, 8, 1) floats in [0, 1].
        features = (bunch.images / 16.0).astype(np.float32)[..., np.newaxis]
        classes = [str(c) for c in bunch.target_names]
    else:
        loader = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine,
                  "iris": datasets.load_iris}[name]
        bunch = loader()
        features = bunch.data.astype(np.float32)
        classes = [str(c) for c in bunch.target_names]
    return features, bunch.target.astype(np.int32), classes


def split_stratified(
    features: np.ndarray, labels: np.ndarray, validation: float, test: float, seed: int
) -> tuple[Split, Split, Split | None]:
    """Train, validation and test splits, each with the class proportions of the whole."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(labels))
    try:
        test_rows = np.array([], dtype=int)
        if test > 0:
            rows, test_rows = train_test_split(rows, test_size=test, random_state=seed, stratify=labels[rows])
        train_rows, validation_rows = train_test_split(
            rows, test_size=validation / (1 - test), random_state=seed, stratify=labels[rows]
        )
    except ValueError as error:
        raise DataError(
            f"dataset.split: cannot split {len(labels)} rows into validation {validation} and test "
            f"{test} with every class in each split ({error}); use larger fractions or more data"
        ) from None
    test_split = Split(features[test_rows], labels[test_rows]) if test > 0 else None
    return Split(features[train_rows], labels[train_rows]), Split(features[validation_rows], labels[validation_rows]), test_split


def check_fits_workers(data: LoadedData, num_workers: int) -> None:
    """Every worker needs rows of each split it trains and evaluates on."""
    for name, split in (("train", data.train), ("validation", data.validation)):
        if len(split) < num_workers:
            raise DataError(
                f"dataset.split: the {name} split has {len(split)} rows, fewer than "
                f"resources.num_workers ({num_workers}); use more data, a larger split or fewer workers"
            )
