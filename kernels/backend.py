"""Which implementation runs: ``backend = "auto" | "torch" | "triton" | "cpu"``.

- ``"torch"``: the plain-PyTorch path (whole-sequence autograd functions where they exist).
- ``"cpu"``: compiled CPU kernels (numba, :mod:`surroflos.kernels.lif_cpu`, ``norse_lif_cpu``) for CPU tensors,
  where an op has them (``leaky_sequence``, ``synaptic_sequence``, ``lif_feed_forward_sequence``,
  ``lif_box_sequence``); an op without them runs its PyTorch path. Asking for it where numba
  does not import, or for tensors on another device, is a clear error (:class:`CpuKernelUnavailableError`).
- ``"triton"``: the fused Triton kernels. On CUDA tensors they are compiled; on CPU tensors they run
  through Triton's interpreter, which needs ``TRITON_INTERPRET=1`` in the environment *before* the
  kernels are first imported (Triton decides at decoration time). That is how CI tests them; it is
  slow and meant for tests only. Otherwise a CPU tensor with ``backend="triton"`` is a clear error.
- ``"auto"``: Triton for CUDA tensors when Triton imports; for CPU tensors the compiled CPU kernels where
  the op has them and numba imports (float32/float64; the op checks the dtype), else PyTorch.

The ``*_triton`` modules of :mod:`surroflos.kernels` import Triton at their top and are themselves
imported lazily (inside the dispatch functions), so ``import surroflos`` never imports Triton.
"""

from __future__ import annotations

import functools
import os

import torch

__all__ = ["BACKENDS", "check_backend", "resolve_backend", "triton_importable", "interpreter_requested",
           "TritonUnavailableError", "CpuKernelUnavailableError", "cpu_kernels_importable", "acc_dtype"]

BACKENDS = ("auto", "torch", "triton", "cpu")


class TritonUnavailableError(RuntimeError):
    """``backend="triton"`` was asked for where the Triton kernels cannot run."""


class CpuKernelUnavailableError(RuntimeError):
    """``backend="cpu"`` was asked for where the compiled CPU kernels cannot run."""


def constant_result(fn):
    """Mark ``fn`` so that ``torch.compile`` calls it once while tracing and keeps its answer as a constant.

    What ``torch.compiler.assume_constant_result`` does, without its import of ``torch._dynamo`` (1.5 s and
    145 MB at ``import surroflos``). For functions of the environment, Triton's knobs or dtypes, which
    Dynamo cannot trace and which do not change within a process.
    """
    fn._dynamo_marked_constant = True
    return fn


@constant_result  # torch.compile runs it once at trace time instead of tracing numba
def cpu_kernels_importable() -> bool:
    """True when numba imports and the compiled CPU kernels build (checked once per process).

    ``SURROFLOS_DISABLE_CPU_KERNELS=1`` makes it False (``"auto"`` then runs the PyTorch path on CPU).
    """
    if os.environ.get("SURROFLOS_DISABLE_CPU_KERNELS", "0").strip().lower() in ("1", "true", "yes", "on"):
        return False
    from .lif.cpu import numba_importable
    return numba_importable()


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


def resolve_backend(backend: str, device: torch.device | str, cpu_kernel: bool = False) -> str:
    """``"torch"``, ``"triton"`` or ``"cpu"`` for tensors on ``device`` (see the module docstring).

    ``cpu_kernel``: whether the calling op has compiled CPU kernels; without them ``"cpu"`` resolves to
    ``"torch"`` (and ``"cpu"`` is never returned).

    Raises:
        ValueError: unknown backend name.
        TritonUnavailableError: ``backend="triton"`` where the kernels cannot run.
        CpuKernelUnavailableError: ``backend="cpu"`` for an op with CPU kernels where they cannot run.
    """
    check_backend(backend)
    device = torch.device(device)
    if backend == "torch":
        return "torch"
    on_gpu = device.type == "cuda"
    if backend == "cpu":
        if not cpu_kernel:
            return "torch"
        if device.type != "cpu":
            raise CpuKernelUnavailableError(f"backend='cpu' runs CPU tensors, got tensors on {device.type}; use "
                                            f"'auto' (or 'triton' on CUDA)")
        if not cpu_kernels_importable():
            raise CpuKernelUnavailableError("backend='cpu' needs numba (and SURROFLOS_DISABLE_CPU_KERNELS unset); "
                                            "install numba or use backend='torch' (or 'auto')")
        return "cpu"
    if backend == "auto":
        if on_gpu:
            return "triton" if triton_importable() else "torch"
        if cpu_kernel and device.type == "cpu" and cpu_kernels_importable():
            return "cpu"
        return "torch"
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
