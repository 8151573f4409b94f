"""surroflos.event: the scientific claims of docs/RESULTS.md's event section, recomputed (slow, ``-m slow``),
and the science script in its quick form (fast)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from surroflos.event import EventNetwork, lyapunov_spectrum, max_lyapunov_bruteforce
from surroflos.event import science

TAU = 0.01


def test_science_script_quick(tmp_path):
    assert science.main(["all", "--quick", "--out", str(tmp_path)]) == 0
    for name in ("spectra", "extensive", "extensive_lif", "surrogate", "surrogate_scaled"):
        payload = json.loads((tmp_path / f"event_{name}.json").read_text())
        assert payload["experiment"] == name and payload["quick"] is True
        assert (tmp_path / f"event_{name}.png").stat().st_size > 0
    spectra = json.loads((tmp_path / "event_spectra.json").read_text())
    for r in spectra["runs"]:
        assert r["sum_rule_error"] < 1e-9
        if r["neuron"] == "lif":
            assert r["n_positive"] == 0 and r["ky_dimension"] == 1.0
    sur = json.loads((tmp_path / "event_surrogate.json").read_text())
    assert len(sur["runs"]) == 2 and len(sur["exact"]) == 1
    md = science.tables(str(tmp_path))
    # one row per summary line / run, and the exact rows beside the surrogate ones
    assert md.count("\n| lif |") == 1 and md.count("\n| theta |") == 1
    assert md.count("\n| N |") == 4 and md.count("\n| K |") == 4  # theta and LIF sweeps, 2 values each
    assert md.count("**exact**") == 2 and md.count("| atan(2) |") == 2
    lam1 = sur["runs"][0]["exponents"][0]
    assert f"{lam1:.4g}" in md


def test_science_script_overrides_and_bad_surrogate(tmp_path, capsys):
    assert science.main(["surrogate", "--quick", "--out", str(tmp_path), "--dts", "1e-3", "--surrogates",
                         "triangle:0.5"]) == 0
    sur = json.loads((tmp_path / "event_surrogate.json").read_text())
    assert [(r["surrogate"], r["scale"], r["dt"]) for r in sur["runs"]] == [("triangle", 0.5, 1e-3)]
    with pytest.raises(SystemExit) as e:
        science.main(["surrogate", "--quick", "--out", str(tmp_path), "--surrogates", "atan"])
    assert e.value.code == 2 and "NAME:SCALE" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balanced_lif_is_stable_apart_from_the_time_shift(seed):
    net = EventNetwork(300, 30, 1.0, 1.0, TAU, neuron="lif", seed=seed)
    res = lyapunov_spectrum(net, spikes_per_neuron=100, warmup_spikes_per_neuron=20)
    lam = res.exponents
    assert abs(lam[0]) < 1e-2 * abs(lam[1])
    assert (lam[1:] < 0).all()
    assert res.sum_rule_error() < 1e-9
    assert net.simulate(20, warmup_spikes_per_neuron=5).isi_cv() > 0.3  # irregular, yet not chaotic


@pytest.mark.slow
def test_theta_chaos_is_extensive():
    per_neuron = []
    for N in (100, 200, 400):
        ks = [lyapunov_spectrum(EventNetwork(N, 20, 1.0, 1.0, TAU, neuron="theta", seed=s), spikes_per_neuron=100,
                                warmup_spikes_per_neuron=20).ks_entropy() / N for s in range(2)]
        per_neuron.append(np.mean(ks))
    assert min(per_neuron) > 0
    assert max(per_neuron) / min(per_neuron) < 1.3  # KS entropy proportional to N


@pytest.mark.slow
def test_theta_lambda1_against_two_trajectories_at_larger_n():
    net = EventNetwork(400, 40, 1.0, 1.0, TAU, neuron="theta", seed=5)
    res = lyapunov_spectrum(net, k=2, spikes_per_neuron=300, warmup_spikes_per_neuron=20, qr_every=50)
    bf = max_lyapunov_bruteforce(net, duration=res.time, warmup_spikes_per_neuron=20)
    assert bf == pytest.approx(res.exponents[0], rel=0.05)


@pytest.mark.slow
def test_time_stepped_spikes_converge_at_dt_1e_6():
    net = EventNetwork(40, 8, 1.0, 2.0, TAU, seed=2)
    T = 0.1
    ev = net.simulate(duration=T)
    bn = net.to_balanced(1e-6)
    s = bn.simulate(int(round(T / 1e-6)), state0=net.balanced_state())[:, 0]
    t_idx, n_idx = s.nonzero(as_tuple=True)
    times, ids = (t_idx.double().numpy() + 1.0) * 1e-6, n_idx.numpy()
    for i in range(net.N):
        a, b = ev.spike_times[ev.spike_ids == i], times[ids == i]
        assert a.size == b.size
        if a.size:  # a neuron may stay silent for these 0.1 s (neuron 0 of this network does)
            assert np.abs(a - b).max() <= 4e-6
