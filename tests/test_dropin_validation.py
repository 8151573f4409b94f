"""Non-finite neuron parameters are rejected when the drop-in is built, naming the parameter.

snnTorch 1.0 and Norse 1.1 accept NaN / inf parameters and return NaN membranes (checked here against the
libraries themselves). The drop-ins raise a ValueError at construction, where the value is known, and
never check again while running (no host synchronisation per call or per step). Finite values outside
snnTorch's range for ``beta``/``alpha`` are accepted and clamped to [0, 1], as snnTorch does.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch.overrides import TorchFunctionMode

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import norse.torch as nt

import snntorch as snn

import surroflos.norse as sn
import surroflos.snntorch as ss

F64 = torch.float64
NAN, INF = math.nan, math.inf
T, B, N = 5, 2, 3


def drive(dtype=torch.float32, scale: float = 0.6) -> torch.Tensor:
    return torch.rand(T, B, N, generator=torch.Generator().manual_seed(0), dtype=dtype) * scale


# ----------------------------------------------------------------------------------------------
# snnTorch drop-ins
# ----------------------------------------------------------------------------------------------


SNN_LAYERS = {
    "Leaky": dict(beta=0.9),
    "Synaptic": dict(alpha=0.8, beta=0.9),
    "RLeaky": dict(beta=0.9, linear_features=N),
    "RSynaptic": dict(alpha=0.8, beta=0.9, linear_features=N),
}


def bad_values(name: str):
    yield NAN
    yield INF
    yield -INF
    yield torch.tensor([0.5, NAN, 0.7])          # one bad neuron of a per-neuron tensor
    yield torch.tensor(INF, dtype=F64)


def test_snntorch_leaky_nan_beta_gives_nan_in_snntorch_and_raises_here():
    x = drive()
    _, mem = snn.Leaky(beta=NAN)(x[0])
    assert torch.isnan(mem).all()  # snnTorch runs with it
    with pytest.raises(ValueError, match=r"Leaky: beta must be finite, got nan"):
        ss.Leaky(beta=NAN)


@pytest.mark.parametrize("kind", list(SNN_LAYERS))
def test_snntorch_non_finite_parameters_raise_at_construction(kind):
    names = ["beta", "threshold"] + (["alpha"] if "alpha" in SNN_LAYERS[kind] else [])
    if kind == "Leaky":
        names.append("graded_spikes_factor")  # (snnTorch 1.0's other layers do not take it)
    for name in names:
        for value in bad_values(name):
            kw = dict(SNN_LAYERS[kind], **{name: value})
            with pytest.raises(ValueError, match=rf"{kind}: {name} must be finite"):
                getattr(ss, kind)(**kw)
            getattr(snn, kind)(**kw)  # snnTorch itself accepts it


@pytest.mark.parametrize("kind", ["Leaky", "Synaptic"])
def test_snntorch_learnable_non_finite_parameters_raise(kind):
    extra = dict(learn_beta=True, learn_threshold=True)
    if kind == "Synaptic":
        extra["learn_alpha"] = True
    with pytest.raises(ValueError, match="beta must be finite"):
        getattr(ss, kind)(**dict(SNN_LAYERS[kind], beta=torch.tensor([0.9, NAN, 0.9]), **extra))
    with pytest.raises(ValueError, match="threshold must be finite"):
        getattr(ss, kind)(**dict(SNN_LAYERS[kind], threshold=torch.tensor(INF), **extra))


def test_snntorch_one_to_one_gain_must_be_finite():
    for kind in ("RLeaky", "RSynaptic"):
        kw = {k: v for k, v in SNN_LAYERS[kind].items() if k != "linear_features"}
        with pytest.raises(ValueError, match=rf"{kind}: V must be finite"):
            getattr(ss, kind)(**kw, all_to_all=False, V=torch.tensor([1.0, NAN, 1.0]))


@pytest.mark.parametrize("kind,beta,alpha", [("Leaky", 1.5, None), ("Leaky", -0.25, None),
                                             ("Synaptic", 1.2, -0.5), ("Synaptic", 0.8, 3.0)])
def test_snntorch_finite_out_of_range_decay_is_clamped_as_in_snntorch(kind, beta, alpha):
    """snnTorch clamps beta and alpha to [0, 1] in every step; the drop-ins accept them and do the same."""
    kw = dict(beta=beta, threshold=0.5) if alpha is None else dict(alpha=alpha, beta=beta, threshold=0.5)
    ref, ours = getattr(snn, kind)(**kw), getattr(ss, kind)(**kw)
    x = drive(F64)
    state = [torch.zeros(B, N, dtype=F64) for _ in range(1 if alpha is None else 2)]
    outs = []
    for t in range(T):
        out = ref(x[t], *state)
        state = list(out[1:])
        outs.append(out)
    expected = [torch.stack(col) for col in zip(*outs)]
    got = ours.sequence(x)
    for a, b in zip(got[1:], expected[1:]):
        assert a.dtype == b.dtype == F64
        torch.testing.assert_close(a, b, rtol=0.0, atol=8 * torch.finfo(F64).eps * T)
    assert torch.equal(got[0], expected[0].to(F64))
    # ... while the same parameter as NaN is rejected (snnTorch would clamp NaN to NaN)
    with pytest.raises(ValueError, match=f"{kind}: beta must be finite"):
        getattr(ss, kind)(**dict(kw, beta=NAN))


class _Record(TorchFunctionMode):
    """Records the torch functions called (a finiteness check would call isfinite / isnan / all)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


CHECKS = {"isfinite", "isnan", "isinf", "isreal", "nan_to_num"}


@pytest.mark.parametrize("kind", list(SNN_LAYERS))
def test_snntorch_parameters_are_not_checked_while_running(kind):
    """The finiteness check is a construction-time check: running the layer does not repeat it."""
    layer = getattr(ss, kind)(**dict(SNN_LAYERS[kind], learn_beta=True, learn_threshold=True))
    x = drive()
    with _Record() as rec:
        layer.sequence(x)
        layer(x[0])
    assert rec.names and not CHECKS.intersection(rec.names), sorted(CHECKS.intersection(rec.names))
    with _Record() as rec:
        getattr(ss, kind)(**SNN_LAYERS[kind])
    assert "isfinite" in rec.names


# ----------------------------------------------------------------------------------------------
# Norse drop-ins
# ----------------------------------------------------------------------------------------------


LIF_FIELDS = ("tau_syn_inv", "tau_mem_inv", "v_leak", "v_th", "v_reset")
BOX_FIELDS = ("tau_mem_inv", "v_leak", "v_th", "v_reset")

NORSE_MODULES = {
    "LIFCell": (lambda p, **kw: sn.LIFCell(p, **kw), nt.LIFParameters, LIF_FIELDS),
    "LIF": (lambda p, **kw: sn.LIF(p, **kw), nt.LIFParameters, LIF_FIELDS),
    "LIFRecurrentCell": (lambda p, **kw: sn.LIFRecurrentCell(2, N, p, **kw), nt.LIFParameters, LIF_FIELDS),
    "LIFRecurrent": (lambda p, **kw: sn.LIFRecurrent(2, N, p, **kw), nt.LIFParameters, LIF_FIELDS),
    "LIFBoxCell": (lambda p, **kw: sn.LIFBoxCell(p, **kw), nt.LIFBoxParameters, BOX_FIELDS),
    "LIFBox": (lambda p, **kw: sn.LIFBox(p, **kw), nt.LIFBoxParameters, BOX_FIELDS),
}


def test_norse_nan_parameter_gives_nan_in_norse_and_raises_here():
    p = nt.LIFParameters(tau_mem_inv=torch.tensor(NAN))
    _, s = nt.LIF(p)(drive())
    assert torch.isnan(s.v).all()  # Norse runs with it
    with pytest.raises(ValueError, match=r"LIF: p.tau_mem_inv must be finite, got nan"):
        sn.LIF(p)


@pytest.mark.parametrize("module", list(NORSE_MODULES))
def test_norse_non_finite_parameters_raise_at_construction(module):
    make, params, fields = NORSE_MODULES[module]
    for field in fields:
        for value in (torch.tensor(NAN), torch.tensor(INF, dtype=F64), -INF, torch.tensor([1.0, NAN, 1.0])):
            p = params(**{field: value})
            with pytest.raises(ValueError, match=rf"{module}: p.{field} must be finite"):
                make(p)
    with pytest.raises(ValueError, match=rf"{module}: dt must be finite"):
        make(params(), dt=NAN)
    with pytest.raises(ValueError, match=rf"{module}: p.alpha must be finite"):
        make(params(method="triangle", alpha=torch.tensor(INF)))


def test_norse_unused_alpha_is_not_rejected():
    """Norse's SuperSpike ignores alpha; a NaN there changes nothing and stays accepted, as in Norse."""
    p = nt.LIFParameters(alpha=torch.tensor(NAN))
    x = drive(scale=300.0)
    z_ref, s_ref = nt.LIF(p)(x)
    z, s = sn.LIF(p)(x)
    assert torch.equal(z, z_ref) and torch.equal(s.v, s_ref.v)
    with pytest.raises(ValueError, match="p.v_th must be finite"):
        sn.LIF(p._replace(v_th=torch.tensor(NAN)))


@pytest.mark.parametrize("module", list(NORSE_MODULES))
def test_norse_parameters_are_not_checked_while_running(module):
    make, params, fields = NORSE_MODULES[module]
    p = params(**{f: getattr(params(), f).clone().requires_grad_(True) for f in fields})
    layer = make(p)
    x = drive(scale=300.0)
    x = x if "Recurrent" not in module else x[..., :2]
    with _Record() as rec:
        layer(x if module in ("LIF", "LIFBox", "LIFRecurrent") else x[0])
    assert rec.names and not CHECKS.intersection(rec.names), sorted(CHECKS.intersection(rec.names))
    with _Record() as rec:
        make(p)
    assert "isfinite" in rec.names
