"""surroflos.snntorch: drop-in snnTorch layers with a whole-sequence path.

The reference is always snnTorch's own class run step by step with the states passed explicitly;
the sequence path must reproduce its spikes exactly and its states and gradients to rounding
(tolerances: tests/_tolerance.py, docs/TESTING.md).

The exact check is done in float64 against snnTorch's own loop (which runs in float64 with a
surroflos.Surrogate spike function, since snnTorch's own surrogates return float32 spikes): states to
1e-12, gradients to 1e-9. In float32 the sequence path adds the same terms in another order than
snnTorch (RLeaky/RSynaptic run on the fused recurrent-network kernel, surroflos.kernels.recurrent,
where it can express them; and BLAS picks its code path by CPU), so float32 results differ from
snnTorch's by rounding, which the surrogate slopes (up to 25) amplify in the gradients. There both are
measured against snnTorch's loop in float64 (the spike function replaced by its dtype-keeping twin)
and ours must be no worse than snnTorch's; where the spike function has no float64 twin (custom
functions), the bound is the worst-case rounding bound eps x magnitude x operations.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import warnings
from unittest import mock

import pytest
import snntorch as snn
import torch
from snntorch import surrogate as ss
from torch import nn

from surroflos import Surrogate
from surroflos import snntorch as S
from surroflos.kernels import recurrent as kernel_rec
from surroflos.models.base import jvp_tangent

from _kernel_checks import DEVICE, requires_cpu_kernels
from _tolerance import (assert_close_to_truth, assert_within_rounding, close_kw, recurrence_ops,
                        rounding_tol, scale_of, threshold_margin)

pytestmark = pytest.mark.numerics

T, B, N = 12, 3, 5

# snnTorch's surrogate closure -> the same function as a dtype-keeping surroflos Surrogate, with which
# snnTorch's own loop runs in float64: the truth the float32 runs are measured against.
_F64_TWINS: dict = {}


def _snn_surrogate(factory, name: str, scale: float):
    def make():
        fn = factory()
        _F64_TWINS[fn] = Surrogate(name, scale)
        return fn
    return make


SURROGATES = {
    "atan": _snn_surrogate(lambda: ss.atan(), "atan", 2.0),
    "fast_sigmoid": _snn_surrogate(lambda: ss.fast_sigmoid(), "fast_sigmoid", 25.0),
    "sigmoid": _snn_surrogate(lambda: ss.sigmoid(), "sigmoid", 25.0),
}
CUSTOM_SLOPES = {
    "atan": _snn_surrogate(lambda: ss.atan(alpha=4.0), "atan", 4.0),
    "fast_sigmoid": _snn_surrogate(lambda: ss.fast_sigmoid(slope=7), "fast_sigmoid", 7.0),
    "sigmoid": _snn_surrogate(lambda: ss.sigmoid(slope=3.0), "sigmoid", 3.0),
}
# The steepest surrogate here is fast_sigmoid(25): sigma'(x) = 1 / (1 + 25 |x|)^2 has |sigma''| <= 50 max sigma'.
# A membrane off by d moves sigma' by up to 50 d relative: how far rounding in the forward pass can move a
# spike gradient (used where the spike function has no float64 twin).
MAX_SURROGATE_CURVATURE = 50.0

KINDS = {
    # kind: (snnTorch class, our class, state names)
    "leaky": (snn.Leaky, S.Leaky, ("mem",)),
    "synaptic": (snn.Synaptic, S.Synaptic, ("syn", "mem")),
    "rleaky": (snn.RLeaky, S.RLeaky, ("spk", "mem")),
    "rsynaptic": (snn.RSynaptic, S.RSynaptic, ("spk", "syn", "mem")),
}


# ------------------------------------------------------------------------------------------------
# harness
# ------------------------------------------------------------------------------------------------


def constructor_kwargs(kind: str, *, reset="subtract", reset_delay=True, learn=False, per_neuron=False,
                       spike_grad=None, one_to_one=False, **extra) -> dict:
    if per_neuron:  # includes values outside [0, 1] so that the clamp matters
        beta = torch.tensor([0.5, 0.9, 1.3, -0.2, 0.7])
        threshold = torch.tensor([1.0, 0.8, 1.2, 1.0, 0.9])
    else:
        beta, threshold = 0.85, 1.0
    kw = dict(beta=beta, threshold=threshold, reset_mechanism=reset, reset_delay=reset_delay, learn_beta=learn,
              learn_threshold=learn, spike_grad=spike_grad)
    if kind in ("synaptic", "rsynaptic"):
        kw.update(alpha=torch.tensor([0.6, 0.8, 1.1, 0.5, 0.3]) if per_neuron else 0.7, learn_alpha=learn)
    if kind in ("rleaky", "rsynaptic"):
        if one_to_one:
            kw.update(all_to_all=False, V=torch.tensor([0.4, -0.3, 0.2, 0.5, -0.1]))
        else:
            kw.update(linear_features=N)
    kw.update(extra)
    return kw


def make_pair(kind: str, kw: dict, seed: int = 0):
    """The snnTorch layer and ours with identical parameters."""
    ref_cls, our_cls, _ = KINDS[kind]
    torch.manual_seed(seed)
    clone = lambda v: v.clone() if isinstance(v, torch.Tensor) else v  # noqa: E731 - no shared storage
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ref_cls(**{k: clone(v) for k, v in kw.items()})
        ours = our_cls(**{k: clone(v) for k, v in kw.items()})
    if isinstance(getattr(ref, "recurrent", None), nn.Linear):
        with torch.no_grad():  # keep membranes where snnTorch's sigmoid backward does not overflow
            ref.recurrent.weight.mul_(0.5)
            ref.recurrent.bias.abs_().mul_(0.3)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def make_inputs(kind: str, seed: int = 1, shape=(T, B, N), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    lo, hi = (-0.1, 0.5) if kind in ("synaptic", "rsynaptic") else (-0.15, 0.8)
    x = torch.rand(shape, generator=g, dtype=dtype) * (hi - lo) + lo
    x[:, :, 0] += 0.6  # one neuron is strongly driven, so spikes and resets happen early
    step = shape[1:]
    state = {"spk": (torch.rand(step, generator=g) < 0.3).to(dtype),
             "syn": torch.rand(step, generator=g, dtype=dtype) * 0.3,
             "mem": torch.rand(step, generator=g, dtype=dtype) * 1.2}
    return x, state


def reference_loop(kind: str, layer, x, state):
    """snnTorch's own step-by-step loop, states passed explicitly; returns what ``sequence`` returns."""
    outs = []
    st = list(state)
    for t in range(x.shape[0]):
        if kind == "leaky":
            spk, st[0] = layer(x[t], st[0])
            outs.append((spk, st[0]))
        elif kind == "synaptic":
            spk, st[0], st[1] = layer(x[t], st[0], st[1])
            outs.append((spk, st[0], st[1]))
        elif kind == "rleaky":
            st[0], st[1] = layer(x[t], st[0], st[1])
            outs.append((st[0], st[1]))
        else:
            st[0], st[1], st[2] = layer(x[t], st[0], st[1], st[2])
            outs.append(tuple(st))
    return tuple(torch.stack(c) for c in zip(*outs))


def run_with_grads(layer, fn, x0, state0, weights):
    x = x0.clone().requires_grad_(True)
    state = tuple(s.clone().requires_grad_(True) for s in state0)
    outs = fn(layer, x, state)
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    named = [(n, p) for n, p in layer.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [x, *state, *(p for _, p in named)], allow_unused=True)
    names = ["x"] + [f"state.{i}" for i in range(len(state))] + [n for n, _ in named]
    return [o.detach() for o in outs], dict(zip(names, grads))


@contextlib.contextmanager
def recurrent_kernel_calls():
    """Records the ``backend`` of every call of the fused recurrent-network kernel inside the block."""
    calls = []
    real = kernel_rec.spiking_rnn_sequence

    def spy(*args, **kwargs):
        calls.append(kwargs.get("backend"))
        return real(*args, **kwargs)

    with mock.patch.object(kernel_rec, "spiking_rnn_sequence", spy):
        yield calls


def check_equivalent(kind: str, kw: dict, *, zero_state: bool = False, seed: int = 0, backend=None,
                     dtype=torch.float32, shape=(T, B, N), tweak=None, expect_kernel=None):
    """``sequence`` against snnTorch's loop; ``expect_kernel``: whether the recurrent kernel must run.

    ``tweak(layer)`` is applied to both layers after construction (e.g. hooks, graded factors).
    """
    ref, ours = make_pair(kind, kw, seed)
    if tweak is not None:
        tweak(ref)
        tweak(ours)
    ref.to(dtype)
    ours.to(dtype)
    ref64 = _float64_twin(ref, kw) if dtype == torch.float32 else None
    x, st = make_inputs(kind, seed + 1, shape=shape, dtype=dtype)
    names = KINDS[kind][2]
    state0 = tuple(torch.zeros_like(st[n]) if zero_state else st[n] for n in names)
    n_out = 2 if kind in ("leaky", "rleaky") else 3
    g = torch.Generator().manual_seed(seed + 2)
    weights = [torch.randn(x.shape, generator=g, dtype=dtype) for _ in range(n_out)]
    options = {} if backend is None else {"backend": backend}

    ref_out, ref_grads = run_with_grads(ref, lambda l, xx, s: reference_loop(kind, l, xx, s), x, state0, weights)
    with recurrent_kernel_calls() as calls:
        our_out, our_grads = run_with_grads(
            ours, lambda l, xx, s: l.sequence(xx, None if zero_state else (s[0] if len(s) == 1 else s), **options),
            x, state0, weights)
    kernel = bool(calls)
    if expect_kernel is not None:
        assert kernel == expect_kernel, f"recurrent kernel {'ran' if kernel else 'did not run'}"
    if kernel and backend in ("torch", "triton", "cpu"):
        assert set(calls) == {backend}

    spk_ref, spk_ours = ref_out[0], our_out[0]
    rate = float((spk_ref > 0.5).float().mean())  # > 0.5: also for graded and smooth "spikes"
    assert 0.02 < rate < 0.9, f"degenerate test input: spike rate {rate}"
    assert torch.equal(spk_ours, spk_ref.to(spk_ours.dtype)), "spikes differ"
    # Rounded operations per step: the recurrent dot product (N terms, or 1 for one-to-one or none), then
    # decay, input, reset, threshold and clamp (<= 6). The backward pass runs them again, and a parameter
    # gradient adds the sum over T x batch terms.
    steps, batch = x.shape[0], x[0].numel() // x.shape[-1]
    per_step = (N if kind in ("rleaky", "rsynaptic") else 1) + 6
    ops_fwd = recurrence_ops(steps, per_step)
    ops_bwd = recurrence_ops(steps, per_step, backward=True, reduce=steps * batch)
    state_scale = scale_of(*ref_out[1:])
    truth = truth_grads = None
    if ref64 is not None:
        truth, truth_grads = run_with_grads(ref64, lambda l, xx, s: reference_loop(kind, l, xx, s), x.double(),
                                            tuple(s.double() for s in state0), [w.double() for w in weights])
        # float32 cannot flip a spike where the float64 membrane keeps further than the rounding bound from
        # the threshold (not checked for graded or smooth spikes, whose values are not 0/1).
        if spk_ref.dtype == torch.float32 and bool(((spk_ref == 0) | (spk_ref == 1)).all()):
            margin = threshold_margin(truth[-1] if kind != "rleaky" else truth[1], ref64.threshold)
            if margin > rounding_tol(torch.float32, state_scale, ops_fwd):
                assert torch.equal(spk_ref, truth[0].to(spk_ref.dtype)), "float32 spikes differ from float64"
    for i, (a, b) in enumerate(zip(our_out[1:], ref_out[1:])):
        if dtype == torch.float64:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=lambda m: f"state output {i + 1}: {m}")
        elif truth is not None:
            assert_close_to_truth(a, b, truth[i + 1], ops_fwd, what=f"state output {i + 1}")
        else:
            assert_within_rounding(a, b, ops_fwd, what=f"state output {i + 1}", magnitude=state_scale)
    if zero_state:  # we passed state=None: there is no initial state to differentiate
        ref_grads = {k: v for k, v in ref_grads.items() if not k.startswith("state.")}
        our_grads = {k: v for k, v in our_grads.items() if not k.startswith("state.")}
    assert set(our_grads) == set(ref_grads)
    # A parameter's gradient is a sum over time and batch of the membrane's adjoint (dL/dx: the input
    # enters the membrane with weight 1) times a state or parameter value; it can cancel to far less than
    # its terms, whose size sets the rounding error.
    grad_terms = scale_of(ref_grads["x"]) * max(1.0, state_scale)
    for name, gr in ref_grads.items():
        go = our_grads[name]
        if gr is None:
            assert go is None, f"{name}: snnTorch has no gradient, we do"
            continue
        assert go is not None, f"{name}: no gradient"
        assert torch.isfinite(gr).all(), f"{name}: snnTorch's gradient is not finite (test inputs too extreme)"
        if dtype == torch.float64:
            torch.testing.assert_close(go, gr, rtol=1e-9, atol=1e-9, msg=lambda m: f"grad {name}: {m}")
        elif truth_grads is not None:
            assert_close_to_truth(go, gr, truth_grads[name], ops_bwd, what=f"grad {name}",
                                  magnitude=max(scale_of(gr), grad_terms))
        else:  # the backward rounding, plus the forward's moved through the surrogate's curvature
            ops = ops_bwd + int(MAX_SURROGATE_CURVATURE * ops_fwd * state_scale)
            assert_within_rounding(go, gr, ops, what=f"grad {name}", magnitude=max(scale_of(gr), grad_terms))
    return ref_grads


def _float64_twin(ref, kw: dict):
    """A float64 copy of the (float32) snnTorch layer ``ref`` with its spike function replaced by the same
    function as a dtype-keeping surroflos Surrogate; ``None`` where the function has no such twin."""
    fn = kw.get("spike_grad")
    if kw.get("surrogate_disable"):
        return None
    if fn is None:
        twin = Surrogate("atan", 2.0)  # snnTorch's default spike_grad: surrogate.atan(alpha=2)
    elif isinstance(fn, Surrogate):
        twin = fn
    else:
        twin = _F64_TWINS.get(fn)
    if twin is None:
        return None
    ref64 = copy.deepcopy(ref).double()
    ref64.spike_grad = twin
    return ref64


# ------------------------------------------------------------------------------------------------
# equivalence with snnTorch
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("per_neuron", [False, True], ids=["scalar", "per_neuron"])
@pytest.mark.parametrize("learn", [False, True], ids=["fixed", "learn"])
@pytest.mark.parametrize("reset_delay", [True, False], ids=["delay", "nodelay"])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("surrogate", list(SURROGATES))
def test_leaky_matches_snntorch(surrogate, reset, reset_delay, learn, per_neuron):
    kw = constructor_kwargs("leaky", reset=reset, reset_delay=reset_delay, learn=learn, per_neuron=per_neuron,
                            spike_grad=SURROGATES[surrogate]())
    grads = check_equivalent("leaky", kw)
    if learn:  # the gradients we compared are real
        assert grads["beta"] is not None and grads["threshold"] is not None
        assert grads["beta"].abs().sum() > 0 and grads["threshold"].abs().sum() > 0


def _subset(kind_seed: int):
    """A representative subset: every surrogate x reset x reset_delay, cycling learn / per-neuron."""
    cases = []
    for i, (sur, reset, delay) in enumerate(itertools.product(SURROGATES, ("subtract", "zero"), (True, False))):
        learn = (i + kind_seed) % 2 == 0
        per_neuron = (i + kind_seed) % 3 == 0
        cases.append(pytest.param(sur, reset, delay, learn, per_neuron,
                                  id=f"{sur}-{reset}-{'delay' if delay else 'nodelay'}-"
                                     f"{'learn' if learn else 'fixed'}-{'pn' if per_neuron else 'sc'}"))
    return cases


@pytest.mark.parametrize("surrogate,reset,reset_delay,learn,per_neuron", _subset(1))
def test_synaptic_matches_snntorch(surrogate, reset, reset_delay, learn, per_neuron):
    kw = constructor_kwargs("synaptic", reset=reset, reset_delay=reset_delay, learn=learn, per_neuron=per_neuron,
                            spike_grad=SURROGATES[surrogate]())
    check_equivalent("synaptic", kw)


@pytest.mark.parametrize("surrogate,reset,reset_delay,learn,per_neuron", _subset(0))
def test_rleaky_matches_snntorch(surrogate, reset, reset_delay, learn, per_neuron):
    kw = constructor_kwargs("rleaky", reset=reset, reset_delay=reset_delay, learn=learn, per_neuron=per_neuron,
                            spike_grad=SURROGATES[surrogate]())
    grads = check_equivalent("rleaky", kw, expect_kernel=reset_delay)  # reset_delay=False: the loop
    assert grads["recurrent.weight"].abs().sum() > 0


@pytest.mark.parametrize("surrogate,reset,reset_delay,learn,per_neuron", _subset(2))
def test_rsynaptic_matches_snntorch(surrogate, reset, reset_delay, learn, per_neuron):
    kw = constructor_kwargs("rsynaptic", reset=reset, reset_delay=reset_delay, learn=learn, per_neuron=per_neuron,
                            spike_grad=SURROGATES[surrogate]())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reset_delay=False warning, tested separately
        grads = check_equivalent("rsynaptic", kw, expect_kernel=True)  # reset_delay is ignored by snnTorch
    assert grads["recurrent.weight"].abs().sum() > 0


@pytest.mark.parametrize("kind", ["rleaky", "rsynaptic"])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_recurrent_one_to_one_matches_snntorch(kind, reset):
    kw = constructor_kwargs(kind, reset=reset, learn=True, one_to_one=True)
    grads = check_equivalent(kind, kw, expect_kernel=True)
    assert grads["V"] is not None and grads["V"].abs().sum() > 0


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("surrogate", list(CUSTOM_SLOPES))
def test_custom_slopes_match_snntorch(kind, surrogate):
    kw = constructor_kwargs(kind, reset="zero", learn=True, spike_grad=CUSTOM_SLOPES[surrogate]())
    check_equivalent(kind, kw, expect_kernel=kind in ("rleaky", "rsynaptic"))


@pytest.mark.parametrize("kind", list(KINDS))
def test_default_spike_grad_and_zero_state(kind):
    # state=None: the fed-back spikes start at zero and carry no gradient into mem0 or the threshold
    check_equivalent(kind, constructor_kwargs(kind, learn=True), zero_state=True,
                     expect_kernel=kind in ("rleaky", "rsynaptic"))


@pytest.mark.parametrize("kind", ["leaky", "synaptic", "rleaky"])
@pytest.mark.parametrize("reset_delay", [True, False])
def test_no_reset_matches_snntorch(kind, reset_delay):
    # small decays: without a reset the membrane would otherwise stay above threshold
    check_equivalent(kind, constructor_kwargs(kind, reset="none", reset_delay=reset_delay, learn=True, beta=0.3,
                                              **({"alpha": 0.3} if kind == "synaptic" else {})),
                     expect_kernel=False)


@pytest.mark.parametrize("reset_delay", [True, False])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_leaky_graded_spikes_factor(reset, reset_delay):
    kw = constructor_kwargs("leaky", reset=reset, reset_delay=reset_delay, learn=True, graded_spikes_factor=0.6,
                            learn_graded_spikes_factor=True)
    grads = check_equivalent("leaky", kw)
    assert grads["graded_spikes_factor"].abs() > 0


def test_output_true_is_supported():
    check_equivalent("leaky", constructor_kwargs("leaky", output=True))


def test_rsynaptic_reset_delay_false_reproduces_snntorch_and_warns():
    # snnTorch 1.0's RSynaptic discards its immediate reset: reset_delay=False behaves like True.
    kw = constructor_kwargs("rsynaptic", reset="subtract", reset_delay=False)
    with pytest.warns(UserWarning, match="reset_delay=False"):
        check_equivalent("rsynaptic", kw, expect_kernel=True)
    ref_true, ours_true = make_pair("rsynaptic", dict(kw, reset_delay=True))
    _, ours_false = make_pair("rsynaptic", kw)
    x, _ = make_inputs("rsynaptic")
    with pytest.warns(UserWarning):
        out_false = ours_false.sequence(x)
    for a, b in zip(out_false, ours_true.sequence(x)):
        assert torch.equal(a, b)


def test_recurrent_conv2d_sequence_matches_snntorch():
    kw = dict(beta=0.8, conv2d_channels=2, kernel_size=3)
    ref, ours = make_pair("rleaky", kw)
    x, st = make_inputs("rleaky", shape=(6, 2, 2, 4, 4))
    state0 = (st["spk"], st["mem"])
    ref_out = reference_loop("rleaky", ref, x, state0)
    our_out = ours.sequence(x, state0)
    assert torch.equal(ref_out[0], our_out[0]) and ref_out[0].any()
    # float32, 6 steps of a 3 x 3 x 2-channel convolution (18 terms) plus <= 6 elementwise operations
    assert_within_rounding(our_out[1], ref_out[1], recurrence_ops(6, 18 + 6), "mem")


# ------------------------------------------------------------------------------------------------
# surrogates
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spike_grad,expected", [
    (ss.atan(), Surrogate("atan", 2.0)),
    (ss.atan(alpha=3), Surrogate("atan", 3.0)),
    (ss.fast_sigmoid(), Surrogate("fast_sigmoid", 25.0)),
    (ss.fast_sigmoid(slope=10), Surrogate("fast_sigmoid", 10.0)),
    (ss.sigmoid(), Surrogate("sigmoid", 25.0)),
    (ss.sigmoid(slope=4.5), Surrogate("sigmoid", 4.5)),
    (Surrogate("gaussian", 3.0), Surrogate("gaussian", 3.0)),
    (ss.straight_through_estimator(), None),
    (ss.triangular(), None),
    (ss.atan(alpha=0.0), None),  # not a valid surroflos scale: snnTorch's own function is used
    (lambda v: (v > 0).float(), None),
])
def test_surrogate_from_spike_grad(spike_grad, expected):
    assert S.surrogate_from_spike_grad(spike_grad) == expected


def test_layer_default_surrogate_is_recognised():
    assert S.Leaky(0.9).params().surrogate == Surrogate("atan", 2.0)
    assert S.RSynaptic(0.5, 0.9, linear_features=3, spike_grad=ss.sigmoid(slope=5)).params().surrogate == \
        Surrogate("sigmoid", 5.0)


def _smooth_spike(v):  # a deliberately non-Heaviside "spike": the fallback must call it as is
    return torch.sigmoid(4.0 * v)


@pytest.mark.parametrize("kind", ["leaky", "rleaky"])
@pytest.mark.parametrize("option", ["ste", "custom_surrogate", "smooth", "surrogate_disable"])
def test_unrecognised_spike_grad_is_called_itself(kind, option):
    if option == "surrogate_disable":
        kw = constructor_kwargs(kind, surrogate_disable=True, learn=True)
    else:
        fn = {"ste": ss.straight_through_estimator(),
              "custom_surrogate": ss.custom_surrogate(lambda inp, grad, out: grad * 0.3 / (1 + inp.abs())),
              "smooth": _smooth_spike}[option]
        kw = constructor_kwargs(kind, spike_grad=fn, learn=True)
    _, ours = make_pair(kind, kw)
    assert ours.params().surrogate is None
    check_equivalent(kind, kw, expect_kernel=False)


def test_surroflos_surrogate_as_spike_grad():
    kw = constructor_kwargs("rsynaptic", spike_grad=Surrogate("gaussian", 2.0), learn=True, reset="zero")
    check_equivalent("rsynaptic", kw, expect_kernel=True)


def test_sigmoid_gradient_is_finite_where_snntorch_overflows():
    # snnTorch's sigmoid backward computes exp(-slope x) / (exp(-slope x) + 1)^2 = inf / inf for
    # slope * (theta - mem) > 88 in float32; the mapped surroflos surrogate stays finite.
    kw = dict(beta=0.5, spike_grad=ss.sigmoid())
    ref, ours = make_pair("leaky", kw)
    x = torch.full((3, 1, 2), -5.0, requires_grad=True)
    spk, mem = reference_loop("leaky", ref, x, (torch.zeros(1, 2),))
    (g_ref,) = torch.autograd.grad(spk.sum(), x)
    spk2, _ = ours.sequence(x)
    (g_ours,) = torch.autograd.grad(spk2.sum(), x)
    assert torch.isnan(g_ref).any()
    assert torch.isfinite(g_ours).all()


# ------------------------------------------------------------------------------------------------
# drop-in: class hierarchy, single step, NIR export, stored state
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_isinstance_and_inherited_forward(kind):
    ref_cls, our_cls, _ = KINDS[kind]
    _, ours = make_pair(kind, constructor_kwargs(kind))
    assert isinstance(ours, ref_cls) and isinstance(ours, snn.SpikingNeuron)
    assert our_cls.forward is ref_cls.forward


@pytest.mark.parametrize("reset_delay", [True, False], ids=["kernel", "loop"])
def test_sequence_leaves_stored_state_alone_and_continues(reset_delay):
    _, ours = make_pair("rleaky", constructor_kwargs("rleaky", reset_delay=reset_delay))
    x, _ = make_inputs("rleaky")
    spk, mem = ours.sequence(x)
    assert ours.mem.numel() == 0 and ours.spk.numel() == 0
    spk1, mem1 = ours.sequence(x[:5])
    spk2, mem2 = ours.sequence(x[5:], (spk1[-1], mem1[-1]))
    assert torch.equal(torch.cat([spk1, spk2]), spk)
    if reset_delay:  # CPU BLAS rounds a GEMM by the alignment of its operands: float32 rounding differences
        assert_within_rounding(torch.cat([mem1, mem2]), mem, recurrence_ops(T, N + 6), "mem")
    else:
        assert torch.equal(torch.cat([mem1, mem2]), mem)


def test_empty_sequence():
    out = S.Synaptic(0.5, 0.9).sequence(torch.zeros(0, 2, 3))
    assert len(out) == 3 and all(o.shape == (0, 2, 3) for o in out)


def test_export_nir_recognises_our_leaky():
    pytest.importorskip("nir")
    pytest.importorskip("nirtorch")
    from snntorch.export_nir import export_to_nir

    net = nn.Sequential(
        nn.Linear(5, 4),
        S.Leaky(beta=torch.full((4,), 0.9), threshold=torch.ones(4), init_hidden=True),
        nn.Linear(4, 3),
        S.Leaky(beta=torch.full((3,), 0.8), threshold=torch.full((3,), 1.5), init_hidden=True, output=True),
    )
    graph = export_to_nir(net, torch.randn(5))
    lifs = {k: v for k, v in graph.nodes.items() if type(v).__name__ == "LIF"}
    assert sorted(lifs) == ["1", "3"]
    torch.testing.assert_close(torch.as_tensor(lifs["3"].v_threshold), torch.full((3,), 1.5))


@pytest.mark.parametrize("kind", ["synaptic", "rleaky", "rsynaptic"])
def test_export_nir_same_graph_as_snntorch(kind):
    pytest.importorskip("nir")
    pytest.importorskip("nirtorch")
    from snntorch.export_nir import export_to_nir

    kw = dict(beta=torch.full((4,), 0.9), threshold=torch.full((4,), 1.2), init_hidden=True)
    if kind != "rleaky":
        kw["alpha"] = torch.full((4,), 0.6)
    if kind != "synaptic":
        kw["linear_features"] = 4
    graphs = []
    for cls in KINDS[kind][:2]:
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graphs.append(export_to_nir(nn.Sequential(nn.Linear(5, 4), cls(**kw)), torch.randn(5)))
    ref, ours = ({k: type(v).__name__ for k, v in g.nodes.items()} for g in graphs)
    assert ours == ref and any(t in ("LIF", "CubaLIF") for t in ours.values())
    for key, node in graphs[1].nodes.items():
        if hasattr(node, "v_threshold"):
            torch.testing.assert_close(torch.as_tensor(node.v_threshold), torch.full((4,), 1.2, dtype=torch.float64),
                                       check_dtype=False)


# ------------------------------------------------------------------------------------------------
# flat-state maps and analytic tangent maps
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("one_to_one", [False, True], ids=["linear", "one_to_one"])
@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("kind", ["rleaky", "rsynaptic"])
def test_tangent_matches_jvp_float64(kind, reset, one_to_one):
    kw = constructor_kwargs(kind, reset=reset, per_neuron=True, one_to_one=one_to_one,
                            spike_grad=ss.fast_sigmoid(slope=5) if one_to_one else None)
    _, layer = make_pair(kind, kw)
    layer = layer.double()
    p = layer.params()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(B, N, generator=g, dtype=torch.float64) * 0.5
    mem = p.threshold + 0.4 * torch.randn(B, N, generator=g, dtype=torch.float64)
    state = mem if kind == "rleaky" else torch.cat([torch.randn(B, N, generator=g, dtype=torch.float64), mem], -1)
    assert state.shape == (B, layer.state_dim)
    Q = torch.randn(B, layer.state_dim, 4, generator=g, dtype=torch.float64)
    ours = layer.tangent_function(x, state, p, Q)
    ref = jvp_tangent(layer.step_function, x, state, p, Q)
    assert ours.shape == Q.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    # The spike (surrogate) part is exercised: removing the recurrence changes the tangent map.
    p0 = p._replace(recurrent_weight=torch.zeros_like(p.recurrent_weight))
    assert (layer.tangent_function(x, state, p0, Q) - ours).abs().max() > 1e-3


@pytest.mark.parametrize("reset", ["subtract", "zero"])
@pytest.mark.parametrize("kind", ["rleaky", "rsynaptic"])
def test_flat_step_rollout_matches_sequence(kind, reset):
    _, layer = make_pair(kind, constructor_kwargs(kind, reset=reset))
    x, _ = make_inputs(kind)
    out = layer.sequence(x)
    p = layer.params()
    state = torch.zeros(B, layer.state_dim)
    # sequence runs the fused kernel: the same float32 values up to rounding (N-term dot product and <= 6
    # more operations per step)
    close = close_kw(torch.float32, scale_of(*out[1:]), recurrence_ops(T, N + 6))
    for t in range(T):
        spk, state = layer.step_function(x[t], state, p)
        assert torch.equal(spk, out[0][t])
        torch.testing.assert_close(state[:, -N:], out[-1][t], **close)
        if kind == "rsynaptic":
            torch.testing.assert_close(state[:, :N], out[1][t], **close)


def test_flat_maps_refuse_what_they_cannot_represent():
    with pytest.raises(NotImplementedError, match="reset_delay=True"):
        S.RLeaky(0.9, linear_features=3, reset_delay=False).step_function
    layer = S.RLeaky(0.9, linear_features=3, spike_grad=ss.straight_through_estimator())
    assert callable(layer.step_function)
    with pytest.raises(NotImplementedError, match="tangent"):
        layer.tangent_function
    with pytest.raises(NotImplementedError, match="nn.Linear"):
        S.RSynaptic(0.5, 0.9, conv2d_channels=2, kernel_size=3).step_function
    with pytest.raises(ValueError, match="scalar one-to-one V"):
        S.RLeaky(0.9, all_to_all=False, V=0.5).state_dim
    assert S.RSynaptic(0.5, 0.9, linear_features=3).state_dim == 6


# ------------------------------------------------------------------------------------------------
# RLeaky / RSynaptic on the fused recurrent kernel
# ------------------------------------------------------------------------------------------------

# snnTorch's default slopes as surroflos surrogates: snnTorch's own layers then run in float64
F64_SURROGATES = {"atan": Surrogate("atan", 2.0), "fast_sigmoid": Surrogate("fast_sigmoid", 25.0),
                  "sigmoid": Surrogate("sigmoid", 25.0)}


def _kernel_cases(backend: str):
    """kind x reset x surrogate; the full per-neuron x recurrence product for "torch", cycled for "triton"."""
    cases = []
    for i, (kind, reset, sur) in enumerate(itertools.product(("rleaky", "rsynaptic"), ("subtract", "zero"),
                                                             F64_SURROGATES)):
        combos = list(itertools.product((False, True), (False, True)))
        if backend == "triton":
            combos = [combos[i % 4]]
        for per_neuron, one_to_one in combos:
            cases.append(pytest.param(kind, reset, sur, per_neuron, one_to_one,
                                      id=f"{kind}-{reset}-{sur}-{'pn' if per_neuron else 'sc'}-"
                                         f"{'o2o' if one_to_one else 'linear'}"))
    return cases


@pytest.mark.parametrize("kind,reset,surrogate,per_neuron,one_to_one", _kernel_cases("torch"))
def test_recurrent_kernel_matches_snntorch_float64_torch(kind, reset, surrogate, per_neuron, one_to_one):
    # snnTorch's own loop in float64 (given spk0, syn0, mem0; spk0 is not H(mem0 - theta) and requires
    # grad): spikes identical, states within 1e-12, every gradient within 1e-9.
    kw = constructor_kwargs(kind, reset=reset, learn=True, per_neuron=per_neuron, one_to_one=one_to_one,
                            spike_grad=F64_SURROGATES[surrogate])
    grads = check_equivalent(kind, kw, backend="torch", dtype=torch.float64, expect_kernel=True)
    for name in ("beta", "threshold", "alpha", "V", "recurrent.weight", "recurrent.bias"):
        if name in grads:  # learnable: a real gradient was compared
            assert grads[name].abs().sum() > 0, name
    assert ("V" in grads) == one_to_one and ("alpha" in grads) == (kind == "rsynaptic")


@pytest.mark.parametrize("kind,reset,surrogate,per_neuron,one_to_one", _kernel_cases("triton"))
def test_recurrent_kernel_matches_snntorch_float64_triton(kind, reset, surrogate, per_neuron, one_to_one):
    kw = constructor_kwargs(kind, reset=reset, learn=True, per_neuron=per_neuron, one_to_one=one_to_one,
                            spike_grad=F64_SURROGATES[surrogate])
    check_equivalent(kind, kw, backend="triton", dtype=torch.float64, expect_kernel=True)


@requires_cpu_kernels
@pytest.mark.parametrize("kind,reset,surrogate,per_neuron,one_to_one", _kernel_cases("triton"))
def test_recurrent_kernel_matches_snntorch_float64_cpu(kind, reset, surrogate, per_neuron, one_to_one):
    # the recurrent op's compiled spike-sparse forward (backend="cpu") under the drop-in, on the cycled subset
    kw = constructor_kwargs(kind, reset=reset, learn=True, per_neuron=per_neuron, one_to_one=one_to_one,
                            spike_grad=F64_SURROGATES[surrogate])
    check_equivalent(kind, kw, backend="cpu", dtype=torch.float64, expect_kernel=True)


@pytest.mark.parametrize("backend", ["torch", "triton", pytest.param("cpu", marks=requires_cpu_kernels)])
@pytest.mark.parametrize("kind,reset,surrogate,per_neuron,one_to_one", [
    ("rleaky", "subtract", "atan", True, False),
    ("rleaky", "zero", "sigmoid", False, True),
    ("rsynaptic", "subtract", "fast_sigmoid", False, False),
    ("rsynaptic", "zero", "atan", True, True),
])
def test_recurrent_kernel_matches_snntorch_float32(kind, reset, surrogate, per_neuron, one_to_one, backend):
    # snnTorch's own surrogate closures in float32 (tolerances: see the module docstring)
    kw = constructor_kwargs(kind, reset=reset, learn=True, per_neuron=per_neuron, one_to_one=one_to_one,
                            spike_grad=SURROGATES[surrogate]())
    check_equivalent(kind, kw, backend=backend, expect_kernel=True)


@pytest.mark.parametrize("kind", ["rleaky", "rsynaptic"])
@pytest.mark.parametrize("backend", ["torch", "triton", pytest.param("cpu", marks=requires_cpu_kernels)])
def test_recurrent_kernel_zero_state_and_batch_shapes(kind, backend):
    # state=None with a learnable threshold: the zero spikes fed back at step 0 carry no gradient
    kw = constructor_kwargs(kind, learn=True, spike_grad=F64_SURROGATES["atan"])
    check_equivalent(kind, kw, backend=backend, dtype=torch.float64, zero_state=True, expect_kernel=True)
    # [T, B1, B2, N]: the leading dimensions are flattened into the batch
    check_equivalent(kind, kw, backend=backend, dtype=torch.float64, shape=(7, 2, 2, N), expect_kernel=True)


def _linear_without_bias(layer):
    torch.manual_seed(3)  # the same weights in both layers
    layer.recurrent = nn.Linear(N, N, bias=False)
    with torch.no_grad():
        layer.recurrent.weight.mul_(0.5)


@pytest.mark.parametrize("kind", ["rleaky", "rsynaptic"])
def test_recurrent_kernel_linear_without_bias(kind):
    kw = constructor_kwargs(kind, learn=True, spike_grad=F64_SURROGATES["atan"])
    grads = check_equivalent(kind, kw, dtype=torch.float64, tweak=_linear_without_bias, expect_kernel=True)
    assert "recurrent.bias" not in grads and grads["recurrent.weight"].abs().sum() > 0


@pytest.mark.parametrize("scenario", ["consistent_constant", "negative_threshold_zero_state"])
@pytest.mark.parametrize("kind", ["rleaky", "rsynaptic"])
def test_recurrent_kernel_initial_spikes(kind, scenario):
    # consistent_constant: spk0 = H(mem0 - theta), nothing in the state requires grad (the kernel's own
    # first step applies as is); negative_threshold_zero_state: snnTorch feeds back spk0 = 0 although
    # H(mem0 - theta) = 1. Against the float64 snnTorch loop.
    negative = scenario == "negative_threshold_zero_state"
    kw = constructor_kwargs(kind, learn=negative, spike_grad=F64_SURROGATES["fast_sigmoid"],
                            **({"threshold": -0.1, "beta": 0.4} if negative else {}))
    ref, ours = make_pair(kind, kw)
    ref.double()
    ours.double()
    x, st = make_inputs(kind, dtype=torch.float64)
    if negative:
        x = x - 0.3
        state = tuple(torch.zeros_like(st["mem"]) for _ in KINDS[kind][2])
    else:
        mem0 = st["mem"]
        spk0 = (mem0 > 1.0).double()
        assert 0 < spk0.sum() < spk0.numel()
        state = (spk0, st["syn"], mem0) if kind == "rsynaptic" else (spk0, mem0)
    x.requires_grad_(True)
    g = torch.Generator().manual_seed(5)
    weights = [torch.randn(x.shape, generator=g, dtype=torch.float64) for _ in state]
    params = [q for q in ours.parameters() if q.requires_grad]
    with recurrent_kernel_calls() as calls:
        out = ours.sequence(x, None if negative else state)
    assert calls == ["auto"]
    ref_out = reference_loop(kind, ref, x, state)
    assert torch.equal(out[0], ref_out[0])
    rate = float(out[0].detach().mean())
    assert 0.05 < rate < 0.95, rate
    for a, b in zip(out[1:], ref_out[1:]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    ours_g = torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, weights)), [x, *params])
    ref_params = [q for q in ref.parameters() if q.requires_grad]
    ref_g = torch.autograd.grad(sum((o * w).sum() for o, w in zip(ref_out, weights)), [x, *ref_params])
    assert len(ours_g) == len(ref_g) == 1 + len(params)
    for a, b in zip(ours_g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("kind", ["rleaky", "rsynaptic"])
def test_recurrent_kernel_short_sequences(kind, steps):
    kw = constructor_kwargs(kind, reset="zero", learn=True, spike_grad=F64_SURROGATES["sigmoid"])
    ref, ours = make_pair(kind, kw)
    ref.double()
    ours.double()
    x, st = make_inputs(kind, shape=(steps, B, N), dtype=torch.float64)
    state = tuple(st[n] for n in KINDS[kind][2])
    with recurrent_kernel_calls() as calls:
        out = ours.sequence(x, state, backend="torch")
    assert calls == ["torch"]
    ref_out = reference_loop(kind, ref, x, state)
    assert torch.equal(out[0], ref_out[0])
    for a, b in zip(out[1:], ref_out[1:]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def _set_graded(layer):
    layer.graded_spikes_factor = torch.tensor(0.6)


def _rec_hook(layer):
    layer.recurrent.register_forward_pre_hook(lambda module, inputs: (inputs[0] * 0.5,))


# kind, constructor options, tweak, words of the NotImplementedError
FALLBACKS = {
    "rleaky-reset-none": ("rleaky", dict(reset="none", beta=0.3), None, "none"),
    "rsynaptic-reset-none": ("rsynaptic", dict(reset="none", beta=0.3, alpha=0.3), None, "none"),
    "rleaky-nodelay": ("rleaky", dict(reset_delay=False), None, "reset_delay=False"),
    "rleaky-graded": ("rleaky", {}, _set_graded, "graded_spikes_factor"),
    "rsynaptic-graded": ("rsynaptic", {}, _set_graded, "graded_spikes_factor"),
    "rleaky-ste": ("rleaky", dict(spike_grad=ss.straight_through_estimator()), None, "spike_grad"),
    "rsynaptic-custom": ("rsynaptic", dict(spike_grad=_smooth_spike), None, "spike_grad"),
    "rleaky-hook": ("rleaky", {}, _rec_hook, "hooks"),
}


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_recurrent_kernel_fallbacks(case):
    # What the kernel cannot express runs snnTorch's semantics on the loop (auto, torch) and is a
    # clear error for backend="triton".
    kind, opts, tweak, words = FALLBACKS[case]
    kw = constructor_kwargs(kind, learn=True, **opts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for backend in ("auto", "torch"):
            check_equivalent(kind, kw, backend=backend, tweak=tweak, expect_kernel=False)
    _, ours = make_pair(kind, kw)
    if tweak is not None:
        tweak(ours)
    x, _ = make_inputs(kind)
    expected = rf"backend=\"triton\" cannot run this {type(ours).__name__}.*{words}"
    with pytest.raises(NotImplementedError, match=expected):
        ours.sequence(x, backend="triton")


def test_recurrent_kernel_fallback_conv2d():
    _, ours = make_pair("rleaky", dict(beta=0.8, conv2d_channels=2, kernel_size=3))
    x, _ = make_inputs("rleaky", shape=(4, 2, 2, 4, 4))
    with recurrent_kernel_calls() as calls:
        ours.sequence(x, backend="torch")
    assert calls == []
    with pytest.raises(NotImplementedError, match="Conv2d"):
        ours.sequence(x, backend="triton")


@pytest.mark.parametrize("kind", ["rleaky", "rsynaptic"])
def test_recurrent_kernel_float64_matches_step_functions(kind):
    # Our own pure step functions (snnTorch's arithmetic; float64, which snnTorch's Linear layers
    # cannot run with its float32 spikes) as the oracle, with snnTorch's surrogate closures.
    kw = constructor_kwargs(kind, reset="subtract", learn=True, per_neuron=True, spike_grad=ss.sigmoid(slope=5.0))
    _, ours = make_pair(kind, kw)
    ours.double()
    x, st = make_inputs(kind, dtype=torch.float64)
    state0 = tuple(st[n] for n in KINDS[kind][2])
    step = S.rleaky_step if kind == "rleaky" else S.rsynaptic_step

    def loop(layer, xx, s):
        p, outs = layer.params(), []
        for t in range(xx.shape[0]):
            spk, s = step(xx[t], s, p)
            outs.append((spk, *s[1:]))
        return tuple(torch.stack(c) for c in zip(*outs))

    weights = [torch.randn(x.shape, dtype=torch.float64) for _ in state0]
    ref_out, ref_grads = run_with_grads(ours, loop, x, state0, weights)
    our_out, our_grads = run_with_grads(ours, lambda l, xx, s: l.sequence(xx, s, backend="torch"), x, state0, weights)
    assert torch.equal(our_out[0], ref_out[0]) and ref_out[0].any()
    for a, b in zip(our_out[1:], ref_out[1:]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for name, gr in ref_grads.items():
        torch.testing.assert_close(our_grads[name], gr, rtol=1e-9, atol=1e-9, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("kind", ["rleaky", "rsynaptic"])
def test_recurrent_kernel_auto_on_the_test_device(kind):
    # backend="auto": the compiled Triton kernels on CUDA machines, the PyTorch path here
    kw = constructor_kwargs(kind, reset="zero", learn=True, per_neuron=True, spike_grad=F64_SURROGATES["atan"])
    ref, ours = make_pair(kind, kw)
    ref.to(DEVICE, torch.float64)
    ours.to(DEVICE, torch.float64)
    x, st = make_inputs(kind, dtype=torch.float64)
    x = x.to(DEVICE).requires_grad_(True)
    state = tuple(st[n].to(DEVICE) for n in KINDS[kind][2])
    with recurrent_kernel_calls() as calls:
        out = ours.sequence(x, state)
    assert calls == ["auto"]
    ref_out = reference_loop(kind, ref, x, state)
    assert torch.equal(out[0], ref_out[0])
    for a, b in zip(out[1:], ref_out[1:]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    g = torch.Generator().manual_seed(4)
    weights = [torch.randn(x.shape, generator=g, dtype=torch.float64).to(DEVICE) for _ in out]
    ours_g = torch.autograd.grad(sum((o * w).sum() for o, w in zip(out, weights)), [x, *ours.parameters()])
    ref_g = torch.autograd.grad(sum((o * w).sum() for o, w in zip(ref_out, weights)), [x, *ref.parameters()])
    for a, b in zip(ours_g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_recurrent_kernel_trains_the_layer_parameters():
    # an optimiser step through sequence() changes exactly what snnTorch's loop changes
    kw = constructor_kwargs("rsynaptic", learn=True, spike_grad=F64_SURROGATES["atan"])
    ref, ours = make_pair("rsynaptic", kw)
    ref.double()
    ours.double()
    x, _ = make_inputs("rsynaptic", dtype=torch.float64)
    for layer, run in ((ref, lambda l: reference_loop("rsynaptic", l, x, (None, None, None))),
                       (ours, lambda l: l.sequence(x))):
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        spk, syn, mem = run(layer)
        ((mem - 0.5) ** 2).mean().backward()
        opt.step()
    for (name, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=lambda m: f"{name}: {m}")


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_backends(kind):
    _, ours = make_pair(kind, constructor_kwargs(kind))
    x, _ = make_inputs(kind)
    for a, b in zip(ours.sequence(x, backend="auto"), ours.sequence(x, backend="torch")):
        assert torch.equal(a, b)
    # the fused kernels (Triton's interpreter on CPU) give the PyTorch path's numbers
    triton_out, torch_out = ours.sequence(x, backend="triton"), ours.sequence(x, backend="torch")
    assert len(triton_out) == len(torch_out) == len(KINDS[kind][2]) + (kind in ("leaky", "synaptic"))
    assert torch.equal(triton_out[0], torch_out[0])
    for a, b in zip(triton_out[1:], torch_out[1:]):  # float32: the same recurrence, rounded in another order
        assert_within_rounding(a, b, recurrence_ops(T, N + 6), "state")
    for bad in ("cuda", "Torch", None):
        with pytest.raises(ValueError, match="backend"):
            ours.sequence(x, backend=bad)


@pytest.mark.parametrize("option,value", [("init_hidden", True), ("inhibition", True),
                                          ("state_quant", lambda m: torch.round(m * 8) / 8)])
def test_unsupported_features_raise(option, value):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # snnTorch warns about inhibition
        layer = S.Leaky(0.9, **{option: value})
    with pytest.raises(NotImplementedError, match=option):
        layer.sequence(torch.rand(4, 2, 3))


def test_reset_mechanism_changed_after_construction_raises():
    layer = S.Leaky(0.9, reset_mechanism="subtract")
    layer.reset_mechanism = "zero"  # snnTorch keeps the subtract state function
    with pytest.raises(NotImplementedError, match="reset_mechanism='zero'"):
        layer.sequence(torch.rand(4, 2, 3))


def test_bad_inputs():
    lif = S.Leaky(0.9)
    syn = S.Synaptic(0.5, 0.9)
    rlif = S.RLeaky(0.9, linear_features=3)
    x = torch.rand(4, 2, 3)
    with pytest.raises(TypeError, match="torch.Tensor"):
        lif.sequence(x.tolist())
    with pytest.raises(ValueError, match=r"\[T, B, \.\.\.\].*\(3,\)"):
        lif.sequence(torch.rand(3))
    assert lif.sequence(torch.ones(4, 2, 3, dtype=torch.long))[1].dtype == torch.float32  # as snnTorch
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(2, 3\).*another batch size"):
        lif.sequence(x, torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"syn.*\(2, 4\)"):
        syn.sequence(x, (torch.zeros(2, 4), torch.zeros(2, 3)))
    assert lif.sequence(x, torch.zeros(2, 3, dtype=torch.float64))[1].dtype == torch.float64  # promotes
    with pytest.raises(ValueError, match="meta"):
        lif.sequence(x, torch.zeros(2, 3, device="meta"))
    with pytest.raises(ValueError, match=r"state=\(spk, mem\)"):
        rlif.sequence(x, torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"state=\(syn, mem\)"):
        syn.sequence(x, (torch.zeros(2, 3),))
    with pytest.raises(TypeError, match="state=mem"):
        lif.sequence(x, (torch.zeros(2, 3),))
    # None entries are zeros
    spk, mem = rlif.sequence(x, (None, torch.zeros(2, 3)))
    for a, b in zip((spk, mem), rlif.sequence(x)):
        assert torch.equal(a, b)
