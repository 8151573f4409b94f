"""Studies of where surrogate flossing pays (issue 13, question 1): cells x flossing settings x seeds.

A study is a ``base`` configuration (:class:`~surroflos.train.TrainConfig` fields), a list of *cells* (each a
name and the fields it changes: task, delay, neuron parameters, surrogate, gain...) and a list of *flossing
settings* (each a name and the flossing fields: mode, ``k``, steps...). Every (cell, flossing setting) is one
``surroflos train --compare`` (:func:`surroflos.compare.compare`) of ``seeds`` members per arm; the unflossed
arm of a cell is trained once and shared by all its flossing settings (same seeds, same data, so it is the
same run). Runs are sequential (one process), skip what is finished and resume what was interrupted.

The study folder holds ``<cell>/<flossing>/`` (each a ``--compare`` folder, arms in ``flossed/``),
``<cell>/unflossed/`` (the shared arm), ``study.json`` (the specification), ``runs.jsonl`` (one record per
member and arm: seed, final metric, success, time to threshold, lambda_1 before/after), ``comparisons.jsonl``
(one per cell and flossing setting: the ``comparison`` of its result.json) and ``summary.md`` (the table).

Command line: ``python -m surroflos.study --preset pilot --out outputs/study/pilot`` (see :data:`PRESETS`;
``--spec FILE.json`` for a specification of one's own, ``--seeds``, ``--epochs`` to override).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable, Optional

from ._io import atomic_json, atomic_write, ensure_writable_folder
from ._threads import threads_arg, torch_threads, train_threads
from .compare import compare
from .errors import UsageError
from .models.spiking import membrane_time_constant
from .train import TrainConfig

__all__ = ["PRESETS", "run_study", "cell_configs", "summary_table", "pooled_analysis", "pooled_table", "main"]

# The pilot's network, task and schedule; the other presets change a few of its fields.
_PILOT_BASE: dict = {"task": "gonogo_temporal", "model": "lif", "N": 64, "beta": 0.8, "reset": "zero", "g": 1.0,
                     "surrogate": "atan", "delay": 24, "T": None, "epochs": 30, "steps_per_epoch": 10,
                     "batch": 32, "lr": 3e-3, "pre_steps": 100, "floss_T": 100, "floss_batch": 8,
                     "lyap_every": 5, "spectrum_T": 200, "spectrum_k": 16, "eval_batch": 256, "seed": 0}

# The second round's lead, which every later round starts from: the wide SuperSpike surrogate, lr 1e-3, 60 epochs.
_LEAD_BASE: dict = dict(_PILOT_BASE, surrogate="superspike", epochs=60, lr=1e-3)

# The coarse pilot of docs/RESULTS.md section 5. Delays are >= 5 membrane time constants
# (tau_m = -1/log(beta): 4.5 steps at beta 0.8, 19.5 at 0.95).
PRESETS: dict[str, dict] = {
    "pilot": {
        "base": _PILOT_BASE,
        "seeds": 10,
        "cells": [
            {"name": "b0.8-atan-g1", "set": {}},
            {"name": "b0.8-superspike-g1", "set": {"surrogate": "superspike"}},
            {"name": "b0.8-atan-g2", "set": {"g": 2.0}},
            {"name": "b0.95-d100-atan-g1", "set": {"beta": 0.95, "delay": 100}},
        ],
        "flossing": [
            {"name": "pre-k4", "set": {"flossing": "pre", "k": 4}},
            {"name": "pre-k16", "set": {"flossing": "pre", "k": 16}},
        ],
        # Cells that run only some flossing settings (compute): cell name -> flossing names.
        "only": {"b0.8-atan-g2": ["pre-k16"], "b0.95-d100-atan-g1": ["pre-k16"]},
    },
    # The pilot's follow-up: its most promising cell (wide surrogate, k = 4) on 20 new seeds (10-29, so the
    # cell chosen on seeds 0-9 is tested on others), preflossing and preflossing plus bouts during training.
    "refine": {
        "base": dict(_PILOT_BASE, surrogate="superspike", seed=10),
        "seeds": 20,
        "cells": [{"name": "b0.8-superspike-g1-s10", "set": {}}],
        "flossing": [
            {"name": "pre-k4", "set": {"flossing": "pre", "k": 4}},
            {"name": "during-k4", "set": {"flossing": "during", "k": 4, "floss_every": 5, "floss_steps": 20}},
        ],
    },
    # Second pilot round (seeds 0-9): delayed XOR at d = 24 (5.4 tau_m) with the wide surrogate, and the
    # go/no-go cell with a lower learning rate and twice the epochs (the pilot's learning curves flip).
    "pilot2": {
        "base": dict(_PILOT_BASE, surrogate="superspike"),
        "seeds": 10,
        "cells": [{"name": "xor-d24-superspike", "set": {"task": "xor", "T": 48}},
                  {"name": "gng-superspike-lr1e-3-60ep", "set": {"lr": 1e-3, "epochs": 60}}],
        "flossing": [{"name": "pre-k4", "set": {"flossing": "pre", "k": 4}},
                     {"name": "pre-k16", "set": {"flossing": "pre", "k": 16}}],
        "only": {"xor-d24-superspike": ["pre-k16"], "gng-superspike-lr1e-3-60ep": ["pre-k4"]},
    },
    # The second round's lead (lr 1e-3, 60 epochs, wide surrogate, k = 4) on 20 new seeds (10-29).
    "replicate": {
        "base": dict(_LEAD_BASE, seed=10),
        "seeds": 20,
        "cells": [{"name": "gng-superspike-lr1e-3-60ep-s10", "set": {}}],
        "flossing": [{"name": "pre-k4", "set": {"flossing": "pre", "k": 4}}],
    },
    # Third round: the best setting found (wide surrogate, lr 1e-3, 60 epochs) at longer horizons, 8 and 10.7
    # tau_m, where fewer unflossed networks should succeed; preflossing and bouts during training; new seeds.
    "horizon": {
        "base": dict(_LEAD_BASE, seed=30),
        "seeds": 10,
        "cells": [{"name": "gng-d36-superspike", "set": {"delay": 36}},
                  {"name": "gng-d48-superspike", "set": {"delay": 48}}],
        "flossing": [{"name": "pre-k4", "set": {"flossing": "pre", "k": 4}},
                     {"name": "during-k4", "set": {"flossing": "during", "k": 4, "floss_every": 5,
                                                   "floss_steps": 20}}],
    },
    # Fourth round: a coarse screen of the other axes of question 1 around the d = 36 (8 tau_m) go/no-go cell of
    # the third round (where 3/10 unflossed networks succeed: room to move either way), on new seeds 40-49.
    "screen": {
        "base": dict(_LEAD_BASE, delay=36, seed=40),
        "seeds": 10,
        "cells": [{"name": "gng-d36-N128", "set": {"N": 128}},
                  {"name": "gng-d36-cuba", "set": {"model": "cuba", "alpha": 0.8}},
                  {"name": "gng-d36-superspike-scale0.5", "set": {"surrogate_scale": 0.5}},
                  {"name": "gng-d36-atan", "set": {"surrogate": "atan"}},
                  {"name": "gng-d36-g1.5", "set": {"g": 1.5}},
                  {"name": "gng-b0.9-d48", "set": {"beta": 0.9, "delay": 48}}],
        "flossing": [{"name": "pre-k4", "set": {"flossing": "pre", "k": 4}},
                     {"name": "during-k16", "set": {"flossing": "during", "k": 16, "floss_every": 5,
                                                    "floss_steps": 20}},
                     {"name": "pre500-k16", "set": {"flossing": "pre", "k": 16, "pre_steps": 500}}],
        # Compute (the shared machine ran at load 10-12): one or two flossing settings per cell.
        "only": {"gng-d36-N128": ["pre-k4"], "gng-d36-cuba": ["pre-k4"], "gng-d36-atan": ["pre-k4"],
                 "gng-d36-superspike-scale0.5": ["pre-k4", "pre500-k16"], "gng-d36-g1.5": ["pre-k4"],
                 "gng-b0.9-d48": ["pre-k4", "during-k16"]},
    },
    # Confirmation, fixed before its data were seen: the third round's d = 36 (8 tau_m) preflossing cell on 30 new
    # seeds (100-129). Primary endpoint: final success (Fisher); secondary: reaching the threshold at any epoch.
    "confirm": {
        "base": dict(_LEAD_BASE, delay=36, seed=100),
        "seeds": 30,
        "cells": [{"name": "gng-d36-superspike-s100", "set": {}}],
        "flossing": [{"name": "pre-k4", "set": {"flossing": "pre", "k": 4}}],
    },
    # Fifth round (two presets, run side by side): axes the screen left out, on new seeds 50-59. "a": the d = 36
    # go/no-go cell with N = 256, subtract reset, threshold 0.5, and k = 32 flossed exponents; "b": other tasks
    # (copy at 5.4 tau_m, a 3-bit flip-flop whose pulses come every 50 steps = 11 tau_m on average) and beta 0.7.
    "screen2a": {
        "base": dict(_LEAD_BASE, delay=36, seed=50),
        "seeds": 10,
        "cells": [{"name": "gng-d36-N256", "set": {"N": 256}},
                  {"name": "gng-d36-subtract", "set": {"reset": "subtract"}},
                  {"name": "gng-d36-thr0.5", "set": {"threshold": 0.5}},
                  {"name": "gng-d36-superspike-s50", "set": {}}],
        "flossing": [{"name": "pre-k4", "set": {"flossing": "pre", "k": 4}},
                     {"name": "pre-k32", "set": {"flossing": "pre", "k": 32}}],
        "only": {"gng-d36-N256": ["pre-k4"], "gng-d36-subtract": ["pre-k4"], "gng-d36-thr0.5": ["pre-k4"],
                 "gng-d36-superspike-s50": ["pre-k32"]},
    },
    "screen2b": {
        "base": dict(_LEAD_BASE, seed=50),
        "seeds": 10,
        "cells": [{"name": "copy-d24", "set": {"task": "copy", "delay": 24, "T": 60}},
                  {"name": "flipflop-p0.02", "set": {"task": "flipflop", "delay": None, "T": None,
                                                     "task_params": {"p": 0.02, "T": 200}}},
                  {"name": "gng-b0.7-d36", "set": {"beta": 0.7, "delay": 36}}],
        "flossing": [{"name": "pre-k4", "set": {"flossing": "pre", "k": 4}}],
    },
    # The preregistered test of a moderate effect (fixed before any of its data were seen): the confirmation's
    # cell (d = 36 go/no-go, preflossing k = 4) on 320 new seeds per arm (1000-1319) in 10 blocks of 32, so that
    # finished blocks survive an interruption. Primary endpoint: final success, blocks pooled by
    # Cochran-Mantel-Haenszel (``--pool``), two-sided at 0.05; secondary: reaching the threshold at any epoch.
    "powered": {
        "base": dict(_LEAD_BASE, delay=36),
        "seeds": 32,
        "cells": [{"name": f"gng-d36-s{s}", "set": {"seed": s}} for s in range(1000, 1320, 32)],
        "flossing": [{"name": "pre-k4", "set": {"flossing": "pre", "k": 4}}],
    },
    # Sixth round (exploratory, fixed before its run, new seeds 60-69): axes of question 1 no round covered. On the
    # d = 36 go/no-go cell: flossing all k = N = 64 exponents, and preflossing for 1000 steps; Poisson input
    # spikes instead of currents; the parametric working memory task at 5.4 tau_m (success: mean squared error
    # <= 0.01, an RMS error of 0.1, a third of the 0.29 of always answering the mean).
    "screen3": {
        "base": dict(_LEAD_BASE, delay=36, seed=60),
        "seeds": 10,
        "cells": [{"name": "gng-d36-s60", "set": {}},
                  {"name": "gng-d36-poisson", "set": {"task_params": {"encoding": "poisson"}}},
                  {"name": "pwm-d24", "set": {"task": "pwm", "delay": 24, "success": 0.01}}],
        "flossing": [{"name": "pre-k4", "set": {"flossing": "pre", "k": 4}},
                     {"name": "pre-k64", "set": {"flossing": "pre", "k": 64}},
                     {"name": "pre1000-k4", "set": {"flossing": "pre", "k": 4, "pre_steps": 1000}}],
        "only": {"gng-d36-s60": ["pre-k64", "pre1000-k4"], "gng-d36-poisson": ["pre-k4"], "pwm-d24": ["pre-k4"]},
    },
    # The sixth round's lead (k = N = 64: 5/10 against 3/10) on 32 new seeds (200-231), fixed before its run.
    # Primary endpoint: final success (Fisher, two-sided 0.05).
    "confirm_k64": {
        "base": dict(_LEAD_BASE, delay=36, seed=200),
        "seeds": 32,
        "cells": [{"name": "gng-d36-s200", "set": {}}],
        "flossing": [{"name": "pre-k64", "set": {"flossing": "pre", "k": 64}}],
    },
    # N = 512, the largest size question 1 names (rounds 4-5 went to 256), on the d = 36 cell; new seeds 70-79.
    "screen4": {
        "base": dict(_LEAD_BASE, delay=36, seed=70),
        "seeds": 10,
        "cells": [{"name": "gng-d36-N512", "set": {"N": 512}}],
        "flossing": [{"name": "pre-k4", "set": {"flossing": "pre", "k": 4}}],
    },
    # Thresholds beyond the 0.5 and 1 of the earlier rounds (the threshold-to-reset gap sets how far the membranes
    # sit from the surrogate's peak): 0.25 and 2 on the d = 36 cell; new seeds 80-89, fixed before its run.
    "screen5": {
        "base": dict(_LEAD_BASE, delay=36, seed=80),
        "seeds": 10,
        "cells": [{"name": "gng-d36-thr0.25", "set": {"threshold": 0.25}},
                  {"name": "gng-d36-thr2", "set": {"threshold": 2.0}}],
        "flossing": [{"name": "pre-k4", "set": {"flossing": "pre", "k": 4}}],
    },
    # A seconds-long study for tests and for trying the runner.
    "tiny": {
        "base": {"task": "xor", "model": "lif", "N": 8, "delay": 4, "T": 12, "epochs": 2, "steps_per_epoch": 2,
                 "batch": 4, "eval_batch": 16, "pre_steps": 2, "floss_T": 20, "floss_batch": 2, "spectrum_T": 20,
                 "spectrum_k": 2, "lyap_every": 1},
        "seeds": 2,
        "cells": [{"name": "b0.7", "set": {"beta": 0.7}}, {"name": "b0.9", "set": {"beta": 0.9}}],
        "flossing": [{"name": "pre-k1", "set": {"flossing": "pre", "k": 1}},
                     {"name": "pre-k2", "set": {"flossing": "pre", "k": 2}}],
        "only": {"b0.9": ["pre-k2"]},
    },
}


def _check_spec(spec: dict) -> None:
    for key in ("base", "cells", "flossing", "seeds"):
        if key not in spec:
            raise UsageError(f"study specification lacks {key!r} (it needs base, cells, flossing, seeds)")
    names = [c["name"] for c in spec["cells"]] + [f["name"] for f in spec["flossing"]]
    for n in names:
        if not isinstance(n, str) or not n or "/" in n or n in ("unflossed", "..", "."):
            raise UsageError(f"cell and flossing names must be plain folder names, got {n!r}")
    if len(set(c["name"] for c in spec["cells"])) != len(spec["cells"]):
        raise UsageError("cell names must be distinct")
    if len(set(f["name"] for f in spec["flossing"])) != len(spec["flossing"]):
        raise UsageError("flossing setting names must be distinct")
    for cell, fl in spec.get("only", {}).items():
        unknown = set(fl) - {f["name"] for f in spec["flossing"]}
        if cell not in {c["name"] for c in spec["cells"]} or unknown:
            raise UsageError(f"'only' names an unknown cell {cell!r} or flossing settings {sorted(unknown)}")
    if not isinstance(spec["seeds"], int) or spec["seeds"] < 2:
        raise UsageError(f"seeds must be an int >= 2, got {spec['seeds']!r}")


def cell_configs(spec: dict, out: str) -> list[tuple[str, str, TrainConfig, str]]:
    """``(cell, flossing, config, unflossed folder)`` for every comparison of the study, in order."""
    _check_spec(spec)
    only = spec.get("only", {})
    todo = []
    for cell in spec["cells"]:
        for fl in spec["flossing"]:
            if cell["name"] in only and fl["name"] not in only[cell["name"]]:
                continue
            fields = {**spec["base"], **cell["set"], **fl["set"], "ensemble": spec["seeds"],
                      "out": os.path.join(out, cell["name"], fl["name"])}
            try:
                cfg = TrainConfig.from_dict(fields)
            except TypeError as e:
                raise UsageError(f"cell {cell['name']!r}, flossing {fl['name']!r}: {e}") from None
            todo.append((cell["name"], fl["name"], cfg, os.path.join(out, cell["name"], "unflossed")))
    return todo


def _records(cell: str, fl: str, cfg: TrainConfig, comparison: dict) -> list[dict]:
    out = []
    for arm in ("flossed", "unflossed"):
        a = comparison[arm]
        for e, seed in enumerate(a["seeds"]):
            out.append({"cell": cell, "flossing_setting": fl, "arm": arm, "seed": seed,
                        "flossing": a["flossing"], "k": cfg.k if arm == "flossed" else None,
                        "task": cfg.task, "delay": cfg.delay, "N": cfg.N, "beta": cfg.beta, "g": cfg.g,
                        "surrogate": cfg.surrogate, "threshold": cfg.threshold, "epochs": a["epochs"],
                        "metric": comparison["metric"], "final": a["metric_values"][e],
                        "success": a["success_by_member"][e],
                        "time_to_threshold": a["time_to_threshold"]["epochs"][e],
                        "lambda1_before": a["lambda1_before_members"][e],
                        "lambda1_after": a["lambda1_after_members"][e]})
    return out


def _f(v, spec=".3f"):
    return "–" if v is None else format(v, spec)


def _schedule(cfg: dict) -> str:
    """``pre k=4 (100 steps)`` or ``during k=4 (100 + 5 x 20 steps)``."""
    sch = TrainConfig.from_dict(cfg).schedule()
    bouts = f" + {sch.times} x {sch.steps}" if sch.every else ""
    return f"{cfg['flossing']} k={cfg['k']} ({sch.pre_steps}{bouts} steps)"


def _delay(cfg: dict) -> str:
    """``36 (8.0)``: the delay in steps and in membrane time constants; ``–`` for tasks without one."""
    d = cfg.get("delay")
    return "–" if d is None else f"{d} ({d / membrane_time_constant(cfg['beta']):.1f})"


def _scale(cfg: dict) -> str:
    return "" if cfg.get("surrogate_scale") is None else f" ({cfg['surrogate_scale']:g})"


def summary_table(rows: list[dict]) -> str:
    """The markdown table of a study: one row per (cell, flossing setting)."""
    head = ("| cell | task | delay (τ_m) | β | surrogate | g | flossing | success flossed [95% CI] | "
            "success none [95% CI] | Fisher p | final metric flossed | final metric none | MW p | "
            "time to thr. flossed (n) | time to thr. none (n) | reached p | λ1 before | λ1 preflossed | "
            "λ1 after flossed | λ1 after none |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        c, cfg = r["comparison"], r["config"]
        f, u, t = c["flossed"], c["unflossed"], c["tests"]

        def succ(a):
            lo, hi = a["success_ci"]
            return f"{a['successes']}/{a['n']} [{lo:.2f}, {hi:.2f}]"

        def fin(a):
            return "–" if a["metric_mean"] is None else f"{a['metric_mean']:.3f} ± {a['metric_std']:.3f}"

        def ttt(a):
            tt = a["time_to_threshold"]
            return f"{_f(tt['median'], 'g')} ({tt['reached']})"

        mw = t["final_metric"]["p_value"]
        reached = t.get("reached", {}).get("p_value")  # absent in comparisons written before it was added
        lines.append(
            f"| {r['cell']} | {cfg['task']} | {_delay(cfg)} | "
            f"{cfg['beta']:g} | {cfg['surrogate']}{_scale(cfg)} | {cfg['g']:g} | {_schedule(cfg)} | "
            f"{succ(f)} | {succ(u)} | "
            f"{t['success']['p_value']:.3g} | {fin(f)} | "
            f"{fin(u)} | {_f(mw, '.3g')} | {ttt(f)} | {ttt(u)} | {_f(reached, '.3g')} | "
            f"{_f(f['lambda1_before'], '+.3f')} | "
            f"{_f(f['lambda1_preflossed'], '+.3f')} | {_f(f['lambda1_after'], '+.3f')} | "
            f"{_f(u['lambda1_after'], '+.3f')} |")
    return "\n".join(lines) + "\n"


def run_study(spec: dict, out: str, *, progress: bool = False, log: Callable[[str], None] = print,
              command: Optional[str] = None) -> list[dict]:
    """Run (or continue) the study ``spec`` in ``out``; returns one row per comparison
    (``{"cell", "flossing_setting", "config", "comparison", "seconds"}``) and writes the study's files."""
    todo = cell_configs(spec, out)
    ensure_writable_folder(out, "--out", UsageError)
    atomic_json({"spec": spec, "command": command}, os.path.join(out, "study.json"))
    rows, records = [], []
    for i, (cell, fl, cfg, unflossed) in enumerate(todo):
        log(f"[{i + 1}/{len(todo)}] {cell} / {fl} -> {cfg.out}")
        t0 = time.perf_counter()
        res = compare(cfg, resume=True, progress=progress, unflossed_out=unflossed,
                      log=lambda s: log("  " + s))
        rows.append({"cell": cell, "flossing_setting": fl, "config": cfg.to_dict(),
                     "comparison": res.comparison, "seconds": time.perf_counter() - t0})
        records += _records(cell, fl, cfg, res.comparison)
        _write(out, rows, records, command)
    return rows


def _write(out: str, rows: list, records: list, command: Optional[str]) -> None:
    def lines(items):
        return lambda fh: fh.writelines(json.dumps(x) + "\n" for x in items)

    atomic_write(os.path.join(out, "runs.jsonl"), lines(records))
    atomic_write(os.path.join(out, "comparisons.jsonl"), lines(rows))
    text = (f"Command: `{command}`\n\n" if command else "") + summary_table(rows)
    atomic_write(os.path.join(out, "summary.md"), lambda fh: fh.write(text))


def _pool_name(cfg: dict) -> str:
    return "preflossing, k = 4" if cfg.get("flossing") == "pre" and cfg.get("k") == 4 else "other flossing settings"


def pooled_analysis(rows: list[dict]) -> dict:
    """Cochran-Mantel-Haenszel tests over comparisons (docs/RESULTS.md section 5, "Pooled analysis").

    ``rows``: comparison records as in a study's ``comparisons.jsonl`` (only ``cell``, ``flossing_setting``,
    ``config.flossing``, ``config.k`` and the arms' ``successes``, ``n`` and ``time_to_threshold.reached`` are
    read). Rows with preflossing of k = 4 exponents form one pool, all other flossing settings another; each
    row is one stratum. Returns ``{pool: {"strata": [...], "success": test, "reached": test}}`` with the tests
    of :func:`surroflos.stats.mantel_haenszel` (flossed arm first).
    """
    from . import stats

    pools: dict = {}
    for r in rows:
        f, u = r["comparison"]["flossed"], r["comparison"]["unflossed"]
        pools.setdefault(_pool_name(r["config"]), []).append({
            "cell": r["cell"], "flossing_setting": r["flossing_setting"],
            "success": [[f["successes"], f["n"] - f["successes"]], [u["successes"], u["n"] - u["successes"]]],
            "reached": [[f["time_to_threshold"]["reached"], f["n"] - f["time_to_threshold"]["reached"]],
                        [u["time_to_threshold"]["reached"], u["n"] - u["time_to_threshold"]["reached"]]]})
    return {name: {"strata": strata,
                   "success": stats.mantel_haenszel([t["success"] for t in strata]),
                   "reached": stats.mantel_haenszel([t["reached"] for t in strata])}
            for name, strata in pools.items()}


def pooled_table(result: dict) -> str:
    """The markdown table of :func:`pooled_analysis`."""
    lines = ["| pool | comparisons | endpoint | flossed | unflossed | pooled odds ratio (MH) [95% CI] | CMH p |",
             "|---|---|---|---|---|---|---|"]
    for name, pool in result.items():
        for endpoint in ("success", "reached"):
            t = pool[endpoint]
            label = "final success" if endpoint == "success" else "reached at any epoch"
            lines.append(f"| {name} | {t['strata']} | {label} | {t['successes_a']}/{t['n_a']} | "
                         f"{t['successes_b']}/{t['n_b']} | {t['odds_ratio']:.2f} [{t['odds_ratio_ci'][0]:.2f}, "
                         f"{t['odds_ratio_ci'][1]:.2f}] | {t['p_value']:.3g} |")
    return "\n".join(lines) + "\n"


def _pool_main(paths: list) -> int:
    rows = []
    for path in paths:
        try:
            with open(path) as fh:
                rows += [json.loads(line) for line in fh if line.strip()]
        except (OSError, ValueError) as e:
            print(f"python -m surroflos.study: error: --pool {path}: {e}", file=sys.stderr)
            return 2
    print(pooled_table(pooled_analysis(rows)))
    return 0


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m surroflos.study", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default=None)
    p.add_argument("--spec", default=None, help="a JSON specification {base, cells, flossing, seeds[, only]}")
    p.add_argument("--seeds", type=int, default=None, help="members per arm (default: the specification's)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the specification's)")
    p.add_argument("--out", default=None, help="the study's folder (required unless --pool)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--threads", default="auto", type=threads_arg,
                   help="torch CPU threads: a number, or auto (default): one thread when every cell's network is "
                        "small, as for surroflos train --threads")
    p.add_argument("--pool", nargs="+", default=None, metavar="COMPARISONS_JSONL",
                   help="instead of running: the pooled Cochran-Mantel-Haenszel tests of these comparisons")
    args = p.parse_args(argv)
    if args.pool is not None:
        return _pool_main(args.pool)
    try:
        if args.out is None:
            raise UsageError("--out is required (the study's folder)")
        if (args.preset is None) == (args.spec is None):
            raise UsageError("give one of --preset or --spec")
        if args.spec is not None:
            with open(args.spec) as fh:
                spec = json.load(fh)
        else:
            spec = json.loads(json.dumps(PRESETS[args.preset]))
        if args.seeds is not None:
            spec["seeds"] = args.seeds
        if args.epochs is not None:
            spec["base"]["epochs"] = args.epochs
        command = "python -m surroflos.study " + " ".join(argv if argv is not None else sys.argv[1:])
        # One thread when every comparison's ensemble is small (surroflos._threads.train_threads); the largest
        # cell decides, since the threads are the process's.
        choices = {train_threads(cfg, args.threads) for _, _, cfg, _ in cell_configs(spec, args.out)}
        with torch_threads(choices.pop() if len(choices) == 1 else None):
            rows = run_study(spec, args.out, progress=args.progress, command=command)
    except (UsageError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
