"""``surroflos.kernels.lif_triton`` is :mod:`surroflos.kernels.lif.triton` (moved into the op's folder; this name
stays importable and is the same module object, so attributes set on it, e.g. by tests, reach the kernels)."""

import sys

from .lif import triton as _module

sys.modules[__name__] = _module
