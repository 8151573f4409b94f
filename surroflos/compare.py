"""``surroflos train --compare``: the configured flossing against none, same seeds, same data.

:func:`compare` trains the configuration twice as ensembles of ``E`` members (seeds ``seed .. seed+E-1``):
once with its flossing (the *flossed* arm, ``OUT/flossed``) and once with ``flossing="none"`` (the
*unflossed* arm, ``OUT/unflossed``). Everything else is identical, and since every random stream of a
run (weights, training batches, validation set, spectrum inputs) is seeded by the member's seed and not by
the flossing, the two arms start from the same weights and see the same data; only the flossing updates
(their own stream) differ. Each arm is an ordinary ``train`` run folder: checkpointed every epoch,
interrupt-safe and resumable (``resume=True`` continues unfinished arms and reuses finished ones).

``OUT/result.json`` holds ``config``, the arms' folders and ``comparison``::

    {"metric": ..., "success": threshold, "higher_is_better": ...,
     "flossed":   {"n", "successes", "success_rate", "success_ci", "metric_mean", "metric_std",
                   "metric_values", "time_to_threshold": {"median", "reached", "epochs"},
                   "lambda1_before", "lambda1_preflossed", "lambda1_after", "seeds", "stopped", ...},
     "unflossed": {...},
     "tests": {"success": Fisher exact (two-sided), "final_metric": Mann-Whitney U (two-sided),
               "reached": Fisher exact of the members that reached the threshold at any epoch}}

``OUT/comparison.png``: learning curves of both arms (members thin, mean thick), lambda_1 during training,
and the spectra before/after training of both arms.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Callable, Optional

from . import stats
from ._io import atomic_json, ensure_writable_folder
from .train import ConfigError, TrainConfig, train, validate

__all__ = ["compare", "arm_configs", "run_key", "summarize_arm", "comparison_table", "ComparisonResult",
           "DEFAULT_MEMBERS", "default_success"]

# Members per arm when --compare is given without --ensemble.
DEFAULT_MEMBERS = 8
ARMS = ("flossed", "unflossed")


@dataclass
class ComparisonResult:
    """What :func:`compare` returns: ``comparison`` as in ``result.json`` (``None`` if interrupted)."""

    out: str
    comparison: Optional[dict]
    arms: dict
    interrupted: bool = False


def default_success(task) -> Optional[float]:
    """The success threshold used when none is given: accuracy >= 0.9 (the RESULTS tables' criterion);
    ``None`` for other metrics (then one must be given)."""
    return 0.9 if task.metric == "accuracy" else None


def arm_configs(cfg: TrainConfig, unflossed_out: Optional[str] = None) -> dict:
    """``{"flossed": cfg, "unflossed": cfg without flossing}``, each an ensemble in ``cfg.out/<arm>``
    (the unflossed arm in ``unflossed_out`` if given).

    Raises :class:`~surroflos.train.ConfigError` for a configuration that cannot be compared (no
    flossing configured, no success threshold for a metric without a default).
    """
    if cfg.flossing == "none":
        raise ConfigError("--compare trains the configured flossing against none, but flossing is 'none'; "
                          "give --flossing pre or during")
    task = validate(cfg)
    E = DEFAULT_MEMBERS if cfg.ensemble is None else cfg.ensemble
    success = cfg.success if cfg.success is not None else default_success(task)
    if success is None:
        raise ConfigError(f"--compare needs --success for the metric {task.metric!r} of task {cfg.task!r} "
                          f"({'higher' if task.higher_is_better else 'lower'} is better), e.g. --success 0.05")
    base = dataclasses.replace(cfg, ensemble=E, success=success)
    arms = {"flossed": dataclasses.replace(base, out=os.path.join(cfg.out, "flossed")),
            "unflossed": dataclasses.replace(base, flossing="none", local_flossing=False,
                                             out=unflossed_out or os.path.join(cfg.out, "unflossed"))}
    for c in arms.values():
        validate(c)
    return arms


# Settings that a run without flossing never reads (``k`` only through the spectra's default size).
_FLOSSING_ONLY = ("target", "pre_steps", "floss_every", "floss_steps", "floss_times", "floss_T", "floss_batch",
                  "floss_lr", "local_flossing")


def run_key(cfg: TrainConfig) -> dict:
    """What determines a run's results: its configuration without the folder, device and kernel backend;
    for a run without flossing also without the flossing settings (so unflossed arms of configurations that
    differ only in flossing are the same run and can be shared, see ``compare(unflossed_out=...)``)."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in ("out", "device", "backend", "success")}
    if cfg.flossing == "none":
        for k in _FLOSSING_ONLY:
            d.pop(k)
        d["spectrum_k"] = cfg.spectrum_k or cfg.k
        d.pop("k")
    return d


def _finished(arm_cfg: TrainConfig) -> bool:
    """Whether ``arm_cfg.out`` holds the complete result of this run (same :func:`run_key`)."""
    path = os.path.join(arm_cfg.out, "result.json")
    try:
        with open(path) as fh:
            saved = TrainConfig.from_dict(json.load(fh)["config"])
    except (OSError, ValueError, KeyError, TypeError, ConfigError):
        return False
    return run_key(saved) == run_key(arm_cfg)


def _read_arm(arm_cfg: TrainConfig) -> tuple[dict, list]:
    with open(os.path.join(arm_cfg.out, "result.json")) as fh:
        result = json.load(fh)
    with open(os.path.join(arm_cfg.out, "metrics.jsonl")) as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return result, rows


def _mean(values) -> Optional[float]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def _std(values) -> Optional[float]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    m = sum(vals) / len(vals)
    return (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0


def _first(v):
    return None if not v else v[0]


def summarize_arm(result: dict, rows: list, success: float) -> dict:
    """One arm's summary (see the module docstring) from its ``result.json`` and ``metrics.jsonl`` rows.

    Stopped members count as failures and never reach the threshold; they are left out of the metric's
    mean and std (as in ``result.json``'s ``aggregate``).
    """
    final = result["final"]
    metric, hib = final["metric"], final["higher_is_better"]
    members = result["members"]
    n = len(members)
    values = [None if m["stopped"] else m["final"][metric] for m in members]
    ok = [stats.reaches(v, success, hib) for v in values]
    k = sum(ok)
    epochs = [r["epoch"] for r in rows]
    ttt = []
    for e in range(n):
        curve = [(r.get(metric) or [None] * n)[e] for r in rows]
        ttt.append(None if members[e]["stopped"] else stats.time_to_threshold(epochs, curve, success, hib))
    reached = [t for t in ttt if t is not None]
    before = [_first(m["spectrum_before"]) for m in members]
    after = [_first(m["spectrum_after"]) for m in members]
    pre = result.get("preflossing")
    preflossed = [_first(v) for v in pre["lambda_last"]] if pre and pre.get("lambda_last") else None
    return {
        "n": n, "seeds": [m["seed"] for m in members], "flossing": result["config"]["flossing"],
        "metric": metric, "successes": k, "success_rate": k / n if n else None,
        "success_ci": list(stats.wilson_interval(k, n)),
        "metric_mean": _mean(values), "metric_std": _std(values), "metric_values": values,
        "success_by_member": ok,
        "time_to_threshold": {"median": stats.median(reached), "reached": len(reached), "epochs": ttt},
        "lambda1_before": _mean(before), "lambda1_preflossed": None if preflossed is None else _mean(preflossed),
        "lambda1_after": _mean(after), "lambda1_before_members": before, "lambda1_after_members": after,
        "stopped": sum(1 for m in members if m["stopped"]), "epochs": final["epochs"],
    }


def _tests(f: dict, u: dict) -> dict:
    rf, ru = f["time_to_threshold"]["reached"], u["time_to_threshold"]["reached"]
    return {"success": stats.fisher_exact(f["successes"], f["n"], u["successes"], u["n"]),
            "final_metric": stats.mann_whitney(f["metric_values"], u["metric_values"]),
            # Learning that is unstable reaches the threshold and loses it again: count reaching it at all.
            "reached": stats.fisher_exact(rf, f["n"], ru, u["n"])}


def compare(cfg: TrainConfig, *, resume: bool = False, progress: bool = True, stop_after: Optional[int] = None,
            log: Callable[[str], None] = print, unflossed_out: Optional[str] = None) -> ComparisonResult:
    """Train ``cfg`` with its flossing and without (see the module docstring); write ``cfg.out``.

    Args:
        cfg: the configuration; ``ensemble`` members per arm (``None``: :data:`DEFAULT_MEMBERS`),
            ``success`` the threshold (``None``: :func:`default_success` of the task).
        resume: continue unfinished arms from their checkpoints and reuse finished ones; without it
            both arms start afresh.
        progress, log: as for :func:`~surroflos.train.train`.
        unflossed_out: the unflossed arm's folder (default ``cfg.out/unflossed``); studies share one
            between configurations that differ only in flossing (with ``resume``, a finished run there
            with the same :func:`run_key` is reused).
        stop_after: stop each arm's training after this many epochs of this call (as if interrupted;
            for tests of resumption); the comparison is then not written.

    Returns:
        :class:`ComparisonResult`; ``Ctrl-C`` leaves each arm's checkpoint and re-raises.
    """
    arms = arm_configs(cfg, unflossed_out)
    ensure_writable_folder(cfg.out, "--out", ConfigError)
    for name in ("result.json", "comparison.png"):
        if os.path.isdir(os.path.join(cfg.out, name)):
            raise ConfigError(f"{os.path.join(cfg.out, name)} is a folder, but --compare writes a file there")
    interrupted = False
    for name in ARMS:
        c = arms[name]
        if resume and _finished(c):
            log(f"{name}: finished run in {c.out}, reused")
            continue
        again = resume and os.path.exists(os.path.join(c.out, "checkpoint.pt"))
        log(f"{name} arm ({c.ensemble} members, seeds {c.seed}-{c.seed + c.ensemble - 1}, flossing {c.flossing}) "
            f"-> {c.out}" + (" (resumed)" if again else ""))
        res = train(c, resume=again, progress=progress, stop_after=stop_after,
                    log=lambda s, n=name: log(f"  [{n}] {s}"))
        interrupted = interrupted or res.interrupted
    if interrupted:
        return ComparisonResult(cfg.out, None, {k: v.out for k, v in arms.items()}, interrupted=True)
    summary = {}
    curves = {}
    for name in ARMS:
        result, rows = _read_arm(arms[name])
        summary[name] = summarize_arm(result, rows, arms[name].success)
        curves[name] = (result, rows)
    first = curves["flossed"][0]["final"]
    comparison = {"metric": first["metric"], "higher_is_better": first["higher_is_better"],
                  "success": arms["flossed"].success, **summary,
                  "tests": _tests(summary["flossed"], summary["unflossed"])}
    payload = {"config": dataclasses.replace(arms["flossed"], out=cfg.out).to_dict(),
               "arms": {k: v.out for k, v in arms.items()}, "comparison": comparison}
    atomic_json(payload, os.path.join(cfg.out, "result.json"))
    _figure(cfg, comparison, curves, os.path.join(cfg.out, "comparison.png"))
    for line in comparison_table(comparison, arms["flossed"]).splitlines():
        log(line)
    log(f"wrote {cfg.out}/ (result.json, comparison.png; arms in flossed/ and unflossed/)")
    return ComparisonResult(cfg.out, comparison, {k: v.out for k, v in arms.items()})


def _fmt(v, spec: str = "+.3f") -> str:
    return "–" if v is None else format(v, spec)


def comparison_table(comparison: dict, cfg: Optional[TrainConfig] = None) -> str:
    """The side-by-side text table that ``--compare`` prints."""
    f, u, t = comparison["flossed"], comparison["unflossed"], comparison["tests"]
    metric, thr = comparison["metric"], comparison["success"]
    op = ">=" if comparison["higher_is_better"] else "<="
    label = f"flossed ({f['flossing']}" + (f", k={cfg.k}" if cfg is not None else "") + ")"

    def succ(a):
        lo, hi = a["success_ci"]
        return f"{a['successes']}/{a['n']} = {a['success_rate']:.2f} [{lo:.2f}, {hi:.2f}]"

    def ttt(a):
        tt = a["time_to_threshold"]
        return f"{_fmt(tt['median'], 'g')} ({tt['reached']}/{a['n']} reach it)"

    def final(a):
        return "–" if a["metric_mean"] is None else f"{a['metric_mean']:.3f} ± {a['metric_std']:.3f}"

    rows = [("", label, "unflossed (none)"),
            ("members (seeds)", *(f"{a['n']} ({a['seeds'][0]}-{a['seeds'][-1]})" for a in (f, u))),
            (f"success ({metric} {op} {thr:g}), 95% Wilson", succ(f), succ(u)),
            (f"final {metric}, mean ± std", final(f), final(u)),
            ("time to threshold, median epoch", ttt(f), ttt(u)),
            ("lambda_1 before", _fmt(f["lambda1_before"]), _fmt(u["lambda1_before"])),
            ("lambda_1 after preflossing", _fmt(f["lambda1_preflossed"]), _fmt(u["lambda1_preflossed"])),
            ("lambda_1 after training", _fmt(f["lambda1_after"]), _fmt(u["lambda1_after"]))]
    if f["stopped"] or u["stopped"]:
        rows.append(("stopped (diverged) members", str(f["stopped"]), str(u["stopped"])))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}".rstrip() for r in rows]
    fp, mw = t["success"]["p_value"], t["final_metric"]
    lines.append(f"success: Fisher exact two-sided p = {fp:.3g}; final {metric}: Mann-Whitney U = "
                 + (f"{mw['U']:g}, two-sided p = {mw['p_value']:.3g}" if mw["U"] is not None else "n/a"))
    if "reached" in t:  # comparisons written before this test was added lack it
        lines.append(f"reached the threshold at any epoch: Fisher exact two-sided p = {t['reached']['p_value']:.3g}")
    return "\n".join(lines)


def _figure(cfg: TrainConfig, comparison: dict, curves: dict, path: str) -> None:
    from . import plotting

    colors = {"flossed": "C3", "unflossed": "C0"}
    metric = comparison["metric"]
    fig, (a1, a2, a3) = plotting.figure(3)
    for name in ARMS:
        result, rows = curves[name]
        n = comparison[name]["n"]
        ep = [r["epoch"] for r in rows]
        per = [[(r.get(metric) or [None] * n)[e] for r in rows] for e in range(n)]
        for e in range(n):
            a1.plot(ep, [math.nan if v is None else v for v in per[e]], color=colors[name], lw=0.6, alpha=0.35)
        mean = [_mean([per[e][i] for e in range(n)]) for i in range(len(ep))]
        a1.plot(ep, [math.nan if v is None else v for v in mean], color=colors[name], lw=2.2,
                label=f"{name} ({comparison[name]['successes']}/{n} succeed)")
        lam = [(r["epoch"], _mean(r["lambda1"])) for r in rows if "lambda1" in r]
        if result.get("lambda1_start") is not None:
            lam.insert(0, (0, _mean(result["lambda1_start"])))
        if lam:
            a2.plot([e for e, _ in lam], [math.nan if v is None else v for _, v in lam], color=colors[name],
                    marker=".", lw=1.5, label=name)
        for when, key, ls in (("before", "spectrum_before", "--"), ("after", "spectrum_after", "-")):
            if when == "before" and name == "unflossed":
                continue  # identical to the flossed arm's (same seeds, same weights)
            specs = [m[key] for m in result["members"] if m[key] is not None]
            if not specs:
                continue
            k = min(len(s) for s in specs)
            avg = [_mean([s[i] for s in specs]) for i in range(k)]
            a3.plot(range(1, k + 1), avg, color="gray" if when == "before" else colors[name], ls=ls, marker="o",
                    ms=3, label="before training (both)" if when == "before" else f"{name}, after training")
    pre = curves["flossed"][0].get("preflossing")
    if pre and pre.get("lambda_last"):
        specs = [s for s in pre["lambda_last"] if s is not None]
        if specs:
            k = min(len(s) for s in specs)
            a3.plot(range(1, k + 1), [_mean([s[i] for s in specs]) for i in range(k)], color=colors["flossed"],
                    ls=":", marker="s", ms=3, label="flossed, after preflossing (floss inputs)")
    a1.axhline(comparison["success"], color="gray", lw=0.8, ls=":")
    a1.set_xlabel("epoch")
    a1.set_ylabel(f"validation {metric}")
    a1.set_title(f"{cfg.task}, delay {cfg.delay}, {cfg.model} N={cfg.N}: members thin, mean thick")
    a1.legend(frameon=False)
    a2.axhline(0.0, color="k", lw=0.8, ls="--")
    a2.set_xlabel("epoch (0: after preflossing)")
    a2.set_ylabel("$\\lambda_1$ (member mean)")
    a2.set_title("largest exponent during training")
    a2.legend(frameon=False)
    a3.axhline(0.0, color="k", lw=0.8, ls="--")
    a3.set_xlabel("exponent index i")
    a3.set_ylabel("$\\lambda_i$ [1/step] (member mean)")
    a3.set_title(f"spectra (flossing {cfg.flossing}, k={cfg.k})")
    a3.legend(frameon=False)
    plotting.save_figure(fig, path)
