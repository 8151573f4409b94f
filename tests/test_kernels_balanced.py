"""Fused sparse balanced network (surroflos.kernels.balanced): the PyTorch path and the Triton kernels
(Triton's interpreter on CPU) against the per-step loop over surroflos.models.balanced.balanced_step
(spikes, states, gradients of the input current, the initial state and the recurrent weights) and the
tangent op against balanced_tangent; float64 gradcheck of both explicit backwards; graph capture with
torch.compile; the BalancedNetwork wiring (backend=, rollout, simulate, backend_tangent_function)."""

from __future__ import annotations

import pytest
import torch

from surroflos import surrogate as sg
from surroflos.kernels import backend as kb
from surroflos.kernels.balanced import balanced_sequence, balanced_tangent_fused, out_pattern
from surroflos.models.balanced import (BalancedNetwork, balanced_step, balanced_tangent, balanced_tangent_kernel)
from surroflos.models.base import RecurrentModel

from _kernel_checks import DEVICE, assert_close_rel, assert_spikes_match, requires_triton
from _tolerance import assert_within_rounding, recurrence_ops, scale_of

pytestmark = pytest.mark.numerics

F64 = torch.float64
SURROGATES = ["fast_sigmoid", "atan", "sigmoid", "triangle", "exponential", "gaussian"]
BACKENDS = ["torch", pytest.param("triton", marks=requires_triton)]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_case(N, K, B, T, *, dtype=F64, seed=0, surrogate="atan", detach_reset=True):
    """A small, active network (dt = 1 ms) with mixed-sign weights, a random input current and initial state."""
    g = gen(seed)
    net = BalancedNetwork(N, K, J0=1.0, dt=1e-3, dtype=dtype, generator=g, learn_recurrent=True,
                          surrogate=surrogate, detach_reset=detach_reset)
    sign = torch.where(torch.rand(N, K, generator=g) < 0.3, -1.0, 1.0).to(dtype)
    w = net.weight_rec.detach() * (0.5 + torch.rand(N, K, generator=g, dtype=dtype)) * sign
    u = 1.2 + 0.8 * torch.randn(T, B, N, generator=g, dtype=dtype)
    s0 = torch.cat([0.3 * torch.randn(B, N, generator=g, dtype=dtype),
                    1.6 * torch.rand(B, N, generator=g, dtype=dtype) - 0.1], dim=1)
    return net, w.to(DEVICE), u.to(DEVICE), s0.to(DEVICE)


def coefficients(net):
    return dict(a_m=net.a_m, a_s=net.a_s, b=net.b, bc=net.bc, ac=net.ac)


def loop_reference(net, w, u, s0):
    """The naive reference: T calls of balanced_step, the input current passed as a per-step drive."""
    p = net.params()._replace(weight_rec=w, pre_idx=net.pre_idx.to(u.device),
                              weight_in=torch.zeros(net.N, 0, dtype=u.dtype, device=u.device))
    x = torch.zeros(u.shape[1], 0, dtype=u.dtype, device=u.device)
    state, spikes, states = s0, [], []
    for t in range(u.shape[0]):
        out, state = balanced_step(x, state, p._replace(drive=u[t]))
        spikes.append(out)
        states.append(state)
    return torch.stack(spikes), torch.stack(states)


def fused(net, w, u, s0, backend):
    return balanced_sequence(u, s0, w, net.pre_idx.to(u.device), **coefficients(net), surrogate=net.surrogate,
                             detach_reset=net.detach_reset, backend=backend)


def run_with_grads(fn, w, u, s0, seed=99):
    """Spikes, states and the gradients of a random linear loss w.r.t. (u, state0, weights)."""
    w, u, s0 = (t.detach().clone().requires_grad_() for t in (w, u, s0))
    spikes, states = fn(w, u, s0)
    g = gen(seed)
    gs = torch.randn(spikes.shape, generator=g, dtype=F64).to(spikes)
    gst = torch.randn(states.shape, generator=g, dtype=F64).to(states)
    loss = (spikes * gs).sum() + (states * gst).sum()
    grads = torch.autograd.grad(loss, (u, s0, w))
    return spikes.detach(), states.detach(), grads


def sequence_ops(K, T, B) -> tuple[int, int]:
    """Rounded operations (tests/_tolerance.py) of T steps of K-synapse sums and <= 8 elementwise updates; the
    gradient: the backward pass again, plus a weight's sum over time and batch."""
    return recurrence_ops(T, K + 8), recurrence_ops(T, K + 8, backward=True, reduce=T * B)


def compare(net, w, u, s0, backend):
    """The fused sequence against the per-step loop: spikes equal away from the threshold, states and gradients
    within the rounding bound of the recurrence (float32 and float64 alike)."""
    ref = run_with_grads(lambda w_, u_, s_: loop_reference(net, w_, u_, s_), w, u, s0)
    out = run_with_grads(lambda w_, u_, s_: fused(net, w_, u_, s_, backend), w, u, s0)
    N = net.N
    assert int((s0[:, N:] > 1).sum() + ref[0][:-1].sum()) > 0, "the case should spike"
    assert_spikes_match(out[0], ref[0], ref[1][..., N:], 1.0)
    ops_fwd, ops_grad = sequence_ops(w.shape[1], u.shape[0], u.shape[1])
    assert_within_rounding(out[1], ref[1], ops_fwd, "states")
    terms = scale_of(ref[2][0]) * max(1.0, scale_of(ref[1]))  # what a weight's gradient sums: drive x state
    for name, a, e in zip(("x_drive", "state0", "weight_rec"), out[2], ref[2]):
        assert float(e.abs().max()) > 0, name
        assert_within_rounding(a, e, ops_grad, f"grad {name}", magnitude=max(scale_of(e), terms))
    return out


# ----------------------------------------------------------------------------------------------
# The sequence against the per-step loop
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_sequence_matches_loop_every_surrogate(backend, surrogate, detach_reset):
    net, w, u, s0 = make_case(37, 5, 2, 4, surrogate=surrogate, detach_reset=detach_reset, seed=1)
    compare(net, w, u, s0, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("N,K,B,T", [(19, 18, 1, 1), (150, 33, 3, 3), (2, 1, 1, 4)])
def test_sequence_matches_loop_shapes(backend, N, K, B, T):
    """N, K (and the out-degree) not multiples of the blocks, several N- and K-blocks, B = 1, T = 1."""
    net, w, u, s0 = make_case(N, K, B, T, detach_reset=False, seed=2)
    if N == 2:  # two neurons: start one above threshold so that the single synapse carries a spike
        s0[:, N:] = torch.tensor([1.5, 0.2], dtype=F64)
    compare(net, w, u, s0, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequence_float32(backend):
    net, w, u, s0 = make_case(37, 5, 2, 6, dtype=torch.float32, seed=3)
    out = compare(net, w, u, s0, backend)
    assert out[1].dtype == torch.float32 and out[0].dtype == torch.float32


@requires_triton
def test_triton_equals_torch_path_and_handles_strides():
    """Expanded (stride-0) input current and expanded output gradients (loss = sum)."""
    net, w, _, s0 = make_case(41, 7, 2, 4, seed=4)
    u = torch.full((41,), 1.3, dtype=F64, device=DEVICE).expand(4, 2, 41).requires_grad_()
    res = {}
    for be in ("torch", "triton"):
        ww, ss = w.clone().requires_grad_(), s0.clone().requires_grad_()
        spikes, states = fused(net, ww, u, ss, be)
        (spikes.sum() + states.sum()).backward()
        res[be] = (spikes.detach(), states.detach(), u.grad.clone(), ss.grad, ww.grad)
        u.grad = None
    assert int(res["torch"][0].sum()) > 0
    assert torch.equal(res["triton"][0], res["torch"][0])
    for a, e in zip(res["triton"][1:], res["torch"][1:]):
        assert_close_rel(a, e, 1e-12)


def gradcheck_case():
    """Seeded so that every membrane stays >= 0.4 away from threshold: with a narrow gaussian surrogate
    (scale 50, sigma' < 1e-90 there) the Heaviside and the surrogate terms are locally constant (zero), so
    finite differences see exactly the explicit backward (spikes fixed: the weight gradient is non-zero)."""
    g = gen(23)
    N, K, B, T = 6, 2, 1, 2
    net = BalancedNetwork(N, K, J0=1.0, dt=1e-3, dtype=F64, generator=g, learn_recurrent=True,
                          surrogate=sg.Surrogate("gaussian", 50.0), detach_reset=False)
    sign = torch.where(torch.rand(N, K, generator=g) < 0.5, -1.0, 1.0).double()
    w = net.weight_rec.detach() * (0.5 + torch.rand(N, K, dtype=F64, generator=g)) * sign
    u = 3.0 * torch.randn(T, B, N, dtype=F64, generator=g)
    s0 = torch.cat([torch.randn(B, N, dtype=F64, generator=g), 3 * torch.rand(B, N, dtype=F64, generator=g) - 0.5], 1)
    spikes, states = loop_reference(net, w, u, s0)
    V = torch.cat([s0[None, :, N:], states[..., N:]])
    assert float((V - 1).abs().min()) > 0.4 and int((V > 1).sum()) >= 4  # the premise of the test
    return net, w, u, s0


@pytest.mark.parametrize("backend", BACKENDS)
def test_sequence_gradcheck_float64(backend):
    net, w, u, s0 = gradcheck_case()

    def f(u_, s_, w_):
        spikes, states = fused(net, w_, u_, s_, backend)
        return spikes, states

    inputs = tuple(t.clone().to(DEVICE).requires_grad_() for t in (u, s0, w))
    # fast mode (random projections of the Jacobian) for the interpreter, the full Jacobian for the torch path
    assert torch.autograd.gradcheck(f, inputs, fast_mode=backend == "triton")


# ----------------------------------------------------------------------------------------------
# The tangent map
# ----------------------------------------------------------------------------------------------


def tangent_case(N, K, B, k, *, seed=5, surrogate="atan", detach_reset=True, dtype=F64):
    net, w, _, s0 = make_case(N, K, B, 1, seed=seed, surrogate=surrogate, detach_reset=detach_reset, dtype=dtype)
    s0[:, N:] = 0.4 + 1.2 * torch.rand(B, N, generator=gen(seed + 1), dtype=dtype).to(DEVICE)  # many near threshold
    Q = torch.randn(B, 2 * N, k, generator=gen(seed + 2), dtype=dtype).to(DEVICE)
    return net, w, s0, Q


def tangent_with_grads(fn, net, w, s0, Q):
    w, s0, Q = (t.detach().clone().requires_grad_() for t in (w, s0, Q))
    p = net.params()._replace(weight_rec=w, pre_idx=net.pre_idx.to(w.device))
    x = torch.zeros(Q.shape[0], 0, dtype=Q.dtype, device=Q.device)
    out = fn(x, s0, p, Q)
    G = torch.randn(out.shape, generator=gen(77), dtype=F64).to(out)
    grads = torch.autograd.grad((out * G).sum(), (Q, s0, w))
    return out.detach(), grads


TANGENT_CASES = [  # (N, K, B, k, surrogate, detach_reset): every surrogate id, both resets, odd sizes
    (37, 5, 2, 3, "fast_sigmoid", True), (37, 5, 2, 3, "atan", False), (37, 5, 2, 3, "sigmoid", True),
    (37, 5, 2, 3, "triangle", False), (37, 5, 2, 3, "exponential", True), (37, 5, 2, 3, "gaussian", False),
    (70, 33, 1, 33, "atan", True), (5, 4, 1, 1, "atan", False),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("N,K,B,k,surrogate,detach_reset", TANGENT_CASES)
def test_tangent_matches_balanced_tangent(backend, N, K, B, k, surrogate, detach_reset):
    net, w, s0, Q = tangent_case(N, K, B, k, surrogate=surrogate, detach_reset=detach_reset)
    ref = tangent_with_grads(balanced_tangent, net, w, s0, Q)
    out = tangent_with_grads(lambda *a: balanced_tangent_kernel(*a, backend=backend), net, w, s0, Q)
    assert_close_rel(out[0], ref[0], 1e-12, "DQ")
    for name, a, e in zip(("Q", "state", "weight_rec"), out[1], ref[1]):
        assert float(e.abs().max()) > 0, name
        assert_close_rel(a, e, 1e-10, f"grad {name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_tangent_float32(backend):
    net, w, s0, Q = tangent_case(37, 5, 2, 4, dtype=torch.float32)
    ref = tangent_with_grads(balanced_tangent, net, w, s0, Q)
    out = tangent_with_grads(lambda *a: balanced_tangent_kernel(*a, backend=backend), net, w, s0, Q)
    assert out[0].dtype == torch.float32
    # One tangent step: a K-term sum and <= 8 elementwise operations per entry; the gradients run it backwards
    # and sum over the k columns and the batch.
    K, B, k = 5, 2, 4
    assert_within_rounding(out[0], ref[0], K + 8, "DQ")
    for a, e, name in zip(out[1], ref[1], ("Q", "state", "weight_rec")):
        assert_within_rounding(a, e, 2 * (K + 8) + B * k, name, magnitude=scale_of(*ref[1]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_tangent_gradcheck_float64(backend):
    g = gen(8)
    N, K, B, k = 5, 3, 2, 2
    pre = BalancedNetwork(N, K, generator=g).pre_idx.to(DEVICE)
    d, e = torch.rand(B, N, dtype=F64, generator=g), torch.rand(B, N, dtype=F64, generator=g)
    d[0, 2] = 0.0  # a silent surrogate: the kernel skips that row, the gradient must not
    Q = torch.randn(B, 2 * N, k, dtype=F64, generator=g)
    w = torch.randn(N, K, dtype=F64, generator=g)

    def f(d_, e_, Q_, w_):
        return balanced_tangent_fused(d_, e_, Q_, w_, pre, 0.9, 0.6, 0.05, 0.3, 2.5, backend=backend)

    inputs = tuple(t.to(DEVICE).requires_grad_() for t in (d, e, Q, w))
    assert torch.autograd.gradcheck(f, inputs, fast_mode=backend == "triton")


# ----------------------------------------------------------------------------------------------
# torch.compile, errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_captures_the_ops(backend):
    net, w, u, s0 = make_case(23, 4, 2, 4, seed=9)
    Q = torch.randn(2, 46, 3, dtype=F64, generator=gen(10)).to(DEVICE)
    pre = net.pre_idx.to(DEVICE)
    surr = net.surrogate

    def f(u_, s_, w_, Q_):
        spikes, states = balanced_sequence(u_, s_, w_, pre, **coefficients(net), surrogate=surr, backend=backend)
        V = states[-1, :, 23:]
        d = sg.surrogate_derivative(V - 1.0, surr.id, surr.scale)
        DQ = balanced_tangent_fused(d, 1.0 - (V > 1).to(V.dtype), Q_, w_, pre, **coefficients(net), backend=backend)
        return spikes.sum() + (states ** 2).sum() + (DQ ** 2).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = [t.clone().requires_grad_() for t in (u, s0, w, Q)]
    args_c = [t.clone().requires_grad_() for t in (u, s0, w, Q)]
    ref = f(*args)
    out = compiled(*args_c)
    torch.testing.assert_close(out, ref)
    for a, e in zip(torch.autograd.grad(out, args_c), torch.autograd.grad(ref, args)):
        torch.testing.assert_close(a, e)


def test_input_errors():
    net, w, u, s0 = make_case(10, 3, 2, 3)
    pre = net.pre_idx.to(DEVICE)
    kw = coefficients(net)
    with pytest.raises(ValueError, match=r"x_drive must have shape \[T, B, N\]"):
        balanced_sequence(u[0], s0, w, pre, **kw)
    with pytest.raises(ValueError, match="state0 must have shape"):
        balanced_sequence(u, s0[:1], w, pre, **kw)
    with pytest.raises(ValueError, match="convert them to one dtype"):
        balanced_sequence(u.float(), s0, w, pre, **kw)
    with pytest.raises(ValueError, match=r"presynaptic ids in \[0, N\)"):
        balanced_sequence(u, s0, w, pre + 5, **kw)
    with pytest.raises(ValueError, match="pre_idx must be an int32/int64"):
        balanced_sequence(u, s0, w, pre.double(), **kw)
    with pytest.raises(ValueError, match="backend must be one of"):
        balanced_sequence(u, s0, w, pre, **kw, backend="cuda")
    with pytest.raises(ValueError, match="a_m must be a finite"):
        balanced_sequence(u, s0, w, pre, **{**kw, "a_m": float("nan")})
    with pytest.raises(TypeError, match="x_drive must be a torch.Tensor"):
        balanced_sequence(u.tolist(), s0, w, pre, **kw)
    Q = torch.zeros(2, 20, 3, dtype=F64, device=DEVICE)
    d = torch.zeros(2, 10, dtype=F64, device=DEVICE)
    with pytest.raises(ValueError, match=r"Q must have shape \[B, 2N, k\]"):
        balanced_tangent_fused(d, d, Q[:, :19], w, pre, **kw)
    with pytest.raises(ValueError, match=r"e must have shape \[B, N\]"):
        balanced_tangent_fused(d, d[:1], Q, w, pre, **kw)


def test_out_pattern_is_the_transpose_and_cached():
    net = BalancedNetwork(30, 4, generator=gen(11))
    post, slot = out_pattern(net.pre_idx)
    assert post.dtype == slot.dtype == torch.int32
    post, slot = post.long(), slot.long()
    N, K = net.pre_idx.shape
    real = slot < N * K
    assert int(real.sum()) == N * K and torch.equal(slot[real].sort().values, torch.arange(N * K))
    assert torch.equal(post[~real], torch.full_like(post[~real], N))  # padding: the dummy target
    i = torch.div(slot[real], K, rounding_mode="floor")
    assert torch.equal(post[real], i)  # post = the neuron owning that synapse
    j = torch.arange(N).unsqueeze(1).expand_as(slot)[real]
    assert torch.equal(net.pre_idx.reshape(-1)[slot[real]], j)  # ... whose presynaptic id is the row
    # within a row, the synapses in their order in weight_rec (a stable grouping)
    assert bool((slot[:, 1:] > slot[:, :-1])[real[:, 1:]].all())
    assert out_pattern(net.pre_idx)[1] is out_pattern(net.pre_idx)[1]  # cached
    before = out_pattern(net.pre_idx)[1]
    net.pre_idx.copy_(BalancedNetwork(30, 4, generator=gen(12)).pre_idx)  # in place: rebuilt
    assert out_pattern(net.pre_idx)[1] is not before


@pytest.mark.parametrize("N,K,chunk", [(200, 7, 1), (200, 7, 50), (57, 56, 100), (1000, 30, 333)])
def test_pattern_built_in_chunks_equals_one_stable_sort(monkeypatch, N, K, chunk):
    """The chunked counting sort gives the slot array of one stable argsort of all ids (the brute force)."""
    import surroflos.kernels.balanced as kbal

    pre = BalancedNetwork(N, K, generator=gen(N + K)).pre_idx
    monkeypatch.setattr(kbal, "_BUILD_CHUNK", chunk)
    got = kbal._build_pattern(pre).slot.long()
    flat = pre.reshape(-1)
    want = torch.full_like(got, N * K)
    for j in range(N):
        mine = torch.nonzero(flat == j).reshape(-1)  # ascending positions of j's synapses
        want[j, :mine.numel()] = mine
    assert torch.equal(got, want)


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    net, w, u, s0 = make_case(10, 3, 1, 2)
    with pytest.raises(kb.TritonUnavailableError):
        balanced_sequence(u.cpu(), s0.cpu(), w.cpu(), net.pre_idx, **coefficients(net), backend="triton")
    with pytest.raises(kb.TritonUnavailableError):
        BalancedNetwork(10, 3, backend="triton").simulate(3)


# ----------------------------------------------------------------------------------------------
# BalancedNetwork wiring
# ----------------------------------------------------------------------------------------------


def test_backend_argument_and_repr():
    assert "backend='auto'" in repr(BalancedNetwork(10, 3))
    assert "backend='torch'" in repr(BalancedNetwork(10, 3, backend="torch"))
    with pytest.raises(ValueError, match="backend must be one of"):
        BalancedNetwork(10, 3, backend="cuda")


@pytest.mark.parametrize("backend", BACKENDS)
def test_rollout_matches_the_step_loop(backend):
    """model(x) on the fused sequence: outputs, states and parameter gradients equal the per-step loop."""
    net = BalancedNetwork(30, 4, n_in=2, n_out=3, dt=1e-3, dtype=F64, generator=gen(13), learn_recurrent=True,
                          detach_reset=False, backend=backend).to(DEVICE)
    x = torch.randn(6, 2, 2, dtype=F64, generator=gen(14)).to(DEVICE)
    state0 = net.initial_state(2, random=True, generator=gen(15)).to(DEVICE)
    res = []
    for roll in (net.rollout, lambda x_, s_: RecurrentModel.rollout(net, x_, s_)):  # fused, then the loop
        net.zero_grad()
        r = roll(x, state0)
        (r.outputs.pow(2).sum() + r.states[-1].sum()).backward()
        res.append((r.outputs.detach(), r.states.detach(), r.activity.detach(),
                    net.weight_rec.grad.clone(), net.weight_in.grad.clone()))
    assert int(res[1][2].sum()) > 0
    assert torch.equal(res[0][2], res[1][2])
    for a, e in zip(res[0][:2] + res[0][3:], res[1][:2] + res[1][3:]):
        assert_close_rel(a, e, 1e-9)


def test_subclass_with_its_own_step_keeps_the_loop():
    calls = []

    def step(x, state, p):
        calls.append(1)
        return balanced_step(x, state, p)

    class Custom(BalancedNetwork):
        step_function = staticmethod(step)

    net = Custom(20, 3, dtype=F64, generator=gen(16))
    net.rollout(torch.zeros(3, 1, 0, dtype=F64))
    assert len(calls) == 3
    with pytest.raises(ValueError, match="replaces step_function"):
        Custom(20, 3, dtype=F64, backend="triton").rollout(torch.zeros(3, 1, 0, dtype=F64))


@requires_triton
def test_simulate_triton_equals_torch():
    res = []
    for be in ("torch", "triton"):
        net = BalancedNetwork(60, 8, n_in=2, dt=5e-4, dtype=F64, generator=gen(17), backend=be).to(DEVICE)
        x = 0.5 * torch.randn(20, 2, 2, dtype=F64, generator=gen(18)).to(DEVICE)
        res.append(net.simulate(20, inputs=x, state0=net.initial_state(2, random=True, generator=gen(19)).to(DEVICE),
                                return_state=True))
    assert int(res[0][0].sum()) > 5
    assert torch.equal(res[0][0], res[1][0])
    assert_close_rel(res[1][1], res[0][1], 1e-12)
    assert_close_rel(res[1][2], res[0][2], 1e-12)


def test_simulate_in_chunks_and_mean_current(monkeypatch):
    """Chunked simulate equals one chunk; its mean current equals the per-step average of the V update's input."""
    import surroflos.models.balanced as mb

    net = BalancedNetwork(50, 6, n_in=1, dt=5e-4, dtype=F64, generator=gen(20))
    x = 0.5 * torch.randn(40, 2, 1, dtype=F64, generator=gen(21))
    s0 = net.initial_state(2, random=True, generator=gen(22))
    whole = net.simulate(40, inputs=x, state0=s0, return_state=True)
    monkeypatch.setattr(mb, "_SIM_CHUNK_BYTES", 7 * 2 * 100 * 8)  # 7 steps per chunk
    parts = net.simulate(40, inputs=x, state0=s0, return_state=True)
    assert torch.equal(whole[0], parts[0])
    torch.testing.assert_close(parts[1], whole[1], rtol=0, atol=1e-12)
    # independent mean current: u + (b I + bc r) / (1 - a_m), step by step with a dense J
    p = net.params()
    W = torch.zeros(50, 50, dtype=F64).index_put_((torch.arange(50).repeat_interleave(6), net.pre_idx.reshape(-1)),
                                                  net.weight_rec.reshape(-1), accumulate=True)
    I, V = s0[:, :50], s0[:, 50:]
    total = torch.zeros(2, 50, dtype=F64)
    for t in range(40):
        s = (V > 1).double()
        r = s @ W.T
        u = net.drive + x[t] @ net.weight_in.detach().T
        total += u + (p.b * I + p.bc * r) / (1 - p.a_m)
        I, V = p.a_s * I + p.ac * r, p.a_m * (1 - s) * V + p.b * I + p.bc * r + (1 - p.a_m) * u
    torch.testing.assert_close(whole[2], total / 40, rtol=0, atol=1e-9)
    torch.testing.assert_close(parts[2], whole[2], rtol=0, atol=1e-12)


def test_backend_tangent_function(monkeypatch):
    net = BalancedNetwork(20, 3, dtype=F64, generator=gen(23))
    assert net.backend_tangent_function("torch") is None
    if DEVICE == "cpu":
        assert net.backend_tangent_function("auto") is None  # auto = torch on the CPU

    class NoTangent(BalancedNetwork):
        tangent_function = None

    if kb.triton_importable():
        fn = net.to(DEVICE).backend_tangent_function("triton")
        state = net.initial_state(2, random=True, generator=gen(24)).to(DEVICE)
        Q = torch.randn(2, 40, 3, dtype=F64, generator=gen(25)).to(DEVICE)
        x = torch.zeros(2, 0, dtype=F64, device=DEVICE)
        torch.testing.assert_close(fn(x, state, net.params(), Q), balanced_tangent(x, state, net.params(), Q),
                                   rtol=1e-12, atol=1e-12)
        assert NoTangent(20, 3, dtype=F64).to(DEVICE).backend_tangent_function("triton") is None
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    if DEVICE == "cpu":
        with pytest.raises(kb.TritonUnavailableError):
            net.cpu().backend_tangent_function("triton")


# ----------------------------------------------------------------------------------------------
# Half precision inputs (float32 accumulation) and, on CUDA only, inductor
# ----------------------------------------------------------------------------------------------

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
HALF_TOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2}  # a few output roundings


def check_half(dtype, N, K, B, T, k):
    """Triton on half inputs against the PyTorch path on the same inputs (both accumulate in float32)."""
    net, w, u, s0 = make_case(N, K, B, T, dtype=torch.float32, seed=30)
    half = [t.to(dtype) for t in (w, u, s0)]
    res = {be: run_with_grads(lambda w_, u_, s_, be=be: fused(net, w_, u_, s_, be), *half)
           for be in ("torch", "triton")}
    out, ref = res["triton"], res["torch"]
    assert out[0].dtype == dtype and out[1].dtype == dtype and all(g.dtype == dtype for g in out[2])
    assert float((out[0] != ref[0]).float().mean()) < 0.01
    assert_close_rel(out[1].float(), ref[1].float(), HALF_TOL[dtype], "states")
    for a, e in zip(out[2], ref[2]):
        assert_close_rel(a.float(), e.float(), 2 * HALF_TOL[dtype], "grad")
    assert int(ref[0].sum()) > 0
    net_t, w_t, s0_t, Q = tangent_case(N, K, B, k, dtype=torch.float32)
    half_t = [t.to(dtype) for t in (w_t, s0_t, Q)]
    ref_t = tangent_with_grads(balanced_tangent, net_t, *half_t)  # the formula in half precision
    out_t = tangent_with_grads(lambda *a: balanced_tangent_kernel(*a, backend="triton"), net_t, *half_t)
    assert out_t[0].dtype == dtype
    assert_close_rel(out_t[0].float(), ref_t[0].float(), HALF_TOL[dtype], "DQ")
    for a, e in zip(out_t[1], ref_t[1]):
        assert_close_rel(a.float(), e.float(), 2 * HALF_TOL[dtype], "tangent grad")


@requires_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    check_half(dtype, 37, 5, 2, 6, 4)


@cuda_only
@requires_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_cuda_large(dtype):
    check_half(dtype, 300, 40, 4, 8, 8)


@cuda_only
@requires_triton
def test_torch_compile_inductor_cuda():
    net, w, u, s0 = make_case(200, 20, 2, 10, dtype=torch.float32, seed=31)
    pre = net.pre_idx.cuda()

    def f(u_, s_, w_):
        spikes, states = balanced_sequence(u_, s_, w_, pre, **coefficients(net), surrogate=net.surrogate,
                                           backend="triton")
        return spikes.sum() + (states ** 2).mean()

    args = [t.clone().requires_grad_() for t in (u, s0, w)]
    args_c = [t.clone().requires_grad_() for t in (u, s0, w)]
    ref = f(*args)
    out = torch.compile(f, fullgraph=True)(*args_c)
    ops_fwd, ops_grad = sequence_ops(20, 10, 2)  # float32: the compiled graph may reorder; plus the loss's sums
    n = u.numel() + s0.numel()
    assert_within_rounding(out, ref, ops_fwd + n, "loss")
    grads_ref = torch.autograd.grad(ref, args)
    for a, e in zip(torch.autograd.grad(out, args_c), grads_ref):
        assert_within_rounding(a, e, ops_grad, "grad", magnitude=scale_of(*grads_ref))
