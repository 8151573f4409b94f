"""Ensembles in the fused kernels (issue 12): ``spiking_rnn_sequence``, ``dense_tangent`` / ``block_tangent`` and
``fused_tangent_function`` with a member axis (``x_in [T, E, B, N]``, ``W [E, N, N]``, states ``[E, B, D]``,
frames ``[E, B, D, k]``), every backend (the PyTorch path; Triton through its interpreter on CPU) against the
per-member solo reference: ``spiking_rnn_reference`` (the model's step loop) of each member, naive per-(member,
batch) tangent maps, and each member's own model (``surroflos.ensemble.member``).

float64 results are held to ``EXACT_RTOL_F64`` (1e-12 of the tensor's scale), float32 ones to the rounding
bounds of tests/_tolerance.py (docs/TESTING.md).
"""

from __future__ import annotations

import pytest
import torch

import surroflos as sf
from surroflos import surrogate as sg
from surroflos.ensemble import member, stack
from surroflos.kernels import backend as kb
from surroflos.kernels import tangent as kt
from surroflos.kernels.recurrent import spiking_rnn_reference, spiking_rnn_sequence
from surroflos.models.base import RecurrentModel

from _kernel_checks import DEVICE, assert_close_rel, assert_spikes_match, requires_cpu_kernels, requires_triton
from _tolerance import (EXACT_RTOL_F64, assert_within_rounding, recurrence_ops, rounding_rtol, rounding_tol,
                        scale_of, threshold_margin)

F64, F32 = torch.float64, torch.float32
# The interpreter evaluates the sigmoid surrogate's exp(-scale x) in numpy, which warns where it overflows to
# inf (the formula is built for that).
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"), pytest.mark.numerics]
BACKENDS = ["torch", pytest.param("triton", marks=requires_triton), pytest.param("cpu", marks=requires_cpu_kernels)]
SURROGATE_NAMES = list(sg.SURROGATES)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# spiking_rnn_sequence: inputs, parameter layouts and the per-member reference
# ----------------------------------------------------------------------------------------------

# Parameter layouts: a number, shared tensors [] / [N], per member [E, 1] / [E, N] and the member views
# [E, 1, 1] / [E, 1, N] that SpikingRNN(..., ensemble=E).params() passes. bias: None, [N], [E, N], [E, 1, N].
KINDS = [  # (beta, alpha, threshold, bias)
    ("number", "number", "number", None),
    ("0d", "N", "E11", "N"),
    ("E1N", "E11", "N", "E1N"),
    ("EN", "E1", "EN", "EN"),
    ("E1", "0d", "E1N", "E1N"),
]
RANGES = {"beta": (0.6, 0.9), "alpha": (0.5, 0.8), "threshold": (0.9, 1.2)}


def leaf(t: torch.Tensor, dtype) -> torch.Tensor:
    """A float64 draw as a leaf of ``dtype``, always rounded through float32 first: a float64 run then sees exactly
    the numbers of the float32 run it is compared with."""
    return t.to(F32).to(dtype).to(DEVICE).requires_grad_(True)


def make_param(name: str, kind: str | None, E: int, N: int, g: torch.Generator, dtype=F64):
    """A parameter of the given layout, drawn in its range (a leaf that requires grad unless a number)."""
    if kind is None:
        return None
    if name == "bias":
        shape = {"N": (N,), "EN": (E, N), "E1N": (E, 1, N)}[kind]
        return leaf(0.2 * torch.randn(shape, generator=g, dtype=F64), dtype)
    lo, hi = RANGES[name]
    if kind == "number":
        return (lo + hi) / 2
    shape = {"0d": (), "N": (N,), "E1": (E, 1), "EN": (E, N), "E11": (E, 1, 1), "E1N": (E, 1, N)}[kind]
    return leaf(lo + (hi - lo) * torch.rand(shape, generator=g, dtype=F64), dtype)


def for_member(value, e: int):
    """Member ``e``'s parameter in a solo call's layout (number, ``[]`` or ``[N]``)."""
    if not isinstance(value, torch.Tensor) or value.ndim <= 1:
        return value  # shared by all members
    if value.ndim == 2:
        return value[e, 0] if value.shape[1] == 1 else value[e]
    return value[e, 0, 0] if value.shape[2] == 1 else value[e, 0]


def as_member_view(value, E: int):
    """The threshold as something that broadcasts against ``[T, E, B, N]`` membranes (for the spike check)."""
    if not isinstance(value, torch.Tensor):
        return value
    v = value.detach()
    return v.unsqueeze(1) if v.ndim == 2 else v  # [E, 1] -> [E, 1, 1], [E, N] -> [E, 1, N]


def ens_inputs(neuron: str, E: int, T: int, B: int, N: int, seed: int, dtype=F64, silent: int | None = None):
    """``x_in [T, E, B, N]``, ``W [E, N, N]``, ``state0 [E, B, D]`` (leaves); member ``silent`` never spikes."""
    D = 2 * N if neuron == "cuba" else N
    g = gen(seed)
    x_in = 1.2 * torch.rand(T, E, B, N, generator=g, dtype=F64)
    W = 0.8 * torch.randn(E, N, N, generator=g, dtype=F64)
    s0 = 1.5 * torch.rand(E, B, D, generator=g, dtype=F64)
    if silent is not None:  # membranes start below every threshold and the drive is negative at every step
        x_in[:, silent] = -2.0 - torch.rand(T, B, N, generator=g, dtype=F64)
        s0[silent, :, D - N:] *= 0.5
    return [leaf(t, dtype) for t in (x_in, W, s0)]


def per_member_reference(x_in, W, s0, params: dict, bias, **kw):
    """Each member through the solo step loop (``spiking_rnn_reference``: autograd per operation) on slices of
    the same leaves, stacked along the member axis: ``(spikes [T, E, B, N], states [T, E, B, D])``."""
    spikes, states = [], []
    for e in range(x_in.shape[1]):
        xe = x_in[:, e] if bias is None else x_in[:, e] + for_member(bias, e)  # b folded into x_in
        S, U = spiking_rnn_reference(xe, W[e], s0[e], **{k: for_member(v, e) for k, v in params.items()}, **kw)
        spikes.append(S)
        states.append(U)
    return torch.stack(spikes, 1), torch.stack(states, 1)


def run_case(neuron, reset, detach_reset, kind, E, backend, *, T=4, B=2, N=19, seed=0, dtype=F64, silent=None,
             surrogate="atan"):
    """The ensemble op and the per-member reference on the same leaves: outputs and the gradients of a random
    linear loss on spikes and states w.r.t. every leaf (x_in, W, state0 and the parameter tensors)."""
    x_in, W, s0 = ens_inputs(neuron, E, T, B, N, seed, dtype, silent)
    g = gen(seed + 1)
    names = ("beta", "alpha", "threshold", "bias")
    values = dict(zip(names, (make_param(n, k, E, N, g, dtype) for n, k in zip(names, kind))))
    bias = values.pop("bias")
    kw = dict(neuron=neuron, surrogate=surrogate, reset=reset, detach_reset=detach_reset)
    S, U = spiking_rnn_sequence(x_in, W, s0, **values, bias=bias, backend=backend, **kw)
    S_ref, U_ref = per_member_reference(x_in, W, s0, values, bias, **kw)
    cS = torch.randn(S_ref.shape, generator=gen(seed + 2), dtype=F64).to(dtype).to(DEVICE)
    cU = torch.randn(U_ref.shape, generator=gen(seed + 3), dtype=F64).to(dtype).to(DEVICE)
    leaves = {"x_in": x_in, "W": W, "state0": s0}
    leaves.update({n: v for n, v in {**values, "bias": bias}.items()
                   if isinstance(v, torch.Tensor) and (n != "alpha" or neuron == "cuba")})
    grads = torch.autograd.grad((cS * S).sum() + (cU * U).sum(), list(leaves.values()))
    grads_ref = torch.autograd.grad((cS * S_ref).sum() + (cU * U_ref).sum(), list(leaves.values()))
    return dict(S=S, U=U, S_ref=S_ref, U_ref=U_ref, grads=dict(zip(leaves, grads)),
                grads_ref=dict(zip(leaves, grads_ref)), leaves=leaves, theta=as_member_view(values["threshold"], E),
                N=N)


def assert_exact_f64(r):
    """float64: spikes equal away from the threshold, states and every gradient to 1e-12 of their scale."""
    N = r["N"]
    assert_spikes_match(r["S"].detach(), r["S_ref"].detach(), r["U_ref"][..., -N:].detach(), r["theta"])
    assert_close_rel(r["U"].detach(), r["U_ref"].detach(), EXACT_RTOL_F64, "states")
    for name, g_ref in r["grads_ref"].items():
        assert float(g_ref.abs().max()) > 0, f"d/d{name} is zero: the check would be empty"
        assert r["grads"][name].shape == r["leaves"][name].shape, name
        assert_close_rel(r["grads"][name], g_ref, EXACT_RTOL_F64, f"d/d{name}")


RESETS = [("lif", "subtract"), ("lif", "zero"), ("cuba", "subtract"), ("cuba", "zero"), ("cuba", "zero_mem")]
CASES = [(n, r, d) for n, r in RESETS for d in (True, False)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("E", [1, 3])
@pytest.mark.parametrize("case", range(len(CASES)),
                         ids=[f"{n}-{r}-{'detached' if d else 'attached'}" for n, r, d in CASES])
def test_sequence_equals_per_member_reference(case, E, backend):
    # N = 19 (a full and a masked 16-wide block), B = 2; the parameter layouts and the surrogate cycle over the
    # cases, so every layout meets lif and cuba. With E = 3, member 1 never spikes (its spike blocks are all
    # skipped by the Triton forward) while the others do.
    neuron, reset, detach_reset = CASES[case]
    kind = KINDS[case % len(KINDS)]
    silent = 1 if E == 3 else None
    r = run_case(neuron, reset, detach_reset, kind, E, backend, seed=10 * case + E, silent=silent,
                 surrogate=SURROGATE_NAMES[case % len(SURROGATE_NAMES)])
    assert r["S"].shape == r["S_ref"].shape and r["U"].shape == r["U_ref"].shape
    activity = r["S_ref"].detach().sum((0, 2, 3))
    if silent is not None:
        assert activity[silent] == 0 and bool((activity[[0, 2]] > 0).all())
    else:
        assert 0 < float(activity.sum()) < r["S_ref"][:, 0].numel()
    assert_exact_f64(r)


@pytest.mark.parametrize("T,E,B,N", [(1, 2, 1, 5), (2, 2, 17, 33)])
@pytest.mark.parametrize("neuron", ["lif", "cuba"])
def test_sequence_edge_shapes(T, E, B, N, neuron):
    # T = 1, B = 1, N below one block; B = 17 over two 16-row batch blocks and N = 33 over three neuron blocks.
    reset = "zero" if neuron == "lif" else "subtract"
    for backend in ["torch"] + (["triton"] if kb.triton_importable() else []):
        r = run_case(neuron, reset, False, KINDS[2], E, backend, T=T, B=B, N=N, seed=N + T,
                     surrogate="fast_sigmoid")
        assert_exact_f64(r)


@pytest.mark.parametrize("steps,window", [(1, 2), (3, 1), (3, 4)])
@pytest.mark.parametrize("neuron,reset", [("lif", "subtract"), ("cuba", "zero")])
def test_backward_time_chunks(neuron, reset, steps, window, monkeypatch):
    # The PyTorch backward does its full-sequence work per chunk of time steps (cache-sized) and adds dW one
    # window of steps at a time: with chunks of 1 and 3 steps over T = 7 (3 + 3 + 1) and windows of 1, 2 and 4
    # steps, every chunk and window boundary must give the reference's numbers.
    from surroflos.kernels import recurrent

    E, B, N = 3, 2, 19
    monkeypatch.setattr(recurrent, "_CHUNK_ELEMS", steps * E * B * N)
    monkeypatch.setattr(recurrent, "_DW_WINDOW_ELEMS", window * E * B * N)
    r = run_case(neuron, reset, False, KINDS[1], E, "torch", T=7, B=B, N=N, seed=steps, silent=1)
    assert_exact_f64(r)


def _float32_case(neuron, reset, detach_reset, kind, backend, seed):
    """A float32 ensemble against the float32 per-member reference, within the rounding bounds of the recurrence:
    per step the recurrent dot product (N terms) and <= 8 elementwise operations, the backward pass as many again
    plus a parameter's sum over time, batch, neurons and members."""
    T, E, B, N = 5, 3, 2, 19
    r64 = run_case(neuron, reset, detach_reset, kind, E, "torch", T=T, B=B, N=N, seed=seed)
    r = run_case(neuron, reset, detach_reset, kind, E, backend, T=T, B=B, N=N, seed=seed, dtype=F32)
    per_step = N + 8
    ops_fwd = recurrence_ops(T, per_step)
    ops_grad = recurrence_ops(T, per_step, backward=True, reduce=T * E * B * N)
    # The float32 runs spike where the float64 run (on the same, float32-representable, numbers) does: its membranes
    # keep further from the threshold than both float32 runs' rounding error, so the spike trains must be equal.
    mem64 = r64["U_ref"][..., -N:].detach()
    theta = r64["theta"] if r64["theta"] is not None else 1.0
    margin = threshold_margin(mem64, torch.as_tensor(theta, dtype=F64).detach())
    assert margin > 2 * rounding_tol(F32, scale_of(r64["U_ref"]), ops_fwd), "draw too close to the threshold"
    assert torch.equal(r["S"].detach(), r["S_ref"].detach())
    assert_within_rounding(r["U"], r["U_ref"], ops_fwd, "states")
    terms = scale_of(r["grads_ref"]["x_in"]) * max(1.0, scale_of(r["U_ref"]))  # what a parameter's gradient sums
    for name, g_ref in r["grads_ref"].items():
        assert float(g_ref.abs().max()) > 0, name
        assert_within_rounding(r["grads"][name], g_ref, ops_grad, f"d/d{name}", magnitude=max(scale_of(g_ref), terms))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("neuron,reset,detach_reset,kind,seed", [
    ("lif", "zero", False, KINDS[3], 7), ("cuba", "subtract", False, KINDS[4], 3)], ids=["lif-zero", "cuba-subtract"])
def test_float32_within_rounding_of_per_member_reference(neuron, reset, detach_reset, kind, seed, backend):
    _float32_case(neuron, reset, detach_reset, kind, backend, seed)


@pytest.mark.parametrize("backend", BACKENDS)
def test_members_are_independent(backend):
    # NaN in member 1's weights and inputs reaches nothing of members 0 and 2, forward or backward (a product or
    # pointer that strays into another member's slab would carry it over).
    x_in, W, s0 = ens_inputs("cuba", 3, 4, 2, 19, seed=5)
    kw = dict(neuron="cuba", beta=0.85, alpha=0.7, threshold=1.0, reset="zero", detach_reset=False, backend=backend)

    def run(x_in, W, s0):
        x_in, W, s0 = (t.detach().clone().requires_grad_(True) for t in (x_in, W, s0))
        S, U = spiking_rnn_sequence(x_in, W, s0, **kw)
        grads = torch.autograd.grad(U.square().sum() + S.sum(), (x_in, W, s0))
        return (S, U) + grads

    clean = run(x_in, W, s0)
    with torch.no_grad():
        W_nan, x_nan = W.detach().clone(), x_in.detach().clone()
        W_nan[1] = float("nan")
        x_nan[:, 1] = float("nan")
    dirty = run(x_nan, W_nan, s0)
    member_axis = (1, 1, 1, 0, 0)  # S, U, dx_in [T, E, ...]; dW, dstate0 [E, ...]
    for i, (a, b, ax) in enumerate(zip(clean, dirty, member_axis)):
        keep = torch.tensor([0, 2], device=a.device)
        assert torch.equal(a.index_select(ax, keep), b.index_select(ax, keep))
        if i > 0:  # (a NaN membrane does not spike: S has no NaN)
            assert bool(b.index_select(ax, torch.tensor([1], device=a.device)).isnan().any())


@requires_triton
def test_triton_skips_a_silent_members_blocks():
    # Member 1 never spikes, so the Triton forward skips all its spike blocks: NaN in its weights cannot reach
    # its states (the PyTorch path's dense product would give 0 * NaN = NaN).
    x_in, W, s0 = (t.detach() for t in ens_inputs("lif", 3, 4, 2, 19, seed=6, silent=1))
    kw = dict(neuron="lif", beta=0.8, threshold=1.0, backend="triton")
    S, U = spiking_rnn_sequence(x_in, W, s0, **kw)
    assert S[:, 1].sum() == 0 and bool((S.sum((0, 2, 3))[[0, 2]] > 0).all())
    W_nan = W.clone()
    W_nan[1] = float("nan")
    S2, U2 = spiking_rnn_sequence(x_in, W_nan, s0, **kw)
    assert torch.equal(S2, S) and torch.equal(U2, U)


def test_gradcheck_ensemble():
    # float64 gradcheck of the explicit adjoint with a member axis and per-member parameters (membranes kept away
    # from the threshold, a narrow Gaussian surrogate: the surrogate gradient is then the true one).
    surrogate = sg.Surrogate("gaussian", 150.0)
    for seed in range(200):
        x_in, W, s0 = (t.detach() for t in ens_inputs("cuba", 2, 3, 2, 4, seed=seed))
        g = gen(seed + 1000)
        beta = 0.6 + 0.3 * torch.rand(2, 1, 4, generator=g, dtype=F64)
        alpha = 0.5 + 0.3 * torch.rand(2, 1, generator=g, dtype=F64)
        theta = 0.9 + 0.3 * torch.rand(4, generator=g, dtype=F64)
        bias = 0.2 * torch.randn(2, 4, generator=g, dtype=F64)
        _, U = spiking_rnn_sequence(x_in, W, s0, neuron="cuba", beta=beta, alpha=alpha, threshold=theta, bias=bias,
                                    reset="zero", backend="torch")
        mem = torch.cat([s0[None, ..., -4:], U[..., -4:]])
        if (mem - theta).abs().min() > 0.08 and 0 < int((mem > theta).sum()) < mem.numel():
            break
    else:
        raise AssertionError("no draw kept the membranes away from the threshold")
    args = [t.to(DEVICE).requires_grad_(True) for t in (x_in, W, s0, beta, alpha, theta, bias)]

    def f(x_in, W, s0, beta, alpha, theta, bias):
        return spiking_rnn_sequence(x_in, W, s0, neuron="cuba", beta=beta, alpha=alpha, threshold=theta,
                                    surrogate=surrogate, reset="zero", detach_reset=False, bias=bias, backend="torch")

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_opcheck_ensemble_shapes():
    # Schema, fake (meta) implementations and autograd registration with the member axis.
    from surroflos.kernels.recurrent import _rnn_bwd, _rnn_fwd

    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    x_in, W, s0 = (t.detach().cpu().requires_grad_(True) for t in ens_inputs("cuba", 2, 3, 2, 5, seed=1))
    vec = [torch.rand(2, 5, dtype=F64, requires_grad=True) for _ in range(4)]
    flags = (True, False, False, 1, 2.0, False, False)
    torch.library.opcheck(_rnn_fwd, (x_in, W, s0, *vec, *flags), test_utils=checks)
    S, U, bits = (t.detach() for t in _rnn_fwd(x_in, W, s0, *vec, *flags))
    d = [t.detach() for t in (W, s0, bits, U, vec[0], vec[1], vec[2])]
    torch.library.opcheck(_rnn_bwd, (torch.rand_like(S), torch.rand_like(U), *d, True, False, False, 1, 2.0,
                                     True, True, True, True, False, False), test_utils=checks)
    Q = torch.randn(2, 3, 10, 4, dtype=F64, requires_grad=True)
    Wt, dd = torch.randn(2, 5, 5, dtype=F64, requires_grad=True), torch.randn(2, 3, 5, dtype=F64, requires_grad=True)
    torch.library.opcheck(kt._dense_op, (Wt, dd, dd, dd, Q[..., :5, :], False), test_utils=checks)
    torch.library.opcheck(kt._block_op, (Wt, dd, dd, dd, dd, Q[..., :5, :], Q[..., 5:, :], Q[..., 5:, :], False),
                          test_utils=checks)
    Wt, dd, Q = Wt.detach(), dd.detach(), Q.detach()
    Qm, G = Q[..., :5, :], torch.randn(2, 3, 10, 4, dtype=F64)
    torch.library.opcheck(kt._dense_bwd_op, (G[..., :5, :], Wt, dd, dd, dd, Qm, False, True, True), test_utils=checks)
    out = kt._block_op(Wt, dd, dd, dd, dd, Qm, Q[..., 5:, :], Qm, False)
    torch.library.opcheck(kt._block_bwd_op, (G, Wt, dd, dd, dd, dd, Qm, Q[..., 5:, :], Qm, out, False, True),
                          test_utils=checks)


def test_invalid_ensemble_inputs_are_clear_errors():
    x_in, W, s0 = (t.detach().cpu() for t in ens_inputs("lif", 3, 2, 2, 4, seed=0))
    ok = dict(neuron="lif", backend="torch")
    cases = [
        (dict(W=W[0]), "W must have shape \\[E, N, N\\]"),
        (dict(s0=s0[0]), "state0 must have shape \\[E, B, D\\]"),
        (dict(kw=dict(beta=torch.full((3,), 0.9, dtype=F64))), "one value per member is \\[3, 1\\]"),
        (dict(kw=dict(threshold=torch.ones(3, 2, dtype=F64))), "threshold of an ensemble"),
        (dict(kw=dict(beta=torch.ones(2, 1, 1, dtype=F64))), "beta of an ensemble"),
        (dict(kw=dict(bias=torch.zeros(3, 1, 1, dtype=F64))), "bias of an ensemble"),
        (dict(kw=dict(threshold=torch.ones(3, 1))), "threshold is torch.float32"),
    ]
    for case, match in cases:
        with pytest.raises(ValueError, match=match):
            spiking_rnn_sequence(x_in, case.get("W", W), case.get("s0", s0), **{**ok, **case.get("kw", {})})
    Q = torch.randn(3, 2, 4, 2, dtype=F64)
    with pytest.raises(ValueError, match="W must have shape \\[E, N, N\\]"):
        kt.dense_tangent(W[0], 1.0, 0.5, Q, backend="torch")
    with pytest.raises(ValueError, match="does not broadcast to \\[E, B, N\\]"):
        kt.dense_tangent(W, torch.ones(2, 1, 4, dtype=F64), 0.5, Q, backend="torch")


# ----------------------------------------------------------------------------------------------
# SpikingRNN(..., ensemble=E): the fused rollout, end to end, against the solo networks
# ----------------------------------------------------------------------------------------------


def _loss_and_grads(model, x, state0, seed=3):
    x = x.detach().clone().requires_grad_(True)
    state0 = state0.detach().clone().requires_grad_(True)
    r = model.rollout(x, state0)
    g = gen(seed)
    cs = [torch.randn(t.shape, generator=g, dtype=F64).to(t.device) for t in r]
    loss = sum((c * t).sum() for c, t in zip(cs, r))
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(loss, [x, state0] + list(params.values()))
    return r, dict(zip(["x", "state0"] + list(params), grads))


def _check_against_solos(ens, solos, backend, monkeypatch, T=5, B=3):
    E, n_in = len(solos), ens.n_in
    x = 1.5 * torch.rand(T, E, B, n_in, generator=gen(1), dtype=F64).to(DEVICE)
    s0 = torch.stack([m.initial_state(B, random=True, generator=gen(20 + e)) for e, m in enumerate(solos)])
    ens.backend = backend
    for m in solos:  # the reference: each solo network on the PyTorch path (itself equal to the step loop,
        m.backend = "torch"  # tests/test_kernels_recurrent.py)
    with monkeypatch.context() as mp:  # the ensemble must run the fused op, not the step loop
        mp.setattr(RecurrentModel, "rollout", lambda *a, **k: pytest.fail("the ensemble fell back to the step loop"))
        r, grads = _loss_and_grads(ens, x, s0)
    # member e's share of the loss uses member e's random weights: draw them as _loss_and_grads did
    g = gen(3)
    cs = [torch.randn(t.shape, generator=g, dtype=F64).to(t.device) for t in r]
    assert 0 < float(r.activity.detach().sum()) < r.activity.numel()
    for e, solo in enumerate(solos):
        xe = x[:, e].detach().clone().requires_grad_(True)
        s0e = s0[e].detach().clone().requires_grad_(True)
        re = solo.rollout(xe, s0e)
        loss = sum((c[:, e] * t).sum() for c, t in zip(cs, re))
        params = dict(solo.named_parameters())
        ge = dict(zip(["x", "state0"] + list(params), torch.autograd.grad(loss, [xe, s0e] + list(params.values()))))
        assert_spikes_match(r.activity[:, e].detach(), re.activity.detach(), re.states[..., -solo.n_hidden:].detach(),
                            solo.threshold.detach())
        assert_close_rel(r.states[:, e].detach(), re.states.detach(), EXACT_RTOL_F64, f"member {e} states")
        assert_close_rel(r.outputs[:, e].detach(), re.outputs.detach(), EXACT_RTOL_F64, f"member {e} outputs")
        assert set(ge) == set(grads)
        for name in ge:
            got = grads[name][:, e] if name == "x" else grads[name][e]
            assert float(ge[name].abs().max()) > 0, name
            assert_close_rel(got, ge[name], EXACT_RTOL_F64, f"member {e} d/d{name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("neuron", ["lif", "cuba"])
def test_spiking_rnn_ensemble_equals_solo_networks(neuron, backend, monkeypatch):
    # SpikingRNN(..., ensemble=3, generator=[g0, g1, g2]) forward and backward equal the three solo networks built
    # from g0, g1, g2 (weights, inputs' gradient, initial state's gradient, every learnable parameter).
    kw = dict(neuron=neuron, reset="zero" if neuron == "lif" else "subtract", detach_reset=False, g=2.0,
              input_scale=1.5, learn_beta=True, learn_alpha=neuron == "cuba", learn_threshold=True, dtype=F64,
              readout="leaky" if neuron == "cuba" else "linear", surrogate="fast_sigmoid")
    ens = sf.SpikingRNN(3, 19, 2, ensemble=3, generator=[gen(s) for s in (40, 41, 42)], **kw).to(DEVICE)
    solos = [sf.SpikingRNN(3, 19, 2, generator=gen(s), **kw).to(DEVICE) for s in (40, 41, 42)]
    _check_against_solos(ens, solos, backend, monkeypatch)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stacked_members_with_their_own_neuron_parameters(backend, monkeypatch):
    # Members that differ in beta (one value each: member view [E, 1, 1]) and threshold (per neuron: [E, 1, N]).
    N = 19
    solos = [sf.SpikingRNN(3, N, 2, neuron="cuba", reset="zero", beta=b, alpha=0.6 + 0.1 * e,
                           threshold=torch.linspace(0.8 + 0.1 * e, 1.2, N), learn_beta=True, learn_alpha=True,
                           learn_threshold=True, g=2.0, input_scale=1.5, generator=gen(50 + e), dtype=F64).to(DEVICE)
             for e, b in enumerate((0.7, 0.85, 0.95))]
    ens = stack(solos)
    assert ens.params().beta.shape == (3, 1, 1) and ens.params().threshold.shape == (3, 1, N)
    _check_against_solos(ens, solos, backend, monkeypatch)


# ----------------------------------------------------------------------------------------------
# Tangent ops and fused tangent functions with a member axis
# ----------------------------------------------------------------------------------------------


def naive_dense(W, d, a, Q, c):
    """Per member and batch element with explicit diagonal matrices: ``diag(c) (W diag(d) + diag(a)) Q``."""
    E, B, N, _ = Q.shape
    full = lambda v: torch.broadcast_to(torch.as_tensor(v, dtype=Q.dtype, device=Q.device), (E, B, N))  # noqa: E731
    d, a, c = full(d), full(a), full(c)
    return torch.stack([torch.stack([torch.diag(c[e, b]) @ (W[e] @ torch.diag(d[e, b]) + torch.diag(a[e, b])) @ Q[e, b]
                                     for b in range(B)]) for e in range(E)])


def naive_block(W, d, a_s, a_m, c, Qs, Qm, Qw):
    E, B, N, _ = Qm.shape
    full = lambda v: torch.broadcast_to(torch.as_tensor(v, dtype=Qm.dtype, device=Qm.device), (E, B, N))  # noqa: E731
    d, a_s, a_m, c = full(d), full(a_s), full(a_m), full(c)
    out = []
    for e in range(E):
        rows = []
        for b in range(B):
            dsyn = torch.diag(a_s[e, b]) @ Qs[e, b] + W[e] @ torch.diag(d[e, b]) @ Qw[e, b]
            rows.append(torch.cat([dsyn, torch.diag(a_m[e, b]) @ Qm[e, b] + torch.diag(c[e, b]) @ dsyn]))
        out.append(torch.stack(rows))
    return torch.stack(out)


def _tangent_inputs(E, B, N, k, dtype, seed):
    g = gen(seed)

    def leaf(*shape, scale=1.0):
        return (scale * torch.randn(shape, generator=g, dtype=F64)).to(dtype).to(DEVICE).requires_grad_(True)

    # coefficients in every layout: per (member, batch, neuron), member views, shared [N] and a number
    return dict(W=leaf(E, N, N, scale=N ** -0.5), Q=leaf(E, B, 3 * N, k), d=leaf(E, B, N), a=leaf(E, 1, N),
                c=leaf(E, 1, 1), s=leaf(N))


def _compare_tangent(fn, ref, leaves, rtol, grad_rtol, seed=9):
    out, expected = fn(), ref()
    assert out.shape == expected.shape and out.dtype == expected.dtype
    assert_close_rel(out.detach(), expected.detach(), rtol, "value")
    G = torch.randn(out.shape, generator=gen(seed), dtype=F64).to(out.dtype).to(out.device)
    for i, (a, b) in enumerate(zip(torch.autograd.grad(out, leaves, G), torch.autograd.grad(expected, leaves, G))):
        assert float(b.abs().max()) > 0
        assert_close_rel(a, b, grad_rtol, f"grad of input {i}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [F64, F32], ids=["f64", "f32"])
@pytest.mark.parametrize("E", [1, 3])
def test_tangent_ops_equal_naive_per_member(E, dtype, backend):
    # B = 2, N = 19 (not a multiple of the 16/32/64 tiles), k = 5. float32 against the float64 result rounded once:
    # each entry is an N-term product plus <= 6 scalings and additions, a gradient as many again plus a
    # coefficient's sum over the E x B x N x k entries.
    B, N, k = 2, 19, 5
    t = _tangent_inputs(E, B, N, k, dtype, seed=E)
    W, Q, d, a, c, s = (t[n] for n in ("W", "Q", "d", "a", "c", "s"))
    Qs, Qm, Qz = Q[..., :N, :], Q[..., N:2 * N, :], Q[..., 2 * N:, :]
    if dtype == F64:
        rtol = grad_rtol = EXACT_RTOL_F64
    else:
        rtol, grad_rtol = rounding_rtol(F32, N + 6), rounding_rtol(F32, 2 * (N + 6) + E * B * N * k)

    def dbl(*xs):
        return [x.double() if isinstance(x, torch.Tensor) else x for x in xs]

    _compare_tangent(lambda: kt.dense_tangent(W, d, a, Qs, c, backend=backend),
                     lambda: naive_dense(*dbl(W, d, a, Qs, c)).to(dtype), [W, d, a, c, Q], rtol, grad_rtol)
    _compare_tangent(lambda: kt.dense_tangent(W, s, 0.3, Qm, backend=backend),
                     lambda: naive_dense(*dbl(W, s, 0.3, Qm, 1.0)).to(dtype), [W, s, Q], rtol, grad_rtol)
    _compare_tangent(lambda: kt.block_tangent(W, d, a, s, c, Qs, Qm, Qz, backend=backend),
                     lambda: naive_block(*dbl(W, d, a, s, c, Qs, Qm, Qz)).to(dtype), [W, d, a, s, c, Q], rtol,
                     grad_rtol)


def _ens_spiking(neuron, **kw):
    def make():
        m = sf.SpikingRNN(2, 19, 1, neuron=neuron, g=2.0, ensemble=3, generator=[gen(s) for s in (0, 1, 2)],
                          dtype=F64, **kw).to(DEVICE)
        g = gen(3)
        state = torch.randn(3, 2, m.state_dim, generator=g, dtype=F64)
        state[..., -19:] = 2.0 * torch.rand(3, 2, 19, generator=g, dtype=F64)  # membranes around the threshold
        return m, state.to(DEVICE)
    return make


def _ens_rate(**kw):
    def make():
        m = sf.RateRNN(2, 19, 1, g=1.5, ensemble=3, generator=[gen(s) for s in (0, 1, 2)], dtype=F64, **kw)
        return m.to(DEVICE), torch.randn(3, 2, 19, generator=gen(3), dtype=F64).to(DEVICE)
    return make


ENS_MODELS = {
    "lif-subtract-attached": _ens_spiking("lif", detach_reset=False, learn_beta=True, learn_threshold=True),
    "lif-zero-attached": _ens_spiking("lif", reset="zero", detach_reset=False, learn_beta=True),
    "cuba-subtract": _ens_spiking("cuba", learn_alpha=True, learn_beta=True),
    "cuba-zero-attached": _ens_spiking("cuba", reset="zero", detach_reset=False, learn_alpha=True,
                                       learn_threshold=True),
    "rate-tanh-dt": _ens_rate(dt=0.3),
    "rate-relu": _ens_rate(nonlinearity="relu"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(ENS_MODELS))
def test_fused_tangent_of_an_ensemble_equals_each_members_own(name, backend):
    # fused_tangent_function(ensemble) against each member's solo model's own tangent map (member e of
    # surroflos.ensemble.member), values and gradients w.r.t. the state, the frame and every learnable parameter.
    model, state = ENS_MODELS[name]()
    fused = kt.fused_tangent_function(model, backend)
    assert fused is not None, f"{name} should be recognised"
    E, B, D, k = 3, 2, model.state_dim, 3
    x = torch.randn(E, B, model.n_in, generator=gen(4), dtype=F64).to(DEVICE)
    Q = torch.randn(E, B, D, k, generator=gen(5), dtype=F64).to(DEVICE).requires_grad_(True)
    state = state.clone().requires_grad_(True)
    out = fused(x, state, model.params(), Q)
    G = torch.randn(out.shape, generator=gen(6), dtype=F64).to(DEVICE)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(out, [state, Q] + [dict(model.named_parameters())[n] for n in names], G,
                                allow_unused=True)
    for e in range(E):
        solo = member(model, e)
        own = solo.tangent_function(x[e], state[e], solo.params(), Q[e])
        assert_close_rel(out[e].detach(), own.detach(), EXACT_RTOL_F64, f"member {e} value")
        sp = dict(solo.named_parameters())
        ref = torch.autograd.grad(own, [state, Q] + [sp[n] for n in names], G[e], allow_unused=True)
        for i, (n, a, b) in enumerate(zip(["state", "Q"] + names, grads, ref)):
            if b is None:  # not read by the map (input weights, readout; a relu state enters through h > 0 only)
                assert a is None or float(a[e].abs().max()) == 0, n
                continue
            want = b[e] if i < 2 else b  # state and frame: slices of the ensemble's leaves; parameters: the solo's
            assert float(want.abs().max()) > 0, n
            assert_close_rel(a[e], want, EXACT_RTOL_F64, f"member {e} d/d{n}")
