"""Fused Norse-style feed-forward neurons (surroflos.kernels.norse_lif): the PyTorch path and the Triton
kernels (Triton's interpreter on CPU) against a naive per-step autograd loop, which is itself checked
against surroflos.norse's step functions; float64 gradcheck of the explicit reverse-time backward; graph
capture with torch.compile; and the Norse drop-ins LIF / LIFBox with backend="torch"/"triton" against
Norse's own modules (spikes, states, gradients including a learnable tau_mem_inv) and their fallbacks."""

from __future__ import annotations

import pytest
import torch

from surroflos import norse as sn  # imports Norse quietly (it uses the deprecated torch.jit.script)
from surroflos import surrogate as sg
from surroflos.kernels import backend as kb
from surroflos.kernels import norse_lif as nl
from surroflos.kernels.norse_lif import lif_box_sequence, lif_feed_forward_sequence

import norse.torch as nt  # noqa: E402
from norse.torch.functional.reset import reset_subtract, reset_value  # noqa: E402

from _kernel_checks import DEVICE, assert_spikes_match, requires_triton  # noqa: E402
from _kernel_checks import assert_close_rel as _close_rel  # noqa: E402
from _tolerance import recurrence_ops, rounding_rtol  # noqa: E402

pytestmark = pytest.mark.numerics

F32, F64 = torch.float32, torch.float64
BACKENDS = ["torch", pytest.param("triton", marks=requires_triton)]
# None = Norse's method="heaviside" (no gradient); then one surrogate per kernel id 0..5.
SURROGATES = [None, sg.Surrogate("superspike"), sg.Surrogate("atan", 3.0), sg.Surrogate("sigmoid", 4.0),
              sg.Surrogate("triangle", 0.7), sg.Surrogate("exponential", 2.0), sg.Surrogate("gaussian", 2.5)]
SG_IDS = ["heaviside", "id0", "id1", "id2", "id3", "id4", "id5"]
LIF_NAMES = ("tau_mem_inv", "tau_syn_inv", "v_leak", "v_th", "v_reset")
BOX_NAMES = ("tau_mem_inv", "v_leak", "v_th", "v_reset")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_close_rel(actual, expected, rtol, what=""):
    _close_rel(actual.detach(), expected.detach(), rtol, what)


# Rounded operations per step (tolerance policy: tests/_tolerance.py): the Euler updates of the current and the
# membrane, the reset and the threshold, <= 12.
STEP_OPS = 12


def state_rtol(dtype, shape) -> float:
    """Two evaluations of a [T, ...] sequence in different orders: T steps of STEP_OPS."""
    return rounding_rtol(dtype, recurrence_ops(shape[0], STEP_OPS))


def grad_rtol(dtype, shape) -> float:
    """Their gradients: the backward pass again, plus a scalar parameter's sum over all T x ... elements."""
    numel = 1
    for n in shape:
        numel *= n
    return rounding_rtol(dtype, recurrence_ops(shape[0], STEP_OPS, backward=True, reduce=numel))


# ----------------------------------------------------------------------------------------------
# Naive references: per-step autograd loops with arbitrary surrogates
# ----------------------------------------------------------------------------------------------


def _spike_fn(surrogate):
    if surrogate is None:
        return lambda s: (s > 0).to(s.dtype)
    return sg.get(surrogate)


def naive_lif(x, v0, i0, p: dict, dt: float, surrogate):
    """The LIF equations step by step (autograd through every op); also returns the pre-reset membrane u."""
    spike = _spike_fn(surrogate)
    v, i = v0, i0
    zs, vs, is_, us = [], [], [], []
    for t in range(x.shape[0]):
        j = i + x[t]
        u = v + (dt * p["tau_mem_inv"]) * ((p["v_leak"] - v) + j)
        i = j + (-dt * p["tau_syn_inv"]) * j
        z = spike(u - p["v_th"])
        v = (1 - z) * u + z * p["v_reset"]
        zs.append(z), vs.append(v), is_.append(i), us.append(u)
    return torch.stack(zs), torch.stack(vs), torch.stack(is_), torch.stack(us).detach()


def naive_box(x, v0, p: dict, dt: float, reset: str, surrogate):
    spike = _spike_fn(surrogate)
    v = v0
    zs, vs, us = [], [], []
    for t in range(x.shape[0]):
        u = v + (dt * p["tau_mem_inv"]) * ((x[t] + p["v_leak"]) - v)
        z = spike(u - p["v_th"])
        v = (1 - z) * u + z * (p["v_reset"] if reset == "value" else (u - p["v_th"]))
        zs.append(z), vs.append(v), us.append(u)
    return torch.stack(zs), torch.stack(vs), torch.stack(us).detach()


# ----------------------------------------------------------------------------------------------
# Random cases
# ----------------------------------------------------------------------------------------------


def lif_params(kind: str, n: int, dtype, seed: int) -> dict:
    """``scalar``: Python numbers; ``tensor``: 0-dim tensors; ``per_neuron``: [N] tensors (all trainable)."""
    if kind == "scalar":
        return dict(tau_mem_inv=110.0, tau_syn_inv=180.0, v_leak=0.05, v_th=0.9, v_reset=-0.1)
    if kind == "tensor":
        vals = dict(tau_mem_inv=110.0, tau_syn_inv=180.0, v_leak=0.05, v_th=0.9, v_reset=-0.1)
        return {k: torch.tensor(v, dtype=dtype, requires_grad=True) for k, v in vals.items()}
    g = gen(seed)
    lo_hi = dict(tau_mem_inv=(60.0, 160.0), tau_syn_inv=(120.0, 260.0), v_leak=(-0.1, 0.1), v_th=(0.7, 1.2),
                 v_reset=(-0.2, 0.1))
    return {k: (lo + (hi - lo) * torch.rand(n, generator=g, dtype=dtype)).requires_grad_(True)
            for k, (lo, hi) in lo_hi.items()}


def box_params(kind: str, n: int, dtype, seed: int) -> dict:
    p = lif_params(kind, n, dtype, seed)
    del p["tau_syn_inv"]
    return p


def lif_case(shape, kind: str, dtype, seed: int):
    g = gen(seed)
    x = (3.0 * torch.rand(*shape, generator=g, dtype=dtype)).requires_grad_(True)
    v0 = torch.rand(*shape[1:], generator=g, dtype=dtype).requires_grad_(True)
    i0 = (0.3 * torch.randn(*shape[1:], generator=g, dtype=dtype)).requires_grad_(True)
    return x, v0, i0, lif_params(kind, shape[-1], dtype, seed + 1)


def box_case(shape, kind: str, dtype, seed: int):
    g = gen(seed)
    x = (4.0 * torch.rand(*shape, generator=g, dtype=dtype) + 0.6).requires_grad_(True)
    v0 = torch.rand(*shape[1:], generator=g, dtype=dtype).requires_grad_(True)
    return x, v0, box_params(kind, shape[-1], dtype, seed + 1)


def leaves(*tensors, p: dict):
    return [*tensors, *(t for t in p.values() if isinstance(t, torch.Tensor) and t.requires_grad)]


def loss(outputs, seed: int):
    """Reads every output at every step with random weights."""
    g = gen(seed)
    return sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outputs)


def grads(outputs, wrt, seed: int):
    return torch.autograd.grad(loss(outputs, seed), wrt, allow_unused=True)


def assert_grads(got, ref, rtol):
    for k, (a, b) in enumerate(zip(got, ref)):
        if b is None:  # e.g. v_reset with the subtract reset: the kernel reports zero
            assert a is None or not bool(a.any()), f"gradient {k} should vanish"
            continue
        assert a is not None, f"gradient {k} missing"
        assert_close_rel(a, b, rtol, what=f"gradient {k}")


def check_spiking(z):
    frac = float(z.detach().float().mean())
    assert 0.0 < frac < 1.0, f"spike fraction {frac}: adjust the drive of the test"


def run_lif(x, v0, i0, p, dt, surrogate, backend):
    return lif_feed_forward_sequence(x, v0, i0, **p, dt=dt, surrogate=surrogate, backend=backend)


def run_box(x, v0, p, dt, reset, surrogate, backend):
    return lif_box_sequence(x, v0, **p, dt=dt, reset=reset, surrogate=surrogate, backend=backend)


# ----------------------------------------------------------------------------------------------
# The naive loops are the step functions of surroflos.norse (for Norse's own methods)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["super", "triangle", "heaviside"])
def test_naive_references_are_the_step_functions(method):
    x, v0, i0, p = lif_case((6, 2, 4), "per_neuron", F64, 1)
    alpha = torch.as_tensor(0.8)
    surrogate = sn.norse_surrogate(method, alpha)
    lp = nt.LIFParameters(**p, method=method, alpha=alpha)
    state, steps = nt.LIFFeedForwardState(v=v0, i=i0), []
    for t in range(x.shape[0]):
        z, state = sn.lif_feed_forward_step(x[t], state, lp, 1e-3)
        steps.append((z, state.v, state.i))
    ref = [torch.stack(s) for s in zip(*steps)]
    out = naive_lif(x, v0, i0, p, 1e-3, surrogate)[:3]
    check_spiking(ref[0])
    w = leaves(x, v0, i0, p=p)
    for a, b in zip(out, ref):
        assert torch.equal(a, b)
    assert_grads(grads(out, w, 2), grads(ref, w, 2), 1e-12)

    xb, vb, pb = box_case((6, 2, 4), "per_neuron", F64, 3)
    for reset, fn in (("value", reset_value), ("subtract", reset_subtract)):
        bp = nt.LIFBoxParameters(**pb, method=method, alpha=alpha, reset_method=fn)
        state, steps = nt.LIFBoxFeedForwardState(v=vb), []
        for t in range(xb.shape[0]):
            z, state = sn.lif_box_step(xb[t], state, bp, 1e-3)
            steps.append((z, state.v))
        ref = [torch.stack(s) for s in zip(*steps)]
        out = naive_box(xb, vb, pb, 1e-3, reset, surrogate)[:2]
        check_spiking(ref[0])
        for a, b in zip(out, ref):
            assert torch.equal(a, b)
        w = leaves(xb, vb, p=pb)
        assert_grads(grads(out, w, 4), grads(ref, w, 4), 1e-12)


# ----------------------------------------------------------------------------------------------
# Kernels vs the naive loops
# ----------------------------------------------------------------------------------------------


def compare_lif(shape, kind, dtype, surrogate, backend, seed, dt=1e-3):
    x, v0, i0, p = lif_case(shape, kind, dtype, seed)
    x, v0, i0 = x.to(DEVICE).detach().requires_grad_(), v0.to(DEVICE).detach().requires_grad_(), \
        i0.to(DEVICE).detach().requires_grad_()
    p = {k: (t.to(DEVICE).detach().requires_grad_() if isinstance(t, torch.Tensor) else t) for k, t in p.items()}
    z_r, v_r, i_r, u_r = naive_lif(x, v0, i0, p, dt, surrogate)
    out = run_lif(x, v0, i0, p, dt, surrogate, backend)
    check_spiking(z_r)
    assert all(o.shape == x.shape and o.dtype == dtype for o in out)
    assert_spikes_match(out[0].detach(), z_r.detach(), u_r, torch.as_tensor(p["v_th"]).detach())
    assert_close_rel(out[1], v_r, state_rtol(dtype, shape), "v")
    assert_close_rel(out[2], i_r, state_rtol(dtype, shape), "i")
    w = leaves(x, v0, i0, p=p)
    got, ref = grads(out, w, seed + 7), grads((z_r, v_r, i_r), w, seed + 7)
    assert_grads(got, ref, grad_rtol(dtype, shape))
    return out, got


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("surrogate", SURROGATES, ids=SG_IDS)
def test_lif_every_surrogate(backend, surrogate):
    compare_lif((7, 3, 5), "per_neuron", F32, surrogate, backend, 10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,kind,dtype", [((7, 3, 5), "scalar", F32), ((7, 3, 5), "tensor", F64),
                                              ((1, 2, 5), "per_neuron", F32), ((9, 1, 3), "tensor", F32),
                                              ((5, 2, 3, 4), "per_neuron", F64), ((4, 3, 100), "per_neuron", F32)])
def test_lif_shapes_and_parameters(backend, shape, kind, dtype):
    """Shapes that are not block multiples (the last shape spans two 256-neuron blocks), T = 1, B = 1,
    extra neuron dimensions; parameters as numbers, 0-dim and per-neuron tensors."""
    compare_lif(shape, kind, dtype, sg.Surrogate("atan"), backend, 20)


def compare_box(shape, kind, dtype, reset, surrogate, backend, seed, dt=1e-3):
    x, v0, p = box_case(shape, kind, dtype, seed)
    x, v0 = x.to(DEVICE).detach().requires_grad_(), v0.to(DEVICE).detach().requires_grad_()
    p = {k: (t.to(DEVICE).detach().requires_grad_() if isinstance(t, torch.Tensor) else t) for k, t in p.items()}
    z_r, v_r, u_r = naive_box(x, v0, p, dt, reset, surrogate)
    out = run_box(x, v0, p, dt, reset, surrogate, backend)
    check_spiking(z_r)
    assert all(o.shape == x.shape and o.dtype == dtype for o in out)
    assert_spikes_match(out[0].detach(), z_r.detach(), u_r, torch.as_tensor(p["v_th"]).detach())
    assert_close_rel(out[1], v_r, state_rtol(dtype, shape), "v")
    w = leaves(x, v0, p=p)
    assert_grads(grads(out, w, seed + 7), grads((z_r, v_r), w, seed + 7), grad_rtol(dtype, shape))
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reset", nl.RESETS)
@pytest.mark.parametrize("surrogate", SURROGATES, ids=SG_IDS)
def test_box_every_surrogate_and_reset(backend, reset, surrogate):
    compare_box((7, 3, 5), "per_neuron", F32, reset, surrogate, backend, 30)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("used", [0, 1, 2], ids=["spikes-only", "membrane-only", "current-only"])
def test_lif_backward_with_outputs_unused(backend, used):
    """A loss on one output of the feed-forward LIF (the others' gradients None) gives the naive loop's gradients."""
    x, v0, i0, p = lif_case((8, 3, 5), "per_neuron", F64, 70 + used)
    x, v0, i0 = (t.to(DEVICE).detach().requires_grad_() for t in (x, v0, i0))
    p = {k: (t.to(DEVICE).detach().requires_grad_() if isinstance(t, torch.Tensor) else t) for k, t in p.items()}
    surrogate = sg.Surrogate("atan")
    ref = naive_lif(x, v0, i0, p, 1e-3, surrogate)
    out = run_lif(x, v0, i0, p, 1e-3, surrogate, backend)
    check_spiking(ref[0])
    w = leaves(x, v0, i0, p=p)
    assert_grads(grads((out[used],), w, 71), grads((ref[used],), w, 71), grad_rtol(F64, (8, 3, 5)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reset", nl.RESETS)
@pytest.mark.parametrize("used", [0, 1], ids=["spikes-only", "membrane-only"])
def test_box_backward_with_one_output_unused(backend, reset, used):
    """A loss on one output only (the other's gradient is None: the PyTorch loop takes it as zero without
    materialising it) gives the naive loop's gradients for x, v0 and every parameter."""
    x, v0, p = box_case((8, 3, 5), "per_neuron", F64, 50 + used)
    x, v0 = x.to(DEVICE).detach().requires_grad_(), v0.to(DEVICE).detach().requires_grad_()
    p = {k: (t.to(DEVICE).detach().requires_grad_() if isinstance(t, torch.Tensor) else t) for k, t in p.items()}
    surrogate = sg.Surrogate("atan")
    ref = naive_box(x, v0, p, 1e-3, reset, surrogate)
    out = run_box(x, v0, p, 1e-3, reset, surrogate, backend)
    check_spiking(ref[0])
    w = leaves(x, v0, p=p)
    assert_grads(grads((out[used],), w, 61), grads((ref[used],), w, 61), grad_rtol(F64, (8, 3, 5)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,kind,dtype,reset", [((6, 3, 5), "scalar", F64, "value"),
                                                    ((1, 1, 7), "tensor", F32, "subtract"),
                                                    ((5, 2, 2, 3), "tensor", F64, "subtract"),
                                                    ((4, 3, 100), "per_neuron", F32, "value")])
def test_box_shapes_and_parameters(backend, shape, kind, dtype, reset):
    compare_box(shape, kind, dtype, reset, sg.Surrogate("fast_sigmoid", 5.0), backend, 40)


@requires_triton
@pytest.mark.parametrize("dtype", [F32, F64])
def test_triton_equals_torch_path(dtype):
    x, v0, i0, p = lif_case((5, 3, 100), "per_neuron", dtype, 50)
    s = sg.Surrogate("sigmoid", 3.0)
    w = leaves(x, v0, i0, p=p)
    a, b = run_lif(x, v0, i0, p, 1e-3, s, "torch"), run_lif(x, v0, i0, p, 1e-3, s, "triton")
    check_spiking(a[0])
    assert torch.equal(a[0], b[0])
    for u, v in zip(a[1:], b[1:]):
        assert_close_rel(v, u, state_rtol(dtype, x.shape))
    assert_grads(grads(b, w, 51), grads(a, w, 51), grad_rtol(dtype, x.shape))
    xb, vb, pb = box_case((5, 3, 100), "per_neuron", dtype, 52)
    wb = leaves(xb, vb, p=pb)
    a, b = run_box(xb, vb, pb, 1e-3, "subtract", s, "torch"), run_box(xb, vb, pb, 1e-3, "subtract", s, "triton")
    assert torch.equal(a[0], b[0])
    assert_close_rel(b[1], a[1], state_rtol(dtype, xb.shape))
    assert_grads(grads(b, wb, 53), grads(a, wb, 53), grad_rtol(dtype, xb.shape))


@pytest.mark.parametrize("backend", BACKENDS)
def test_broadcast_initial_state_gets_summed_gradient(backend):
    """A per-neuron initial state [N] broadcast over the batch gets the batch-summed gradient."""
    x, _, _, p = lif_case((4, 3, 5), "tensor", F64, 60)
    v0 = torch.full((5,), 0.2, dtype=F64, requires_grad=True)
    i0 = torch.zeros((), dtype=F64, requires_grad=True)
    out = run_lif(x, v0, i0, p, 1e-3, sg.Surrogate("atan"), backend)
    ref = naive_lif(x, v0, i0, p, 1e-3, sg.Surrogate("atan"))[:3]
    w = leaves(x, v0, i0, p=p)
    assert_grads(grads(out, w, 61), grads(ref, w, 61), grad_rtol(F64, x.shape))


@pytest.mark.parametrize("backend,dtype", [("torch", torch.float16), ("torch", torch.bfloat16),
                                           pytest.param("triton", torch.float16, marks=requires_triton)])
def test_low_precision_accumulates_in_float32(backend, dtype):
    """float16/bfloat16 inputs: the states accumulate in float32, so the spikes are those of a float32 run on
    the same (rounded) inputs and the stored states are its states rounded once. (bfloat16 through Triton's
    interpreter is left to the CUDA test: the interpreter truncates instead of rounding.)"""
    x, v0, i0, p = lif_case((8, 3, 5), "per_neuron", F32, 160)
    lo = [t.detach().to(dtype).requires_grad_() for t in (x, v0, i0)]
    hi = [t.detach().float().requires_grad_() for t in lo]
    s = sg.Surrogate("atan")
    out, ref = run_lif(*lo, p, 1e-3, s, backend), run_lif(*hi, p, 1e-3, s, "torch")
    check_spiking(ref[0])
    assert all(o.dtype == dtype for o in out)
    assert torch.equal(out[0].float(), ref[0])
    for o, r in zip(out[1:], ref[1:]):
        assert_close_rel(o.float(), r, torch.finfo(dtype).eps)
    w = list(p.values())
    g_lo = grads([o.float() for o in out], lo + w, 161)
    g_hi = grads(ref, hi + w, 161)
    for a, b in zip(g_lo, g_hi):  # backward recomputes from the rounded stored states
        assert_close_rel(a.float(), b, 20 * torch.finfo(dtype).eps)
    xb, vb, pb = box_case((8, 3, 5), "tensor", F32, 162)
    zb, vbo = run_box(xb.to(dtype), vb.to(dtype), pb, 1e-3, "subtract", s, backend)
    rb = run_box(xb.to(dtype).float(), vb.to(dtype).float(), pb, 1e-3, "subtract", s, "torch")
    assert torch.equal(zb.float(), rb[0])
    assert_close_rel(vbo.float(), rb[1], torch.finfo(dtype).eps)


# ----------------------------------------------------------------------------------------------
# float64 gradcheck of the explicit backward (Heaviside: exact where the spikes are locally constant)
# ----------------------------------------------------------------------------------------------


def _margin(u, v_th) -> float:
    return float((u - v_th).abs().min())


@pytest.mark.parametrize("backend", BACKENDS)
def test_lif_gradcheck(backend):
    x, v0, i0, p = lif_case((4, 2, 3), "per_neuron", F64, 70)
    p["tau_syn_inv"] = torch.tensor(180.0, dtype=F64, requires_grad=True)
    z, _, _, u = naive_lif(x, v0, i0, p, 1e-3, None)
    check_spiking(z)
    assert _margin(u, p["v_th"]) > 1e-3  # the Heaviside is locally constant under gradcheck's perturbation
    names = list(p)

    def f(x, v0, i0, *vals):
        return run_lif(x, v0, i0, dict(zip(names, vals)), 1e-3, None, backend)

    assert torch.autograd.gradcheck(f, (x, v0, i0, *p.values()), fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reset", nl.RESETS)
def test_box_gradcheck(backend, reset):
    x, v0, p = box_case((4, 2, 3), "per_neuron", F64, 80)
    z, _, u = naive_box(x, v0, p, 1e-3, reset, None)
    check_spiking(z)
    assert _margin(u, p["v_th"]) > 1e-3
    names = list(p)

    def f(x, v0, *vals):
        return run_box(x, v0, dict(zip(names, vals)), 1e-3, reset, None, backend)

    assert torch.autograd.gradcheck(f, (x, v0, *p.values()), fast_mode=backend == "triton")


# ----------------------------------------------------------------------------------------------
# torch.compile, errors
# ----------------------------------------------------------------------------------------------


def test_torch_compile_captures_the_ops():
    """One graph (aot_eager, fullgraph) with the ops of both backends and the drop-in module."""
    torch._dynamo.reset()
    backends = ["torch"] + (["triton"] if kb.triton_importable() else [])
    x, v0, i0, p = lif_case((5, 2, 4), "per_neuron", F32, 90)
    xb, vb, pb = box_case((5, 2, 4), "tensor", F32, 91)
    # (a given state: the modules' initial_state sets requires_grad, as Norse does, which Dynamo rejects)
    lif = sn.LIF(nt.LIFParameters(tau_mem_inv=p["tau_mem_inv"]), backend=backends[-1])
    state = nt.LIFFeedForwardState(v=v0.detach(), i=i0.detach())

    def fn(x, v0, i0, tau, v_th, xb, vb, tau_b):
        total = 0.0
        for b in backends:
            z, v, i = lif_feed_forward_sequence(x, v0, i0, tau_mem_inv=tau, tau_syn_inv=200.0, v_leak=0.0,
                                                v_th=v_th, v_reset=0.0, dt=1e-3, surrogate=sg.Surrogate("atan"),
                                                backend=b)
            zb, vbo = lif_box_sequence(xb, vb, tau_mem_inv=tau_b, v_leak=0.1, v_th=0.9, v_reset=0.0, dt=1e-3,
                                       reset="subtract", surrogate=sg.Surrogate("superspike"), backend=b)
            total = total + (z * 1.5).sum() + (v * i).sum() + (zb - vbo).square().sum()
        zm, sm = lif(x, state)
        return total + (zm * sm.v).sum()

    args = (x, v0, i0, p["tau_mem_inv"], p["v_th"], xb, vb, pb["tau_mem_inv"])
    eager = fn(*args)
    g_eager = torch.autograd.grad(eager, args)
    out = torch.compile(fn, fullgraph=True, backend="aot_eager")(*args)
    # float32, the same ops traced: the sequences' rounding (the loss's sums: terms of either sign, so on the
    # gradients' scale)
    torch.testing.assert_close(out, eager, rtol=state_rtol(F32, x.shape) + rounding_rtol(F32, 3 * x.numel()), atol=0)
    for a, b in zip(torch.autograd.grad(out, args), g_eager):
        assert_close_rel(a, b, grad_rtol(F32, x.shape))


def test_input_errors():
    x, v0, i0 = torch.rand(4, 2, 3), torch.zeros(2, 3), torch.zeros(2, 3)
    kw = dict(tau_mem_inv=100.0, tau_syn_inv=200.0, v_leak=0.0, v_th=1.0, v_reset=0.0, surrogate="atan")
    with pytest.raises(ValueError, match=r"shape \(2, 3\).*\[\] or \[N\] = \[3\]"):
        lif_feed_forward_sequence(x, v0, i0, **{**kw, "v_th": torch.ones(2, 3)})
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        lif_box_sequence(x, v0, tau_mem_inv=torch.full((4,), 100.0), v_leak=0.0, v_th=1.0, v_reset=0.0)
    with pytest.raises(ValueError, match="v0 has dtype"):
        lif_feed_forward_sequence(x, v0.double(), i0, **kw)
    with pytest.raises(ValueError, match=r"i0 has shape \(4, 3\)"):
        lif_feed_forward_sequence(x, v0, torch.zeros(4, 3), **kw)
    with pytest.raises(ValueError, match=r"\[T, \.\.\., N\]"):
        lif_feed_forward_sequence(torch.rand(4), v0, i0, **kw)
    with pytest.raises(ValueError, match="at least one time step"):
        lif_feed_forward_sequence(torch.rand(0, 2, 3), v0, i0, **kw)
    with pytest.raises(ValueError, match="floating point"):
        lif_feed_forward_sequence(torch.ones(4, 2, 3, dtype=torch.int64), v0, i0, **kw)
    with pytest.raises(TypeError, match="v0 must be a torch.Tensor"):
        lif_feed_forward_sequence(x, 0.0, i0, **kw)
    with pytest.raises(ValueError, match="dt must be a positive"):
        lif_feed_forward_sequence(x, v0, i0, **kw, dt=-1e-3)
    with pytest.raises(ValueError, match="reset must be one of"):
        lif_box_sequence(x, v0, tau_mem_inv=100.0, v_leak=0.0, v_th=1.0, v_reset=0.0, reset="zero")
    with pytest.raises(ValueError, match="backend must be one of"):
        lif_feed_forward_sequence(x, v0, i0, **kw, backend="cuda")
    with pytest.raises(ValueError, match="v_th must be finite"):
        lif_feed_forward_sequence(x, v0, i0, **{**kw, "v_th": float("nan")})
    with pytest.raises(ValueError, match="unknown surrogate"):
        lif_feed_forward_sequence(x, v0, i0, **{**kw, "surrogate": "tanh"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only rule")
def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.rand(3, 2, 4)
    with pytest.raises(kb.TritonUnavailableError, match="TRITON_INTERPRET=1"):
        lif_box_sequence(x, torch.zeros(2, 4), tau_mem_inv=100.0, v_leak=0.0, v_th=1.0, v_reset=0.0,
                         backend="triton")


# ----------------------------------------------------------------------------------------------
# Drop-in modules vs Norse
# ----------------------------------------------------------------------------------------------


T, B, N = 20, 3, 6


def assert_state_close(a, b):
    """float32 [T, B, N] states of two evaluation orders: within T steps' rounding of their scale."""
    assert type(a) is type(b)
    for f in a._fields:
        x, y = getattr(a, f).detach(), getattr(b, f).detach()
        assert_close_rel(y, x, state_rtol(x.dtype, (T, B, N)), f)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("record_states", [False, True])
@pytest.mark.parametrize("method", ["super", "triangle"])
def test_lif_module_matches_norse(backend, record_states, method):
    tau = torch.tensor(90.0, requires_grad=True)  # learnable, as Norse allows
    v_th = torch.linspace(0.6, 1.1, N).requires_grad_()
    p = nt.LIFParameters(tau_mem_inv=tau, tau_syn_inv=torch.as_tensor(250.0), v_th=v_th,
                         v_reset=torch.as_tensor(-0.1), method=method, alpha=torch.as_tensor(0.6))
    ref = nt.LIF(p, record_states=record_states)
    ours = sn.LIF(p, record_states=record_states, backend=backend)
    x = (4.0 * torch.rand(T, B, N, generator=gen(100))).requires_grad_()
    za, sa = ref(x)
    zb, sb = ours(x)
    check_spiking(za)
    assert torch.equal(za.detach(), zb.detach())
    assert_state_close(sa, sb)
    if record_states:
        assert sb.v.shape == (T, B, N)
    g = gen(101)
    c = [torch.randn(sa.v.shape, generator=g) for _ in range(2)]
    cz = torch.randn(T, B, N, generator=g)
    w = (x, tau, v_th)
    ga = torch.autograd.grad((za * cz).sum() + (sa.v * c[0]).sum() + (sa.i * c[1]).sum(), w)
    gb = torch.autograd.grad((zb * cz).sum() + (sb.v * c[0]).sum() + (sb.i * c[1]).sum(), w)
    assert ga[1].abs() > 0
    for a, b in zip(gb, ga):
        assert_close_rel(a, b, grad_rtol(F32, (T, B, N)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reset_method", [reset_value, reset_subtract])
def test_lif_box_module_matches_norse_cell_loop(backend, reset_method):
    tau = torch.tensor(80.0, requires_grad=True)
    p = nt.LIFBoxParameters(tau_mem_inv=tau, v_leak=torch.as_tensor(0.1), v_th=torch.as_tensor(0.9),
                            v_reset=torch.as_tensor(-0.1), reset_method=reset_method)
    cell = nt.LIFBoxCell(p)
    x = (25.0 * torch.rand(T, B, N, generator=gen(110))).requires_grad_()
    state, zs, vs = None, [], []
    for t in range(T):
        z, state = cell(x[t], state)
        zs.append(z), vs.append(state.v)
    za, va = torch.stack(zs), torch.stack(vs)
    zb, sb = sn.LIFBox(p, record_states=True, backend=backend)(x)
    check_spiking(za)
    assert torch.equal(za.detach(), zb.detach())
    assert_close_rel(sb.v, va, state_rtol(F32, (T, B, N)), "v")
    g = gen(111)
    cz, cv = torch.randn(T, B, N, generator=g), torch.randn(T, B, N, generator=g)
    ga = torch.autograd.grad((za * cz).sum() + (va * cv).sum(), (x, tau))
    gb = torch.autograd.grad((zb * cz).sum() + (sb.v * cv).sum(), (x, tau))
    assert ga[1].abs() > 0
    for a, b in zip(gb, ga):
        assert_close_rel(a, b, grad_rtol(F32, (T, B, N)))


def test_modules_use_the_fused_op(monkeypatch):
    calls = []
    for name in ("lif_feed_forward_sequence", "lif_box_sequence"):
        fn = getattr(nl, name)
        monkeypatch.setattr(nl, name, lambda *a, _fn=fn, _n=name, **k: calls.append((_n, k["backend"])) or _fn(*a, **k))
    x = torch.rand(5, 2, 3)
    sn.LIF(backend="torch")(x)
    sn.LIFBox()(x)
    assert calls == [("lif_feed_forward_sequence", "torch"), ("lif_box_sequence", "auto")]
    # Parameters that broadcast over the batch too cannot be fused: the loop runs instead.
    sn.LIF(nt.LIFParameters(v_th=torch.full((2, 3), 0.5)))(x)
    assert len(calls) == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_unfusable_configurations_fall_back_or_raise(backend):
    """[B, N] parameters and custom reset callables: the loop for auto/torch (Norse's numbers), a clear
    error for triton."""
    x = (3.0 * torch.rand(T, B, N, generator=gen(120))).requires_grad_()
    p = nt.LIFParameters(v_th=0.5 + torch.rand(B, N, generator=gen(121)))
    box = nt.LIFBoxParameters(reset_method=lambda z, v, reset, th: (1 - z) * v + z * (0.5 * v))
    if backend == "triton":
        with pytest.raises(NotImplementedError, match=r"p.v_th has shape \(3, 6\).*backend='auto' or 'torch'"):
            sn.LIF(p, backend=backend)(x)
        with pytest.raises(NotImplementedError, match="reset_method"):
            sn.LIFBox(box, backend=backend)(x)
        return
    za, sa = nt.LIF(p)(x)
    zb, sb = sn.LIF(p, backend=backend)(x)
    check_spiking(za)
    assert torch.equal(za, zb)
    assert_state_close(sa, sb)
    ga = torch.autograd.grad(sa.v.sum() + za.sum(), x)[0]
    gb = torch.autograd.grad(sb.v.sum() + zb.sum(), x)[0]
    assert_close_rel(gb, ga, grad_rtol(F32, (T, B, N)))
    cell, state, zs = nt.LIFBoxCell(box), None, []
    for t in range(T):
        z, state = cell(25.0 * x[t], state)
        zs.append(z)
    zb, sb = sn.LIFBox(box, backend=backend)(25.0 * x)
    assert torch.equal(torch.stack(zs), zb)
    assert_state_close(state, sb)


def test_lif_module_under_forward_mode_ad_uses_the_loop():
    """torch.func.jvp through the module works (the fused op has no jvp rule, so the loop runs) and gives
    the surrogate tangent of the step loop."""
    p = nt.LIFParameters(tau_mem_inv=torch.as_tensor(100.0))
    lif = sn.LIF(p, backend="torch")
    x = 3.0 * torch.rand(6, 2, 4, generator=gen(130), dtype=F64)
    dx = torch.randn(6, 2, 4, generator=gen(131), dtype=F64)
    state = nt.LIFFeedForwardState(v=torch.zeros(2, 4, dtype=F64), i=torch.zeros(2, 4, dtype=F64))

    def loop(x):
        s, zs = state, []
        for t in range(x.shape[0]):
            z, s = sn.lif_feed_forward_step(x[t], s, p)
            zs.append(z)
        return torch.stack(zs), s

    (z, s), (dz, ds) = torch.func.jvp(lambda x: lif(x, state), (x,), (dx,))
    (z_r, s_r), (dz_r, ds_r) = torch.func.jvp(loop, (x,), (dx,))
    check_spiking(z_r)
    assert torch.equal(z, z_r)
    torch.testing.assert_close(dz, dz_r, rtol=0, atol=0)
    torch.testing.assert_close(ds.v, ds_r.v, rtol=0, atol=0)
    assert ds.v.abs().max() > 0


def test_backend_argument_of_the_fused_modules():
    for make in (sn.LIF, sn.LIFBox):
        assert make(backend="triton").backend == "triton"
        assert "backend='triton'" in repr(make(backend="triton"))
        with pytest.raises(ValueError, match="backend must be one of"):
            make(backend="cuda")
    # The recurrent layer runs on the recurrent kernel (tests/test_norse_dropin.py) and accepts "triton" too.
    assert sn.LIFRecurrent(2, 3, backend="triton").backend == "triton"


# ----------------------------------------------------------------------------------------------
# CUDA only: low precision and inductor
# ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_on_cuda(dtype):
    x, v0, i0, p = lif_case((30, 8, 70), "per_neuron", F32, 140)
    p = {k: t.detach().cuda() for k, t in p.items()}
    x, v0, i0 = x.detach().cuda(), v0.detach().cuda(), i0.detach().cuda()
    s = sg.Surrogate("atan")
    lo = (x.to(dtype), v0.to(dtype), i0.to(dtype))
    z, v, i = run_lif(*lo, {k: t for k, t in p.items()}, 1e-3, s, "triton")
    assert z.dtype == v.dtype == dtype
    # States accumulate in float32; only the rounding of the stored inputs differs from the float32 run.
    ref = run_lif(*(t.float() for t in lo), p, 1e-3, s, "torch")
    agree = float((z.float() == ref[0]).float().mean())
    assert agree > 0.99
    zb, vb = run_box(x.to(dtype) * 3, v0.to(dtype), {k: p[k] for k in BOX_NAMES}, 1e-3, "subtract", s, "triton")
    refb = run_box((x.to(dtype) * 3).float(), v0.to(dtype).float(), {k: p[k] for k in BOX_NAMES}, 1e-3,
                   "subtract", s, "torch")
    assert float((zb.float() == refb[0]).float().mean()) > 0.99


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_inductor_on_cuda():
    torch._dynamo.reset()
    x, v0, i0, p = lif_case((12, 4, 50), "per_neuron", F32, 150)
    x, v0, i0 = (t.detach().cuda().requires_grad_() for t in (x, v0, i0))
    p = {k: t.detach().cuda().requires_grad_() for k, t in p.items()}

    def fn(x, v0, i0, *vals):
        z, v, i = lif_feed_forward_sequence(x, v0, i0, **dict(zip(LIF_NAMES, vals)), dt=1e-3,
                                            surrogate=sg.Surrogate("atan"), backend="triton")
        return (z * 2).sum() + v.square().sum() + i.sum()

    args = (x, v0, i0, *(p[k] for k in LIF_NAMES))
    eager = fn(*args)
    g_eager = torch.autograd.grad(eager, args)
    out = torch.compile(fn, fullgraph=True)(*args)
    # float32 compiled: the sequence's rounding plus the loss's sums of 3 x numel terms of either sign
    torch.testing.assert_close(out, eager, rtol=state_rtol(F32, x.shape) + rounding_rtol(F32, 3 * x.numel()), atol=0)
    for a, b in zip(torch.autograd.grad(out, args), g_eager):
        assert_close_rel(a, b, grad_rtol(F32, x.shape))
