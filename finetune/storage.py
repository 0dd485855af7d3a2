"""Run storage through pyarrow's file systems: a local folder, `file://`, `s3://`, `gs://`, `hdfs://`.

Credentials come from the environment, as pyarrow and Ray expect. Multi-node runs need a location
every node can reach (object storage or a shared mount), because checkpoints are written by
workers on any node.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs


def absolute(location: str) -> str:
    """A URI unchanged; a local path made absolute (relative to the current directory)."""
    if "://" in location:
        return location.rstrip("/")
    return str(Path(location).expanduser().resolve())


def is_local(location: str) -> bool:
    return "://" not in location or location.startswith("file://")


def join(base: str, *parts: str) -> str:
    if "://" in base:
        return posixpath.join(base, *parts)
    return os.path.join(base, *parts)


def beside(location: str, path: str) -> str:
    """The location of `path`, a path inside the same file system as `location` as pyarrow and Ray
    give it (no scheme: `bucket/key` on S3, as a Ray `Checkpoint.path` is)."""
    if "://" not in location:
        return path
    return f"{location.partition('://')[0]}://{path.lstrip('/')}" if not location.startswith("file://") else path


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(absolute(location))


def exists(location: str) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_dirs(location: str) -> list[str]:
    """Names of the folders directly inside `location` (none if it does not exist)."""
    return _names(location, pafs.FileType.Directory)


def list_files(location: str) -> list[str]:
    """Names of the files directly inside `location` (none if it does not exist)."""
    return _names(location, pafs.FileType.File)


def _names(location: str, kind: pafs.FileType) -> list[str]:
    fs, path = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=False))
    return sorted(posixpath.basename(i.path) for i in infos if i.type == kind)


def make_dirs(location: str) -> None:
    fs, path = filesystem(location)
    fs.create_dir(path, recursive=True)


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole file. Local files are written beside and renamed, so a reader never sees
    half a file; object stores publish an object only once it is complete."""
    fs, path = filesystem(location)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, path)
        return
    with fs.open_output_stream(path) as out:
        out.write(data)


def read_bytes(location: str) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_json(location: str, value: object) -> None:
    write_bytes(location, (json.dumps(value, indent=2, default=str) + "\n").encode())


def read_json(location: str) -> object:
    return json.loads(read_bytes(location))


def copy_file(source: str, destination: str) -> None:
    source_fs, source_path = filesystem(source)
    destination_fs, destination_path = filesystem(destination)
    destination_fs.create_dir(posixpath.dirname(destination_path), recursive=True)
    pafs.copy_files(source_path, destination_path, source_filesystem=source_fs,
                    destination_filesystem=destination_fs)


def copy_tree(source: str, destination: str) -> None:
    """Copy a folder and everything in it to `destination`, which is created."""
    source_fs, source_path = filesystem(source)
    destination_fs, destination_path = filesystem(destination)
    destination_fs.create_dir(destination_path, recursive=True)
    pafs.copy_files(source_path, destination_path, source_filesystem=source_fs,
                    destination_filesystem=destination_fs)


def fetch_to_local(location: str, local_path: str) -> str:
    """Copy a file from storage to a local path (models are loaded from local files)."""
    if is_local(location) and "://" not in location:
        shutil.copyfile(location, local_path)
    else:
        copy_file(location, local_path)
    return local_path
