"""surroflos.kernels: fused Triton kernels for multi-step surrogate-gradient neurons and their
tangent dynamics, each beside its plain-PyTorch reference.

Layout: ``<concept>.py`` holds the public dispatch function and the PyTorch path,
``<concept>_triton.py`` the Triton kernels, both imported lazily (see :mod:`surroflos.kernels.backend`),
and a naive per-step reference that the tests compare both against. An op family with compiled CPU
kernels (numba) too has a folder of its own: ``lif/``, ``norse_lif/`` and ``recurrent/``, with ``__init__.py``
(public functions, PyTorch path, custom ops), ``triton.py``, ``cpu.py`` (and ``lif/_cpu_kernels.py``, the numba
kernels of both, ``lif/reference.py``); their former module names (``lif_triton``, ``lif_cpu``,
``lif_reference``, ``_lif_cpu_kernels``, ``norse_lif_triton``, ``norse_lif_cpu``, ``recurrent_triton``) are
aliases of the moved modules.

=============================  ===============================================================
``leaky_sequence``             snnTorch ``Leaky`` over ``[T, ...]`` (:mod:`.lif`)
``synaptic_sequence``          snnTorch ``Synaptic`` (:mod:`.lif`)
``lif_feed_forward_sequence``  Norse ``LIF`` (:mod:`.norse_lif`)
``lif_box_sequence``           Norse ``LIFBox`` (:mod:`.norse_lif`)
``spiking_rnn_sequence``       recurrent LIF / current-based network (:mod:`.recurrent`)
``spike_linear``               a linear readout of 0/1 spikes that keeps them as bytes (:mod:`.spike_linear`)
``balanced_sequence``          sparse balanced network (:mod:`.balanced`)
``balanced_tangent_fused``     its tangent map (:mod:`.balanced`)
``dense_tangent``              ``c (W (d Q) + a Q)`` for a block of k vectors (:mod:`.tangent`)
``block_tangent``              the 2x2-block (synaptic + membrane) form (:mod:`.tangent`)
``orthonormalize``             CholeskyQR2 / Householder re-orthonormalisation (:mod:`.qr`)
=============================  ===============================================================

Submodules are imported on first use, so ``import surroflos`` stays cheap.
"""

from __future__ import annotations

import importlib

from .backend import BACKENDS, CpuKernelUnavailableError, TritonUnavailableError, resolve_backend

_LAZY = {
    "leaky_sequence": "lif", "synaptic_sequence": "lif",
    "lif_feed_forward_sequence": "norse_lif", "lif_box_sequence": "norse_lif",
    "spiking_rnn_sequence": "recurrent", "spike_linear": "spike_linear",
    "balanced_sequence": "balanced", "balanced_tangent_fused": "balanced",
    "dense_tangent": "tangent", "block_tangent": "tangent", "fused_tangent_function": "tangent",
    "orthonormalize": "qr", "cholesky_qr2": "qr",
}

__all__ = ["BACKENDS", "CpuKernelUnavailableError", "TritonUnavailableError", "resolve_backend", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
