"""Per-consumer NIR files (issue 15): each form runs exactly in the consumer's own modules, refusals name the reason
and the exact alternative, and the CLI's --consumer.

Exactness is checked in float64: the consumer's own importer builds its modules from the file, they are cast to
float64 (parameters included: ``to_float64`` also converts Norse's parameter tuples) and stepped with float64
input; then the spikes must be identical and the outputs agree to ``EXACT_RTOL_F64``. Each form computes the
model's update in another order (``beta = 1 - dt'/tau'`` recomputed, scales folded into weights), so float64
rounding may move a membrane by ~1e-15: the tests assert that the model's membranes keep a margin of at least
1e-9 from the threshold, so no spike can flip. The float32 runs (what ``verify`` does by default) are checked
with the same margin argument against the float32 rounding bound.
"""

import contextlib
import copy
import io
import warnings

import nir
import numpy as np
import pytest
import torch
from torch import nn

import surroflos
from surroflos.export import ConsumerRefusal, from_nir, metadata_of, simulate, to_nir, verify, write
from surroflos.export.to_nir import graph_inputs, run_model, to_float64
from surroflos.export.verify import _record, _spiking_names
from surroflos.norse import LIFBoxCell, LIFBoxParameters, LIFCell, LIFParameters, LIFRecurrentCell
from surroflos.snntorch import Leaky, RLeaky, Synaptic

from _tolerance import EXACT_RTOL_F64, exact_tol, recurrence_ops, rounding_tol, scale_of  # noqa: E402

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def _models():
    """(name, model, dt, input scale, steps): the networks of issue 15 that NIR's neurons express exactly."""
    yield "lif-zero", surroflos.SpikingRNN(3, 16, 2, neuron="lif", reset="zero", g=2.0, generator=gen(6), dtype=F64), \
        1e-3, 2.0, 60
    yield "feedforward", nn.Sequential(nn.Linear(3, 8), Leaky(beta=0.8, reset_mechanism="zero"),
                                       nn.Linear(8, 2)).double(), 1e-3, 2.0, 60
    yield "rleaky-bias", nn.Sequential(nn.Linear(3, 8), RLeaky(beta=0.8, linear_features=8, reset_mechanism="zero",
                                                                reset_delay=False), nn.Linear(8, 2)).double(), \
        1e-3, 2.0, 60
    yield "synaptic", nn.Sequential(nn.Linear(3, 8), Synaptic(alpha=0.7, beta=0.8, reset_mechanism="zero",
                                                              reset_delay=False), nn.Linear(8, 2)).double(), \
        1e-3, 3.0, 60
    yield "norse-recurrent", nn.Sequential(nn.Linear(3, 8), LIFRecurrentCell(8, 10), nn.Linear(10, 2)).double(), \
        1e-3, 3.0, 60
    yield "balanced", surroflos.BalancedNetwork(N=40, K=6, n_in=2, n_out=2, dt=1e-4, generator=gen(5), dtype=F64), \
        1e-4, 5.0, 300
    yield "balanced-no-input", surroflos.BalancedNetwork(N=30, K=5, I0=1.0, n_in=0, n_out=0, dt=1e-4,
                                                         generator=gen(7), dtype=F64), 1e-4, 0.0, 300


def _seeded_models() -> dict:
    # nn.Linear and the drop-ins initialise from the global RNG: seed it here, so the networks (and the
    # float32 margin argument below) do not depend on which test modules were imported before this one.
    with torch.random.fork_rng():
        torch.manual_seed(15)
        return {name: (m, dt, scale, T) for name, m, dt, scale, T in _models()}


MODELS = _seeded_models()


def _setup(name):
    model, dt, scale, T = MODELS[name]
    with torch.no_grad():
        for mod in model.modules():  # a recurrent bias must survive the forms (moved into the input bias)
            if isinstance(mod, RLeaky):
                mod.recurrent.bias.fill_(0.3)
    n_in = getattr(model, "n_in", None)
    n_in = 3 if n_in is None else n_in
    x = torch.randn(T, 3, n_in, generator=gen(9), dtype=F64) * scale
    out, spikes = run_model(model, x)
    assert sum(int(s.sum()) for s in spikes.values()) > 20, "the comparison must not be vacuous"
    return model, dt, x, out, spikes




def _membrane_margin(model, dt, x) -> float:
    """min |v - v_threshold| over the spec graph's pre-reset membranes, from the NIR reference (which equals the
    model exactly: tests/test_export.py), recomputed pre-reset from the post-reset trajectory."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = to_nir(model, dt)
    md = metadata_of(graph)
    res = simulate(graph, graph_inputs(model, x), dt, method=md["discretisation"], v0=md["initial_membrane"])
    margin = np.inf
    for name, z in res.spikes.items():
        v = res.membranes[name]
        th = torch.as_tensor(np.asarray(graph.nodes[name].v_threshold, dtype=np.float64))
        quiet = z == 0  # where it spiked the pre-reset membrane was above the threshold; measure the others
        gap = (th - v)[quiet]
        if gap.numel():
            margin = min(margin, float(gap.abs().min()))
    return margin


def _import(consumer, graph, monkeypatch):
    """The consumer's own importer, building its modules in float64: snnTorch's ``torch.Tensor(...)``/``nn.Linear``
    follow the default dtype (set to float64 while importing); Norse's ``_to_tensor`` casts to float32, replaced by
    the same conversion without that cast. Nothing else of the consumers is touched."""
    from surroflos.export.to_nir import _norse

    nt = _norse()
    import norse.torch.utils.import_nir as norse_import

    def to_tensor64(t):
        if isinstance(t, torch.Tensor):
            return t
        return torch.as_tensor(np.asarray(t), dtype=F64)

    monkeypatch.setattr(norse_import, "_to_tensor", to_tensor64)
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if consumer == "snntorch":
                from snntorch.import_nir import import_from_nir

                return import_from_nir(copy.deepcopy(graph))
            return nt.from_nir(copy.deepcopy(graph), ignore_warnings=True)  # its default dt = 1e-3
    finally:
        torch.set_default_dtype(old)


def _f64(module):
    """Cast the consumer's module to float64 in place (Norse's parameter tuples too; deepcopy fails on nirtorch's
    GraphExecutor)."""
    module.double()
    for mod in module.modules():
        if isinstance(mod, nn.Linear):  # snnTorch's spike functions return float32 0/1 (exact in any dtype)
            mod.register_forward_pre_hook(lambda m, inp: tuple(i.to(m.weight.dtype) for i in inp))
        p = getattr(mod, "p", None)
        if p is not None and hasattr(p, "_replace"):
            mod.p = p._replace(**{f: v.double() for f, v in p._asdict().items()
                                  if isinstance(v, torch.Tensor) and v.is_floating_point()})
        for attr in ("w_in", "r"):  # Norse's CubaLIF wrapper keeps these as plain tensors
            v = getattr(mod, attr, None)
            if isinstance(v, torch.Tensor) and not isinstance(v, nn.Parameter) and v.is_floating_point():
                setattr(mod, attr, v.double())
    return module


def _run(consumer, module, graph, x):
    """Step the consumer's module (float64) and record each spiking node's output."""
    names = _spiking_names(graph)
    outs, state = [], None
    if consumer == "snntorch":
        rec, handles = _record(module, names)
        try:
            with torch.no_grad():
                for t in range(x.shape[0]):
                    y, state = module(x[t], state)
                    outs.append(y)
        finally:
            for h in handles:
                h.remove()
        return torch.stack(outs), {k: torch.stack(v) for k, v in rec.items()}
    rec = {n: [] for n in names}
    with torch.no_grad():
        for t in range(x.shape[0]):
            y, state = module(x[t], state)
            outs.append(y)
            for n in names:
                rec[n].append(state.cache[n])
    return torch.stack(outs), {k: torch.stack(v) for k, v in rec.items()}


@pytest.mark.parametrize("consumer", ["norse", "snntorch"])
@pytest.mark.parametrize("name", list(MODELS))
def test_consumer_form_runs_exactly_in_the_consumer_float64(name, consumer, monkeypatch):
    model, dt, x, out, spikes = _setup(name)
    graph = to_nir(model, dt, consumer=consumer)
    md = metadata_of(graph)
    assert md["consumer"]["consumer"] == consumer and graph.metadata["dt"] == md["consumer"]["consumer_dt"]
    module = _f64(_import(consumer, graph, monkeypatch))
    gx = graph_inputs(model, x)
    got_out, got = _run(consumer, module, graph, gx)
    assert _membrane_margin(model, dt, x) > 1e-9
    assert set(got) == set(spikes)
    for k in spikes:
        assert got[k].dtype == F64 and torch.equal(got[k], spikes[k]), (k, float((got[k] != spikes[k]).double().mean()))
    if consumer == "snntorch":
        # snnTorch's importer stores every weight with torch.Tensor(...), which is float32 whatever the default
        # dtype: the readout (a dot product over the hidden spikes plus a bias) is off by its float32 rounding.
        n_hidden = max(s.shape[-1] for s in spikes.values())
        torch.testing.assert_close(got_out.double(), out, rtol=0.0,
                                   atol=rounding_tol(torch.float32, scale_of(out) + 1.0, n_hidden + 1))
    else:
        torch.testing.assert_close(got_out, out, **exact_tol(scale_of(out)))


@pytest.mark.parametrize("name", list(MODELS))
def test_nir_form_is_the_euler_reference(name):
    """consumer='nir': NIR's equations with forward Euler at the export dt from zero states reproduce the model
    (the balanced network's exact step rewritten as an Euler graph)."""
    model, dt, x, out, spikes = _setup(name)
    graph = to_nir(model, dt, consumer="nir")
    md = metadata_of(graph)
    res = simulate(graph, graph_inputs(model, x), dt, method="euler", v0=md["initial_membrane"])
    for k in spikes:
        assert torch.equal(res.spikes[k], spikes[k]), k
    torch.testing.assert_close(res.output, out, **exact_tol(scale_of(out)))
    if name.startswith("balanced"):  # the spec file is not an Euler graph: it needs the reference's exact method
        spec = to_nir(model, dt)
        euler = simulate(spec, graph_inputs(model, x), dt, method="euler").spikes["lif"]
        assert not torch.equal(euler, spikes["lif"])


@pytest.mark.numerics
@pytest.mark.parametrize("name", ["lif-zero", "feedforward"])
def test_verify_float32_forms_identical_spikes(name):
    """verify's default run (float32 consumers on their forms): identical spikes, by the margin argument."""
    model64, dt, x, out, spikes = _setup(name)
    model = copy.deepcopy(model64).float()
    T = x.shape[0]
    n_terms = 3 + 40 + 8  # the largest fan-in plus the elementwise update
    ops = recurrence_ops(T, n_terms)
    bound = rounding_tol(torch.float32, max(scale_of(x), 5.0), ops)
    margin = _membrane_margin(model64, dt, x)
    assert margin > bound, (f"the membranes come within {margin:.2e} of the threshold, inside the float32 rounding "
                            f"bound {bound:.2e}: spike identity cannot be claimed for this input")
    _, spk32 = run_model(model, x.float())
    report = verify(model, dt, x.float(), simulators=("ours", "norse", "snntorch"))
    for c in ("norse", "snntorch"):
        r = report[c]
        assert r.form == c and r.refusal is None and r.spike_agreement == 1.0, report.table()
    for k in spikes:
        assert torch.equal(spk32[k].double(), spikes[k])


# ----------------------------------------------------------------------------------------------
# Refusals: the precise reason and the nearest exact alternative
# ----------------------------------------------------------------------------------------------

REFUSALS = [
    ("norse", lambda: surroflos.SpikingRNN(3, 8, 2, reset="subtract", generator=gen(1)), 1e-3,
     r"subtract reset", r"reset='zero'"),
    ("snntorch", lambda: surroflos.SpikingRNN(3, 8, 2, neuron="cuba", reset="zero", generator=gen(1)), 1e-3,
     r"zeroes the whole update", r"reset='zero'"),
    ("snntorch", lambda: surroflos.SpikingRNN(3, 8, 2, reset="zero", readout="leaky", generator=gen(1)), 1e-3,
     r"LI node", r"readout='linear'"),
    ("norse", lambda: surroflos.SpikingRNN(3, 8, 2, reset="zero", readout="leaky", generator=gen(1)), 1e-3,
     r"LI node.*skips it", r"readout='linear'"),
    ("snntorch", lambda: surroflos.SpikingRNN(3, 8, 2, reset="zero", threshold=torch.linspace(0.8, 1.2, 8),
                                              generator=gen(1)), 1e-3, r"one threshold per neuron", r"one threshold"),
    ("spyx", lambda: surroflos.SpikingRNN(3, 8, 2, reset="zero", generator=gen(1)), 1e-3,
     r"zero reset cannot be expressed", r"reset='subtract'"),
    ("spyx", lambda: surroflos.SpikingRNN(3, 8, 2, neuron="cuba", reset="subtract", generator=gen(1)), 1e-3,
     r"before the decay", r"neuron='lif'"),
    ("spyx", lambda: nn.Sequential(nn.Linear(3, 8), Leaky(beta=0.8), nn.Linear(8, 4), Leaky(beta=0.8)), 1e-3,
     r"one step late but the bias at once", r"bias=False"),
    ("spyx", lambda: surroflos.BalancedNetwork(N=20, K=4, dt=1e-4, generator=gen(1)), 1e-4,
     r"three-node cycle", r"consumer='norse'"),
    ("rockpool", lambda: surroflos.SpikingRNN(3, 8, 2, reset="zero", generator=gen(1)), 1e-3,
     r"tau_mem from nir.LIF.*crashes", r"consumer='norse'"),
    ("sinabs", lambda: surroflos.SpikingRNN(3, 8, 2, reset="zero", generator=gen(1)), 1e-3,
     r"skips nir.Linear.*trunc\(v / theta\)", r"consumer='norse'"),
    ("norse", lambda: nn.Sequential(nn.Linear(3, 8), LIFCell(LIFParameters(v_leak=torch.tensor(0.2)))), 1e-3,
     r"v_leak != 0.*synaptic current", r"v_leak = 0"),
    ("snntorch", lambda: nn.Sequential(nn.Linear(3, 8), LIFBoxCell(LIFBoxParameters(v_leak=torch.tensor(0.2)))), 1e-3,
     r"membranes start at v_leak", r"consumer='norse'"),
]


@pytest.mark.parametrize("consumer,make,dt,reason,alternative", REFUSALS,
                         ids=[f"{r[0]}-{i}" for i, r in enumerate(REFUSALS)])
def test_refusal_names_reason_and_alternative(tmp_path, consumer, make, dt, reason, alternative):
    model = make()
    with pytest.raises(ConsumerRefusal, match=reason) as info:
        to_nir(model, dt, consumer=consumer)
    msg = str(info.value)
    assert isinstance(info.value, ValueError) and f"consumer={consumer!r}" in msg
    assert "Nearest exact alternative:" in msg and pytest.importorskip("re").search(alternative, msg), msg
    with pytest.raises(ConsumerRefusal):  # write() refuses before writing anything
        write(tmp_path / "x.nir", model, dt, consumer=consumer)
    assert not list(tmp_path.iterdir())


def test_spyx_form_of_a_subtract_network():
    model = surroflos.SpikingRNN(3, 8, 2, reset="subtract", generator=gen(2))
    graph = to_nir(model, 1e-3, consumer="spyx")
    md = metadata_of(graph)
    assert md["consumer"]["consumer_dt"] == 1.0 and md["consumer"]["spike_shift"] == {"lif": 1}
    lif = graph.nodes["lif"]
    beta = model.beta.detach().double().clamp(0, 1).numpy()
    np.testing.assert_allclose(1 - 1.0 / lif.tau, beta, rtol=EXACT_RTOL_F64)  # spyx's beta = 1 - dt/tau, dt = 1
    assert set(graph.edges) >= {("lif", "w_rec"), ("w_rec", "lif")}  # the two-node cycle spyx turns into RLIF


def test_unknown_consumer_and_spec_default(tmp_path):
    model = surroflos.SpikingRNN(3, 8, 2, reset="zero", generator=gen(3))
    with pytest.raises(ValueError, match="unknown consumer 'brian'"):
        to_nir(model, 1e-3, consumer="brian")
    spec = write(tmp_path / "a.nir", model, 1e-3)
    assert "consumer" not in spec.metadata and metadata_of(spec).get("consumer") is None
    g = write(tmp_path / "b.nir", model, 1e-3, consumer="norse")
    assert g.metadata["consumer"] == "norse" and g.metadata["dt"] == 1e-3 and g.metadata["export_dt"] == 1e-3
    with pytest.raises(ValueError, match="consumer='norse'.*consumer=None"):
        from_nir(tmp_path / "b.nir", 1e-3)
    assert isinstance(from_nir(tmp_path / "a.nir", 1e-3), surroflos.SpikingRNN)
    # The snnTorch form at another export dt: time constants for snnTorch's fixed 1e-4, the same decay per step.
    g = to_nir(model, 1e-3, consumer="snntorch")
    np.testing.assert_allclose(1 - 1e-4 / g.nodes["lif"].tau, model.beta.detach().double().numpy(),
                               rtol=EXACT_RTOL_F64)
    assert ("w_rec", "lif_rec_pass") in g.edges and ("lif_rec_pass", "lif") in g.edges
