"""One cache entry (an index, a dequantised model): used only when its manifest checks out, and
rebuilt under the build lock when it does not.

A bad entry is renamed aside before the rebuild and deleted only once the new one is in place, and
only by the process holding the lock: another process may still be reading the old files (Linux
keeps open and mapped files alive), but nobody is ever building in a folder that gets deleted.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from slm_ray.store.cache_manifest import verify_manifest, write_manifest
from slm_ray.errors import WRITE_FAULTS, disk_fault, writes_to
from slm_ray.store.io import atomic_folder, build_lock

log = logging.getLogger("slm_ray.cache")

#: Entries this process has verified by content, with the (path, size, mtime, inode) of each of their
#: files at that moment. Reloading one in the same process (a sweep worker switching back to a model)
#: re-checks only that signature: the full check cost as much as the reload itself (0.18 s for
#: SmolLM2's 540 MB); any rewrite of a file since changes the signature and brings the full check back.
_VERIFIED: dict[Path, tuple[tuple[str, int, int, int], ...]] = {}


def _signature(folder: Path) -> tuple[tuple[str, int, int, int], ...]:
    found = []
    for root, _, files in os.walk(folder):
        for name in files:
            stat = os.stat(os.path.join(root, name))
            found.append((os.path.relpath(os.path.join(root, name), folder), stat.st_size, stat.st_mtime_ns,
                          stat.st_ino))
    return tuple(sorted(found))


def _verified(folder: Path) -> str | None:
    """verify_manifest, once per process per unchanged entry."""
    key = folder.resolve()
    signature = _signature(folder)
    if _VERIFIED.get(key) == signature:
        return None
    problem = verify_manifest(folder)
    if problem is None:
        _VERIFIED[key] = signature
    return problem


def _problem(folder: Path, load: Callable[[Path], None] | None) -> str | None:
    """Why ``folder`` cannot be used (None when it can); ``load`` is tried only on a sound folder."""
    if not folder.exists():
        return "absent"
    if not folder.is_dir():
        return "a file, not a folder"
    problem = _verified(folder)
    if problem is None and load is not None:
        try:
            load(folder)
        except Exception as exc:  # a foreign or unreadable entry is rebuilt, not trusted
            problem = f"unreadable ({type(exc).__name__}: {exc})"
    return problem


def _set_aside(folder: Path) -> Path:
    """Rename a bad ``folder`` to a hidden sibling (lock held). Leftovers of a process that died
    between its rename and its delete are removed first: only a lock holder makes them, and a
    staging folder of ``atomic_folder`` never matches (mkdtemp names have no "-")."""
    prefix = f".{folder.name}.bad-"
    for stale in folder.parent.iterdir():
        if stale.name.startswith(prefix):
            _remove(stale)
    aside = folder.with_name(prefix + uuid.uuid4().hex[:8])
    folder.rename(aside)
    return aside


def _clear_staging_leftovers(folder: Path) -> None:
    """Staging folders of builds of this entry whose process died (lock held: nobody else is
    building it now). ``atomic_folder`` names them ``.<name>.<random>``; the lock file is a file."""
    for stale in folder.parent.iterdir():
        if stale.name.startswith(f".{folder.name}.") and stale.is_dir() and ".bad-" not in stale.name:
            shutil.rmtree(stale, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def load_or_build(folder: str | Path, build: Callable[[Path], None], *,
                  load: Callable[[Path], None] | None = None, what: str = "cache entry",
                  setting: str = "experiment.cache_dir") -> bool:
    """Make ``folder`` a sound cache entry; True when it was (re)built now.

    ``build(staging)`` writes the entry into an empty staging folder, which gets its manifest last
    and is then renamed into place. ``load(folder)``, when given, reads a sound entry and raises
    if it cannot; an entry that fails the manifest check or the load is rebuilt, with one warning.
    A fault writing it (read-only, full disk, no permission: the lock, the staging folder, the
    build's own files) is one line naming the folder and ``setting``, and leaves no staging folder.
    """
    folder = Path(folder)
    if _problem(folder, load) is None:
        return False
    with writes_to(folder, setting):
        return _build_locked(folder, build, load, what)


def _build_locked(folder: Path, build: Callable[[Path], None], load: Callable[[Path], None] | None,
                  what: str) -> bool:
    with build_lock(folder):  # another process building this entry: wait, then use its copy
        problem = _problem(folder, load)
        if problem is None:
            return False
        aside = None
        _VERIFIED.pop(folder.resolve(), None)
        _clear_staging_leftovers(folder)
        if folder.exists():
            log.warning("%s %s failed its check (%s); rebuilding", what, folder, problem)
            aside = _set_aside(folder)
        try:
            with atomic_folder(folder) as staging:
                try:
                    build(staging)
                    write_manifest(staging)  # last: it covers every file written above
                except Exception as exc:  # faiss, safetensors, numpy's short writes: no errno on a full disk
                    fault = None if getattr(exc, "errno", None) in WRITE_FAULTS else disk_fault(staging)
                    if fault is None:
                        raise
                    raise fault from exc
        finally:
            if aside is not None:
                _remove(aside)
    return True
