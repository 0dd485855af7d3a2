"""scikit-learn's bundled data sets, which load offline: real data for defaults, examples and tests."""

from __future__ import annotations

import numpy as np


def load_sklearn(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features float32, labels, class names) of digits, breast_cancer, wine, iris (classes, int32
    labels) or diabetes (a regression target: float32 labels, no classes)."""
    from sklearn import datasets

    if name == "digits":
        bunch = datasets.load_digits()
        # 8x8 grey images with values 0..16, as (rows, 8, 8, 1) floats in [0, 1].
        features = (bunch.images / 16.0).astype(np.float32)[..., np.newaxis]
    elif name == "diabetes":
        bunch = datasets.load_diabetes()
        return bunch.data.astype(np.float32), bunch.target.astype(np.float32), []
    else:
        loader = {"breast_cancer": datasets.load_breast_cancer, "wine": datasets.load_wine,
                  "iris": datasets.load_iris}[name]
        bunch = loader()
        features = bunch.data.astype(np.float32)
    return features, bunch.target.astype(np.int32), [str(c) for c in bunch.target_names]


def digits_table(columns: str = "pixels"):
    """Digits as a pyarrow table: 64 float columns `p0..p63` (columns="pixels") or one
    fixed-size-list column `image` of 64 values (columns="tensor"), plus an integer `label`. For
    example data sets and tests."""
    import pyarrow as pa

    features, labels, _ = load_sklearn("digits")
    flat = features.reshape(len(labels), 64)
    if columns == "tensor":
        image = pa.FixedSizeListArray.from_arrays(pa.array(flat.ravel()), 64)
        return pa.table({"image": image, "label": labels})
    return pa.table({**{f"p{i}": flat[:, i] for i in range(64)}, "label": labels})
