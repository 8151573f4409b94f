"""Ensembles (surroflos.ensemble): member e of an ensemble computes what the solo network of its seed
computes, everywhere: simulation, gradients, Lyapunov spectra, flossing, gradient propagation, training
(BPTT, e-prop, RFLO; with and without flossing), checkpoints and resumption; a diverging member is
stopped while the others go on.

Exactness is claimed and checked in float64 (1e-10 relative as the issue asks; most agree to ~1e-15);
the float32 case compares against the float64 truth (tests/_tolerance.py policy).
"""

from __future__ import annotations

import json

import pytest
import torch

import surroflos as sf
from surroflos import cli
from surroflos import train as tr
from surroflos.ensemble import MemberUpdates, member, stack
from surroflos.train import TrainConfig, train

F64 = torch.float64
RTOL = 1e-10


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gens(seeds) -> list:
    return [gen(s) for s in seeds]


def close(a, b, rtol: float = RTOL) -> bool:
    a, b = (torch.as_tensor(v.detach() if isinstance(v, torch.Tensor) else v, dtype=F64) for v in (a, b))
    return bool(torch.allclose(a, b, rtol=rtol, atol=rtol * max(1.0, float(b.abs().max()) if b.numel() else 1.0)))


MAKERS = {
    "rate": lambda g, E=None, **kw: sf.RateRNN(2, 7, 2, g=1.6, generator=g, ensemble=E, dtype=F64, **kw),
    "lif": lambda g, E=None, **kw: sf.SpikingRNN(2, 7, 2, neuron="lif", g=2.5, generator=g, ensemble=E, dtype=F64,
                                                 **kw),
    "cuba": lambda g, E=None, **kw: sf.SpikingRNN(2, 7, 2, neuron="cuba", g=2.5, reset="zero", generator=g,
                                                  ensemble=E, dtype=F64, **kw),
}


# ------------------------------------------------------------------------------------------------
# Models: layout, construction, stack / member
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_member_equals_the_solo_network_forward_and_backward(kind):
    E = 3
    ens = MAKERS[kind](gens(range(E)), E)
    solos = [MAKERS[kind](gen(s)) for s in range(E)]
    assert ens.ensemble == E and ens.weight_rec.shape == (E, 7, 7) and all(s.ensemble is None for s in solos)
    x = torch.randn(25, E, 4, 2, generator=gen(9), dtype=F64) * 2
    out, states = ens(x)
    assert out.shape == (25, E, 4, 2) and states.shape[:3] == (25, E, 4)
    (out.square().sum() + states.sum()).backward()
    for e, solo in enumerate(solos):
        o, st = solo(x[:, e])
        (o.square().sum() + st.sum()).backward()
        assert close(out[:, e].detach(), o.detach()) and close(states[:, e].detach(), st.detach())
        for (name, p_ens), p_solo in zip(ens.named_parameters(), solo.parameters()):
            assert close(p_ens.grad[e], p_solo.grad), name
    if kind != "rate":  # spikes are what the solo network fires
        assert torch.equal(ens.spikes(states)[:, 1], solos[1].spikes(solos[1](x[:, 1])[1]))


def test_stack_and_member_round_trip_and_member_wise_hyperparameters():
    solos = [sf.SpikingRNN(2, 5, 1, beta=b, threshold=th, g=g, generator=gen(i), dtype=F64)
             for i, (b, th, g) in enumerate([(0.9, 1.0, 1.0), (0.7, 0.5, 2.0)])]
    ens = stack(solos)
    assert ens.ensemble == 2 and ens.beta.shape == (2,) and ens.g == (1.0, 2.0)
    x = torch.rand(30, 2, 3, 2, generator=gen(3), dtype=F64) * 3
    out = ens(x)[0]
    for e, solo in enumerate(solos):
        back = member(ens, e)
        assert back.ensemble is None and back.g == solo.g
        assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), solo.state_dict().values()))
        assert close(out[:, e].detach(), solo(x[:, e])[0].detach())
    with pytest.raises(ValueError, match="differs from member 0 in \\['reset'\\]"):
        stack([sf.SpikingRNN(2, 5, 1, generator=gen(0)), sf.SpikingRNN(2, 5, 1, reset="zero", generator=gen(1))])
    with pytest.raises(ValueError, match="other tensor shapes"):
        stack([sf.RateRNN(2, 5, 1), sf.RateRNN(2, 6, 1)])
    with pytest.raises(ValueError, match="already an ensemble"):
        stack([ens, ens])
    with pytest.raises(ValueError, match="member index"):
        member(ens, 2)


# ------------------------------------------------------------------------------------------------
# Members of different surrogate widths (one kind, one scale per member)
# ------------------------------------------------------------------------------------------------

WIDTHS = (1.0, 3.0, 8.0)


def _width_solos(neuron: str, surrogate: str = "atan") -> list:
    return [sf.SpikingRNN(2, 7, 2, neuron=neuron, g=2.5, reset="zero" if neuron == "cuba" else "subtract",
                          surrogate=sf.Surrogate(surrogate, w), learn_beta=True, learn_threshold=True,
                          detach_reset=False, generator=gen(20 + e), dtype=F64) for e, w in enumerate(WIDTHS)]


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("neuron,surrogate", [("lif", "atan"), ("cuba", "sigmoid"), ("lif", "triangle")])
def test_members_of_different_surrogate_widths_equal_their_solo_networks(neuron, surrogate, backend):
    # Simulation, every gradient and the Lyapunov spectrum of member e are those of the solo network of width e;
    # the widths matter (the solos' gradients differ between widths), so the check has power.
    from surroflos.kernels.backend import cpu_kernels_importable

    if backend == "cpu" and not cpu_kernels_importable():
        pytest.skip("numba does not import")
    solos = _width_solos(neuron, surrogate)
    ens = stack(solos)
    assert ens.surrogate == tuple(sf.Surrogate(surrogate, w) for w in WIDTHS)
    assert isinstance(ens.params().surrogate, sf.surrogate.MemberSurrogate)
    ens.backend = backend
    x = torch.rand(20, 3, 4, 2, generator=gen(9), dtype=F64) * 2.5
    out, states = ens(x)
    (out.square().sum() + states.sum()).backward()
    grads = []
    for e, solo in enumerate(solos):
        solo.backend = backend
        o, st = solo(x[:, e])
        (o.square().sum() + st.sum()).backward()
        assert close(out[:, e].detach(), o.detach()) and close(states[:, e].detach(), st.detach())
        for (name, p_ens), p_solo in zip(ens.named_parameters(), solo.parameters()):
            assert close(p_ens.grad[e], p_solo.grad), name
        grads.append(solo.weight_rec.grad / solo.weight_rec.grad.abs().max())
    assert not close(grads[0], grads[2], 1e-3)
    kw = dict(transient=5, frame_warmup=5, qr_every=2)
    res = sf.lyapunov_spectrum(ens, x[:, :, :2], 3, generator=gens(range(3)), **kw)
    for e, solo in enumerate(solos):
        assert close(res.exponents[e], sf.lyapunov_spectrum(solo, x[:, e, :2], 3, generator=gen(e), **kw).exponents)


def test_member_surrogate_construction_member_select_and_errors():
    from surroflos.ensemble import select
    from surroflos.surrogate import MemberSurrogate

    solos = _width_solos("lif")
    ens = stack(solos)
    built = sf.SpikingRNN(2, 7, 2, g=2.5, surrogate=MemberSurrogate("atan", WIDTHS), learn_beta=True,
                          learn_threshold=True, detach_reset=False, generator=gens(range(20, 23)), ensemble=3, dtype=F64)
    assert built.surrogate == ens.surrogate
    x = torch.rand(10, 3, 2, 2, generator=gen(1), dtype=F64) * 2.5
    assert torch.equal(built(x)[0], ens(x)[0])
    assert member(ens, 1).surrogate == sf.Surrogate("atan", 3.0)
    assert select(ens, [2, 0]).surrogate == (sf.Surrogate("atan", 8.0), sf.Surrogate("atan", 1.0))
    assert stack([solos[0], solos[0]]).surrogate == sf.Surrogate("atan", 1.0)  # equal widths: one surrogate
    import copy
    import pickle

    ms = MemberSurrogate("gaussian", [1, 2])
    assert pickle.loads(pickle.dumps(ms)) == ms == copy.deepcopy(ms) and ms.member(1) == sf.Surrogate("gaussian", 2)
    v = torch.randn(2, 3, 4, dtype=F64)
    d = ms.derivative(v)
    assert close(d[1], sf.Surrogate("gaussian", 2.0).derivative(v[1])) and not close(d[0], d[1])
    with pytest.raises(ValueError, match="member-first arrays"):
        ms.derivative(torch.zeros(3, 3, 4))
    with pytest.raises(ValueError, match="surrogate scale must be a positive"):
        MemberSurrogate("atan", [1.0, -1.0])
    with pytest.raises(ValueError, match="one scale per member, got none"):
        MemberSurrogate("atan", [])
    with pytest.raises(ValueError, match="for an ensemble of as many members"):
        sf.SpikingRNN(2, 7, 2, surrogate=ms, ensemble=3)
    with pytest.raises(ValueError, match="members may differ in the surrogate's width"):
        stack([solos[0], sf.SpikingRNN(2, 7, 2, g=2.5, surrogate="sigmoid", learn_beta=True, learn_threshold=True,
                                       detach_reset=False, generator=gen(0), dtype=F64)])
    from surroflos.kernels.recurrent import spiking_rnn_sequence

    with pytest.raises(ValueError, match="needs an ensemble of as many members"):
        spiking_rnn_sequence(torch.zeros(2, 3, 4, dtype=F64), torch.zeros(4, 4, dtype=F64),
                             torch.zeros(3, 4, dtype=F64), surrogate=MemberSurrogate("atan", [1, 2, 3]))


def test_member_widths_leave_the_triton_kernels_for_the_pytorch_path(monkeypatch):
    # The Triton kernels take one width: where "auto" would run them (a GPU), an ensemble of widths runs the PyTorch
    # path (same numbers as backend="torch"); an explicit backend="triton" is an error that says so.
    from surroflos.kernels import recurrent
    from surroflos.surrogate import MemberSurrogate

    monkeypatch.setattr(recurrent, "_implementation", lambda backend, x_in: "triton")
    args = (torch.rand(6, 2, 3, 4, generator=gen(2), dtype=F64) * 2, torch.randn(2, 4, 4, generator=gen(3), dtype=F64),
            torch.zeros(2, 3, 4, dtype=F64))
    ms = MemberSurrogate("atan", [1.0, 4.0])
    S, U = recurrent.spiking_rnn_sequence(*args, surrogate=ms, backend="auto")
    monkeypatch.undo()
    S_ref, U_ref = recurrent.spiking_rnn_sequence(*args, surrogate=ms, backend="torch")
    assert torch.equal(S, S_ref) and torch.equal(U, U_ref)
    monkeypatch.setattr(recurrent, "_implementation", lambda backend, x_in: "triton")
    with pytest.raises(ValueError, match="backend='triton' takes one surrogate width"):
        recurrent.spiking_rnn_sequence(*args, surrogate=ms, backend="triton")


def test_input_and_generator_checks_name_the_layout():
    ens = MAKERS["rate"](None, 3)
    with pytest.raises(ValueError, match=r"\[T, E=3, B, n_in\]"):
        ens(torch.zeros(5, 4, 2, dtype=F64))
    with pytest.raises(ValueError, match="list of 3"):
        MAKERS["rate"](gens(range(2)), 3)
    with pytest.raises(ValueError, match="ensemble must be a positive int"):
        MAKERS["rate"](None, 0)
    with pytest.raises(ValueError, match=r"state0 must be a tensor of shape \[E, B, D\]"):
        ens(torch.zeros(5, 3, 4, 2, dtype=F64), torch.zeros(4, 7, dtype=F64))


# ------------------------------------------------------------------------------------------------
# Spectra, flossing, gradient propagation
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_lyapunov_spectrum_per_member(kind):
    E = 3
    ens = MAKERS[kind](gens(range(E)), E)
    x = torch.randn(80, E, 3, 2, generator=gen(4), dtype=F64)
    kw = dict(transient=15, frame_warmup=15, qr_every=2)
    res = sf.lyapunov_spectrum(ens, x, 3, generator=gens(range(10, 10 + E)), **kw)
    assert res.exponents.shape == (E, 3, 3) and res.mean().shape == (E, 3) and res.history.shape[1:] == (E, 3, 3)
    assert not bool(res.diverged.any())
    for e in range(E):
        solo = sf.lyapunov_spectrum(MAKERS[kind](gen(e)), x[:, e], 3, generator=gen(10 + e), **kw)
        assert close(res.exponents[e], solo.exponents)


@pytest.mark.parametrize("backend, qr", [("torch", "cholesky_qr2"), ("triton", "auto")])
def test_lyapunov_spectrum_ensemble_engines(backend, qr):
    """The fused tangent maps (Triton, through its interpreter on the CPU) and CholeskyQR2 on ensemble frames."""
    E = 2
    ens = MAKERS["lif"](gens(range(E)), E)
    x = torch.randn(30, E, 2, 2, generator=gen(4), dtype=F64)
    kw = dict(transient=5, frame_warmup=5)
    ref = sf.lyapunov_spectrum(ens, x, 3, generator=gens(range(E)), backend="torch", qr="householder", **kw)
    res = sf.lyapunov_spectrum(ens, x, 3, generator=gens(range(E)), backend=backend, qr=qr, **kw)
    assert close(res.exponents, ref.exponents, 1e-9)


def test_a_diverging_member_leaves_the_others_alone():
    ens = sf.RateRNN(2, 6, 1, g=1.5, nonlinearity="relu", generator=gens(range(3)), ensemble=3, dtype=F64)
    with torch.no_grad():
        ens.weight_rec[1] *= 1e200  # member 1 overflows within a few steps
    x = torch.randn(40, 3, 2, 2, generator=gen(0), dtype=F64)
    res = sf.lyapunov_spectrum(ens, x, 1, transient=5, frame_warmup=5, generator=gens(range(3)))
    assert res.diverged.tolist() == [False, True, False]
    assert bool(res.exponents[1].isnan().all()) and bool(res.exponents[[0, 2]].isfinite().all())
    for e in (0, 2):
        solo = sf.lyapunov_spectrum(member(ens, e), x[:, e], 1, transient=5, frame_warmup=5, generator=gen(e))
        assert close(res.exponents[e], solo.exponents)
    with torch.no_grad():
        ens.weight_rec[[0, 2]] *= 1e200
    with pytest.raises(sf.NonFiniteError, match="every member"):
        sf.lyapunov_spectrum(ens, x, 1, transient=5, frame_warmup=5, generator=gens(range(3)))


def test_flossing_loss_per_member_and_member_wise_targets():
    lam = torch.tensor([[[0.5, -1.0], [0.0, 2.0]], [[1.0, 1.0], [1.0, 1.0]]], dtype=F64)  # [E=2, B=2, k=2]
    per = sf.flossing_loss(lam, 0.0)
    assert per.shape == (2,)
    assert close(per, [sf.flossing_loss(lam[0]), sf.flossing_loss(lam[1])])
    tgt = torch.tensor([[0.0], [1.0]], dtype=F64)  # member 1 aims at 1: zero loss
    assert close(sf.flossing_loss(lam, tgt), [sf.flossing_loss(lam[0], 0.0), 0.0])
    with pytest.raises(ValueError, match="per member"):
        sf.flossing_loss(lam, torch.zeros(3, 1))


@pytest.mark.parametrize("kind", ["rate", "lif"])
def test_floss_per_member_equals_solo(kind):
    E = 3
    ens = MAKERS[kind](gens(range(E)), E)
    kw = dict(k=2, T=30, batch=3, lr=2e-2, progress=False, max_grad_norm=0.3)
    hist = sf.floss(ens, 4, generator=gens(range(20, 20 + E)), **kw)
    assert hist.exponents.shape == (4, E, 2) and hist.loss.shape == (4, E) and hist.stopped == {}
    for e in range(E):
        solo = MAKERS[kind](gen(e))
        h = sf.floss(solo, 4, generator=gen(20 + e), **kw)
        assert close(hist.exponents[:, e], h.exponents) and close(hist.loss[:, e], h.loss)
        assert all(close(pe[e], ps) for pe, ps in zip(ens.parameters(), solo.parameters()))


def test_gradient_propagation_per_member():
    ens = MAKERS["rate"](gens(range(2)), 2)
    x = torch.randn(40, 2, 3, 2, generator=gen(1), dtype=F64)
    res = sf.gradient_propagation(ens, x, [1, 5, 10], generator=gens([7, 8]), n_times=4, n_probe=2)
    assert len(res) == 2
    for e in range(2):
        solo = sf.gradient_propagation(MAKERS["rate"](gen(e)), x[:, e], [1, 5, 10], generator=gen(7 + e),
                                       n_times=4, n_probe=2)
        assert close(res[e].log_norm, solo.log_norm)


def test_member_updates_clip_each_member_as_clip_grad_norm_does():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4, 5, dtype=F64)), torch.nn.Parameter(torch.randn(3, 2, dtype=F64))]
    for p in params:
        p.grad = torch.randn_like(p) * torch.tensor([0.01, 1.0, 10.0], dtype=F64).view(-1, *[1] * (p.ndim - 1))
    solo = [[torch.nn.Parameter(p.detach()[e].clone()) for p in params] for e in range(3)]
    for e in range(3):
        for q, p in zip(solo[e], params):
            q.grad = p.grad[e].clone()
        torch.nn.utils.clip_grad_norm_(solo[e], 1.0)
    upd = MemberUpdates(params, 3)
    upd.stop(2, "test")
    upd.clip_(1.0)
    for e in range(2):
        assert all(close(p.grad[e], q.grad) for p, q in zip(params, solo[e]))
    assert all(float(p.grad[2].abs().max()) == 0.0 for p in params)  # the stopped member gets no update
    before = [p.detach()[2].clone() for p in params]
    torch.optim.Adam(params, lr=1.0).step()
    upd.restore_()
    assert all(torch.equal(p.detach()[2], b) for p, b in zip(params, before))


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------

TINY = dict(N=8, epochs=2, steps_per_epoch=2, batch=4, k=2, pre_steps=2, floss_T=12, floss_batch=2, T=12,
            spectrum_T=16, eval_batch=8, lyap_every=1, delay=3, dtype="float64", grad_clip=0.5)
KEYS = ("train_loss", "val_loss", "accuracy", "lambda1")


def _quiet(_):
    pass


def _assert_member_equals_solo(ens_res, solo_res, e: int, rtol: float = RTOL) -> None:
    assert len(ens_res.metrics) == len(solo_res.metrics)
    for a, b in zip(ens_res.metrics, solo_res.metrics):
        for key in KEYS:
            if key in b:
                assert close(a[key][e], b[key], rtol), (key, a[key][e], b[key])
    assert close(ens_res.spectrum_before[e], solo_res.spectrum_before, rtol)
    assert close(ens_res.spectrum_after[e], solo_res.spectrum_after, rtol)


@pytest.mark.parametrize("model, flossing, rule", [
    ("rate", "none", "bptt"), ("rate", "during", "bptt"), ("lif", "pre", "bptt"), ("cuba", "during", "bptt"),
    ("lif", "none", "eprop"), ("rate", "pre", "rflo"),
])
def test_training_members_equal_solo_runs(tmp_path, model, flossing, rule):
    base = dict(TINY, model=model, flossing=flossing, rule=rule, floss_every=1, floss_steps=1)
    ens = train(TrainConfig(**base, seed=11, ensemble=2, out=str(tmp_path / "ens")), progress=False, log=_quiet)
    result = json.loads((tmp_path / "ens" / "result.json").read_text())
    assert [m["seed"] for m in result["members"]] == [11, 12]
    for e in range(2):
        solo = train(TrainConfig(**base, seed=11 + e, out=str(tmp_path / f"s{e}")), progress=False, log=_quiet)
        _assert_member_equals_solo(ens, solo, e)
        assert close(result["members"][e]["final"]["accuracy"], solo.final["accuracy"])
    finals = [m["final"]["accuracy"] for m in result["members"]]
    agg = result["aggregate"]
    assert close(agg["mean"], sum(finals) / 2) and agg["completed"] == 2 and agg["stopped"] == 0


@pytest.mark.numerics
def test_float32_members_within_the_float64_truth(tmp_path):
    """In float32 member e and its solo run are both rounding-level away from the float64 run."""
    base = dict(TINY, model="rate", flossing="pre", epochs=2)
    f32 = dict(base, dtype="float32")
    ens = train(TrainConfig(**f32, seed=3, ensemble=2, out=str(tmp_path / "e")), progress=False, log=_quiet)
    for e in range(2):
        solo = train(TrainConfig(**f32, seed=3 + e, out=str(tmp_path / f"s{e}")), progress=False, log=_quiet)
        truth = train(TrainConfig(**base, seed=3 + e, out=str(tmp_path / f"t{e}")), progress=False, log=_quiet)
        for a, b, t in zip(ens.metrics, solo.metrics, truth.metrics):
            err_ens, err_solo = abs(a["val_loss"][e] - t["val_loss"]), abs(b["val_loss"] - t["val_loss"])
            # no worse than the solo float32 run, up to 4x or the typical rounding of the run (eps x sqrt(ops))
            floor = torch.finfo(torch.float32).eps * (16 * 10 * 2 * 2) ** 0.5 * abs(t["val_loss"])
            assert err_ens <= 4 * max(err_solo, floor), (err_ens, err_solo, floor)


def test_a_diverging_member_is_stopped_and_the_others_go_on(tmp_path, monkeypatch):
    base = dict(TINY, model="rate", flossing="none", epochs=3)  # NaN injected in epoch 2, then one more epoch
    real = tr._losses
    calls = {"n": 0}

    def nan_for_member_1(task, out, y, m, members):
        loss = real(task, out, y, m, members)
        if members is not None:
            calls["n"] += 1
            if calls["n"] == 4:  # epoch 1: two updates and validation; then the first update of epoch 2
                loss = loss.clone()
                loss[1] = float("nan")
        return loss

    monkeypatch.setattr(tr, "_losses", nan_for_member_1)
    logged = []
    ens = train(TrainConfig(**base, seed=0, ensemble=3, out=str(tmp_path / "e")), progress=False, log=logged.append)
    monkeypatch.setattr(tr, "_losses", real)
    result = json.loads((tmp_path / "e" / "result.json").read_text())
    assert result["members"][1]["stopped"].startswith("training loss became nan at epoch 2")
    assert result["members"][1]["final"]["accuracy"] is None and result["aggregate"]["stopped"] == 1
    assert any("member 1 (seed 1) stopped" in line for line in logged)
    for e in (0, 2):
        solo = train(TrainConfig(**base, seed=e, out=str(tmp_path / f"s{e}")), progress=False, log=_quiet)
        _assert_member_equals_solo(ens, solo, e)
    # member 1 kept the weights it had before the step whose loss was NaN
    ck = torch.load(tmp_path / "e" / "checkpoint.pt", weights_only=True)
    assert ck["state"]["stopped"] == {"1": result["members"][1]["stopped"]}


def test_ensemble_resume_continues_exactly(tmp_path):
    base = dict(TINY, model="lif", flossing="during", floss_every=1, floss_steps=1, seed=4, ensemble=2)
    full = train(TrainConfig(**base, out=str(tmp_path / "full")), progress=False, log=_quiet)
    part = train(TrainConfig(**base, out=str(tmp_path / "part")), progress=False, log=_quiet, stop_after=1)
    assert part.interrupted
    resumed = train(TrainConfig(**base, out=str(tmp_path / "part")), resume=True, progress=False, log=_quiet)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds" and k != "flossing"} for r in rows]  # noqa: E731
    assert strip(resumed.metrics) == strip(full.metrics)
    assert resumed.spectrum_after == full.spectrum_after


def test_cli_ensemble_flag(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "rate", "--N", "8", "--epochs", "1", "--steps-per-epoch", "1", "--batch", "4",
            "--eval-batch", "8", "--pre-steps", "1", "--floss-T", "16", "--floss-batch", "2", "--spectrum-T", "16",
            "--lyap-every", "0", "--k", "2", "--delay", "2", "--T", "12", "--no-progress", "--ensemble", "3",
            "--seed", "7", "--success", "0.4", "--out", str(out)]
    assert cli.main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert [m["seed"] for m in result["members"]] == [7, 8, 9]
    assert result["aggregate"]["success"] == 0.4 and 0.0 <= result["aggregate"]["success_rate"] <= 1.0
    assert "over 3 members" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main([*argv[:-2], "--ensemble", "0", "--out", str(tmp_path / "x")])


def test_ensemble_config_checks(tmp_path):
    with pytest.raises(tr.ConfigError, match="balanced"):
        train(TrainConfig(**dict(TINY, model="balanced", K=4, ensemble=2, out=str(tmp_path / "b"))))
    with pytest.raises(tr.ConfigError, match="ensemble must be a positive int"):
        train(TrainConfig(**dict(TINY, ensemble=0, out=str(tmp_path / "c"))))
    with pytest.raises(tr.ConfigError, match="seed \\+ ensemble - 1"):
        train(TrainConfig(**dict(TINY, ensemble=3, seed=2**63 - 3, out=str(tmp_path / "d"))))


# ------------------------------------------------------------------------------------------------
# Member-wise settings: lr, floss_lr, g, beta, alpha, threshold, target, flossing mode, seed
# ------------------------------------------------------------------------------------------------

def test_member_updates_rescale_each_members_step_to_its_learning_rate():
    """Adam's step is linear in lr: the ensemble at lr_0 with steps rescaled by lr_e / lr_0 is Adam at lr_e."""
    lrs = [1e-2, 3e-3, 4e-2]
    w = torch.randn(3, 4, 5, generator=gen(0), dtype=F64)
    ens = torch.nn.Parameter(w.clone())
    opt = torch.optim.Adam([ens], lr=lrs[0])
    upd = MemberUpdates([ens], 3, lr_scale=[v / lrs[0] for v in lrs])
    solos = [torch.nn.Parameter(w[e].clone()) for e in range(3)]
    solo_opts = [torch.optim.Adam([p], lr=v) for p, v in zip(solos, lrs)]
    for step in range(5):
        grad = torch.randn(3, 4, 5, generator=gen(10 + step), dtype=F64)
        ens.grad = grad.clone()
        upd.step_(opt, max_norm=0.5)
        for e, (p, o) in enumerate(zip(solos, solo_opts)):
            p.grad = grad[e].clone()
            torch.nn.utils.clip_grad_norm_([p], 0.5)
            o.step()
    for e in range(3):
        assert close(ens[e], solos[e])
    assert not close(solos[1], solos[2], 1e-3)  # the learning rates matter: the check can fail
    with pytest.raises(ValueError, match="lr_scale must be 3 positive numbers"):
        MemberUpdates([ens], 3, lr_scale=[1.0, 0.0, 1.0])


def test_floss_with_a_learning_rate_per_member_equals_solo():
    E, lrs = 3, [2e-2, 5e-3, 6e-2]
    ens = MAKERS["lif"](gens(range(E)), E)
    kw = dict(k=2, T=30, batch=3, progress=False, max_grad_norm=0.3)
    sf.floss(ens, 3, lr=lrs, generator=gens(range(20, 20 + E)), **kw)
    for e in range(E):
        solo = MAKERS["lif"](gen(e))
        sf.floss(solo, 3, lr=lrs[e], generator=gen(20 + e), **kw)
        assert all(close(pe[e], ps) for pe, ps in zip(ens.parameters(), solo.parameters()))
    with pytest.raises(ValueError, match="one per member"):
        sf.floss(ens, 1, lr=[1e-3, 1e-3], **kw)


def test_select_takes_members_in_order():
    from surroflos.ensemble import select

    solos = [sf.SpikingRNN(2, 5, 1, beta=b, g=g, generator=gen(i), dtype=F64)
             for i, (b, g) in enumerate([(0.9, 1.0), (0.7, 2.0), (0.5, 3.0)])]
    sub = select(stack(solos), [2, 0])
    assert sub.ensemble == 2 and sub.g == (3.0, 1.0)
    for j, i in enumerate([2, 0]):
        assert all(torch.equal(a, b) for a, b in zip(member(sub, j).state_dict().values(),
                                                         solos[i].state_dict().values()))
    with pytest.raises(ValueError, match="indices must be members"):
        select(sub, [2])


# Three members that differ in everything that may differ: seed (not consecutive), lr, floss_lr, g,
# beta, alpha, threshold, flossing target and mode (during / none / pre: a bout with a subset of members), and
# the surrogate's width (spiking models; rate networks have none).
MIXED = [dict(seed=3, lr=1e-2, floss_lr=1e-3, g=1.0, beta=0.7, alpha=0.8, threshold=1.0, target=0.0, flossing="during",
              surrogate_scale=2.0),
         dict(seed=5, lr=3e-3, floss_lr=1e-3, g=1.5, beta=0.9, alpha=0.6, threshold=1.0, target=0.0, flossing="none",
              surrogate_scale=5.0),
         dict(seed=3, lr=2e-2, floss_lr=5e-3, g=0.8, beta=0.8, alpha=0.8, threshold=0.7, target=-0.5, flossing="pre",
              surrogate_scale=1.0)]


def _mixed_configs(tmp_path, model: str, **kw) -> list:
    base = dict(TINY, model=model, epochs=3, floss_every=1, floss_steps=1, **kw)
    return [TrainConfig(**dict(base, **m, out=str(tmp_path / f"s{i}"))) for i, m in enumerate(MIXED)]


@pytest.mark.parametrize("model, rule", [("rate", "bptt"), ("lif", "bptt"), ("cuba", "bptt"), ("lif", "eprop")])
def test_members_with_their_own_settings_equal_their_solo_runs(tmp_path, model, rule):
    cfgs = _mixed_configs(tmp_path, model, rule=rule)
    ens_cfg = tr.ensemble_config(cfgs, out=str(tmp_path / "ens"))
    assert ens_cfg.ensemble == 3 and [m["seed"] for m in ens_cfg.members] == [3, 5, 3]
    assert [tr.member_config(ens_cfg, e) for e in range(3)] == [
        tr.dataclasses.replace(c, out=ens_cfg.out) for c in cfgs]
    ens = train(ens_cfg, progress=False, log=_quiet)
    result = json.loads((tmp_path / "ens" / "result.json").read_text())
    solos = [train(c, progress=False, log=_quiet) for c in cfgs]
    for e, solo in enumerate(solos):
        _assert_member_equals_solo(ens, solo, e)
        assert result["members"][e]["settings"] == {**MIXED[e]}
        for a, b in zip(ens.metrics, solo.metrics):  # a member flosses in its own bouts only
            assert ("flossing" in b) == ("flossing" in a and a["flossing"]["lambda_last"][e] is not None)
    assert (result["preflossing"]["lambda_last"][1] is None) and result["preflossing"]["lambda_last"][0] is not None
    # The check has power: the solo runs differ well beyond the tolerance (lr, g, ... change the results).
    assert not close(solos[0].metrics[-1]["val_loss"], solos[2].metrics[-1]["val_loss"], 1e-6)


def test_member_wise_learning_rates_are_needed_for_the_match(tmp_path, monkeypatch):
    """The comparison above fails when every member steps at the first member's learning rate."""
    def first_members_lr(self, optimizer, max_norm=None):
        self.clip_(max_norm)
        optimizer.step()
        self.restore_()

    monkeypatch.setattr(MemberUpdates, "step_", first_members_lr)
    mixed = [dict(m, g=1.0, beta=0.7, alpha=0.8, threshold=1.0, target=0.0, flossing="none", floss_lr=1e-3)
             for m in MIXED]
    cfgs = [TrainConfig(**dict(TINY, model="rate", epochs=2, **m, out=str(tmp_path / f"s{i}")))
            for i, m in enumerate(mixed)]
    ens = train(tr.ensemble_config(cfgs, out=str(tmp_path / "ens")), progress=False, log=_quiet)
    solo = train(cfgs[2], progress=False, log=_quiet)
    assert not close(ens.metrics[-1]["val_loss"][2], solo.metrics[-1]["val_loss"], 1e-6)


def test_member_wise_ensemble_resumes_exactly(tmp_path):
    cfgs = _mixed_configs(tmp_path, "lif")
    full = train(tr.ensemble_config(cfgs, out=str(tmp_path / "full")), progress=False, log=_quiet)
    part_cfg = tr.ensemble_config(cfgs, out=str(tmp_path / "part"))
    assert train(part_cfg, progress=False, log=_quiet, stop_after=1).interrupted
    resumed = train(part_cfg, resume=True, progress=False, log=_quiet)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "flossing")} for r in rows]  # noqa: E731
    assert strip(resumed.metrics) == strip(full.metrics)
    assert resumed.spectrum_after == full.spectrum_after


def test_member_wise_config_checks(tmp_path):
    cfgs = _mixed_configs(tmp_path, "lif")
    ens = tr.ensemble_config(cfgs)
    with pytest.raises(tr.ConfigError, match=r"member 1 sets \['N'\], which cannot differ"):
        tr.validate(tr.dataclasses.replace(ens, members=[{}, {"N": 9}, {}]))
    with pytest.raises(tr.ConfigError, match="members lists 3 members but ensemble is 2"):
        tr.validate(tr.dataclasses.replace(ens, ensemble=2))
    with pytest.raises(tr.ConfigError, match=r"member 2: beta must lie in \[0, 1\]"):
        tr.validate(tr.dataclasses.replace(ens, members=[{}, {}, {"beta": 1.5}]))
    with pytest.raises(tr.ConfigError, match=r"configuration 1 differs from configuration 0 in \['N'\]"):
        tr.ensemble_config([cfgs[0], tr.dataclasses.replace(cfgs[1], N=9)])
    # Consecutive seeds and nothing else: the plain ensemble configuration (members None)
    plain = tr.ensemble_config([tr.dataclasses.replace(cfgs[0], seed=s) for s in (4, 5, 6)])
    assert plain.members is None and plain.ensemble == 3 and plain.seed == 4
