"""surroflos.norse: drop-in agreement with Norse 1.1's LIF cells and layers (spikes identical; voltages,
currents and gradients w.r.t. inputs, weights and parameters within the rounding bound of tests/_tolerance.py,
which is ~1e-12 relative in float64), isinstance and
parameter-type compatibility, the flat recurrent step and its analytic surrogate tangent map (vs
``torch.func.jvp`` in float64), and input validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from surroflos import norse as sn  # imports Norse quietly (it uses the deprecated torch.jit.script)

import norse.torch as nt  # noqa: E402
from norse.torch.functional.lif import lif_step as norse_lif_step  # noqa: E402
from norse.torch.functional.reset import reset_subtract  # noqa: E402
from norse.torch.module.snn import SNN, SNNCell, SNNRecurrent, SNNRecurrentCell  # noqa: E402
from surroflos.models import jvp_tangent  # noqa: E402

from _tolerance import assert_within_rounding, recurrence_ops, scale_of  # noqa: E402

pytestmark = pytest.mark.numerics

F32, F64 = torch.float32, torch.float64
N_IN, N = 3, 6
T, B = 25, 4
# Rounded operations of T steps (tolerance policy: tests/_tolerance.py): the input and recurrent dot products
# (N_IN + N terms) and <= 8 elementwise ones (Euler updates of v and i, reset, threshold); a gradient runs them
# again backwards and sums a weight's over time and batch.
STEP_OPS = N_IN + N + 8
STATE_OPS = recurrence_ops(T, STEP_OPS)
GRAD_OPS = recurrence_ops(T, STEP_OPS, backward=True, reduce=T * B)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def lif_params(name: str):
    """(LIFParameters, dt, input scale that makes a fair share of neurons spike)."""
    if name == "default":
        return nt.LIFParameters(), 1e-3, 1.0
    if name == "triangle":
        return nt.LIFParameters(tau_syn_inv=torch.as_tensor(150.0), tau_mem_inv=torch.as_tensor(80.0),
                                v_leak=torch.as_tensor(0.1), v_th=torch.as_tensor(0.8),
                                v_reset=torch.as_tensor(-0.2), method="triangle",
                                alpha=torch.as_tensor(0.7)), 1e-3, 1.0
    if name == "per_neuron":
        return nt.LIFParameters(tau_syn_inv=torch.as_tensor(300.0), tau_mem_inv=torch.linspace(60.0, 160.0, N),
                                v_leak=torch.as_tensor(0.05), v_th=torch.linspace(0.7, 1.2, N),
                                v_reset=torch.as_tensor(0.1)), 5e-4, 3.0
    if name == "heaviside":
        return nt.LIFParameters(v_th=torch.as_tensor(0.9), method="heaviside"), 1e-3, 1.0
    raise AssertionError(name)


LIF_SETS = ["default", "triangle", "per_neuron"]


def box_params(name: str):
    if name == "default":
        return nt.LIFBoxParameters(), 1e-3, 20.0
    if name == "subtract_triangle":
        return nt.LIFBoxParameters(tau_mem_inv=torch.as_tensor(70.0), v_leak=torch.as_tensor(0.2),
                                   v_th=torch.as_tensor(0.9), v_reset=torch.as_tensor(-0.1), method="triangle",
                                   alpha=torch.as_tensor(0.5), reset_method=reset_subtract), 1e-3, 20.0
    if name == "per_neuron_dt":
        return nt.LIFBoxParameters(tau_mem_inv=torch.linspace(50.0, 150.0, N), v_th=torch.linspace(0.6, 1.1, N)), \
            2e-3, 10.0
    raise AssertionError(name)


BOX_SETS = ["default", "subtract_triangle", "per_neuron_dt"]


def drive(scale: float, seed: int, dtype=F32, t: int = T) -> torch.Tensor:
    return (torch.rand(t, B, N_IN, generator=gen(seed), dtype=dtype) * scale).requires_grad_(True)


def linear_pair(seed: int, dtype=F32):
    torch.manual_seed(seed)
    a = nn.Linear(N_IN, N, dtype=dtype)
    b = nn.Linear(N_IN, N, dtype=dtype)
    b.load_state_dict(a.state_dict())
    return a, b


def coefficients(seed: int, shape, dtype=F32) -> list[torch.Tensor]:
    g = gen(seed)
    return [torch.randn(*shape, generator=g, dtype=dtype) for _ in range(3)]


def check_spiking(z: torch.Tensor) -> None:
    """The comparison is only meaningful if some, but not all, neurons spiked."""
    frac = float(z.detach().mean())
    assert 0.0 < frac < 1.0, f"spike fraction {frac}: adjust the drive of the test"


def assert_states_close(a, b) -> None:
    """Spikes identical; v and i within the rounding bound of T steps (STATE_OPS): in float32 the fused
    recurrent layer (and BLAS, by CPU) adds and scales in another order than Norse's loop."""
    assert type(a) is type(b)
    for f in a._fields:
        x, y = getattr(a, f), getattr(b, f)
        if f == "z":
            assert torch.equal(x.detach(), y.detach())
        else:
            assert_within_rounding(y, x, STATE_OPS, what=f, magnitude=scale_of(x, y))


def assert_grads_close(ga, gb) -> None:
    """Gradients within the rounding bound of the backward pass (GRAD_OPS) on the largest gradient's scale (a
    weight's gradient sums terms of the input's)."""
    mag = scale_of(*[g for g in ga if g is not None])
    for a, b in zip(ga, gb):
        assert a is not None and b is not None
        assert_within_rounding(b, a, GRAD_OPS, what="grad", magnitude=mag)


def unroll(cell, xs: torch.Tensor, state=None):
    """Step a cell over time; returns spikes [T, ...] and the list of states."""
    zs, states = [], []
    for t in range(xs.shape[0]):
        z, state = cell(xs[t], state)
        zs.append(z)
        states.append(state)
    return torch.stack(zs), states


def loss_of(zs, states, coef) -> torch.Tensor:
    """A loss that reads spikes and every state variable at every step."""
    total = (zs * coef[0]).sum()
    for s in states:
        for f, c in zip(("v", "i"), coef[1:]):
            if hasattr(s, f):
                total = total + (getattr(s, f) * c).sum() / len(states)
    return total


# ----------------------------------------------------------------------------------------------
# Cells
# ----------------------------------------------------------------------------------------------


def _compare_cells(ref, ours, scale, seed):
    """Unroll Norse's cell and ours on the same drive; spikes identical, states and gradients close."""
    lin_a, lin_b = linear_pair(seed)
    x = drive(scale, seed + 1)
    za, sa = unroll(ref, lin_a(x))
    zb, sb = unroll(ours, lin_b(x))
    check_spiking(za)
    assert torch.equal(za.detach(), zb.detach())
    for a, b in zip(sa, sb):
        assert_states_close(a, b)
    coef = coefficients(seed + 2, (B, N))
    ga = torch.autograd.grad(loss_of(za, sa, coef), (x, lin_a.weight, lin_a.bias))
    gb = torch.autograd.grad(loss_of(zb, sb, coef), (x, lin_b.weight, lin_b.bias))
    assert_grads_close(ga, gb)


@pytest.mark.parametrize("name", LIF_SETS)
def test_lif_cell_matches_norse(name):
    p, dt, scale = lif_params(name)
    _compare_cells(nt.LIFCell(p, dt=dt), sn.LIFCell(p, dt=dt), scale, 1)


@pytest.mark.parametrize("name", BOX_SETS)
def test_lif_box_cell_matches_norse(name):
    p, dt, scale = box_params(name)
    _compare_cells(nt.LIFBoxCell(p, dt=dt), sn.LIFBoxCell(p, dt=dt), scale, 4)


def recurrent_pair(cls_ref, cls_ours, p, dt, seed, autapses=False, dtype=F32, **kw):
    torch.manual_seed(seed)
    ref = cls_ref(N_IN, N, p, dt=dt, autapses=autapses, **kw)
    ours = cls_ours(N_IN, N, p, dt=dt, autapses=autapses, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref.to(dtype), ours.to(dtype)


@pytest.mark.parametrize("name,autapses", [("default", False), ("triangle", True), ("per_neuron", False),
                                           ("heaviside", False)])
def test_lif_recurrent_cell_matches_norse(name, autapses):
    p, dt, scale = lif_params(name)
    ref, ours = recurrent_pair(nt.LIFRecurrentCell, sn.LIFRecurrentCell, p, dt, 7, autapses)
    x = drive(2.0 * scale, 8)
    za, sa = unroll(ref, x)
    zb, sb = unroll(ours, x)
    check_spiking(za)
    assert torch.equal(za.detach(), zb.detach())
    for a, b in zip(sa, sb):
        assert_states_close(a, b)
    coef = coefficients(9, (B, N))
    ga = torch.autograd.grad(loss_of(za, sa, coef), (x, ref.input_weights, ref.recurrent_weights))
    gb = torch.autograd.grad(loss_of(zb, sb, coef), (x, ours.input_weights, ours.recurrent_weights))
    assert_grads_close(ga, gb)
    if name != "heaviside":  # (no gradient passes a heaviside spike)
        assert ga[2].abs().sum() > 0  # the recurrent weights do get a gradient


def test_recurrent_autapse_hook_is_inherited():
    p, dt, scale = lif_params("default")
    ref, ours = recurrent_pair(nt.LIFRecurrentCell, sn.LIFRecurrentCell, p, dt, 10, autapses=False)
    assert torch.equal(torch.diagonal(ours.recurrent_weights.detach()), torch.zeros(N))
    z, _ = unroll(ours, drive(2.0, 11))
    (z.sum() + 0.0).backward()
    assert torch.equal(torch.diagonal(ours.recurrent_weights.grad), torch.zeros(N))


def test_cells_continue_from_each_others_states():
    """A state produced by Norse continues correctly in ours and vice versa."""
    p, dt, scale = lif_params("triangle")
    ref, ours = recurrent_pair(nt.LIFRecurrentCell, sn.LIFRecurrentCell, p, dt, 12)
    x = drive(2.0, 13).detach()
    _, s_ref = unroll(ref, x[:10])
    _, s_ours = unroll(ours, x[:10])
    za, sa = unroll(ref, x[10:], s_ours[-1])
    zb, sb = unroll(ours, x[10:], s_ref[-1])
    check_spiking(za)
    assert torch.equal(za, zb)
    assert_states_close(sa[-1], sb[-1])


# ----------------------------------------------------------------------------------------------
# Sequence modules
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,dtype", [("default", F32), ("triangle", F32), ("per_neuron", F32), ("default", F64)])
def test_lif_sequence_matches_norse(name, dtype):
    p, dt, scale = lif_params(name)
    ref, ours = nt.LIF(p, dt=dt), sn.LIF(p, dt=dt)
    lin_a, lin_b = linear_pair(14, dtype)
    x = drive(scale, 15, dtype)
    za, sa = ref(lin_a(x))
    zb, sb = ours(lin_b(x))
    check_spiking(za)
    assert zb.dtype == dtype and za.shape == zb.shape == (T, B, N)
    assert torch.equal(za.detach(), zb.detach())
    assert_states_close(sa, sb)
    coef = coefficients(16, (T, B, N), dtype)
    ga = torch.autograd.grad((za * coef[0]).sum() + (sa.v * coef[1][0]).sum(), (x, lin_a.weight))
    gb = torch.autograd.grad((zb * coef[0]).sum() + (sb.v * coef[1][0]).sum(), (x, lin_b.weight))
    assert_grads_close(ga, gb)


def test_lif_sequence_trainable_parameter_and_record_states():
    tau = torch.tensor(90.0, requires_grad=True)
    p = nt.LIFParameters(tau_mem_inv=tau, v_th=torch.as_tensor(0.9))
    ref, ours = nt.LIF(p, record_states=True), sn.LIF(p, record_states=True)
    x = drive(5.0, 17)[..., :1].expand(T, B, N).contiguous()
    za, sa = ref(x)
    zb, sb = ours(x)
    check_spiking(za)
    assert torch.equal(za.detach(), zb.detach())
    assert sb.v.shape == (T, B, N)
    assert_states_close(sa, sb)
    coef = coefficients(18, (T, B, N))
    ga = torch.autograd.grad((za * coef[0]).sum() + (sa.v * coef[1]).sum(), (x, tau))
    gb = torch.autograd.grad((zb * coef[0]).sum() + (sb.v * coef[1]).sum(), (x, tau))
    assert ga[1].abs() > 0
    assert_grads_close(ga, gb)


@pytest.mark.parametrize("name", BOX_SETS)
def test_lif_box_sequence_matches_norse_cell_loop(name):
    """Norse has no LIFBox layer: the reference is Norse's LIFBoxCell stepped over time."""
    p, dt, scale = box_params(name)
    ref, ours = nt.LIFBoxCell(p, dt=dt), sn.LIFBox(p, dt=dt)
    lin_a, lin_b = linear_pair(19)
    x = drive(scale, 20)
    za, sa = unroll(ref, lin_a(x))
    zb, sb = ours(lin_b(x))
    check_spiking(za)
    assert torch.equal(za.detach(), zb.detach())
    assert_states_close(sa[-1], sb)
    coef = coefficients(21, (T, B, N))
    ga = torch.autograd.grad((za * coef[0]).sum() + (sa[-1].v * coef[1][0]).sum(), (x, lin_a.weight))
    gb = torch.autograd.grad((zb * coef[0]).sum() + (sb.v * coef[1][0]).sum(), (x, lin_b.weight))
    assert_grads_close(ga, gb)
    _, rec = sn.LIFBox(p, dt=dt, record_states=True)(lin_b(x))
    assert_within_rounding(rec.v, torch.stack([s.v for s in sa]), STATE_OPS, "v")


@pytest.mark.parametrize("name,autapses,dtype", [("default", False, F32), ("triangle", True, F32),
                                                 ("per_neuron", False, F32), ("default", False, F64)])
def test_lif_recurrent_sequence_matches_norse(name, autapses, dtype):
    p, dt, scale = lif_params(name)
    ref, ours = recurrent_pair(nt.LIFRecurrent, sn.LIFRecurrent, p, dt, 22, autapses, dtype)
    x = drive(2.0 * scale, 23, dtype)
    za, sa = ref(x)
    zb, sb = ours(x)
    check_spiking(za)
    assert zb.dtype == dtype and zb.shape == (T, B, N)
    assert torch.equal(za.detach(), zb.detach())
    assert_states_close(sa, sb)
    coef = coefficients(24, (T, B, N), dtype)
    ga = torch.autograd.grad((za * coef[0]).sum() + (sa.v * coef[1][0]).sum(),
                             (x, ref.input_weights, ref.recurrent_weights))
    gb = torch.autograd.grad((zb * coef[0]).sum() + (sb.v * coef[1][0]).sum(),
                             (x, ours.input_weights, ours.recurrent_weights))
    assert_grads_close(ga, gb)


def test_lif_recurrent_record_states_and_given_state():
    p, dt, _ = lif_params("default")
    ref, ours = recurrent_pair(nt.LIFRecurrent, sn.LIFRecurrent, p, dt, 25, record_states=True)
    x = drive(2.0, 26).detach()
    g = gen(27)
    s0 = nt.LIFState(z=(torch.rand(B, N, generator=g) > 0.7).float(), v=torch.rand(B, N, generator=g),
                     i=torch.randn(B, N, generator=g))
    za, sa = ref(x, s0)
    zb, sb = ours(x, s0)
    check_spiking(za)
    assert torch.equal(za, zb)
    assert sb.v.shape == (T, B, N)
    assert_states_close(sa, sb)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sequences_match_norse_on_cuda():
    p, dt, scale = lif_params("per_neuron")
    p = p._replace(tau_mem_inv=p.tau_mem_inv.cuda(), v_th=p.v_th.cuda())  # 0-dim fields stay on the CPU
    ref, ours = recurrent_pair(nt.LIFRecurrent, sn.LIFRecurrent, p, dt, 32)
    ref, ours = ref.cuda(), ours.cuda()
    x = drive(2.0 * scale, 33).detach().cuda()
    za, sa = ref(x)
    zb, sb = ours(x)
    check_spiking(za)
    assert zb.is_cuda and torch.equal(za, zb)
    assert_states_close(sa, sb)
    za, sa = nt.LIF(p, dt=dt)(x[..., :1].expand(T, B, N))
    zb, sb = sn.LIF(p, dt=dt)(x[..., :1].expand(T, B, N))
    assert torch.equal(za, zb)
    assert_states_close(sa, sb)


# ----------------------------------------------------------------------------------------------
# Pure step functions, flat state, tangent map
# ----------------------------------------------------------------------------------------------


def test_step_functions_match_norse_functional():
    p, dt, _ = lif_params("triangle")
    g = gen(28)
    x = torch.rand(B, N_IN, generator=g) * 3
    W_in, W_rec = torch.randn(N, N_IN, generator=g), torch.randn(N, N, generator=g)
    s = nt.LIFState(z=(torch.rand(B, N, generator=g) > 0.5).float(), v=torch.rand(B, N, generator=g) * 1.2,
                    i=torch.randn(B, N, generator=g))
    za, sa = norse_lif_step(x, s, W_in, W_rec, p, dt)
    zb, sb = sn.lif_recurrent_step(x, s, W_in, W_rec, p, dt)
    check_spiking(za)
    assert torch.equal(za, zb)
    assert_states_close(sa, sb)
    zc, flat = sn.lif_recurrent_flat_step(x, sn.lif_state_to_flat(s), sn.LIFRecurrentFlatParams(W_in, W_rec, p, dt))
    assert flat.shape == (B, 3 * N)
    assert torch.equal(zc, za)
    assert_states_close(sn.lif_state_from_flat(flat), sa)


def tangent_setup(method: str, per_neuron: bool, seed: int):
    g = gen(seed)
    kw = dict(tau_syn_inv=torch.as_tensor(180.0, dtype=F64), v_leak=torch.as_tensor(0.1, dtype=F64),
              v_reset=torch.as_tensor(-0.1, dtype=F64), method=method, alpha=torch.as_tensor(0.6, dtype=F64))
    if per_neuron:
        kw.update(tau_mem_inv=torch.linspace(60.0, 140.0, N, dtype=F64), v_th=torch.linspace(0.8, 1.2, N, dtype=F64))
    else:
        kw.update(tau_mem_inv=torch.as_tensor(100.0, dtype=F64), v_th=torch.as_tensor(1.0, dtype=F64))
    p = nt.LIFParameters(**kw)
    params = sn.LIFRecurrentFlatParams(torch.randn(N, N_IN, generator=g, dtype=F64),
                                       torch.randn(N, N, generator=g, dtype=F64), p, 1e-3)
    x = torch.rand(B, N_IN, generator=g, dtype=F64)
    state = torch.cat([(torch.rand(B, N, generator=g, dtype=F64) > 0.6).to(F64),
                       -1.0 + 3.0 * torch.rand(B, N, generator=g, dtype=F64),  # around v_th and far from it
                       torch.randn(B, N, generator=g, dtype=F64)], dim=-1)
    Q = torch.randn(B, 3 * N, 5, generator=g, dtype=F64)
    return x, state, params, Q


@pytest.mark.parametrize("method,per_neuron", [("super", False), ("super", True), ("triangle", True),
                                               ("heaviside", False)])
def test_flat_tangent_matches_jvp(method, per_neuron):
    x, state, params, Q = tangent_setup(method, per_neuron, 29)
    ours = sn.lif_recurrent_flat_tangent(x, state, params, Q)
    ref = jvp_tangent(sn.lif_recurrent_flat_step, x, state, params, Q)
    assert ours.shape == Q.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    dz = ours[:, :N]
    if method == "heaviside":
        assert torch.equal(dz, torch.zeros_like(dz))
    else:
        assert dz.abs().max() > 1e-3  # the surrogate rows are exercised
        if method == "triangle":
            assert (dz.abs().amax(-1) == 0).any()  # and the triangle's zero region too


def test_flat_tangent_via_module():
    torch.manual_seed(30)
    p, dt, _ = lif_params("default")
    cell = sn.LIFRecurrentCell(N_IN, N, p, dt=dt).double()
    x, state, _, Q = tangent_setup("super", False, 31)
    assert cell.state_dim == 3 * N
    prm = cell.flat_params()
    z, flat = cell.step_function(x, state, prm)
    z2, s2 = cell(x, sn.lif_state_from_flat(state))
    assert torch.equal(z, z2)
    torch.testing.assert_close(flat, sn.lif_state_to_flat(s2), rtol=0, atol=0)
    torch.testing.assert_close(cell.tangent_function(x, state, prm, Q),
                               jvp_tangent(cell.step_function, x, state, prm, Q), rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# Types and compatibility
# ----------------------------------------------------------------------------------------------


def test_isinstance_and_parameter_types():
    cases = [(sn.LIFCell(), nt.LIFCell, SNNCell), (sn.LIFBoxCell(), nt.LIFBoxCell, SNNCell),
             (sn.LIFRecurrentCell(2, 3), nt.LIFRecurrentCell, SNNRecurrentCell), (sn.LIF(), nt.LIF, SNN),
             (sn.LIFBox(), SNN, SNN), (sn.LIFRecurrent(2, 3), nt.LIFRecurrent, SNNRecurrent)]
    for module, cls, base in cases:
        assert isinstance(module, cls) and isinstance(module, base) and isinstance(module, nn.Module)
    assert isinstance(sn.LIFCell().p, nt.LIFParameters)
    assert isinstance(sn.LIFBox().p, nt.LIFBoxParameters)
    assert sn.LIFParameters is nt.LIFParameters and sn.LIFState is nt.LIFState
    x = torch.rand(T, B, 2)
    assert type(sn.LIF()(x)[1]) is nt.LIFFeedForwardState
    assert type(sn.LIFBox()(x)[1]) is nt.LIFBoxFeedForwardState
    assert type(sn.LIFRecurrent(2, 3)(x)[1]) is nt.LIFState
    assert type(sn.LIFCell()(x[0])[1]) is nt.LIFFeedForwardState
    assert type(sn.LIFBoxCell()(x[0])[1]) is nt.LIFBoxFeedForwardState
    assert type(sn.LIFRecurrentCell(2, 3)(x[0])[1]) is nt.LIFState


def test_constructor_arguments_as_in_norse():
    w_in, w_rec = torch.ones(3, 2), torch.full((3, 3), 0.5)
    cell = sn.LIFRecurrentCell(2, 3, nt.LIFParameters(v_th=torch.as_tensor(0.5)), input_weights=w_in,
                               recurrent_weights=w_rec, autapses=True, dt=2e-3)
    assert cell.dt == 2e-3 and cell.autapses and float(cell.p.v_th) == 0.5
    assert torch.equal(cell.input_weights, w_in) and torch.equal(cell.recurrent_weights, w_rec)
    layer = sn.LIF(nt.LIFParameters(), dt=5e-4, record_states=True, backend="torch")
    assert layer.dt == 5e-4 and layer.record_states and layer.backend == "torch"
    assert repr(sn.LIFRecurrent(2, 3)) == repr(nt.LIFRecurrent(2, 3))  # the default backend is not shown
    box = sn.LIFBoxCell(nt.LIFBoxParameters(v_th=0.5, v_leak=0.0), dt=1e-3)  # plain floats are accepted
    assert box.p.v_th == 0.5 and box.p.v_leak == 0.0  # kept as given, as Norse does
    assert box(torch.rand(2, 3))[0].shape == (2, 3)


def test_method_mapping():
    assert sn.norse_surrogate("super", 100.0) == sg_surrogate("superspike")
    assert sn.norse_surrogate("triangle", torch.as_tensor(0.5)) == sg_surrogate("triangle", 0.5)
    assert sn.norse_surrogate("triangle", 0.3) == sg_surrogate("triangle", 0.3)
    assert sn.norse_surrogate("triangle", torch.as_tensor(100.0)) == sg_surrogate("triangle", 100.0)
    assert sn.norse_surrogate("heaviside") is None


def sg_surrogate(name, scale=None):
    from surroflos.surrogate import Surrogate
    return Surrogate(name, scale)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["tanh", "circ", "heavi_erfc", "adjoint"])
def test_unsupported_methods_raise_not_implemented(method):
    for make in (lambda: sn.LIFCell(nt.LIFParameters(method=method)),
                 lambda: sn.LIF(nt.LIFParameters(method=method)),
                 lambda: sn.LIFRecurrent(2, 3, nt.LIFParameters(method=method)),
                 lambda: sn.LIFBox(nt.LIFBoxParameters(method=method))):
        with pytest.raises(NotImplementedError, match=method):
            make()
    with pytest.raises(ValueError, match="unknown spike method"):
        sn.LIFCell(nt.LIFParameters(method="bogus"))


@pytest.mark.parametrize("make", [lambda b: sn.LIF(backend=b), lambda b: sn.LIFBox(backend=b),
                                  lambda b: sn.LIFRecurrent(2, 3, backend=b)])
def test_backend_argument(make):
    assert make("triton").backend == "triton"  # every sequence module has a fused kernel
    with pytest.raises(ValueError, match="backend must be one of"):
        make("cuda")
    assert make("auto").backend == "auto" and make("torch").backend == "torch"


def test_state_batch_mismatch():
    _, s = sn.LIFRecurrentCell(2, 3)(torch.rand(5, 2))
    with pytest.raises(ValueError, match=r"state.z has shape \(5, 3\).*\(4, 3\).*\(4, 2\)"):
        sn.LIFRecurrentCell(2, 3)(torch.rand(4, 2), s)
    _, s = sn.LIF()(torch.rand(T, 5, 3))
    with pytest.raises(ValueError, match=r"state.v has shape \(5, 3\)"):
        sn.LIF()(torch.rand(T, 4, 3), s)
    _, s = sn.LIFBoxCell()(torch.rand(5, 3))
    with pytest.raises(ValueError, match=r"shape \(5, 3\)"):
        sn.LIFBox()(torch.rand(T, 4, 3), s)


def test_dtype_mix():
    _, s = sn.LIFCell()(torch.rand(4, 3))
    assert sn.LIFCell()(torch.rand(4, 3, dtype=F64), s)[1].v.dtype == F64  # promotes, as Norse does
    with pytest.raises(ValueError, match=r"input_weights has dtype torch.float32 but the input has dtype torch.float64"):
        sn.LIFRecurrent(2, 3)(torch.rand(T, 4, 2, dtype=F64))
    p = nt.LIFParameters(v_th=torch.ones(3, dtype=F64))
    assert sn.LIF(p)(torch.rand(T, 4, 3))[1].v.dtype == F64  # promotes, as Norse does


def test_other_input_errors():
    with pytest.raises(ValueError, match="input_size=2"):
        sn.LIFRecurrentCell(2, 3)(torch.rand(4, 5))
    with pytest.raises(ValueError, match=r"\[T, B, \.\.\.\]"):
        sn.LIF()(torch.rand(4))
    with pytest.raises(ValueError, match="at least one time step"):
        sn.LIFRecurrent(2, 3)(torch.rand(0, 4, 2))
    assert sn.LIFCell()(torch.ones(4, 3, dtype=torch.int64))[0].dtype == torch.float32  # as Norse
    with pytest.raises(TypeError, match="LIFState"):
        sn.LIFRecurrentCell(2, 3)(torch.rand(4, 2), nt.LIFFeedForwardState(v=torch.zeros(4, 3), i=torch.zeros(4, 3)))
    with pytest.raises(NotImplementedError, match="to_dense"):
        sn.LIFCell()(torch.rand(4, 3).to_sparse())
    with pytest.raises(ValueError, match=r"p.tau_mem_inv has shape \(4,\)"):
        sn.LIF(nt.LIFParameters(tau_mem_inv=torch.full((4,), 100.0)))(torch.rand(T, 2, 3))


# ----------------------------------------------------------------------------------------------
# LIFRecurrent on the fused recurrent kernel (surroflos.kernels.recurrent, cuba with reset="zero_mem")
# ----------------------------------------------------------------------------------------------

from _kernel_checks import requires_cpu_kernels, requires_triton  # noqa: E402

FUSED_BACKENDS = ["torch", pytest.param("triton", marks=requires_triton),
                  pytest.param("cpu", marks=requires_cpu_kernels)]  # cpu: the op's compiled spike-sparse forward


def fused_lif_params(name: str, dtype=F32):
    """Parameter sets the fused recurrent kernel takes (v_leak = v_reset = 0): (p, dt, input scale)."""
    if name == "default":
        return nt.LIFParameters(), 1e-3, 2.0
    if name == "triangle":
        return nt.LIFParameters(tau_syn_inv=torch.as_tensor(150.0), tau_mem_inv=torch.as_tensor(80.0),
                                v_th=torch.as_tensor(0.8), method="triangle", alpha=torch.as_tensor(0.7)), 1e-3, 2.0
    if name == "per_neuron":
        return nt.LIFParameters(tau_syn_inv=torch.linspace(150.0, 300.0, N, dtype=dtype),
                                tau_mem_inv=torch.linspace(60.0, 160.0, N, dtype=dtype),
                                v_th=torch.linspace(0.7, 1.2, N, dtype=dtype)), 5e-4, 6.0
    raise AssertionError(name)


def _no_loop(monkeypatch):
    """Make the step loop fail, so a test proves that the fused path ran."""
    def boom(*args, **kwargs):
        raise AssertionError("LIFRecurrent ran its step loop instead of the fused kernel")
    monkeypatch.setattr(sn, "_run", boom)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("name,dtype", [("default", F64), ("triangle", F64), ("per_neuron", F64),
                                        ("per_neuron", F32), ("triangle", F32)])
def test_lif_recurrent_fused_matches_norse(name, dtype, backend, monkeypatch):
    # Norse's own LIFRecurrent (step loop) as the oracle; a given state with z0 unrelated to v0 (some
    # v0 above threshold), all states recorded; gradients w.r.t. x, both weights, v0, i0 and z0.
    p, dt, scale = fused_lif_params(name, dtype)
    torch.manual_seed(40)
    ref = nt.LIFRecurrent(N_IN, N, p, dt=dt, record_states=True)
    ours = sn.LIFRecurrent(N_IN, N, p, dt=dt, record_states=True, backend=backend)
    ours.load_state_dict(ref.state_dict())
    ref, ours = ref.to(dtype), ours.to(dtype)
    x = drive(scale, 41, dtype, t=9)
    g = gen(42)
    s0 = [(torch.rand(B, N, generator=g) > 0.6).to(dtype), 1.3 * torch.rand(B, N, generator=g, dtype=dtype),
          torch.randn(B, N, generator=g, dtype=dtype)]
    s0 = [t.requires_grad_(True) for t in s0]
    za, sa = ref(x, nt.LIFState(*s0))
    _no_loop(monkeypatch)
    zb, sb = ours(x, nt.LIFState(*s0))
    check_spiking(za)
    assert zb.dtype == dtype and zb.shape == (9, B, N) and sb.i.shape == (9, B, N)
    assert torch.equal(za.detach(), zb.detach())
    assert_states_close(sa, sb)
    coef = coefficients(43, (9, B, N), dtype)
    wrt_a = (x, ref.input_weights, ref.recurrent_weights, *s0)
    wrt_b = (x, ours.input_weights, ours.recurrent_weights, *s0)

    def loss(z, s):
        return (z * coef[0]).sum() + (s.v * coef[1]).sum() + (s.i * coef[2]).sum()

    ga = torch.autograd.grad(loss(za, sa), wrt_a)
    gb = torch.autograd.grad(loss(zb, sb), wrt_b)
    ops = recurrence_ops(9, STEP_OPS, backward=True, reduce=9 * B)  # the reordered sums differ by rounding
    for a, b_, what in zip(ga, gb, ["x", "W_in", "W_rec", "z0", "v0", "i0"]):
        assert_within_rounding(b_, a, ops, what, magnitude=scale_of(*ga))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_lif_recurrent_fused_default_state_and_final_state(backend, monkeypatch):
    # No state given (Norse's v0 requires grad), T = 1 and T > 1, only the final state returned.
    p, dt, scale = fused_lif_params("default")
    torch.manual_seed(44)
    ref = nt.LIFRecurrent(N_IN, N, p, dt=dt).double()
    ours = sn.LIFRecurrent(N_IN, N, p, dt=dt, backend=backend).double()
    ours.load_state_dict(ref.state_dict())
    for t in (1, 7):
        x = drive(scale, 45 + t, F64, t=t)
        za, sa = ref(x)
        with monkeypatch.context() as m:
            _no_loop(m)
            zb, sb = ours(x)
        assert torch.equal(za.detach(), zb.detach())
        assert_states_close(sa, sb)
        ga = torch.autograd.grad(za.sum() + sa.v.sum(), (x, ref.recurrent_weights))
        gb = torch.autograd.grad(zb.sum() + sb.v.sum(), (x, ours.recurrent_weights))
        for a, b_ in zip(ga, gb):
            torch.testing.assert_close(a, b_, rtol=1e-9, atol=1e-12)


def test_lif_recurrent_fused_parameter_gradients():
    # Trainable tau_mem_inv, tau_syn_inv (per neuron) and v_th reach the kernel's beta/alpha/threshold.
    dtype = F64
    p = nt.LIFParameters(tau_syn_inv=torch.linspace(150.0, 300.0, N, dtype=dtype).requires_grad_(True),
                         tau_mem_inv=torch.linspace(60.0, 160.0, N, dtype=dtype).requires_grad_(True),
                         v_th=torch.tensor(0.8, dtype=dtype, requires_grad=True),
                         v_leak=torch.tensor(0.0, dtype=dtype), v_reset=torch.tensor(0.0, dtype=dtype))
    torch.manual_seed(50)
    ref = nt.LIFRecurrent(N_IN, N, p, dt=5e-4).double()
    ours = sn.LIFRecurrent(N_IN, N, p, dt=5e-4, backend="torch").double()
    ours.load_state_dict(ref.state_dict())
    x = drive(6.0, 51, dtype, t=10)
    za, sa = ref(x)
    zb, sb = ours(x)
    check_spiking(za)
    assert torch.equal(za.detach(), zb.detach())
    wrt = (p.tau_mem_inv, p.tau_syn_inv, p.v_th)
    ga = torch.autograd.grad(za.sum() + sa.i.sum(), wrt)
    gb = torch.autograd.grad(zb.sum() + sb.i.sum(), wrt)
    for a, b_ in zip(ga, gb):
        torch.testing.assert_close(a, b_, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("case", ["v_leak", "v_reset", "heaviside", "forward_ad"])
def test_lif_recurrent_fallbacks(case, monkeypatch):
    # What the kernel cannot express: auto/torch run the loop (and still match Norse), triton raises.
    p, dt, _ = fused_lif_params("default")
    if case in ("v_leak", "v_reset"):
        p = p._replace(**{case: torch.as_tensor(0.1)})
    elif case == "heaviside":
        p = p._replace(method="heaviside")
    torch.manual_seed(60)
    ref = nt.LIFRecurrent(N_IN, N, p, dt=dt).double()
    ours = {b: sn.LIFRecurrent(N_IN, N, p, dt=dt, backend=b).double() for b in ("auto", "torch", "triton")}
    for m in ours.values():
        m.load_state_dict(ref.state_dict())
    x = drive(2.0, 61, F64, t=6).detach()
    called = []
    monkeypatch.setattr(sn, "_recurrent_fused", lambda *a: called.append(1))
    if case == "forward_ad":
        import torch.autograd.forward_ad as fwAD
        with fwAD.dual_level():
            xd = fwAD.make_dual(x, torch.ones_like(x))
            z, _ = ours["torch"](xd)
            assert fwAD.unpack_dual(z).tangent is not None  # (the loop has forward-mode rules)
        assert not called
        return
    za, sa = ref(x)
    for b in ("auto", "torch"):
        zb, sb = ours[b](x)
        assert torch.equal(za.detach(), zb.detach())
        assert_states_close(sa, sb)
    assert not called
    with pytest.raises(NotImplementedError, match=r"backend='triton'.*(v_leak|v_reset|heaviside)"):
        ours["triton"](x)
