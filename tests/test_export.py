"""NIR export/import (surroflos.export): round trips, files, metadata, the reference integrator against closed
forms, ours against the reference, the cross-checks in snnTorch / Norse / nirtorch with their known
conventions asserted, and the errors."""

import copy
import dataclasses
import json
import os
import re
import warnings

import h5py
import nir
import numpy as np
import pytest
import torch
from torch import nn

import surroflos
from surroflos.export import (NIRExportWarning, NIRImportWarning, fold_r, from_nir, metadata_of, read, simulate,
                              simulate_with, to_nir, verify, write)
from surroflos.export.to_nir import run_model, to_float64
from surroflos.norse import LIF, LIFBoxCell, LIFCell, LIFParameters, LIFRecurrentCell
from surroflos.snntorch import Leaky, RLeaky, RSynaptic, Synaptic, surrogate_from_spike_grad

from _tolerance import recurrence_ops, rounding_tol, scale_of  # noqa: E402

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NIRExportWarning)
        return fn(*args, **kwargs)


def rnn(seed=0, **kw):
    kw.setdefault("g", 2.0)
    return surroflos.SpikingRNN(3, 16, 2, generator=gen(seed), **kw)


def _p_fields(m):
    p = getattr(m, "p", None)
    return p._asdict() if p is not None and hasattr(p, "_asdict") else None


def assert_same_model(a: nn.Module, b: nn.Module) -> None:
    """Same classes, same parameters/buffers (values, dtypes, trainability), same settings."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]), k
    assert [n for n, _ in a.named_parameters()] == [n for n, _ in b.named_parameters()]
    for (na, ma), (nb, mb) in zip(a.named_modules(), b.named_modules()):
        assert na == nb and type(ma) is type(mb), (na, type(ma), type(mb))
        pa, pb = _p_fields(ma), _p_fields(mb)
        if pa is not None:
            for f in pa:
                va, vb = pa[f], pb[f]
                if isinstance(va, torch.Tensor):
                    assert torch.equal(torch.as_tensor(va), torch.as_tensor(vb)) and va.dtype == vb.dtype, (na, f)
                else:
                    assert va == vb, (na, f)
        for attr in ("dt", "reset", "neuron", "detach_reset", "surrogate", "readout_kind", "readout_beta",
                     "reset_delay", "all_to_all", "synapse_norm", "tau_m", "tau_s", "c", "a_m", "b"):
            if hasattr(ma, attr) and not isinstance(getattr(ma, attr), (nn.Module, torch.Tensor)):
                assert getattr(ma, attr) == getattr(mb, attr), (na, attr)
        if hasattr(ma, "spike_grad"):
            assert surrogate_from_spike_grad(ma.spike_grad) == surrogate_from_spike_grad(mb.spike_grad), na
        if hasattr(ma, "reset_mechanism_val"):
            assert int(ma.reset_mechanism_val) == int(mb.reset_mechanism_val)


def assert_same_outputs(a, b, x) -> None:
    oa, sa = run_model(a, x)
    ob, sb = run_model(b, x)
    assert torch.equal(oa, ob)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------------

SPIKING_RNNS = {
    "lif-zero": dict(neuron="lif", reset="zero"),
    "lif-subtract-leaky-f64": dict(neuron="lif", reset="subtract", readout="leaky", readout_beta=0.7, dtype=F64),
    "cuba-zero": dict(neuron="cuba", reset="zero", alpha=0.6, surrogate=surroflos.Surrogate("fast_sigmoid", 10.0)),
    "cuba-subtract-pervneuron-learn": dict(neuron="cuba", reset="subtract", beta=torch.linspace(0.5, 0.95, 16),
                                           threshold=torch.linspace(0.8, 1.2, 16), learn_beta=True, learn_alpha=True,
                                           learn_threshold=True, bias=False, detach_reset=False, dtype=F64),
}


@pytest.mark.parametrize("name", list(SPIKING_RNNS))
def test_round_trip_spiking_rnn(name):
    model = rnn(1, **SPIKING_RNNS[name])
    with torch.no_grad():  # a "trained" beta pushed outside [0, 1] must survive too (clamped in forward)
        if model.beta.ndim:
            model.beta[0] = -0.05
    dt = 1e-3
    graph = quiet(to_nir, model, dt)
    back = from_nir(graph, dt)
    assert_same_model(model, back)
    x = torch.randn(40, 3, 3, generator=gen(2), dtype=model.weight_rec.dtype) * 2
    assert_same_outputs(model, back, x)


def test_round_trip_balanced():
    for kw in (dict(n_in=0, n_out=0), dict(n_in=2, n_out=3, learn_recurrent=True, ei=True, K=8, synapse_norm="tau_s",
                                             tau_s=10e-3, dtype=F64)):
        kw.setdefault("K", 5)
        model = surroflos.BalancedNetwork(N=30, dt=1e-4, generator=gen(3), **kw)
        with torch.no_grad():
            w = model.weight_rec
            w.mul_(1 + 0.1 * torch.rand(w.shape, generator=gen(4), dtype=w.dtype))
        graph = to_nir(model, 1e-4)
        assert graph.metadata["exact"]
        back = from_nir(graph, 1e-4)
        assert_same_model(model, back)
        assert torch.equal(model.pre_idx, back.pre_idx)
        x = torch.randn(60, 2, model.n_in, generator=gen(5), dtype=model.weight_rec.dtype) * 5
        assert_same_outputs(model, back, x)


def _stacks():
    from snntorch import surrogate as ss

    yield "leaky", nn.Sequential(nn.Linear(3, 8), Leaky(beta=0.8, reset_mechanism="zero",
                                                        spike_grad=ss.fast_sigmoid(10)), nn.Linear(8, 2))
    yield "leaky-subtract-vector", nn.Sequential(nn.Linear(3, 8), Leaky(beta=torch.rand(8, generator=gen(1)),
                                                                        learn_beta=True), nn.Linear(8, 2))
    yield "synaptic", nn.Sequential(nn.Linear(3, 8), Synaptic(alpha=0.7, beta=0.8, reset_mechanism="zero",
                                                              reset_delay=False), nn.Linear(8, 2))
    yield "rleaky", nn.Sequential(nn.Linear(3, 8), RLeaky(beta=0.8, linear_features=8), nn.Linear(8, 2))
    yield "rleaky-one-to-one", nn.Sequential(nn.Linear(3, 8), RLeaky(beta=0.8, V=torch.rand(8, generator=gen(2)),
                                                                     all_to_all=False, reset_mechanism="zero",
                                                                     reset_delay=False), nn.Linear(8, 2))
    yield "rsynaptic", nn.Sequential(nn.Linear(3, 8), RSynaptic(alpha=0.7, beta=0.8, linear_features=8),
                                     nn.Linear(8, 2))
    yield "norse-cell", nn.Sequential(nn.Linear(3, 8), LIFCell(LIFParameters(v_leak=torch.tensor(0.2))),
                                      nn.Linear(8, 2))
    yield "norse-lif-box", nn.Sequential(nn.Linear(3, 8), LIF(), nn.Linear(8, 6), LIFBoxCell(), nn.Linear(6, 2))
    yield "norse-recurrent", nn.Sequential(nn.Linear(3, 8), LIFRecurrentCell(8, 10), nn.Linear(10, 2))
    import snntorch

    yield "plain-snntorch-init-hidden", nn.Sequential(nn.Linear(3, 8), snntorch.Leaky(beta=0.9, reset_mechanism="zero",
                                                                                     init_hidden=True), nn.Linear(8, 2))


@pytest.mark.parametrize("name,seq", list(_stacks()), ids=[n for n, _ in _stacks()])
def test_round_trip_layered(name, seq):
    dt = 1e-3
    graph = quiet(to_nir, seq, dt)
    back = from_nir(graph, dt)
    assert_same_model(seq, back)
    x = torch.randn(30, 3, 3, generator=gen(6)) * 3
    assert_same_outputs(seq, back, x)


def test_file_round_trip_and_metadata(tmp_path):
    from surroflos import tasks
    from surroflos.train import TrainConfig, build_model

    cfg = TrainConfig(task="xor", model="lif", N=12, surrogate="fast_sigmoid")
    task = tasks.make("xor", delay=cfg.delay, T=cfg.T)
    model = build_model(cfg, task, torch.device("cpu"), torch.float32)
    path = tmp_path / "net.nir"
    graph = write(path, model, 1e-3, metadata={"training_config": dataclasses.asdict(cfg)})
    assert sorted(os.listdir(tmp_path)) == ["net.nir"]  # atomic: no temporary file left
    g2 = read(path)
    assert set(g2.nodes) == set(graph.nodes) and sorted(g2.edges) == sorted(graph.edges)
    for k, n in graph.nodes.items():
        assert type(g2.nodes[k]) is type(n)
        for f in ("weight", "bias", "tau", "r", "v_leak", "v_threshold", "v_reset"):
            if hasattr(n, f):
                a, b = np.asarray(getattr(n, f)), np.asarray(getattr(g2.nodes[k], f))
                assert a.dtype == b.dtype and np.array_equal(a, b), (k, f)
    md = metadata_of(g2)
    assert md == metadata_of(graph)
    assert md["dt"] == 1e-3 and md["model_class"] == "SpikingRNN" and md["surroflos_version"] == surroflos.__version__
    assert md["surrogate"] == {"name": "fast_sigmoid", "scale": 25.0}
    assert md["model"]["neuron"] == "lif" and md["model"]["reset"] == cfg.reset and md["model"]["n_hidden"] == 12
    assert md["user"]["training_config"] == json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert md["exact"] is (cfg.reset == "zero") and md["discretisation"] == "euler"
    assert g2.metadata["dt"] == 1e-3 and g2.metadata["model_class"] == "SpikingRNN"
    assert "beta" in g2.nodes["lif"].metadata["surroflos"]
    back = from_nir(path, 1e-3)
    assert_same_model(model, back)
    x = torch.randn(20, 2, task.n_in, generator=gen(7))
    assert_same_outputs(model, back, x)
    write(path, model, 1e-3)  # overwriting works
    with pytest.raises(TypeError, match="JSON"):
        to_nir(model, 1e-3, metadata={"bad": object()})


def test_rebuild_at_another_dt_and_edited_graph(tmp_path):
    model = rnn(10, neuron="lif", reset="zero", readout="leaky", dtype=F64)
    graph = to_nir(model, 1e-3)
    with pytest.warns(NIRImportWarning, match="rebuilt for dt=0.0005"):
        other = from_nir(graph, 5e-4)
    # At the new dt the rebuilt network follows the graph's equations at that dt (scales folded into weights).
    x = torch.randn(60, 2, 3, generator=gen(18), dtype=F64) * 2
    out, spk = run_model(other, x)
    res = simulate(graph, x, 5e-4)
    assert torch.equal(spk["lif"], res.spikes["lif"]) and spk["lif"].sum() > 0
    assert (out - res.output).abs().max() < 1e-12
    np.testing.assert_allclose(other.beta.numpy(), 1 - 5e-4 / graph.nodes["lif"].tau[0], rtol=1e-12)
    # A time constant edited after export wins over the stored beta (with a warning).
    edited = copy.deepcopy(graph)
    edited.nodes["lif"].tau = edited.nodes["lif"].tau * 2
    edited.nodes["lif"].r = edited.nodes["lif"].tau / 1e-3
    with pytest.warns(NIRImportWarning, match="no longer matches"):
        m2 = from_nir(edited, 1e-3)
    np.testing.assert_allclose(m2.beta.numpy(), 1 - 1e-3 / edited.nodes["lif"].tau[0], rtol=1e-12)
    # write() also takes a graph as it is.
    write(tmp_path / "g.nir", edited)
    assert np.array_equal(read(tmp_path / "g.nir").nodes["lif"].tau, edited.nodes["lif"].tau)


# ----------------------------------------------------------------------------------------------
# The mapping and the reference integrator against closed forms
# ----------------------------------------------------------------------------------------------


def _single(node) -> nir.NIRGraph:
    return nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([1])), "n": node,
                               "output": nir.Output(output_type=np.array([1]))},
                        edges=[("input", "n"), ("n", "output")], metadata={})


def test_single_lif_constant_current_closed_form():
    tau, r, v_leak, I0, dt, T = 20e-3, 3.0, 0.2, 0.4, 1e-3, 60
    a = np.ones(1)
    g = _single(nir.LIF(tau=tau * a, r=r * a, v_leak=v_leak * a, v_threshold=1e9 * a, v_reset=0 * a))
    x = torch.full((T, 1, 1), I0, dtype=F64)
    n = np.arange(1, T + 1)
    v_inf = v_leak + r * I0
    euler = simulate(g, x, dt).membranes["n"][:, 0, 0].numpy()
    np.testing.assert_allclose(euler, v_inf * (1 - (1 - dt / tau) ** n), rtol=1e-12)
    exact = simulate(g, x, dt, method="exact").membranes["n"][:, 0, 0].numpy()
    np.testing.assert_allclose(exact, v_inf * (1 - np.exp(-n * dt / tau)), rtol=1e-12)
    # With a threshold: the first spike and the period after each reset to v_reset follow from the same solution.
    th, v_reset = 1.0, -0.1
    g = _single(nir.LIF(tau=tau * a, r=r * a, v_leak=v_leak * a, v_threshold=th * a, v_reset=v_reset * a))
    z = simulate(g, x, dt).spikes["n"][:, 0, 0].numpy()
    q = 1 - dt / tau
    first = next(k for k in range(1, T + 1) if v_inf * (1 - q ** k) > th)
    period = next(k for k in range(1, T + 1) if v_inf + (v_reset - v_inf) * q ** k > th)
    expected = np.zeros(T)
    expected[first - 1::period] = 1
    np.testing.assert_array_equal(z, expected)


def test_single_cubalif_constant_input_closed_form():
    ts, tm, r, w_in, v_leak, x0, dt, T = 5e-3, 20e-3, 2.0, 1.5, 0.1, 0.3, 1e-3, 50
    a = np.ones(1)
    g = _single(nir.CubaLIF(tau_syn=ts * a, tau_mem=tm * a, r=r * a, v_leak=v_leak * a, v_threshold=1e9 * a,
                            v_reset=0 * a, w_in=w_in * a))
    x = torch.full((T, 1, 1), x0, dtype=F64)
    n = np.arange(1, T + 1)
    A, B = 1 - dt / ts, 1 - dt / tm  # Euler: i_n = A i + dt/ts w_in x, v_n = B v + dt/tm (v_leak + r i_n)
    v_euler = v_leak * (1 - B ** n) + r * w_in * x0 * ((1 - B ** n) - dt / tm * A * (A ** n - B ** n) / (A - B))
    np.testing.assert_allclose(simulate(g, x, dt).membranes["n"][:, 0, 0].numpy(), v_euler, rtol=1e-11)
    t = n * dt  # exact: the continuous-time solution at the step ends
    v_exact = v_leak * (1 - np.exp(-t / tm)) + r * w_in * x0 * (
        1 - (ts * np.exp(-t / ts) - tm * np.exp(-t / tm)) / (ts - tm))
    np.testing.assert_allclose(simulate(g, x, dt, method="exact").membranes["n"][:, 0, 0].numpy(), v_exact,
                               rtol=1e-11)


def test_mapping_euler_parameters():
    """beta = 1 - dt/tau, r = tau/dt (snnTorch's exporter), per neuron; beta = 1 is refused."""
    beta = torch.linspace(0.5, 0.95, 16, dtype=F64)
    model = rnn(0, beta=beta, neuron="cuba", alpha=0.25, reset="zero", dtype=F64)
    dt = 2e-3
    node = quiet(to_nir, model, dt).nodes["lif"]
    np.testing.assert_allclose(node.tau_mem, dt / (1 - beta.numpy()), rtol=1e-15)
    np.testing.assert_allclose(node.r, node.tau_mem / dt, rtol=1e-15)
    np.testing.assert_allclose(node.tau_syn, dt / 0.75, rtol=1e-15)
    np.testing.assert_allclose(node.w_in, node.tau_syn / dt, rtol=1e-15)
    np.testing.assert_allclose(1 - dt / node.tau_mem, beta.numpy(), rtol=1e-14)
    with pytest.raises(ValueError, match="perfect integrator"):
        to_nir(rnn(0, beta=1.0, reset="zero"), dt)
    with pytest.raises(ValueError, match="smooth"):
        to_nir(rnn(0, smooth=True, detach_reset=False), dt)
    with pytest.raises(ValueError, match="no NIR mapping"):
        to_nir(nn.Sequential(nn.Linear(3, 4), nn.ReLU()), dt)


# ----------------------------------------------------------------------------------------------
# Ours against the reference, and the mismatch warning
# ----------------------------------------------------------------------------------------------


def test_ours_vs_reference_exact_lif_zero_recurrent():
    model = rnn(4, neuron="lif", reset="zero", dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NIRExportWarning)  # an exact export must not warn
        report = verify(model, 1e-3, torch.randn(50, 4, 3, generator=gen(8), dtype=F64) * 2,
                        simulators=("ours", "reference", "nirtorch-euler", "nirtorch"))
    assert report.exact and report.export_warnings == []
    # nirtorch on its own (its default mapping) has no neuron modules: it cannot run a spiking graph.
    assert report["nirtorch"].status.startswith("not applicable") and "LIF" in report["nirtorch"].status
    for name in ("reference", "nirtorch-euler"):
        r = report[name]
        assert r.spike_agreement == 1.0 and r.first_divergence_step is None and r.output_error < 1e-12, r
    assert report["ours"].spikes > 0.05 * 50 * 4 * 16  # the comparison is not vacuous


def test_ours_vs_reference_exact_balanced():
    model = surroflos.BalancedNetwork(N=40, K=6, n_in=2, n_out=2, dt=1e-4, generator=gen(5), dtype=F64)
    report = verify(model, 1e-4, torch.randn(200, 2, 2, generator=gen(9), dtype=F64) * 5,
                    simulators=("ours", "reference", "nirtorch", "nirtorch-euler"))
    assert report["reference"].spike_agreement == 1.0 and report["reference"].output_error < 1e-12
    assert report["ours"].spikes > 20
    for name in ("nirtorch", "nirtorch-euler"):
        assert report[name].status.startswith("not applicable"), report[name].status
    # Euler is a different discretisation of the same graph: it does not reproduce the balanced network.
    graph = to_nir(model, 1e-4)
    x = torch.randn(200, 2, 2, generator=gen(9), dtype=F64) * 5
    _, ours = run_model(model, x)
    assert not torch.equal(simulate(graph, x, 1e-4, method="euler").membranes["lif"],
                           simulate(graph, x, 1e-4, method="exact").membranes["lif"])


def test_subtract_reset_warns_with_measured_mismatch():
    model = rnn(5, neuron="lif", reset="subtract")
    with pytest.warns(NIRExportWarning, match=r"subtract reset.*reset='zero'") as rec:
        graph = to_nir(model, 1e-3)
    msg = str(rec[0].message)
    pct, step = re.search(r"([\d.]+)% of hidden spikes differ, first divergence at step (\d+)", msg).groups()
    # Measure independently: the float64 model against the reference on the documented probe (N(0,1), seed 0).
    x = torch.randn(50, 4, 3, generator=gen(0), dtype=F64)
    _, ours = run_model(to_float64(model), x)
    refs = simulate(graph, x, 1e-3).spikes["lif"]
    differ = (ours["lif"] != refs)
    assert float(pct) == pytest.approx(100 * differ.double().mean().item(), abs=0.006)
    assert int(step) == int(differ.flatten(1).any(1).nonzero()[0])
    assert 0 < float(pct) < 100
    md = metadata_of(graph)
    assert not md["exact"] and md["mismatch"]["first_divergence_step"] == int(step)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NIRExportWarning)
        to_nir(rnn(5, neuron="lif", reset="zero"), 1e-3)  # the suggested alternative is exact


# ----------------------------------------------------------------------------------------------
# Other simulators, with their known conventions
# ----------------------------------------------------------------------------------------------


def float32_output_tol(model, x, per_step: int, readout: int) -> float:
    """How far two simulators' outputs of ``model`` on ``x [T, B, n_in]`` may be apart when one runs in float32
    (tolerance policy: tests/_tolerance.py): T steps of ``per_step`` rounded operations (the dot products feeding
    a neuron and <= 6 elementwise updates) and the readout's ``readout``-term sum, on the outputs' scale."""
    out, _ = run_model(model, x)
    return rounding_tol(torch.float32, scale_of(out), recurrence_ops(x.shape[0], per_step) + readout)


@pytest.mark.numerics
def test_snntorch_feedforward_exact_at_its_dt_and_predicted_elsewhere():
    seq = nn.Sequential(nn.Linear(3, 8), Leaky(beta=0.8, reset_mechanism="zero"), nn.Linear(8, 2))
    x = torch.randn(40, 4, 3, generator=gen(10))
    tol = float32_output_tol(seq, x, 3 + 6, 8)
    report = verify(seq, 1e-4, x, simulators=("ours", "snntorch"))
    assert report["snntorch"].spike_agreement == 1.0 and report["snntorch"].output_error < tol
    # Exported at dt = 1e-3, snnTorch still steps with dt = 1e-4: it follows the reference at dt = 1e-4 exactly.
    graph = to_nir(seq, 1e-3)
    out_s, spk_s = simulate_with("snntorch", graph, x, 1e-3)
    out_r, spk_r = simulate_with("reference", graph, x, 1e-4)
    assert torch.equal(spk_s["layer1"], spk_r["layer1"]) and (out_s - out_r).abs().max() < tol
    _, ours = run_model(seq, x)
    assert not torch.equal(spk_s["layer1"], ours["layer1"].double())


def test_snntorch_recurrent_routes_input_through_w_rec():
    model = rnn(6, neuron="lif", reset="zero")
    x = torch.randn(40, 4, 3, generator=gen(11))
    report = verify(model, 1e-4, x, simulators=("ours", "snntorch"), form="spec")
    assert report["snntorch"].ok and report["snntorch"].spike_agreement < 1.0
    # The divergence is the importer's rewiring Input -> w_rec -> lif: the reference on that graph reproduces it.
    graph = to_nir(model, 1e-4)
    rewired = copy.deepcopy(graph)
    rewired.edges = [("w_in", "w_rec") if e == ("w_in", "lif") else e for e in rewired.edges]
    _, spk_s = simulate_with("snntorch", graph, x, 1e-4)
    _, spk_r = simulate_with("reference", rewired, x, 1e-4)
    assert torch.equal(spk_s["lif"], spk_r["lif"]) and spk_s["lif"].sum() > 0


@pytest.mark.numerics
def test_norse_ignores_r_and_agrees_after_fold_r():
    model = rnn(7, neuron="lif", reset="zero")
    x = torch.randn(40, 4, 3, generator=gen(12))
    dt = 1e-3
    graph = to_nir(model, dt)
    report = verify(model, dt, x, simulators=("ours", "norse"), form="spec")
    assert report["norse"].ok and report["norse"].spike_agreement < 1.0
    # Norse's LIF is NIR's LIF with r = 1 and membranes starting at v_leak:
    r_one = copy.deepcopy(graph)
    r_one.nodes["lif"].r = np.ones_like(r_one.nodes["lif"].r)
    _, spk_n = simulate_with("norse", graph, x, dt)
    _, spk_r = simulate_with("reference", r_one, x, dt, v0="leak")
    assert torch.equal(spk_n["lif"], spk_r["lif"])
    # fold_r moves r into the weights (the same equations): then Norse reproduces our network.
    folded = fold_r(graph)
    assert np.all(folded.nodes["lif"].r == 1) and not np.all(graph.nodes["lif"].r == 1)
    out_n, spk_n = simulate_with("norse", folded, x, dt)
    out_o, spk_o = run_model(model, x)
    assert torch.equal(spk_n["lif"], spk_o["lif"].double()) and spk_n["lif"].sum() > 0
    assert (out_n - out_o.double()).abs().max() < float32_output_tol(model, x, 3 + 16 + 6, 16)


@pytest.mark.numerics
def test_norse_layers_agree_in_norse():
    seq = nn.Sequential(nn.Linear(3, 8), LIFRecurrentCell(8, 10), nn.Linear(10, 2))
    x = torch.randn(40, 4, 3, generator=gen(13)) * 3
    tol = float32_output_tol(seq, x, 3 + 8 + 10 + 6, 10)
    report = verify(seq, 1e-3, x, simulators=("ours", "reference", "norse", "snntorch"), form="spec")
    assert report.exact and report["ours"].spikes > 0
    for name in ("reference", "norse"):
        assert report[name].spike_agreement == 1.0 and report[name].output_error < tol, report.table()
    assert report["snntorch"].status.startswith("not applicable")  # snnTorch needs r = tau_mem / 1e-4
    # Its own form (dt 1e-4, r = tau_mem/1e-4, the cycle through an identity) runs in snnTorch too.
    report = verify(seq, 1e-3, x, simulators=("ours", "snntorch"))
    assert report["snntorch"].form == "snntorch" and report["snntorch"].spike_agreement == 1.0, report.table()


def test_nirtorch_delays_the_edge_into_the_neuron():
    seq = nn.Sequential(nn.Linear(3, 8), RLeaky(beta=0.8, linear_features=8, reset_mechanism="zero",
                                                reset_delay=False), nn.Linear(8, 2))
    with torch.no_grad():
        seq[1].recurrent.bias.fill_(0.6)
    x = torch.randn(40, 4, 3, generator=gen(14))
    report = verify(seq, 1e-3, x, simulators=("ours", "reference", "nirtorch-euler"))
    assert report["reference"].spike_agreement == 1.0
    # nirtorch feeds zeros, not the recurrent Affine's output (its bias), into the neuron at the first step.
    assert report["nirtorch-euler"].first_divergence_step == 0
    # With the recurrent bias moved to the input bias (the same network) nirtorch agrees exactly.
    moved = copy.deepcopy(seq)
    with torch.no_grad():
        moved[0].bias += moved[1].recurrent.bias
        moved[1].recurrent.bias.zero_()
    report = verify(moved, 1e-3, x, simulators=("ours", "nirtorch-euler"))
    assert report["nirtorch-euler"].spike_agreement == 1.0 and report["ours"].spikes > 0


def test_report_table_and_dict(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setenv("SURROFLOS_INTEROP_DIR", str(tmp_path))  # no consumer environments here
    report = verify(rnn(8, reset="subtract", readout="leaky"), 1e-3, torch.randn(20, 2, 3, generator=gen(15)))
    text = report.table()
    for name in ("ours", "reference", "snntorch", "norse", "nirtorch", "spyx", "NOT exact", "export warning",
                 "form refused"):
        assert name in text
    d = json.loads(json.dumps(report.to_dict()))
    assert d["results"]["snntorch"]["status"].startswith("not applicable")  # the LI readout
    assert "subtract reset" in d["results"]["norse"]["refusal"]  # its form is refused: it ran the spec file
    for name in ("spyx", "rockpool", "sinabs"):
        if importlib.util.find_spec(name) is None:
            assert d["results"][name]["status"].startswith("not installed") and "make interop" in \
                d["results"][name]["status"]
    assert 0 < d["results"]["reference"]["spike_agreement"] < 1
    with pytest.raises(ValueError, match="unknown simulators"):
        verify(rnn(8), 1e-3, torch.randn(5, 1, 3), simulators=("brian",))


# ----------------------------------------------------------------------------------------------
# Foreign graphs
# ----------------------------------------------------------------------------------------------


def test_from_nir_snntorch_export_builds_closest_model():
    import snntorch
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 10), snntorch.RLeaky(beta=0.85, linear_features=10, init_hidden=True),
                        nn.Linear(10, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # nirtorch.extract_nir_graph
        graph = export_to_nir(net, torch.randn(3))
    assert metadata_of(graph) is None
    with pytest.warns(NIRImportWarning, match="reset='zero'"):
        model = from_nir(graph, 1e-4)
    assert isinstance(model, surroflos.SpikingRNN) and model.reset == "zero"
    x = torch.randn(40, 3, 3, generator=gen(16), dtype=F64) * 2
    out, spk = run_model(to_float64(model), x)
    res = simulate(graph, x, 1e-4)
    assert torch.equal(spk["lif"], res.spikes["1.lif"]) and spk["lif"].sum() > 0
    assert (out - res.output).abs().max() < 1e-9


def test_from_nir_snntorch_feedforward_export():
    import snntorch
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(1)
    # (snnTorch's exporter needs per-neuron parameters for a feed-forward Leaky)
    net = nn.Sequential(nn.Linear(3, 10), snntorch.Leaky(beta=torch.full((10,), 0.85), threshold=torch.ones(10),
                                                         init_hidden=True), nn.Linear(10, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        graph = export_to_nir(net, torch.randn(3))
    with pytest.warns(NIRImportWarning, match="Leaky"):
        seq = from_nir(graph, 1e-4)
    x = torch.randn(40, 3, 3, generator=gen(19), dtype=F64) * 2
    out, spk = run_model(to_float64(seq), x)
    res = simulate(graph, x, 1e-4)
    assert torch.equal(spk["layer1"], res.spikes["1"]) and spk["layer1"].sum() > 0


def test_from_nir_foreign_cubalif_chain():
    n_in, n = 3, 6
    rng = np.random.default_rng(0)
    ones = np.ones(n)
    graph = nir.NIRGraph(nodes={
        "in": nir.Input(input_type=np.array([n_in])),
        "fc": nir.Affine(weight=rng.normal(size=(n, n_in)), bias=rng.normal(size=n) * 0.1),
        "cuba": nir.CubaLIF(tau_syn=4e-3 * ones, tau_mem=15e-3 * ones, r=2.0 * ones, v_leak=0.1 * ones,
                            v_threshold=0.5 * ones, v_reset=-0.2 * ones, w_in=1.5 * ones),
        "rec": nir.Linear(weight=rng.normal(size=(n, n)) * 0.5),
        "out_fc": nir.Linear(weight=rng.normal(size=(2, n))),
        "out": nir.Output(output_type=np.array([2])),
    }, edges=[("in", "fc"), ("fc", "cuba"), ("cuba", "rec"), ("rec", "cuba"), ("cuba", "out_fc"), ("out_fc", "out")],
        metadata={})
    with pytest.warns(NIRImportWarning, match="LIFRecurrentCell"):
        seq = from_nir(graph, 1e-3)
    assert isinstance(seq[1], LIFRecurrentCell)
    x = torch.randn(40, 2, n_in, generator=gen(17), dtype=F64) * 3
    out, spk = run_model(seq, x)
    res = simulate(graph, x, 1e-3, v0="leak")  # Norse's cells start at v_leak
    assert torch.equal(spk["layer1"], res.spikes["cuba"]) and spk["layer1"].sum() > 0
    assert (out - res.output).abs().max() < 1e-9


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def _written(tmp_path, name="net.nir"):
    path = tmp_path / name
    write(path, rnn(9, reset="zero"), 1e-3)
    return path


def test_read_errors_missing_corrupted_truncated(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.nir"):
        read(tmp_path / "nope.nir")
    bad = tmp_path / "bad.nir"
    bad.write_bytes(os.urandom(2000))
    with pytest.raises(ValueError, match="not a valid NIR file"):
        read(bad)
    path = _written(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a valid NIR file"):
        read(path)
    with pytest.raises(ValueError, match="not a valid NIR file"):
        from_nir(path, 1e-3)
    empty = tmp_path / "empty.nir"
    with h5py.File(empty, "w") as f:
        f.create_dataset("version", data="1.0")
    with pytest.raises(ValueError, match="not a valid NIR file"):
        read(empty)


def test_read_errors_unknown_node_and_bad_shapes(tmp_path):
    path = _written(tmp_path)
    with h5py.File(path, "r+") as f:
        del f["node/nodes/lif/type"]
        f["node/nodes/lif"].create_dataset("type", data="Quantum", dtype=h5py.string_dtype())
    with pytest.raises(ValueError, match=r"'lif'.*Quantum"):
        read(path)
    path = _written(tmp_path, "shape.nir")  # parameters of one node disagree
    with h5py.File(path, "r+") as f:
        del f["node/nodes/lif/r"]
        f["node/nodes/lif"].create_dataset("r", data=np.ones(5))
    with pytest.raises(ValueError, match="'lif'"):
        read(path)
    # Mismatched shapes between nodes (written without nir's type check).
    g = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([3])),
                            "w_in": nir.Affine(weight=np.ones((4, 3)), bias=np.zeros(4)),
                            "lif": nir.LIF(tau=np.ones(5), r=np.ones(5), v_leak=np.zeros(5), v_threshold=np.ones(5)),
                            "output": nir.Output(output_type=np.array([5]))},
                     edges=[("input", "w_in"), ("w_in", "lif"), ("lif", "output")], metadata={}, type_check=False)
    with pytest.raises(ValueError, match=r"mismatched shapes on edge 'w_in' -> 'lif'"):
        from_nir(g, 1e-3)
    nir.write(tmp_path / "mismatch.nir", g)
    with pytest.raises(ValueError, match=r"'w_in' -> 'lif'"):
        read(tmp_path / "mismatch.nir")
    # A NIR node type the surroflos tools do not support.
    g = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([3])), "d": nir.Delay(delay=np.ones(3)),
                            "output": nir.Output(output_type=np.array([3]))},
                     edges=[("input", "d"), ("d", "output")], metadata={}, type_check=False)
    with pytest.raises(ValueError, match=r"node 'd' has type Delay"):
        simulate(g, torch.zeros(2, 1, 3), 1e-3)


# ----------------------------------------------------------------------------------------------
# Graphs written by snnTorch's and Norse's own exporters, in their conventions (issue 15)
# ----------------------------------------------------------------------------------------------


def _snn_run(net, x):
    """snnTorch's own network stepped on x [T, B, n] (init_hidden layers reset first): the hidden spikes."""
    for mod in net.modules():
        if hasattr(mod, "reset_mem"):
            mod.reset_mem()
    out = []
    with torch.no_grad():
        for t in range(x.shape[0]):
            s = net[1](net[0](x[t]))
            out.append(s[0] if isinstance(s, tuple) else s)
    return torch.stack(out)


@pytest.mark.parametrize("layer", ["rleaky-subtract", "rleaky-zero", "leaky-subtract", "synaptic-subtract"])
def test_from_nir_producer_snntorch_reproduces_the_exported_network(layer):
    import snntorch
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(3)
    reset = layer.split("-")[1]
    n = 10
    if layer.startswith("rleaky"):
        lay = snntorch.RLeaky(beta=0.85, linear_features=n, init_hidden=True, reset_mechanism=reset)
    elif layer.startswith("leaky"):
        lay = snntorch.Leaky(beta=torch.full((n,), 0.85), threshold=torch.ones(n), init_hidden=True,
                             reset_mechanism=reset)
    else:
        lay = snntorch.Synaptic(alpha=torch.full((n,), 0.6), beta=torch.full((n,), 0.85), threshold=torch.ones(n),
                                init_hidden=True, reset_mechanism=reset)
    net = nn.Sequential(nn.Linear(3, n), lay, nn.Linear(n, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        graph = export_to_nir(net, torch.randn(3))
    x = torch.randn(60, 3, 3, generator=gen(20)) * 2
    theirs = _snn_run(net, x)
    model = from_nir(graph, 1e-4, producer="snntorch", reset=reset)
    _, ours = run_model(model, x)
    assert torch.equal(ours["layer1"], theirs) and theirs.sum() > 20
    if layer == "rleaky-subtract":  # read as a plain NIR graph, NIR's immediate zero reset does not reproduce it
        with pytest.warns(NIRImportWarning):
            plain = from_nir(graph, 1e-4)
        assert not torch.equal(run_model(plain, x)[1]["lif"], theirs)


def test_from_nir_producer_norse_reproduces_the_exported_network():
    import norse.torch as nt

    torch.manual_seed(4)
    p_box = nt.LIFBoxParameters(tau_mem_inv=torch.tensor(80.0), v_th=torch.tensor(0.6))
    p_cuba = nt.LIFParameters(tau_syn_inv=torch.tensor(150.0), tau_mem_inv=torch.tensor(90.0), v_th=torch.tensor(0.4))
    net = nt.SequentialState(nn.Linear(3, 10), nt.LIFBoxCell(p_box), nn.Linear(10, 6), nt.LIFCell(p_cuba),
                             nn.Linear(6, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = nt.to_nir(net, torch.randn(1, 3))  # Norse writes tau = dt / tau_inv, one value per layer
    assert np.allclose(graph.nodes["1"].tau, 1e-3 / 80.0)
    x = torch.randn(80, 3, 3, generator=gen(21)) * 3
    state, spk1, spk3 = None, [], []
    with torch.no_grad():
        for t in range(x.shape[0]):
            h = net[0](x[t])
            s1, st1 = net[1](h, None if state is None else state[0])
            s3, st3 = net[3](net[2](s1), None if state is None else state[1])
            state = (st1, st3)
            spk1.append(s1)
            spk3.append(s3)
    model = from_nir(graph, 1e-3, producer="norse")
    _, ours = run_model(model, x)
    assert torch.equal(ours["layer1"], torch.stack(spk1)) and torch.equal(ours["layer3"], torch.stack(spk3))
    assert torch.stack(spk1).sum() > 20 and torch.stack(spk3).sum() > 5
    with pytest.raises(ValueError, match="unknown producer"):
        from_nir(graph, 1e-3, producer="lava")
