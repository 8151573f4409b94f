"""argparse value types shared by the ``surroflos`` subcommands.

Each raises ``argparse.ArgumentTypeError`` with what would be valid; argparse prefixes the flag's name,
so the command line prints ``surroflos <command>: error: argument --beta: must lie in [0, 1], got 1.5``.
"""

from __future__ import annotations

import argparse
import math

__all__ = ["positive_int", "nonneg_int", "positive_float", "nonneg_float", "finite_float", "unit_float",
           "seed", "device", "resolve_device", "MAX_SEED"]

# surroflos.train derives each random stream's seed as (seed * 1000003 + offset) mod (2**63 - 1), which is
# one-to-one on [0, 2**63 - 2] (1000003 is a prime that does not divide 2**63 - 1); 2**63 - 1 would repeat 0.
MAX_SEED = 2**63 - 2


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {s!r}") from None


def _float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {s!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
    return v


def positive_int(s: str) -> int:
    v = _int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def nonneg_int(s: str) -> int:
    v = _int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {s}")
    return v


def seed(s: str) -> int:
    v = _int(s)
    if not 0 <= v <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63 - 2], got {s}")
    return v


def finite_float(s: str) -> float:
    return _float(s)


def positive_float(s: str) -> float:
    v = _float(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def nonneg_float(s: str) -> float:
    v = _float(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {s}")
    return v


def unit_float(s: str) -> float:
    v = _float(s)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1] (a decay per step), got {s}")
    return v


def resolve_device(name: str):
    """The ``torch.device`` for ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; raises ``ValueError`` saying what is
    valid when ``name`` is none of these or names a CUDA device this machine does not have."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"must be cpu, cuda, cuda:N or auto, got {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name!r} requested but CUDA is not available here (use cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def device(s: str) -> str:
    """A device flag checked by :func:`resolve_device` (returned as given)."""
    try:
        resolve_device(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return s
