"""Fused multi-step Leaky/Synaptic neurons (surroflos.kernels.lif): Triton kernels (interpreter on CPU)
and the whole-sequence PyTorch path against the naive per-step reference, which itself is checked
against the tested step functions of surroflos.snntorch; fp64 gradcheck; torch.compile; the drop-in
``sequence(backend=...)`` against snnTorch's own loop.
"""

import itertools
import warnings

import pytest
import snntorch as snn
import torch
from snntorch import surrogate as ss

from surroflos import Surrogate
from surroflos import snntorch as S
from surroflos.kernels import backend as kb
from surroflos.kernels import lif
from surroflos.kernels.lif_reference import leaky_reference, synaptic_reference
from surroflos.snntorch import NeuronParams, leaky_step, synaptic_step

from _kernel_checks import DEVICE, assert_close_rel, assert_spikes_match, requires_triton
from _tolerance import assert_within_rounding, recurrence_ops, scale_of
from test_snntorch_dropin import constructor_kwargs, make_inputs, make_pair, reference_loop, run_with_grads

SURROGATE_NAMES = ["fast_sigmoid", "atan", "sigmoid", "triangle", "exponential", "gaussian"]  # ids 0..5
RESETS = ["subtract", "zero", "none"]
KINDS = ["leaky", "synaptic"]

# Triton's interpreter evaluates the sigmoid surrogate's exp(-x) for membranes far from threshold with
# numpy, which warns on the (harmless, correctly handled) overflow to inf.
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning"), pytest.mark.numerics]

# Rounded operations per step of a Leaky/Synaptic neuron: synaptic decay and input, membrane decay and input,
# reset, graded spike factor and the surrogate (<= 8; tolerance policy: tests/_tolerance.py).
STEP_OPS = 8


def sequence_ops(shape) -> tuple[int, int]:
    """(forward, gradient) rounded operations of a [T, ...] sequence: T steps; the backward pass runs them again
    and a scalar parameter's gradient sums over every other element (time, batch and neurons)."""
    steps, numel = shape[0], 1
    for n in shape:
        numel *= n
    return recurrence_ops(steps, STEP_OPS), recurrence_ops(steps, STEP_OPS, backward=True, reduce=numel)


@pytest.fixture
def small_block(monkeypatch):
    """Triton blocks of 16 neurons, so that the test shapes are not multiples of the block."""
    if kb.triton_importable():
        from surroflos.kernels import lif_triton
        monkeypatch.setattr(lif_triton, "BLOCK_OVERRIDE", 16)


# ------------------------------------------------------------------------------------------------
# harness
# ------------------------------------------------------------------------------------------------


def make_case(kind, shape=(9, 3, 7), per_neuron=True, dtype=torch.float32, seed=0):
    """Inputs ``(x, [syn0,] mem0, [alpha,] beta, threshold)`` with a non-degenerate spike rate."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=g, dtype=dtype)  # noqa: E731
    n = shape[-1]
    lo, hi = (-0.1, 0.45) if kind == "synaptic" else (-0.15, 0.8)
    x = rand(*shape) * (hi - lo) + lo
    x[..., 0] += 0.6  # one strongly driven neuron: early spikes and resets
    step = shape[1:]
    if per_neuron:
        beta, thr, alpha = 0.5 + 0.45 * rand(n), 0.8 + 0.4 * rand(n), 0.3 + 0.5 * rand(n)
    else:
        beta, thr, alpha = (torch.tensor(v, dtype=dtype) for v in (0.85, 1.0, 0.7))
    if kind == "leaky":
        return (x, rand(*step) * 1.2, beta, thr)
    return (x, rand(*step) * 0.3, rand(*step) * 1.2, alpha, beta, thr)


def fused(kind, backend, **cfg):
    if kind == "leaky":
        return lambda x, m0, b, th: lif.leaky_sequence(x, m0, b, th, backend=backend, **cfg)
    return lambda x, s0, m0, a, b, th: lif.synaptic_sequence(x, s0, m0, a, b, th, backend=backend, **cfg)


def reference(kind, **cfg):
    if kind == "leaky":
        return lambda x, m0, b, th: leaky_reference(x, m0, b, th, **cfg)
    return lambda x, s0, m0, a, b, th: synaptic_reference(x, s0, m0, a, b, th, **cfg)


def run(fn, inputs, seed=5):
    """Outputs and the gradients of a random linear loss wrt every input."""
    leaves = [t.detach().clone().to(DEVICE).requires_grad_(True) for t in inputs]
    outs = fn(*leaves)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g).to(DEVICE, o.dtype)).sum() for o in outs)
    grads = torch.autograd.grad(loss, leaves)
    return [o.detach() for o in outs], grads


def compare(kind, outs, grads, ref_outs, ref_grads, thr, ops):
    """Spikes equal away from the threshold, states and gradients within the rounding bound of ``ops``
    (forward, gradient) operations, on each gradient's scale or the input gradient's (a parameter's gradient
    sums terms of the input's, and can cancel below them)."""
    ops_fwd, ops_grad = ops
    assert_spikes_match(outs[0], ref_outs[0], ref_outs[-1], thr.detach())
    for i, (a, b) in enumerate(zip(outs[1:], ref_outs[1:])):
        assert_within_rounding(a, b, ops_fwd, what=f"{kind} state {i}")
    names = ["x", "mem0", "beta", "threshold"] if kind == "leaky" else \
        ["x", "syn0", "mem0", "alpha", "beta", "threshold"]
    terms = scale_of(ref_grads[0]) * max(1.0, scale_of(*ref_outs[1:]))
    for name, a, b in zip(names, grads, ref_grads):
        assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape, a.dtype, b.dtype)
        assert_within_rounding(a, b, ops_grad, what=f"{kind} grad {name}", magnitude=max(scale_of(b), terms))


def check_against_reference(kind, backends, cfg, inputs):
    ref_outs, ref_grads = run(reference(kind, **cfg), inputs)
    rate = float((ref_outs[0] != 0).double().mean())
    assert 0.02 < rate < 0.9, f"degenerate test input: spike rate {rate}"
    thr = inputs[-1]
    for backend in backends:
        outs, grads = run(fused(kind, backend, **cfg), inputs)
        compare(kind, outs, grads, ref_outs, ref_grads, thr.to(DEVICE), sequence_ops(inputs[0].shape))


# ------------------------------------------------------------------------------------------------
# the reference is snnTorch's step (surroflos.snntorch.leaky_step / synaptic_step, tested vs snnTorch)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reset_delay", [True, False])
@pytest.mark.parametrize("reset", RESETS)
@pytest.mark.parametrize("kind", KINDS)
def test_reference_equals_tested_step_functions(kind, reset, reset_delay):
    inputs = make_case(kind, dtype=torch.float64)
    sur = Surrogate("sigmoid", 4.0)
    g = 0.7

    def steps(x, *rest):
        if kind == "leaky":
            state, (beta, thr), alpha = rest[:1], rest[1:], None
        else:
            state, (alpha, beta, thr) = rest[:2], rest[2:]
        p = NeuronParams(beta=beta, threshold=thr, graded_spikes_factor=torch.tensor(g, dtype=x.dtype), spike=sur,
                         surrogate=sur, reset=reset, reset_delay=reset_delay, alpha=alpha)
        outs = []
        for t in range(x.shape[0]):
            if kind == "leaky":
                spk, mem = leaky_step(x[t], state[0], p)
                state = (mem,)
            else:
                spk, state = synaptic_step(x[t], tuple(state), p)
            outs.append((spk, *state))
        return [torch.stack(c) for c in zip(*outs)]

    ref_outs, ref_grads = run(steps, inputs)
    outs, grads = run(reference(kind, surrogate=sur, reset=reset, reset_delay=reset_delay, graded=g), inputs)
    for a, b in zip(outs, ref_outs):
        assert torch.equal(a, b)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Triton and PyTorch paths vs the reference
# ------------------------------------------------------------------------------------------------


def _matrix():
    cases = []
    for i, (kind, reset, delay, detach) in enumerate(itertools.product(KINDS, RESETS, (True, False), (True, False))):
        sur = SURROGATE_NAMES[i % 6]
        per_neuron = i % 4 in (0, 3)  # scalar and per-neuron parameters for every kind and reset
        cases.append(pytest.param(kind, reset, delay, detach, sur, per_neuron,
                                  id=f"{kind}-{reset}-{'delay' if delay else 'now'}-"
                                     f"{'detach' if detach else 'grad'}-{sur}-{'pn' if per_neuron else 'sc'}"))
    return cases


@requires_triton
@pytest.mark.parametrize("kind,reset,reset_delay,detach_reset,sur,per_neuron", _matrix())
def test_matrix_triton_torch_reference(kind, reset, reset_delay, detach_reset, sur, per_neuron, small_block):
    # shape (9, 3, 7): M = 21 neurons, not a multiple of the 16-neuron block; fp32 inputs
    cfg = dict(surrogate=sur, reset=reset, reset_delay=reset_delay, detach_reset=detach_reset, graded=0.8)
    inputs = make_case(kind, per_neuron=per_neuron)
    check_against_reference(kind, ["torch", "triton"], cfg, inputs)


@requires_triton
@pytest.mark.parametrize("sur", SURROGATE_NAMES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_surrogate_float64(kind, sur, small_block):
    cfg = dict(surrogate=sur, reset="subtract", reset_delay=False, detach_reset=False)
    inputs = make_case(kind, shape=(7, 2, 9), dtype=torch.float64, seed=3)
    check_against_reference(kind, ["torch", "triton"], cfg, inputs)


@requires_triton
@pytest.mark.parametrize("shape", [(1, 4, 5), (8, 1, 5), (6, 37), (5, 2, 3, 4)], ids=["T1", "B1", "flat", "rank4"])
def test_shapes(shape, small_block):
    kind = "synaptic" if len(shape) == 4 else "leaky"
    inputs = make_case(kind, shape=shape, per_neuron=shape != (6, 37), seed=7)
    cfg = dict(surrogate="atan", reset="zero")
    check_against_reference(kind, ["torch", "triton"], cfg, inputs)


@requires_triton
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_python_scalars_and_empty_sequence(backend):
    x = make_case("leaky")[0].to(DEVICE)
    a = lif.leaky_sequence(x, None, 0.85, 1.0, surrogate="atan", backend=backend)
    b = lif.leaky_sequence(x, torch.zeros_like(x[0]), torch.tensor(0.85), torch.tensor([1.0]), surrogate="atan",
                           backend=backend)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    e = torch.zeros(0, 2, 3, device=DEVICE, requires_grad=True)
    m0 = torch.randn(2, 3, device=DEVICE, requires_grad=True)
    out = lif.synaptic_sequence(e, None, m0, 0.5, 0.9, 1.0, surrogate="atan", backend=backend)
    assert all(o.shape == (0, 2, 3) for o in out)
    (gm,) = torch.autograd.grad(sum(o.sum() for o in out), m0, allow_unused=True)
    assert gm is None or not gm.any()


def test_auto_is_torch_on_cpu():
    inputs = make_case("synaptic")
    outs_auto = lif.synaptic_sequence(*inputs, surrogate="gaussian", backend="auto")
    outs_torch = lif.synaptic_sequence(*inputs, surrogate="gaussian", backend="torch")
    for a, b in zip(outs_auto, outs_torch):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# gradcheck (float64): inputs far from threshold and a compact-support surrogate, so that the
# Heaviside is locally constant and the surrogate terms vanish; the finite differences then see
# every other gradient path (decays, reset values, immediate reset, thresholds, initial states).
# ------------------------------------------------------------------------------------------------


def far_case(kind, per_neuron, seed=11):
    """|m - theta| > 1 at every step: x = +-[8, 9], theta = 2.5, small decays (bounded |beta mem|)."""
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64)
    T, B, N = 4, 2, 3
    sign = lambda *s: torch.where(torch.rand(*s, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)  # noqa: E731
    big = lambda *s: sign(*s) * (8 + torch.rand(*s, generator=g, **f64))  # noqa: E731
    small = lambda v: (v + 0.02 * torch.rand(N, generator=g, **f64)) if per_neuron else torch.tensor(v, **f64)  # noqa
    x = big(T, B, N)
    thr = small(2.5)
    if kind == "leaky":
        return (x, big(B, N), small(0.15), thr)
    return (x, big(B, N), big(B, N), small(0.08), small(0.08), thr)


@pytest.mark.parametrize("reset,reset_delay,detach_reset,per_neuron", [
    ("subtract", True, True, False), ("subtract", False, False, True), ("zero", True, False, True),
    ("zero", False, True, False), ("none", False, True, True)])
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_torch(kind, reset, reset_delay, detach_reset, per_neuron):
    inputs = [t.requires_grad_(True) for t in far_case(kind, per_neuron)]
    fn = fused(kind, "torch", surrogate=Surrogate("triangle", 0.7), reset=reset, reset_delay=reset_delay,
               detach_reset=detach_reset, graded=1.3)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8)


@requires_triton
@pytest.mark.parametrize("kind,reset", [("leaky", "zero"), ("synaptic", "subtract")])
def test_gradcheck_triton(kind, reset, small_block):
    inputs = [t.to(DEVICE).requires_grad_(True) for t in far_case(kind, per_neuron=True)]
    fn = fused(kind, "triton", surrogate=Surrogate("triangle", 0.7), reset=reset, reset_delay=False,
               detach_reset=False, graded=1.3)
    # fast mode (random projections of the Jacobian): a few interpreted launches instead of one per input
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, fast_mode=True)


def test_gradcheck_sees_the_spikes():
    # The far-from-threshold inputs do spike and reset (otherwise the gradchecks would miss those paths).
    x, s0, m0, a, b, th = far_case("synaptic", True)
    spk, _, mem = lif.synaptic_sequence(x, s0, m0, a, b, th, surrogate="triangle", reset="zero", backend="torch")
    assert 0.2 < float(spk.mean()) < 0.8
    assert bool((mem == 0).any())  # zero resets happened


# ------------------------------------------------------------------------------------------------
# torch.compile and CUDA-only checks
# ------------------------------------------------------------------------------------------------


def check_compiled_op(kind: str, backend: str) -> None:
    """``torch.compile(fullgraph=True)`` of the op's forward and backward equals the eager op within rounding
    (float32: the same op, traced); shared by the kernel test modules of every backend."""
    inputs = make_case(kind, per_neuron=True)
    fn = fused(kind, backend, surrogate="fast_sigmoid", reset="subtract", reset_delay=False)

    def loss_fn(*args):
        return sum((o * (i + 1)).sum() for i, o in enumerate(fn(*args)))

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    grads = torch.autograd.grad(compiled(*leaves), leaves)
    ref_leaves = [t.clone().requires_grad_(True) for t in inputs]
    ref_grads = torch.autograd.grad(loss_fn(*ref_leaves), ref_leaves)
    ops_grad = sequence_ops(inputs[0].shape)[1]
    for a, b in zip(grads, ref_grads):
        assert_within_rounding(a, b, ops_grad, "grad", magnitude=scale_of(*ref_grads))


@pytest.mark.parametrize("kind", KINDS)
def test_torch_compile_captures_the_op(kind):
    check_compiled_op(kind, "torch")


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@requires_cuda
@requires_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_low_precision_inputs_cuda(kind, dtype):
    inputs = [t.cuda() for t in make_case(kind, shape=(40, 8, 300), per_neuron=True)]
    n_states = 1 if kind == "leaky" else 2
    low = [t.to(dtype) for t in inputs[:1 + n_states]] + inputs[1 + n_states:]  # float32 parameters
    cfg = dict(surrogate="atan", reset="subtract", reset_delay=False)
    outs, grads = run(fused(kind, "triton", **cfg), low)
    assert all(o.dtype == dtype for o in outs) and grads[0].dtype == dtype
    # Both paths accumulate in float32 and differentiate the same rounded trace: they agree.
    ref_outs, ref_grads = run(fused(kind, "torch", **cfg), low)
    assert_spikes_match(outs[0], ref_outs[0], ref_outs[-1].float(), inputs[-1], dtype=dtype)
    for a, b in zip(outs[1:], ref_outs[1:]):
        assert_close_rel(a, b, 1e-2, what="state")
    for a, b in zip(grads, ref_grads):
        assert_close_rel(a, b, 1e-2, what="grad")
    # and the forward is the float32 computation on the same inputs, rounded once
    f32_outs, _ = run(fused(kind, "torch", **cfg), [t.float() for t in low])
    assert_spikes_match(outs[0].float(), f32_outs[0], f32_outs[-1], inputs[-1])
    assert_close_rel(outs[-1].float(), f32_outs[-1], 1e-2, what="mem vs float32")


@requires_cuda
@requires_triton
def test_torch_compile_inductor_cuda():
    inputs = [t.cuda().requires_grad_(True) for t in make_case("synaptic", shape=(20, 4, 130))]
    fn = fused("synaptic", "triton", surrogate="sigmoid", reset="zero")

    def loss_fn(*args):
        return sum(o.square().sum() for o in fn(*args))

    grads = torch.autograd.grad(torch.compile(loss_fn, fullgraph=True)(*inputs), inputs)
    ref = torch.autograd.grad(loss_fn(*inputs), inputs)
    ops_grad = sequence_ops(inputs[0].shape)[1]  # float32, compiled: another order of the same operations
    for a, b in zip(grads, ref):
        assert_within_rounding(a, b, ops_grad, "grad", magnitude=scale_of(*ref))


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


def test_bad_inputs():
    x = torch.rand(5, 2, 3)
    seq = lambda *a, **k: lif.leaky_sequence(*a, **{"surrogate": "atan", **k})  # noqa: E731
    with pytest.raises(TypeError, match="torch.Tensor"):
        seq(x.tolist(), None, 0.9, 1.0)
    with pytest.raises(ValueError, match="floating point"):
        seq(torch.ones(5, 2, 3, dtype=torch.long), None, 0.9, 1.0)
    with pytest.raises(ValueError, match=r"mem0 must have the shape.*\(2, 3\).*\(2, 4\)"):
        seq(x, torch.zeros(2, 4), 0.9, 1.0)
    with pytest.raises(ValueError, match="float64.*float32"):
        seq(x, torch.zeros(2, 3, dtype=torch.float64), 0.9, 1.0)
    for bad in (torch.ones(3, 1), torch.ones(2, 3), torch.ones(4)):
        with pytest.raises(lif.LIFConfigError, match=r"beta must be a scalar or a per-neuron tensor of shape \[3\]"):
            seq(x, None, bad, 1.0)
    with pytest.raises(TypeError, match="threshold must be a number or a tensor"):
        seq(x, None, 0.9, [1.0])
    with pytest.raises(lif.LIFConfigError, match="learnable graded"):
        seq(x, None, 0.9, 1.0, graded=torch.tensor(0.5, requires_grad=True))
    with pytest.raises(lif.LIFConfigError, match="graded=0 with reset_delay=False"):
        seq(x, None, 0.9, 1.0, graded=0.0, reset_delay=False)
    with pytest.raises(ValueError, match="reset must be one of"):
        seq(x, None, 0.9, 1.0, reset="soft")
    with pytest.raises(TypeError, match="reset_delay must be a bool"):
        seq(x, None, 0.9, 1.0, reset_delay=0)
    with pytest.raises(TypeError, match="surrogate must be"):
        seq(x, None, 0.9, 1.0, surrogate=ss.atan())
    with pytest.raises(ValueError, match="unknown surrogate"):
        seq(x, None, 0.9, 1.0, surrogate="heaviside")
    with pytest.raises(ValueError, match="backend must be one of"):
        seq(x, None, 0.9, 1.0, backend="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only rule")
def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(kb.TritonUnavailableError, match="TRITON_INTERPRET=1"):
        lif.leaky_sequence(torch.rand(3, 2), None, 0.9, 1.0, surrogate="atan", backend="triton")


# ------------------------------------------------------------------------------------------------
# drop-in: Leaky.sequence / Synaptic.sequence against snnTorch's own loop
# ------------------------------------------------------------------------------------------------

DROPIN_CASES = [
    ("leaky", dict(reset="subtract", learn=True, per_neuron=True, spike_grad=ss.fast_sigmoid(slope=10))),
    ("leaky", dict(reset="zero", reset_delay=False, learn=True, graded_spikes_factor=0.6)),
    ("synaptic", dict(reset="subtract", reset_delay=False, learn=True, spike_grad=ss.sigmoid(slope=5))),
    ("synaptic", dict(reset="zero", learn=True, per_neuron=True, spike_grad=Surrogate("gaussian", 3.0))),
]


@requires_triton
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("kind,options", DROPIN_CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(DROPIN_CASES)])
def test_sequence_backends_match_snntorch(kind, options, backend, monkeypatch):
    ref, ours = make_pair(kind, constructor_kwargs(kind, **options))
    monkeypatch.setattr(type(ours), "_loop", None)  # the fused path must run, not the loop
    x, st = make_inputs(kind)
    names = ("mem",) if kind == "leaky" else ("syn", "mem")
    state0 = tuple(st[n] for n in names)
    g = torch.Generator().manual_seed(2)
    weights = [torch.randn(x.shape, generator=g) for _ in range(len(names) + 1)]
    ref_out, ref_grads = run_with_grads(ref, lambda l, xx, s: reference_loop(kind, l, xx, s), x, state0, weights)
    out, grads = run_with_grads(ours, lambda l, xx, s: l.sequence(xx, s[0] if len(s) == 1 else s, backend=backend),
                                x, state0, weights)
    assert_spikes_match(out[0], ref_out[0], ref_out[-1], ours.threshold.detach())
    assert 0.02 < float((ref_out[0] != 0).float().mean()) < 0.9
    ops_fwd, ops_grad = sequence_ops(x.shape)  # float32, summed in another order than snnTorch's loop
    for a, b in zip(out[1:], ref_out[1:]):
        assert_within_rounding(a, b, ops_fwd, "state")
    assert set(grads) == set(ref_grads)
    terms = scale_of(ref_grads["x"]) * max(1.0, scale_of(*ref_out[1:]))
    for name, gr in ref_grads.items():
        assert (grads[name] is None) == (gr is None), name
        if gr is not None:
            assert_within_rounding(grads[name], gr, ops_grad, name, magnitude=max(scale_of(gr), terms))


FALLBACKS = {
    "unrecognised spike_grad": (dict(spike_grad=ss.triangular()), "spike_grad"),
    "learnable graded": (dict(graded_spikes_factor=0.5, learn_graded_spikes_factor=True), "graded"),
    "per-channel beta": (dict(beta=torch.tensor([0.8, 0.9]).view(2, 1, 1)), "beta must be a scalar"),
}


@requires_triton
@pytest.mark.parametrize("case", list(FALLBACKS))
def test_unfusable_layers_fall_back_or_raise(case, monkeypatch):
    options, message = FALLBACKS[case]
    ref, ours = make_pair("leaky", dict(dict(beta=0.85, learn_beta=True), **options))
    x = torch.rand(6, 2, 2, 3, 3) * 0.9
    calls = []
    loop = type(ours)._loop
    monkeypatch.setattr(type(ours), "_loop", lambda self, *a: calls.append(1) or loop(self, *a))
    spk, mem = ours.sequence(x, backend="torch")
    assert calls, "the loop should have run"
    ref_spk, ref_mem = reference_loop("leaky", ref, x, (torch.zeros_like(x[0]),))
    assert torch.equal(spk, ref_spk) and torch.equal(mem, ref_mem)
    with pytest.raises(NotImplementedError, match=rf'backend="triton" cannot run this Leaky: .*{message}'):
        ours.sequence(x, backend="triton")


def test_recurrent_layer_without_a_fused_form_refuses_triton():
    # RLeaky runs on the recurrent kernel (tests/test_snntorch_dropin.py); reset "none" has no fused form.
    _, ours = make_pair("rleaky", dict(constructor_kwargs("rleaky"), reset_mechanism="none"))
    with pytest.raises(NotImplementedError, match="none"):
        ours.sequence(torch.rand(4, 2, 5), backend="triton")


def test_sequence_fused_path_leaves_snntorch_layer_usable():
    # isinstance and the single-step forward are untouched; sequence() is still stateless.
    layer = S.Synaptic(alpha=0.6, beta=0.9)
    assert isinstance(layer, snn.Synaptic)
    x = torch.rand(5, 2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spk, syn, mem = layer.sequence(x, backend="torch")
    assert layer.mem.numel() == 0 and spk.shape == syn.shape == mem.shape == x.shape
