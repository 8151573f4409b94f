"""``surroflos.kernels.recurrent_triton`` is :mod:`surroflos.kernels.recurrent.triton` (moved into the op's folder;
this name stays importable and is the same module object, so attributes set on it, e.g. by tests, reach the
kernels)."""

import sys

from .recurrent import triton as _module

sys.modules[__name__] = _module
