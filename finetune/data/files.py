"""Finding a data set's files: a file, a folder, a glob or a URI, through pyarrow's file systems,
and opening them as a Ray Dataset with Ray Data's pyarrow readers."""

from __future__ import annotations

import fnmatch
import posixpath
from dataclasses import dataclass

import pyarrow.fs as pafs

from finetune import storage
from finetune.errors import DataError

EXTENSIONS = {
    ".parquet": "parquet", ".pq": "parquet", ".csv": "csv",
    ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow",
}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class Files:
    """The files behind one `source`, resolved once in the driver."""

    location: str  # as the job gave it
    filesystem: pafs.FileSystem
    paths: list[str]  # file paths inside `filesystem`
    sizes: list[int]
    mtimes: list[float]
    format: str
    root: str  # the folder the source names, or the folder of the file

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)

    def uri(self, path: str) -> str:
        """A path inside the file system as something pyarrow can open anywhere in the cluster."""
        return path if isinstance(self.filesystem, pafs.LocalFileSystem) else f"{self.filesystem.type_name}://{path}"

    def fingerprint(self) -> dict:
        return {"location": self.location, "format": self.format, "files": len(self.paths),
                "bytes": self.total_bytes, "latest_mtime": max(self.mtimes, default=None)}


def resolve(location: str, field: str, format: str | None) -> Files:
    """Every file a source names, with its format; a DataError naming the field when nothing is there."""
    try:
        filesystem, path = pafs.FileSystem.from_uri(storage.absolute(location))
    except (pafs.ArrowInvalid, ValueError, OSError) as error:
        raise DataError(f"{field}: cannot open {location!r}: {error}. Expected a path or a URI that "
                        "pyarrow opens (file://, s3://, gs://, hdfs://).") from None
    if any(char in posixpath.basename(path) for char in "*?["):
        infos = _glob(filesystem, path)
        root = posixpath.dirname(path)
    else:
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"{field}: no file or folder at {location!r} (looked for {path}). "
                            "Check the path; a relative path in a job file starts from the job file's folder.")
        if info.type == pafs.FileType.File:
            infos, root = [info], posixpath.dirname(path)
        else:
            infos = [i for i in filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
                     if i.type == pafs.FileType.File and not posixpath.basename(i.path).startswith((".", "_"))]
            root = path
    if not infos:
        raise DataError(f"{field}: {location!r} holds no files (names starting with '.' or '_' are skipped). "
                        "Expected data files (.parquet, .csv, .arrow) or one folder of images per class there: "
                        "check the path or the pattern.")
    infos.sort(key=lambda i: i.path)
    format = format or infer_format(infos, field, location)
    if format != "images":
        infos = [i for i in infos if EXTENSIONS.get(_extension(i.path)) == format] or infos
    return Files(location, filesystem, [i.path for i in infos], [i.size for i in infos],
                 [i.mtime.timestamp() if i.mtime else 0.0 for i in infos], format, root)


def changed_file(files: Files) -> str | None:
    """What became of the first of `files` that is gone or differs (size, modification time) from
    when the run resolved it; None when every file is as it was."""
    for path, size, mtime, info in zip(files.paths, files.sizes, files.mtimes, files.filesystem.get_file_info(files.paths)):
        if info.type == pafs.FileType.NotFound:
            return f"{files.uri(path)} disappeared"
        now = info.mtime.timestamp() if info.mtime else 0.0
        if info.size != size or now != mtime:
            return f"{files.uri(path)} changed ({size} bytes before, {info.size} now)" if info.size != size \
                else f"{files.uri(path)} changed (modified again since the run started)"
    return None


def _glob(filesystem: pafs.FileSystem, pattern: str) -> list[pafs.FileInfo]:
    folder = posixpath.dirname(pattern)
    if filesystem.get_file_info(folder).type != pafs.FileType.Directory:
        return []
    infos = filesystem.get_file_info(pafs.FileSelector(folder, recursive=False))
    return [i for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, pattern)]


def _extension(path: str) -> str:
    return posixpath.splitext(path)[1].lower()


def infer_format(infos: list[pafs.FileInfo], field: str, location: str) -> str:
    extensions = {_extension(i.path) for i in infos}
    formats = {EXTENSIONS[e] for e in extensions if e in EXTENSIONS}
    if len(formats) == 1:
        return formats.pop()
    if extensions and extensions <= set(IMAGE_EXTENSIONS):
        return "images"
    raise DataError(
        f"{field}: cannot tell the format of {location!r} (file extensions: {', '.join(sorted(extensions))}). "
        f"Set dataset.format to one of parquet, csv, arrow, images."
    )


def image_folder_rows(files: Files) -> tuple[list[str], list[str]]:
    """(image path, class) for a folder with one sub-folder per class: train/cat/001.png."""
    paths, labels = [], []
    for path in files.paths:
        relative = posixpath.relpath(path, files.root)
        if _extension(path) not in IMAGE_EXTENSIONS:
            continue
        parts = relative.split("/")
        if len(parts) < 2:
            raise DataError(
                f"dataset.source: image {path} is not inside a class folder. Expected one sub-folder "
                f"per class, such as {files.root}/cat/001.png."
            )
        paths.append(files.uri(path))
        labels.append(parts[0])
    if not paths:
        raise DataError(f"dataset.source: no images ({', '.join(IMAGE_EXTENSIONS)}) under {files.location!r}.")
    return paths, labels


def class_folders(files: Files) -> list[str]:
    """The class sub-folders of an image folder, including empty ones (a class with no images)."""
    selector = pafs.FileSelector(files.root, recursive=False)
    return sorted(posixpath.basename(i.path) for i in files.filesystem.get_file_info(selector)
                  if i.type == pafs.FileType.Directory and not posixpath.basename(i.path).startswith("."))


def read_table(files: Files):
    """A lazy Ray Dataset over tabular files, read by Ray Data's pyarrow readers in parallel tasks."""
    import ray.data

    if files.format == "parquet":
        return ray.data.read_parquet(files.paths, filesystem=files.filesystem)
    if files.format == "csv":
        return ray.data.read_csv(files.paths, filesystem=files.filesystem)
    if files.format == "arrow":
        return ray.data.read_datasource(_arrow_ipc_datasource(files.paths, files.filesystem))
    raise AssertionError(files.format)


def first_rows(files: Files, rows: int):
    """The schema and first rows of a table source, read with pyarrow in this process.

    Not Ray Data's `schema()` or `take()`: those run an execution and stop it early by cancelling
    its read tasks, and a cancel that races a finishing task crashes Ray 2.60's core worker
    ("Check failed: it != submissible_tasks_.end()", ray-project/ray#54527), which took down a
    submitted driver in CI."""
    import pyarrow as pa

    schema, batches, count = None, [], 0
    for path in files.paths:
        file_schema, file_batches = _record_batches(files, path)
        schema = schema or file_schema
        for batch in file_batches:
            batches.append(batch)
            count += batch.num_rows
            if count >= rows:
                break
        if count >= rows:
            break
    return pa.Table.from_batches(batches, schema=schema).slice(0, rows)


def _record_batches(files: Files, path: str):
    """(schema, record batches) of one table file."""
    if files.format == "parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(files.filesystem.open_input_file(path))
        return parquet.schema_arrow, parquet.iter_batches(batch_size=256)
    if files.format == "csv":
        import pyarrow.csv as pacsv

        reader = pacsv.open_csv(files.filesystem.open_input_stream(path))
        return reader.schema, reader
    with files.filesystem.open_input_file(path) as f:
        table = arrow_ipc_table(f.read())
    return table.schema, table.to_batches()


def arrow_ipc_table(data: bytes):
    """An Arrow IPC file (Feather v2), or failing that an Arrow IPC stream, as a table."""
    import pyarrow as pa

    try:
        reader = pa.ipc.open_file(pa.BufferReader(data))
        return pa.Table.from_batches([reader.get_batch(i) for i in range(reader.num_record_batches)],
                                     schema=reader.schema)
    except pa.ArrowInvalid:
        return pa.ipc.open_stream(pa.BufferReader(data)).read_all()


def _arrow_ipc_datasource(paths: list[str], filesystem: pafs.FileSystem):
    """Arrow IPC (Feather v2) files: Ray Data has no reader of its own, so a file-based datasource
    that reads each file's record batches with pyarrow."""
    from ray.data.datasource import FileBasedDatasource

    class ArrowIPCDatasource(FileBasedDatasource):
        _FILE_EXTENSIONS = ["arrow", "feather", "ipc"]

        def _read_stream(self, f, path: str):
            yield arrow_ipc_table(f.read())

    return ArrowIPCDatasource(paths, filesystem=filesystem)
