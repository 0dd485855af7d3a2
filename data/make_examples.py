"""Writes the example data sets under data/ from scikit-learn's embedded ones (no download).

    python data/make_examples.py

The files are committed, so jobs run without this step; it documents where they come from and
rebuilds them byte for byte (seeded).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.feather as feather
import pyarrow.parquet as pq
from PIL import Image
from sklearn import datasets

from finetune.data.embedded import digits_table, load_sklearn

HERE = Path(__file__).resolve().parent


def digits_parquet() -> None:
    """64 pixel columns p0..p63 and an integer label: tabular numeric data."""
    pq.write_table(digits_table("pixels"), HERE / "digits.parquet")


def digits_tensor_parquet() -> None:
    """One column `image` holding each 8x8x1 image as a nested fixed-size list: a tensor feature."""
    features, labels, _ = load_sklearn("digits")
    values = pa.array(features.ravel())
    channel = pa.FixedSizeListArray.from_arrays(values, 1)
    row = pa.FixedSizeListArray.from_arrays(channel, 8)
    image = pa.FixedSizeListArray.from_arrays(row, 8)
    pq.write_table(pa.table({"image": image, "label": labels}), HERE / "digits-tensor.parquet")


def iris_csv() -> None:
    """Iris with species names as labels and a `split` column naming each row's split."""
    bunch = datasets.load_iris()
    rng = np.random.default_rng(0)
    split = rng.choice(["train", "validation", "test"], size=len(bunch.target), p=[0.6, 0.2, 0.2])
    columns = {name.replace(" (cm)", "").replace(" ", "_"): bunch.data[:, i] for i, name in enumerate(bunch.feature_names)}
    table = pa.table({**columns, "species": bunch.target_names[bunch.target], "split": split})
    pacsv.write_csv(table, HERE / "iris.csv")


def wine_arrow() -> None:
    """Wine as an Arrow IPC (Feather v2) file."""
    bunch = datasets.load_wine()
    table = pa.table({**{f"f{i}": bunch.data[:, i].astype(np.float32) for i in range(bunch.data.shape[1])},
                      "label": bunch.target_names[bunch.target]})
    feather.write_feather(table, HERE / "wine.arrow", compression="uncompressed")


def digit_images(per_class: int = 40) -> None:
    """A folder of PNG images, one sub-folder per class: data/digit-images/<digit>/<n>.png."""
    root = HERE / "digit-images"
    shutil.rmtree(root, ignore_errors=True)
    features, labels, classes = load_sklearn("digits")
    for digit, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        rows = np.flatnonzero(labels == digit)[:per_class]
        for n, row in enumerate(rows):
            pixels = (features[row, :, :, 0] * 255).round().astype(np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels, mode="L").save(buffer, format="PNG", optimize=True)
            (root / name / f"{n:03d}.png").write_bytes(buffer.getvalue())


if __name__ == "__main__":
    digits_parquet()
    digits_tensor_parquet()
    iris_csv()
    wine_arrow()
    digit_images()
    print("wrote", ", ".join(sorted(p.name for p in HERE.iterdir() if p.name != "make_examples.py")))
