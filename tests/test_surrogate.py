"""Surrogate spike functions: Heaviside forward, surrogate derivative in reverse and forward mode,
agreement with the reference libraries (snnTorch 1.0, Norse 1.1), primitives, stable ids and input
validation."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from surroflos import surrogate as sg
from surroflos.surrogate import SURROGATES, Surrogate, spike, surrogate_derivative, surrogate_primitive

from _tolerance import close_kw, scale_of

NAMES = list(SURROGATES)
DTYPES = [torch.float32, torch.float64]
# A surrogate derivative is <= 8 elementwise operations (scale, abs, exp, square, divide, ...), each rounding once;
# two evaluations (another formula, another library, float64 rounded once) differ by 8 roundings of the largest
# value: on the scale, since exp and 1 - s round relative to their (there tiny) results
# (tolerance policy: tests/_tolerance.py). float64 comparisons keep their exactness tolerances.
ELEMENTWISE_OPS = 8


def f32_close(expected) -> dict:
    return close_kw(torch.float32, scale_of(expected), ELEMENTWISE_OPS)


def formula(name: str, x: torch.Tensor, scale: float) -> torch.Tensor:
    """The documented derivative, written out independently of the library."""
    if name in ("fast_sigmoid", "superspike"):
        return 1.0 / (scale * x.abs() + 1.0) ** 2
    if name == "atan":
        return (scale / 2.0) / (1.0 + (math.pi / 2.0 * scale * x) ** 2)
    if name == "sigmoid":
        e = torch.exp(-scale * x)
        return scale * e / (e + 1.0) ** 2
    if name == "triangle":
        return scale * (1.0 - x.abs()).clamp(min=0.0)
    if name == "exponential":
        return scale / 2.0 * torch.exp(-scale * x.abs())
    if name == "gaussian":
        return scale / math.sqrt(2.0 * math.pi) * torch.exp(-0.5 * (scale * x) ** 2)
    raise AssertionError(name)


def total_mass(name: str, scale: float) -> float:
    if name in ("fast_sigmoid", "superspike"):
        return 2.0 / scale
    if name == "triangle":
        return scale
    return 1.0


def points(dtype=torch.float64, n: int = 64, seed: int = 0) -> torch.Tensor:
    """Random points in [-3, 3] plus the special values 0, +-1 and tiny numbers."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, generator=g, dtype=torch.float64) - 0.5) * 6.0
    special = torch.tensor([0.0, -0.0, 1e-7, -1e-7, 1.0, -1.0, 0.5, -0.5, 2.5, -2.5], dtype=torch.float64)
    return torch.cat([special, x]).to(dtype)


def grad_of(fn, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    return g


# ----------------------------------------------------------------------------------------------
# Forward: strict Heaviside
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_forward_is_strict_heaviside(name, dtype):
    x = points(dtype)
    out = spike(x, name)
    assert out.dtype == dtype
    assert out.shape == x.shape
    torch.testing.assert_close(out, (x > 0).to(dtype), rtol=0, atol=0)
    assert out[0].item() == 0.0 and out[1].item() == 0.0  # H(0) = H(-0) = 0
    assert out[2].item() == 1.0 and out[3].item() == 0.0
    # Same through the Surrogate object and with a non-default scale.
    torch.testing.assert_close(Surrogate(name, 3.0)(x), (x > 0).to(dtype), rtol=0, atol=0)


def test_forward_shapes_and_values_multidim():
    x = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1))
    out = spike(x, "atan")
    assert out.shape == x.shape
    assert set(out.unique().tolist()) <= {0.0, 1.0}


# ----------------------------------------------------------------------------------------------
# Backward: documented formula and the reference libraries
# ----------------------------------------------------------------------------------------------


@pytest.mark.numerics
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [None, 0.7, 4.0])
def test_backward_equals_documented_formula(name, scale, dtype):
    s = sg.get(name, scale)
    x = points(dtype)
    g = grad_of(lambda v: spike(v, name, scale), x)
    assert g.dtype == dtype
    expect = formula(name, x.double(), s.scale).to(dtype)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else f32_close(expect)
    torch.testing.assert_close(g, expect, **tol)
    # The public derivative helpers agree with the backward.
    torch.testing.assert_close(s.derivative(x), g, rtol=0, atol=0)
    torch.testing.assert_close(surrogate_derivative(x, s.id, s.scale), g, rtol=0, atol=0)


def test_backward_chains_grad_output():
    x = points()
    w = torch.linspace(-2, 3, x.numel(), dtype=x.dtype)
    g = grad_of(lambda v: (w * spike(v, "atan")), x)
    torch.testing.assert_close(g, w * formula("atan", x, 2.0))


snn_surrogate = pytest.importorskip("snntorch.surrogate")


@pytest.mark.numerics
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ours,ref", [
    (("atan", None), lambda: snn_surrogate.atan()),
    (("atan", 3.5), lambda: snn_surrogate.atan(alpha=3.5)),
    (("fast_sigmoid", None), lambda: snn_surrogate.fast_sigmoid()),
    (("fast_sigmoid", 10.0), lambda: snn_surrogate.fast_sigmoid(slope=10)),
    (("sigmoid", None), lambda: snn_surrogate.sigmoid()),
    (("sigmoid", 7.0), lambda: snn_surrogate.sigmoid(slope=7)),
], ids=["atan", "atan-3.5", "fast_sigmoid", "fast_sigmoid-10", "sigmoid", "sigmoid-7"])
def test_backward_matches_snntorch(ours, ref, dtype):
    name, scale = ours
    fn = ref()
    x = points(dtype)  # within [-3, 3]: snnTorch's sigmoid overflows exp(-slope x) further out
    ours_g = grad_of(lambda v: spike(v, name, scale), x)
    ref_g = grad_of(fn, x)
    assert bool(torch.isfinite(ref_g).all())
    # snnTorch's sigmoid uses e/(e+1)^2 and ours s(1-s): equal up to float32 rounding.
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else f32_close(ref_g)
    torch.testing.assert_close(ours_g, ref_g.to(dtype), **tol)
    # Forward agrees too (snnTorch always returns float32).
    torch.testing.assert_close(spike(x, name, scale), fn(x).to(dtype), rtol=0, atol=0)


norse_threshold = pytest.importorskip("norse.torch.functional.threshold")


@pytest.mark.numerics
@pytest.mark.parametrize("dtype", DTYPES)
def test_superspike_default_matches_norse(dtype):
    x = points(dtype)
    ref = grad_of(lambda v: norse_threshold.threshold(v, "super", 100.0), x)
    ours = grad_of(lambda v: spike(v, "superspike"), x)
    tol = dict(rtol=1e-12, atol=0) if dtype == torch.float64 else f32_close(ref)
    torch.testing.assert_close(ours, ref.to(dtype), **tol)
    # Norse 1.1 ignores alpha in the backward: the result is 1/(|x|+1)^2, i.e. scale 1, not 100.
    torch.testing.assert_close(ours, formula("superspike", x, 1.0), **tol)
    assert Surrogate("superspike").scale == 1.0
    torch.testing.assert_close(spike(x, "superspike"), norse_threshold.threshold(x, "super", 100.0), rtol=0, atol=0)


@pytest.mark.numerics
@pytest.mark.parametrize("dtype", DTYPES)
def test_triangle_default_matches_norse(dtype):
    # Norse's piecewise-linear surrogate is threshold(..., method="triangle", alpha) (default alpha 0.3).
    assert hasattr(norse_threshold, "triangle_fn")
    x = points(dtype)
    ref = grad_of(lambda v: norse_threshold.threshold(v, "triangle", 0.3), x)
    ours = grad_of(lambda v: spike(v, "triangle"), x)
    tol = f32_close(ref) if dtype == torch.float32 else dict(rtol=1e-14, atol=0)
    torch.testing.assert_close(ours, ref, **tol)
    ref_default = grad_of(norse_threshold.triangle_fn, x)  # its own default alpha
    torch.testing.assert_close(ours, ref_default, **tol)
    torch.testing.assert_close(spike(x, "triangle"), norse_threshold.threshold(x, "triangle", 0.3), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# Forward mode and vmap
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_func_jvp_gives_tangent_times_derivative(name):
    x = points()
    t = torch.linspace(-1.0, 2.0, x.numel(), dtype=x.dtype)
    primal, tangent = torch.func.jvp(lambda v: spike(v, name), (x,), (t,))
    torch.testing.assert_close(primal, (x > 0).double(), rtol=0, atol=0)
    torch.testing.assert_close(tangent, t * formula(name, x, Surrogate(name).scale), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_forward_ad_dual_numbers(name):
    x = points()
    t = torch.cos(torch.arange(x.numel(), dtype=x.dtype))
    with fwAD.dual_level():
        out = spike(fwAD.make_dual(x, t), name, 1.7)
        primal, tangent = fwAD.unpack_dual(out)
    torch.testing.assert_close(primal, (x > 0).double(), rtol=0, atol=0)
    torch.testing.assert_close(tangent, t * formula(name, x, 1.7), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["atan", "fast_sigmoid", "triangle", "gaussian"])
def test_vmap(name):
    X = torch.randn(5, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(torch.func.vmap(lambda v: spike(v, name))(X), (X > 0).double(), rtol=0, atol=0)
    # Per-sample gradients (vmap over grad) and vmapped jvp (the pattern jvp_tangent uses).
    per_sample = torch.func.vmap(torch.func.grad(lambda v: spike(v, name).sum()))(X)
    torch.testing.assert_close(per_sample, Surrogate(name).derivative(X), rtol=1e-12, atol=1e-14)
    T = torch.randn(5, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x0 = X[0]
    tang = torch.func.vmap(lambda q: torch.func.jvp(lambda v: spike(v, name), (x0,), (q,))[1])(T)
    torch.testing.assert_close(tang, T * Surrogate(name).derivative(x0), rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------------------------
# Second derivatives
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_double_backward(name):
    s = Surrogate(name)
    x = points().requires_grad_(True)
    (g,) = torch.autograd.grad(spike(x, name).sum(), x, create_graph=True)
    assert g.requires_grad
    (gg,) = torch.autograd.grad(g.sum(), x)
    expect = grad_of(s.derivative, x.detach())
    torch.testing.assert_close(gg, expect, rtol=1e-12, atol=1e-14)
    if name == "atan":
        a = s.scale
        k = math.pi / 2 * a
        xd = x.detach()
        torch.testing.assert_close(gg, -a * k**2 * xd / (1 + (k * xd) ** 2) ** 2, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_derivative(name):
    s = Surrogate(name, 1.3)
    # Away from the kinks of |x| (x = 0) and of the tent (|x| = 1).
    x = torch.tensor([-2.1, -0.8, -0.3, 0.2, 0.45, 0.9, 1.6], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(s.derivative, (x,))
    assert torch.autograd.gradgradcheck(s.derivative, (x,))
    # (spike itself cannot be gradchecked: its true derivative is 0 a.e.) gradcheck of the surrogate backward itself: the VJP of spike is a smooth function of x.
    assert torch.autograd.gradcheck(lambda v: torch.autograd.grad(spike(v, s).sum(), v, create_graph=True)[0], (x,))


# ----------------------------------------------------------------------------------------------
# Primitive
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [None, 0.6, 3.0])
def test_primitive_derivative_is_surrogate(name, scale):
    s = sg.get(name, scale)
    x = torch.cat([points(), torch.tensor([-40.0, -12.0, 12.0, 40.0, -300.0, 300.0], dtype=torch.float64)])
    g = grad_of(s.primitive, x)
    assert bool(torch.isfinite(g).all()), f"non-finite primitive gradient for {name}"
    torch.testing.assert_close(g, s.derivative(x), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(g, grad_of(lambda v: surrogate_primitive(v, s.id, s.scale), x), rtol=0, atol=0)
    # Forward mode too (smooth=True networks are differentiated with jvp).
    _, tang = torch.func.jvp(s.primitive, (x,), (torch.ones_like(x),))
    torch.testing.assert_close(tang, s.derivative(x), rtol=1e-10, atol=1e-14)


@pytest.mark.numerics
@pytest.mark.parametrize("name", NAMES)
def test_primitive_gradient_finite_float32(name):
    # Large membranes in float32 (where exp overflows at ~88) must not give NaN/inf gradients.
    x = torch.tensor([-1e4, -100.0, -30.0, -1.0, 0.0, 1.0, 30.0, 100.0, 1e4], dtype=torch.float32)
    s = Surrogate(name)
    g = grad_of(s.primitive, x)
    assert bool(torch.isfinite(g).all())
    assert bool(torch.isfinite(s.primitive(x)).all())
    torch.testing.assert_close(g, s.derivative(x), **f32_close(s.derivative(x)))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [None, 0.6, 3.0])
def test_primitive_monotone_and_limits(name, scale):
    s = sg.get(name, scale)
    x = torch.linspace(-50.0, 50.0, 4001, dtype=torch.float64)
    F = s.primitive(x)
    assert bool((F.diff() >= -1e-15).all())
    assert bool(((F >= -1e-15) & (F <= total_mass(name, s.scale) + 1e-12)).all())
    mass = total_mass(name, s.scale)
    big = torch.tensor([-1e9, 1e9], dtype=torch.float64)
    lo, hi = s.primitive(big).tolist()
    assert abs(lo) <= 1e-8 * mass
    assert hi == pytest.approx(mass, rel=1e-8)
    # The primitive is continuous across 0 and its two halves carry half the (symmetric) mass each.
    assert s.primitive(torch.zeros((), dtype=torch.float64)).item() == pytest.approx(mass / 2, rel=1e-12)
    # Fundamental theorem of calculus on [-1.5, 2]: numerical integral of the derivative.
    u = torch.linspace(-1.5, 2.0, 35001, dtype=torch.float64)
    integral = torch.trapezoid(s.derivative(u), u).item()
    F2 = s.primitive(torch.tensor([-1.5, 2.0], dtype=torch.float64))
    assert (F2[1] - F2[0]).item() == pytest.approx(integral, rel=1e-5, abs=1e-9)


def test_primitive_dtype_preserved():
    for name in NAMES:
        for dtype in DTYPES:
            assert Surrogate(name).primitive(points(dtype)).dtype == dtype
            assert Surrogate(name).derivative(points(dtype)).dtype == dtype


# ----------------------------------------------------------------------------------------------
# Stable ids, defaults, construction, validation
# ----------------------------------------------------------------------------------------------

EXPECTED_IDS = {"fast_sigmoid": 0, "superspike": 0, "atan": 1, "sigmoid": 2, "triangle": 3,
                "exponential": 4, "gaussian": 5}
EXPECTED_SCALES = {"fast_sigmoid": 25.0, "superspike": 1.0, "atan": 2.0, "sigmoid": 25.0, "triangle": 0.3,
                   "exponential": 5.0, "gaussian": 5.0}


def test_stable_ids_abi():
    # The Triton kernels dispatch on these integers: they must never be renumbered.
    assert {n: Surrogate(n).id for n in SURROGATES} == EXPECTED_IDS
    assert {n: v[0] for n, v in SURROGATES.items()} == EXPECTED_IDS
    assert set(SURROGATES) == set(EXPECTED_IDS)


def test_default_scales():
    assert {n: Surrogate(n).scale for n in SURROGATES} == EXPECTED_SCALES
    assert {n: v[1] for n, v in SURROGATES.items()} == EXPECTED_SCALES
    assert Surrogate().name == "atan" and Surrogate().scale == 2.0


def _docstring_table() -> dict[str, tuple[int, float]]:
    lines = sg.__doc__.splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("=====")]
    assert len(rules) >= 3
    rows = {}
    for line in lines[rules[1] + 1:rules[2]]:
        tokens = line.split()
        name, sid = tokens[0], int(tokens[1])
        rest = re.sub(r"``.*?``", " ", line.split(None, 2)[2])
        scale = next(float(t) for t in rest.split() if re.fullmatch(r"[0-9.]+", t))
        rows[name] = (sid, scale)
    return rows


def test_docstring_table_matches_registry():
    assert _docstring_table() == {n: (EXPECTED_IDS[n], EXPECTED_SCALES[n]) for n in EXPECTED_IDS}


def test_superspike_is_fast_sigmoid_function():
    x = points()
    torch.testing.assert_close(Surrogate("superspike", 25.0).derivative(x), Surrogate("fast_sigmoid").derivative(x))
    torch.testing.assert_close(Surrogate("superspike", 25.0).primitive(x), Surrogate("fast_sigmoid").primitive(x))


def test_get_and_custom_scale():
    s = sg.get("fast_sigmoid", 10)
    assert isinstance(s, Surrogate) and s.scale == 10.0 and isinstance(s.scale, float)
    assert sg.get(s) is s
    assert sg.get(s, 10.0) is s
    s2 = sg.get(s, 3.0)
    assert s2.name == "fast_sigmoid" and s2.scale == 3.0
    assert sg.get() == Surrogate("atan", 2.0)
    assert Surrogate("atan") == Surrogate("atan", 2.0)  # default resolved at construction
    hash(Surrogate("atan"))  # frozen dataclass: usable as a key
    x = points()
    torch.testing.assert_close(grad_of(lambda v: spike(v, s), x), formula("fast_sigmoid", x, 10.0))


@pytest.mark.parametrize("bad", ["nope", "ATan", "", "heaviside"])
def test_unknown_name_raises(bad):
    with pytest.raises(ValueError):
        Surrogate(bad)
    with pytest.raises(ValueError):
        sg.get(bad)
    with pytest.raises(ValueError):
        spike(torch.zeros(3), bad)


@pytest.mark.parametrize("scale", [0, 0.0, -1.0, float("nan"), float("inf"), float("-inf")])
def test_bad_scale_raises(scale):
    with pytest.raises(ValueError):
        Surrogate("atan", scale)
    with pytest.raises(ValueError):
        sg.get("fast_sigmoid", scale)
    with pytest.raises(ValueError):
        spike(torch.zeros(3), "sigmoid", scale)
    with pytest.raises(ValueError):
        sg.get(Surrogate("atan"), scale)


@pytest.mark.parametrize("bad", [3, 1.5, None, ["atan"], torch.tensor(1.0)])
def test_wrong_type_raises(bad):
    with pytest.raises(TypeError):
        sg.get(bad)
    with pytest.raises(TypeError):
        spike(torch.zeros(3), bad)


def test_unknown_id_raises():
    x = torch.zeros(3)
    with pytest.raises(ValueError):
        surrogate_derivative(x, 6, 1.0)
    with pytest.raises(ValueError):
        surrogate_primitive(x, -1, 1.0)
