"""Storage that fails: a full disk and a read-only mount, as real size-capped and read-only tmpfs
mounts in a mount namespace of their own (`unshare --mount`, so nothing outlives the test), and a
storage path through a file where the test runner lacks the rights to mount. Every file the runner
writes is whole or absent under its name; two runs never share a folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REPO, write_job

from finetune import storage
from finetune.errors import StorageError


def can_mount() -> bool:
    if not (shutil.which("unshare") and shutil.which("nsenter")) or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


needs_mount = pytest.mark.skipif(not can_mount(), reason="needs root, unshare --mount and nsenter for a private tmpfs")


def in_tmpfs(folder: Path, options: str, code: str, before: str = "") -> subprocess.CompletedProcess:
    """Run Python `code` in a mount namespace of its own, where `folder` is a tmpfs mounted with
    `options` (size=..., ro) and `before` (a shell command) has run."""
    folder.mkdir(parents=True, exist_ok=True)
    script = f"mount -t tmpfs -o {options} tmpfs {folder} && {before or 'true'} && exec {sys.executable} -c \"$0\""
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, textwrap.dedent(code)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


@needs_mount
def test_a_write_to_a_full_disk_keeps_the_old_file_whole_and_leaves_no_temporary(tmp_path):
    (tmp_path / "big.bin").write_bytes(bytes(2 << 20))  # a model file larger than the disk's room
    result = in_tmpfs(tmp_path / "disk", "size=1m", f"""
        import os
        from finetune import storage
        from finetune.errors import StorageError
        folder = {str(tmp_path / 'disk')!r}
        target = os.path.join(folder, "summary.json")
        storage.write_bytes(target, b"old and whole")
        for name, write in [("write_bytes", lambda: storage.write_bytes(target, bytes(2 << 20))),
                            ("write_json", lambda: storage.write_json(target, {{"x": "y" * (2 << 20)}})),
                            ("copy_file", lambda: storage.copy_file({str(tmp_path / 'big.bin')!r}, target))]:
            try:
                write()
                print(name, "WROTE")
            except StorageError as error:
                print(name, "REFUSED", error)
        print("CONTENT", open(target, "rb").read())
        print("LEFT", sorted(os.listdir(folder)))
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in ("write_bytes", "write_json", "copy_file"):
        line = next(line for line in lines if line.startswith(name))
        assert f"REFUSED cannot write {tmp_path / 'disk' / 'summary.json'}: No space left on device" in line, line
    assert "CONTENT b'old and whole'" in lines
    assert "LEFT ['summary.json']" in lines  # no .tmp- file left behind


def run_in_process(job: Path, storage_path: str) -> str:
    """`finetune run` through finetune.cli.main, then whether Ray was started."""
    return f"""
        import sys
        from finetune.cli import main
        code = main(["run", {str(job)!r}, "--set", "storage_path={storage_path}"])
        import ray
        print("EXIT", code, "RAY", ray.is_initialized())
    """


@needs_mount
@pytest.mark.parametrize("options,before,reason", [
    ("ro,size=1m", "", "Read-only file system"),
    ("size=1m", "head -c 1048576 /dev/zero > {folder}/filler", "No space left on device"),
    ("size=4m", "", "only 4.0 MiB free under"),
], ids=["read-only", "full", "nearly-full"])
def test_a_read_only_or_full_storage_path_is_refused_before_ray_starts(tmp_path, tiny_job_text, options, before,
                                                                       reason):
    job = write_job(tmp_path, tiny_job_text)
    folder = tmp_path / "disk"
    result = in_tmpfs(folder, options, run_in_process(job, f"{folder}/runs"), before.format(folder=folder))
    assert "EXIT 2 RAY False" in result.stdout, result.stdout + result.stderr[-2000:]
    assert "error: storage_path: " in result.stderr and str(folder / "runs" / "tiny") in result.stderr
    assert reason in result.stderr and "Traceback" not in result.stderr


def test_a_storage_path_through_a_file_is_refused_before_ray_starts(tmp_path, tiny_job_text):
    """Where the test runner cannot mount: a storage path whose writes fail all the same."""
    (tmp_path / "a-file").write_text("not a folder")
    job = write_job(tmp_path, tiny_job_text)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(run_in_process(job, f"{tmp_path}/a-file/runs"))],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "EXIT 2 RAY False" in result.stdout, result.stderr[-2000:]
    assert f"storage_path: cannot write under {tmp_path / 'a-file' / 'runs' / 'tiny'}" in result.stderr
    assert "Not a directory" in result.stderr and (tmp_path / "a-file").read_text() == "not a folder"


def test_the_write_probe_leaves_nothing_behind(tmp_path):
    storage.check_writable(str(tmp_path / "runs" / "job"))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "runs").mkdir()
    storage.check_writable(str(tmp_path / "runs" / "job"))
    assert list(tmp_path.iterdir()) == [tmp_path / "runs"] and list((tmp_path / "runs").iterdir()) == []


def test_written_files_take_the_umask_and_replace_whole(tmp_path):
    target = tmp_path / "out" / "table.parquet"
    storage.write_bytes(str(target), b"first")
    storage.write_bytes(str(target), b"second")
    assert target.read_bytes() == b"second" and os.listdir(target.parent) == ["table.parquet"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    storage.copy_tree(str(tmp_path / "out"), str(tmp_path / "copy"))
    assert (tmp_path / "copy" / "table.parquet").read_bytes() == b"second"
    assert (tmp_path / "copy").stat().st_mode & 0o777 == 0o777 & ~umask


def test_refused_writes_are_told_from_other_errors():
    assert storage.refused_write(OSError(28, "No space left on device")) == "No space left on device"
    text = ("ray.exceptions.RayTaskError(OSError): ray::ImplicitFunc.train()\n  File ...\n"
            "OSError: [Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert storage.refused_write(RuntimeError(text)).endswith("No space left on device")
    assert storage.refused_write(RuntimeError("OSError: [Errno 30] Read-only file system: '/x'"))
    assert storage.refused_write(RuntimeError("worker died")) is None
    assert storage.refused_write(RuntimeError("PermissionError: [Errno 13] Permission denied: '/data'")) is None
    assert issubclass(StorageError, Exception) and StorageError("x").exit_code == 1


def test_runs_of_one_job_started_in_the_same_second_get_their_own_folders(tmp_path):
    """Two processes making run folders of one job at once, 300 each: all 600 are distinct and
    exist. (600 names of 4 hex digits drawn within a second or two collide more often than not.)"""
    code = textwrap.dedent(f"""
        import sys, time
        from finetune.job import validate_job_dict
        from finetune.runner import new_run_dir
        job = validate_job_dict({{"name": "same", "storage_path": {str(tmp_path)!r}}})
        start = float(sys.argv[1])
        while time.time() < start:
            pass
        print("\\n".join(new_run_dir(job) for _ in range(300)))
    """)
    start = f"{time.time() + 5:.3f}"  # both start together, past their imports
    makers = [subprocess.Popen([sys.executable, "-c", code, start], stdout=subprocess.PIPE, text=True, cwd=REPO)
              for _ in range(2)]
    made = [line for maker in makers for line in maker.communicate(timeout=120)[0].splitlines()]
    assert all(maker.returncode == 0 for maker in makers)
    assert len(made) == 600 and len(set(made)) == 600
    assert sorted(os.listdir(tmp_path / "same")) == sorted(os.path.basename(m) for m in made)


@pytest.mark.slow
@needs_mount
@pytest.mark.ray
def test_a_disk_that_fills_during_a_run_stops_it_naming_the_path_and_it_resumes(tmp_path, tiny_job_text):
    """A real `finetune run` on a 64 MiB tmpfs that the test fills once trials train: the run ends
    (no hang) naming the storage and what was kept, exit 1; once there is room again, a resume
    finishes every trial. The tmpfs lives in a mount namespace held by a `sleep`; the run enters it
    with nsenter and the test reaches it through /proc/<pid>/root."""
    store = tmp_path / "disk"
    store.mkdir()
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               f"mount -t tmpfs -o size=64m tmpfs {store} && echo mounted && exec sleep 1200"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "mounted"
        seen = Path(f"/proc/{holder.pid}/root{store}")  # the tmpfs as the run sees it
        job = write_job(tmp_path, tiny_job_text.replace(f"storage_path: {tmp_path / 'runs'}", f"storage_path: {store}")
                        .replace("epochs: 3", "epochs: 6"))

        def inside(*arguments: str) -> list[str]:
            return ["nsenter", "-t", str(holder.pid), "-m", "--", sys.executable, "-m", "finetune", *arguments]

        driver = subprocess.Popen(inside("run", str(job)), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        for line in driver.stdout:
            if "epoch 2/6" in line:
                break
        with open(seen / "filler", "wb") as filler:  # every byte left
            with pytest.raises(OSError, match="No space left on device"):
                while True:
                    filler.write(bytes(1 << 20))
                    filler.flush()
        out, err = driver.communicate(timeout=300)
        (run_dir,) = (seen / "tiny").iterdir()
        run_dir = store / "tiny" / run_dir.name  # as the run names it
        assert driver.returncode == 1, err[-3000:]
        assert f"error: run {run_dir} stopped: storage refused a write under it (" in err, err[-3000:]
        assert "No space left on device" in err
        assert f"Resume it once the storage takes writes again (free space, or fix the mount) with: finetune resume " \
               f"{run_dir}" in err

        (seen / "filler").unlink()
        resumed = subprocess.run(inside("resume", str(run_dir)), cwd=REPO, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        summary = json.loads((seen / "tiny" / run_dir.name / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["num_completed"] == 2, summary["trials"]
        assert not [p for p in (seen / "tiny" / run_dir.name).rglob(f"{storage.TEMPORARY_PREFIX}*")]
    finally:
        holder.kill()
        holder.wait()
