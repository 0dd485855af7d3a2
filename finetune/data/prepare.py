"""From a job's `dataset:` section to checked splits, in memory or streaming.

One pass over the data checks it before any trial starts (columns, types, NaN, labels, images,
split sizes) and computes the class list and the training statistics. Small data is then held in
memory and shared with every trial; large data stays a Ray Dataset that streams to the workers.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pyarrow as pa

from finetune.data import files as data_files
from finetune.data.bundle import LoadedData, Split, StreamSplit, feature_statistics
from finetune.data.convert import (
    Conversion,
    convert_batch,
    image_info,
    is_numeric,
    is_tensor,
    model_inputs_batch,
    read_image_bytes,
    row_buckets,
)
from finetune.errors import DataError, innermost_cause
from finetune.job import DatasetSpec

# Data whose model inputs would take more than this stays on disk and streams.
IN_MEMORY_LIMIT_BYTES = 1 << 30
# How many rows the driver reads with pyarrow for the schema, image probing and pre-flight step.
PREVIEW_ROWS = 256
# How many bad rows an error message names.
EXAMPLES = 3
SPLITS = ("train", "validation", "test")


def load_files(spec: DatasetSpec, seed: int, task: str = "classification") -> LoadedData:
    """Read, convert, check and split the files a dataset section names."""
    import ray.data

    _quiet_ray_data()
    sources = ({"all": spec.source} if spec.source else
               {name: getattr(spec, name).source for name in SPLITS if getattr(spec, name) is not None})
    formats = {name: spec.format if name == "all" else getattr(spec, name).format or spec.format for name in sources}
    resolved = {name: data_files.resolve(location, _field(name), formats[name]) for name, location in sources.items()}
    fingerprint = {name: f.fingerprint() for name, f in resolved.items()}

    first = next(iter(resolved.values()))
    kind = "images" if first.format == "images" or spec.image_column else "table"
    raw, previews, conversion, class_names = {}, {}, None, None
    for name, found in resolved.items():
        if found.format == "images":
            paths, labels = data_files.image_folder_rows(found)
            class_names = sorted(set(class_names or []) | set(data_files.class_folders(found)))
            items = [{"image": p, spec.label: c} for p, c in zip(paths, labels)]
            dataset = ray.data.from_items(items, override_num_blocks=max(1, min(64, len(paths) // 256)))
            previews[name] = pa.Table.from_pylist(items[:PREVIEW_ROWS])
            columns = {"image": "string", spec.label: "string"}
            image_column = "image"
        else:
            dataset, previews[name] = _open_table(found)
            columns = dict(zip(previews[name].schema.names, previews[name].schema.types))
            image_column = spec.image_column
        fingerprint[name]["schema"] = {column: str(kind) for column, kind in columns.items()}
        if conversion is None:
            conversion = _conversion(spec, columns, image_column, found, previews[name], name)
        raw[name] = dataset
    estimate = _estimated_bytes(resolved, conversion, kind)
    in_memory = spec.in_memory if spec.in_memory != "auto" else estimate <= IN_MEMORY_LIMIT_BYTES
    if spec.classes is not None:
        conversion = replace(conversion, keep_labels=tuple(str(c) for c in spec.classes))
    converted = {name: ds.map_batches(convert_batch, fn_kwargs={"conversion": conversion}, batch_format="pyarrow",
                                      batch_size=1024)
                 for name, ds in raw.items()}
    if in_memory:
        data = _load_in_memory(spec, converted, conversion, seed, class_names, task)
    else:
        sources = {name: ((_field(name), found),) for name, found in resolved.items()}
        data = _load_streaming(spec, converted, conversion, seed, class_names, raw, previews, task, sources)
    split_rows = {name: len(split) for name, split in (("train", data.train), ("validation", data.validation),
                                                        ("test", data.test)) if split is not None}
    return replace(data, fingerprint={"in_memory": in_memory, "sources": fingerprint, "split_rows": split_rows,
                                      "skipped_rows": data.skipped_rows})


def _field(name: str) -> str:
    return "dataset.source" if name == "all" else f"dataset.{name}.source"


def _quiet_ray_data() -> None:
    import logging

    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def _open_table(found: data_files.Files):
    """The lazy Ray Dataset of a table and its first rows; unreadable files become a DataError."""
    try:
        first = data_files.first_rows(found, PREVIEW_ROWS)
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError... for unreadable files
        raise DataError(
            f"dataset.source: cannot read {found.location!r} as {found.format}: {_first_line(error)}. "
            f"Check that the file is a valid {found.format} file, or set dataset.format."
        ) from None
    if first.num_rows == 0:
        raise DataError(f"dataset.source: {found.location!r} holds no rows: its file(s) have columns but no data. "
                        "Check that the file was written completely, or point dataset.source at the data.")
    return data_files.read_table(found), first


def _conversion(spec: DatasetSpec, columns: dict, image_column: str | None, found, first, split: str) -> Conversion:
    names = list(columns)
    where = f"in {found.location!r}"

    def require(column: str, field: str) -> None:
        if column not in columns:
            import difflib

            close = difflib.get_close_matches(column, names, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise DataError(f"{field}: no column {column!r} {where}; its columns are: {', '.join(names)}.{hint}")

    require(spec.label, "dataset.label")
    split_column = spec.split.column if split == "all" else None
    if split_column:
        require(split_column, "dataset.split.column")
    if image_column:
        require(image_column, "dataset.image_column")
        size, channels = spec.image_size, spec.channels
        if size is None or channels is None:
            value = first.column(image_column)[0].as_py()
            root = found.uri(found.root)
            try:
                probed_size, probed_channels = image_info(read_image_bytes(value, root) if isinstance(value, str) else value)
            except Exception as error:
                raise DataError(f"dataset: cannot decode image {value if isinstance(value, str) else '(bytes)'}: "
                                f"{_first_line(error)}. Fix or remove it, or set dataset.on_bad_image: skip.") from None
            channels = channels or probed_channels
        return Conversion((), spec.label, image_column, found.uri(found.root), tuple(spec.image_size) if spec.image_size else None,
                          None if spec.image_size else probed_size, channels, split_column)
    excluded = {spec.label, split_column}
    features = spec.features or [c for c in names if c not in excluded]
    for column in features:
        require(column, "dataset.features")
    if not features:
        raise DataError(f"dataset.features: {where} has no columns besides the label.")
    bad = [f"{c} ({columns[c]})" for c in features if not is_numeric(columns[c])]
    if bad:
        raise DataError(f"dataset.features: columns must be numbers; {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not. "
                        f"Leave them out with dataset.features: [..], or encode them as numbers.")
    tensors = [c for c in features if is_tensor(columns[c])]
    if tensors and len(features) > 1:
        raise DataError(f"dataset.features: a tensor column ({tensors[0]}) must be the only feature; "
                        f"got {', '.join(features)}.")
    return Conversion(tuple(features), spec.label, split_column=split_column)


def _estimated_bytes(resolved: dict, conversion: Conversion, kind: str) -> float:
    """What the model inputs of all splits would take in memory."""
    if kind == "images":
        height, width = conversion.image_size or conversion.expected_size
        images = sum(len(f.paths) for f in resolved.values())  # folder sources: one file per image
        per_image = height * width * conversion.channels * 4
        return images * per_image if resolved and next(iter(resolved.values())).format == "images" \
            else sum(f.total_bytes for f in resolved.values()) * 20
    return sum(f.total_bytes for f in resolved.values()) * 3  # compressed or text -> float32


# --- in memory -----------------------------------------------------------------------------------


def _load_in_memory(spec, converted, conversion, seed, class_names, task) -> LoadedData:
    arrays = {}
    for name, dataset in converted.items():
        try:
            batches = list(dataset.iter_batches(batch_size=None, batch_format="numpy"))
        except Exception as error:
            raise DataError(f"{_field(name)}: cannot read the data: {_first_line(error)}") from None
        if not batches:
            kept = (f" once only dataset.classes {list(spec.classes)} are kept; check that the label column holds "
                    "those labels") if spec.classes is not None else "; check that the files hold data"
            raise DataError(f"{_field(name)}: no rows left{kept}.")
        arrays[name] = {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
    skipped = 0
    for name, columns in arrays.items():
        bad = columns["problem"] != ""
        if bad.any():
            skippable = np.array([p.startswith("cannot decode") for p in columns["problem"][bad]])
            if spec.on_bad_image == "skip" and skippable.all():
                skipped += int(bad.sum())
                arrays[name] = {key: value[~bad] for key, value in columns.items()}
            else:
                _raise_problems(columns["name"][bad], columns["problem"][bad], int(bad.sum()), name)
    parts = _split_in_memory(spec, arrays, seed, task)
    for name in ("train", "validation"):
        if len(parts[name]["label_raw"]) == 0:
            raise DataError(f"dataset.split: the {name} split is empty; give it rows (a larger fraction, "
                            f"more data, or rows marked {name!r} in the split column).")
    if task == "regression":
        classes = []
        splits = {name: Split(part["features"].astype(np.float32, copy=False), _numbers(part["label_raw"]))
                  for name, part in parts.items()}
    else:
        classes = _classes(Counter(parts["train"]["label_raw"].tolist()), class_names,
                           {n: Counter(p["label_raw"].tolist()) for n, p in parts.items() if n != "train"})
        index = {name: i for i, name in enumerate(classes)}
        splits = {name: Split(part["features"].astype(np.float32, copy=False),
                              np.array([index[v] for v in part["label_raw"]], dtype=np.int32))
                  for name, part in parts.items()}
    mean, variance = feature_statistics(splits["train"].features)
    return LoadedData(splits["train"], splits["validation"], splits.get("test"), classes,
                      tuple(splits["train"].features.shape[1:]), mean, variance, skipped_rows=skipped)


def _numbers(values: np.ndarray) -> np.ndarray:
    """A regression target as float32; a DataError when a label is not a number."""
    try:
        return values.astype(np.float64).astype(np.float32)
    except ValueError:
        bad = next(v for v in values if not _is_number_text(v))
        raise DataError(f"dataset.label: model.task is regression, but the label {bad!r} is not a number.") from None


def _is_number_text(value) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


def _split_in_memory(spec, arrays, seed, task) -> dict[str, dict]:
    if "all" not in arrays:
        return arrays
    columns = arrays["all"]
    if spec.split.column:
        parts = {name: {k: v[columns["split"] == name] for k, v in columns.items()} for name in SPLITS}
        _check_split_values(columns["split"], spec.split.column)
        return {name: part for name, part in parts.items() if name != "test" or len(part["label_raw"])}
    from finetune.data import stratified_rows

    labels = columns["label_raw"] if task == "classification" else None
    rows = stratified_rows(labels, spec.split.validation, spec.split.test, seed, len(columns["label_raw"]))
    return {name: {k: v[index] for k, v in columns.items()} for name, index in rows.items()}


def _check_split_values(values: np.ndarray, column: str) -> None:
    unknown = sorted(set(values.tolist()) - set(SPLITS))
    if unknown:
        raise DataError(f"dataset.split.column: column {column!r} holds {', '.join(map(repr, unknown[:5]))}; "
                        f"expected only train, validation and test.")


def _classes(train_counts: Counter, folder_classes: list[str] | None, other_counts: dict[str, Counter]) -> list[str]:
    """Class names in a stable order (numbers by value, text alphabetically); a class that has no
    training rows is an error, not a silent new index."""
    classes = sorted(train_counts, key=_class_sort_key)
    for name in folder_classes or []:
        if name not in train_counts:
            raise DataError(f"dataset: class {name!r} has no training rows (its folder is empty or all its "
                            "images went to other splits). Add images or remove the folder.")
    for split, counts in other_counts.items():
        unseen = sorted(set(counts) - set(train_counts), key=_class_sort_key)
        if unseen:
            raise DataError(f"dataset: class {unseen[0]!r} appears in the {split} split ({counts[unseen[0]]} rows) "
                            f"but has no training rows; the model could never predict it. Add training rows "
                            f"for it or remove those rows.")
    if len(classes) < 2:
        raise DataError(f"dataset.label: the training split has {len(classes)} class; expected at least 2.")
    return classes


def _class_sort_key(name: str):
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


def _raise_problems(names, problems, count: int, split: str) -> None:
    examples = "; ".join(f"{n}: {p}" for n, p in list(zip(names, problems))[:EXAMPLES])
    kinds = Counter(p.split(":")[0] for p in problems)
    hint = ("Fix or remove those images, or set dataset.on_bad_image: skip."
            if any(k.startswith("cannot decode") for k in kinds) else
            "Set dataset.image_size to resize images." if any("differs" in p for p in problems) else
            "Clean or drop those rows before training.")
    where = "" if split == "all" else f" of the {split} split"
    raise DataError(f"dataset: {count} unusable row{'s' if count != 1 else ''}{where} ({examples}). {hint}")


# --- streaming -----------------------------------------------------------------------------------


def _load_streaming(spec, converted, conversion, seed, class_names, raw, previews, task, files) -> LoadedData:
    """Check every row once with Ray Data (in parallel, on the cluster); keep the splits lazy."""
    if "all" in converted:
        base = converted["all"]
        if spec.split.column:
            _check_split_values(np.array(base.unique("split")), spec.split.column)
            filters = {name: ("column", name) for name in SPLITS}
            checked = {name: base.filter(_split_is, fn_kwargs={"name": name}) for name in SPLITS}
        else:
            bounds = {"train": (spec.split.validation + spec.split.test, 1.0),
                      "validation": (0.0, spec.split.validation),
                      "test": (spec.split.validation, spec.split.validation + spec.split.test)}
            filters = {name: ("bucket", low, high, seed) for name, (low, high) in bounds.items() if high > low}
            checked = {name: base.map_batches(_in_bucket, fn_kwargs={"low": low, "high": high, "seed": seed},
                                              batch_format="numpy")
                       for name, (_, low, high, _) in filters.items()}
        sources = {name: raw["all"] for name in filters}
        first_rows = {name: previews["all"] for name in filters}
        files = {name: files["all"] for name in filters}
    else:
        filters = {name: None for name in converted}
        checked, sources, first_rows = dict(converted), dict(raw), dict(previews)
    summaries = {name: _summarize(dataset, name) for name, dataset in checked.items()}
    skipped = 0
    for name, summary in summaries.items():
        if summary["bad"]:
            if spec.on_bad_image == "skip" and summary["bad"] == summary["decode"]:
                skipped += summary["bad"]
            else:
                names, problems = zip(*summary["examples"])
                _raise_problems(list(names), list(problems), summary["bad"], name)
    if task == "regression":
        classes = []
        for summary in summaries.values():
            _numbers(np.array(list(summary["labels"])[:1000], dtype=object))
    else:
        classes = _classes(summaries["train"]["labels"], class_names,
                           {n: s["labels"] for n, s in summaries.items() if n != "train"})
    rows = {name: summary["rows"] - summary["bad"] for name, summary in summaries.items()}
    for name in ("train", "validation"):
        if rows.get(name, 0) == 0:
            raise DataError(f"dataset.split: the {name} split is empty; use a larger fraction or more data.")
    # What trials read every epoch: one lean conversion from the raw rows to model inputs.
    arguments = {name: {"conversion": conversion, "classes": classes or None, "split": filters[name]} for name in checked}
    final = {name: StreamSplit(sources[name].map_batches(model_inputs_batch, fn_kwargs=arguments[name],
                                                         batch_format="pyarrow", batch_size=None),
                               rows[name], _preview(first_rows[name], arguments[name]), files[name])
             for name in checked if rows[name]}
    train = summaries["train"]
    mean = train["sum"] / train["count"]
    variance = np.maximum(train["sum_squares"] / train["count"] - mean**2, 0.0)
    variance = np.where(variance > 1e-12, variance, 1.0)  # constant features only centred, as feature_statistics
    return LoadedData(final["train"], final["validation"], final.get("test"), classes, train["shape"], mean, variance,
                      skipped_rows=skipped)


def _preview(first: pa.Table, arguments: dict) -> Split:
    """A split's first rows as model inputs, converted here from the rows the driver already read."""
    batch = model_inputs_batch(first, **arguments)
    return Split(np.asarray(batch["features"], np.float32), batch["label"])


def _split_is(row: dict, name: str) -> bool:
    return row["split"] == name


def _in_bucket(batch: dict, low: float, high: float, seed: int) -> dict:
    buckets = row_buckets(batch["features"], seed)
    keep = (buckets >= low) & (buckets < high)
    return {key: value[keep] for key, value in batch.items()}


def _summarize(dataset, split: str) -> dict:
    """Row count, label counts, bad rows and feature sums of a split, in one parallel pass."""
    try:
        parts = dataset.map_batches(_batch_summary, batch_format="numpy").take_all()
    except Exception as error:
        raise DataError(f"dataset: cannot read the {split} data: {_first_line(error)}") from None
    summary = {"rows": 0, "bad": 0, "decode": 0, "labels": Counter(), "examples": [], "count": 0.0,
               "sum": 0.0, "sum_squares": 0.0, "shape": None}
    for part in parts:
        item = json.loads(part["summary"])
        summary["rows"] += item["rows"]
        summary["bad"] += item["bad"]
        summary["decode"] += item["decode"]
        summary["labels"].update(item["labels"])
        summary["examples"].extend(tuple(e) for e in item["examples"])
        summary["count"] += item["count"]
        summary["sum"] = summary["sum"] + np.array(item["sum"])
        summary["sum_squares"] = summary["sum_squares"] + np.array(item["sum_squares"])
        summary["shape"] = summary["shape"] or tuple(item["shape"])
    summary["examples"] = summary["examples"][:EXAMPLES]
    return summary


def _batch_summary(batch: dict) -> dict:
    features, problems = batch["features"], batch["problem"]
    good = problems == ""
    used = features[good]
    per = used.reshape(-1, used.shape[-1]) if used.ndim > 2 else used
    item = {
        "rows": int(len(problems)), "bad": int((~good).sum()),
        "decode": int(sum(p.startswith("cannot decode") for p in problems[~good])),
        "labels": Counter(batch["label_raw"][good].tolist()),
        "examples": [[str(n), str(p)] for n, p in zip(batch["name"][~good][:EXAMPLES], problems[~good][:EXAMPLES])],
        "count": float(len(per)), "sum": per.sum(axis=0, dtype=np.float64).tolist(),
        "sum_squares": (per.astype(np.float64) ** 2).sum(axis=0).tolist(),
        "shape": list(features.shape[1:]),
    }
    return {"summary": np.array([json.dumps(item)])}


def _first_line(error: BaseException) -> str:
    cause = innermost_cause(error)
    text = str(cause).strip().splitlines()
    return (text[0] if text else type(cause).__name__)[:400]
