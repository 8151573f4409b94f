"""surroflos.export.targets and ``surroflos export``: hardware profiles, graph checks, quantisation,
quantised accuracy/agreement of a trained run, and the command line.

Graphs are built here with the nir package (independently of ``to_nir``); the command-line tests use
``surroflos.export.to_nir/write/read`` when they exist and otherwise a small reference exporter defined
below (so the command itself is always tested).
"""

import json
import math

import nir
import numpy as np
import pytest
import torch

from surroflos.export import targets as tg

from _tolerance import EXACT_RTOL_F64, F32_EPS
from surroflos.export.cli import cmd_export, report_path
from surroflos.train import TrainConfig, train

HARDWARE = ["loihi2", "spinnaker2", "xylo", "speck"]
DT = 1e-3


# ----------------------------------------------------------------------------------------------
# Graph builders
# ----------------------------------------------------------------------------------------------

def _on_grid(shape, seed, qmax=127, step=2.0 ** -6):
    """Integers in [-qmax, qmax] (the extreme included) times a power-of-two step: exactly on a grid."""
    rng = np.random.default_rng(seed)
    k = rng.integers(-qmax, qmax + 1, size=shape)
    k.flat[0] = qmax
    return (k * step).astype(np.float32)


def _rnn_graph(*, N=6, n_in=3, n_out=2, neuron="LIF", reset="subtract", bias=0.0, thresholds=None, seed=0,
               weights="grid", v_leak=0.0):
    """input -> w_in (Affine) -> neuron <-> w_rec (Linear), neuron -> readout (Affine) -> output."""
    rng = np.random.default_rng(seed)
    if weights == "grid":
        w_in, w_rec, w_out = (_on_grid(s, seed + i) for i, s in enumerate([(N, n_in), (N, N), (n_out, N)]))
    else:
        w_in, w_rec, w_out = (rng.normal(size=s).astype(np.float32) for s in [(N, n_in), (N, N), (n_out, N)])
    th = np.full(N, 1.0) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    md = {"reset": reset}
    if neuron == "LIF":
        cell = nir.LIF(tau=np.full(N, 2e-3), r=np.full(N, 2.0), v_leak=np.full(N, v_leak), v_threshold=th,
                       v_reset=np.zeros(N), metadata=md)
    else:
        cell = nir.CubaLIF(tau_syn=np.full(N, 5e-3), tau_mem=np.full(N, 2e-3), r=np.full(N, 2.0),
                           v_leak=np.full(N, v_leak), v_threshold=th, v_reset=np.zeros(N), metadata=md)
    nodes = {"input": nir.Input(input_type={"input": np.array([n_in])}),
             "w_in": nir.Affine(weight=w_in, bias=np.full(N, bias, dtype=np.float32)),
             "cell": cell, "w_rec": nir.Linear(weight=w_rec),
             "readout": nir.Affine(weight=w_out, bias=np.zeros(n_out, dtype=np.float32)),
             "output": nir.Output(output_type={"output": np.array([n_out])})}
    edges = [("input", "w_in"), ("w_in", "cell"), ("cell", "w_rec"), ("w_rec", "cell"), ("cell", "readout"),
             ("readout", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges)


def _ff_if_graph(*, thresholds=(1.0, 1.0), bias=0.0, weights=None, n_in=4, n_hid=5, n_out=3, reset="zero"):
    """input -> Affine -> IF -> Affine -> IF -> output (Speck's kind of network)."""
    w1 = _on_grid((n_hid, n_in), 1) if weights is None else weights
    w2 = _on_grid((n_out, n_hid), 2)
    th1 = np.full(n_hid, thresholds[0])
    th1[-1] = thresholds[1]
    nodes = {"input": nir.Input(input_type={"input": np.array([n_in])}),
             "fc1": nir.Affine(weight=w1, bias=np.full(n_hid, bias, dtype=np.float32)),
             "if1": nir.IF(r=np.ones(n_hid), v_threshold=th1, v_reset=np.zeros(n_hid), metadata={"reset": reset}),
             "fc2": nir.Affine(weight=w2, bias=np.zeros(n_out, dtype=np.float32)),
             "if2": nir.IF(r=np.ones(n_out), v_threshold=np.full(n_out, 1.0), v_reset=np.zeros(n_out),
                           metadata={"reset": reset}),
             "output": nir.Output(output_type={"output": np.array([n_out])})}
    edges = [("input", "fc1"), ("fc1", "if1"), ("if1", "fc2"), ("fc2", "if2"), ("if2", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges)


def _rules(issues, severity=None):
    return {(i.node, i.rule) for i in issues if severity is None or i.severity == severity}


# A graph that each hardware profile accepts (no issue at all), built from the profile's own limits.
def _compliant(target):
    if target == "speck":
        return _ff_if_graph()
    if target == "loihi2":
        g = _rnn_graph(neuron="CubaLIF", reset="zero")
        return tg.quantize_graph(g, "loihi2")[0]
    if target == "xylo":
        return _rnn_graph(neuron="CubaLIF", reset="subtract", n_in=3, n_out=2)
    if target == "generic":
        return _rnn_graph(neuron="LIF", reset="zero", bias=0.25, weights="float")
    return _rnn_graph(neuron="LIF", reset="subtract", bias=0.25)  # spinnaker2


# ----------------------------------------------------------------------------------------------
# Profiles and checks
# ----------------------------------------------------------------------------------------------

def test_profiles_are_documented():
    assert set(tg.TARGETS) == {"generic", "loihi2", "spinnaker2", "xylo", "speck"}
    for name, t in tg.TARGETS.items():
        assert t.name == name and tg.get_target(name) is t and tg.get_target(t) is t
        assert t.node_types <= tg.ALL_NODE_TYPES and {"Input", "Output"} <= t.node_types
        assert set(t.reset_modes) <= set(tg.RESET_MODES) and t.bias in tg.BIAS_RULES
        # Every limit a profile sets names its source; undocumented ones say so instead of a number.
        for limit in ("weight_bits", "max_neurons_per_layer", "max_inputs", "max_outputs", "max_layers", "max_kernel"):
            if getattr(t, limit) is not None:
                assert t.sources.get(limit), (name, limit)
        for limit in ("max_fan_in",):
            if getattr(t, limit) is None and name != "generic":
                assert t.sources.get(limit) == "not documented", (name, limit)
        json.dumps(t.to_dict())
    assert tg.TARGETS["spinnaker2"].weight_range == (-127, 127)
    assert all(tg.TARGETS[n].weight_bits == 8 for n in HARDWARE) and tg.TARGETS["generic"].weight_bits is None
    with pytest.raises(ValueError, match="unknown target 'truenorth'"):
        tg.get_target("truenorth")
    with pytest.raises(TypeError):
        tg.check_graph({"not": "a graph"}, "generic")


@pytest.mark.parametrize("target", HARDWARE + ["generic"])
def test_each_profile_accepts_a_compliant_graph(target):
    assert tg.check_graph(_compliant(target), target) == []


@pytest.mark.parametrize("target", HARDWARE)
def test_too_many_bits_is_an_error_on_hardware_only(target):
    g = _compliant(target)
    big = next(n for n, node in g.nodes.items() if type(node).__name__ in tg.WEIGHT_TYPES)
    w = np.array(g.nodes[big].weight, dtype=np.float64)
    g.nodes[big].weight = np.round(w / np.abs(w).max() * 1000.0)  # integers up to 1000: 11 bits
    g.nodes[big].metadata = {}
    issues = tg.check_graph(g, target)
    assert _rules(issues, "error") == {(big, "weight_bits")}
    assert "11 bits" in next(i.detail for i in issues if i.rule == "weight_bits")
    assert not any(i.rule == "weight_bits" for i in tg.check_graph(g, "generic"))
    # Quantised to the target's 8 bits it fits again.
    assert tg.check_graph(tg.quantize_graph(g, target)[0], target) == []


@pytest.mark.parametrize("target", HARDWARE)
def test_floating_point_weights_are_a_warning(target):
    g = _rnn_graph(weights="float")
    issues = [i for i in tg.check_graph(g, target) if i.rule == "weight_bits"]
    assert {i.node for i in issues} == {"w_in", "w_rec", "readout"} and all(i.severity == "warning" for i in issues)


def test_weight_bits_needed():
    assert tg.weight_bits_needed(_on_grid((4, 4), 0)) == 8  # max |q| = 127 on the per-layer grid
    assert tg.weight_bits_needed(np.array([[3.0, -4.0]])) == 4  # integers: |w| <= 7
    assert tg.weight_bits_needed(np.array([[0.3, -0.2]]), scale=0.1) == 3
    assert tg.weight_bits_needed(np.random.default_rng(0).normal(size=(8, 8))) is None
    assert tg.weight_bits_needed(np.zeros((2, 2))) == 1


def test_speck_needs_one_threshold_per_layer():
    two = _ff_if_graph(thresholds=(1.0, 2.0))
    assert _rules(tg.check_graph(two, "speck"), "error") == {("if1", "threshold_per_layer")}
    for other in ("generic", "spinnaker2", "xylo"):  # per-neuron thresholds are fine there
        assert not any(i.rule == "threshold_per_layer" for i in tg.check_graph(two, other))


def test_speck_rejects_recurrence_and_lif():
    issues = tg.check_graph(_rnn_graph(reset="zero"), "speck")
    assert {("", "recurrent"), ("cell", "node_type"), ("w_rec", "node_type")} <= _rules(issues, "error")


def test_xylo_profile_rejects_lif_which_rockpool_cannot_import():
    """Rockpool 3.1.0's from_nir crashes on nir.LIF (it reads tau_mem): the Xylo profile must not accept it."""
    assert "LIF" not in tg.TARGETS["xylo"].node_types and "CubaLIF" in tg.TARGETS["xylo"].node_types
    assert ("cell", "node_type") in _rules(tg.check_graph(_rnn_graph(neuron="LIF"), "xylo"), "error")
    assert ("cell", "node_type") not in _rules(tg.check_graph(_rnn_graph(neuron="CubaLIF"), "xylo"), "error")
    assert "not a package" in tg.TARGETS["loihi2"].sources["node_types"]


def test_loihi2_lava_dl_path_needs_zero_bias_and_leak():
    g = _compliant("loihi2")
    g.nodes["w_in"].bias = np.full(6, 0.5, dtype=np.float32)
    assert _rules(tg.check_graph(g, "loihi2"), "error") == {("w_in", "bias")}
    g = _compliant("loihi2")
    g.nodes["cell"].v_leak = np.full(6, 0.1)
    assert _rules(tg.check_graph(g, "loihi2"), "error") == {("cell", "v_leak")}
    g = _compliant("loihi2")
    g.nodes["cell"].tau_mem = np.linspace(1e-3, 3e-3, 6)
    assert _rules(tg.check_graph(g, "loihi2"), "error") == {("cell", "shared_decays")}
    # Biases are fine on SpiNNaker2 (i_offset) and in NIR itself.
    biased = _rnn_graph(bias=0.5)
    assert not any(i.rule == "bias" for t in ("spinnaker2", "generic") for i in tg.check_graph(biased, t))
    assert any(i.rule == "bias" and i.severity == "warning" for i in tg.check_graph(biased, "xylo"))


@pytest.mark.parametrize("target", HARDWARE)
def test_unsupported_node_type(target):
    g = _compliant(target)
    # Put a Delay node between the first weight layer and the neurons.
    first = next(n for n, node in g.nodes.items() if type(node).__name__ in tg.WEIGHT_TYPES)
    size = int(np.asarray(g.nodes[first].weight).shape[0])
    dst = next(b for a, b in g.edges if a == first)
    g.nodes["delay"] = nir.Delay(delay=np.zeros(size))
    g.nodes["delay"].input_type = {"input": np.array([size])}
    g.nodes["delay"].output_type = {"output": np.array([size])}
    g.edges = [(a, "delay") if (a, b) == (first, dst) else (a, b) for a, b in g.edges] + [("delay", dst)]
    assert _rules(tg.check_graph(g, target), "error") == {("delay", "node_type")}
    assert not any(i.rule == "node_type" for i in tg.check_graph(g, "generic"))


def test_reset_modes():
    sub, zero = _rnn_graph(reset="subtract"), _rnn_graph(reset="zero")
    assert ("cell", "reset") in _rules(tg.check_graph(zero, "xylo"), "error")  # Xylo: subtractive only
    assert ("cell", "reset") not in _rules(tg.check_graph(sub, "xylo"))
    assert ("cell", "reset") in _rules(tg.check_graph(sub, "loihi2"), "error")  # Loihi: reset to zero
    for g in (sub, zero):
        assert ("cell", "reset") not in _rules(tg.check_graph(g, "spinnaker2"))
    # NIR itself only resets to v_reset: subtract is a warning for generic consumers.
    assert _rules(tg.check_graph(sub, "generic"), "warning") == {("cell", "reset")}
    assert tg.check_graph(zero, "generic") == []
    # Without metadata, NIR's own semantics (reset to v_reset) are assumed.
    zero.nodes["cell"].metadata = {}
    assert ("cell", "reset") in _rules(tg.check_graph(zero, "xylo"))


def test_size_limits():
    g = _rnn_graph(n_in=17, n_out=9, reset="subtract")
    assert {("input", "max_inputs"), ("output", "max_outputs")} <= _rules(tg.check_graph(g, "xylo"), "error")
    big = _ff_if_graph(n_hid=1025, weights=_on_grid((1025, 4), 3))
    assert ("if1", "max_neurons") in _rules(tg.check_graph(big, "speck"), "error")
    assert not any(i.rule.startswith("max_") for i in tg.check_graph(big, "generic"))


# ----------------------------------------------------------------------------------------------
# Quantisation
# ----------------------------------------------------------------------------------------------

def test_quantisation_is_exact_on_the_grid():
    g = _rnn_graph(weights="grid")
    q, info = tg.quantize_graph(g, "generic", bits=8)
    for name in ("w_in", "w_rec", "readout"):
        assert np.array_equal(q.nodes[name].weight, g.nodes[name].weight)  # bit for bit
        assert q.nodes[name].weight.dtype == np.float32 and q.nodes[name].metadata["quant_scale"] == 2.0 ** -6
    assert info.max_abs_error == 0.0 and all(l.scale == 2.0 ** -6 for l in info.layers)
    assert np.array_equal(info.integer_weights["w_in"] * 2.0 ** -6, g.nodes["w_in"].weight)
    # Quantising again changes nothing either.
    q2, info2 = tg.quantize_graph(q, "generic", bits=8)
    assert info2.max_abs_error == 0.0


@pytest.mark.parametrize("bits", [3, 8])
def test_quantisation_error_is_bounded_by_half_a_step(bits):
    g = _rnn_graph(weights="float", seed=3)
    q, info = tg.quantize_graph(g, "generic", bits=bits)
    qmax = 2 ** (bits - 1) - 1
    for layer in info.layers:
        w = np.asarray(g.nodes[layer.name].weight, dtype=np.float64)
        w_hat = np.asarray(q.nodes[layer.name].weight, dtype=np.float64)
        s = layer.scale
        assert s == pytest.approx(np.abs(w).max() / qmax, rel=1e-12)  # the largest weight maps to qmax
        # w_hat = k s is stored in float32: one more rounding of a value up to qmax s (tests/_tolerance.py)
        assert np.abs(w_hat - w).max() <= s / 2 + F32_EPS * qmax * s
        k = w_hat / s
        assert np.allclose(k, np.round(k), rtol=0, atol=F32_EPS * qmax) and np.abs(np.round(k)).max() == qmax
        # the report's errors: the same float64 arithmetic on the same arrays
        assert layer.max_abs_error == pytest.approx(np.abs(w_hat - w).max(), rel=EXACT_RTOL_F64, abs=0)
        assert layer.mean_abs_error == pytest.approx(np.abs(w_hat - w).mean(), rel=EXACT_RTOL_F64, abs=0)
        assert 0 < layer.max_abs_error and layer.n_clipped == 0
    assert tg.weight_bits_needed(q.nodes["w_rec"].weight, q.nodes["w_rec"].metadata["quant_scale"]) == bits


def test_per_layer_scales():
    g = _rnn_graph(weights="float", seed=4)
    g.nodes["readout"].weight = g.nodes["readout"].weight * 100.0
    _, per = tg.quantize_graph(g, "generic", bits=8, per_layer=True)
    _, one = tg.quantize_graph(g, "generic", bits=8, per_layer=False)
    s = {l.name: l.scale for l in per.layers}
    assert len(set(s.values())) == 3
    for name in s:
        assert s[name] == pytest.approx(np.abs(g.nodes[name].weight).max() / 127, rel=EXACT_RTOL_F64)
    assert len({l.scale for l in one.layers}) == 1
    assert one.layers[0].scale == pytest.approx(np.abs(g.nodes["readout"].weight).max() / 127, rel=EXACT_RTOL_F64)
    err = lambda info, n: next(l.max_abs_error for l in info.layers if l.name == n)  # noqa: E731
    assert err(one, "w_in") > 10 * err(per, "w_in")  # the small layer loses precision under a global scale


def test_hardware_populations_share_a_scale_and_round_thresholds():
    g = _rnn_graph(weights="float", seed=5, thresholds=np.linspace(0.9, 1.3, 6), bias=0.123)
    q, info = tg.quantize_graph(g, "xylo")
    s = {l.name: l.scale for l in info.layers}
    # Input and recurrent weights feed one population, whose threshold is divided by one scale.
    assert s["w_in"] == s["w_rec"] == pytest.approx(
        max(np.abs(g.nodes["w_in"].weight).max(), np.abs(g.nodes["w_rec"].weight).max()) / 127, rel=EXACT_RTOL_F64)
    assert s["readout"] != s["w_in"]
    th = np.asarray(q.nodes["cell"].v_threshold) / s["w_in"]
    assert np.allclose(th, np.round(th)) and np.abs(th * s["w_in"] - g.nodes["cell"].v_threshold).max() <= s["w_in"] / 2
    b = np.asarray(q.nodes["w_in"].bias, dtype=np.float64) / s["w_in"]
    assert np.allclose(b, np.round(b), rtol=0, atol=F32_EPS * np.abs(b).max())  # float32 storage of k s
    # SpiNNaker2 scales thresholds in floating point: they stay as they were.
    q2, _ = tg.quantize_graph(g, "spinnaker2")
    assert np.array_equal(q2.nodes["cell"].v_threshold, g.nodes["cell"].v_threshold)
    # Loihi 2: one power-of-two exponent per layer.
    _, info3 = tg.quantize_graph(g, "loihi2")
    for l in info3.layers:
        assert math.log2(l.scale) == round(math.log2(l.scale)) and np.abs(info3.integer_weights[l.name]).max() <= 127


def test_quantize_arguments():
    g = _rnn_graph()
    with pytest.raises(ValueError, match="8-bit"):
        tg.quantize_graph(g, "xylo", bits=16)
    with pytest.raises(ValueError, match=r"\[2, 32\]"):
        tg.quantize_graph(g, "generic", bits=1)
    with pytest.raises(TypeError):
        tg.quantize_graph(g, "generic", bits=8.0)
    with pytest.raises(TypeError):
        tg.quantize_graph("graph.nir", "generic")


# ----------------------------------------------------------------------------------------------
# A tiny trained run (shared by the evaluation and command-line tests)
# ----------------------------------------------------------------------------------------------

TINY = dict(task="xor", delay=4, T=20, N=12, epochs=2, steps_per_epoch=3, batch=8, k=2, flossing="none",
            spectrum_T=16, eval_batch=48, lyap_every=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "lif"
    train(TrainConfig(model="lif", out=str(out), **TINY), progress=False, log=lambda s: None)
    return out


def _reference_graph(model, dt):
    """The graph of a recurrent LIF SpikingRNN, written here from SCIENCE.md section 6 (snnTorch's
    conventions tau = dt / (1 - beta), r = tau / dt)."""
    N = model.n_hidden
    beta = float(model.beta.clamp(0, 1))
    tau = dt / (1.0 - beta)
    f = lambda t: t.detach().cpu().numpy().astype(np.float32)  # noqa: E731
    nodes = {"input": nir.Input(input_type={"input": np.array([model.n_in])}),
             "w_in": nir.Affine(weight=f(model.weight_in), bias=f(model.bias)),
             "lif": nir.LIF(tau=np.full(N, tau), r=np.full(N, tau / dt), v_leak=np.zeros(N),
                            v_threshold=np.broadcast_to(f(model.threshold), (N,)).astype(np.float64),
                            v_reset=np.zeros(N), metadata={"reset": model.reset}),
             "w_rec": nir.Linear(weight=f(model.weight_rec)),
             "readout": nir.Affine(weight=f(model.readout_layer.weight), bias=f(model.readout_layer.bias)),
             "output": nir.Output(output_type={"output": np.array([model.n_out])})}
    edges = [("input", "w_in"), ("w_in", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "readout"),
             ("readout", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges)


@pytest.mark.parametrize("target", ["generic", "xylo", "loihi2"])
def test_model_and_graph_quantisation_agree(run, target):
    model, _, _ = tg.load_run(run)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qmodel, minfo = tg.quantize_model(model, target, bits=6)
    qgraph, ginfo = tg.quantize_graph(_reference_graph(model, DT), target, bits=6)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    f = lambda t: t.detach().numpy().astype(np.float32)  # noqa: E731
    assert np.array_equal(f(qmodel.weight_in), qgraph.nodes["w_in"].weight)
    assert np.array_equal(f(qmodel.weight_rec), qgraph.nodes["w_rec"].weight)
    assert np.array_equal(f(qmodel.readout_layer.weight), qgraph.nodes["readout"].weight)
    # k s in torch's float32 and in numpy's float64 then stored as float32: each within one float32 rounding
    assert np.allclose(f(qmodel.bias), qgraph.nodes["w_in"].bias, rtol=2 * F32_EPS, atol=0)
    assert np.allclose(np.broadcast_to(f(qmodel.threshold), (model.n_hidden,)), qgraph.nodes["lif"].v_threshold,
                       rtol=2 * F32_EPS, atol=0)
    assert [l.scale for l in minfo.layers] == pytest.approx([l.scale for l in ginfo.layers], rel=1e-12)


def test_evaluate_quantized_on_a_trained_run(run):
    result = json.loads((run / "result.json").read_text())
    r16 = tg.evaluate_quantized(run, DT, "generic", bits=16)
    # The float model scored on the run's own validation trials reproduces the training result.
    assert r16["accuracy_float"] == pytest.approx(result["final"]["accuracy"], abs=1e-12)
    assert r16["metric"] == "accuracy" and r16["n_trials"] == TINY["eval_batch"] and r16["T"] == TINY["T"]
    assert r16["spike_agreement"] == 1.0 and r16["first_divergence_step"] is None
    assert r16["accuracy"] == r16["accuracy_float"] and r16["rate_float"] > 0
    r2 = tg.evaluate_quantized(run, DT, "xylo", bits=2)
    for r in (r16, r2):
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["spike_agreement"] <= 1.0
        json.dumps(r)
    assert r2["spike_agreement"] < 1.0 and r2["first_divergence_step"] is not None
    assert r2["quantization"]["max_abs_error"] > 100 * r16["quantization"]["max_abs_error"]
    assert r2["quantization"]["target"] == "xylo" and r2["bits"] == 2
    r8 = tg.evaluate_quantized(run, DT, "loihi2", n_trials=8)
    assert r8["bits"] == 8 and r8["n_trials"] == 8 and 0.0 <= r8["spike_agreement"] <= 1.0


def test_requantising_a_quantised_model_changes_no_spike(run):
    model, task, _ = tg.load_run(run)
    for target in ("generic", "speck"):
        qmodel, _ = tg.quantize_model(model, target, bits=4)
        r = tg.evaluate_quantized((qmodel, task), DT, target, bits=4, n_trials=16)
        assert r["quantization"]["max_abs_error"] == 0.0 and r["spike_agreement"] == 1.0
        assert r["score_quantized"] == r["score_float"]


def test_evaluate_quantized_arguments(run):
    model, task, _ = tg.load_run(run)
    with pytest.raises(ValueError, match="dt"):
        tg.evaluate_quantized(run, 0.0, "generic")
    with pytest.raises(ValueError, match="via"):
        tg.evaluate_quantized(run, DT, "generic", via="onnx")
    with pytest.raises(TypeError, match="run folder"):
        tg.evaluate_quantized(model, DT, "generic")
    with pytest.raises(tg.RunError, match="does not exist"):
        tg.evaluate_quantized(run.parent / "nowhere", DT, "generic")


def _export_api_available(names=("to_nir", "from_nir", "write", "read")) -> bool:
    try:
        for name in names:
            tg._export_fn(name)
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _export_api_available(), reason="surroflos.export.to_nir/from_nir not available yet")
@pytest.mark.parametrize("target, bits", [("xylo", 4), ("loihi2", 6), ("generic", 8)])
def test_evaluate_quantized_through_nir(run, target, bits):
    # to_nir -> quantize_graph -> from_nir runs exactly what quantising the model's tensors runs
    # (from_nir restores a lif SpikingRNN bit for bit, thresholds rounded on the chip's grid included).
    r = tg.evaluate_quantized(run, DT, target, bits=bits, via="nir", n_trials=16)
    m = tg.evaluate_quantized(run, DT, target, bits=bits, via="model", n_trials=16)
    assert r["via"] == "nir" and m["via"] == "model"
    assert r["conversion_agreement"] == 1.0
    assert r["spike_agreement"] == m["spike_agreement"] < 1.0
    assert r["score_quantized"] == m["score_quantized"]


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------

@pytest.fixture
def export_api(monkeypatch):
    """The real surroflos.export functions, or the reference exporter above when they are missing."""
    if _export_api_available():
        return "real"

    def to_nir(model, dt, *, metadata=None):
        from surroflos.models import SpikingRNN

        if not isinstance(model, SpikingRNN) or model.neuron != "lif":
            raise TypeError(f"reference exporter: {type(model).__name__} not supported")
        g = _reference_graph(model, dt)
        # The layout of surroflos's own exporter: user metadata inside a JSON string.
        g.metadata = {"generator": "surroflos", "surroflos": json.dumps({"user": metadata or {},
                                                                         "model": {"reset": model.reset}})}
        return g

    def write(path, model, dt, *, metadata=None):
        nir.write(path, to_nir(model, dt, metadata=metadata))

    fns = {"to_nir": to_nir, "write": write, "read": nir.read}

    def fake(name):
        if name not in fns:
            raise ImportError(f"surroflos.export.{name} is not available")
        return fns[name]

    monkeypatch.setattr(tg, "_export_fn", fake)
    return "reference"


def _cli(argv):
    """``surroflos export argv`` through the command line's error boundary (user errors: status 2)."""
    from surroflos.cli import build_parser, main

    args = build_parser().parse_args(["export"] + [str(a) for a in argv])
    assert args.func is cmd_export
    return main(["export"] + [str(a) for a in argv])


def test_cli_writes_nir_report_and_table(run, tmp_path, export_api, capsys):
    out = tmp_path / "model.nir"
    rc = _cli([run, "--out", out, "--dt", DT, "--target", "xylo", "--quantize", "--trials", 16])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert out.exists() and (tmp_path / "model.xylo.q8.nir").exists()
    rep = json.loads((tmp_path / "model.export.json").read_text())
    assert report_path(str(out)) == str(tmp_path / "model.export.json")
    graph = nir.read(out)
    user = json.loads(graph.metadata["surroflos"])["user"]
    assert user["training_config"]["N"] == TINY["N"] and user["task"] == "xor"  # the config travels in the file
    names = [r["name"] for r in rep["graph"]["nodes"]]
    assert sorted(names) == sorted(graph.nodes) and graph.nodes[names[0]].__class__.__name__ == "Input"
    assert rep["target"] == "xylo" and rep["training_config"]["model"] == "lif"
    # The run resets to zero: Xylo (subtractive reset) must say so.
    assert any(i["rule"] == "reset" and i["severity"] == "error" for i in rep["check"])
    q = rep["quantize"]
    assert 0.0 <= q["accuracy"] <= 1.0 and 0.0 <= q["spike_agreement"] <= 1.0 and q["n_trials"] == 16
    assert not any(i["rule"] == "weight_bits" for i in q["check_quantized"])
    for words in ("node", "type", "parameters", "xylo:", "spike agreement", "quantisation for xylo"):
        assert words in text, words
    assert _cli([run, "--out", tmp_path / "b.nir", "--dt", DT, "--target", "xylo", "--strict"]) == 1
    capsys.readouterr()


@pytest.mark.skipif(not _export_api_available(("to_nir", "write", "read", "verify")),
                    reason="surroflos.export.verify not available yet")
def test_cli_verify(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SURROFLOS_INTEROP_DIR", str(tmp_path / "none"))  # the interop consumers: tests/test_interop.py
    rc = _cli([run, "--out", tmp_path / "m.nir", "--dt", DT, "--verify", "--trials", 4])
    assert rc == 0
    rep = json.loads((tmp_path / "m.export.json").read_text())
    assert "verify" in rep


def test_cli_errors(run, tmp_path, export_api, capsys):
    assert _cli([tmp_path / "missing", "--dt", DT]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((run / "config.json").read_text())
    assert _cli([empty, "--dt", DT]) == 2
    assert "no checkpoint.pt" in capsys.readouterr().err
    assert _cli([run, "--dt", DT, "--target", "speck", "--quantize", "--bits", 12, "--out", tmp_path / "x.nir"]) == 2
    assert "8-bit" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _cli([run])  # --dt is required
    with pytest.raises(SystemExit):
        _cli([run, "--dt", "-1"])


def test_cli_unsupported_model(tmp_path, export_api, capsys):
    out = tmp_path / "rate"
    train(TrainConfig(model="rate", out=str(out), **dict(TINY, epochs=1)), progress=False, log=lambda s: None)
    assert _cli([out, "--dt", DT, "--out", tmp_path / "r.nir"]) == 2
    assert "cannot export the 'rate' network" in capsys.readouterr().err


@pytest.mark.skipif(not _export_api_available(("to_nir", "write", "read")), reason="surroflos.export not available")
def test_cli_consumer_form_and_refusal(run, tmp_path, capsys):
    """--consumer writes the form that consumer runs exactly; a consumer that cannot is a one-line usage error
    (status 2) naming the reason and the nearest exact alternative, and nothing is written."""
    from surroflos.export import metadata_of, read

    out = tmp_path / "norse.nir"
    assert _cli([run, "--out", out, "--dt", DT, "--consumer", "norse"]) == 0
    text = capsys.readouterr().out
    g = read(out)
    assert g.metadata["consumer"] == "norse" and metadata_of(g)["consumer"]["consumer_dt"] == 1e-3
    assert "norse.torch.from_nir(graph)" in text
    assert json.loads((tmp_path / "norse.export.json").read_text())["consumer"] == "norse"
    bad = tmp_path / "spyx.nir"
    assert _cli([run, "--out", bad, "--dt", DT, "--consumer", "spyx"]) == 2  # the run resets to zero
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("surroflos export: error: --consumer spyx:")
    assert "zero reset cannot be expressed" in err[0] and "Nearest exact alternative: train with reset='subtract'" in err[0]
    assert not bad.exists()
    with pytest.raises(SystemExit):
        _cli([run, "--dt", DT, "--consumer", "brian"])
