"""Atomic file writes: readers (and an interrupted run) never see half a file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Union

import torch

__all__ = ["atomic_write", "atomic_json", "atomic_torch_save", "ensure_writable_folder"]

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, write: Callable[[IO], Any], *, binary: bool = False) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_json(obj: Any, path: PathLike) -> None:
    atomic_write(path, lambda fh: json.dump(obj, fh, indent=2))


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh), binary=True)


def ensure_writable_folder(folder: PathLike, flag: str = "--out", error: "type[Exception] | None" = None) -> None:
    """Create ``folder`` (and parents) and check that we can write in it, before any work.

    Raises ``error`` (default :class:`surroflos.errors.UsageError`) naming ``flag`` when ``folder`` is a file,
    cannot be created or is not writable.
    """
    from .errors import UsageError

    error = error or UsageError
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise error(f"{flag} {folder} is a file, not a folder; give a folder name")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise error(f"{flag} {folder}: cannot create the folder ({e.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise error(f"{flag} {folder} is not writable; choose another folder")
