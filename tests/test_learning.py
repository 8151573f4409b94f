"""surroflos.learning (e-prop, RFLO) and its wiring into the trainer (--rule, --local-flossing).

Oracles: the two implementations of e-prop (online eligibility traces, truncated autograd) derived
independently must agree; with zero recurrent weights there is no recurrent credit to lose, so
symmetric e-prop must equal BPTT (the model's own forward and backward); a measured peak memory; a
training run that must learn more than its readout alone.
"""

import json
import weakref

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from surroflos import cli, tasks
from surroflos.learning import BPTT, RULES, EProp, make_rule
from surroflos.models import RateRNN, SpikingRNN
from surroflos.train import ConfigError, TrainConfig, train

F64 = torch.float64
TASKS = {"xor": dict(delay=3, T=18), "2afc": dict(T=22)}  # regression (masked MSE) and classification (CE)


def _task_data(name: str, batch: int, seed: int):
    task = tasks.make(name, **TASKS[name])
    x, y, m = task.sample(batch, torch.Generator().manual_seed(seed), dtype=F64)
    return task, x, y, m


def _rate(task, seed, **kw):
    kw = {"g": 1.4, **kw}
    return RateRNN(task.n_in, 10, task.n_out, generator=torch.Generator().manual_seed(seed), dtype=F64, **kw)


def _lif(task, seed, **kw):
    kw = {"g": 2.0, "input_scale": 2.0, **kw}
    return SpikingRNN(task.n_in, 10, task.n_out, generator=torch.Generator().manual_seed(seed), dtype=F64, **kw)


def _assert_same(a: dict, b: dict, tol: float = 1e-10) -> None:
    assert a.keys() == b.keys()
    for k in a:
        scale = max(1.0, float(b[k].abs().max()))
        err = float((a[k] - b[k]).abs().max())
        assert err <= tol * scale, f"{k}: |online - autograd| = {err:.3g}"


NETWORKS = [
    ("rate dt=1 tanh", _rate, {}),
    ("rate dt=0.3 tanh", _rate, {"dt": 0.3}),
    ("rate dt=0.2 relu", _rate, {"dt": 0.2, "nonlinearity": "relu", "g": 1.0}),
    ("lif subtract", _lif, {}),
    ("lif zero reset", _lif, {"reset": "zero", "beta": 0.8}),
    ("lif reset not detached", _lif, {"detach_reset": False, "surrogate": "fast_sigmoid"}),
    ("lif zero reset not detached", _lif, {"reset": "zero", "detach_reset": False}),
    ("lif per-neuron beta", _lif, {"beta": [0.5 + 0.045 * i for i in range(10)]}),
    ("lif leaky readout", _lif, {"readout": "leaky", "readout_beta": 0.8}),
]


@pytest.mark.parametrize("feedback", ["symmetric", "random"])
@pytest.mark.parametrize("label, make, kw", NETWORKS, ids=[n[0] for n in NETWORKS])
def test_online_traces_equal_truncated_autograd(label, make, kw, feedback):
    """(a) eligibility traces carried forward == (b) BPTT through the local state only, float64."""
    for seed, task_name in ((0, "xor"), (1, "2afc")):
        task, x, y, m = _task_data(task_name, 5, seed)
        net = make(task, seed + 10, **kw)
        rule = EProp(net, feedback=feedback, generator=torch.Generator().manual_seed(seed))
        loss_a, ga = rule.gradients(x, y, m, task, implementation="online")
        loss_b, gb = rule.gradients(x, y, m, task, implementation="autograd")
        _assert_same(ga, gb)
        assert set(ga) == {"weight_rec", "weight_in", "bias", "readout_layer.weight", "readout_layer.bias"}
        assert float(gb["weight_rec"].norm()) > 1e-3  # not a vacuous comparison of zeros
        with torch.no_grad():
            ref = net.rollout(x)
        assert abs(float(loss_a) - float(task.loss(ref.outputs, y, m))) < 1e-12
        assert abs(float(loss_b) - float(loss_a)) < 1e-12
        if make is _lif:  # the network spikes, so the surrogate pseudo-derivative is exercised
            assert 0.02 < float(ref.activity.mean()) < 0.9


class _OtherLoss:
    """A task-like object whose loss is not Task.loss: the online rule must differentiate it per step."""

    def __init__(self, task):
        self.task = task

    def loss(self, outputs, targets, mask):
        return self.task.loss(outputs, targets, mask)


@pytest.mark.parametrize("task_name", ["xor", "2afc"])
@pytest.mark.parametrize("make, kw", [(_rate, {"dt": 0.5}), (_lif, {"reset": "zero", "readout": "leaky"})])
def test_generic_loss_path_agrees(make, kw, task_name):
    task, x, y, m = _task_data(task_name, 5, 4)
    m[: x.shape[0] // 2, 1:3] = False  # uneven masks: steps weigh by their share of masked entries
    net = make(task, 6, **kw)
    rule = EProp(net, feedback="random", generator=torch.Generator().manual_seed(1))
    loss_fast, fast = rule.gradients(x, y, m, task, implementation="online")  # closed-form dE/dy
    loss_gen, gen = rule.gradients(x, y, m, _OtherLoss(task), implementation="online")
    loss_ref, ref = rule.gradients(x, y, m, task, implementation="autograd")
    _assert_same(fast, ref)
    _assert_same(gen, ref)
    assert abs(float(loss_fast) - float(loss_ref)) < 1e-12 and abs(float(loss_gen) - float(loss_ref)) < 1e-12


@pytest.mark.parametrize("make, kw", [(_rate, {"dt": 0.3}), (_rate, {}), (_lif, {}),
                                      (_lif, {"reset": "zero", "readout": "leaky"})])
def test_truncated_rollout_has_the_models_values(make, kw):
    task, x, _, _ = _task_data("xor", 4, 3)
    net = make(task, 4, **kw)
    r = EProp(net).truncated_rollout(x)
    with torch.no_grad():
        ref = net.rollout(x)
    if make is _lif:
        assert torch.equal(r.activity, ref.activity) and float(ref.activity.mean()) > 0.02  # same spikes
    torch.testing.assert_close(r.activity, ref.activity, rtol=0, atol=1e-14)
    torch.testing.assert_close(r.states, ref.states, rtol=0, atol=1e-13)
    torch.testing.assert_close(r.outputs, ref.outputs, rtol=0, atol=1e-13)


def _bptt_grads(net, x, y, m, task):
    out, _ = net(x)  # the model's own forward (the fused sequence op for LIF) and autograd
    loss = task.loss(out, y, m)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [dict(net.named_parameters())[n] for n in names])
    return dict(zip(names, grads))


@pytest.mark.parametrize("make, kw", [(_rate, {"dt": 0.3}), (_rate, {}), (_lif, {}),
                                      (_lif, {"reset": "zero", "readout": "leaky"})])
def test_symmetric_eprop_is_bptt_without_recurrent_weights(make, kw):
    task, x, y, m = _task_data("xor", 5, 2)
    net = make(task, 5, **kw)
    rule = EProp(net)
    ge = rule.gradients(x, y, m, task)[1]
    gb = _bptt_grads(net, x, y, m, task)
    # With recurrent weights, e-prop drops the credit carried through them: a clearly different update.
    diff = float((ge["weight_in"] - gb["weight_in"]).norm() / gb["weight_in"].norm())
    assert diff > 0.05
    with torch.no_grad():
        net.weight_rec.zero_()
    ge = rule.gradients(x, y, m, task)[1]
    gb = _bptt_grads(net, x, y, m, task)
    _assert_same(ge, gb)
    assert float(gb["weight_in"].norm()) > 1e-3
    # Random feedback still trains the readout exactly, but not the network.
    gr = EProp(net, feedback="random", generator=torch.Generator().manual_seed(0)).gradients(x, y, m, task)[1]
    torch.testing.assert_close(gr["readout_layer.weight"], gb["readout_layer.weight"], rtol=1e-12, atol=1e-12)
    assert float((gr["weight_in"] - gb["weight_in"]).norm()) > 0.05 * float(gb["weight_in"].norm())


class _PeakTensorBytes(TorchFunctionMode):
    """Peak bytes of tensor storages created inside the block and alive at the same time."""

    def __init__(self, ignore=()):
        super().__init__()
        self.ignore = {t.untyped_storage().data_ptr() for t in ignore}  # the inputs themselves
        self.live, self.current, self.peak = {}, 0, 0

    def _free(self, key):
        self.current -= self.live.pop(key, 0)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = st.data_ptr()
                if key in self.live or key in self.ignore or st.nbytes() == 0:
                    continue
                self.live[key] = st.nbytes()
                self.current += st.nbytes()
                self.peak = max(self.peak, self.current)
                weakref.finalize(t, self._free, key)
        return out


@pytest.mark.parametrize("make, kw", [(_rate, {}), (_lif, {"reset": "zero"})])
def test_online_memory_does_not_grow_with_T(make, kw):
    task = tasks.make("copy", delay=2, T=20)
    net = make(task, 0, **kw)
    peaks = {}
    for impl in ("online", "autograd"):
        rule = EProp(net, implementation=impl)
        for T in (20, 160):
            g = torch.Generator().manual_seed(T)
            x = torch.randn(T, 4, task.n_in, generator=g, dtype=F64)
            y = torch.randn(T, 4, task.n_out, generator=g, dtype=F64)
            m = torch.ones(T, 4, dtype=torch.bool)
            meter = _PeakTensorBytes(ignore=(x, y, m))
            with meter:
                rule.step(x, y, m, task)
            peaks[impl, T] = meter.peak
    assert peaks["online", 160] <= 1.05 * peaks["online", 20]
    assert peaks["autograd", 160] >= 4 * peaks["autograd", 20]  # the truncated graph is O(T)
    # The documented working set (traces + accumulators) accounts for the measured peak up to temporaries.
    state = EProp(net).online_state_bytes(4)
    assert state <= peaks["online", 20] <= 4 * state


def test_step_sets_grads_and_matches_bptt_interface():
    task, x, y, m = _task_data("xor", 4, 0)
    net = _rate(task, 1, dt=0.5)
    rule = make_rule("eprop", net)
    with torch.no_grad():
        expected = float(task.loss(net(x)[0], y, m))
    loss = rule.step(x, y, m, task)
    assert loss.ndim == 0 and abs(float(loss) - expected) < 1e-12
    ref = rule.gradients(x, y, m, task, implementation="autograd")[1]
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, ref[name], rtol=1e-10, atol=1e-12)
    before = net.weight_rec.detach().clone()
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    torch.testing.assert_close(net.weight_rec.detach(), before - 0.1 * ref["weight_rec"])
    b = make_rule("bptt", net)
    assert isinstance(b, BPTT)
    lb = b.step(x, y, m, task)
    assert lb.ndim == 0 and all(p.grad is not None for p in net.parameters())


def test_eprop_learns_more_than_its_readout_alone():
    """Adam on delayed XOR: e-prop's recurrent/input updates must beat training the readout only."""
    task = tasks.make("xor", delay=2, T=20)

    def final_loss(freeze: bool) -> tuple[float, float]:
        net = RateRNN(task.n_in, 24, task.n_out, generator=torch.Generator().manual_seed(0))
        if freeze:
            for name in ("weight_rec", "weight_in", "bias"):
                getattr(net, name).requires_grad_(False)
        rule = make_rule("eprop", net)
        opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-2)
        g = torch.Generator().manual_seed(7)
        losses = []
        for _ in range(50):
            x, y, m = task.sample(16, g)
            opt.zero_grad()
            losses.append(float(rule.step(x, y, m, task)))
            opt.step()
        return sum(losses[:5]) / 5, sum(losses[-8:]) / 8

    first, last = final_loss(False)
    _, last_readout = final_loss(True)
    assert last < 0.25 * first
    assert last < 0.5 * last_readout


def test_rule_errors():
    task, x, y, m = _task_data("xor", 2, 0)
    rate, lif = _rate(task, 0), _lif(task, 0)
    with pytest.raises(ValueError, match="rule must be one of"):
        make_rule("hebb", rate)
    with pytest.raises(ValueError, match="RFLO .* rate networks"):
        make_rule("rflo", lif)
    with pytest.raises(ValueError, match="LIF"):
        EProp(_lif(task, 0, neuron="cuba"))
    with pytest.raises(TypeError, match="RateRNN"):
        EProp(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="beta"):
        EProp(_lif(task, 0, learn_beta=True))
    with pytest.raises(ValueError, match="feedback"):
        EProp(rate, feedback="transpose")
    with pytest.raises(ValueError, match=r"\[N, n_out\]"):
        EProp(rate, feedback=torch.zeros(3, 3, dtype=F64))
    with pytest.raises(ValueError, match="implementation"):
        EProp(rate, implementation="magic")
    rule = EProp(rate)
    with pytest.raises(ValueError, match="mask"):
        rule.gradients(x, y, m[:, :1], task)
    with pytest.raises(ValueError, match="no step"):
        rule.gradients(x, y, torch.zeros_like(m), task)
    with pytest.raises(ValueError, match="float32"):
        rule.gradients(x.float(), y, m, task)
    custom = torch.randn(10, task.n_out, dtype=F64)
    assert torch.equal(make_rule("rflo", rate, feedback=custom).feedback_matrix, custom)
    assert make_rule("rflo", rate).name == "rflo" and make_rule("rflo", rate).feedback == "random"


# ----------------------------------------------------------------------------------------------------
# The trainer and the command line
# ----------------------------------------------------------------------------------------------------

TINY = dict(model="rate", N=12, epochs=2, steps_per_epoch=2, batch=4, k=2, pre_steps=2, floss_T=16, floss_batch=2,
            T=20, spectrum_T=16, eval_batch=8, lyap_every=0, delay=4, flossing="none")


def _quiet(_):
    pass


@pytest.mark.parametrize("model, rule", [("rate", "bptt"), ("rate", "eprop"), ("rate", "rflo"), ("lif", "eprop")])
def test_train_two_epochs_with_each_rule(tmp_path, model, rule):
    out = tmp_path / "run"
    res = train(TrainConfig(**dict(TINY, model=model, rule=rule, out=str(out))), progress=False, log=_quiet)
    assert [r["epoch"] for r in res.metrics] == [1, 2]
    assert all(r["train_loss"] > 0 for r in res.metrics)
    config = json.loads((out / "config.json").read_text())["config"]
    result = json.loads((out / "result.json").read_text())
    assert config["rule"] == rule and result["config"]["rule"] == rule
    assert result["final"]["rule"] == rule and result["final"]["local_flossing"] is False


def test_train_uses_the_rules_gradients(tmp_path, monkeypatch):
    import surroflos.learning as learning

    calls = []
    real = learning.EProp.step

    def spy(self, *a, **k):
        calls.append(self.name)
        return real(self, *a, **k)

    monkeypatch.setattr(learning.EProp, "step", spy)
    train(TrainConfig(**dict(TINY, rule="rflo", out=str(tmp_path / "r"))), progress=False, log=_quiet)
    assert calls == ["rflo"] * (TINY["epochs"] * TINY["steps_per_epoch"])


def test_local_flossing_reaches_the_flossing_bouts(tmp_path, monkeypatch):
    import surroflos.train as tr

    seen = []
    real = tr.floss

    def spy(*a, **k):
        seen.append(k.get("local"))
        return real(*a, **k)

    monkeypatch.setattr(tr, "floss", spy)
    cfg = dict(TINY, rule="eprop", flossing="during", floss_every=1, floss_steps=1)
    res = train(TrainConfig(**dict(cfg, local_flossing=True, out=str(tmp_path / "local"))), progress=False, log=_quiet)
    assert seen == [True, True]  # preflossing and one bout during training
    assert res.final["local_flossing"] is True
    result = json.loads((tmp_path / "local" / "result.json").read_text())
    assert result["config"]["local_flossing"] is True and result["preflossing"]["steps"] == TINY["pre_steps"]
    seen.clear()
    train(TrainConfig(**dict(cfg, out=str(tmp_path / "global"))), progress=False, log=_quiet)
    assert seen == [False, False]


def test_rflo_run_resumes_exactly(tmp_path):
    cfg = dict(TINY, rule="rflo", epochs=3)
    full = train(TrainConfig(**dict(cfg, out=str(tmp_path / "full"))), progress=False, log=_quiet)
    part = train(TrainConfig(**dict(cfg, out=str(tmp_path / "part"))), progress=False, stop_after=1, log=_quiet)
    assert part.interrupted
    resumed = train(TrainConfig(**dict(cfg, out=str(tmp_path / "part"))), resume=True, progress=False, log=_quiet)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(resumed.metrics) == strip(full.metrics)


@pytest.mark.parametrize("change, match", [
    (dict(rule="rflo", model="lif"), "rule 'rflo' supports the models .*rate.*not 'lif'"),
    (dict(rule="eprop", model="cuba"), "rule 'eprop' supports the models .*not 'cuba'"),
    (dict(rule="eprop", model="balanced", K=4), "rule 'eprop' supports the models .*not 'balanced'"),
    (dict(rule="hebb"), "rule must be one of"),
    (dict(local_flossing=True, flossing="none"), "local_flossing .* flossing is 'none'"),
])
def test_bad_rule_config_stops_at_once(tmp_path, change, match):
    with pytest.raises(ConfigError, match=match):
        train(TrainConfig(**dict(TINY, out=str(tmp_path / "bad"), **change)), progress=False, log=_quiet)
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()


def test_cli_rule_and_local_flossing(tmp_path, capsys):
    out = tmp_path / "cli"
    base = ["train", "--model", "rate", "--N", "12", "--epochs", "1", "--steps-per-epoch", "2", "--batch", "4",
            "--k", "2", "--pre-steps", "2", "--floss-T", "16", "--floss-batch", "2", "--spectrum-T", "24",
            "--eval-batch", "8", "--delay", "4", "--T", "20", "--no-progress", "--lyap-every", "0"]
    assert cli.main(base + ["--rule", "rflo", "--local-flossing", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["rule"] == "rflo" and config["local_flossing"] is True and config["flossing"] == "pre"
    assert "rule=rflo" in capsys.readouterr().out
    assert cli.main(base + ["--model", "lif", "--rule", "rflo", "--out", str(tmp_path / "bad")]) == 2
    assert "rule 'rflo'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(base + ["--rule", "hebb", "--out", str(tmp_path / "bad2")])
    assert set(RULES) == {"bptt", "eprop", "rflo"}
