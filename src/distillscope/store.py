"""The run store: one directory per run, Parquet tables written in atomic units, resumable.

Layout:

    RUN_DIR/config.yaml            the resolved RunConfig
    RUN_DIR/provenance.json        git commit, versions, device, rollouts spent, timings
    RUN_DIR/tables/<name>/<unit>.parquet
    RUN_DIR/units/<unit>.done      a unit's commit marker, written after all its parts: JSON
                                   with each part's size and SHA-256 and a commit sequence number
    RUN_DIR/.lock                  held (flock) by the one process that writes the tables

A *unit* is a deterministic piece of work (a question's initial rollouts, one batch of
targeted rollouts, a teacher's scoring of a question). Its parts are written first (temp file,
fsync, rename), then its marker. Readers see only parts of committed units, so a run killed at
any moment shows either all of a unit or none of it; on resume an uncommitted unit is simply
redone and its parts overwritten with identical content. A part that no longer matches its
marker (truncated, deleted, edited) makes its unit uncommitted, and with it every unit of the
same question committed after it (they were computed from it): resume redoes them, and the
report refuses to pass the run off as complete. Temp files carry this module's prefix and the
writer's pid; only those of dead writers, in the run's own folders, are ever removed. No pickle
anywhere: Parquet, JSON and YAML (safe_load) only.
"""

from __future__ import annotations

import contextlib
import json
import os
import weakref
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from distillscope.config import ConfigError, RunConfig, parse_config
from distillscope.schemas import SCHEMAS
from distillscope.storefiles import (  # noqa: F401  (re-exported: the store's public API)
    _TMP_RE,
    _UMASK,
    _UNIT_RE,
    LOCK_NAME,
    MARKER_VERSION,
    TMP_PREFIX,
    StoreError,
    _file_sha256,
    _fsync_dir,
    _lock_owner,
    _pid_alive,
    _unit_file,
    _wrap_os_error,
    acquire_lock,
    atomic_write_bytes,
    atomic_write_table,
    nearest_existing_parent,
    release_lock,
    remove_stale_temp_files,
    run_lock,
    to_table,
)

PLAN_FILE = "plan.json"  # the question ids a run is to analyse, in unit-key order (q#####)
# The first line of every config.yaml the store writes: a config.yaml without it, in a folder
# with no work, is somebody's own file (a config kept beside its runs), never overwritten.
CONFIG_HEADER = "# distillscope: this run's resolved configuration (written by the tool)\n"


# ---------------------------------------------------------------------------------------------
def _group(unit: str) -> str:
    """Units of one group (a question: the key's first component) depend on the earlier ones."""
    return unit.split("/", 1)[0]


class RunStore:
    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.tables_dir = self.dir / "tables"
        self.units_dir = self.dir / "units"
        self._done: set[str] | None = None
        self._markers: dict[str, dict[str, Any]] = {}  # unit -> parsed marker (v1 only)
        self._seq = 0
        self.damaged: dict[str, str] = {}  # unit -> why it no longer counts as committed
        self.provenance_meta: dict[str, str] = {}
        self.kept_teachers: list[str] = []  # open_for: stored teachers the new config left out

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.dir / "config.yaml"

    def exists(self) -> bool:
        return self.config_path.is_file()

    def has_work(self) -> bool:
        """Whether anything computed from the stored config is here: a committed unit, the
        demonstrations of phase 0 or screening tables. A run without any may take a new
        config (a run that failed before its first unit, e.g. on a wrong task path)."""
        if self.units_dir.is_dir() and any(self.units_dir.glob("*.done")):
            return True
        return (self.dir / "demos.parquet").exists() or (self.dir / "screen").exists()

    def lock(self, *, wait: bool = False) -> None:
        """Take RUN_DIR/.lock for as long as this store object lives (re-entrant in one
        process). Another process holding it: StoreError naming that process."""
        if getattr(self, "_lock_key", None):
            return
        try:
            self._lock_key = acquire_lock(self.dir / LOCK_NAME, wait=wait)
        except OSError as err:
            raise _wrap_os_error(err, self.dir) from None
        weakref.finalize(self, release_lock, self._lock_key)

    def temp_folders(self) -> list[Path]:
        """The folders this store writes into (where its temp files may be left)."""
        return [self.dir, self.units_dir,
                *(self.tables_dir / name for name in sorted(SCHEMAS))]

    def open_for(self, config: RunConfig, *, force: bool = False) -> RunConfig:
        """Create the run, or check that an existing run was made by the same config.

        Teachers may differ (adding one later is `distillscope score`); everything that
        shapes the tree must match, unless `force`, or unless nothing has been computed here
        yet (`has_work`). Returns the config to use (the stored one with any new teachers
        appended). Holds the run lock from here on (`lock`)."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f"{TMP_PREFIX}{os.getpid()}-write-probe.tmp"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise _wrap_os_error(err, self.dir) from None
        self.lock()
        self.check_is_a_run_or_new()
        if self.exists():
            stored = self.load_config()
            fresh = not self.has_work()
            if stored.fingerprint() != config.fingerprint() and not (force or fresh):
                from distillscope.config import config_changes

                changed = config_changes(stored, config)
                shown = ", ".join(changed[:5]) + (", ..." if len(changed) > 5 else "")
                what = (f"{shown} differ" if shown else f"tree fingerprint "
                        f"{stored.fingerprint()} vs {config.fingerprint()}")
                raise StoreError(
                    f"{self.dir} holds a run from a different configuration ({what}); "
                    "refusing to mix results. Use another --out (--force applies only "
                    "scoring.*, tree.n_sig and task fields that keep the questions)"
                )
            if not fresh:
                known = {t.name: t for t in stored.teachers}
                # its scores (and own top tokens' rollouts) are stored under its name: --force
                # would relabel them with the new definition, so it is refused too
                for t in config.teachers:
                    if t.name in known and known[t.name] != t:
                        raise StoreError(
                            f"teacher '{t.name}' in {self.dir} was defined differently; its "
                            f"stored scores are the old definition's, so give the new one "
                            f"another name (distillscope score {self.dir} --teacher NEW ...)"
                        )
                # a run's teachers are only ever added: the stored ones stay, in their order
                extra = [t for t in config.teachers if t.name not in known]
                asked = {t.name for t in config.teachers}
                self.kept_teachers = [t.name for t in stored.teachers if t.name not in asked]
                config = (config if force else stored).model_copy(
                    update={"teachers": [*stored.teachers, *extra]})
            remove_stale_temp_files(self.temp_folders())
        self.save_config(config)
        return config

    def config_is_ours(self) -> bool:
        """Whether config.yaml starts with the header the store writes (`CONFIG_HEADER`)."""
        try:
            with open(self.config_path, "rb") as f:
                return f.read(len(CONFIG_HEADER)) == CONFIG_HEADER.encode()
        except FileNotFoundError:
            return False
        except OSError as err:
            raise _wrap_os_error(err, self.dir) from None

    def _has_units(self) -> bool:
        return self.units_dir.is_dir() and any(self.units_dir.glob("*.done"))

    def check_is_a_run_or_new(self) -> None:
        """StoreError when the folder holds files that say it is not a run of this tool: a
        config.yaml the store did not write in a folder without committed work, or, without
        any config.yaml, files a run writes (commit markers, which every reader would take for
        the run's; plan.json, provenance.json, demos.parquet, screen/), which a run would
        overwrite. Called before the lock file is made, and again under the lock."""
        if self.exists():
            if not self.config_is_ours() and not self._has_units():
                raise StoreError(
                    f"{self.config_path} was not written by this version of distillscope and "
                    "the folder holds no committed work: refusing to overwrite it. If an "
                    "earlier distillscope made this folder, delete that config.yaml to start "
                    "the run anew; otherwise give --out a folder of its own")
            return
        found = [n for n in (PLAN_FILE, "provenance.json", "demos.parquet")
                 if (self.dir / n).exists()]
        if self.units_dir.exists() and (not self.units_dir.is_dir() or self._has_units()):
            found.append("units/ (commit markers)")
        screen = self.dir / "screen"
        if screen.exists() and (not screen.is_dir() or any(screen.iterdir())):
            found.append("screen/")
        if found:
            raise StoreError(
                f"{self.dir} holds {', '.join(found)} but no config.yaml: it is not a "
                "distillscope run (or its config.yaml was removed), and a run would overwrite "
                "them; give --out a folder of its own")

    def _start_files(self) -> list[Path]:
        """The files a first invocation may create before any work."""
        return [self.config_path, self.dir / PLAN_FILE, self.dir / "provenance.json",
                self.dir / LOCK_NAME]

    def _start_folders(self) -> list[Path]:
        """The folders it may create, deepest first."""
        return [*(self.tables_dir / n for n in sorted(SCHEMAS)), self.tables_dir,
                self.units_dir, self.dir]

    def existing_paths(self) -> set[Path]:
        """What exists now of the start files and folders, and the nearest existing folder
        above the run directory (to pass to `remove_failed_start` later)."""
        out = {p for p in [*self._start_files(), *self._start_folders()]
               if p.exists() or p.is_symlink()}
        # the nearest existing folder above: nothing from there up is touched
        return out | {nearest_existing_parent(self.dir.absolute())}

    def remove_failed_start(self, before: set[Path]) -> None:
        """After a first invocation failed before any work (a model that would not load, a
        task file not found): remove what it created, so that the place is as it was found.
        Only what is not in `before` (`existing_paths`, taken before the invocation made
        anything) goes: the store's config.yaml (with the header), plan.json, provenance.json,
        the lock file (the caller holds it), then the folders it made, if empty, up to the
        nearest one that existed. A folder with committed work stays whole."""
        if not self.dir.is_dir() or self.has_work():
            return
        for p in self._start_files():
            if p not in before and (p != self.config_path or self.config_is_ours()):
                with contextlib.suppress(OSError):
                    p.unlink()
        folders = self._start_folders()
        up = self.dir.absolute().parent
        while up not in before and up != up.parent:
            folders.append(up)
            up = up.parent
        for folder in folders:
            if folder not in before:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty

    def load_config(self) -> RunConfig:
        if not self.exists():
            raise StoreError(f"{self.dir} is not a distillscope run (no config.yaml)")
        try:
            data = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise StoreError(f"{self.config_path}: not valid YAML: "
                             f"{str(err).splitlines()[0]}") from None
        except OSError as err:
            raise StoreError(f"{self.config_path}: cannot read it ({err.strerror})") from None
        try:
            return parse_config(data, str(self.config_path))
        except ConfigError as err:
            raise StoreError(str(err)) from None

    def save_config(self, config: RunConfig) -> None:
        try:
            atomic_write_bytes(self.config_path, (CONFIG_HEADER + config.to_yaml()).encode())
        except OSError as err:
            raise _wrap_os_error(err, self.dir) from None

    # -- units -----------------------------------------------------------------------------
    def _marker_path(self, unit: str) -> Path:
        return self.units_dir / f"{_unit_file(unit)}.done"

    def _check_marker(self, unit: str, marker: dict[str, Any]) -> str | None:
        """Why the parts on disk do not match the marker, or None when they do."""
        for name, part in sorted(marker.get("parts", {}).items()):
            f = self.tables_dir / name / f"{_unit_file(unit)}.parquet"
            rel = f.relative_to(self.dir)
            try:
                st = f.stat()
            except OSError:
                return f"its part {rel} is missing"
            if st.st_size != part.get("size"):
                return f"its part {rel} is {st.st_size:,} bytes, not the {part.get('size'):,} " \
                       "it was written with (truncated or replaced)"
            if _file_sha256(f, st) != part.get("sha256"):
                return f"its part {rel} does not match its checksum (modified)"
        return None

    def done_units(self) -> set[str]:
        if self._done is None:
            done: set[str] = set()
            seqs: dict[str, int] = {}
            if self.units_dir.is_dir():
                for p in sorted(self.units_dir.glob("*.done")):
                    unit = p.name[: -len(".done")].replace("__", "/")
                    try:
                        raw = p.read_bytes()
                        marker = json.loads(raw) if raw.strip() else None
                    except (OSError, ValueError):
                        self.damaged[unit] = f"its marker {p.relative_to(self.dir)} is unreadable"
                        continue
                    if isinstance(marker, dict) and marker.get("v") == MARKER_VERSION:
                        why = self._check_marker(unit, marker)
                        if why:
                            self.damaged[unit] = why
                            seqs[unit] = int(marker.get("seq", 0))
                            continue
                        self._markers[unit] = marker
                        seqs[unit] = int(marker.get("seq", 0))
                    # else: a marker of an older version (empty): its parts are not verifiable
                    done.add(unit)
            self._seq = max(seqs.values(), default=0)
            # a unit computed after a damaged one of its group was computed from it; when the
            # damaged unit's place in that order is unknown (its marker is unreadable, or the
            # other unit's marker predates sequence numbers), every unit of the group is suspect
            for bad in sorted(self.damaged):
                s0 = seqs.get(bad)
                for unit in sorted(done):
                    if _group(unit) == _group(bad) and (
                            s0 is None or unit not in seqs or seqs[unit] > s0):
                        done.discard(unit)
                        self.damaged.setdefault(unit, f"it was computed after '{bad}', which "
                                                      "is damaged" if s0 is not None else
                                                      f"it belongs with '{bad}', which is damaged")
            self._done = done
        return self._done

    def uncommitted_units(self) -> list[str]:
        """Units of a question (key q#####/...) with a part on disk but no commit marker, and
        not damaged: work an invocation began and did not commit (it stopped there), or a unit
        whose marker was removed. Readers leave them out; a resume redoes them."""
        done = self.done_units()
        found: set[str] = set()
        for name in SCHEMAS:
            tdir = self.tables_dir / name
            if tdir.is_dir():
                for p in tdir.glob("q[0-9][0-9][0-9][0-9][0-9]__*.parquet"):
                    unit = p.name[: -len(".parquet")].replace("__", "/")
                    if unit not in done and unit not in self.damaged:
                        found.add(unit)
        return sorted(found)

    def damage_report(self) -> list[str]:
        """One line per unit that no longer counts as committed because its files changed."""
        self.done_units()
        return [f"unit '{u}': {why}" for u, why in sorted(self.damaged.items())]

    def is_done(self, unit: str) -> bool:
        return unit in self.done_units()

    def commit(self, unit: str, parts: dict[str, pd.DataFrame | list[dict] | pa.Table]) -> None:
        """Write every part of `unit`, then its marker (each part's size and SHA-256).
        Idempotent."""
        fname = _unit_file(unit)
        self.done_units()
        written: dict[str, Any] = {}
        try:
            for name, rows in parts.items():
                table = rows if isinstance(rows, pa.Table) else to_table(name, rows)
                written[name] = atomic_write_table(self.tables_dir / name / f"{fname}.parquet",
                                                   table, self.provenance_meta)
            self._seq += 1
            marker = {"v": MARKER_VERSION, "seq": self._seq, "parts": written}
            atomic_write_bytes(self.units_dir / f"{fname}.done",
                               json.dumps(marker, sort_keys=True).encode())
        except OSError as err:
            raise _wrap_os_error(err, self.dir) from None
        self._markers[unit] = marker
        self.damaged.pop(unit, None)
        self.done_units().add(unit)

    def uncommit(self, prefix: str) -> None:
        """Forget every unit whose key starts with `prefix` (used to recompute derived tables)."""
        for unit in sorted(self.done_units()):
            if unit.startswith(prefix):
                self._marker_path(unit).unlink(missing_ok=True)
                self.done_units().discard(unit)
                self._markers.pop(unit, None)
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
                marker = self._markers.get(unit)
                if marker is not None and name not in marker.get("parts", {}):
                    continue  # a stale file the unit's last commit did not write
                parts.append(p)
        return parts

    def _damaged_part(self, p: Path, err: Exception) -> StoreError:
        unit = p.name[: -len(".parquet")].replace("__", "/")
        return StoreError(
            f"{self.dir}: unit '{unit}' is damaged: {p.relative_to(self.dir)} cannot be read "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); delete "
            f"its marker {self._marker_path(unit).relative_to(self.dir)} and resume to "
            "recompute it")

    def count_rows(self, name: str) -> int:
        """Committed rows of a table, from the Parquet footers (no data read)."""
        total = 0
        for p in self._committed_parts(name):
            try:
                total += pq.ParquetFile(p).metadata.num_rows
            except (pa.ArrowException, OSError) as err:
                raise self._damaged_part(p, err) from None
        return total

    def read(self, name: str, unit_prefix: str | None = None) -> pd.DataFrame:
        """All committed rows of a table, in unit-key order (deterministic)."""
        frames = []
        for p in self._committed_parts(name, unit_prefix):
            try:
                frames.append(pq.read_table(p).to_pandas())
            except (pa.ArrowException, OSError) as err:
                raise self._damaged_part(p, err) from None
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
        """A JSON object of the run (provenance.json); a damaged file is a StoreError."""
        p = self.dir / filename
        if not p.is_file():
            return {}
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, OSError) as err:
            raise StoreError(f"{p}: not valid JSON ({str(err).splitlines()[0]}); restore it, "
                             "or delete it (a resumed run writes it again)") from None
        if not isinstance(data, dict):
            raise StoreError(f"{p}: expected a JSON object, got {type(data).__name__}")
        return data
