"""Checkpoints that load without running code.

``torch.load(..., weights_only=False)`` unpickles arbitrary objects, so a shared or downloaded run folder
could run any command on ``surroflos train --resume`` or ``surroflos export``. Our checkpoints hold only
tensors and plain containers (dicts, lists, strings, numbers, ``None``), which ``weights_only=True``
loads; anything else in a file is refused before it is built, and nothing in it runs.

:func:`load_checkpoint` turns every way a file can be wrong (missing, a folder, empty, truncated, not a
torch file, a foreign object, a payload that asks to import code, missing keys) into one
:class:`CheckpointError` naming the file. :func:`check_finite_state` refuses weights that are NaN or
infinite. :func:`remove_stale_temporaries` deletes the ``.<name>.*.tmp`` files that an atomic write
leaves when the process is killed mid-write.
"""

from __future__ import annotations

import glob
import os
import pickle
import re
import zipfile
from typing import Any, Iterable, Mapping, Union

import torch

from ._io import atomic_torch_save
from .errors import UsageError

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "check_finite_state",
           "remove_stale_temporaries"]

PathLike = Union[str, "os.PathLike[str]"]


class CheckpointError(UsageError):
    """A checkpoint file that cannot be used: missing, damaged, foreign or unsafe."""


def _plain(obj: Any) -> Any:
    """``obj`` with every ``str`` subclass (e.g. ``torch.__version__``) turned into ``str``: only plain
    types go into a checkpoint, so it loads with ``weights_only=True`` anywhere."""
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, dict):
        return {_plain(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    return obj


def save_checkpoint(obj: Mapping[str, Any], path: PathLike) -> None:
    """Write ``obj`` (tensors and plain containers) atomically to ``path``."""
    atomic_torch_save(_plain(dict(obj)), path)


def load_checkpoint(path: PathLike, *, required: Iterable[str] = (), map_location: Any = "cpu") -> dict:
    """Load a checkpoint dict safely (``weights_only=True``).

    Args:
        path: the ``.pt`` file.
        required: keys the dict must have.
        map_location: as for :func:`torch.load`.

    Raises:
        CheckpointError: the file is missing, a folder, empty, damaged, not a dict, lacks ``required``
            keys, or holds anything other than tensors and plain containers (then nothing was built).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}")
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is empty (a write was interrupted?); delete it to start the run anew")
    # torch.__version__ is a str subclass; checkpoints written before versions were stored as str hold it.
    from torch.torch_version import TorchVersion

    try:
        with torch.serialization.safe_globals([TorchVersion]):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch names the global (a class or function) that the pickle asks to import: that is the danger.
        found = re.search(r"GLOBAL\s+([\w.]+)", str(e))
        if found:
            raise CheckpointError(f"refusing to load {path}: it asks to import {found.group(1)}, a Python object "
                                  "that could run code when loaded (surroflos checkpoints hold only tensors and "
                                  "plain containers); nothing in it was run") from None
        raise CheckpointError(f"{path} is not a readable checkpoint (damaged or not a torch file)") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError,
            AttributeError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated, damaged or not a torch file: "
                              f"{type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a surroflos checkpoint (a dict)")
    missing = [k for k in required if k not in obj]
    if missing:
        raise CheckpointError(f"{path} is not a complete surroflos checkpoint: it lacks {missing}")
    return obj


def check_finite_state(state_dict: Mapping[str, Any], path: PathLike) -> None:
    """Raise :class:`CheckpointError` if a floating-point tensor of ``state_dict`` holds NaN or inf."""
    for name, t in state_dict.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{os.fspath(path)} holds non-finite values in {name!r} (the run diverged "
                                  "before this checkpoint, or the file was altered); it cannot be used")


def remove_stale_temporaries(folder: PathLike) -> list[str]:
    """Delete ``.<file>.*.tmp`` leftovers of interrupted atomic writes in ``folder``; returns their paths."""
    removed = []
    for tmp in glob.glob(os.path.join(os.fspath(folder), ".*.tmp")):
        try:
            if os.path.isfile(tmp):
                os.unlink(tmp)
                removed.append(tmp)
        except OSError:
            pass
    return removed
