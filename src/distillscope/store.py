"""The run store: one directory per run, Parquet tables written in atomic units, resumable.

Layout:

    RUN_DIR/config.yaml            the resolved RunConfig
    RUN_DIR/provenance.json        git commit, versions, device, rollouts spent, timings
    RUN_DIR/tables/<name>/<unit>.parquet
    RUN_DIR/units/<unit>.done      a unit's commit marker, written after all its parts

A *unit* is a deterministic piece of work (a question's initial rollouts, one batch of
targeted rollouts, a teacher's scoring of a question). Its parts are written first (temp file,
fsync, rename), then its marker. Readers see only parts of committed units, so a run killed at
any moment shows either all of a unit or none of it; on resume an uncommitted unit is simply
redone and its parts overwritten with identical content. No pickle anywhere: Parquet, JSON and
YAML (safe_load) only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from distillscope.config import ConfigError, RunConfig, parse_config
from distillscope.schemas import SCHEMAS

_UMASK = os.umask(0o022)
os.umask(_UMASK)
_UNIT_RE = re.compile(r"^[A-Za-z0-9_.=+-]+(/[A-Za-z0-9_.=+-]+)*$")


class StoreError(RuntimeError):
    """The run directory cannot be used: mismatched config, not writable, disk full, ..."""


def _unit_file(unit: str) -> str:
    if not _UNIT_RE.match(unit):
        raise ValueError(f"bad unit key {unit!r}")
    return unit.replace("/", "__")


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
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


def atomic_write_table(path: Path, table: pa.Table, metadata: dict[str, str] | None = None) -> None:
    if metadata:
        meta = dict(table.schema.metadata or {})
        meta.update({k.encode(): v.encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def _wrap_os_error(err: OSError, run_dir: Path) -> StoreError:
    if err.errno == errno.ENOSPC:
        return StoreError(f"disk full while writing to {run_dir}; the last unit was not "
                          f"committed and the tables are consistent: free space and resume")
    if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return StoreError(f"cannot write to the run directory {run_dir} ({err.strerror}); "
                          f"choose a writable --out")
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


# ---------------------------------------------------------------------------------------------
class RunStore:
    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.tables_dir = self.dir / "tables"
        self.units_dir = self.dir / "units"
        self._done: set[str] | None = None
        self.provenance_meta: dict[str, str] = {}

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.dir / "config.yaml"

    def exists(self) -> bool:
        return self.config_path.is_file()

    def open_for(self, config: RunConfig, *, force: bool = False) -> RunConfig:
        """Create the run, or check that an existing run was made by the same config.

        Teachers may differ (adding one later is `distillscope score`); everything that
        shapes the tree must match, unless `force`. Returns the config to use (the stored one
        with any new teachers appended)."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / ".write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise _wrap_os_error(err, self.dir) from None
        for tmp in [*self.dir.glob("**/.*.tmp")]:
            tmp.unlink(missing_ok=True)  # leftovers of a write killed before its rename
        if self.exists():
            stored = self.load_config()
            if stored.fingerprint() != config.fingerprint() and not force:
                raise StoreError(
                    f"{self.dir} holds a run from a different configuration (tree fingerprint "
                    f"{stored.fingerprint()} vs {config.fingerprint()}); refusing to mix results. "
                    f"Use another --out, or --force to overwrite the configuration."
                )
            if not force:
                known = {t.name: t for t in stored.teachers}
                for t in config.teachers:
                    if t.name in known and known[t.name] != t:
                        raise StoreError(
                            f"teacher '{t.name}' in {self.dir} was defined differently; "
                            f"rename it or use --force"
                        )
                extra = [t for t in config.teachers if t.name not in known]
                config = stored.model_copy(update={"teachers": [*stored.teachers, *extra]})
        self.save_config(config)
        return config

    def load_config(self) -> RunConfig:
        if not self.exists():
            raise StoreError(f"{self.dir} is not a distillscope run (no config.yaml)")
        try:
            data = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise StoreError(f"{self.config_path}: not valid YAML: {err}") from None
        try:
            return parse_config(data, str(self.config_path))
        except ConfigError as err:
            raise StoreError(str(err)) from None

    def save_config(self, config: RunConfig) -> None:
        try:
            atomic_write_bytes(self.config_path, config.to_yaml().encode())
        except OSError as err:
            raise _wrap_os_error(err, self.dir) from None

    # -- units -----------------------------------------------------------------------------
    def done_units(self) -> set[str]:
        if self._done is None:
            self._done = set()
            if self.units_dir.is_dir():
                for p in self.units_dir.glob("*.done"):
                    self._done.add(p.name[: -len(".done")].replace("__", "/"))
        return self._done

    def is_done(self, unit: str) -> bool:
        return unit in self.done_units()

    def commit(self, unit: str, parts: dict[str, pd.DataFrame | list[dict] | pa.Table]) -> None:
        """Write every part of `unit`, then its marker. Idempotent."""
        fname = _unit_file(unit)
        try:
            for name, rows in parts.items():
                table = rows if isinstance(rows, pa.Table) else to_table(name, rows)
                atomic_write_table(self.tables_dir / name / f"{fname}.parquet", table,
                                   self.provenance_meta)
            atomic_write_bytes(self.units_dir / f"{fname}.done", b"")
        except OSError as err:
            raise _wrap_os_error(err, self.dir) from None
        self.done_units().add(unit)

    def uncommit(self, prefix: str) -> None:
        """Forget every unit whose key starts with `prefix` (used to recompute derived tables)."""
        for unit in sorted(self.done_units()):
            if unit.startswith(prefix):
                (self.units_dir / f"{_unit_file(unit)}.done").unlink(missing_ok=True)
                self.done_units().discard(unit)
                for tdir in self.tables_dir.glob("*"):
                    (tdir / f"{_unit_file(unit)}.parquet").unlink(missing_ok=True)

    # -- reading ---------------------------------------------------------------------------
    def _committed_parts(self, name: str, unit_prefix: str | None = None) -> list[Path]:
        """The Parquet parts of table `name` whose unit is committed, in unit-key order."""
        tdir = self.tables_dir / name
        if not tdir.is_dir():
            return []
        done = self.done_units()
        parts = []
        for p in sorted(tdir.glob("*.parquet")):
            unit = p.name[: -len(".parquet")].replace("__", "/")
            if unit in done and (unit_prefix is None or unit.startswith(unit_prefix)):
                parts.append(p)
        return parts

    def count_rows(self, name: str) -> int:
        """Committed rows of a table, from the Parquet footers (no data read)."""
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self._committed_parts(name))

    def read(self, name: str, unit_prefix: str | None = None) -> pd.DataFrame:
        """All committed rows of a table, in unit-key order (deterministic)."""
        frames = [pq.read_table(p).to_pandas() for p in self._committed_parts(name, unit_prefix)]
        if not frames:
            return SCHEMAS[name].empty_table().to_pandas()
        return pd.concat(frames, ignore_index=True)

    def write_json(self, filename: str, data: dict[str, Any]) -> None:
        try:
            atomic_write_bytes(self.dir / filename,
                               json.dumps(data, indent=2, sort_keys=True, default=str).encode())
        except OSError as err:
            raise _wrap_os_error(err, self.dir) from None

    def read_json(self, filename: str) -> dict[str, Any]:
        p = self.dir / filename
        if not p.is_file():
            return {}
        return json.loads(p.read_text(encoding="utf-8"))
