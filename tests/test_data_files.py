"""Real files through Ray Data: each format, a file:// URI, an image folder, streaming, and every
bad-data case ending in one clear DataError before any trial starts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from conftest import JOBS, REPO

from finetune.data import StreamSplit, load_data
from finetune.errors import DataError
from finetune.job import load_job, validate_job_dict

pytestmark = pytest.mark.ray
DATA = REPO / "data"


def dataset(**fields):
    return validate_job_dict({"name": "t", "dataset": fields}).dataset


def load(**fields):
    return load_data(dataset(**fields), seed=0)


@pytest.mark.parametrize("job_file,shape,classes", [
    ("digits-parquet.yaml", (64,), 10), ("digits-tensor.yaml", (8, 8, 1), 10),
    ("iris-csv.yaml", (4,), 3), ("wine-arrow.yaml", (13,), 3), ("digit-images.yaml", (8, 8, 1), 10),
])
def test_each_shipped_source_kind_loads(ray_session, job_file, shape, classes, monkeypatch):
    monkeypatch.chdir(REPO)
    job = load_job(JOBS / job_file)
    data = load_data(job.dataset, job.seed)
    assert data.input_shape == shape and data.num_classes == classes
    assert not data.streaming
    assert len(data.train) > len(data.validation) > 0 and len(data.test) > 0
    assert np.isfinite(data.train.features).all() and data.train.labels.dtype == np.int32
    assert data.fingerprint["sources"]


def test_parquet_columns_are_read_as_written(ray_session):
    data = load(source=str(DATA / "digits.parquet"), split={"validation": 0.2, "test": 0.2})
    table = pq.read_table(DATA / "digits.parquet")
    assert len(data.train) + len(data.validation) + len(data.test) == table.num_rows
    # Each training row is a row of the file, features in column order p0..p63.
    rows = {tuple(r) for r in np.stack([table.column(f"p{i}").to_numpy() for i in range(64)], axis=1)}
    assert all(tuple(r) in rows for r in data.train.features[:20])
    assert data.classes == [str(d) for d in range(10)]


def test_file_uri_glob_and_folder_read_the_same_rows(ray_session, tmp_path):
    table = pq.read_table(DATA / "digits.parquet")
    (tmp_path / "parts").mkdir()
    pq.write_table(table.slice(0, 900), tmp_path / "parts" / "a.parquet")
    pq.write_table(table.slice(900), tmp_path / "parts" / "b.parquet")
    sizes = set()
    for source in (f"file://{tmp_path}/parts", str(tmp_path / "parts" / "*.parquet"), str(tmp_path / "parts")):
        data = load(source=source, split={"validation": 0.2, "test": 0.2})
        sizes.add(len(data.train) + len(data.validation) + len(data.test))
    assert sizes == {table.num_rows}


def test_csv_text_labels_and_split_column(ray_session):
    data = load(source=str(DATA / "iris.csv"), label="species", split={"column": "split"})
    assert data.classes == ["setosa", "versicolor", "virginica"]
    marks = pacsv.read_csv(DATA / "iris.csv").column("split").to_pylist()
    assert (len(data.train), len(data.validation), len(data.test)) == tuple(marks.count(s) for s in ("train", "validation", "test"))


def test_separate_split_files(ray_session, tmp_path):
    table = pacsv.read_csv(DATA / "iris.csv")
    for name in ("train", "validation", "test"):
        part = table.filter(pa.compute.equal(table.column("split"), name)).drop_columns(["split"])
        pacsv.write_csv(part, tmp_path / f"{name}.csv")
    data = load(label="species", **{n: {"source": str(tmp_path / f"{n}.csv")} for n in ("train", "validation", "test")})
    assert len(data.test) == table.column("split").to_pylist().count("test")


def test_image_folder_decodes_resizes_and_counts(ray_session, tmp_path):
    data = load(source=str(DATA / "digit-images"), format="images", image_size=[16, 16], channels=3)
    assert data.input_shape == (16, 16, 3)
    assert len(data.train) + len(data.validation) + len(data.test) == 400
    assert 0 <= data.train.features.min() and data.train.features.max() <= 255


def test_streaming_keeps_splits_lazy_and_deterministic(ray_session):
    data = load(source=str(DATA / "digits.parquet"), in_memory=False, split={"validation": 0.2, "test": 0.2})
    assert data.streaming and isinstance(data.train, StreamSplit)
    total = len(data.train) + len(data.validation) + len(data.test)
    assert total == 1797 and 0.15 < len(data.validation) / total < 0.25
    streamed = list(data.train.dataset.iter_batches(batch_size=None, batch_format="numpy"))
    assert sum(len(b["label"]) for b in streamed) == len(data.train)
    assert streamed[0]["features"].shape[1:] == (64,) and streamed[0]["label"].dtype == np.int32
    head = data.train.head(8)  # read by pyarrow in the driver, converted the same way
    np.testing.assert_array_equal(head.features, streamed[0]["features"][:8])
    np.testing.assert_array_equal(head.labels, streamed[0]["label"][:8])
    again = load(source=str(DATA / "digits.parquet"), in_memory=False, split={"validation": 0.2, "test": 0.2})
    assert len(again.validation) == len(data.validation)
    assert data.feature_mean.shape == (64,) and np.all(data.feature_variance >= 0)


# --- bad data: one clear error each ---------------------------------------------------------------


def error_of(**fields) -> str:
    with pytest.raises(DataError) as caught:
        load(**fields)
    return str(caught.value)


def test_missing_file(ray_session, tmp_path):
    message = error_of(source=str(tmp_path / "nope.parquet"))
    assert "dataset.source: no file or folder at" in message and "nope.parquet" in message


def test_corrupt_parquet(ray_session, tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"this is not parquet")
    message = error_of(source=str(tmp_path / "bad.parquet"))
    assert "cannot read" in message and "as parquet" in message


def test_misspelled_label_names_the_columns_that_exist(ray_session):
    message = error_of(source=str(DATA / "digits.parquet"), label="lable")
    assert "dataset.label: no column 'lable'" in message and "p0, p1" in message and "Did you mean 'label'" in message


def test_non_numeric_feature_column(ray_session):
    message = error_of(source=str(DATA / "iris.csv"), label="split")
    assert "dataset.features: columns must be numbers" in message and "species" in message


def test_nan_and_infinite_features(ray_session, tmp_path):
    table = pq.read_table(DATA / "digits.parquet")
    p3 = table.column("p3").to_numpy().copy()
    p3[[5, 9]] = [np.nan, np.inf]
    pq.write_table(table.set_column(3, "p3", pa.array(p3)), tmp_path / "nan.parquet")
    message = error_of(source=str(tmp_path / "nan.parquet"))
    assert "2 unusable rows" in message and "NaN or infinite" in message


def test_missing_labels(ray_session, tmp_path):
    table = pa.table({"x": [1.0, 2.0, 3.0, 4.0], "label": ["a", None, "b", "a"]})
    pq.write_table(table, tmp_path / "t.parquet")
    assert "missing or non-finite label" in error_of(source=str(tmp_path / "t.parquet"))


def test_empty_split(ray_session, tmp_path):
    table = pa.table({"x": np.arange(20.0), "label": ["a", "b"] * 10, "split": ["train"] * 20})
    pq.write_table(table, tmp_path / "t.parquet")
    assert "the validation split is empty" in error_of(source=str(tmp_path / "t.parquet"), split={"column": "split"})


def test_class_without_training_rows(ray_session, tmp_path):
    table = pa.table({"x": np.arange(6.0), "label": ["a", "b", "a", "b", "c", "a"],
                      "split": ["train", "train", "train", "train", "validation", "validation"]})
    pq.write_table(table, tmp_path / "t.parquet")
    message = error_of(source=str(tmp_path / "t.parquet"), split={"column": "split"})
    assert "class 'c' appears in the validation split" in message and "no training rows" in message


def test_empty_class_folder(ray_session, tmp_path):
    shutil.copytree(DATA / "digit-images", tmp_path / "images")
    (tmp_path / "images" / "ten").mkdir()
    assert "class 'ten' has no training rows" in error_of(source=str(tmp_path / "images"), format="images")


def corrupt_image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    shutil.copytree(DATA / "digit-images", root)
    (root / "3" / "000.png").write_bytes(b"\x89PNG but not really")
    return root


def test_undecodable_image_is_named(ray_session, tmp_path):
    root = corrupt_image_folder(tmp_path)
    message = error_of(source=str(root), format="images", channels=1, image_size=[8, 8])
    assert "3/000.png" in message and "cannot decode image" in message and "on_bad_image: skip" in message


def test_on_bad_image_skip_skips_and_counts(ray_session, tmp_path):
    root = corrupt_image_folder(tmp_path)
    data = load(source=str(root), format="images", channels=1, image_size=[8, 8], on_bad_image="skip")
    assert data.skipped_rows == 1
    assert len(data.train) + len(data.validation) + len(data.test) == 399


def test_inconsistent_image_sizes_without_image_size(ray_session, tmp_path):
    from PIL import Image

    root = tmp_path / "images"
    shutil.copytree(DATA / "digit-images", root)
    Image.new("L", (16, 12)).save(root / "5" / "big.png")
    message = error_of(source=str(root), format="images", channels=1)
    assert "5/big.png" in message and "16x12 differs from 8x8" in message and "image_size" in message
