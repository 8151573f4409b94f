"""The Triton surrogate device function equals surroflos.surrogate for every id, and backend resolution."""

import pytest
import torch

from surroflos import surrogate as sg
from surroflos.kernels import backend as kb

from _kernel_checks import DEVICE, requires_triton
from _tolerance import close_kw, scale_of


if kb.triton_importable():
    import triton
    import triton.language as tl

    from surroflos.kernels._surrogate_triton import surrogate_grad

    @triton.jit
    def _k(x_ptr, y_ptr, n, scale, SURROGATE: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        v = tl.load(x_ptr + offs, mask=m, other=0.0)
        tl.store(y_ptr + offs, surrogate_grad(v, SURROGATE, scale), mask=m)


def _apply(x: torch.Tensor, sid: int, scale: float) -> torch.Tensor:
    y = torch.empty_like(x)
    n = x.numel()
    _k[(triton.cdiv(n, 64),)](x, y, n, scale, SURROGATE=sid, BLOCK=64)
    return y


@pytest.mark.numerics
@requires_triton
@pytest.mark.parametrize("name", ["fast_sigmoid", "atan", "sigmoid", "triangle", "exponential", "gaussian"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_surrogate_grad_matches_torch(name, dtype):
    sid, scale = sg.SURROGATES[name]
    x = torch.cat([torch.linspace(-3, 3, 97, dtype=dtype), torch.tensor([0.0, 1e-7, -50.0, 50.0], dtype=dtype)])
    x = x.to(DEVICE)
    ref = sg.surrogate_derivative(x, sid, scale)
    out = _apply(x, sid, scale)
    # The same formula in another library (numpy in the interpreter, CUDA's libdevice compiled): each of its
    # <= 8 operations (scale, abs, exp, square, divide, ...) rounds once, in float32 and float64 alike; on the
    # largest derivative's scale, since exp's rounding is relative to its (there tiny) result
    # (tolerance policy: tests/_tolerance.py).
    torch.testing.assert_close(out, ref, **close_kw(dtype, scale_of(ref), 8))


def test_resolve_backend_rules():
    assert kb.resolve_backend("torch", "cpu") == "torch"
    assert kb.resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        kb.resolve_backend("cuda", "cpu")
    with pytest.raises(ValueError):
        kb.check_backend(None)


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(kb.TritonUnavailableError, match="TRITON_INTERPRET=1"):
        kb.resolve_backend("triton", "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is used only without CUDA")
def test_triton_on_cpu_with_interpreter():
    assert kb.resolve_backend("triton", "cpu") == "triton"
