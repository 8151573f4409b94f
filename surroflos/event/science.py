"""The measurements behind docs/RESULTS.md's section on exact event-based spectra.

``python -m surroflos.event.science {spectra,extensive,surrogate,all} --out DIR [--quick]`` writes one JSON per
experiment (every number of the tables, with the settings) and its figure into ``DIR``:

``spectra``    full exact spectra of balanced LIF and theta networks (N = 500 and 1000, K = 100, J0 = 1,
               nu = 1 Hz, tau_m = 10 ms), several seeds: lambda_1, lambda_2, number of positive exponents,
               KS entropy, Kaplan-Yorke dimension, the sum rule, rates, ISI CV and wall time.
``extensive``  theta networks: full spectra against N (K = 50) and against K (N = 500): is the chaos extensive
               (KS entropy and dimension proportional to N, spectra collapsing on i / N)?
``extensive_lif``  the same sweeps for LIF networks (stable at every size).
``surrogate``  one LIF network (N = 200, K = 20, fixed in-degree): its exact spectrum against the surrogate
               spectrum of the time-stepped BalancedNetwork with the same graph
               (:meth:`EventNetwork.to_balanced`, delta synapses) as dt shrinks, for several surrogates and widths.
``surrogate_scaled``  the same network with a surrogate whose integral scales with the step, ``triangle(c dt /
               tau_m)``, for several ``c``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from typing import Any, Dict, List, Optional

import numpy as np

from .lyapunov import lyapunov_spectrum
from .network import EventNetwork

__all__ = ["run_spectra", "run_extensive", "run_extensive_lif", "run_surrogate", "run_surrogate_scaled", "tables",
           "main"]

BASE = dict(J0=1.0, rate=1.0, tau_m=0.01)


def _ci95(values: List[float]) -> List[float]:
    """Mean +- 95% confidence half-width (Student t) of a few seeds: ``[mean, half_width]``."""
    a = np.asarray(values, dtype=np.float64)
    if a.size < 2:
        return [float(a.mean()), float("nan")]
    t = {2: 12.71, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}.get(a.size, 2.0)
    return [float(a.mean()), float(t * a.std(ddof=1) / math.sqrt(a.size))]


def _spectrum_record(net: EventNetwork, spikes: float, warm: float) -> Dict[str, Any]:
    t = time.perf_counter()
    res = lyapunov_spectrum(net, spikes_per_neuron=spikes, warmup_spikes_per_neuron=warm)
    wall = time.perf_counter() - t
    sim = net.simulate(20, warmup_spikes_per_neuron=warm)
    lam = res.exponents
    # The time-shift direction is exactly neutral; its finite-time estimate (~1e-3/s after 100 spikes per neuron)
    # decides whether a stable network's KY dimension reads 0 or 1. Count it as 0 for KY and KS.
    fixed = lam.copy()
    fixed[int(np.argmin(np.abs(fixed)))] = 0.0
    from .lyapunov import kaplan_yorke_dimension, ks_entropy

    half = res.history[len(res.history) // 2] if len(res.history) > 1 else lam
    return {"N": net.N, "K": net.K, "neuron": net.neuron, "seed": net.seed, "rate": res.rate, "cv": sim.isi_cv(),
            "lambda1": float(lam[0]), "lambda2": float(lam[1]), "n_positive": int((fixed > 0).sum()),
            "ks_entropy": ks_entropy(fixed), "ks_per_neuron": ks_entropy(fixed) / net.N,
            "ky_dimension": kaplan_yorke_dimension(fixed), "ky_per_neuron": kaplan_yorke_dimension(fixed) / net.N,
            "neutral_exponent": float(lam[int(np.argmin(np.abs(lam)))]),
            "lambda1_half_time": float(half[0]), "lambda2_half_time": float(half[1]),
            "sum": float(lam.sum()), "log_det_rate": res.log_det_rate, "sum_rule_error": res.sum_rule_error(),
            "mean_exponent": float(lam.mean()), "time_s": res.time, "spikes": res.n_spikes, "qr_every": res.qr_every,
            "wall_s": wall, "exponents": lam.tolist()}


def _log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def run_spectra(out: str, quick: bool = False) -> Dict[str, Any]:
    sizes = [(100, 20, 3)] if quick else [(500, 100, 3), (1000, 100, 1)]
    spikes, warm = (10, 2) if quick else (100, 20)
    runs = []
    for N, K, seeds in sizes:
        for neuron in ("lif", "theta"):
            for seed in range(seeds):
                net = EventNetwork(N, K, neuron=neuron, seed=seed, **BASE)
                runs.append(_spectrum_record(net, spikes, warm))
                r = runs[-1]
                _log(f"spectra {neuron} N={N} seed={seed}: l1={r['lambda1']:.3g} l2={r['lambda2']:.3g} "
                     f"npos={r['n_positive']} KS={r['ks_entropy']:.3g} KY={r['ky_dimension']:.3g} "
                     f"sum-rule={r['sum_rule_error']:.1e} wall={r['wall_s']:.0f}s")
    summary = []
    for N, K, _ in sizes:
        for neuron in ("lif", "theta"):
            rs = [r for r in runs if r["N"] == N and r["neuron"] == neuron]
            summary.append({"N": N, "K": K, "neuron": neuron, "seeds": len(rs),
                            **{key: _ci95([r[key] for r in rs]) for key in
                               ("rate", "cv", "lambda1", "lambda2", "n_positive", "ks_entropy", "ks_per_neuron",
                                "ky_dimension", "mean_exponent", "sum_rule_error", "wall_s")}})
    payload = {"experiment": "spectra", "settings": dict(BASE, spikes_per_neuron=spikes, warmup=warm), "runs": runs,
               "summary": summary}
    _plot_spectra(runs, os.path.join(out, "event_spectra.png"))
    return payload


def run_extensive(out: str, quick: bool = False, neuron: str = "theta") -> Dict[str, Any]:
    if quick:
        n_sweep, k_sweep, seeds, spikes, warm = [60, 120], [10, 20], 2, 10, 2
    else:
        n_sweep, k_sweep, seeds, spikes, warm = [125, 250, 500, 1000], [25, 50, 100, 200], 3, 100, 20
    K_fixed = 20 if quick else 50
    N_fixed = 120 if quick else 500
    runs = []
    for N in n_sweep:
        for seed in range(seeds if N < 1000 else 1):
            runs.append(dict(_spectrum_record(EventNetwork(N, K_fixed, neuron=neuron, seed=seed, **BASE), spikes, warm),
                             sweep="N"))
            r = runs[-1]
            _log(f"extensive N={N} K={K_fixed} seed={seed}: KS/N={r['ks_per_neuron']:.3g} KY/N={r['ky_per_neuron']:.3g} "
                 f"l1={r['lambda1']:.3g} wall={r['wall_s']:.0f}s")
    for K in k_sweep:
        for seed in range(seeds):
            runs.append(dict(_spectrum_record(EventNetwork(N_fixed, K, neuron=neuron, seed=seed, **BASE), spikes, warm),
                             sweep="K"))
            r = runs[-1]
            _log(f"extensive N={N_fixed} K={K} seed={seed}: KS/N={r['ks_per_neuron']:.3g} KY/N={r['ky_per_neuron']:.3g} "
                 f"l1={r['lambda1']:.3g} wall={r['wall_s']:.0f}s")
    summary = []
    for sweep, values, key in (("N", n_sweep, "N"), ("K", k_sweep, "K")):
        for v in values:
            rs = [r for r in runs if r["sweep"] == sweep and r[key] == v]
            summary.append({"sweep": sweep, "N": rs[0]["N"], "K": rs[0]["K"], "seeds": len(rs),
                            **{m: _ci95([r[m] for r in rs]) for m in
                               ("rate", "lambda1", "lambda2", "n_positive", "ks_entropy", "ks_per_neuron",
                                "ky_dimension", "ky_per_neuron", "mean_exponent")},
                            "positive_fraction": _ci95([r["n_positive"] / r["N"] for r in rs])})
    name = "extensive" if neuron == "theta" else "extensive_lif"
    payload = {"experiment": name, "settings": dict(BASE, spikes_per_neuron=spikes, warmup=warm, neuron=neuron,
                                                    K_fixed=K_fixed, N_fixed=N_fixed), "runs": runs,
               "summary": summary}
    _plot_extensive(runs, os.path.join(out, f"event_{name}.png"), neuron)
    return payload


def run_extensive_lif(out: str, quick: bool = False) -> Dict[str, Any]:
    """The same sweeps for LIF networks (stable: how the negative spectrum scales)."""
    return run_extensive(out, quick, neuron="lif")


def run_surrogate(out: str, quick: bool = False, dts: Optional[List[float]] = None,
                  seeds: Optional[List[int]] = None, surrogates: Optional[List[tuple]] = None) -> Dict[str, Any]:
    import torch

    from .. import lyapunov as slyap
    from .. import surrogate as sg

    torch.set_num_threads(1)
    N, K, k = (60, 10, 4) if quick else (200, 20, 10)
    rate = 2.0
    seeds = seeds or ([0] if quick else [0, 1])
    dts = dts or ([1e-3, 1e-4] if quick else [1e-3, 5e-4, 2e-4, 1e-4, 5e-5, 2e-5, 1e-5])
    surrs = surrogates or ([("atan", 2.0)] if quick else [("atan", 2.0), ("atan", 10.0), ("atan", 50.0),
                                                         ("fast_sigmoid", 25.0), ("triangle", 0.3)])
    T_trans, T_frame, T_acc = (0.05, 0.05, 0.2) if quick else (0.3, 0.3, 2.0)
    runs, exact = [], []
    for seed in seeds:
        net = EventNetwork(N, K, 1.0, rate, 0.01, neuron="lif", seed=seed, graph="in")
        ex = lyapunov_spectrum(net, k=N, spikes_per_neuron=20 if quick else 200, warmup_spikes_per_neuron=20)
        sim = net.simulate(duration=T_acc, warmup_spikes_per_neuron=20)
        exact.append({"seed": seed, "exponents": ex.exponents.tolist(), "rate": ex.rate, "log_det_rate": ex.log_det_rate,
                      "cv": sim.isi_cv()})
        _log(f"surrogate seed={seed}: exact l1..3 = {ex.exponents[:3]}, rate {ex.rate:.3g} Hz")
        state_u = net.simulate(1, warmup_spikes_per_neuron=20).final_state
        for name, scale in surrs:
            for dt in dts:
                bn = net.to_balanced(dt, surrogate=sg.get(name, scale))
                steps = int(round((T_trans + T_frame + T_acc) / dt))
                x = torch.zeros(steps, 1, 0, dtype=torch.float64)
                t = time.perf_counter()
                with torch.no_grad():
                    res = slyap.lyapunov_spectrum(bn, x, k, qr_every=max(1, int(round(1e-4 / dt))),
                                                  transient=int(round(T_trans / dt)),
                                                  frame_warmup=int(round(T_frame / dt)),
                                                  state0=net.balanced_state(state_u),
                                                  generator=torch.Generator().manual_seed(seed))
                wall = time.perf_counter() - t
                spikes = bn.simulate(int(round(T_acc / dt)), state0=net.balanced_state(state_u))
                lam = res.exponents[0].tolist()
                runs.append({"seed": seed, "surrogate": name, "scale": scale, "dt": dt, "exponents": lam,
                             "rate": float(spikes.double().mean()) / dt, "wall_s": wall})
                _log(f"surrogate seed={seed} {name}({scale}) dt={dt:g}: l1..3 = {np.round(lam[:3], 1)}, "
                     f"rate {runs[-1]['rate']:.3g} Hz, {wall:.0f}s")
    payload = {"experiment": "surrogate", "settings": {"N": N, "K": K, "J0": 1.0, "rate": rate, "tau_m": 0.01,
                                                        "graph": "in", "k": k, "T_transient": T_trans,
                                                        "T_frame": T_frame, "T_accumulate": T_acc, "tau_s": 0.0,
                                                        "qr_every_s": 1e-4},
               "exact": exact, "runs": runs}
    _plot_surrogate(payload, os.path.join(out, "event_surrogate.png"))
    return payload


def run_surrogate_scaled(out: str, quick: bool = False, dts: Optional[List[float]] = None,
                         seeds: Optional[List[int]] = None, cs: Optional[List[float]] = None) -> Dict[str, Any]:
    """Surrogates whose integral scales with the step: ``triangle`` with ``scale = c dt / tau_m`` (its integral,
    unit width on each side of threshold), for several ``c``: does the surrogate spectrum then converge as
    ``dt -> 0``, and to what?"""
    import torch

    from .. import lyapunov as slyap
    from .. import surrogate as sg

    torch.set_num_threads(1)
    N, K, k = (60, 10, 4) if quick else (200, 20, 10)
    rate, tau = 2.0, 0.01
    seeds = seeds or ([0] if quick else [0, 1])
    dts = dts or ([1e-3, 1e-4] if quick else [1e-3, 1e-4, 2e-5])
    cs = cs or ([1.0] if quick else [0.3, 1.0, 3.0, 10.0])
    T_trans, T_frame, T_acc = (0.05, 0.05, 0.2) if quick else (0.3, 0.3, 2.0)
    runs, exact = [], []
    for seed in seeds:
        net = EventNetwork(N, K, 1.0, rate, tau, neuron="lif", seed=seed, graph="in")
        ex = lyapunov_spectrum(net, k=N, spikes_per_neuron=20 if quick else 200, warmup_spikes_per_neuron=20)
        exact.append({"seed": seed, "exponents": ex.exponents.tolist(), "rate": ex.rate})
        state_u = net.simulate(1, warmup_spikes_per_neuron=20).final_state
        for c in cs:
            for dt in dts:
                bn = net.to_balanced(dt, surrogate=sg.get("triangle", c * dt / tau))
                steps = int(round((T_trans + T_frame + T_acc) / dt))
                t = time.perf_counter()
                with torch.no_grad():
                    res = slyap.lyapunov_spectrum(bn, torch.zeros(steps, 1, 0, dtype=torch.float64), k,
                                                  qr_every=max(1, int(round(1e-4 / dt))),
                                                  transient=int(round(T_trans / dt)),
                                                  frame_warmup=int(round(T_frame / dt)),
                                                  state0=net.balanced_state(state_u),
                                                  generator=torch.Generator().manual_seed(seed))
                lam = res.exponents[0].tolist()
                runs.append({"seed": seed, "c": c, "dt": dt, "exponents": lam, "wall_s": time.perf_counter() - t})
                _log(f"surrogate_scaled seed={seed} c={c} dt={dt:g}: l1..3 = {np.round(lam[:3], 1)}")
    payload = {"experiment": "surrogate_scaled",
               "settings": {"N": N, "K": K, "J0": 1.0, "rate": rate, "tau_m": tau, "graph": "in", "k": k,
                            "surrogate": "triangle(c dt / tau_m)", "T_transient": T_trans, "T_frame": T_frame,
                            "T_accumulate": T_acc, "tau_s": 0.0, "qr_every_s": 1e-4, "detach_reset": True},
               "exact": exact, "runs": runs}
    _plot_surrogate_scaled(payload, os.path.join(out, "event_surrogate_scaled.png"))
    return payload


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _plot_spectra(runs, path):
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, neuron in zip(axes, ("lif", "theta")):
        for r in runs:
            if r["neuron"] != neuron:
                continue
            lam = np.asarray(r["exponents"])
            ax.plot(np.arange(1, lam.size + 1) / lam.size, lam, lw=1, label=f"N={r['N']}, seed {r['seed']}")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("i / N")
        ax.set_ylabel("lambda_i [1/s]")
        ax.set_title(f"{neuron}: exact Lyapunov spectra (K=100)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_extensive(runs, path, neuron="theta"):
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for r in runs:
        lam = np.asarray(r["exponents"])
        if r["sweep"] == "N" and r["seed"] == 0:
            axes[0].plot(np.arange(1, lam.size + 1) / lam.size, lam, lw=1, label=f"N={r['N']}")
        if r["sweep"] == "K" and r["seed"] == 0:
            axes[1].plot(np.arange(1, lam.size + 1) / lam.size, lam, lw=1, label=f"K={r['K']}")
    k_fixed = runs[0]["K"]
    n_fixed = [r for r in runs if r["sweep"] == "K"][0]["N"]
    for ax, title in zip(axes[:2], (f"{neuron}, K={k_fixed}: spectra vs N", f"{neuron}, N={n_fixed}: spectra vs K")):
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("i / N")
        ax.set_ylabel("lambda_i [1/s]")
        ax.set_title(title)
        ax.legend(fontsize=7)
    ns = sorted({r["N"] for r in runs if r["sweep"] == "N"})
    for key, marker in (("ks_per_neuron", "o"), ("ky_per_neuron", "s")):
        means = [np.mean([r[key] for r in runs if r["sweep"] == "N" and r["N"] == n]) for n in ns]
        axes[2].plot(ns, means, marker=marker, label=key.replace("_", " "))
    axes[2].set_xscale("log")
    axes[2].set_xticks(ns, [str(n) for n in ns])
    axes[2].minorticks_off()
    axes[2].set_xlabel("N")
    axes[2].set_title("per neuron: KS entropy [1/s] and KY dimension")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_surrogate(payload, path):
    plt = _plt()
    runs, exact = payload["runs"], payload["exact"]
    k = payload["settings"]["k"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    seed0 = [r for r in runs if r["seed"] == 0]
    for (name, scale) in dict.fromkeys((r["surrogate"], r["scale"]) for r in seed0):
        rs = sorted((r for r in seed0 if (r["surrogate"], r["scale"]) == (name, scale)), key=lambda r: r["dt"])
        axes[0].plot([r["dt"] for r in rs], [r["exponents"][0] for r in rs], marker="o", label=f"{name}({scale:g})")
    axes[0].axhline(exact[0]["exponents"][0], color="k", ls="--", label="exact lambda_1 (0: time shift)")
    axes[0].axhline(exact[0]["exponents"][1], color="gray", ls=":", label="exact lambda_2")
    axes[0].set_xscale("log")
    axes[0].set_yscale("symlog", linthresh=10)
    axes[0].set_xlabel("dt [s]")
    axes[0].set_ylabel("lambda_1 [1/s]")
    axes[0].set_title("surrogate lambda_1 of the time-stepped network vs dt")
    axes[0].legend(fontsize=7)
    ex = np.asarray(exact[0]["exponents"][:k])
    axes[1].plot(np.arange(1, k + 1), ex, "k-o", label="exact")
    dt_min = min(r["dt"] for r in seed0)
    for (name, scale) in dict.fromkeys((r["surrogate"], r["scale"]) for r in seed0):
        for r in seed0:
            if (r["surrogate"], r["scale"]) == (name, scale) and r["dt"] in (1e-4, dt_min):
                axes[1].plot(np.arange(1, k + 1), r["exponents"], marker=".", lw=0.8,
                             label=f"{name}({scale:g}), dt={r['dt']:g}")
    axes[1].set_yscale("symlog", linthresh=10)
    axes[1].set_xlabel("i")
    axes[1].set_ylabel("lambda_i [1/s]")
    axes[1].set_title(f"leading {k} exponents, N={payload['settings']['N']}")
    axes[1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_surrogate_scaled(payload, path):
    plt = _plt()
    runs, exact = payload["runs"], payload["exact"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for dt in sorted({r["dt"] for r in runs}):
        rs = sorted((r for r in runs if r["dt"] == dt and r["seed"] == 0), key=lambda r: r["c"])
        ax.plot([r["c"] for r in rs], [r["exponents"][0] for r in rs], marker="o", label=f"lambda_1, dt={dt:g}")
    ax.axhline(exact[0]["exponents"][0], color="k", ls="--", label="exact lambda_1 (time shift)")
    ax.axhline(exact[0]["exponents"][1], color="gray", ls=":", label="exact lambda_2")
    ax.axhline(-1.0 / payload["settings"]["tau_m"], color="gray", ls="-.", lw=0.8, label="-1/tau_m (leak)")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=10)
    ax.set_xlabel("c (surrogate integral = c dt / tau_m)")
    ax.set_ylabel("lambda_1 [1/s]")
    ax.set_title("triangle surrogate scaled with dt, seed 0")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Tables (the markdown of docs/RESULTS.md, from the JSON files)
# ----------------------------------------------------------------------------------------------


def _pm(v, digits=3) -> str:
    mean, half = v
    if half != half:  # one seed: no interval
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} ± {half:.2g}"


def tables(out: str) -> str:
    """Markdown tables of every ``event_*.json`` in ``out`` (mean ± 95% CI half-width over seeds)."""
    parts = []

    def load(name):
        path = os.path.join(out, f"event_{name}.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    sp = load("spectra")
    if sp:
        parts.append("| neuron | N | K | seeds | rate (Hz) | ISI CV | lambda_1 (1/s) | lambda_2 (1/s) | positive | "
                     "KS entropy (1/s) | KY dimension | mean exponent (1/s) | wall (s) |\n|" + "---|" * 13)
        for r in sp["summary"]:
            parts[-1] += (f"\n| {r['neuron']} | {r['N']} | {r['K']} | {r['seeds']} | {_pm(r['rate'])} | {_pm(r['cv'])} | "
                          f"{_pm(r['lambda1'])} | {_pm(r['lambda2'])} | {_pm(r['n_positive'])} | "
                          f"{_pm(r['ks_entropy'])} | {_pm(r['ky_dimension'])} | {_pm(r['mean_exponent'])} | "
                          f"{_pm(r['wall_s'], 2)} |")
    for name in ("extensive", "extensive_lif"):
        ex = load(name)
        if not ex:
            continue
        parts.append(f"{ex['settings']['neuron']} networks:\n\n| sweep | N | K | seeds | rate (Hz) | lambda_1 (1/s) | "
                     "positive / N | KS / N (1/s) | KY / N | lambda_2 (1/s) | mean exponent (1/s) |\n|" + "---|" * 11)
        for r in ex["summary"]:
            parts[-1] += (f"\n| {r['sweep']} | {r['N']} | {r['K']} | {r['seeds']} | {_pm(r['rate'])} | "
                          f"{_pm(r['lambda1'])} | {_pm(r['positive_fraction'])} | {_pm(r['ks_per_neuron'])} | "
                          f"{_pm(r['ky_per_neuron'])} | {_pm(r['lambda2'])} | {_pm(r['mean_exponent'])} |")
    su = load("surrogate")
    if su:
        k = su["settings"]["k"]
        ex = {e["seed"]: e for e in su["exact"]}
        parts.append("| seed | surrogate | dt (s) | lambda_1 (1/s) | lambda_2 | lambda_k | lambda_1 dt (per step) | "
                     "rate (Hz) |\n|" + "---|" * 8)
        for seed, e in ex.items():
            lam = e["exponents"]
            parts[-1] += (f"\n| {seed} | **exact** | – | {lam[0]:.3g} | {lam[1]:.3g} | {lam[k - 1]:.3g} | – | "
                          f"{e['rate']:.3g} |")
        for r in su["runs"]:
            lam = r["exponents"]
            parts[-1] += (f"\n| {r['seed']} | {r['surrogate']}({r['scale']:g}) | {r['dt']:g} | {lam[0]:.4g} | "
                          f"{lam[1]:.4g} | {lam[-1]:.4g} | {lam[0] * r['dt']:.3g} | {r['rate']:.3g} |")
    sc = load("surrogate_scaled")
    if sc:
        parts.append("| seed | c | dt (s) | lambda_1 (1/s) | lambda_2 | lambda_k |\n|" + "---|" * 6)
        for e in sc["exact"]:
            lam = e["exponents"]
            k = sc["settings"]["k"]
            parts[-1] += f"\n| {e['seed']} | **exact** | – | {lam[0]:.3g} | {lam[1]:.3g} | {lam[k - 1]:.3g} |"
        for r in sc["runs"]:
            lam = r["exponents"]
            parts[-1] += f"\n| {r['seed']} | {r['c']:g} | {r['dt']:g} | {lam[0]:.4g} | {lam[1]:.4g} | {lam[-1]:.4g} |"
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m surroflos.event.science", description=__doc__.split("\n\n")[0])
    p.add_argument("experiment", choices=["spectra", "extensive", "extensive_lif", "surrogate", "surrogate_scaled",
                                          "all", "tables"],
                   help="an experiment, all of them, or 'tables' (print the markdown tables of the JSON in --out)")
    p.add_argument("--out", default="outputs/event_science")
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds), to check the script runs")
    p.add_argument("--dts", type=float, nargs="+", help="surrogate experiments: the time steps (s) to run")
    p.add_argument("--seeds", type=int, nargs="+", help="surrogate experiments: the network seeds")
    p.add_argument("--surrogates", nargs="+", metavar="NAME:SCALE",
                   help="surrogate experiment: surrogates as name:scale, e.g. atan:2 triangle:0.3")
    p.add_argument("--cs", type=float, nargs="+", help="surrogate_scaled: the integrals c (surrogate c dt / tau_m)")
    args = p.parse_args(argv)
    if args.experiment == "tables":
        print(tables(args.out), end="")
        return 0
    surrogates = None
    if args.surrogates:
        surrogates = []
        for item in args.surrogates:
            name, _, scale = item.partition(":")
            try:
                surrogates.append((name, float(scale)))
            except ValueError:
                p.error(f"--surrogates: {item!r} is not NAME:SCALE (e.g. atan:2)")
    extra = {"surrogate": dict(dts=args.dts, seeds=args.seeds, surrogates=surrogates),
             "surrogate_scaled": dict(dts=args.dts, seeds=args.seeds, cs=args.cs)}
    os.makedirs(args.out, exist_ok=True)
    names = (["spectra", "extensive", "extensive_lif", "surrogate", "surrogate_scaled"] if args.experiment == "all"
             else [args.experiment])
    funcs = {"spectra": run_spectra, "extensive": run_extensive, "extensive_lif": run_extensive_lif,
             "surrogate": run_surrogate, "surrogate_scaled": run_surrogate_scaled}
    try:
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(limits=1, user_api="blas")
    except ImportError:  # pragma: no cover
        limit = None
    for name in names:
        t = time.perf_counter()
        payload = funcs[name](args.out, args.quick, **extra.get(name, {}))
        payload["wall_s"] = time.perf_counter() - t
        payload["quick"] = args.quick
        path = os.path.join(args.out, f"event_{name}.json")
        with open(path, "w") as f:
            json.dump(payload, f, indent=1)
        _log(f"wrote {path} ({payload['wall_s']:.0f} s)")
    del limit
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
