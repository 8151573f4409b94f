"""The surrogate derivatives of :mod:`surroflos.surrogate` as a Triton device function.

The ids are the kernel ABI fixed in :data:`surroflos.surrogate.SURROGATES`; each branch must equal
:func:`surroflos.surrogate.surrogate_derivative` (tests/test_kernels_surrogate.py checks all six).
"""

import triton
import triton.language as tl


@triton.jit
def surrogate_grad(x, SURROGATE: tl.constexpr, scale):
    """``sigma'(x)`` for the surrogate id ``SURROGATE`` (a compile-time constant) and its ``scale``."""
    if SURROGATE == 0:  # fast_sigmoid / superspike
        den = scale * tl.abs(x) + 1.0
        out = 1.0 / (den * den)
    elif SURROGATE == 1:  # atan
        u = 1.5707963267948966 * scale * x
        out = (scale * 0.5) / (1.0 + u * u)
    elif SURROGATE == 2:  # sigmoid: s(scale x) s(-scale x) = e / (1 + e)^2 with e = exp(-scale |x|), no overflow
        e = tl.exp(-scale * tl.abs(x))
        out = scale * e / ((1.0 + e) * (1.0 + e))
    elif SURROGATE == 3:  # triangle
        out = scale * tl.maximum(1.0 - tl.abs(x), 0.0)
    elif SURROGATE == 4:  # exponential
        out = (scale * 0.5) * tl.exp(-scale * tl.abs(x))
    else:  # gaussian
        u = scale * x
        out = (scale * 0.3989422804014327) * tl.exp(-0.5 * u * u)
    return out
