"""Rows of a table or image list -> model inputs. Runs inside Ray Data tasks, batch by batch.

Each batch becomes `features` (float32, one tensor per row), `label_raw` (the label as written),
`problem` (empty, or why the row is unusable: NaN, a missing label, an image that does not decode)
and `name` (what to call the row in an error message). Problems are collected, not raised, so the
driver can report the first few with their names, or skip bad images when asked.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class Conversion:
    feature_columns: tuple[str, ...]  # for tables
    label_column: str
    image_column: str | None = None  # paths or encoded bytes
    image_root: str = ""  # relative image paths start here
    image_size: tuple[int, int] | None = None  # (height, width) to resize to
    expected_size: tuple[int, int] | None = None  # without image_size: every image must have this one
    channels: int = 3
    split_column: str | None = None
    keep_labels: tuple[str, ...] | None = None  # dataset.classes: rows with other labels are dropped


def keep_rows(table: pa.Table, conversion: Conversion) -> pa.Table:
    """Only the rows whose label `dataset.classes` keeps."""
    if conversion.keep_labels is None:
        return table
    import pyarrow.compute as pc

    labels = pc.cast(table.column(conversion.label_column), pa.string())
    return table.filter(pc.is_in(labels, value_set=pa.array(conversion.keep_labels, pa.string())))


def convert_batch(table: pa.Table, conversion: Conversion) -> dict[str, np.ndarray]:
    import pyarrow.compute as pc

    table = keep_rows(table, conversion)
    rows = table.num_rows
    labels = table.column(conversion.label_column)
    if conversion.image_column:
        features, problems, names = _decode_images(table.column(conversion.image_column), conversion)
    else:
        features = stack_features(table, conversion.feature_columns)
        finite = np.isfinite(features.reshape(rows, -1)).all(axis=1)
        problems = np.where(finite, "", "NaN or infinite feature value").astype(object)
        names = np.full(rows, "", dtype=object)  # named only when unusable (below): cheap for large data
    missing = pc.is_null(labels, nan_is_null=True).to_numpy(zero_copy_only=False)
    if missing.any():
        problems[missing & (problems == "")] = "missing or non-finite label"
    if not conversion.image_column:
        bad = np.flatnonzero(problems != "")
        label_values = labels.take(pa.array(bad)).to_pylist() if len(bad) else []
        names[bad] = [f"row with {conversion.label_column}={value!r}" for value in label_values]
    label_raw = pc.cast(labels, pa.string()).to_numpy(zero_copy_only=False)
    out = {"features": features, "label_raw": label_raw, "problem": problems, "name": names}
    if conversion.split_column:
        out["split"] = pc.cast(table.column(conversion.split_column), pa.string()).to_numpy(zero_copy_only=False)
    return out


def model_inputs_batch(table: pa.Table, conversion: Conversion, classes: list[str] | None, split: tuple | None) -> dict:
    """The training pipeline's one step per batch: features and label (class index, or the number
    itself when `classes` is None: regression) of the usable rows that belong to one split. Lean on
    purpose (no per-row text), since it runs every epoch."""
    import pyarrow.compute as pc

    table = keep_rows(table, conversion)
    if split and split[0] == "column":
        table = table.filter(pc.equal(pc.cast(table.column(conversion.split_column), pa.string()), split[1]))
    if conversion.image_column:
        features, problems, _ = _decode_images(table.column(conversion.image_column), conversion)
        keep = problems == ""
    else:
        features = stack_features(table, conversion.feature_columns)
        keep = np.ones(len(features), dtype=bool)
    if split and split[0] == "bucket":
        _, low, high, seed = split
        buckets = row_buckets(features, seed)
        keep &= (buckets >= low) & (buckets < high)
    if classes is None:
        labels = pc.cast(table.column(conversion.label_column), pa.float32()).to_numpy(zero_copy_only=False)
        return {"features": features[keep], "label": labels[keep].astype(np.float32)}
    labels = pc.index_in(pc.cast(table.column(conversion.label_column), pa.string()),
                         value_set=pa.array(classes, pa.string())).to_numpy(zero_copy_only=False)
    return {"features": features[keep], "label": labels[keep].astype(np.int32)}


def row_buckets(features: np.ndarray, seed: int) -> np.ndarray:
    """A number in [0, 1) per row from its content and the seed: the same row always lands in the
    same split, whatever the order, the batching or the number of readers (and duplicates of a row
    never straddle two splits)."""
    flat = np.ascontiguousarray(features.reshape(len(features), -1), dtype=np.float32).view(np.uint32).astype(np.uint64)
    weights = (np.arange(1, flat.shape[1] + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
    with np.errstate(over="ignore"):
        mixed = (flat * weights).sum(axis=1, dtype=np.uint64) ^ np.uint64(seed * 0x2545F4914F6CDD1D & (2**64 - 1))
        mixed ^= mixed >> np.uint64(31)
        mixed *= np.uint64(0xBF58476D1CE4E5B9)
        mixed ^= mixed >> np.uint64(29)
    return (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def stack_features(table: pa.Table, columns: tuple[str, ...]) -> np.ndarray:
    """Numeric columns side by side (rows, k); one fixed-size-list column as a tensor (rows, *shape)."""
    rows = table.num_rows
    if len(columns) == 1 and is_tensor(table.column(columns[0]).type):
        return tensor_column(table.column(columns[0]))
    stacked = np.empty((rows, len(columns)), dtype=np.float32)
    for j, name in enumerate(columns):
        column = table.column(name)
        if column.null_count:
            column = column.cast(pa.float64()).fill_null(np.nan)
        stacked[:, j] = column.to_numpy().astype(np.float32)
    return stacked


def tensor_column(column) -> np.ndarray:
    """A (nested) fixed_size_list column, or Ray's tensor extension, as a (rows, *shape) array."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if hasattr(column, "to_numpy_ndarray"):  # Ray's ArrowTensorArray
        return np.asarray(column.to_numpy_ndarray(), dtype=np.float32)
    shape = []
    values = column
    while pa.types.is_fixed_size_list(values.type):
        shape.append(values.type.list_size)
        values = values.flatten()
    return values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(column), *shape)


def is_tensor(arrow_type: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(arrow_type) or "tensor" in str(arrow_type).lower()


def is_numeric(arrow_type: pa.DataType) -> bool:
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type):
        return True
    if pa.types.is_fixed_size_list(arrow_type):
        return is_numeric(arrow_type.value_type)
    return "tensor" in str(arrow_type).lower()


# --- images --------------------------------------------------------------------------------------


def _decode_images(column, conversion: Conversion):
    rows = len(column)
    height, width = conversion.image_size or conversion.expected_size or (0, 0)
    features = np.zeros((rows, height, width, conversion.channels), dtype=np.float32)
    problems = np.full(rows, "", dtype=object)
    names = np.empty(rows, dtype=object)
    for i, value in enumerate(column.to_pylist()):
        names[i] = value if isinstance(value, str) else f"image bytes in row {i} of a batch"
        try:
            data = read_image_bytes(value, conversion.image_root) if isinstance(value, str) else value
            image = decode_image(data, conversion.channels, conversion.image_size)
        except Exception as error:  # PIL raises many kinds for bad files; each is a bad image
            problems[i] = f"cannot decode image: {error}"
            continue
        if image.shape[:2] != (height, width):
            problems[i] = (f"image size {image.shape[1]}x{image.shape[0]} differs from "
                           f"{width}x{height}; set dataset.image_size: [h, w] to resize every image")
            continue
        features[i] = image
    return features, problems, names


def decode_image(data: bytes, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """Encoded image bytes -> (height, width, channels) float32 pixel values 0..255."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image = image.convert("L" if channels == 1 else "RGB")
    if size is not None and image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32)
    return array[..., np.newaxis] if channels == 1 else array


def image_info(data: bytes) -> tuple[tuple[int, int], int]:
    """((height, width), channels) of an encoded image, without decoding all of it."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    channels = 1 if image.mode in ("1", "L", "I", "I;16", "F") else 3
    return (image.size[1], image.size[0]), channels


_FILESYSTEMS: dict = {}


def read_image_bytes(path: str, root: str) -> bytes:
    """Read an image by path or URI; relative paths start at the table's folder."""
    import posixpath

    import pyarrow.fs as pafs

    if "://" not in path and not path.startswith("/"):
        path = posixpath.join(root, path)
    scheme = path.split("://")[0] if "://" in path else "file"
    if scheme not in _FILESYSTEMS:
        _FILESYSTEMS[scheme] = pafs.FileSystem.from_uri(path)[0]
    filesystem = _FILESYSTEMS[scheme]
    inner = pafs.FileSystem.from_uri(path)[1] if "://" in path else path
    with filesystem.open_input_stream(inner) as stream:
        return stream.read()
