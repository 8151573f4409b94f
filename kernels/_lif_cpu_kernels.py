"""``surroflos.kernels._lif_cpu_kernels`` is :mod:`surroflos.kernels.lif._cpu_kernels` (moved into the op's folder; this name
stays importable and is the same module object, so attributes set on it, e.g. by tests, reach the kernels)."""

import sys

from .lif import _cpu_kernels as _module

sys.modules[__name__] = _module
