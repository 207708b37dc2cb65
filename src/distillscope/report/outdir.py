"""Output folders a command replaces as a whole: a run's `report/` and `compare`'s OUT.

    write_folder(final, build, what="report", tool_file=...)

A build goes into a temporary folder beside the final one (`.distillscope-<what>-<pid>-<name>`)
and then takes its place, so a reader sees the old folder or the new one, never a mix; a lock
beside it (`.<name>.lock`) keeps two builds apart. The new folder's manifest (`MANIFEST`) lists
the files the tool wrote. The next build drops those, moves every other entry across (a
user's notes, tables, folders) and refuses, naming it, a user's file that has the name of one
it writes. A folder from before manifests falls back to `tool_file`, the names the command
writes. A build killed midway is cleaned up by the next one: a user's entry it had already
moved in goes back. On any error the old folder is unchanged, and the folders made for a new
one are removed again.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from distillscope.store import StoreError, nearest_existing_parent

__all__ = ["MANIFEST", "build_prefix", "entries", "write_folder", "written_files"]

MANIFEST = ".distillscope-files.json"  # in an output folder: the files the tool wrote there


def build_prefix(what: str) -> str:
    """Name prefix of `what`'s temporary build folders (+ "<pid>-<name>", or "-old" suffix)."""
    return f".distillscope-{what}-"


def entries(folder: Path) -> set[Path]:
    """Files, links and empty folders below `folder`, relative to it (the manifest left out)."""
    out = set()
    for p in folder.rglob("*"):
        if p.is_symlink() or p.is_file() or (p.is_dir() and not any(p.iterdir())):
            out.add(p.relative_to(folder))
    return out - {Path(MANIFEST)}


def written_files(folder: Path) -> set[Path] | None:
    """The files the tool wrote into `folder` (its manifest), or None without a readable one."""
    try:
        names = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
        return {Path(n) for n in names if isinstance(n, str)}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _users(folder: Path, tool_file: Callable[[Path], bool] | None) -> list[Path]:
    """The entries of `folder` the tool did not write: not in its manifest; without one, not
    named like the command's files (`tool_file`), or all of them when `tool_file` is None."""
    written = written_files(folder)
    if written is None and tool_file is None:
        return sorted(entries(folder))
    return sorted(rel for rel in entries(folder)
                  if not (rel in written if written is not None else tool_file(rel)))


def write_folder(final: str | Path, build: Callable[[Path], object], *, what: str,
                 tool_file: Callable[[Path], bool],
                 looks_ours: Callable[[Path], bool]) -> None:
    """Run `build(folder)` on a fresh temporary folder beside `final`, then swap it in (a
    symbolic link to a folder stays a link to the new one). `tool_file(rel)`: whether the
    command writes a file of that name; it decides what the tool wrote in a folder without
    a manifest only when `looks_ours(folder)` says the folder is the command's output (of an
    earlier version); otherwise every entry there is the user's. Disk full, a read-only place
    or a path through a file: StoreError naming `final`."""
    from distillscope.store import acquire_lock, release_lock

    final = Path(final).resolve()
    created = []  # the folders made for `final`, deepest first
    p, stop = final.parent, nearest_existing_parent(final)
    while p != stop:
        created.append(p)
        p = p.parent
    lock = final.parent / f".{final.name}.lock"
    tmp = final.parent / f"{build_prefix(what)}{os.getpid()}-{final.name}"
    key = None
    try:
        try:
            try:
                key = acquire_lock(lock, what=what)
            except StoreError:
                from distillscope.store import _lock_owner

                raise StoreError(f"another distillscope {what} is writing {final} "
                                 f"({_lock_owner(lock)}): wait for it to finish, then run "
                                 "it again") from None
            _remove_stale_builds(final, what, tool_file)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            build(tmp)
            legacy = final.is_dir() and written_files(final) is None and looks_ours(final)
            _swap_in(tmp, final, what, tool_file if legacy else None)
        except OSError as err:
            raise _store_error(err, final, what) from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        if key is not None:
            release_lock(key)
            key = None
            if created:  # the lock file is in a folder made for `final`: remove both
                with contextlib.suppress(OSError):
                    lock.unlink()
        for d in created:  # only if still empty
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    finally:
        if key is not None:
            release_lock(key)


def _store_error(err: OSError, final: Path, what: str) -> StoreError:
    if err.errno == errno.ENOSPC:
        return StoreError(f"disk full while writing the {what} {final}; the previous one (if "
                          f"any) is unchanged: free space and run 'distillscope {what}' again")
    if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return StoreError(f"cannot write the {what} {final} ({err.strerror}): choose a "
                          "writable place")
    if err.errno == errno.ENOTDIR:
        return StoreError(f"cannot write the {what} {final}: a part of that path is a file, "
                          "not a directory")
    return StoreError(f"I/O error writing the {what} {final}: {err}")


def _swap_in(new: Path, final: Path, what: str,
             tool_file: Callable[[Path], bool] | None) -> None:
    """Replace `final` (absent or a folder) by the complete folder `new`: its manifest first,
    then what the old folder holds that the tool did not write (`_users`) is moved across.
    Should a move or the swap fail (or be interrupted), what was moved goes back first."""
    from distillscope.store import _fsync_dir

    ours = entries(new)
    (new / MANIFEST).write_text(json.dumps({"files": sorted(str(p) for p in ours)}, indent=1),
                                encoding="utf-8")
    if final.is_dir():
        keep = _users(final, tool_file)
        clash = [rel for rel in keep if (new / rel).exists() or (new / rel).is_symlink()]
        if clash:
            raise StoreError(f"{final / clash[0]} is in the way of a file the {what} writes "
                             f"(the tool did not write it): move it away and run "
                             f"'distillscope {what}' again")
        old = final.parent / f"{build_prefix(what)}{os.getpid()}-{final.name}-old"
        if old.exists():
            shutil.rmtree(old)
        moved: list[Path] = []
        try:
            for rel in keep:
                (new / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(final / rel, new / rel)
                moved.append(rel)
            os.replace(final, old)
            try:
                os.replace(new, final)
            except BaseException:
                os.replace(old, final)
                raise
        except BaseException:
            for rel in reversed(moved):  # the user's entries go back where they were
                with contextlib.suppress(OSError):
                    (final / rel).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(new / rel, final / rel)
            raise
        shutil.rmtree(old, ignore_errors=True)  # the tool's own files only
    elif final.exists() or final.is_symlink():
        raise StoreError(f"{final} exists and is not a directory; move it away to write the "
                         f"{what} there")
    else:
        os.replace(new, final)
    _fsync_dir(final.parent)


def _remove_stale_builds(final: Path, what: str, tool_file: Callable[[Path], bool]) -> None:
    """Build folders of `what` for `final` whose process is gone. An old `final` moved aside
    goes back when `final` is missing; a user's entry in one goes back into `final` (the folder
    is left where `final` has an entry of that name); the rest is the tool's and is removed."""
    from distillscope.store import _pid_alive

    pattern = re.compile(rf"^{re.escape(build_prefix(what))}(\d+)-(.+?)(-old)?$")
    stale = []
    for p in final.parent.iterdir():
        m = pattern.match(p.name)
        if (m and m.group(2) == final.name and p.is_dir() and not p.is_symlink()
                and not _pid_alive(int(m.group(1)))):
            stale.append((not m.group(3), p))  # "-old" folders first
    for _, p in sorted(stale):
        if p.name.endswith("-old") and not final.exists() and not final.is_symlink():
            os.replace(p, final)  # killed mid-swap: the old folder is the current one
            continue
        left = False
        for rel in _users(p, tool_file):
            if final.is_dir() and not (final / rel).exists() and not (final / rel).is_symlink():
                (final / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(p / rel, final / rel)
            else:
                left = True
        if not left:
            shutil.rmtree(p, ignore_errors=True)
