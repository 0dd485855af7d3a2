"""Run storage through pyarrow's file systems: a local folder, `file://`, `s3://`, `gs://`, `hdfs://`.

Credentials come from the environment, as pyarrow and Ray expect. Multi-node runs need a location
every node can reach (object storage or a shared mount), because checkpoints are written by
workers on any node.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import secrets
import shutil
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path

import pyarrow.fs as pafs

# Files being written carry this prefix until they are whole (Ray Data and our listings skip
# names that start with a dot).
TEMPORARY_PREFIX = ".tmp-"


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


def make_new_dir(location: str) -> bool:
    """Create the folder `location`, its parents as needed; False if it already exists. Locally the
    last step is an exclusive mkdir, so two processes cannot both create it; object stores have no
    folders to race for (a marker written under the name is what claims it), so there it is a
    check for any object under the prefix."""
    fs, path = filesystem(location)
    with _naming_refusals(location):
        if isinstance(fs, pafs.LocalFileSystem):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                os.mkdir(path)
            except FileExistsError:
                return False
            return True
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            return False
        fs.create_dir(path, recursive=True)
        return True


def write_bytes(location: str, data: bytes, mode: int = 0o666) -> None:
    """Write a whole file. A local file is written beside under a temporary name, flushed to disk
    and renamed into place, so that neither a reader nor a crash ever finds half a file under its
    name; object stores publish an object only once its upload is complete. A failed write leaves
    no temporary file behind; storage that refuses the write (full, read-only) raises a
    StorageError naming `location`. `mode` (less the umask) is a local file's permissions: 0o600
    for what only this user may read."""
    fs, path = filesystem(location)
    with _naming_refusals(location):
        fs.create_dir(posixpath.dirname(path), recursive=True)
        if isinstance(fs, pafs.LocalFileSystem):
            with _local_temporary(path, mode) as temporary:
                with open(temporary, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
            return
        with fs.open_output_stream(path) as out:
            out.write(data)


@contextmanager
def _local_temporary(path: str, mode: int = 0o666):
    """A new temporary name beside `path` to write to, made with `mode` less the process's umask
    as any new file is; renamed to `path` when the block ends, removed if it raises
    (KeyboardInterrupt too)."""
    temporary = os.path.join(os.path.dirname(path), f"{TEMPORARY_PREFIX}{secrets.token_hex(6)}-{os.path.basename(path)}")
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with suppress(OSError):
            os.remove(temporary)
        raise


@contextmanager
def _naming_refusals(location: str):
    """OSErrors of storage that refuses writes become a StorageError naming `location`."""
    try:
        yield
    except OSError as error:
        reason = refused_write(error)
        if reason is None:
            raise
        from finetune.errors import StorageError

        raise StorageError(f"cannot write {location}: {reason}") from None


def read_bytes(location: str) -> bytes:
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_json(location: str, value: object) -> None:
    write_bytes(location, (json.dumps(value, indent=2, default=str) + "\n").encode())


def read_json(location: str) -> object:
    return json.loads(read_bytes(location))


def copy_file(source: str, destination: str) -> None:
    """Copy a file, whole or not at all under its destination's name (as `write_bytes` writes)."""
    source_fs, source_path = filesystem(source)
    destination_fs, destination_path = filesystem(destination)
    with _naming_refusals(destination):
        destination_fs.create_dir(posixpath.dirname(destination_path), recursive=True)
        if not isinstance(destination_fs, pafs.LocalFileSystem):
            pafs.copy_files(source_path, destination_path, source_filesystem=source_fs,
                            destination_filesystem=destination_fs)
            return
        with _local_temporary(destination_path) as temporary:
            pafs.copy_files(source_path, temporary, source_filesystem=source_fs, destination_filesystem=destination_fs)
            with open(temporary, "rb+") as written:
                os.fsync(written.fileno())


def copy_tree(source: str, destination: str) -> None:
    """Copy a folder and everything in it to `destination`, which must not exist yet. A local copy
    is made in a temporary folder beside and renamed into place when complete."""
    source_fs, source_path = filesystem(source)
    destination_fs, destination_path = filesystem(destination)
    with _naming_refusals(destination):
        if not isinstance(destination_fs, pafs.LocalFileSystem):
            destination_fs.create_dir(destination_path, recursive=True)
            pafs.copy_files(source_path, destination_path, source_filesystem=source_fs,
                            destination_filesystem=destination_fs)
            return
        os.makedirs(os.path.dirname(destination_path), exist_ok=True)
        temporary = tempfile.mkdtemp(dir=os.path.dirname(destination_path), prefix=TEMPORARY_PREFIX)
        try:
            pafs.copy_files(source_path, temporary, source_filesystem=source_fs, destination_filesystem=destination_fs)
            os.chmod(temporary, 0o777 & ~_umask())
            os.rename(temporary, destination_path)
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise


def remove_tree(location: str) -> None:
    """Remove a folder and everything in it (nothing if it does not exist)."""
    fs, path = filesystem(location)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def fetch_to_local(location: str, local_path: str) -> str:
    """Copy a file from storage to a local path (models are loaded from local files)."""
    if is_local(location) and "://" not in location:
        shutil.copyfile(location, local_path)
    else:
        copy_file(location, local_path)
    return local_path


# --- storage that refuses writes ------------------------------------------------------------------

# What a full disk, a quota, a read-only mount or missing rights say, as OSError's errno names them
# and as pyarrow and Ray carry them in the text of their errors.
REFUSED_WRITES = {
    errno.ENOSPC: "No space left on device",
    errno.EDQUOT: "Disk quota exceeded",
    errno.EROFS: "Read-only file system",
    errno.EACCES: "Permission denied",
}
# Below this much free space a local storage path is refused before the run starts: each trial
# writes a checkpoint every epoch, and the run its results and best model.
MIN_FREE_BYTES = 16 << 20
PROBE_BYTES = 64 << 10


def refused_write(error: BaseException | None) -> str | None:
    """The line of `error` (or of the errors it carries, as Ray's and Tune's do in their text) that
    says storage refused a write; None for any other error."""
    if error is None:
        return None
    if isinstance(error, OSError) and error.errno in REFUSED_WRITES:
        return REFUSED_WRITES[error.errno]
    for line in reversed(str(error).splitlines()):  # not "Permission denied": too many other things say it
        if any(REFUSED_WRITES[number] in line for number in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)):
            return line.strip()[:400]
    return None


def refuses_writes(location: str) -> str | None:
    """Why the storage at `location` (an existing folder) refuses a small write now, full or
    read-only; None when it takes one. For a running search: a probe of 4 KiB, removed again."""
    from finetune.errors import StorageError

    probe = join(location, f"{TEMPORARY_PREFIX}probe-{secrets.token_hex(4)}")
    try:
        write_bytes(probe, bytes(4096))
    except StorageError as error:
        return str(error).rpartition(": ")[2]
    fs, path = filesystem(probe)
    with suppress(OSError):
        fs.delete_file(path)
    return None


def check_writable(location: str, field: str = "storage_path") -> None:
    """A UserError naming `field` unless a file can be written under `location` and removed again,
    and, for a local folder, at least MIN_FREE_BYTES are free there. Folders made for the probe
    are removed again, so a run that stops at a later check leaves nothing behind."""
    from finetune.errors import StorageError, UserError

    fs, path = filesystem(location)
    local = isinstance(fs, pafs.LocalFileSystem)
    created = _outermost_missing(path) if local else None
    probe = join(location, f"{TEMPORARY_PREFIX}probe-{secrets.token_hex(4)}")
    reason = free = None
    try:
        fs.create_dir(path, recursive=True)
        write_bytes(probe, bytes(PROBE_BYTES))
        fs.delete_file(filesystem(probe)[1])
        free = shutil.disk_usage(path).free if local else None
    except StorageError as error:  # full, read-only: the reason write_bytes gave
        reason = str(error).rpartition(": ")[2]
    except OSError as error:  # no rights, a file in the way...
        reason = refused_write(error) or str(error)
    finally:
        if created is not None:
            _remove_empty_folders(path, created)
    if reason is not None:
        raise UserError(f"{field}: cannot write under {location}: {reason}. Expected a folder with free space "
                        f"that this user may write: free space there, check its mount and rights, or set {field} "
                        "to another folder or URI.")
    if free is not None and free < MIN_FREE_BYTES:
        raise UserError(f"{field}: only {free / 2**20:.1f} MiB free under {location}; a run needs at least "
                        f"{MIN_FREE_BYTES >> 20} MiB there for its checkpoints, results and best model. Free space "
                        f"there or set {field} to another folder or URI.")


def _umask() -> int:
    """The process's umask, read without changing it (os.umask can only swap it)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration):
        return 0o022


def _outermost_missing(path: str) -> str | None:
    """The outermost folder of `path` that does not exist yet (None if `path` exists)."""
    if os.path.lexists(path):
        return None
    missing = path
    while not os.path.lexists(os.path.dirname(missing)) and os.path.dirname(missing) != missing:
        missing = os.path.dirname(missing)
    return missing


def _remove_empty_folders(path: str, outermost: str) -> None:
    """Remove `path` and its parents up to `outermost` while they are empty."""
    folder = path
    while True:
        try:
            os.rmdir(folder)
        except OSError:
            return
        if folder == outermost:
            return
        folder = os.path.dirname(folder)
