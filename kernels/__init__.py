"""surroflos.kernels: fused Triton kernels for multi-step surrogate-gradient neurons and their
tangent dynamics, each beside its plain-PyTorch reference.

Layout: ``<concept>.py`` holds the public dispatch function and the PyTorch path,
``<concept>_triton.py`` the Triton kernels (imported lazily, see :mod:`surroflos.kernels.backend`),
``<concept>_reference.py`` (where the PyTorch path is not itself a plain loop) the naive loop that the
tests compare both against.
"""

from .backend import BACKENDS, TritonUnavailableError, resolve_backend

__all__ = ["BACKENDS", "TritonUnavailableError", "resolve_backend"]
