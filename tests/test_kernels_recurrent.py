"""Fused recurrent spiking network (surroflos.kernels.recurrent): the Triton kernels (interpreter on CPU)
and the whole-sequence PyTorch op against the SpikingRNN step loop (RecurrentModel.rollout over
lif_step / cuba_step, autograd per operation) -- spikes, states and every gradient -- plus gradcheck,
torch.compile graph capture, the model's backend switch and input validation."""

from __future__ import annotations

import pytest
import torch

from surroflos import surrogate as sg
from surroflos.kernels import backend as kb
from surroflos.kernels.recurrent import spiking_rnn_reference, spiking_rnn_sequence
from surroflos.models import SpikingRNN
from surroflos.models.base import RecurrentModel

from _kernel_checks import DEVICE, assert_close_rel, assert_spikes_match, requires_cpu_kernels, requires_triton
from _tolerance import assert_within_rounding, recurrence_ops, scale_of
from _oracles import spiking_param_defaults

F64 = torch.float64
# The interpreter evaluates the sigmoid surrogate's exp(-scale x) in numpy, which warns where it
# overflows to inf (the formula is built for that: 1 / (1 + inf) = 0).
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"), pytest.mark.numerics]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SURROGATE_NAMES = list(sg.SURROGATES)  # every id 0..5 (fast_sigmoid and superspike share id 0)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_model(neuron="lif", reset="subtract", detach_reset=True, surrogate="atan", per_neuron=False, learn=True,
               N=20, n_in=3, n_out=2, dtype=F64, seed=0, device=DEVICE, **kw) -> SpikingRNN:
    spiking_param_defaults(kw, N, per_neuron)
    model = SpikingRNN(n_in, N, n_out, neuron=neuron, reset=reset, detach_reset=detach_reset, surrogate=surrogate,
                       learn_beta=learn, learn_alpha=learn and neuron == "cuba", learn_threshold=learn, g=2.0,
                       input_scale=1.5, generator=gen(seed), dtype=dtype, **kw)
    with torch.no_grad():
        model.bias.copy_(0.3 * torch.randn(N, generator=gen(seed + 100), dtype=dtype))
        model.readout_layer.bias.copy_(torch.randn(n_out, generator=gen(seed + 101), dtype=dtype))
    return model.to(device)


def run(model: SpikingRNN, x: torch.Tensor, s0: torch.Tensor | None, how: str, seed: int = 5):
    """Rollout by ``how`` ("loop" = the base-class step loop, or a backend) and the gradients of a loss
    on outputs, states and spikes w.r.t. x, W, W_in, b, state0 and the learnable neuron parameters."""
    x = x.detach().clone().requires_grad_(True)
    s0 = None if s0 is None else s0.detach().clone().requires_grad_(True)
    if how == "loop":
        r = RecurrentModel.rollout(model, x, s0)
    else:
        model.backend = how
        r = model.rollout(x, s0)
    g = gen(seed)
    c = [torch.randn(t.shape, generator=g, dtype=t.dtype).to(t.device) for t in r]
    loss = sum((ci * t).sum() for ci, t in zip(c, r))
    names = ["weight_rec", "weight_in", "bias"] + [n for n in ("beta", "alpha", "threshold")
                                                   if isinstance(getattr(model, n), torch.nn.Parameter)]
    leaves = [x] + ([s0] if s0 is not None else []) + [getattr(model, n) for n in names]
    grads = torch.autograd.grad(loss, leaves)
    keys = ["x"] + (["state0"] if s0 is not None else []) + names
    return r, dict(zip(keys, grads))


def check_against_loop(model, x, s0, backends):
    """Each backend against the base-class step loop: spikes equal away from the threshold; states, outputs
    and gradients within the rounding bound (tests/_tolerance.py) of the recurrence: per step the input and
    recurrent dot products (n_in + N terms) and <= 8 elementwise operations, the readout's N more, the backward
    pass as many again plus a weight gradient's sum over time and batch."""
    r_ref, g_ref = run(model, x, s0, "loop")
    N = model.n_hidden
    mem_ref = r_ref.states[..., -N:]
    assert 0 < r_ref.activity.sum().item() < r_ref.activity.numel()  # spikes and silences
    T, B = x.shape[0], x.shape[1]
    per_step = model.n_in + N + 8
    ops_fwd = recurrence_ops(T, per_step) + N
    ops_grad = recurrence_ops(T, per_step, backward=True, reduce=T * B) + N
    terms = scale_of(g_ref["x"]) * max(1.0, scale_of(r_ref.states))  # what a parameter's gradient sums
    for how in backends:
        r, g = run(model, x, s0, how)
        assert_spikes_match(r.activity.detach(), r_ref.activity.detach(), mem_ref.detach(), model.threshold.detach())
        assert_within_rounding(r.states, r_ref.states, ops_fwd, f"{how}: states")
        assert_within_rounding(r.outputs, r_ref.outputs, ops_fwd, f"{how}: outputs")
        for k in g_ref:
            assert_within_rounding(g[k], g_ref[k], ops_grad, f"{how}: d/d{k}", magnitude=max(scale_of(g_ref[k]), terms))
            assert g_ref[k].abs().max() > 0, k
    return r_ref


BACKENDS = ["torch", pytest.param("triton", marks=requires_triton), pytest.param("cpu", marks=requires_cpu_kernels)]


# ----------------------------------------------------------------------------------------------
# Fused paths vs the step loop
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_neuron", [False, True], ids=["scalar", "per_neuron"])
@pytest.mark.parametrize("detach_reset", [True, False], ids=["detached", "attached"])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("neuron", ["lif", "cuba"])
def test_matches_step_loop(neuron, reset, detach_reset, per_neuron, backend):
    # N = 20: two 16-wide blocks, the second one masked. The surrogate cycles through the ids.
    case = (neuron == "cuba") * 8 + (reset == "zero") * 4 + detach_reset * 2 + per_neuron
    surrogate = SURROGATE_NAMES[case % len(SURROGATE_NAMES)]
    model = make_model(neuron, reset, detach_reset, surrogate, per_neuron, N=20, seed=case,
                       readout="leaky" if case % 3 == 0 else "linear")
    x = 1.5 * torch.rand(5, 3, 3, generator=gen(case), dtype=F64).to(DEVICE)
    s0 = model.initial_state(3, random=True, generator=gen(case + 50))
    if neuron == "cuba":
        s0[:, :20] = 0.5 * torch.randn(3, 20, generator=gen(case + 60), dtype=F64).to(DEVICE)
    check_against_loop(model, x, s0, [backend])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("surrogate", SURROGATE_NAMES + [sg.Surrogate("triangle", 1.7)], ids=str)
def test_every_surrogate(surrogate, backend):
    model = make_model("cuba", "subtract", False, surrogate, True, N=20, seed=3)
    x = 1.5 * torch.rand(4, 2, 3, generator=gen(4), dtype=F64).to(DEVICE)
    check_against_loop(model, x, model.initial_state(2, random=True, generator=gen(5)), [backend])


@pytest.mark.parametrize("steps,window", [(1, 2), (3, 1), (2, 4)])
@pytest.mark.parametrize("neuron,reset,detach_reset", [("lif", "subtract", False), ("lif", "zero", True),
                                                        ("cuba", "zero", False), ("cuba", "subtract", True)])
def test_backward_chunks_and_dw_windows(neuron, reset, detach_reset, steps, window, monkeypatch):
    # The PyTorch backward derives surrogate slopes and spikes one chunk of time steps at a time and adds dW
    # one window at a time (so that long sequences keep no second full-length array): chunks of 1, 2 and 3 steps
    # and windows of 1, 2 and 4 steps over T = 7 must give the step loop's numbers at every boundary.
    from surroflos.kernels import recurrent

    B, N = 3, 20
    monkeypatch.setattr(recurrent, "_CHUNK_ELEMS", steps * B * N)
    monkeypatch.setattr(recurrent, "_DW_WINDOW_ELEMS", window * B * N)
    case = steps + 3 * window
    model = make_model(neuron, reset, detach_reset, "atan", True, N=N, seed=case)
    x = 1.5 * torch.rand(7, B, 3, generator=gen(case), dtype=F64)
    check_against_loop(model, x, model.initial_state(B, random=True, generator=gen(case + 1)), ["torch"])


@pytest.mark.parametrize("neuron,reset", [("lif", "subtract"), ("cuba", "zero"), ("cuba", "zero_mem")])
@pytest.mark.parametrize("used", ["spikes", "states"])
def test_one_output_unused(neuron, reset, used):
    # A loss on one output only: the other's gradient reaches the backward as None (no zero array is made);
    # the gradients must equal those of the reference loop with that output's cotangent zero.
    T, B, N = 6, 3, 17
    D = 2 * N if neuron == "cuba" else N
    x_in = torch.randn(T, B, N, generator=gen(1), dtype=F64).requires_grad_(True)
    W = (0.6 * torch.randn(N, N, generator=gen(2), dtype=F64)).requires_grad_(True)
    s0 = (1.5 * torch.rand(B, D, generator=gen(3), dtype=F64)).requires_grad_(True)
    beta = torch.full((N,), 0.85, dtype=F64, requires_grad=True)
    theta = torch.full((N,), 0.9, dtype=F64, requires_grad=True)
    kw = dict(neuron=neuron, beta=beta, alpha=0.7, threshold=theta, surrogate="atan", reset=reset, detach_reset=False)
    leaves = [x_in, W, s0, beta, theta]
    grads = []
    for fn in (spiking_rnn_sequence, spiking_rnn_reference):
        S, U = fn(x_in, W, s0, **kw) if fn is spiking_rnn_reference else fn(x_in, W, s0, backend="torch", **kw)
        out = S if used == "spikes" else U
        c = torch.randn(out.shape, generator=gen(4), dtype=F64)
        grads.append(torch.autograd.grad((c * out).sum(), leaves))
    assert 0 < float(S.detach().sum()) < S.numel()
    for name, g, g_ref in zip(["x_in", "W", "state0", "beta", "threshold"], *grads):
        assert float(g_ref.abs().max()) > 0, name
        assert_close_rel(g, g_ref, 1e-10, name)


@pytest.mark.parametrize("T,B,N", [(1, 1, 5), (3, 1, 17), (1, 4, 20), (2, 33, 18)])
@pytest.mark.parametrize("neuron", ["lif", "cuba"])
def test_edge_shapes(T, B, N, neuron):
    # T = 1, B = 1, N below one 16-wide block, and B = 33 over three 16-row batch blocks.
    reset = "zero" if neuron == "lif" else "subtract"
    model = make_model(neuron, reset, False, "fast_sigmoid", True, N=N, seed=N)
    x = 2.0 * torch.rand(T, B, 3, generator=gen(T + B), dtype=F64).to(DEVICE)
    backends = (["torch"] + (["triton"] if kb.triton_importable() else [])
                + (["cpu"] if DEVICE == "cpu" and kb.cpu_kernels_importable() else []))
    # Membranes uniform in [0, 2.6) (some spike at t = -1, so dW != 0 even for T = 1), synaptic currents N(0, 1).
    s0 = 2.6 * torch.rand(B, model.state_dim, generator=gen(1), dtype=F64)
    if neuron == "cuba":
        s0[:, :N] = torch.randn(B, N, generator=gen(2), dtype=F64)
    check_against_loop(model, x, s0.to(DEVICE), backends)


@requires_triton
def test_sparse_activity_skips_silent_blocks():
    # Neurons 16..31 are held far below threshold: their 16-wide K-block of spikes is all zero at every
    # step, so the forward kernel skips it; results must not change.
    N = 40
    model = make_model("lif", "subtract", True, "atan", True, N=N, seed=7)
    with torch.no_grad():
        model.bias[16:32] = -50.0
    x = 1.5 * torch.rand(6, 3, 3, generator=gen(8), dtype=F64).to(DEVICE)
    r = check_against_loop(model, x, None, ["torch", "triton"])
    assert r.activity[..., 16:32].sum() == 0 and r.activity[..., :16].sum() > 0
    # Proof that the block is skipped, not multiplied by zero: NaN weights from the silent neurons never
    # reach the kernel's states (a dense product would give 0 * NaN = NaN).
    with torch.no_grad():
        model.weight_rec[:, 16:32] = float("nan")
        model.backend = "triton"
        r_nan = model.rollout(x)
    torch.testing.assert_close(r_nan.states, r.states.detach(), rtol=1e-12, atol=1e-12)


def test_float32_matches_loop():
    model = make_model("cuba", "subtract", True, "atan", True, N=20, dtype=torch.float32, seed=9)
    x = 1.5 * torch.rand(6, 3, 3, generator=gen(9)).to(DEVICE)
    backends = ["torch"] + (["triton"] if kb.triton_importable() else [])
    check_against_loop(model, x, model.initial_state(3, random=True, generator=gen(10), dtype=torch.float32),
                       backends)


def test_torch_path_repeats_the_loop_numbers_bit_for_bit():
    # float32, where the one [T*B]-row input GEMM rounds like the per-step ones on this BLAS: the PyTorch
    # path performs the step function's operations in the same order, so the states are identical.
    model = make_model("lif", "subtract", True, "atan", True, N=8, n_in=4, dtype=torch.float32, seed=11)
    x = torch.rand(25, 3, 4, generator=gen(12)).to(DEVICE)
    xin_all = torch.matmul(x, model.weight_in.T)
    if not all(torch.equal(xin_all[t], x[t] @ model.weight_in.T) for t in range(25)):
        pytest.skip("this BLAS rounds the batched input GEMM differently from per-step GEMMs")
    model.backend = "torch"
    with torch.no_grad():
        a, b = model.rollout(x), RecurrentModel.rollout(model, x)
    assert torch.equal(a.states, b.states) and torch.equal(a.activity, b.activity)


# ----------------------------------------------------------------------------------------------
# The op itself: reference loop, gradcheck, missing output gradients, compile
# ----------------------------------------------------------------------------------------------


def op_inputs(neuron, T=4, B=2, N=6, seed=0, requires_grad=True, device=DEVICE):
    D = 2 * N if neuron == "cuba" else N
    g = gen(seed)
    x_in = 1.2 * torch.rand(T, B, N, generator=g, dtype=F64)
    W = 0.8 * torch.randn(N, N, generator=g, dtype=F64)
    s0 = 1.5 * torch.rand(B, D, generator=g, dtype=F64)
    beta = torch.linspace(0.6, 0.9, N, dtype=F64)
    alpha = torch.tensor(0.7, dtype=F64)
    theta = torch.linspace(0.9, 1.2, N, dtype=F64)
    bias = 0.2 * torch.randn(N, generator=g, dtype=F64)
    return [t.to(device).requires_grad_(requires_grad) for t in (x_in, W, s0, beta, alpha, theta, bias)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("neuron", ["lif", "cuba"])
def test_op_equals_reference_loop(neuron, backend):
    # Python-number parameters, b folded into x_in, only the spikes used (no state gradient).
    x_in, W, s0, *_ = op_inputs(neuron, N=19)
    kw = dict(neuron=neuron, beta=0.8, alpha=0.6, threshold=1.0, surrogate="sigmoid", reset="zero", detach_reset=False)
    S_ref, U_ref = spiking_rnn_reference(x_in, W, s0, **kw)
    S, U = spiking_rnn_sequence(x_in, W, s0, backend=backend, **kw)
    assert_spikes_match(S.detach(), S_ref.detach(), U_ref[..., -19:].detach(), 1.0)
    assert_close_rel(U.detach(), U_ref.detach(), 1e-10, "states")
    c = torch.randn(S.shape, generator=gen(1), dtype=F64).to(DEVICE)
    g_ref = torch.autograd.grad((c * S_ref).sum(), [x_in, W, s0])
    g = torch.autograd.grad((c * S).sum(), [x_in, W, s0])
    ops_grad = recurrence_ops(x_in.shape[0], 19 + 8, backward=True, reduce=x_in.shape[0] * x_in.shape[1])
    for a, b, n in zip(g, g_ref, ["x_in", "W", "state0"]):
        assert_within_rounding(a, b, ops_grad, n, magnitude=scale_of(*g_ref))
    with torch.no_grad():  # the no-grad path gives the same numbers
        S2, U2 = spiking_rnn_sequence(x_in, W, s0, backend=backend, **kw)
    assert torch.equal(S2, S) and torch.equal(U2, U)


def _far_from_threshold(neuron, reset, seed):
    """Inputs whose membranes (initial and every step) stay >= 0.08 from the threshold."""
    for s in range(seed, seed + 200):
        args = op_inputs(neuron, T=3, B=2, N=4, seed=s, requires_grad=False)
        x_in, W, s0, beta, alpha, theta, bias = args
        _, U = spiking_rnn_reference(x_in + bias, W, s0, neuron=neuron, beta=beta, alpha=alpha, threshold=theta,
                                     reset=reset)
        mem = torch.cat([s0[None, :, -4:], U[..., -4:]])
        if (mem - theta).abs().min() > 0.08 and 0 < (mem > theta).sum() < mem.numel():
            return [a.requires_grad_(True) for a in args]
    raise AssertionError("no draw kept the membranes away from the threshold")


@pytest.mark.parametrize("neuron,reset,backend", [
    ("lif", "subtract", "torch"), ("lif", "zero", "torch"), ("cuba", "subtract", "torch"), ("cuba", "zero", "torch"),
    pytest.param("lif", "subtract", "triton", marks=requires_triton),
    pytest.param("cuba", "zero", "triton", marks=requires_triton)])
def test_gradcheck(neuron, reset, backend):
    # With membranes away from the threshold the Heaviside is locally constant, and a narrow Gaussian
    # surrogate (sigma' < 1e-30 there) makes the surrogate gradient equal the true one: gradcheck then
    # checks the explicit adjoint of every other path (x_in, W, state0, beta, alpha, threshold, bias).
    args = _far_from_threshold(neuron, reset, seed=10)
    surrogate = sg.Surrogate("gaussian", 150.0)

    def f(x_in, W, s0, beta, alpha, theta, bias):
        return spiking_rnn_sequence(x_in, W, s0, neuron=neuron, beta=beta, alpha=alpha, threshold=theta,
                                    surrogate=surrogate, reset=reset, detach_reset=False, bias=bias, backend=backend)

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-6, fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", ["auto", pytest.param("triton", marks=requires_triton),
                                     pytest.param("cpu", marks=requires_cpu_kernels)])
def test_compile_captures_the_op(backend):
    # fullgraph: the backend resolution and the op (with its fake implementations) trace without breaks.
    x_in, W, s0, beta, alpha, theta, bias = op_inputs("cuba", N=7)

    def f(x_in, W, s0, beta, alpha, theta, bias):
        S, U = spiking_rnn_sequence(x_in, W, s0, neuron="cuba", beta=beta.clamp(0, 1), alpha=alpha,
                                    threshold=theta, surrogate="atan", reset="subtract", bias=bias, backend=backend)
        return (S * 0.5).sum() + U.square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    args = (x_in, W, s0, beta, alpha, theta, bias)
    g_eager = torch.autograd.grad(f(*args), args)
    g_comp = torch.autograd.grad(compiled(*args), args)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_opcheck_registrations():
    # Schema, fake (meta) implementations and autograd registration of both custom ops (AOT dispatch is
    # exercised by test_compile_captures_the_op).
    from surroflos.kernels.recurrent import _rnn_bwd, _rnn_fwd

    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    x_in, W, s0, beta, alpha, theta, bias = op_inputs("cuba", T=3, B=2, N=5, device="cpu")
    vec = [beta, alpha.expand(5), theta, bias]
    flags = (True, False, False, 1, 2.0, False, False)  # cuba, subtract, attached, atan(2), PyTorch, not zero_mem
    torch.library.opcheck(_rnn_fwd, (x_in, W, s0, *vec, *flags), test_utils=checks)
    S, U, bits = (t.detach() for t in _rnn_fwd(x_in, W, s0, *vec, *flags))
    assert bits.dtype == torch.bool and torch.equal(bits, S != 0)
    d = [t.detach() for t in (W, s0, bits, U, beta, alpha.expand(5), theta)]
    for gS, gU in ((torch.rand_like(S), torch.rand_like(U)), (None, torch.rand_like(U)), (torch.rand_like(S), None)):
        torch.library.opcheck(_rnn_bwd, (gS, gU, *d[:4], *d[4:], True, False, False, 1, 2.0, True, True, True, True,
                                         False, False), test_utils=checks)


# ----------------------------------------------------------------------------------------------
# SpikingRNN's backend switch and input validation
# ----------------------------------------------------------------------------------------------


def test_model_backend_attribute_and_fallbacks(monkeypatch):
    assert SpikingRNN(2, 4, 1).backend == "auto"
    model = SpikingRNN(2, 4, 1, backend="torch")
    assert "backend='torch'" in repr(model)
    with pytest.raises(ValueError, match="backend must be one of"):
        SpikingRNN(2, 4, 1, backend="cuda")
    # smooth=True keeps the step loop (the fused op has no primitive forward), whatever the backend.
    smooth = make_model("lif", "subtract", False, "atan", True, N=6, smooth=True, device="cpu")
    x = torch.rand(4, 2, 3, generator=gen(0), dtype=F64)
    smooth.backend = "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with torch.no_grad():
        a, b = smooth.rollout(x), RecurrentModel.rollout(smooth, x)
    assert torch.equal(a.states, b.states) and torch.equal(a.outputs, b.outputs)
    # An explicit "triton" without a way to run the kernels is a clear error, never a silent fallback.
    plain = make_model("lif", N=6, device="cpu")
    plain.backend = "triton"
    with pytest.raises(kb.TritonUnavailableError, match="TRITON_INTERPRET"):
        plain.rollout(x)
    plain.backend = "auto"
    assert plain.rollout(x).states.shape == (4, 2, 6)


def test_invalid_inputs_are_clear_errors():
    x_in, W, s0, *_ = op_inputs("lif", requires_grad=False, device="cpu")
    ok = dict(neuron="lif", backend="torch")
    bad_cases = [
        (dict(x_in=x_in[0]), ValueError, "x_in must have shape"),
        (dict(x_in=x_in.long()), ValueError, "floating point"),
        (dict(W=W[:, :3]), ValueError, "W must have shape"),
        (dict(s0=s0[:1]), ValueError, "state0 must have shape"),
        (dict(W=W.float()), ValueError, "W is torch.float32"),
        (dict(kw=dict(neuron="izhikevich")), ValueError, "neuron must be one of"),
        (dict(kw=dict(reset="soft")), ValueError, "reset must be one of"),
        (dict(kw=dict(backend="gpu")), ValueError, "backend must be one of"),
        (dict(kw=dict(beta=torch.ones(3, dtype=F64))), ValueError, "beta must be a number or a tensor of shape"),
        (dict(kw=dict(threshold=torch.ones(6))), ValueError, "threshold is torch.float32"),
        (dict(kw=dict(beta="0.9")), TypeError, "beta must be a number or a tensor"),
        (dict(kw=dict(bias=torch.zeros(5, dtype=F64))), ValueError, "bias must be a tensor of shape"),
        (dict(kw=dict(neuron="cuba", alpha=None)), ValueError, "state0 must have shape|needs alpha"),
        (dict(kw=dict(surrogate="relu")), ValueError, "unknown surrogate"),
    ]
    for case, exc, match in bad_cases:
        kw = {**ok, **case.get("kw", {})}
        with pytest.raises(exc, match=match):
            spiking_rnn_sequence(case.get("x_in", x_in), case.get("W", W), case.get("s0", s0), **kw)
    s0c = torch.zeros(2, 12, dtype=F64)
    with pytest.raises(ValueError, match="needs alpha"):
        spiking_rnn_sequence(x_in, W, s0c, neuron="cuba", alpha=None, backend="torch")


# ----------------------------------------------------------------------------------------------
# CUDA only (skipped without a GPU): half precision and inductor
# ----------------------------------------------------------------------------------------------


@cuda
@requires_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("neuron", ["lif", "cuba"])
def test_half_precision_triton_vs_torch(neuron, dtype):
    x_in, W, s0, beta, alpha, theta, bias = op_inputs(neuron, T=8, B=5, N=70, device="cuda", requires_grad=False)
    W = W / 3.0
    kw = dict(neuron=neuron, beta=beta, alpha=alpha, threshold=theta, surrogate="atan", reset="subtract")
    half = [t.to(dtype).requires_grad_(True) for t in (x_in, W, s0)]
    S_t, U_t = spiking_rnn_sequence(*half, backend="triton", **{k: (v.to(dtype) if torch.is_tensor(v) else v)
                                                              for k, v in kw.items()})
    ref = [t.to(dtype).float().requires_grad_(True) for t in (x_in, W, s0)]
    S_r, U_r = spiking_rnn_sequence(*ref, backend="torch", **{k: (v.to(dtype).float() if torch.is_tensor(v) else v)
                                                              for k, v in kw.items()})
    assert S_t.dtype == dtype and U_t.dtype == dtype
    # States accumulate in float32 on both paths; spikes may differ only near the threshold.
    differ = (S_t.float() != S_r).float().mean().item()
    assert differ < 0.02
    if differ == 0:
        torch.testing.assert_close(U_t.float(), U_r, rtol=2e-2, atol=2e-2)
        c = torch.randn(U_r.shape, device="cuda")
        g_t = torch.autograd.grad((c.to(dtype) * U_t).sum(), half)
        g_r = torch.autograd.grad((c * U_r).sum(), ref)
        for a, b in zip(g_t, g_r):
            assert_close_rel(a.float(), b, 5e-2)


@cuda
@requires_triton
def test_inductor_compile_on_cuda():
    x_in, W, s0, beta, alpha, theta, bias = op_inputs("lif", N=40, device="cuda")

    def f(x_in, W, s0, theta):
        S, U = spiking_rnn_sequence(x_in, W, s0, neuron="lif", beta=0.9, threshold=theta, backend="auto")
        return S.sum() + U.square().sum()

    compiled = torch.compile(f, fullgraph=True)
    args = (x_in, W, s0, theta)
    g_eager = torch.autograd.grad(f(*args), args)
    g_comp = torch.autograd.grad(compiled(*args), args)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# reset="zero_mem" (cuba with the LIF-style zero reset: Norse's recurrent LIF layer)
# ----------------------------------------------------------------------------------------------


def _zero_mem_loop(x_in, W, s0, beta, alpha, theta, bias, surrogate, detach_reset):
    """An independent per-step loop of syn = alpha syn + x_in + S W^T + b; mem = beta (1 - R) mem + syn."""
    N = x_in.shape[-1]
    syn, mem = s0[:, :N], s0[:, N:]
    spikes, states = [], []
    for t in range(x_in.shape[0]):
        s_prev = surrogate(mem - theta)
        R = s_prev.detach() if detach_reset else s_prev
        syn = alpha * syn + (x_in[t] + s_prev @ W.t() + bias)
        mem = beta * (1.0 - R) * mem + syn
        spikes.append(surrogate(mem - theta))
        states.append(torch.cat([syn, mem], dim=1))
    return torch.stack(spikes), torch.stack(states)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("detach_reset", [True, False], ids=["detached", "attached"])
@pytest.mark.parametrize("T,B,N,per_neuron", [(5, 3, 19, True), (1, 1, 7, False), (4, 1, 17, False)])
def test_zero_mem_matches_loop(T, B, N, per_neuron, detach_reset, backend):
    x_in, W, s0, beta, alpha, theta, bias = op_inputs("cuba", T=T, B=B, N=N, seed=T * 100 + N)
    if not per_neuron:
        beta, theta = (torch.tensor(v, dtype=F64, device=DEVICE).requires_grad_(True) for v in (0.8, 1.0))
    for name in SURROGATE_NAMES:
        surrogate = sg.get(name)
        params = (x_in, W, s0, beta, alpha, theta, bias)
        S_ref, U_ref = _zero_mem_loop(*params, surrogate, detach_reset)
        S, U = spiking_rnn_sequence(x_in, W, s0, neuron="cuba", beta=beta, alpha=alpha, threshold=theta,
                                    surrogate=surrogate, reset="zero_mem", detach_reset=detach_reset, bias=bias,
                                    backend=backend)
        assert_spikes_match(S.detach(), S_ref.detach(), U_ref[..., N:].detach(), theta.detach())
        assert_close_rel(U.detach(), U_ref.detach(), 1e-10, "states")
        c = [torch.randn(t.shape, generator=gen(2), dtype=F64).to(DEVICE) for t in (S, U)]
        g_ref = torch.autograd.grad((c[0] * S_ref).sum() + (c[1] * U_ref).sum(), params)
        g = torch.autograd.grad((c[0] * S).sum() + (c[1] * U).sum(), params)
        ops_grad = recurrence_ops(T, N + 8, backward=True, reduce=T * B * N)
        for a, b, n in zip(g, g_ref, ["x_in", "W", "state0", "beta", "alpha", "theta", "bias"]):
            assert_within_rounding(a, b, ops_grad, f"{name} {n}", magnitude=scale_of(*g_ref))


def test_zero_mem_differs_from_zero_and_needs_cuba():
    # The two zero resets differ whenever a neuron spikes (zero_mem keeps the new synaptic current).
    x_in, W, s0, *_ = op_inputs("cuba", N=5, requires_grad=False)
    kw = dict(neuron="cuba", beta=0.8, alpha=0.6, threshold=1.0, backend="torch")
    S1, U1 = spiking_rnn_sequence(x_in, W, s0, reset="zero", **kw)
    S2, U2 = spiking_rnn_sequence(x_in, W, s0, reset="zero_mem", **kw)
    assert S1.sum() > 0 and not torch.equal(U1, U2)
    with pytest.raises(ValueError, match="zero_mem.*cuba"):
        spiking_rnn_sequence(x_in, W, s0[:, :5], neuron="lif", reset="zero_mem")


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=requires_triton)])
def test_gradcheck_zero_mem(backend):
    args = _far_from_threshold("cuba", "zero_mem", seed=30)
    surrogate = sg.Surrogate("gaussian", 150.0)

    def f(x_in, W, s0, beta, alpha, theta, bias):
        return spiking_rnn_sequence(x_in, W, s0, neuron="cuba", beta=beta, alpha=alpha, threshold=theta,
                                    surrogate=surrogate, reset="zero_mem", detach_reset=False, bias=bias,
                                    backend=backend)

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-6, fast_mode=backend == "triton")


# ----------------------------------------------------------------------------------------------
# backend="cpu": the compiled spike-sparse forward (surroflos.kernels.recurrent.cpu)
# ----------------------------------------------------------------------------------------------


def test_auto_takes_the_cpu_forward_from_n_512(monkeypatch):
    # "auto" on the CPU: the compiled forward for float32/float64 networks of N >= 512, the PyTorch path below
    # and for half precision; "torch" is always the PyTorch path. Which ran is seen by making the kernel raise.
    from surroflos.kernels.recurrent import _implementation

    if not kb.cpu_kernels_importable():
        pytest.skip("numba does not import")
    assert _implementation("auto", torch.zeros(1, 1, 512)) == "cpu"
    assert _implementation("auto", torch.zeros(1, 1, 512, dtype=F64)) == "cpu"
    assert _implementation("auto", torch.zeros(1, 1, 511)) == "torch"
    assert _implementation("auto", torch.zeros(1, 1, 512, dtype=torch.bfloat16)) == "torch"
    assert _implementation("torch", torch.zeros(1, 1, 4096)) == "torch"
    assert _implementation("cpu", torch.zeros(1, 1, 3)) == "cpu"
    from surroflos.kernels.recurrent import cpu as rcpu

    def boom(*a, **k):
        raise RuntimeError("the compiled forward ran")

    monkeypatch.setattr(rcpu, "forward", boom)
    x_in, W, s0 = torch.zeros(2, 1, 512), torch.zeros(512, 512), torch.zeros(1, 512)
    with pytest.raises(RuntimeError, match="compiled forward ran"):
        spiking_rnn_sequence(x_in, W, s0)
    spiking_rnn_sequence(x_in[..., :511], W[:511, :511], s0[:, :511])  # the PyTorch path
    monkeypatch.setenv("SURROFLOS_DISABLE_CPU_KERNELS", "1")
    assert kb.resolve_backend("auto", "cpu", cpu_kernel=True) == "torch"


def test_cpu_backend_errors_name_the_problem():
    with pytest.raises(kb.CpuKernelUnavailableError, match="runs CPU tensors"):
        spiking_rnn_sequence(torch.zeros(2, 1, 3, device="meta"), torch.zeros(3, 3, device="meta"),
                             torch.zeros(1, 3, device="meta"), backend="cpu")


@requires_cpu_kernels
@pytest.mark.parametrize("neuron,reset", [("lif", "subtract"), ("cuba", "zero_mem")])
def test_cpu_forward_float32_agrees_with_torch_and_threads_do_not_matter(neuron, reset):
    # float32 at a size where the compiled forward runs on two threads (rows split between them): the same numbers
    # on 1 and 2 threads (rows are independent), and the PyTorch path's spikes except within rounding of the
    # threshold, its states within the rounding bound of the recurrence.
    T, B, N = 40, 8, 256
    D = 2 * N if neuron == "cuba" else N
    g = gen(11)
    x_in = 0.6 * torch.randn(T, B, N, generator=g) + 0.2
    W = torch.randn(N, N, generator=g) / N ** 0.5
    s0 = torch.rand(B, D, generator=g)
    kw = dict(neuron=neuron, beta=0.9, alpha=0.8, threshold=1.0, reset=reset)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        S1, U1 = spiking_rnn_sequence(x_in, W, s0, backend="cpu", **kw)
        torch.set_num_threads(2)
        S2, U2 = spiking_rnn_sequence(x_in, W, s0, backend="cpu", **kw)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(S1, S2) and torch.equal(U1, U2)
    S_ref, U_ref = spiking_rnn_sequence(x_in, W, s0, backend="torch", **kw)
    assert 0.02 < float(S_ref.mean()) < 0.5
    assert_spikes_match(S1, S_ref, U_ref[..., -N:], 1.0, torch.float32)
    assert_within_rounding(U1, U_ref, recurrence_ops(T, N + 8), "states")
