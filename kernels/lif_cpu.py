"""``surroflos.kernels.lif_cpu`` is :mod:`surroflos.kernels.lif.cpu` (moved into the op's folder; this name
stays importable and is the same module object, so attributes set on it, e.g. by tests, reach the kernels)."""

import sys

from .lif import cpu as _module

sys.modules[__name__] = _module
