"""Data messages that say how to fix what they report, and how a streaming run tells that a file
it reads changed, on real files without Ray."""

from __future__ import annotations

import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO

from finetune.data import files as data_files
from finetune.data.prepare import _open_table
from finetune.errors import DataError, JobError
from finetune.job import validate_job_dict


def test_a_folder_of_hidden_files_holds_no_files_and_says_where_to_look(tmp_path):
    (tmp_path / ".part-0.parquet").write_bytes(b"")
    (tmp_path / "_SUCCESS").write_bytes(b"")
    with pytest.raises(DataError, match=r"holds no files \(names starting with '.' or '_' are skipped\)\. "
                                        r"Expected data files .* check the path or the pattern"):
        data_files.resolve(str(tmp_path), "dataset.source", None)


def test_a_table_with_columns_and_no_rows_says_so_and_what_to_check(tmp_path):
    pq.write_table(pa.table({"x": pa.array([], pa.float32()), "label": pa.array([], pa.int64())}), tmp_path / "t.parquet")
    with pytest.raises(DataError, match="holds no rows: its file.s. have columns but no data. Check that the file "
                                        "was written completely"):
        _open_table(data_files.resolve(str(tmp_path / "t.parquet"), "dataset.source", None))


def test_a_metric_listed_twice_is_named():
    with pytest.raises(JobError, match="expected each metric once; accuracy is listed more than once: remove the repeat"):
        validate_job_dict({"name": "x", "train": {"metrics": ["accuracy", "mse", "accuracy"]}})


def test_a_changed_or_missing_file_is_told_apart_from_an_untouched_one(tmp_path):
    source = tmp_path / "digits.parquet"
    shutil.copy(REPO / "data" / "digits.parquet", source)
    found = data_files.resolve(str(source), "dataset.source", None)
    assert data_files.changed_file(found) is None
    table = pq.read_table(source)
    pq.write_table(table.slice(0, 10), source)
    assert data_files.changed_file(found).startswith(f"{source} changed ({found.sizes[0]} bytes before, ")
    found = data_files.resolve(str(source), "dataset.source", None)
    stat = os.stat(source)
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten in place, same size
    assert data_files.changed_file(found) == f"{source} changed (modified again since the run started)"
    source.unlink()
    assert data_files.changed_file(found) == f"{source} disappeared"
