"""The artefact store: every artefact keyed by its configuration hash and written atomically.

An artefact is built under a temporary name and renamed into place only when complete, so a
killed run never leaves something a later run would load as finished. A file lock per artefact
keeps two runs sharing a store from building the same thing at once: the second waits and then
reuses the first one's result.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

log = logging.getLogger(__name__)

LOCK_TIMEOUT_S = 6 * 3600


def write_json(path: Path, data) -> None:
    """Write JSON to a temporary file and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, ensure_ascii=False)
        fh.write("\n")
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """Write text to a temporary file and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def read_json(path: Path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def build_dir(final: Path, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """Return ``final``, building it first (atomically, under a lock) if it does not exist.

    Returns (path, whether it was built by this call).
    """
    if final.exists():
        return final, False
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(final.parent / f".{final.name}.lock"), timeout=LOCK_TIMEOUT_S)
    with lock:
        if final.exists():  # another run built it while we waited
            return final, False
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
        try:
            build(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final, True


def cached_json(path: Path, compute: Callable[[], object]):
    """Load ``path`` if present, else compute, store atomically under a lock, and return."""
    if path.exists():
        return read_json(path), False
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / f".{path.name}.lock"), timeout=LOCK_TIMEOUT_S):
        if path.exists():
            return read_json(path), False
        data = compute()
        write_json(path, data)
    return data, True
