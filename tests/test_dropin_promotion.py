"""dtype promotion of the Norse and snnTorch drop-ins, each case against the real library on the same inputs.

Norse 1.1 computes every step with PyTorch's ordinary type promotion: boolean and integer inputs, integer
(0-dim) states, one-element or per-neuron parameter tensors of another float dtype and states of another
dtype all promote instead of raising, and Norse's default states are float32. ``surroflos.norse`` must
give the same result dtypes and the same numbers (exactly in float64; in float32 within a few ulps of
the values' magnitude per step). snnTorch 1.0's layers promote the same way for the membrane; its
spikes are always float32 (ours keep the state's dtype, a documented difference, so spikes are compared
by value). ``repr`` of a drop-in must equal Norse's for the same module.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import norse.torch as nt

import snntorch as snn

import surroflos.norse as sn
import surroflos.snntorch as ss

pytestmark = pytest.mark.numerics  # float32 drop-ins against Norse/snnTorch (docs/TESTING.md)

F32, F64 = torch.float32, torch.float64
T, B, N = 6, 3, 4


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def drive(seed: int, dtype=F32, shape=(T, B, N), scale: float = 3.0) -> torch.Tensor:
    """Inputs that make the default Norse neurons spike within a few steps (Norse's time constants)."""
    x = torch.rand(*shape, generator=gen(seed), dtype=F64) * scale * 100.0
    return x.to(dtype)


def spikes(seed: int, dtype, shape=(T, B, N)) -> torch.Tensor:
    """Boolean / integer spike trains (Norse's own tests feed boolean tensors)."""
    s = torch.rand(*shape, generator=gen(seed)) > 0.4
    return s if dtype is torch.bool else (s.to(dtype) * 400).to(dtype)


def tolerance(ref: torch.Tensor, steps: int) -> float:
    """float32 rounding budget: a few ulps of the largest magnitude, accumulated over the steps."""
    eps = torch.finfo(ref.dtype).eps if ref.is_floating_point() else torch.finfo(F32).eps
    scale = float(ref.detach().abs().max()) if ref.numel() else 1.0
    return 4.0 * eps * max(scale, 1.0) * max(steps, 1)


def assert_same(ours, ref, steps: int = T, what: str = "", exact64: bool = True) -> None:
    """Same type, dtypes and shapes; values equal exactly in float64 (unless ``exact64`` is False), within
    ``tolerance`` otherwise."""
    if ref is None:
        assert ours is None, what
        return
    if isinstance(ref, (tuple, list)):
        assert type(ours) is type(ref), f"{what}: {type(ours).__name__} != {type(ref).__name__}"
        assert len(ours) == len(ref), what
        names = getattr(ref, "_fields", range(len(ref)))
        for name, a, b in zip(names, ours, ref):
            assert_same(a, b, steps, f"{what}.{name}", exact64)
        return
    assert ours.dtype == ref.dtype, f"{what}: dtype {ours.dtype}, Norse/snnTorch gives {ref.dtype}"
    ours, ref = torch.broadcast_tensors(ours.detach(), ref.detach())
    if ref.dtype == F64 and exact64:
        assert torch.equal(ours, ref), f"{what}: max |diff| {float((ours - ref).abs().max())}"
    else:
        torch.testing.assert_close(ours, ref, rtol=0.0, atol=tolerance(ref, steps), msg=lambda m: f"{what}: {m}")


def norse_box_sequence(p, x, state=None, dt=1e-3):
    """Norse has no LIFBox: the reference is its LIFBoxCell stepped over time."""
    cell = nt.LIFBoxCell(p, dt=dt)
    out = []
    for t in range(x.shape[0]):
        z, state = cell(x[t], state)
        out.append(z)
    return torch.stack(out), state


# ----------------------------------------------------------------------------------------------
# Norse: boolean and integer inputs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bool, torch.int64, torch.uint8])
def test_norse_lif_accepts_bool_and_integer_input(dtype):
    x = spikes(1, dtype)
    p = nt.LIFParameters()
    assert_same(sn.LIFCell(p)(x[0]), nt.LIFCell(p)(x[0]), 1, "LIFCell")
    ours, ref = sn.LIF(p)(x), nt.LIF(p)(x)
    assert ours[1].v.dtype == F32 and ours[1].i.dtype == F32  # as Norse's test_lif_datatype asserts
    assert_same(ours, ref, T, "LIF")
    assert ref[0].sum() > 0  # the test drives spikes
    # Norse's test_lif_datatype also feeds the sparse version; sparse input is a documented limitation here
    for make, data in ((sn.LIFCell, x[0]), (sn.LIF, x), (sn.LIFBoxCell, x[0]), (sn.LIFBox, x)):
        with pytest.raises(NotImplementedError, match=r"sparse.*to_dense"):
            make()(data.to_sparse())


@pytest.mark.parametrize("dtype", [torch.bool, torch.int32])
def test_norse_lif_box_accepts_bool_and_integer_input(dtype):
    x = spikes(2, dtype)
    p = nt.LIFBoxParameters()
    assert_same(sn.LIFBoxCell(p)(x[0]), nt.LIFBoxCell(p)(x[0]), 1, "LIFBoxCell")
    assert_same(sn.LIFBox(p)(x), norse_box_sequence(p, x), T, "LIFBox")


def test_norse_bool_input_keeps_the_fused_path(monkeypatch):
    """Promoting a boolean input must not cost the fused whole-sequence kernel."""
    from surroflos.kernels import norse_lif
    calls = []
    for name in ("lif_feed_forward_sequence", "lif_box_sequence"):
        original = getattr(norse_lif, name)
        monkeypatch.setattr(norse_lif, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    x = spikes(3, torch.bool)
    assert_same(sn.LIF(backend="torch")(x), nt.LIF()(x), T, "LIF")
    assert_same(sn.LIFBox(backend="torch")(x), norse_box_sequence(nt.LIFBoxParameters(), x), T, "LIFBox")
    assert calls == ["lif_feed_forward_sequence", "lif_box_sequence"]


def test_norse_recurrent_rejects_bool_input_like_norse():
    """F.linear does not promote: Norse's recurrent layers fail on boolean input, ours say why."""
    x = spikes(4, torch.bool, (T, B, 3))
    with pytest.raises(RuntimeError):
        nt.LIFRecurrentCell(3, N)(x[0])
    with pytest.raises(ValueError, match=r"input_weights has dtype torch.float32 but the input has dtype torch.bool"):
        sn.LIFRecurrentCell(3, N)(x[0])
    with pytest.raises(ValueError, match=r"input_weights has dtype torch.float32 but the input has dtype torch.bool"):
        sn.LIFRecurrent(3, N)(x)


# ----------------------------------------------------------------------------------------------
# Norse: states of another dtype
# ----------------------------------------------------------------------------------------------


def test_norse_integer_zero_dim_state():
    """Norse's test_state_sequence_apply_with_state passes LIFFeedForwardState(tensor(0), tensor(0))."""
    x = drive(5)
    state = nt.LIFFeedForwardState(torch.tensor(0), torch.tensor(0))
    p = nt.LIFParameters()
    assert_same(sn.LIFCell(p)(x[0], state), nt.LIFCell(p)(x[0], state), 1, "LIFCell")
    assert_same(sn.LIF(p)(x, state), nt.LIF(p)(x, state), T, "LIF")
    box_state = nt.LIFBoxFeedForwardState(torch.tensor(0))
    bp = nt.LIFBoxParameters()
    assert_same(sn.LIFBox(bp)(x, box_state), norse_box_sequence(bp, x, box_state), T, "LIFBox")


def test_norse_sequential_state_with_integer_state():
    d = torch.ones(10, 1, 1)
    lin = nn.Linear(1, 1)
    ref = nt.SequentialState(lin, nt.LIFCell())
    ours = nt.SequentialState(lin, sn.LIFCell())
    s = [None, nt.LIFFeedForwardState(torch.tensor(0), torch.tensor(0))]
    assert_same(ours(d, s), ref(d, s), 1, "SequentialState")


@pytest.mark.parametrize("x_dtype,state_dtype", [(F64, F32), (F32, F64), (F32, torch.float16)])
def test_norse_state_of_another_float_dtype(x_dtype, state_dtype):
    x = drive(6, x_dtype)
    g = gen(7)
    v0 = (torch.rand(B, N, generator=g) * 0.8).to(state_dtype)
    i0 = (torch.rand(B, N, generator=g) * 5.0).to(state_dtype)
    p = nt.LIFParameters()
    state = nt.LIFFeedForwardState(v0, i0)
    assert_same(sn.LIFCell(p)(x[0], state), nt.LIFCell(p)(x[0], state), 1, "LIFCell")
    assert_same(sn.LIF(p)(x, state), nt.LIF(p)(x, state), T, "LIF")
    bp = nt.LIFBoxParameters()
    assert_same(sn.LIFBox(bp)(x, nt.LIFBoxFeedForwardState(v0)),
                norse_box_sequence(bp, x, nt.LIFBoxFeedForwardState(v0)), T, "LIFBox")


def test_norse_recurrent_state_promotes_for_one_step():
    """A float64 v/i state with float32 weights: Norse's cell promotes (z becomes float64), so its *next*
    step fails in F.linear; the sequence layer says so up front instead of failing at step 2."""
    torch.manual_seed(0)
    ref = nt.LIFRecurrentCell(2, N)
    ours = sn.LIFRecurrentCell(2, N, input_weights=ref.input_weights, recurrent_weights=ref.recurrent_weights)
    x = drive(8, F32, (T, B, 2))
    state = nt.LIFState(z=torch.zeros(B, N), v=torch.zeros(B, N, dtype=F64), i=torch.zeros(B, N, dtype=F64))
    a, b = ours(x[0], state), ref(x[0], state)
    assert_same(a, b, 1, "LIFRecurrentCell")
    with pytest.raises(RuntimeError):
        ref(x[1], b[1])
    with pytest.raises(ValueError, match=r"state.z has dtype torch.float64.*recurrent_weights"):
        ours(x[1], a[1])
    layer = sn.LIFRecurrent(2, N, input_weights=ref.input_weights, recurrent_weights=ref.recurrent_weights)
    with pytest.raises(ValueError, match=r"float64.*F\.linear"):
        layer(x, state)
    assert_same(layer(x[:1], state), nt.LIFRecurrent(2, N, input_weights=ref.input_weights,
                                                     recurrent_weights=ref.recurrent_weights)(x[:1], state), 1,
                "LIFRecurrent T=1")


# ----------------------------------------------------------------------------------------------
# Norse: parameters and inputs of another dtype
# ----------------------------------------------------------------------------------------------


def lif_params(kind: str) -> nt.LIFParameters:
    if kind == "one_element_f32":
        # (v_leak stays 0-dim: Norse's LIF/LIFRecurrent fill their default state with torch.full, which
        # takes no one-element tensor)
        return nt.LIFParameters(tau_syn_inv=torch.tensor([180.0]), tau_mem_inv=torch.tensor([90.0]),
                                v_leak=torch.tensor(0.05), v_th=torch.tensor([0.7]), v_reset=torch.tensor([-0.1]))
    if kind == "zero_dim_f64":
        return nt.LIFParameters(tau_mem_inv=torch.tensor(90.0, dtype=F64), v_th=torch.tensor(0.7, dtype=F64))
    if kind == "per_neuron_f64":
        return nt.LIFParameters(tau_mem_inv=torch.linspace(60.0, 140.0, N, dtype=F64),
                                v_th=torch.linspace(0.6, 1.1, N, dtype=F64))
    if kind == "python_numbers":  # Norse's test_lif_params_non_tensor
        return nt.LIFParameters(tau_mem_inv=2, tau_syn_inv=1, v_leak=0.3, v_th=0.5, v_reset=0, alpha=20)
    raise KeyError(kind)


def test_norse_parameter_promotion():
    for kind, x_dtype in (("one_element_f32", F64), ("per_neuron_f64", F32), ("zero_dim_f64", F32),
                          ("python_numbers", F64)):
        p = lif_params(kind)
        x = drive(9, x_dtype, scale=6.0)
        assert_same(sn.LIFCell(p)(x[0]), nt.LIFCell(p)(x[0]), 1, f"{kind}: LIFCell")
        assert_same(sn.LIF(p)(x), nt.LIF(p)(x), T, f"{kind}: LIF")
        box = nt.LIFBoxParameters(tau_mem_inv=p.tau_mem_inv, v_leak=p.v_leak, v_th=p.v_th, v_reset=p.v_reset)
        if kind == "python_numbers":
            box = box._replace(v_leak=torch.as_tensor(0.3))  # Norse's LIFBoxCell cannot clone a float v_leak
        assert_same(sn.LIFBoxCell(box)(x[0]), nt.LIFBoxCell(box)(x[0]), 1, f"{kind}: LIFBoxCell")
        assert_same(sn.LIFBox(box)(x), norse_box_sequence(box, x), T, f"{kind}: LIFBox")


def test_norse_mixed_dtype_states_match_field_by_field():
    """float32 input with float64 per-neuron v_th: Norse's v and z become float64 while i stays float32."""
    p = nt.LIFParameters(v_th=torch.linspace(0.6, 1.1, N, dtype=F64))
    x = drive(10)
    z, s = nt.LIF(p)(x)
    assert (z.dtype, s.v.dtype, s.i.dtype) == (F64, F64, F32)
    assert_same(sn.LIF(p)(x), (z, s), T, "LIF")


def test_norse_parameter_promotion_gradients_float64():
    """Learnable float32 one-element parameters with a float64 input: values and gradients exact."""
    def run(cls):
        p = nt.LIFParameters(tau_mem_inv=torch.tensor([90.0], requires_grad=True),
                             v_th=torch.tensor([0.7], requires_grad=True))
        x = drive(11, F64, scale=6.0).requires_grad_(True)
        z, s = cls(p)(x)
        loss = (z * torch.linspace(0.5, 1.5, T, dtype=F64).view(T, 1, 1)).sum() + (s.v ** 2).sum() + s.i.sum()
        grads = torch.autograd.grad(loss, (x, p.tau_mem_inv, p.v_th))
        return (z, s), grads
    (out_a, g_a), (out_b, g_b) = run(sn.LIF), run(nt.LIF)
    assert_same(out_a, out_b, T, "LIF")
    for name, a, b in zip(("x", "tau_mem_inv", "v_th"), g_a, g_b):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, rtol=64 * torch.finfo(b.dtype).eps, atol=0.0, msg=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_norse_low_precision_input_promotes_to_float32(dtype):
    """Norse's default state is float32, so a float16/bfloat16 input runs in float32."""
    x = drive(12, dtype)
    p = nt.LIFParameters()
    assert_same(sn.LIFCell(p)(x[0]), nt.LIFCell(p)(x[0]), 1, "LIFCell")
    assert_same(sn.LIF(p)(x), nt.LIF(p)(x), T, "LIF")


def test_norse_float64_recurrent_with_one_element_float32_parameters():
    torch.manual_seed(1)
    p = lif_params("one_element_f32")
    ref = nt.LIFRecurrent(2, N, p)
    w_in, w_rec = ref.input_weights.detach().double(), ref.recurrent_weights.detach().double()
    ref = nt.LIFRecurrent(2, N, p, input_weights=w_in, recurrent_weights=w_rec, autapses=True)
    ours = sn.LIFRecurrent(2, N, p, input_weights=w_in, recurrent_weights=w_rec, autapses=True)
    x = drive(13, F64, (T, B, 2), scale=4.0)
    assert_same(ours(x), ref(x), T, "LIFRecurrent")
    cell_ref = nt.LIFRecurrentCell(2, N, p, input_weights=w_in, recurrent_weights=w_rec, autapses=True)
    cell = sn.LIFRecurrentCell(2, N, p, input_weights=w_in, recurrent_weights=w_rec, autapses=True)
    assert_same(cell(x[0]), cell_ref(x[0]), 1, "LIFRecurrentCell")


# ----------------------------------------------------------------------------------------------
# Norse: repr
# ----------------------------------------------------------------------------------------------


def repr_cases():
    p = nt.LIFParameters(v_th=torch.as_tensor(0.5), method="triangle", alpha=torch.as_tensor(0.3))
    box = nt.LIFBoxParameters(v_th=0.5, tau_mem_inv=torch.tensor(80.0))  # plain floats stay plain in Norse
    return [
        ("LIFCell", lambda m: m.LIFCell()), ("LIFCell p", lambda m: m.LIFCell(p, dt=2e-3)),
        ("LIF", lambda m: m.LIF()), ("LIF p", lambda m: m.LIF(p, dt=5e-4, record_states=True)),
        ("LIFBoxCell", lambda m: m.LIFBoxCell()), ("LIFBoxCell p", lambda m: m.LIFBoxCell(box, dt=2e-3)),
        ("LIFRecurrentCell", lambda m: m.LIFRecurrentCell(2, 3, p, autapses=True)),
        ("LIFRecurrent", lambda m: m.LIFRecurrent(2, 3, p, dt=2e-3)),
    ]


def test_norse_repr_equals_norse():
    for name, make in repr_cases():
        assert repr(make(sn)) == repr(make(nt)), name
        assert str(make(sn)) == str(make(nt)), name


def test_norse_repr_of_lifbox_and_non_default_backends():
    box = nt.LIFBoxParameters(v_th=0.5)
    assert repr(sn.LIFBox(box)) == f"LIFBox(p={box}, dt=0.001)"  # Norse's SNN format; Norse has no LIFBox
    assert repr(sn.LIF(backend="torch")) == repr(nt.LIF())[:-1] + ", backend='torch')"
    assert repr(sn.LIFRecurrent(2, 3, backend="triton")).endswith("dt=0.001, backend='triton')")
    assert repr(sn.LIFBox(backend="torch")).endswith("dt=0.001, backend='torch')")


# ----------------------------------------------------------------------------------------------
# snnTorch: boolean / integer inputs, float64 inputs with float32 parameters and states
# ----------------------------------------------------------------------------------------------


def snn_kwargs(kind: str, per_neuron: bool, **extra) -> dict:
    kw = dict(beta=torch.full((N,), 0.85) if per_neuron else 0.85,
              threshold=torch.linspace(0.75, 1.25, N) if per_neuron else 1.0)
    if kind in ("Synaptic", "RSynaptic"):
        kw["alpha"] = torch.full((N,), 0.6) if per_neuron else 0.6
    if kind in ("RLeaky", "RSynaptic"):
        kw["linear_features"] = N
    kw.update(extra)
    return kw


STATE_NAMES = {"Leaky": ("mem",), "Synaptic": ("syn", "mem"), "RLeaky": ("spk", "mem"),
               "RSynaptic": ("spk", "syn", "mem")}


def snntorch_loop(layer, x, state):
    """snnTorch's own layer stepped over time with the states passed explicitly; outputs stacked."""
    kind = type(layer).__name__
    state = list(state)
    outs = []
    for t in range(x.shape[0]):
        out = layer(x[t], *state)
        if kind in ("Leaky", "Synaptic"):
            state = list(out[1:])
        else:
            state = list(out)
        outs.append(out)
    return tuple(torch.stack(col) for col in zip(*outs))


def pair(kind: str, kw: dict, dtype=None):
    torch.manual_seed(3)
    ref = getattr(snn, kind)(**kw)
    ours = getattr(ss, kind)(**kw)
    ours.load_state_dict(ref.state_dict())
    if dtype is not None:
        ref, ours = ref.to(dtype), ours.to(dtype)
    return ref, ours


def assert_snn_same(ours, ref, what, exact64: bool = True):
    """Spikes by value (snnTorch's are float32, ours carry the state's dtype); states fully."""
    assert len(ours) == len(ref)
    torch.testing.assert_close(ours[0].to(ref[0].dtype), ref[0], rtol=0.0, atol=0.0, msg=f"{what}: spikes")
    for k, (a, b) in enumerate(zip(ours[1:], ref[1:]), 1):
        assert_same(a, b, T, f"{what}[{k}]", exact64)


@pytest.mark.parametrize("kind", ["Leaky", "Synaptic"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_snntorch_integer_and_bool_input(kind, dtype):
    """snnTorch takes integer input (its zero state is zeros_like(x), which promotes at the first step);
    a boolean input only fails there because that zero state is boolean, and works from a float state."""
    kw = snn_kwargs(kind, per_neuron=False)
    ref, ours = pair(kind, kw)
    x = spikes(20, dtype, (T, B, N))
    zeros = [torch.zeros(B, N) for _ in STATE_NAMES[kind]]
    if dtype is torch.bool:
        with pytest.raises(RuntimeError, match="bool"):
            ref(x[0])
        expected = snntorch_loop(ref, x, zeros)
    else:
        expected = snntorch_loop(ref, x, [None] * len(zeros))
    assert_snn_same(ours.sequence(x), expected, kind)
    assert_snn_same(ours.sequence(x, tuple(zeros) if len(zeros) > 1 else zeros[0]), expected, kind)
    assert expected[0].sum() > 0


@pytest.mark.parametrize("kind", ["Leaky", "Synaptic"])
@pytest.mark.parametrize("per_neuron", [False, True])
def test_snntorch_float64_input_with_float32_parameters_and_state(kind, per_neuron):
    """float64 x, float32 parameters (0-dim or per neuron) and a float32 initial state: snnTorch's membrane
    promotes to float64; the result is exact."""
    ref, ours = pair(kind, snn_kwargs(kind, per_neuron))
    x = drive(21, F64, scale=0.006)  # ~0.9 per step: spikes every few steps
    g = gen(22)
    state = [torch.rand(B, N, generator=g) for _ in STATE_NAMES[kind]]
    expected = snntorch_loop(ref, x, state)
    assert expected[-1].dtype == F64
    assert_snn_same(ours.sequence(x, tuple(state) if len(state) > 1 else state[0]), expected, kind)


@pytest.mark.parametrize("kind", ["RLeaky", "RSynaptic"])
def test_snntorch_recurrent_float64_input_with_float32_layer_and_state(kind):
    """float64 x, a float32 layer and a float32 initial state: snnTorch's own layer runs (its atan spikes
    are float32, so its float32 nn.Linear accepts them) and its membrane is float64. Its recurrent term is
    computed in the Linear's float32, ours with the weights converted to float64 (a documented
    difference): the states agree within float32 rounding of that term, the dtypes exactly."""
    ref, ours = pair(kind, snn_kwargs(kind, per_neuron=True))
    x = drive(23, F64, scale=0.006)
    g = gen(24)
    state = [(torch.rand(B, N, generator=g) > 0.5).float()] + [torch.rand(B, N, generator=g)
                                                                for _ in STATE_NAMES[kind][1:]]
    with pytest.raises(RuntimeError):
        snntorch_loop(ref, x, [None] * len(state))  # from its zeros_like(x) state: float64 spikes into F.linear
    expected = snntorch_loop(ref, x, state)
    assert expected[-1].dtype == F64
    got = ours.sequence(x, tuple(state))
    torch.testing.assert_close(got[0].to(F32), expected[0], rtol=0.0, atol=0.0, msg="spikes")
    for k, (a, b) in enumerate(zip(got[1:], expected[1:]), 1):
        assert a.dtype == b.dtype == F64, k
        scale = max(float(b.detach().abs().max()), 1.0)
        torch.testing.assert_close(a, b, rtol=0.0, atol=4 * torch.finfo(F32).eps * scale * T * N, msg=str(k))


def test_snntorch_float32_input_with_float64_per_neuron_beta():
    """A float64 per-neuron beta promotes snnTorch's membrane to float64 (a 0-dim one would not)."""
    kw = dict(beta=torch.linspace(0.7, 0.95, N, dtype=F64), threshold=1.0)
    ref, ours = pair("Leaky", kw)
    x = drive(25, F32, scale=0.006)
    expected = snntorch_loop(ref, x, [None])
    assert expected[1].dtype == F64
    assert_snn_same(ours.sequence(x), expected, "Leaky")
    kw0 = dict(beta=torch.tensor(0.85, dtype=F64), threshold=1.0)
    ref0, ours0 = pair("Leaky", kw0)
    expected0 = snntorch_loop(ref0, x, [None])
    assert expected0[1].dtype == F32
    assert_snn_same(ours0.sequence(x), expected0, "Leaky 0-dim")


def test_snntorch_integer_input_with_float64_zero_dim_beta():
    """A 0-dim float64 beta beats an integer input (PyTorch's category rule): snnTorch's membrane is float64."""
    ref, ours = pair("Leaky", dict(beta=torch.tensor(0.85, dtype=F64), threshold=1.0))
    x = spikes(26, torch.int64)
    expected = snntorch_loop(ref, x, [None])
    assert expected[1].dtype == F64
    assert_snn_same(ours.sequence(x), expected, "Leaky")
