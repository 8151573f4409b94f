"""Grids of training runs (tasks x delays x models x flossing modes x seeds): ``surroflos sweep``.

Each run is an ordinary :func:`surroflos.train.train` run in ``OUT/runs/<name>/``. A run whose
``result.json`` exists is done and skipped; one with only a checkpoint is resumed; so an interrupted
sweep restarted with the same command picks up where it stopped. Runs execute in ``workers``
worker processes (spawned, one torch thread each). At the end ``OUT/runs.csv`` (one row per run),
``OUT/results.csv`` and ``OUT/results.md`` (mean, std and success rate over seeds per grid cell) and
one plot per task and model (metric against delay, one line per flossing mode) are written.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from .train import ConfigError, TrainConfig, validate

__all__ = ["SweepSpec", "PRESETS", "expand", "run_sweep", "summarize"]


@dataclass
class SweepSpec:
    """A grid: every combination of ``tasks``, ``delays``, ``models``, ``flossing`` and ``seeds``.

    ``base``: further :class:`~surroflos.train.TrainConfig` fields shared by all runs.
    ``success``: a run succeeds when its final metric is at least (accuracy) / at most (error) this.
    """

    tasks: list = field(default_factory=lambda: ["xor"])
    delays: list = field(default_factory=lambda: [10])
    models: list = field(default_factory=lambda: ["rate"])
    flossing: list = field(default_factory=lambda: ["none", "pre"])
    seeds: list = field(default_factory=lambda: [0])
    base: dict = field(default_factory=dict)
    success: Optional[float] = None


# Presets sized to run on a laptop CPU (the papers' networks are larger; docs/RESULTS.md says so).
_COMMON = {"N": 64, "epochs": 30, "steps_per_epoch": 20, "batch": 32, "lr": 3e-3, "k": 4, "pre_steps": 100,
           "floss_T": 100, "floss_batch": 8, "lyap_every": 5, "spectrum_T": 200, "eval_batch": 256}
PRESETS: dict[str, SweepSpec] = {
    "smoke": SweepSpec(tasks=["xor"], delays=[2, 4], models=["rate"], flossing=["none", "pre"], seeds=[0],
                       base={"N": 16, "epochs": 2, "steps_per_epoch": 2, "batch": 8, "k": 2, "pre_steps": 2,
                             "floss_T": 20, "floss_batch": 2, "lyap_every": 1, "spectrum_T": 32,
                             "eval_batch": 16}),
    "copy": SweepSpec(tasks=["copy"], delays=[5, 10, 20, 40], models=["rate"], flossing=["none", "pre"],
                      seeds=[0, 1, 2, 3, 4], base=dict(_COMMON, g=1.0), success=None),
    "xor": SweepSpec(tasks=["xor"], delays=[4, 8, 16, 32], models=["rate", "lif"],
                     flossing=["none", "pre", "during"], seeds=[0, 1, 2], base=dict(_COMMON), success=0.9),
    "gonogo": SweepSpec(tasks=["gonogo_temporal", "gonogo_spatial"], delays=[5, 10, 20, 40], models=["rate"],
                        flossing=["none", "pre"], seeds=[0, 1, 2], base=dict(_COMMON), success=0.9),
}


def run_name(cfg: TrainConfig) -> str:
    return f"{cfg.task}-d{cfg.delay}-{cfg.model}-{cfg.flossing}-s{cfg.seed}"


def expand(spec: SweepSpec, out: str) -> list[TrainConfig]:
    """The run configurations of ``spec`` (validated), each with its own folder under ``out/runs``."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(set(spec.base) - known)
    if bad:
        raise ConfigError(f"unknown TrainConfig fields in the sweep's base: {bad}")
    for name in ("tasks", "delays", "models", "flossing", "seeds"):
        if not getattr(spec, name):
            raise ConfigError(f"the sweep has no {name}")
    cfgs = []
    for task, delay, model, fl, seed in itertools.product(spec.tasks, spec.delays, spec.models, spec.flossing,
                                                        spec.seeds):
        cfg = TrainConfig(**dict(spec.base, task=task, delay=delay, model=model, flossing=fl, seed=seed))
        cfg.out = os.path.join(out, "runs", run_name(cfg))
        validate(cfg)  # fail before starting any worker
        cfgs.append(cfg)
    return cfgs


def _run_one(cfg_dict: dict) -> dict:
    """Worker: run, resume or load one configuration; returns its summary row (errors captured)."""
    import torch

    from .train import train

    torch.set_num_threads(1)
    cfg = TrainConfig.from_dict(cfg_dict)
    result_path = os.path.join(cfg.out, "result.json")
    t0 = time.perf_counter()
    status = "done"
    try:
        if not os.path.exists(result_path):
            resume = os.path.exists(os.path.join(cfg.out, "checkpoint.pt"))
            status = "resumed" if resume else "ran"
            train(cfg, resume=resume, progress=False, log=lambda s: None)
        with open(result_path) as f:
            res = json.load(f)
    except Exception as e:  # one failing run must not stop the sweep; it is reported in the table
        return dict(_key(cfg), status="error", error=f"{type(e).__name__}: {e}", out=cfg.out)
    final = res["final"]
    return dict(_key(cfg), status=status, metric=final["metric"], value=final[final["metric"]],
                higher_is_better=final["higher_is_better"],
                lambda1_before=(res["spectrum_before"] or [math.nan])[0],
                lambda1_after=(res["spectrum_after"] or [math.nan])[0],
                seconds=round(time.perf_counter() - t0, 2), out=cfg.out)


def _key(cfg: TrainConfig) -> dict:
    return {"task": cfg.task, "delay": cfg.delay, "model": cfg.model, "flossing": cfg.flossing, "seed": cfg.seed}


def run_sweep(spec: SweepSpec, out: str, *, workers: int = 1, progress: bool = True,
              command: Optional[str] = None) -> list[dict]:
    """Run every configuration of ``spec`` not yet done, then write the tables and plots; returns the rows."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    cfgs = expand(spec, out)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "sweep.json"), "w") as f:
        json.dump({"spec": dataclasses.asdict(spec), "command": command}, f, indent=2)
    jobs = [c.to_dict() for c in cfgs]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="sweep", unit="run", dynamic_ncols=True, disable=None)
    rows: list[dict] = []
    if workers == 1:
        for job in jobs:
            rows.append(_run_one(job))
            if bar is not None:
                bar.update(1)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_run_one, job) for job in jobs]
            for fut in as_completed(futures):
                rows.append(fut.result())
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    rows.sort(key=lambda r: (r["task"], r["model"], r["flossing"], r["delay"], r["seed"]))
    summarize(rows, out, success=spec.success, command=command)
    return rows


def _aggregate(rows: Sequence[dict], success: Optional[float]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["model"], r["flossing"], r["delay"]), []).append(r)
    table = []
    for (task, model, fl, delay), rs in sorted(groups.items()):
        ok = [r for r in rs if r["status"] != "error"]
        vals = [r["value"] for r in ok]
        mean = sum(vals) / len(vals) if vals else math.nan
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        row = {"task": task, "model": model, "flossing": fl, "delay": delay, "metric": ok[0]["metric"] if ok else "",
               "mean": mean, "std": std, "n": len(vals), "errors": len(rs) - len(ok),
               "lambda1_before": _mean([r["lambda1_before"] for r in ok]),
               "lambda1_after": _mean([r["lambda1_after"] for r in ok])}
        if success is not None and ok:
            hib = ok[0]["higher_is_better"]
            row["success_rate"] = sum((v >= success) if hib else (v <= success) for v in vals) / len(vals)
        table.append(row)
    return table


def _mean(vals: list) -> float:
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def _write_csv(path: str, rows: Sequence[dict]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def summarize(rows: Sequence[dict], out: str, *, success: Optional[float] = None,
              command: Optional[str] = None) -> list[dict]:
    """Write runs.csv, results.csv, results.md and the plots for ``rows``; returns the aggregated table."""
    table = _aggregate(rows, success)
    _write_csv(os.path.join(out, "runs.csv"), rows)
    _write_csv(os.path.join(out, "results.csv"), table)
    lines = []
    if command:
        lines += [f"Regenerate: `{command}`", ""]
    head = ["task", "model", "flossing", "delay", "metric", "mean ± std", "n"]
    if success is not None:
        head.append(f"success (≥{success:g})" if any(r.get("metric") == "accuracy" for r in table) else "success")
    head += ["λ1 before", "λ1 after"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [r["task"], r["model"], r["flossing"], str(r["delay"]), r["metric"],
                 f"{r['mean']:.3f} ± {r['std']:.3f}", f"{r['n']}" + (f" ({r['errors']} failed)" if r["errors"] else "")]
        if success is not None:
            cells.append(f"{r.get('success_rate', math.nan):.2f}")
        cells += [f"{r['lambda1_before']:+.3f}", f"{r['lambda1_after']:+.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    errors = [r for r in rows if r["status"] == "error"]
    if errors:
        lines += ["", "Failed runs:"] + [f"- {r['out']}: {r['error']}" for r in errors]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    _plot(table, out)
    return table


def _plot(table: Sequence[dict], out: str) -> None:
    from . import plotting

    for task, model in sorted({(r["task"], r["model"]) for r in table}):
        fig, (ax,) = plotting.figure(1)
        for i, fl in enumerate(sorted({r["flossing"] for r in table})):
            rs = sorted((r for r in table if r["task"] == task and r["model"] == model and r["flossing"] == fl),
                        key=lambda r: r["delay"])
            if not rs:
                continue
            d = [r["delay"] for r in rs]
            m = [r["mean"] for r in rs]
            s = [r["std"] for r in rs]
            ax.errorbar(d, m, yerr=s, marker="o", capsize=3, label=f"flossing: {fl}", color=f"C{i}")
        ax.set_xlabel("delay (steps)")
        ax.set_ylabel(next((r["metric"] for r in table if r["task"] == task), "metric"))
        ax.set_title(f"{task}, {model}")
        ax.legend()
        plotting.save_figure(fig, os.path.join(out, f"plot_{task}_{model}.png"))


def spec_from_args(args) -> SweepSpec:
    """A :class:`SweepSpec` from the command line: a preset, then any grid flags override it."""
    spec = dataclasses.replace(PRESETS[args.preset]) if args.preset else SweepSpec()
    spec.base = dict(spec.base)
    for name in ("tasks", "delays", "models", "flossing", "seeds"):
        v = getattr(args, name, None)
        if v:
            setattr(spec, name, list(v))
    for name in ("epochs", "N", "steps_per_epoch", "batch", "lr", "k", "pre_steps"):
        v = getattr(args, name, None)
        if v is not None:
            spec.base[name] = v
    if getattr(args, "success", None) is not None:
        spec.success = args.success
    return spec

