"""Embedded data sets load offline and split by seeded, stratified fractions."""

import numpy as np
import pytest

from finetune.data import check_fits_workers, load_data
from finetune.errors import DataError
from finetune.job import DatasetSpec


def test_digits_splits_are_disjoint_stratified_and_seeded():
    spec = DatasetSpec(source="sklearn:digits", split={"validation": 0.2, "test": 0.2})
    data = load_data(spec, seed=0)
    assert data.input_shape == (8, 8, 1) and data.num_classes == 10
    assert len(data.train) + len(data.validation) + len(data.test) == 1797
    assert abs(len(data.test) - 0.2 * 1797) <= 1 and abs(len(data.validation) - 0.2 * 1797) <= 1
    assert data.train.features.dtype == np.float32 and data.train.features.max() <= 1.0
    for split in (data.train, data.validation, data.test):
        counts = np.bincount(split.labels, minlength=10) / len(split)
        assert np.all(np.abs(counts - 0.1) < 0.03)  # each class near its 10% share
    rows = lambda s: {r.tobytes() for r in s.features}  # noqa: E731
    assert not rows(data.train) & rows(data.test)
    again = load_data(spec, seed=0)
    assert np.array_equal(again.test.labels, data.test.labels)
    assert data.fingerprint == again.fingerprint and len(data.fingerprint["sha256"]) == 64
    assert not np.array_equal(load_data(spec, seed=1).test.labels, data.test.labels)


@pytest.mark.parametrize("name,features,classes", [("iris", 4, 3), ("wine", 13, 3), ("breast_cancer", 30, 2)])
def test_tabular_embedded_sets(name, features, classes):
    data = load_data(DatasetSpec(source=f"sklearn:{name}"), seed=0)
    assert data.input_shape == (features,) and data.num_classes == classes
    mean, variance = data.feature_stats()
    assert mean.shape == (features,) and np.all(variance >= 0)


def test_without_test_keeps_the_test_split_in_the_driver():
    data = load_data(DatasetSpec(), seed=0)
    assert data.without_test().test is None and data.test is not None


def test_too_few_rows_for_the_workers_is_a_data_error():
    data = load_data(DatasetSpec(source="sklearn:iris"), seed=0)
    with pytest.raises(DataError, match="fewer than resources.num_workers"):
        check_fits_workers(data, num_workers=len(data.validation) + 1)
