"""Quantised consumer forms (issue 15): ``quantize_consumer_form``, ``evaluate_quantized(..., consumer=...)`` and
``surroflos export --consumer NAME --quantize``.

The quantised network is the spec graph quantised by ``quantize_graph``'s rules, turned into the consumer's form by
the consumer's own conversion. Claims, each checked where it can be:

- float64: the quantised form run in the consumer's own importer (Norse, snnTorch: their modules cast to float64 as
  in tests/test_export_consumers.py; ``nir``: the Euler reference) has exactly the spikes of the quantised spec graph
  run in our reference integrator (and of the quantised network rebuilt by ``from_nir``), wherever the membranes keep
  a margin of 1e-9 from the threshold (asserted: the forms compute the same update in another order);
- targets that round thresholds onto the weight grid (xylo, loihi2) put membranes *exactly* on the threshold for
  integer-valued inputs: there no margin exists, and the consumer may resolve such a tie otherwise; every spike it
  resolves otherwise is at such a tie (checked at each trial's first differing step, before the trajectories part);
- float32 (what ``evaluate_quantized`` runs): identical spikes by the same margin argument against the float32
  rounding bound, so accuracy and agreement equal those of quantising the model's own tensors.
"""

import copy
import json
import warnings

import nir
import numpy as np
import pytest
import torch
from torch import nn

import surroflos
from surroflos.export import ConsumerRefusal, from_nir, metadata_of, read, simulate, to_nir
from surroflos.export import targets as tg
from surroflos.export.to_nir import graph_inputs, run_model
from surroflos.export.verify import interop_python, simulate_with
from surroflos.snntorch import Leaky, RLeaky
from surroflos.train import TrainConfig, train

from _tolerance import exact_tol, recurrence_ops, rounding_tol, scale_of  # noqa: E402
from test_export_consumers import _f64, _import, _membrane_margin, _run  # noqa: E402  (the consumers' float64 runs)

F64 = torch.float64
DT = 1e-3


def gen(seed):
    return torch.Generator().manual_seed(seed)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _case(name):
    """(model, dt, input, target, bits): float64 networks whose quantised spec graph keeps a margin from the
    threshold; the targets leave thresholds in floating point (generic, spinnaker2)."""
    if name == "lif":
        m = surroflos.SpikingRNN(3, 16, 2, neuron="lif", reset="zero", g=2.0, generator=gen(6), dtype=F64)
        return m, DT, torch.randn(60, 3, 3, generator=gen(9), dtype=F64) * 2, "generic", 4
    if name == "lif-beta-per-neuron":  # Norse's fold 1/(1 - beta_i) differs per row: a per-row grid in its form
        m = surroflos.SpikingRNN(3, 16, 2, neuron="lif", reset="zero", g=2.0, beta=torch.linspace(0.6, 0.9, 16),
                                 generator=gen(4), dtype=F64)
        return m, DT, torch.randn(60, 3, 3, generator=gen(8), dtype=F64) * 2, "spinnaker2", 5
    if name == "feedforward":
        torch.manual_seed(3)
        m = nn.Sequential(nn.Linear(3, 8), Leaky(beta=0.8, reset_mechanism="zero"), nn.Linear(8, 2)).double()
        return m, DT, torch.randn(60, 3, 3, generator=gen(9), dtype=F64) * 2, "generic", 4
    if name == "rleaky-bias":  # the recurrent bias is moved into the input bias by the Norse/snnTorch forms
        torch.manual_seed(5)
        m = nn.Sequential(nn.Linear(3, 8), RLeaky(beta=0.8, linear_features=8, reset_mechanism="zero",
                                                  reset_delay=False), nn.Linear(8, 2)).double()
        with torch.no_grad():
            m[1].recurrent.bias.fill_(0.3)
        return m, DT, torch.randn(60, 3, 3, generator=gen(9), dtype=F64) * 2, "spinnaker2", 6
    if name == "balanced":
        m = surroflos.BalancedNetwork(N=40, K=6, n_in=2, n_out=2, dt=1e-4, generator=gen(5), dtype=F64)
        return m, 1e-4, torch.randn(300, 3, 2, generator=gen(9), dtype=F64) * 5, "generic", 6
    raise KeyError(name)


CASES = ["lif", "lif-beta-per-neuron", "feedforward", "rleaky-bias", "balanced"]


def _quantised(model, dt, target, bits):
    """The quantised spec graph, and the quantised network rebuilt from it."""
    qspec, _ = tg.quantize_graph(_quiet(to_nir, model, dt), target, bits=bits)
    return qspec, _quiet(from_nir, qspec, dt)


def _in_consumer(consumer, graph, gx, dt, monkeypatch):
    """The form run in float64 by the consumer's own importer (nir: the Euler reference at dt)."""
    if consumer == "nir":
        r = simulate(graph, gx, dt, method="euler", v0=metadata_of(graph)["initial_membrane"])
        return r.output, r.spikes
    return _run(consumer, _f64(_import(consumer, graph, monkeypatch)), graph, gx)


def _assert_on_grid(qform, info, target, bits):
    """Every weight the spec graph quantised keeps its grid in the form (folds included)."""
    weights = {k: n for k, n in qform.nodes.items() if isinstance(n, (nir.Affine, nir.Linear)) and
               "quant_scale" in (n.metadata or {})}
    assert {l.name for l in info.layers} <= set(weights), sorted(weights)
    for k, n in weights.items():
        need = tg.weight_bits_needed(n.weight, n.metadata["quant_scale"])
        assert need is not None and need <= bits, (k, need)
    assert not [i for i in tg.check_graph(qform, target) if i.rule == "weight_bits"]


@pytest.mark.parametrize("consumer", ["nir", "norse", "snntorch"])
@pytest.mark.parametrize("name", CASES)
def test_quantised_form_runs_exactly_in_the_consumer_float64(name, consumer, monkeypatch):
    model, dt, x, target, bits = _case(name)
    qform, info = tg.quantize_consumer_form(model, dt, consumer, target, bits=bits)
    assert info.target == target and info.bits == bits and qform.metadata["quant_target"] == target
    # The same form as the float file's (its dt, layout, how to run it), with the quantised numbers.
    fform = to_nir(model, dt, consumer=consumer)
    assert metadata_of(qform)["consumer"] == metadata_of(fform)["consumer"]
    assert set(qform.nodes) == set(fform.nodes) and sorted(qform.edges) == sorted(fform.edges)
    _assert_on_grid(qform, info, target, bits)
    qspec, qnet = _quantised(model, dt, target, bits)
    assert _membrane_margin(qnet, dt, x) > 1e-9
    gx = graph_inputs(model, x)
    md = metadata_of(qspec)
    ref = simulate(qspec, gx, dt, method=md["discretisation"], v0=md["initial_membrane"])
    net_out, net_spikes = run_model(qnet, x)
    _, float_spikes = run_model(model, x)
    got_out, got = _in_consumer(consumer, qform, gx, dt, monkeypatch)
    assert set(got) == set(net_spikes)
    for k in net_spikes:
        assert torch.equal(ref.spikes[k], net_spikes[k]), k
        assert torch.equal(got[k].to(F64), net_spikes[k]), (k, float((got[k] != net_spikes[k]).double().mean()))
    # Not vacuous: quantisation changed the network, and there are spikes to compare.
    assert any(not torch.equal(net_spikes[k], float_spikes[k]) for k in net_spikes)
    assert sum(int(s.sum()) for s in net_spikes.values()) > 20
    if consumer == "snntorch":  # its importer stores weights as float32 (tests/test_export_consumers.py)
        n_hidden = max(s.shape[-1] for s in net_spikes.values())
        torch.testing.assert_close(got_out.double(), net_out, rtol=0.0,
                                   atol=rounding_tol(torch.float32, scale_of(net_out) + 1.0, n_hidden + 1))
    else:
        torch.testing.assert_close(got_out, net_out, **exact_tol(scale_of(net_out)))


def test_per_row_grid_of_a_folded_weight_survives_the_file(tmp_path):
    """Norse's form folds 1/(1 - beta_i) into row i: with per-neuron decays the grid is one scale per row."""
    model, dt, _, target, bits = _case("lif-beta-per-neuron")
    qform, info = tg.quantize_consumer_form(model, dt, "norse", target, bits=bits)
    beta = model.beta.detach().double().numpy()
    s = next(l.scale for l in info.layers if l.name == "w_rec")
    np.testing.assert_allclose(qform.nodes["w_rec"].metadata["quant_scale"], s / (1 - beta), rtol=1e-12)
    assert qform.nodes["readout"].metadata["quant_scale"] == next(l.scale for l in info.layers if l.name == "readout")
    nir.write(tmp_path / "q.nir", qform)
    back = read(tmp_path / "q.nir")
    np.testing.assert_allclose(back.nodes["w_rec"].metadata["quant_scale"], s / (1 - beta), rtol=1e-12)
    _assert_on_grid(back, info, target, bits)
    # Quantising the form's own graph would put one grid on rows of different gains: refused.
    with pytest.raises(ValueError, match="'norse' form.*quantize_consumer_form"):
        tg.quantize_graph(back, target, bits=bits)


@pytest.mark.parametrize("target", ["xylo", "loihi2"])
def test_integer_thresholds_tie_and_the_consumer_differs_only_at_ties(target, monkeypatch):
    """xylo and loihi2 round the threshold onto the weight grid; with 0/1 inputs the membranes then land exactly on
    it. The Norse form computes the same membranes in another order, so it may resolve a tie otherwise: every
    spike it resolves otherwise (at a trial's first differing step, where both still share their past) is at a
    tie, within float64 rounding."""
    model = surroflos.SpikingRNN(2, 24, 2, neuron="lif", reset="zero", g=1.5, generator=gen(11), dtype=F64)
    x = (torch.rand(60, 16, 2, generator=gen(12), dtype=F64) < 0.3).to(F64)
    qform, _ = tg.quantize_consumer_form(model, DT, "norse", target, bits=8)
    _, qnet = _quantised(model, DT, target, 8)
    with torch.no_grad():
        U = qnet.rollout(x).states  # the membrane each step's spike is read from
    _, net = run_model(qnet, x)
    _, got = _in_consumer("norse", qform, x, DT, monkeypatch)
    theta = float(qnet.threshold)
    gap = (U - theta).detach().abs()
    bound = rounding_tol(F64, scale_of(U) + theta, recurrence_ops(U.shape[0], 2 * 24 + 8))
    assert theta != 1.0 or target == "loihi2"  # rounded onto the grid (loihi2's power-of-two grid holds 1.0)
    assert float(gap.min()) <= bound  # ties exist: no margin argument can claim identical spikes here
    differ = got["lif"] != net["lif"]
    for b in range(x.shape[1]):
        steps = differ[:, b].any(dim=-1).nonzero()
        if steps.numel():
            t = int(steps[0, 0])
            assert float(gap[t, b][differ[t, b]].max()) <= bound, (b, t)
    # Away from ties the form is the quantised network: most spikes agree.
    assert float((~differ).double().mean()) > 0.9


# ----------------------------------------------------------------------------------------------
# evaluate_quantized on a trained run, and the command line
# ----------------------------------------------------------------------------------------------

TINY = dict(task="xor", delay=4, T=20, N=12, epochs=2, steps_per_epoch=3, batch=8, k=2, flossing="none",
            spectrum_T=16, eval_batch=48, lyap_every=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qexport") / "lif"
    train(TrainConfig(model="lif", out=str(out), **TINY), progress=False, log=lambda s: None)
    return out


def _f32_bound(q, x):
    """How far two float32 evaluations of a LIF SpikingRNN's membranes may be apart while their spikes agree: per step
    ``n_in + N + 3`` rounded operations on summands up to ``max|U| + max row sums of |W_rec|, |W_in| + |b|``, over
    all steps (no growth: beta <= 1)."""
    with torch.no_grad():
        summands = float(q.rollout(x.double()).states.abs().max()) + float(q.weight_rec.abs().sum(1).max()) + \
            float(q.weight_in.abs().sum(1).max() + q.bias.abs().max())
    return rounding_tol(torch.float32, summands, recurrence_ops(x.shape[0], q.n_in + q.n_hidden + 3))


def test_evaluate_quantized_in_each_consumer_on_a_trained_run(run):
    """float32 consumers on the quantised form: by the margin argument their spikes are the quantised network's,
    so accuracy and agreement equal quantising the model's own tensors (via='model')."""
    model, task, cfg = tg.load_run(run)
    x, _, _ = tg._validation_set(task, cfg, torch.float32)
    target, bits = "spinnaker2", 5
    _, q = _quantised(copy.deepcopy(model).double(), DT, target, bits)
    with torch.no_grad():
        margin = float((q.rollout(x.double()).states - float(q.threshold)).abs().min())
    assert margin > _f32_bound(q, x), (margin, _f32_bound(q, x))
    base = tg.evaluate_quantized(run, DT, target, bits=bits)  # the model's own tensors quantised
    assert base["via"] == "model" and base["spike_agreement"] < 1.0  # quantisation changes spikes
    for consumer in ("nir", "norse", "snntorch"):
        r = tg.evaluate_quantized(run, DT, target, bits=bits, consumer=consumer)
        json.dumps(r)
        assert r["via"] == "consumer" and r["consumer"] == consumer and r["target"] == target and r["bits"] == bits
        assert r["n_trials"] == TINY["eval_batch"] and r["T"] == TINY["T"]
        assert r["consumer_agreement"] == 1.0 and r["conversion_agreement"] == 1.0, consumer
        assert r["spike_agreement"] == base["spike_agreement"] and r["first_divergence_step"] == \
            base["first_divergence_step"], consumer
        assert r["accuracy_float"] == base["accuracy_float"] == r["score_float_consumer"]
        assert r["accuracy"] == base["accuracy"] == r["score_quantized_network"]
        assert r["rate_quantized"] == base["rate_quantized"] and r["per_node_agreement"] == {
            "lif": r["spike_agreement"]}
        assert r["consumer_version"] == (None if consumer == "nir" else {"norse": "1.1.0", "snntorch": "1.0.0"}[
            consumer])
        assert r["quantization"]["form_quant_scales"]["readout"] == r["quantization"]["layers"][-1]["scale"]


def test_refusals_and_arguments(run):
    model, task, _ = tg.load_run(run)
    with pytest.raises(ConsumerRefusal, match="zero reset cannot be expressed"):  # the run resets to zero
        tg.evaluate_quantized(run, DT, "generic", consumer="spyx")
    for c in ("rockpool", "sinabs"):
        with pytest.raises(ConsumerRefusal, match="no surroflos network resets that way"):
            tg.quantize_consumer_form(model, DT, c, "generic")
    with pytest.raises(ValueError, match="unknown consumer 'brian'"):
        tg.evaluate_quantized(run, DT, "generic", consumer="brian")
    with pytest.raises(ValueError, match="via='model'.*consumer='norse'"):
        tg.evaluate_quantized(run, DT, "generic", via="model", consumer="norse")
    with pytest.raises(ValueError, match="8-bit"):
        tg.quantize_consumer_form(model, DT, "norse", "xylo", bits=12)
    balanced = surroflos.BalancedNetwork(N=20, K=4, n_in=1, n_out=1, dt=1e-4, generator=gen(1))
    with pytest.raises(ValueError, match="forms fix it at 1"):  # xylo rounds the threshold onto its grid
        tg.quantize_consumer_form(balanced, 1e-4, "norse", "xylo")
    with pytest.raises(ValueError, match="'snntorch' form"):
        tg.quantize_graph(to_nir(model, DT, consumer="snntorch"), "spinnaker2")
    # The nir form of a SpikingRNN is the spec graph: quantising it as a graph is the same.
    a, _ = tg.quantize_graph(to_nir(model, DT, consumer="nir"), "xylo", bits=4)
    b, _ = tg.quantize_graph(to_nir(model, DT), "xylo", bits=4)
    assert all(np.array_equal(a.nodes[k].weight, b.nodes[k].weight) for k in ("w_in", "w_rec", "readout"))


def _cli(argv):
    from surroflos.cli import main

    return main(["export"] + [str(a) for a in argv])


def test_cli_quantize_consumer_writes_the_evaluated_form(run, tmp_path, capsys):
    out = tmp_path / "m.nir"
    assert _cli([run, "--out", out, "--dt", DT, "--consumer", "snntorch", "--target", "spinnaker2", "--bits", 3,
                 "--quantize", "--trials", 16]) == 0
    text = capsys.readouterr().out
    qpath = tmp_path / "m.spinnaker2.q3.snntorch.nir"
    assert qpath.exists() and not (tmp_path / "m.spinnaker2.q3.nir").exists()
    rep = json.loads((tmp_path / "m.export.json").read_text())["quantize"]
    assert rep["consumer"] == "snntorch" and rep["quantized_nir"] == str(qpath.resolve())
    assert "the snntorch form run in snntorch 1.0.0" in text and "snntorch vs the quantised network" in text
    g = read(qpath)
    assert g.metadata["consumer"] == "snntorch" and g.metadata["quant_target"] == "spinnaker2"
    assert json.loads(g.metadata["surroflos"])["user"]["task"] == "xor"  # the run's metadata travels
    assert not any(i["rule"] == "weight_bits" for i in rep["check_quantized"])
    # The file written is the one evaluated: snnTorch's own run of it reproduces the reported agreement.
    model, task, cfg = tg.load_run(run)
    x, _, _ = tg._validation_set(task, cfg, torch.float32)
    _, spk = simulate_with("snntorch", g, x[:, :16], 1e-4)
    _, ours = run_model(model, x[:, :16])
    assert float((spk["lif"] == ours["lif"]).double().mean()) == rep["spike_agreement"] < 1.0


def test_cli_quantize_consumer_errors_are_one_line(run, tmp_path, capsys):
    for extra, words in ((["--consumer", "spyx"], "zero reset cannot be expressed"),
                         (["--consumer", "norse", "--via", "model"], "via='model'")):
        assert _cli([run, "--out", tmp_path / "e.nir", "--dt", DT, "--quantize", "--trials", 4] + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("surroflos export: error:") and words in err[0], err
    assert not list(tmp_path.glob("e.*.nir"))


@pytest.mark.interop
@pytest.mark.slow
def test_spyx_quantised_form_in_its_environment():
    """spyx (make interop's environment): the quantised spyx form of a subtract-reset network, compared one step
    late, is the quantised network (float32 margin argument) and the accuracy is the quantised network's."""
    if interop_python("spyx") is None:
        pytest.skip("spyx is not installed here and its environment (.interop/spyx) has not been built: make interop")
    from surroflos.train import validate

    task = validate(TrainConfig(task="xor", delay=4, T=20))
    model = surroflos.SpikingRNN(task.n_in, 16, task.n_out, neuron="lif", reset="subtract", g=2.0,
                                 generator=gen(1))
    x, _, _ = task.sample(32, generator=gen(0), dtype=torch.float32)  # the trials evaluate_quantized draws (seed 0)
    _, q = _quantised(copy.deepcopy(model).double(), DT, "spinnaker2", 6)
    with torch.no_grad():
        margin = float((q.rollout(x.double()).states - float(q.threshold)).abs().min())
    assert margin > _f32_bound(q, x), (margin, _f32_bound(q, x))
    r = tg.evaluate_quantized((model, task), DT, "spinnaker2", bits=6, n_trials=32, consumer="spyx")
    assert r["consumer_version"] == "1.0.0" and r["spike_shift"] == {"lif": 1} and r["consumer_dt"] == 1.0
    assert r["consumer_agreement"] == 1.0 and r["conversion_agreement"] == 1.0
    assert r["accuracy"] == r["score_quantized_network"] and r["spike_agreement"] < 1.0
