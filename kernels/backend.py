"""Which implementation runs: ``backend = "auto" | "torch" | "triton"``.

- ``"torch"``: the plain-PyTorch path (whole-sequence autograd functions where they exist).
- ``"triton"``: the fused Triton kernels. On CUDA tensors they are compiled; on CPU tensors they run
  through Triton's interpreter, which needs ``TRITON_INTERPRET=1`` in the environment *before* the
  kernels are first imported (Triton decides at decoration time). That is how CI tests them; it is
  slow and meant for tests only. Otherwise a CPU tensor with ``backend="triton"`` is a clear error.
- ``"auto"``: Triton for CUDA tensors when Triton imports, else PyTorch.

The ``*_triton`` modules of :mod:`surroflos.kernels` import Triton at their top and are themselves
imported lazily (inside the dispatch functions), so ``import surroflos`` never imports Triton.
"""

from __future__ import annotations

import functools
import os

import torch

__all__ = ["BACKENDS", "check_backend", "resolve_backend", "triton_importable", "interpreter_requested",
           "TritonUnavailableError", "acc_dtype"]

BACKENDS = ("auto", "torch", "triton")


class TritonUnavailableError(RuntimeError):
    """``backend="triton"`` was asked for where the Triton kernels cannot run."""


def check_backend(backend: object) -> str:
    """``backend`` itself after checking it is one of :data:`BACKENDS`."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


@functools.lru_cache(maxsize=None)
def triton_importable() -> bool:
    """True when ``import triton`` works (it is a dependency, but may be broken or absent)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # pragma: no cover - depends on the installation
        return False
    return True


def interpreter_requested() -> bool:
    """True when ``TRITON_INTERPRET`` asks for Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _interpreter_active() -> bool:
    """Whether Triton itself will decorate kernels as interpreted functions now."""
    try:
        from triton import knobs  # Triton >= 3.4
        return bool(knobs.runtime.interpret)
    except Exception:  # pragma: no cover - older Triton reads the environment
        return interpreter_requested()


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """``"torch"`` or ``"triton"`` for tensors on ``device`` (see the module docstring).

    Raises:
        ValueError: unknown backend name.
        TritonUnavailableError: ``backend="triton"`` where the kernels cannot run.
    """
    check_backend(backend)
    device = torch.device(device)
    if backend == "torch":
        return "torch"
    on_gpu = device.type == "cuda"
    if backend == "auto":
        return "triton" if on_gpu and triton_importable() else "torch"
    if not triton_importable():
        raise TritonUnavailableError("backend='triton' but `import triton` fails here; install triton or use "
                                     "backend='torch'")
    if on_gpu:
        return "triton"
    if device.type == "cpu":
        if interpreter_requested() and _interpreter_active():
            return "triton"
        raise TritonUnavailableError(
            "backend='triton' with CPU tensors runs the kernels through Triton's interpreter, which needs "
            "TRITON_INTERPRET=1 in the environment before surroflos' kernels are first used (slow; meant "
            "for tests). Move the tensors to a CUDA device, or use backend='torch' (or 'auto') on CPU.")
    raise TritonUnavailableError(f"backend='triton' supports CUDA (and CPU with TRITON_INTERPRET=1) tensors, "
                                 f"not {device.type}; use backend='torch'")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype states are accumulated in: float64 stays float64, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
