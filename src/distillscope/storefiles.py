"""The run store's file primitives: atomic writes (temp file with this package's prefix, fsync,
rename), part checksums, the run-directory lock, and the cleanup of temp files left by dead
writers (never anything else). `store.RunStore` builds on them; the report reuses them.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from distillscope.schemas import SCHEMAS

_UMASK = os.umask(0o022)
os.umask(_UMASK)
_UNIT_RE = re.compile(r"^[A-Za-z0-9_.=+-]+(/[A-Za-z0-9_.=+-]+)*$")
TMP_PREFIX = ".distillscope-tmp-"  # + "<pid>-<final name>.<random>.tmp"
_TMP_RE = re.compile(r"^\.distillscope-tmp-(\d+)-.+\.tmp$")
LOCK_NAME = ".lock"
MARKER_VERSION = 1


class StoreError(RuntimeError):
    """The run directory cannot be used: mismatched config, not writable, disk full, ..."""


def _unit_file(unit: str) -> str:
    if not _UNIT_RE.match(unit) or "__" in unit:
        raise ValueError(f"bad unit key {unit!r}")
    return unit.replace("/", "__")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_temp_files(folders: list[Path]) -> list[Path]:
    """Remove this module's temp files (TMP_PREFIX, see atomic_write_bytes) left in `folders`
    (not below them) by writers that are no longer running: a write killed before its rename.
    Nothing else is touched, whatever its name. Returns what was removed."""
    removed = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            m = _TMP_RE.match(p.name)
            if m and p.is_file() and not p.is_symlink() and not _pid_alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
    return removed


def nearest_existing_parent(path: Path) -> Path:
    """The closest folder above `path` that exists (or is a link): making `path` would create
    only the folders below it."""
    up = Path(path).parent
    while not (up.exists() or up.is_symlink()) and up != up.parent:
        up = up.parent
    return up


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write, fsync, rename: the file is either absent, old, or complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{os.getpid()}-{path.name}.",
                               suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_table(path: Path, table: pa.Table,
                       metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """Write a Parquet file atomically; returns its size and SHA-256 (for the unit marker)."""
    if metadata:
        meta = dict(table.schema.metadata or {})
        meta.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    atomic_write_bytes(path, data)
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


def _file_sha256(path: Path, st: os.stat_result) -> str:
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


# ---------------------------------------------------------------------------------------------
# The run lock: one writing process per run directory (flock; released by the kernel when the
# process dies). Re-entrant within a process: every holder in this process shares one lock.
_LOCKS: dict[str, list[int]] = {}  # lock file (real path) -> [fd, holders]


def _lock_owner(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or not info.get("pid"):
        return "another process"
    return (f"pid {info.get('pid')} on {info.get('host', '?')} since {info.get('since', '?')}: "
            f"{info.get('command', '?')}")


def acquire_lock(path: Path, *, wait: bool = False, what: str = "run directory") -> str:
    """Take the exclusive lock `path` (created if needed) for this process; returns the key to
    give `release_lock`. A lock held by another process: StoreError naming it, or with `wait`
    block until it is free."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(path)
    if key in _LOCKS:
        _LOCKS[key][1] += 1
        return key
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise StoreError(
                    f"{path.parent} is in use: the {what} is locked by {_lock_owner(path)}; "
                    f"wait for it to finish, or pass --wait to wait for it") from None
            fcntl.flock(fd, fcntl.LOCK_EX)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                "command": " ".join(os.path.basename(a) if i == 0 else a
                                    for i, a in enumerate(sys.argv))}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    _LOCKS[key] = [fd, 1]
    return key


def release_lock(key: str) -> None:
    held = _LOCKS.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _LOCKS[key]
        with contextlib.suppress(OSError):
            os.close(held[0])  # closing the descriptor releases the flock


@contextlib.contextmanager
def run_lock(run_dir: str | Path, *, wait: bool = False):
    """Hold RUN_DIR/.lock for the duration of the block (the CLI wraps every writing command)."""
    run_dir = Path(run_dir)
    try:
        key = acquire_lock(run_dir / LOCK_NAME, wait=wait)
    except OSError as err:
        raise _wrap_os_error(err, run_dir) from None
    try:
        yield
    finally:
        release_lock(key)


def _wrap_os_error(err: OSError, run_dir: Path) -> StoreError:
    if err.errno == errno.ENOSPC:
        return StoreError(f"disk full while writing to {run_dir}; the last unit was not "
                          f"committed and the tables are consistent: free space and resume")
    if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return StoreError(f"cannot write to the run directory {run_dir} ({err.strerror}); "
                          f"choose a writable --out")
    if err.errno == errno.ENOTDIR:
        return StoreError(f"cannot use {run_dir}: a part of that path is a file, not a "
                          "directory; choose another --out")
    return StoreError(f"I/O error in {run_dir}: {err}")


def to_table(name: str, rows: pd.DataFrame | list[dict[str, Any]]) -> pa.Table:
    """Rows -> an Arrow table with exactly the schema of `name` (missing columns -> null)."""
    schema = SCHEMAS[name]
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    cols = {}
    for field in schema:
        if field.name in df.columns:
            cols[field.name] = pa.array(df[field.name].tolist(), type=field.type, from_pandas=True)
        else:
            cols[field.name] = pa.nulls(len(df), type=field.type)
    return pa.table(cols, schema=schema)
