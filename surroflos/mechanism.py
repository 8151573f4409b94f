"""How surrogate gradient flossing acts on a trained comparison (issue 13, question 2).

Seed 001 claims that flossing the surrogate Lyapunov exponents "creates slow tangent modes that facilitate
gradient signal propagation over time scales that exceed the intrinsic time scales of individual neurons".
:func:`flossing_mechanism` measures both halves of that sentence on the networks of one
``surroflos train --compare`` folder, member by member, in four conditions:

``init``
    the networks as initialised (the same in both arms);
``preflossed``
    after the flossed arm's preflossing (re-run exactly: same seeds, same flossing inputs);
``trained_unflossed`` / ``trained_flossed``
    after training, from each arm's final checkpoint.

For each it reports

* the **surrogate spectrum** (``spectrum_k`` exponents per step, on task inputs, with the estimator and
  inputs of the training run: ``init`` and the trained conditions equal the arms' ``spectrum_before`` and
  ``spectrum_after`` in their ``result.json``);
* the number of **slow modes**: exponents with ``|lambda_i| * delay < 1`` (a mode that loses less than one
  e-fold over the task's delay), against the number ``k`` that was flossed;
* the **gradient norm against lag**, ``log ||dL_t/dh_{t-lag}||`` (:func:`surroflos.gradient_propagation`,
  autograd through the network's own step function, independent of any tangent map), its mean at the
  task's delay and its growth rate (slope per step);
* the membrane time constant ``tau_m = -1 / log(beta)``, against which the time scale bridged reads off the
  record: ``-1 / lambda_1`` (steps over which the slowest mode loses one e-fold) and the gradient's
  e-folding lag ``-1 / slope``.

Command line: ``python -m surroflos.mechanism COMPARE_DIR [--out DIR] [--lags L] [--trajectories B]``;
it writes ``mechanism.json`` and ``mechanism.png`` into ``--out`` (default: the comparison folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
from typing import Optional

import torch

from . import stats
from ._io import atomic_json, ensure_writable_folder
from .checkpoint import load_checkpoint
from .errors import UsageError
from .models.spiking import membrane_time_constant
from .train import DTYPES, TrainConfig, build_initialized_model, load_weights, train, validate
# The training run's own seeded streams and estimator, so that the measured spectra are the run's.
from .train import _SEED_SPECTRUM, _generators, _long_inputs, _spectrum

__all__ = ["CONDITIONS", "flossing_mechanism", "main"]

CONDITIONS = ("init", "preflossed", "trained_unflossed", "trained_flossed")
# Spectrum tag of the training run's final spectrum (train.py estimates it with this tag), and the tag of the
# inputs of the gradient measurement (a stream no training run uses).
_TAG_AFTER, _TAG_GRADIENT = 10**6, 7 * 10**6


def _arm_config(compare_dir: str, arm: str) -> TrainConfig:
    path = os.path.join(compare_dir, "result.json")
    try:
        with open(path) as fh:
            record = json.load(fh)
        folder = record["arms"][arm]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{path}: not a finished `surroflos train --compare` folder ({type(e).__name__}: {e})")
    with open(os.path.join(folder, "config.json")) as fh:
        cfg = TrainConfig.from_dict(json.load(fh)["config"])
    if cfg.ensemble is None:
        raise UsageError(f"{folder}: the arm is not an ensemble (a --compare arm always is)")
    return cfg


def _trained(cfg: TrainConfig, task, device, dtype):
    model = build_initialized_model(cfg, task, device, dtype)
    path = os.path.join(cfg.out, "checkpoint.pt")
    load_weights(model, load_checkpoint(path, required=("model",), map_location=device)["model"], path)
    return model


def _preflossed(cfg: TrainConfig, task, device, dtype):
    """The flossed arm's networks right after preflossing: its run re-done up to there in a scratch folder
    (the training run's own code, seeds and flossing inputs), stopped before the first epoch."""
    with tempfile.TemporaryDirectory() as tmp:
        scratch = dataclasses.replace(cfg, out=tmp, lyap_every=0)
        train(scratch, stop_after=0, progress=False, log=lambda _m: None)
        return _trained(scratch, task, device, dtype)


def _member_stats(values: list) -> dict:
    """Mean and 95% interval (t distribution) of per-member values (``None`` entries dropped)."""
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    if not v:
        return {"mean": None, "ci": [None, None], "n": 0}
    lo, hi = stats.mean_interval(v) if len(v) > 1 else (v[0], v[0])
    return {"mean": sum(v) / len(v), "ci": [lo, hi], "n": len(v)}


def flossing_mechanism(compare_dir: str, *, lags: Optional[int] = None, trajectories: int = 8,
                       spectrum_k: Optional[int] = None, n_probe: int = 4,
                       log=print) -> dict:
    """Measure spectra, slow modes and gradient propagation of a comparison's networks (module docstring).

    Args:
        compare_dir: a finished ``surroflos train --compare`` folder (or a study's ``<cell>/<flossing>``).
        lags: gradient lags ``1 .. lags`` in steps (default: twice the task's delay, at least 20).
        trajectories: trajectories per member for the gradient measurement.
        spectrum_k: exponents per spectrum (default: all ``N`` of a LIF network, ``2N`` of a cuba one).
        n_probe: random error directions per end time and trajectory (:func:`surroflos.gradient_propagation`).
        log: where progress lines go.

    Returns:
        The record written to ``mechanism.json``: ``config`` (the flossed arm's), ``tau_m``, ``delay``,
        ``k``, ``lags`` and per condition ``spectrum`` (``[E][spectrum_k]``, per step), ``slow_modes``
        (per member), ``lambda1``, ``gradient_log_norm`` (``[E][lags]``), ``gradient_at_delay``,
        ``gradient_slope`` (per step) and their member statistics (mean, 95% CI).

    Raises:
        UsageError: the folder is not a finished comparison, or its model is not a LIF/cuba network.
    """
    from .gradients import gradient_propagation

    flossed = _arm_config(compare_dir, "flossed")
    unflossed = _arm_config(compare_dir, "unflossed")
    if flossed.model not in ("lif", "cuba"):
        raise UsageError(f"{compare_dir}: the mechanism is measured for spiking networks (lif, cuba), "
                         f"not {flossed.model!r}")
    task = validate(flossed)
    device, dtype = torch.device(flossed.device), DTYPES[flossed.dtype]
    delay = flossed.delay or getattr(task, "delay", None) or 1
    L = lags or max(20, 2 * int(delay))
    state_dim = flossed.N if flossed.model == "lif" else 2 * flossed.N
    ks = spectrum_k or state_dim
    models = {"init": lambda: build_initialized_model(flossed, task, device, dtype),
              "preflossed": lambda: _preflossed(flossed, task, device, dtype),
              "trained_unflossed": lambda: _trained(unflossed, task, device, dtype),
              "trained_flossed": lambda: _trained(flossed, task, device, dtype)}
    tags = {"init": 0, "preflossed": 0, "trained_unflossed": _TAG_AFTER, "trained_flossed": _TAG_AFTER}
    spec_cfg = dataclasses.replace(flossed, spectrum_k=ks)
    gens = _generators(flossed, _SEED_SPECTRUM, _TAG_GRADIENT)
    transient = 20
    x = _long_inputs(task, transient + L + 16, trajectories, gens, device, dtype)
    tau_m = membrane_time_constant(flossed.beta) if 0 < flossed.beta < 1 else None  # JSON has no inf
    record: dict = {"config": flossed.to_dict(), "tau_m": tau_m, "delay": delay, "k": flossed.k,
                    "flossing": flossed.flossing, "lags": list(range(1, L + 1)), "conditions": {}}
    for name in CONDITIONS:
        log(f"{name}: spectrum of {ks} exponents and gradient norms over {L} lags")
        model = models[name]()
        spectrum = _spectrum(model, task, spec_cfg, ks, tags[name], device, dtype)
        grads = gradient_propagation(model, x, L, transient=transient, n_probe=n_probe,
                                     generator=_generators(flossed, _SEED_SPECTRUM, _TAG_GRADIENT + 1))
        c: dict = {"spectrum": spectrum}
        c["lambda1"] = [None if s is None else s[0] for s in spectrum]
        c["slow_modes"] = [None if s is None else sum(1 for v in s if abs(v) * delay < 1.0) for s in spectrum]
        c["gradient_log_norm"] = [g.log_norm.tolist() for g in grads]
        c["gradient_at_delay"] = [float(g.log_norm[min(int(delay), L) - 1]) for g in grads]
        c["gradient_slope"] = [g.growth_rate() * g.dt for g in grads]
        c["stats"] = {key: _member_stats(c[key]) for key in ("lambda1", "slow_modes", "gradient_at_delay",
                                                              "gradient_slope")}
        record["conditions"][name] = c
    # Paired by member (same seed, same initial network): what preflossing and what flossing in training change.
    conds = record["conditions"]
    record["tests"] = {}
    for a, b in (("preflossed", "init"), ("trained_flossed", "trained_unflossed")):
        for key in ("lambda1", "slow_modes", "gradient_at_delay"):
            pairs = [(u, v) for u, v in zip(conds[a][key], conds[b][key]) if u is not None and v is not None]
            if pairs:
                record["tests"][f"{a} vs {b}: {key}"] = stats.wilcoxon_paired(*zip(*pairs))
    return record


def summary_table(record: dict) -> str:
    """The markdown table of a :func:`flossing_mechanism` record (member means with 95% intervals)."""
    def cell(s: dict, spec: str) -> str:
        if s["mean"] is None:
            return "–"
        return f"{s['mean']:{spec}} [{s['ci'][0]:{spec}}, {s['ci'][1]:{spec}}]"

    lines = [f"τ_m = {record['tau_m']:.2f} steps, delay = {record['delay']} steps, k = {record['k']} flossed "
             f"({record['flossing']}); slow mode: |λ_i| · delay < 1", "",
             "| condition | λ1 (per step) | slow modes | log gradient norm at the delay | gradient slope (per step) |",
             "|---|---|---|---|---|"]
    for name, c in record["conditions"].items():
        s = c["stats"]
        lines.append(f"| {name} | {cell(s['lambda1'], '+.3f')} | {cell(s['slow_modes'], '.1f')} | "
                     f"{cell(s['gradient_at_delay'], '+.2f')} | {cell(s['gradient_slope'], '+.3f')} |")
    if record.get("tests"):
        lines += ["", "| paired difference (member by member) | median difference | Wilcoxon p |", "|---|---|---|"]
        for name, t in record["tests"].items():
            lines.append(f"| {name} | {t['median_difference']:+.3g} | {t['p_value']:.3g} |")
    return "\n".join(lines) + "\n"


def plot(record: dict, path: str) -> None:
    """Gradient norm against lag and the spectra of the four conditions (member means, members thin)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"init": "0.5", "preflossed": "tab:green", "trained_unflossed": "tab:blue",
              "trained_flossed": "tab:red"}
    fig, (a, b, z) = plt.subplots(1, 3, figsize=(15, 4))
    lags = record["lags"]
    n_exp = min(len(s) for c in record["conditions"].values() for s in c["spectrum"] if s is not None)
    zoom = min(16, 4 * record["k"], n_exp)
    for name, c in record["conditions"].items():
        rows = torch.tensor(c["gradient_log_norm"])
        for r in rows:
            a.plot(lags, r.tolist(), color=colors[name], lw=0.4, alpha=0.35)
        a.plot(lags, rows.mean(0).tolist(), color=colors[name], lw=2, label=name)
        mean = torch.tensor([s for s in c["spectrum"] if s is not None]).mean(0).tolist()
        b.plot(range(1, len(mean) + 1), mean, color=colors[name], lw=2, label=name)
        z.plot(range(1, zoom + 1), mean[:zoom], color=colors[name], lw=2, marker=".", label=name)
    a.axvline(record["delay"], color="k", ls=":", lw=1, label="task delay")
    for ax in (b, z):
        ax.axhline(0.0, color="k", lw=0.5)
        ax.axvline(record["k"] + 0.5, color="k", ls=":", lw=1, label=f"k = {record['k']}")
        ax.set(xlabel="index i", ylabel="λ_i (per step)")
    if record["tau_m"]:
        a.axvline(record["tau_m"], color="k", ls="--", lw=1, label="τ_m")
        for ax in (b, z):
            ax.axhline(-1.0 / record["tau_m"], color="k", ls="--", lw=1, label="log β (leak)")
    z.axhspan(-1.0 / record["delay"], 1.0 / record["delay"], color="0.85", label="slow: |λ| · delay < 1")
    a.set(xlabel="lag (steps)", ylabel="log ||dL_t / dh_{t-lag}||", title="gradient norm against lag")
    b.set_title("surrogate spectrum (member mean)")
    z.set_title(f"the first {zoom} exponents")
    for ax in (a, b, z):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m surroflos.mechanism", description=__doc__.split("\n\n")[0])
    p.add_argument("compare_dir", help="a finished `surroflos train --compare` folder")
    p.add_argument("--out", default=None, help="folder for mechanism.json/.png/.md (default: compare_dir)")
    p.add_argument("--lags", type=int, default=None, help="largest lag in steps (default: 2 x delay)")
    p.add_argument("--trajectories", type=int, default=8, help="trajectories per member for the gradients")
    p.add_argument("--spectrum-k", type=int, default=None, help="exponents per spectrum (default: all)")
    args = p.parse_args(argv)
    try:
        for name in ("lags", "trajectories", "spectrum_k"):
            v = getattr(args, name)
            if v is not None and v < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
        _arm_config(args.compare_dir, "flossed")  # a bad folder is named before anything is created
        out = args.out or args.compare_dir
        ensure_writable_folder(out, "--out")
        record = flossing_mechanism(args.compare_dir, lags=args.lags, trajectories=args.trajectories,
                                    spectrum_k=args.spectrum_k)
    except UsageError as e:
        print(f"python -m surroflos.mechanism: error: {e}", file=sys.stderr)
        return 2
    atomic_json(record, os.path.join(out, "mechanism.json"))
    table = summary_table(record)
    with open(os.path.join(out, "mechanism.md"), "w") as fh:
        fh.write(table)
    plot(record, os.path.join(out, "mechanism.png"))
    print(table)
    print(f"wrote {out}/mechanism.json, mechanism.md, mechanism.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
