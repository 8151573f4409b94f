"""Grids of training runs (tasks x delays x models x flossing modes [x gains x lrs x betas x targets x rules x
local] x seeds):
``surroflos sweep``.

Each run is an ordinary :func:`surroflos.train.train` run in ``OUT/runs/<name>/``. A run whose
``result.json`` exists is done and skipped; one with only a checkpoint is resumed; so an interrupted
sweep restarted with the same command picks up where it stopped. Each run folder records what defines
the run in ``run.json`` (its configuration without ``out``, ``device`` and ``backend``, which do not change
results, and a hash of it; :func:`config_hash`), and ``sweep.json`` lists the hashes of the sweep's runs.
Before any run starts, every run folder that holds results or a checkpoint is checked against the
configuration the sweep would give it (through ``run.json``, ``config.json``, ``result.json`` or the
checkpoint, so folders written before ``run.json`` existed are checked too): a sweep rerun into the same
``OUT`` with other settings stops with :class:`~surroflos.train.ConfigError` naming the folders and the
differing keys instead of reporting the old results under the new settings. One sweep at a time may
write into an ``OUT`` (a lock on ``OUT/.sweep.lock``).

Runs execute in ``workers`` worker processes (spawned, one torch thread each; finished runs are only
reloaded, in the calling process). Workers exit by themselves when the sweep's process dies (even by
``kill -9``) and ignore Ctrl-C, which the sweep's process handles by stopping them; a run stopped mid-way
keeps the checkpoint of its last completed epoch. At the end ``OUT/runs.csv`` (one row per run),
``OUT/results.csv`` and ``OUT/results.md`` (per grid cell, over seeds: the metric's mean, std and success
rate, the test loss, and the mean lambda_1 at initialisation, at the end of preflossing (the flossing
estimate of its last step) and after training) and one plot per task and model (metric, success rate
and test loss against delay, one line per flossing mode) are written.

New runs of one shape train as one ensemble (:mod:`surroflos.ensemble`, ``--ensemble auto|E``, ``auto`` by
default): runs that agree in every setting but the member-wise ones (:data:`surroflos.train.MEMBER_FIELDS`:
seed, gain ``g``, ``beta``, ``alpha``, ``threshold``, ``lr``, ``floss_lr``, flossing ``target`` and mode, the
surrogate's width ``surrogate_scale``; :func:`pack_key`), so a grid's seeds, gains and flossing modes of one
task, delay, model, rule and size share
a pack, while runs of another ``N``, model, task, delay, rule or any other setting never do. Each member
computes what its solo run computes (its own seed, gain, learning rates; it flosses in its own bouts only).
The ensemble run lives in ``OUT/packs/<first run>-E<size>-<hash>/``
(checkpoint, its metrics with every member, plots of all members) and, when it finishes, each member's
results are written into its own ``OUT/runs/<name>/`` (config.json, metrics.jsonl, result.json, with the
member's share of the pack's time as ``seconds``), so tables, per-run records and resumption are what
solo runs give; an interrupted pack resumes from its checkpoint. A member that diverges is reported as a
failed run, as its solo run would be. Runs with a solo checkpoint are resumed solo.

Engines: ``local`` (the default, needs nothing: the worker processes above) or ``ray`` (``--engine ray
[--address ADDR]``): each job (an ensemble pack or a solo resumed run) is one Ray task with its CPUs and
optionally a fraction of a GPU, on an existing Ray cluster or on a local Ray instance started for the sweep;
tasks write the same run folders (``OUT`` on a file system shared by the nodes), their rows come back to the
driver as they finish, and Ctrl-C or SIGTERM cancel every unfinished task (and shut a local instance down).
Ray is the optional extra ``surroflos[distributed]``.

Grids may also vary the initial gain, the learning rule and local flossing (:class:`SweepSpec`
``gains``, ``rules``, ``local``; CLI ``--gains``, ``--rules``, ``--local``). Then the tables get the
columns g, rule and local (after delay) and the test loss averaged over the epochs (learning speed),
and per task and model ``gain_<task>_<model>.png`` (metric, that mean loss and lambda_1 at
initialisation / after preflossing / after training against g, one line per rule x flossing mode) and
``gain_curves_<task>_<model>.png`` (learning curves per gain) replace the learning-curve plot.

Grids may vary the member-wise training settings too: the learning rate, the spiking membrane decay, the
flossing target and the surrogate's width (``lrs``, ``betas``, ``targets``, ``surrogate_scales``; CLI
``--lrs``, ``--betas``, ``--targets``, ``--surrogate-scales``; ``None``
in a list: the base's value). Such runs still pack into one ensemble. A field given by one of these axes
may not also be set in the base (CLI: ``--lrs`` replaces a preset's ``lr``; with ``--lr`` it is an error).
The tables get a column lr, beta, target or surrogate_scale (after delay, g, rule and local) for each of these
axes that the sweep sets or that differs between its runs, and the learning-speed column; the plots draw one
line per value. A run without flossing does not depend on the target, so ``targets`` applies to the flossing runs
only: the ``"none"`` runs are run once, with the base's target.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import itertools
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

from ._argtypes import MAX_SEED
from ._threads import torch_threads
from .train import MEMBER_FIELDS, ConfigError, TrainConfig, check_memory, ensemble_config, validate

__all__ = ["SweepSpec", "PRESETS", "expand", "plan", "run_sweep", "summarize", "config_hash", "run_definition",
           "RUN_RECORD", "LOCK_FILE", "ENGINES"]

RUN_RECORD = "run.json"  # in each run folder: what defines the run (run_definition) and its config_hash
LOCK_FILE = ".sweep.lock"  # in OUT: held (flock) while a sweep writes there
# TrainConfig fields that do not change what a run computes: where it is written, on which device and
# with which kernel backend.
NOT_DEFINING = ("out", "device", "backend")


@dataclass
class SweepSpec:
    """A grid: every combination of ``tasks``, ``delays``, ``models``, ``flossing``, ``gains``,
    ``rules``, ``local`` and ``seeds``.

    ``base``: further :class:`~surroflos.train.TrainConfig` fields shared by all runs.
    ``success``: a run succeeds when its final metric is at least (accuracy) / at most (error) this.
    ``gains``: recurrent gains ``g`` (``None``: the base's ``g``); ``rules``: learning rules
    (``TrainConfig.rule``); ``local``: local flossing on/off (``TrainConfig.local_flossing``). Local
    flossing acts on flossing bouts only, so ``local=True`` with flossing ``"none"`` is skipped (the
    plain ``"none"`` run is the one with ``local=False``). ``lrs``, ``betas``, ``targets``,
    ``surrogate_scales``: learning rates ``lr``, membrane decays ``beta`` (spiking models; rate networks
    ignore it), flossing targets ``target`` and surrogate widths ``surrogate_scale`` (spiking models)
    (``None``: the base's value; a field set by an axis may not be in ``base`` too). The
    target acts on flossing bouts only, so runs with flossing ``"none"`` ignore ``targets``: each is run
    once, with the base's target. Runs with the defaults (``[None]``, ``["bptt"]``, ``[False]``) keep
    their names; other values add ``-g<g>``, ``-lr<lr>``, ``-b<beta>``, ``-t<target>``, ``-ss<scale>``,
    ``-<rule>``, ``-local`` before the ``-s<seed>`` of the name.
    """

    tasks: list = field(default_factory=lambda: ["xor"])
    delays: list = field(default_factory=lambda: [10])
    models: list = field(default_factory=lambda: ["rate"])
    flossing: list = field(default_factory=lambda: ["none", "pre"])
    seeds: list = field(default_factory=lambda: [0])
    base: dict = field(default_factory=dict)
    success: Optional[float] = None
    gains: list = field(default_factory=lambda: [None])
    rules: list = field(default_factory=lambda: ["bptt"])
    local: list = field(default_factory=lambda: [False])
    lrs: list = field(default_factory=lambda: [None])
    betas: list = field(default_factory=lambda: [None])
    targets: list = field(default_factory=lambda: [None])
    surrogate_scales: list = field(default_factory=lambda: [None])


# The member-wise axes beyond the gain: TrainConfig field -> (SweepSpec axis, run-name prefix). Their values
# keep every tensor's shape (surroflos.train.MEMBER_FIELDS), so runs differing in them still share a pack.
HPARAM_AXES = {"lr": ("lrs", "lr"), "beta": ("betas", "b"), "target": ("targets", "t"),
               "surrogate_scale": ("surrogate_scales", "ss")}


# Presets sized to run on a laptop CPU in about 45 minutes in all with one worker (the papers' networks
# are larger; docs/RESULTS.md reports what these measure and says so). Sizes were chosen by short pilots so
# that each task is learnt at the shortest delay and fails without flossing at the longest one.
_COMMON = {"N": 64, "epochs": 30, "steps_per_epoch": 20, "batch": 32, "lr": 3e-3, "k": 16, "pre_steps": 100,
           "floss_T": 100, "floss_batch": 8, "floss_lr": 1e-3, "floss_every": 10, "floss_steps": 20,
           "floss_times": 2, "lyap_every": 5, "spectrum_T": 200, "eval_batch": 256, "g": 1.0}
PRESETS: dict[str, SweepSpec] = {
    "smoke": SweepSpec(tasks=["xor"], delays=[2, 4], models=["rate"], flossing=["none", "pre"], seeds=[0],
                       base={"N": 16, "epochs": 2, "steps_per_epoch": 2, "batch": 8, "k": 2, "pre_steps": 2,
                             "floss_T": 20, "floss_batch": 2, "lyap_every": 1, "spectrum_T": 32,
                             "eval_batch": 16}),
    # seed 000 Fig. 2A/C: y[t] = x[t - d] on a bit stream, with and without (pre)flossing, 5 networks.
    "copy": SweepSpec(tasks=["copy"], delays=[10, 20, 30, 40], models=["rate"], flossing=["none", "pre"],
                      seeds=[0, 1, 2, 3, 4], base=dict(_COMMON, T=80), success=0.9),
    # Delayed XOR, no flossing / preflossing / flossing during training (seed 000 Fig. 2E-H style).
    "xor": SweepSpec(tasks=["xor"], delays=[8, 16, 24, 32], models=["rate"],
                     flossing=["none", "pre", "during"], seeds=[0, 1, 2], base=dict(_COMMON, T=80), success=0.9),
    # The same for recurrent LIF networks (surrogate flossing; the trainer's LIF defaults, shorter delays).
    "xor-lif": SweepSpec(tasks=["xor"], delays=[4, 6, 8, 10], models=["lif"], flossing=["none", "pre", "during"],
                         seeds=[0, 1, 2], base=dict(_COMMON, T=60, lr=1e-2, k=4), success=0.9),
    # Context-dependent go/no-go, temporal and spatial (seed 000 Fig. 2B/D-H); trial length = end of response.
    "gonogo": SweepSpec(tasks=["gonogo_temporal", "gonogo_spatial"], delays=[20, 40, 60, 80], models=["rate"],
                        flossing=["none", "pre", "during"], seeds=[0, 1, 2], base=dict(_COMMON, T=None),
                        success=0.9),
}

# Seed 003 Figs 1-4, CPU-sized: ReLU rate networks with N = 64 and batch 32 (the paper's), leak
# alpha = 1 - rate_dt = 0.8 (the paper gives no alpha; at 0.5 e-prop learnt none of the tasks in pilots), on
# Romo, 2AFC and DMS at their default timing; BPTT and e-prop; no flossing, preflossing and local
# preflossing (the recurrent state detached, seed 003's remedy); 600 Adam steps at lr 3e-3 (the paper
# trains for thousands of steps with lr tuned per gain); 2 seeds. About 20 minutes with 2 workers.
PRESETS["gain"] = SweepSpec(
    tasks=["romo", "2afc", "dms"], delays=[None], models=["rate"], flossing=["none", "pre"], seeds=[0, 1],
    gains=[0.5, 1.0, 1.5, 2.0], rules=["bptt", "eprop"], local=[False, True],
    base={"T": None, "N": 64, "nonlinearity": "relu", "rate_dt": 0.2, "epochs": 30, "steps_per_epoch": 20,
          "batch": 32, "lr": 3e-3, "k": 4, "pre_steps": 100, "floss_T": 100, "floss_batch": 8, "floss_lr": 1e-3,
          "lyap_every": 5, "spectrum_T": 200, "eval_batch": 256})


def run_name(cfg: TrainConfig, *, gain_suffix: bool = False, hparams: Sequence[str] = ()) -> str:
    """The run's folder name:
    ``task-d<delay>-model-flossing[-g<g>][-lr<lr>][-b<beta>][-t<target>][-<rule>][-local]-s<seed>``.

    The bracketed parts appear only for non-default axis values (``gain_suffix``: the sweep set ``g``;
    ``hparams``: the fields of :data:`HPARAM_AXES` the sweep set; a rule other than ``bptt``; local
    flossing), so runs of grids without them keep their names.
    """
    extra = f"-g{cfg.g:g}" if gain_suffix else ""
    extra += "".join(f"-{prefix}{_short(getattr(cfg, f))}" for f, (_, prefix) in HPARAM_AXES.items() if f in hparams)
    extra += (f"-{cfg.rule}" if cfg.rule != "bptt" else "") + ("-local" if cfg.local_flossing else "")
    return f"{cfg.task}-d{cfg.delay}-{cfg.model}-{cfg.flossing}{extra}-s{cfg.seed}"


def _short(v: float) -> str:
    """``v`` in a name: ``:g`` (``0.001``, ``1e-05``, ``-0.01``) where that reads back as ``v``, else the
    shortest form that does (``repr``), so two values never share a name; digits, ``.``, ``-``, ``+``, ``e``."""
    text = f"{v:g}"
    return text if float(text) == v else repr(float(v))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_spec(spec: SweepSpec) -> None:
    """Check the grid's own values (each run's configuration is checked by :func:`expand`); raises
    :class:`~surroflos.train.ConfigError` naming the field."""
    if not isinstance(spec.base, dict):
        raise ConfigError(f"base must be a dict of TrainConfig fields, got {spec.base!r}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = sorted(map(str, set(spec.base) - known))
    if bad:
        raise ConfigError(f"unknown TrainConfig fields in the sweep's base: {bad}")
    for name in ("tasks", "delays", "models", "flossing", "seeds", "gains", "rules", "local", "lrs", "betas",
                 "targets", "surrogate_scales"):
        values = getattr(spec, name)
        if not isinstance(values, (list, tuple)):
            raise ConfigError(f"{name} must be a list, got {values!r}")
        if not values:
            raise ConfigError(f"the sweep has no {name}")
    for name in ("tasks", "models", "flossing", "rules"):
        for v in getattr(spec, name):
            if not isinstance(v, str) or not v:
                raise ConfigError(f"{name} must be names (non-empty strings), got {v!r}")
    for v in spec.seeds:
        if not (_is_int(v) and 0 <= v <= MAX_SEED):
            raise ConfigError(f"seeds must be integers in [0, 2**63 - 2], got {v!r}")
    for v in spec.delays:
        if v is not None and not (_is_int(v) and v >= 0):
            raise ConfigError(f"delays must be integers >= 0 (or None: the task's default), got {v!r}")
    for v in spec.local:
        if not isinstance(v, bool):
            raise ConfigError(f"local must be True/False (local flossing on/off), got {v!r}")
    for gain in spec.gains:
        if gain is not None and not (_is_real(gain) and gain >= 0):
            raise ConfigError(f"gains must be finite numbers >= 0 (or None: the base g), got {gain!r}")
    # The ranges TrainConfig's validate accepts, named by the axis.
    for v in spec.lrs:
        if v is not None and not (_is_real(v) and v > 0):
            raise ConfigError(f"lrs must be finite numbers > 0 (or None: the base lr), got {v!r}")
    for v in spec.betas:
        if v is not None and not (_is_real(v) and 0 <= v <= 1):
            raise ConfigError(f"betas must lie in [0, 1] (a decay per step; or None: the base beta), got {v!r}")
    for v in spec.targets:
        if v is not None and not _is_real(v):
            raise ConfigError(f"targets must be finite numbers (or None: the base target), got {v!r}")
    for v in spec.surrogate_scales:
        if v is not None and not (_is_real(v) and v > 0):
            raise ConfigError(f"surrogate_scales must be finite numbers > 0 (or None: the base's), got {v!r}")
    if spec.success is not None and not _is_real(spec.success):
        raise ConfigError(f"success must be a finite number (the metric's threshold) or None, got {spec.success!r}")


def expand(spec: SweepSpec, out: str) -> list[TrainConfig]:
    """The run configurations of ``spec`` (validated), each with its own folder under ``out/runs``."""
    check_spec(spec)
    # The axes set these fields; a value in the base as well would be silently overridden.
    axis_fields = sorted({"rule", "local_flossing"} & set(spec.base))
    if axis_fields:
        raise ConfigError(f"set {axis_fields} through the sweep's rules / local axes, not its base")
    both = [f for f, (axis, _) in HPARAM_AXES.items()
            if f in spec.base and any(v is not None for v in getattr(spec, axis))]
    if both:
        raise ConfigError(f"{both[0]} is set both in the sweep's base and by its {HPARAM_AXES[both[0]][0]} "
                          "axis; give it in one place only")
    cfgs, names = [], set()
    for task, delay, model, fl in itertools.product(spec.tasks, spec.delays, spec.models, spec.flossing):
        # A run without flossing computes the same whatever its target: rather than skipping it for target
        # values off the base (which would drop the plain run from grids that list no None) or repeating it
        # once per target, it runs once, with the base's target and no -t in its name.
        targets = [None] if fl == "none" else spec.targets
        for gain, lr, beta, target, sscale, rule, local, seed in itertools.product(
                spec.gains, spec.lrs, spec.betas, targets, spec.surrogate_scales, spec.rules, spec.local, spec.seeds):
            if local is True and fl == "none":
                continue  # local flossing without flossing is the plain run (local=False)
            hparams = {f: float(v) for f, v in zip(HPARAM_AXES, (lr, beta, target, sscale)) if v is not None}
            axes = {"rule": rule, "local_flossing": local} | ({} if gain is None else {"g": float(gain)}) | hparams
            cfg = TrainConfig(**dict(spec.base, task=task, delay=delay, model=model, flossing=fl, seed=seed,
                                     **axes))
            name = run_name(cfg, gain_suffix=gain is not None, hparams=tuple(hparams))
            if name in names:
                raise ConfigError(f"two runs of the sweep would share the folder {name!r} (repeated axis value?)")
            names.add(name)
            cfg.out = os.path.join(out, "runs", name)
            check_memory(cfg, validate(cfg))  # fail before starting any worker
            cfgs.append(cfg)
    if not cfgs:
        raise ConfigError("the sweep has no runs: local flossing ('local' True only) needs flossing 'pre' or 'during'")
    return cfgs


# ----------------------------------------------------------------------------------------------
# What defines a run, and what its folder holds
# ----------------------------------------------------------------------------------------------


def _canonical(v):
    """``v`` in one JSON form per value: ``1`` and ``1.0`` alike, tuples as lists, NaN/inf as strings."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return repr(v)
        return int(v) if v.is_integer() else v
    if isinstance(v, dict):
        return {str(k): _canonical(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if isinstance(v, (list, tuple)):
        return [_canonical(x) for x in v]
    return repr(v)


def _defining(config: dict) -> dict:
    """The fields of a run configuration (a :class:`TrainConfig` dict, possibly written by an older version)
    that define its results: all but :data:`NOT_DEFINING`; fields the record lacks took their defaults."""
    full = {**TrainConfig().to_dict(), **config}
    if full.get("members") is None:  # solo runs and seed-only packs: defined (and hashed) as before the field
        full.pop("members", None)
    return {k: full[k] for k in sorted(full) if k not in NOT_DEFINING}


def run_definition(cfg) -> dict:
    """What defines the results of the run ``cfg`` (a :class:`TrainConfig` or its dict), in canonical form:
    every field but ``out``, ``device`` and ``backend``."""
    d = cfg.to_dict() if isinstance(cfg, TrainConfig) else dict(cfg)
    return {k: _canonical(v) for k, v in _defining(d).items()}


def config_hash(cfg) -> str:
    """A short hash of :func:`run_definition`: equal for runs that compute the same results."""
    text = json.dumps(run_definition(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _same(a, b) -> bool:
    return json.dumps(_canonical(a), sort_keys=True) == json.dumps(_canonical(b), sort_keys=True)


def _differences(recorded: dict, cfg: TrainConfig) -> list[str]:
    """``key: old -> new`` for every defining field on which ``recorded`` (a config dict) and ``cfg`` differ."""
    old, new = _defining(recorded), _defining(cfg.to_dict())

    def show(d: dict, k: str) -> str:
        return repr(d[k]) if k in d else "(absent)"

    return [f"{k}: {show(old, k)} -> {show(new, k)}" for k in sorted(set(old) | set(new))
            if k not in old or k not in new or not _same(old[k], new[k])]


def _read_json(path: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _checkpoint_config(path: str) -> dict:
    """The configuration saved in a train checkpoint (loaded without running code from the file)."""
    from .checkpoint import load_checkpoint

    return load_checkpoint(path, required=("config",))["config"]


def _records(run_out: str, has_result: bool) -> list[tuple[str, dict]]:
    """``(file name, configuration)`` of every record in a run folder of what it holds: ``run.json``,
    ``config.json``, and ``result.json`` or (for an interrupted run) the checkpoint it would resume."""
    sources = [(RUN_RECORD, lambda p: _read_json(p)["config"]), ("config.json", lambda p: _read_json(p)["config"])]
    sources.append(("result.json", lambda p: _read_json(p)["config"]) if has_result
                   else ("checkpoint.pt", _checkpoint_config))
    found = []
    for name, read in sources:
        path = os.path.join(run_out, name)
        if not os.path.exists(path):
            continue
        try:
            config = read(path)
            if not isinstance(config, dict):
                raise ValueError("its configuration is not a dict")
        except Exception as e:  # damaged or foreign: the run cannot be trusted or resumed
            raise ConfigError(f"cannot read {path} ({type(e).__name__}: {e}); delete the run folder {run_out} "
                              "to run that run anew, or use a new --out") from e
        found.append((name, config))
    return found


def _status(cfg: TrainConfig) -> str:
    if os.path.exists(os.path.join(cfg.out, "result.json")):
        return "done"
    if os.path.exists(os.path.join(cfg.out, "checkpoint.pt")):
        return "resume"
    return "new"


def _plan(cfgs: Sequence[TrainConfig], out: str) -> list[tuple[TrainConfig, str]]:
    planned, conflicts = [], []
    for cfg in cfgs:
        status = _status(cfg)
        if status != "new":  # a folder without results or checkpoint has nothing to keep: the run starts anew
            for name, recorded in _records(cfg.out, status == "done"):
                diff = _differences(recorded, cfg)
                if diff:
                    conflicts.append(f"{cfg.out} (as recorded in its {name}: " + ", ".join(diff) + ")")
                    break
        planned.append((cfg, status))
    if conflicts:
        shown = conflicts[:10] + ([f"and {len(conflicts) - 10} more"] if len(conflicts) > 10 else [])
        raise ConfigError(
            f"{len(conflicts)} run folder(s) in {out} hold a run of other settings than this sweep gives them, and "
            "their results would be reported as this sweep's; the differing keys, recorded -> now: " + "; ".join(shown)
            + ". Use a new --out for this sweep (or delete those run folders to run them anew).")
    return planned


def plan(spec: SweepSpec, out: str) -> list[tuple[TrainConfig, str]]:
    """Each run of ``spec`` in ``out`` with what a sweep would do with it: ``"done"`` (reload its results),
    ``"resume"`` (continue its checkpoint) or ``"new"`` (run it). Raises
    :class:`~surroflos.train.ConfigError` when a run folder holds results or a checkpoint of another
    configuration than ``spec`` gives it, naming the folders and the differing keys. Writes nothing."""
    return _plan(expand(spec, out), out)


@contextlib.contextmanager
def _exclusive(out: str):
    """Hold ``out/.sweep.lock`` (released by the system when this process ends, however it ends)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    path = os.path.join(out, LOCK_FILE)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another sweep is running into {out} (it holds {path}); wait for it to end or use "
                              "another --out") from None
        except OSError:  # a file system without locks
            pass
        yield


def _record_run(cfg: TrainConfig) -> None:
    """Write ``run.json`` (what defines the run) into the run's folder unless it already says so."""
    from ._io import atomic_json

    path = os.path.join(cfg.out, RUN_RECORD)
    record = {"config_hash": config_hash(cfg), "config": _defining(cfg.to_dict())}
    try:
        if _read_json(path).get("config_hash") == record["config_hash"]:
            return
    except (OSError, ValueError):
        pass
    os.makedirs(cfg.out, exist_ok=True)
    atomic_json(record, path)


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------


def _run_one(cfg_dict: dict) -> dict:
    """Run, resume or load one configuration; returns its summary row (errors captured)."""
    from .train import train

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
        if res.get("stopped"):  # a member of an ensemble pack that diverged (its solo run would have failed)
            raise FloatingPointError(res["stopped"])
        diff = _differences(res["config"], cfg)
        if diff:  # checked before the sweep started; this catches a folder changed while it ran
            raise ConfigError(f"{result_path} is of another configuration ({', '.join(diff)})")
        final = res["final"]
        curve = _read_curve(cfg.out, "val_loss")
        if len(curve) != final["epochs"]:
            raise ConfigError(f"{cfg.out}/metrics.jsonl has {len(curve)} epochs but result.json {final['epochs']}; "
                              "delete the run folder to run it anew")
    except Exception as e:  # one failing run must not stop the sweep; it is reported in the table
        return dict(_key(cfg), status="error", error=f"{type(e).__name__}: {e}", out=cfg.out)
    pre = res.get("preflossing") or {}
    return dict(_key(cfg), status=status, metric=final["metric"], value=final[final["metric"]],
                higher_is_better=final["higher_is_better"], val_loss=final.get("val_loss", math.nan),
                lambda1_before=(res["spectrum_before"] or [math.nan])[0],
                lambda1_preflossed=(pre.get("lambda_last") or [math.nan])[0],
                lambda1_after=(res["spectrum_after"] or [math.nan])[0],
                loss_auc=_mean(curve),
                # Training time as recorded by the run (epochs + preflossing), not this call's: a finished run
                # that is only reloaded still reports what it cost.
                seconds=round(sum(v for v in _read_curve(cfg.out, "seconds") if not math.isnan(v))
                              + (pre.get("seconds") or 0.0), 2),
                call_seconds=round(time.perf_counter() - t0, 2), out=cfg.out)


def _read_curve(run_out: str, key: str) -> list:
    """Per-epoch values of ``key`` from a run's metrics.jsonl (empty if missing)."""
    try:
        with open(os.path.join(run_out, "metrics.jsonl")) as f:
            return [json.loads(line).get(key, math.nan) for line in f if line.strip()]
    except OSError:
        return []


def _key(cfg: TrainConfig) -> dict:
    # lr, beta, target and the surrogate's width are always here (tables and plots keep runs of other values
    # apart) and written to the CSV tables only where the sweep uses those axes (_hparams_shown). The width is
    # the scale the run used (None in a configuration: the surrogate's own).
    from .surrogate import get as surrogate

    return {"task": cfg.task, "delay": cfg.delay, "model": cfg.model, "flossing": cfg.flossing, "seed": cfg.seed,
            "g": cfg.g, "rule": cfg.rule, "local": cfg.local_flossing, "lr": cfg.lr, "beta": cfg.beta,
            "target": cfg.target, "surrogate_scale": surrogate(cfg.surrogate, cfg.surrogate_scale).scale}


def _error_row(cfg_dict: dict, e: BaseException) -> dict:
    cfg = TrainConfig.from_dict(cfg_dict)
    return dict(_key(cfg), status="error", error=f"{type(e).__name__}: {e}", out=cfg.out)


_PARENT_POLL_S = 0.2


def _worker_init(parent: int) -> None:
    """In each worker: one torch thread; Ctrl-C ignored (the sweep's process stops the workers); exit as soon
    as the sweep's process ``parent`` is gone, however it ended (``kill -9`` included)."""
    import signal
    import threading

    import torch

    torch.set_num_threads(1)
    if hasattr(signal, "pthread_sigmask"):  # spawned with SIGINT blocked (see _sigint_blocked): drop it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    threading.Thread(target=_exit_with_parent, args=(parent,), name="surroflos-sweep-parent", daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    # An orphan is adopted by init (or a subreaper): its parent pid changes. A checkpoint is replaced
    # atomically, so exiting mid-epoch keeps the last completed epoch.
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_S)
    os._exit(1)


@contextlib.contextmanager
def _sigint_blocked():
    """Block SIGINT in this thread while it spawns workers: they inherit the mask, so a Ctrl-C while they
    start (import torch) does not kill them with a traceback; here it is delivered when unblocked."""
    import signal

    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _stop_workers(pool) -> None:
    """Cancel what is queued and end the workers (a run keeps the checkpoint of its last completed epoch)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        with contextlib.suppress(Exception):
            p.terminate()
    deadline = time.monotonic() + 5.0
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(1.0)


# ----------------------------------------------------------------------------------------------
# Ensemble packs: runs of one shape (differing only in member-wise settings) train as one ensemble
# ----------------------------------------------------------------------------------------------

PACK_DIR = "packs"  # OUT/packs/<name>: the ensemble runs (checkpoints); results are unpacked into OUT/runs


def pack_key(cfg: TrainConfig) -> str:
    """What the runs of one pack share: every field but ``out`` and the member-wise ones
    (:data:`~surroflos.train.MEMBER_FIELDS`: seed, g, beta, alpha, threshold, lr, floss_lr, target,
    flossing, surrogate_scale), which keep every tensor's shape."""
    return json.dumps({k: _canonical(v) for k, v in cfg.to_dict().items() if k not in ("out",) + MEMBER_FIELDS},
                      sort_keys=True)


def pack_runs(cfgs: Sequence[TrainConfig], ensemble: Union[str, int] = "auto") -> list[list[TrainConfig]]:
    """Group runs into ensemble packs: runs whose configurations agree in everything but ``out`` and the
    member-wise settings (:func:`pack_key`; so runs of other sizes, models, tasks, delays, rules, ... never
    share a pack), in grid order, at most ``ensemble`` per pack (``"auto"``: as many as there are, up to
    :data:`MAX_PACK`; ``1``: no packing). Single runs stay packs of one."""
    if ensemble != "auto" and (isinstance(ensemble, bool) or not isinstance(ensemble, int) or ensemble < 1):
        raise ConfigError(f"ensemble must be 'auto' or a positive int, got {ensemble!r}")
    cap = MAX_PACK if ensemble == "auto" else ensemble
    groups: dict[str, list[TrainConfig]] = {}
    for cfg in cfgs:
        groups.setdefault(pack_key(cfg), []).append(cfg)
    return [members[i:i + cap] for members in groups.values() for i in range(0, len(members), cap)]


MAX_PACK = 64


def pack_config(pack: Sequence[TrainConfig], out: str) -> TrainConfig:
    """The ensemble run of a pack (:func:`surroflos.train.ensemble_config`: the first member's configuration
    with ``ensemble = len(pack)`` and, unless the runs differ only in consecutive seeds, ``members`` with
    each run's member-wise settings), in ``out/packs/<first run>-E<size>-<hash>`` (the hash: settings
    changed later give another folder)."""
    first = pack[0]
    ens = ensemble_config(pack, out="")
    name = f"{os.path.basename(first.out)}-E{len(pack)}-{config_hash(ens)[:8]}"
    return dataclasses.replace(ens, out=os.path.join(out, PACK_DIR, name))


def _member_value(v, e: int):
    """Member ``e``'s entry of an ensemble record: per-member lists indexed, dicts recursed."""
    if isinstance(v, dict):
        return {k: _member_value(u, e) for k, u in v.items()}
    return v[e] if isinstance(v, list) else v


def _unpack(ens_cfg: TrainConfig, members: Sequence[TrainConfig]) -> None:
    """Write each member's run folder (config.json, metrics.jsonl, result.json) from the finished ensemble
    run, as its solo run would have written them; ``seconds`` are the member's share of the pack's time.
    A member that was stopped gets a result.json saying why (the sweep reports it as failed)."""
    from ._io import atomic_json, atomic_write

    with open(os.path.join(ens_cfg.out, "result.json")) as f:
        res = json.load(f)
    rows = [json.loads(line) for line in open(os.path.join(ens_cfg.out, "metrics.jsonl")) if line.strip()]
    E = len(members)
    for e, cfg in enumerate(members):
        os.makedirs(cfg.out, exist_ok=True)
        pack = {"pack": os.path.abspath(ens_cfg.out), "member": e, "members": E}
        schedule = cfg.schedule()  # a member flosses in its own bouts only (packs may mix flossing modes)
        member_rows = []
        for row in rows:
            r = {k: _member_value(v, e) for k, v in row.items() if k not in ("stopped", "seconds")}
            if "flossing" in r and not schedule.due(row["epoch"] - 1):
                del r["flossing"]
            r["seconds"] = row.get("seconds", 0.0) / E
            member_rows.append(r)
        atomic_write(os.path.join(cfg.out, "metrics.jsonl"),
                     lambda fh: fh.writelines(json.dumps(r) + "\n" for r in member_rows))
        atomic_json({"config": cfg.to_dict(), "versions": res.get("versions"), "ensemble": pack},
                    os.path.join(cfg.out, "config.json"))
        m = res["members"][e]
        pre = _member_value(res.get("preflossing"), e) if res.get("preflossing") and schedule.pre_steps else None
        if pre is not None and pre.get("seconds") is not None:
            pre["seconds"] = res["preflossing"]["seconds"] / E
        atomic_json({"config": cfg.to_dict(), "final": m["final"], "stopped": m["stopped"],
                     "spectrum_before": m["spectrum_before"], "spectrum_after": m["spectrum_after"],
                     "preflossing": pre, "lambda1_start": _member_value(res.get("lambda1_start"), e),
                     "versions": res.get("versions"), "ensemble": pack}, os.path.join(cfg.out, "result.json"))


def _run_pack(job: dict) -> list[dict]:
    """Worker: train (or resume) one ensemble pack, unpack its members' results, return their rows."""
    from .train import train

    members = [TrainConfig.from_dict(d) for d in job["members"]]
    ens_cfg = TrainConfig.from_dict(job["ensemble"])
    t0 = time.perf_counter()
    try:
        resume = os.path.exists(os.path.join(ens_cfg.out, "checkpoint.pt"))
        if not os.path.exists(os.path.join(ens_cfg.out, "result.json")):
            train(ens_cfg, resume=resume, progress=False, log=lambda s: None)
        _unpack(ens_cfg, members)
    except Exception as e:  # the pack failed: each of its runs is reported (rerunning resumes the pack)
        return [dict(_key(cfg), status="error", error=f"{type(e).__name__}: {e}", out=cfg.out) for cfg in members]
    rows = []
    for cfg in members:
        row = _run_one(cfg.to_dict())
        if row["status"] == "done":
            row["status"] = "resumed" if resume else "ran"
            row["call_seconds"] = round((time.perf_counter() - t0) / len(members), 2)
        rows.append(row)
    return rows


def _is_pack(job: dict) -> bool:
    """An ensemble pack's job ``{"ensemble": config, "members": [configs]}``, not a run's configuration
    (whose ``ensemble`` is ``None`` and ``members`` ``None``)."""
    return isinstance(job.get("ensemble"), dict)


def _run_job(job: dict) -> list[dict]:
    """Worker: a solo run (a TrainConfig dict) or an ensemble pack (``{"ensemble": ..., "members": [...]}``)."""
    return _run_pack(job) if _is_pack(job) else [_run_one(job)]


def _interrupted_packs(new: list[TrainConfig], out: str, cap: int) -> list[dict]:
    """Jobs for the interrupted packs in ``out/packs`` (a checkpoint, no result) whose members are all among
    the ``new`` runs (same run definition: :func:`config_hash`) and at most ``cap``, which are taken out of
    ``new``: such a pack resumes even when this call would pack its runs otherwise (another ``--ensemble``,
    a grown grid, or a pack written by a version that packed by seed only)."""
    from .train import member_config

    folder = os.path.join(out, PACK_DIR)
    if not new or not os.path.isdir(folder):
        return []
    by_hash = {config_hash(c): c for c in new}
    jobs = []
    for name in sorted(os.listdir(folder)):
        pack_out = os.path.join(folder, name)
        ck = os.path.join(pack_out, "checkpoint.pt")
        if not os.path.isfile(ck) or os.path.exists(os.path.join(pack_out, "result.json")):
            continue
        try:
            ens = TrainConfig.from_dict(_checkpoint_config(ck))
            hashes = [config_hash(member_config(ens, e)) for e in range(ens.ensemble or 0)]
        except Exception:  # unreadable or foreign: left alone (its runs are packed anew)
            continue
        if not 2 <= len(hashes) <= cap or len(set(hashes)) < len(hashes) or not all(h in by_hash for h in hashes):
            continue
        members = [by_hash.pop(h) for h in hashes]
        ens = dataclasses.replace(ens, out=pack_out, device=members[0].device, backend=members[0].backend)
        jobs.append({"ensemble": ens.to_dict(), "members": [c.to_dict() for c in members]})
    new[:] = [c for c in new if config_hash(c) in by_hash]
    return jobs


def _jobs(planned, out: str, ensemble: Union[str, int]) -> list[dict]:
    """The work of a sweep: runs to resume stay solo (their checkpoint is a solo run's); interrupted packs
    resume as they were packed (:func:`_interrupted_packs`); other new runs are packed (:func:`pack_runs`)
    into ensembles, packs of one run solo."""
    jobs = [cfg.to_dict() for cfg, status in planned if status == "resume"]
    new = [cfg for cfg, status in planned if status == "new"]
    if ensemble != 1:
        jobs += _interrupted_packs(new, out, MAX_PACK if ensemble == "auto" else ensemble)
    for pack in pack_runs(new, ensemble):
        if len(pack) == 1:
            jobs.append(pack[0].to_dict())
        else:
            jobs.append({"ensemble": pack_config(pack, out).to_dict(), "members": [c.to_dict() for c in pack]})
    return jobs


def _run_pool(jobs: list[dict], workers: int, done) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("spawn"),
                               initializer=_worker_init, initargs=(os.getpid(),))
    try:
        with _sigint_blocked():
            futures = {pool.submit(_run_job, job): job for job in jobs}
        for fut in as_completed(futures):
            try:
                rows = fut.result()
            except Exception as e:  # the worker died (killed, out of memory): the run failed, rerunning resumes it
                job = futures[fut]
                rows = [_error_row(d, e) for d in (job["members"] if _is_pack(job) else [job])]
            for row in rows:
                done(row)
    except BaseException:  # Ctrl-C (or an error here): no worker outlives this call
        _stop_workers(pool)
        raise
    pool.shutdown(wait=True)


# ----------------------------------------------------------------------------------------------
# The Ray engine: each job (an ensemble pack or a solo run) is one Ray task
# ----------------------------------------------------------------------------------------------

ENGINES = ("local", "ray")
RAY_EXTRA = "pip install 'surroflos[distributed]'"


def import_ray():
    """The ``ray`` module, or a :class:`~surroflos.errors.UsageError` naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--engine ray needs Ray, which is not installed; install the extra: {RAY_EXTRA}") \
            from None
    return ray


def check_engine(engine: str, address: Optional[str], cpus_per_pack, gpus_per_pack) -> None:
    """Check the engine settings (and that Ray is importable for ``engine="ray"``) before anything runs."""
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "local":
        if address is not None or gpus_per_pack:
            raise ConfigError("--address and --gpus-per-pack apply to --engine ray only")
        return
    if isinstance(cpus_per_pack, bool) or not _is_real(cpus_per_pack) or cpus_per_pack <= 0:
        raise ConfigError(f"cpus_per_pack must be a positive number, got {cpus_per_pack!r}")
    if isinstance(gpus_per_pack, bool) or not _is_real(gpus_per_pack) or gpus_per_pack < 0:
        raise ConfigError(f"gpus_per_pack must be a number >= 0 (a fraction of a GPU per pack), got {gpus_per_pack!r}")
    if gpus_per_pack > 1 and not float(gpus_per_pack).is_integer():
        raise ConfigError(f"gpus_per_pack above 1 must be a whole number of GPUs, got {gpus_per_pack!r}")
    if address is not None and (not isinstance(address, str) or not address.strip()):
        raise ConfigError(f"address must be a Ray cluster address such as 'auto' or 'HOST:6379', got {address!r}")
    import_ray()
    if address is not None:
        _probe(address)


def _probe(address: str, timeout: float = 5.0) -> None:
    """Refuse a ``HOST:PORT`` address nothing listens on (Ray itself would retry for minutes)."""
    import socket

    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # "auto", a ray:// client address: left to Ray
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"cannot reach a Ray cluster at --address {address} ({e.strerror or e}); start one with "
                          "`ray start --head` and give the address it prints") from None


def _on_gpu(job: dict) -> dict:
    """``job`` with every configuration on ``device="cuda"``: the GPU (share) Ray gave the task, which it makes
    the only visible one. The device does not define a run's results (:data:`NOT_DEFINING`)."""
    if _is_pack(job):
        return {"ensemble": dict(job["ensemble"], device="cuda"), "members": [dict(d, device="cuda")
                                                                            for d in job["members"]]}
    return dict(job, device="cuda")


def _ray_job(job: dict, out: str, threads: int, gpu: bool = False) -> list[dict]:
    """A Ray task: one job in the sweep's folder, which must be visible on the node that runs it; with
    ``gpu`` its runs train on the GPU Ray assigned."""
    import socket

    import torch

    torch.set_num_threads(max(1, threads))
    if gpu:
        job = _on_gpu(job)
    if not os.path.exists(os.path.join(out, "sweep.json")):  # OUT not shared with this node
        e = ConfigError(f"{out} is not visible on the Ray node {socket.gethostname()}; the ray engine writes the "
                        "run folders in place, so --out must be on a file system that every node mounts at the same path")
        return [_error_row(d, e) for d in (job["members"] if _is_pack(job) else [job])]
    return _run_job(job)


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While the driver waits for Ray, SIGTERM stops the sweep as Ctrl-C does (tasks cancelled, a local Ray
    shut down) instead of ending the process without cleanup."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _run_ray(jobs: list[dict], done, out: str, *, address: Optional[str], workers: int, cpus_per_pack: float,
             gpus_per_pack: float) -> None:
    """Run ``jobs`` as Ray tasks (``cpus_per_pack`` CPUs and ``gpus_per_pack`` GPUs each), handing each
    finished job's rows to ``done``. Without ``address`` a local Ray instance with ``workers x cpus_per_pack``
    CPUs is started and shut down at the end; with one, the driver connects to that cluster (and only
    disconnects). Ctrl-C, SIGTERM or an error here cancel every task not finished (a run stopped mid-way keeps
    the checkpoint of its last completed epoch) before the error is raised again."""
    import logging

    ray = import_ray()
    out = os.path.abspath(out)
    owned = not ray.is_initialized()  # a caller's own Ray session is used as it is, and left running
    if owned:
        kw = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                  configure_logging=False)
        if address is None:
            ray.init(num_cpus=int(math.ceil(workers * cpus_per_pack)), **kw)
        else:
            try:
                ray.init(address=address, **kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ConfigError(f"cannot connect to the Ray cluster at --address {address} ({_first_line(e)}); "
                                  "start one with `ray start --head` and give the address it prints") from None
    refs: dict = {}
    try:
        # Installed after ray.init, which sets a SIGTERM handler of its own in the driver.
        with _sigterm_as_interrupt():
            _check_resources(ray, cpus_per_pack, gpus_per_pack, address)
            opts = {"num_cpus": cpus_per_pack, "max_retries": 0}
            if gpus_per_pack:
                opts["num_gpus"] = gpus_per_pack
            task = ray.remote(_ray_job).options(**opts)
            threads = max(1, int(cpus_per_pack))
            refs = {task.remote(job, out, threads, bool(gpus_per_pack)): job for job in jobs}
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                for ref in ready:
                    job = refs.pop(ref)
                    try:
                        rows = ray.get(ref)
                    except Exception as e:  # the task's process died (killed, out of memory): rerunning resumes
                        cause = getattr(e, "cause", None) or e
                        rows = [_error_row(d, cause) for d in (job["members"] if _is_pack(job) else [job])]
                    for row in rows:
                        done(row)
    except BaseException:  # Ctrl-C, SIGTERM (above) or an error: no task outlives this call
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
    finally:
        if owned:
            with contextlib.suppress(Exception):
                ray.shutdown()


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


def _check_resources(ray, cpus_per_pack: float, gpus_per_pack: float, address: Optional[str]) -> None:
    """Refuse a pack size that no node of the cluster can hold (Ray would wait for it forever)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    where = f"the Ray cluster at {address}" if address else "the local Ray instance"
    for name, need, flag in (("CPU", cpus_per_pack, "--cpus-per-pack"), ("GPU", gpus_per_pack, "--gpus-per-pack")):
        most = max((n.get(name, 0.0) for n in nodes), default=0.0)
        if need and most < need:
            raise ConfigError(f"{flag} {need:g} but no node of {where} has that many {name}s (the largest has "
                              f"{most:g}); lower {flag}" + (" or run on a cluster with GPUs" if name == "GPU" else ""))


def run_sweep(spec: SweepSpec, out: str, *, workers: int = 1, progress: bool = True,
              command: Optional[str] = None, ensemble: Union[str, int] = "auto", engine: str = "local",
              address: Optional[str] = None, cpus_per_pack: float = 1, gpus_per_pack: float = 0) -> list[dict]:
    """Run every configuration of ``spec`` not yet done, then write the tables and plots; returns the rows.

    ``ensemble``: new runs that differ only in member-wise settings (seeds, gains, flossing modes, ...) train
    as one ensemble (:func:`pack_runs`, :mod:`surroflos.ensemble`; ``"auto"``: as many as the grid has, an
    int caps the pack
    size, 1 runs every run alone). Each member computes what its solo run would and is unpacked into the
    same run folder, so tables, plots and resumption are the same either way.

    ``engine``: ``"local"`` (``workers`` spawned processes on this machine) or ``"ray"``: every job (an
    ensemble pack, or a run resumed solo) is one Ray task declaring ``cpus_per_pack`` CPUs and
    ``gpus_per_pack`` GPUs (a fraction shares a GPU; with GPUs the task's runs train on ``device="cuda"``,
    the GPU Ray assigned), on the cluster at ``address`` (``"auto"``,
    ``"HOST:PORT"``) or, without one, on a local Ray instance with ``workers x cpus_per_pack`` CPUs started for
    this sweep. Tasks write the same run folders as the local engine (``out`` must therefore be on a file system
    every node mounts at the same path), their rows come back to this process as each finishes, and the tables
    and plots are written here: resumption, skipping of finished runs and the results are the same either way.

    Raises :class:`~surroflos.train.ConfigError` before anything runs or is written when ``spec`` is not
    valid, when a run folder in ``out`` holds results or a checkpoint of another configuration (see
    :func:`plan`), when another sweep is writing into ``out``, or for ``engine="ray"`` when Ray is not
    installed (the message names the extra ``surroflos[distributed]``).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    check_engine(engine, address, cpus_per_pack, gpus_per_pack)
    cfgs = expand(spec, out)
    for pack in pack_runs(cfgs, ensemble):  # an ensemble holds all its members at once: check it fits
        if len(pack) > 1:
            heavy = next((c for c in pack if c.flossing != "none"), pack[0])  # flossing frames, if any floss
            check_memory(dataclasses.replace(heavy, ensemble=len(pack)), validate(heavy))
    os.makedirs(out, exist_ok=True)
    with _exclusive(out):
        planned = _plan(cfgs, out)
        _start(spec, out, command, planned)
        rows: list[dict] = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(planned), desc="sweep", unit="run", dynamic_ncols=True, disable=None)

        def done(row: dict) -> None:
            rows.append(row)
            if bar is not None:
                bar.update(1)

        try:
            for cfg, status in planned:  # finished runs are only reloaded: here, without a worker
                if status == "done":
                    done(_run_one(cfg.to_dict()))
            jobs = _jobs(planned, out, ensemble)
            if jobs and engine == "ray":
                _run_ray(jobs, done, out, address=address, workers=workers, cpus_per_pack=cpus_per_pack,
                         gpus_per_pack=gpus_per_pack)
            elif jobs and workers == 1:
                with torch_threads(1):
                    for job in jobs:
                        for row in _run_job(job):
                            done(row)
            elif jobs:
                _run_pool(jobs, workers, done)
        finally:
            if bar is not None:
                bar.close()
        rows.sort(key=lambda r: (r["task"], r["model"], r.get("rule", "bptt"), r["flossing"], r.get("local", False),
                                 _delay_order(r["delay"]), r.get("g", 0.0), _hp_order(_hp(r)), r["seed"]))
        summarize(rows, out, success=spec.success, command=command,
                  axes=[f for f, (axis, _) in HPARAM_AXES.items() if any(v is not None for v in getattr(spec, axis))])
        _write_sweep_record(spec, out, command, planned, complete=True)
    return rows


def _delay_order(delay) -> float:
    return -1 if delay is None else delay


def _write_sweep_record(spec: SweepSpec, out: str, command: Optional[str], planned, *, complete: bool) -> None:
    from ._io import atomic_json

    runs = {os.path.basename(cfg.out): config_hash(cfg) for cfg, _ in planned}
    digest = hashlib.sha256(json.dumps(runs, sort_keys=True).encode()).hexdigest()[:16]
    atomic_json({"spec": dataclasses.asdict(spec), "command": command, "config_hash": digest, "runs": runs,
                 "complete": complete}, os.path.join(out, "sweep.json"))


def _start(spec: SweepSpec, out: str, command: Optional[str], planned) -> None:
    """Record the sweep and its runs, and remove the tables of an earlier call: tables in ``out`` always
    describe the runs of the ``sweep.json`` beside them (``complete`` once they are written)."""
    for cfg, _ in planned:
        _record_run(cfg)
    for name in ("results.md", "results.csv", "runs.csv"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out, name))
    _write_sweep_record(spec, out, command, planned, complete=False)


# Seed 000 Fig. 2's colours: no flossing blue, preflossing orange, flossing during training green.
_MODE_ORDER = {"none": 0, "pre": 1, "during": 2}
_MODE_COLOR = {"none": "C0", "pre": "C1", "during": "C2"}
_RULE_ORDER = {"bptt": 0, "eprop": 1, "rflo": 2}


def _cell_order(task: str, model: str, flossing: str, delay: int, g: float = 1.0, rule: str = "bptt",
                local: bool = False, *hp) -> tuple:
    """Table order: task, model, rule, then the flossing modes as none, pre, during (global before local),
    then delay, then gain, then lr, beta and target (``hp``)."""
    return (task, model, _RULE_ORDER.get(rule, len(_RULE_ORDER)), rule, _MODE_ORDER.get(flossing, len(_MODE_ORDER)),
            flossing, local, _delay_order(delay), g, _hp_order(hp))


def _hp(r: dict) -> tuple:
    """A row's ``(lr, beta, target, surrogate_scale)`` (``None`` where a row written without them lacks one)."""
    return tuple(r.get(f) for f in HPARAM_AXES)


def _hp_order(hp: tuple) -> tuple:
    return tuple(-math.inf if v is None else v for v in hp)


def _hparams_shown(rows: Sequence[dict], axes: Sequence[str] = ()) -> list[str]:
    """The fields of :data:`HPARAM_AXES` that get a table column: those the sweep set through their axis
    (``axes``) and those whose value differs between ``rows``; none for grids without these axes."""
    return [f for f in HPARAM_AXES if f in axes or len({r.get(f) for r in rows}) > 1]


def _uses_axes(rows: Sequence[dict]) -> bool:
    """Whether ``rows`` vary the gain / rule / local axes or leave them off their defaults; then the
    table shows the g, rule and local columns and the gain plots are drawn."""
    combos = {(r.get("g"), r.get("rule", "bptt"), bool(r.get("local", False))) for r in rows}
    return len(combos) > 1 or any(rule != "bptt" or local for _, rule, local in combos)


def _aggregate(rows: Sequence[dict], success: Optional[float]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["task"], r["model"], r["flossing"], r["delay"], r.get("g"), r.get("rule", "bptt"),
               bool(r.get("local", False))) + _hp(r)
        groups.setdefault(key, []).append(r)
    table = []
    for (task, model, fl, delay, g, rule, local, *hp), rs in sorted(groups.items(),
                                                                   key=lambda kv: _cell_order(*kv[0])):
        ok = [r for r in rs if r["status"] != "error"]
        vals = [r["value"] for r in ok]
        mean, std = _mean_std(vals)
        loss_mean, loss_std = _mean_std([r.get("val_loss", math.nan) for r in ok])
        auc_mean, auc_std = _mean_std([r.get("loss_auc", math.nan) for r in ok])
        row = {"task": task, "model": model, "flossing": fl, "delay": delay, "g": g, "rule": rule, "local": local,
               **dict(zip(HPARAM_AXES, hp)), "metric": ok[0]["metric"] if ok else "",
               "mean": mean, "std": std, "n": len(vals), "errors": len(rs) - len(ok),
               "val_loss_mean": loss_mean, "val_loss_std": loss_std, "loss_auc_mean": auc_mean,
               "loss_auc_std": auc_std,
               "lambda1_before": _mean([r["lambda1_before"] for r in ok]),
               "lambda1_preflossed": _mean([r.get("lambda1_preflossed", math.nan) for r in ok]),
               "lambda1_after": _mean([r["lambda1_after"] for r in ok])}
        if success is not None and ok:
            hib = ok[0]["higher_is_better"]
            row["success_rate"] = sum((v >= success) if hib else (v <= success) for v in vals) / len(vals)
        table.append(row)
    return table


def _mean_std(vals: list) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of the finite ``vals``."""
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, std


def _mean(vals: list) -> float:
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def _write_csv(path: str, rows: Sequence[dict], drop: Sequence[str] = ()) -> None:
    from ._io import atomic_write

    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols and c not in drop]

    def write(f) -> None:
        w = csv.DictWriter(f, fieldnames=cols, lineterminator="\r\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    atomic_write(path, write)


def summarize(rows: Sequence[dict], out: str, *, success: Optional[float] = None,
              command: Optional[str] = None, axes: Sequence[str] = ()) -> list[dict]:
    """Write runs.csv, results.csv, results.md and the plots for ``rows``; returns the aggregated table.
    ``axes``: the fields of :data:`HPARAM_AXES` the sweep set through an axis (their columns are shown even
    when all runs share one value)."""
    table = _aggregate(rows, success)
    shown = _hparams_shown(rows, axes)  # lr / beta / target columns (after local)
    hidden = [f for f in HPARAM_AXES if f not in shown]  # grids without those axes keep their tables
    _write_csv(os.path.join(out, "runs.csv"), rows, drop=hidden)
    _write_csv(os.path.join(out, "results.csv"), table, drop=hidden)
    lines = []
    if command:
        lines += [f"Regenerate: `{command}`", ""]
    gain_axes = _uses_axes(rows)  # g / rule / local columns (after delay), gain plots
    speed = gain_axes or bool(shown)  # the learning-speed column
    head = ["task", "model", "flossing", "delay"] + (["g", "rule", "local"] if gain_axes else []) + shown \
        + ["metric", "mean ± std", "test loss"] + (["test loss, mean over epochs"] if speed else []) + ["n"]
    if success is not None:
        head.append(f"success (≥{success:g})" if any(r.get("metric") == "accuracy" for r in table) else "success")
    head += ["λ1 before", "λ1 preflossed", "λ1 after"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [r["task"], r["model"], r["flossing"], str(r["delay"])]
        if gain_axes:
            cells += [f"{r['g']:g}", r["rule"], "yes" if r["local"] else "no"]
        # A run without flossing has no target (it ran with the base's): a dash, not a value it ignored.
        cells += ["–" if f == "target" and r["flossing"] == "none" else _short(r[f]) for f in shown]
        cells += [r["metric"], f"{r['mean']:.3f} ± {r['std']:.3f}",
                  f"{r['val_loss_mean']:.4f} ± {r['val_loss_std']:.4f}"]
        if speed:
            cells.append(f"{r['loss_auc_mean']:.4f} ± {r['loss_auc_std']:.4f}")
        cells.append(f"{r['n']}" + (f" ({r['errors']} failed)" if r["errors"] else ""))
        if success is not None:
            cells.append(f"{r.get('success_rate', math.nan):.2f}")
        pre = r.get("lambda1_preflossed", math.nan)
        cells += [f"{r['lambda1_before']:+.3f}", "–" if math.isnan(pre) else f"{pre:+.3f}",
                  f"{r['lambda1_after']:+.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    errors = [r for r in rows if r["status"] == "error"]
    if errors:
        lines += ["", "Failed runs:"] + [f"- {r['out']}: {r['error']}" for r in errors]
    from ._io import atomic_write

    atomic_write(os.path.join(out, "results.md"), lambda f: f.write("\n".join(lines) + "\n"))
    _plot(table, out)
    if gain_axes:
        _plot_gain(rows, out)
        _plot_gain_curves(rows, out)
    else:
        _plot_curves(rows, out)
    return table


def _plot(table: Sequence[dict], out: str) -> None:
    """One figure per task and model against delay, one line per flossing mode: the metric (mean ± std
    over seeds), the success rate (when the sweep has a threshold) and the test loss (mean ± std)."""
    from . import plotting

    axes_used = _uses_axes(table)
    for task, model in sorted({(r["task"], r["model"]) for r in table}):
        cell = [r for r in table if r["task"] == task and r["model"] == model]
        if axes_used and len({r["delay"] for r in cell if r["delay"] is not None}) < 2:
            continue  # a single delay: nothing to plot against; _plot_gain covers such grids
        panels = [("mean", "std", next((r["metric"] for r in cell if r["metric"]), "metric"), False)]
        if any("success_rate" in r for r in cell):
            panels.append(("success_rate", None, "success rate", False))
        panels.append(("val_loss_mean", "val_loss_std", "test loss", True))
        fig, axes = plotting.figure(len(panels))
        modes = sorted({_mode(r) for r in cell}, key=_mode_order)
        vary = _varying(m[4] for m in modes)
        for ax, (key, err, ylabel, log) in zip(axes, panels):
            for i, mode in enumerate(modes):
                fl = mode[0]
                rs = sorted((r for r in cell if _mode(r) == mode), key=lambda r: r["delay"])
                d = [r["delay"] for r in rs]
                m = [r.get(key, math.nan) for r in rs]
                s = [r.get(err, 0.0) for r in rs] if err else None
                label, color = ((_mode_label(mode) + f", g = {mode[3]:g}", f"C{i % 10}") if axes_used
                                else (f"flossing: {fl}", f"C{i % 10}" if vary else _MODE_COLOR[fl]))
                ax.errorbar(d, m, yerr=s, marker="o", capsize=3, label=label + _hp_label(fl, mode[4], vary),
                            color=color)
            ax.set_xlabel("delay (steps)")
            ax.set_ylabel(ylabel)
            if log:
                ax.set_yscale("log")
            if key == "success_rate":
                ax.set_ylim(-0.05, 1.05)
        axes[0].set_title(f"{task}, {model}")
        axes[0].legend()
        plotting.save_figure(fig, os.path.join(out, f"plot_{task}_{model}.png"))


def _plot_curves(rows: Sequence[dict], out: str) -> None:
    """Learning curves (seed 000 Fig. 2A/E style): per task and model one panel per delay, the metric
    against epoch, thin lines per seed and the median over seeds thick, one colour per flossing mode (per
    flossing mode and lr / beta / target where the grid varies those)."""
    from . import plotting

    def curve(run_out: str, metric: str) -> list:
        try:
            with open(os.path.join(run_out, "metrics.jsonl")) as f:
                return [json.loads(line).get(metric, math.nan) for line in f if line.strip()]
        except OSError:
            return []

    ok = [r for r in rows if r["status"] != "error"]
    for task, model in sorted({(r["task"], r["model"]) for r in ok}):
        cell = [r for r in ok if r["task"] == task and r["model"] == model]
        delays = sorted({r["delay"] for r in cell})
        lines = sorted({(r["flossing"], _hp(r)) for r in cell},
                       key=lambda ln: (_MODE_ORDER.get(ln[0], len(_MODE_ORDER)), ln[0], _hp_order(ln[1])))
        vary = _varying(hp for _, hp in lines)
        fig, axes = plotting.figure(len(delays), size=(3.6, 3.0))
        for ax, delay in zip(axes, delays):
            for j, (fl, hp) in enumerate(lines):
                curves = [c for c in (curve(r["out"], r["metric"]) for r in cell
                                      if r["delay"] == delay and r["flossing"] == fl and _hp(r) == hp) if c]
                if not curves:
                    continue
                color = f"C{j % 10}" if vary else _MODE_COLOR[fl]
                n = min(len(c) for c in curves)
                for c in curves:
                    ax.plot(range(1, n + 1), c[:n], color=color, lw=0.6, alpha=0.35)
                med = [statistics.median(c[i] for c in curves) for i in range(n)]
                ax.plot(range(1, n + 1), med, color=color, lw=2, label=f"flossing: {fl}" + _hp_label(fl, hp, vary))
            ax.set_title(f"{task}, {model}, d = {delay}")
            ax.set_xlabel("epoch")
        axes[0].set_ylabel(next((r["metric"] for r in cell), "metric") + " (median over seeds)")
        axes[0].legend()
        plotting.save_figure(fig, os.path.join(out, f"curves_{task}_{model}.png"))


# Lines of the gain plots: colour by flossing mode (local preflossing red), line style and marker by rule.
_LOCAL_COLOR = {"pre": "C3", "during": "C4"}
_RULE_STYLE = {"bptt": ("-", "o"), "eprop": ("--", "s"), "rflo": (":", "^")}
_MODE_NAME = {"none": "no flossing", "pre": "preflossing", "during": "flossing during training"}


def _mode(r: dict) -> tuple:
    """What one line of a plot holds fixed: ``(flossing, rule, local, g, (lr, beta, target, surrogate_scale))``."""
    return r["flossing"], r.get("rule", "bptt"), bool(r.get("local", False)), r.get("g"), _hp(r)


def _line(r: dict) -> tuple:
    """What one line of a gain plot holds fixed: :func:`_mode` without the gain (its x axis)."""
    fl, rule, local, _, hp = _mode(r)
    return fl, rule, local, None, hp


def _mode_order(mode: tuple) -> tuple:
    fl, rule, local, g, hp = mode
    return (_RULE_ORDER.get(rule, len(_RULE_ORDER)), rule, _MODE_ORDER.get(fl, len(_MODE_ORDER)), fl, local,
            -math.inf if g is None else g, _hp_order(hp))


def _varying(hps) -> list[str]:
    """The fields of :data:`HPARAM_AXES` whose value differs between the ``(lr, beta, target, ...)`` tuples
    ``hps`` (the lines of one figure): those the labels name."""
    hps = list(hps)
    return [f for i, f in enumerate(HPARAM_AXES) if len({hp[i] for hp in hps}) > 1]


def _hp_label(fl: str, hp: tuple, vary: Sequence[str]) -> str:
    """``", lr = 0.001, target = -0.1"``: the ``vary`` fields of a line (no target without flossing)."""
    return "".join(f", {f} = {_short(v)}" for f, v in zip(HPARAM_AXES, hp)
                   if f in vary and v is not None and not (f == "target" and fl == "none"))


def _mode_label(mode: tuple) -> str:
    fl, rule, local = mode[:3]
    return f"{rule}, " + ("local " if local else "") + _MODE_NAME.get(fl, fl)


def _mode_style(mode: tuple, index: Optional[int] = None) -> dict:
    """Colour by flossing mode, or by the line's ``index`` where lr / beta / target vary between lines
    (the mode colours would repeat); line style and marker by rule."""
    fl, rule, local = mode[:3]
    ls, marker = _RULE_STYLE.get(rule, ("-.", "D"))
    color = _LOCAL_COLOR.get(fl, "C5") if local else _MODE_COLOR.get(fl, "C7")
    return {"color": color if index is None else f"C{index % 10}", "ls": ls, "marker": marker}


def _by_delay(rows: Sequence[dict]) -> list[tuple]:
    """``(task, model, delay, rows, file suffix)`` per cell of the gain plots (one figure per delay)."""
    out = []
    for task, model in sorted({(r["task"], r["model"]) for r in rows}):
        cell = [r for r in rows if r["task"] == task and r["model"] == model]
        delays = sorted({r["delay"] for r in cell}, key=lambda d: -1 if d is None else d)
        for delay in delays:
            suffix = f"{task}_{model}" + (f"_d{delay}" if len(delays) > 1 else "")
            out.append((task, model, delay, [r for r in cell if r["delay"] == delay], suffix))
    return out


def _plot_gain(rows: Sequence[dict], out: str) -> None:
    """Seed 003 Figs 1-3 against the initial gain, one figure per task and model (and delay), written as
    ``gain_<task>_<model>.png`` when the grid has at least two gains: the final metric, the test loss
    averaged over the epochs (the area under the learning curve: low = learnt early) and lambda_1 at
    initialisation (black; the same network for every rule and flossing mode of a seed) with lambda_1
    after training, and (grids with flossing) with lambda_1 after preflossing; each mean ± std over seeds
    against g, one line per rule x flossing mode (x local x lr x beta x target)."""
    from . import plotting

    ok = [r for r in rows if r["status"] != "error"]
    for task, model, delay, cell, suffix in _by_delay(ok):
        gains = sorted({r["g"] for r in cell})
        if len(gains) < 2:
            continue
        modes = sorted({_line(r) for r in cell}, key=_mode_order)
        vary = _varying(m[4] for m in modes)
        styles = [_mode_style(m, i if vary else None) for i, m in enumerate(modes)]
        floss_modes = [m for m in modes if m[0] != "none"]
        fig, axes = plotting.figure(4 if floss_modes else 3, size=(4.2, 3.4))
        panels = [("value", next((r["metric"] for r in cell), "metric") + " (end of training)", False),
                  ("loss_auc", "test loss, mean over epochs", True)]
        for ax, (key, label, log) in zip(axes, panels):
            for mode, style in zip(modes, styles):
                rs = [r for r in cell if _line(r) == mode]
                stats = [_mean_std([r.get(key, math.nan) for r in rs if r["g"] == g]) for g in gains]
                ax.errorbar(gains, [m for m, _ in stats], yerr=[s for _, s in stats], capsize=3,
                            label=_mode_label(mode) + _hp_label(mode[0], mode[4], vary), **style)
            ax.set_ylabel(label)
            if log:
                ax.set_yscale("log")
        # lambda_1 at initialisation: one value per (g, seed), whatever the rule, flossing mode, lr or target;
        # the membrane decay changes the network, so one line per beta where the grid varies it.
        betas = sorted({r.get("beta") for r in cell}, key=lambda b: -math.inf if b is None else b)
        init_lines = []
        for j, beta in enumerate(betas):
            init = {(r["g"], r["seed"]): r["lambda1_before"] for r in cell if r.get("beta") == beta}
            init_lines.append(([_mean_std([v for (g2, _), v in init.items() if g2 == g]) for g in gains],
                               ("k", "0.4", "0.65")[j % 3],
                               "at initialisation" + (f", beta = {_short(beta)}" if len(betas) > 1 else "")))
        lam_panels = [(axes[2], "lambda1_after", modes, "$\\lambda_1$ after training (1/step)")]
        if floss_modes:
            lam_panels.append((axes[3], "lambda1_preflossed", floss_modes, "$\\lambda_1$ after preflossing (1/step)"))
        for ax, key, ms, label in lam_panels:
            for init_stats, color, init_label in init_lines:
                ax.errorbar(gains, [m for m, _ in init_stats], yerr=[s for _, s in init_stats], color=color,
                            marker="o", capsize=3, label=init_label)
            for mode, style in zip(modes, styles):
                if mode not in ms:
                    continue
                rs = [r for r in cell if _line(r) == mode]
                stats = [_mean_std([r.get(key, math.nan) for r in rs if r["g"] == g]) for g in gains]
                ax.errorbar(gains, [m for m, _ in stats], yerr=[s for _, s in stats], capsize=3, **style)
            ax.axhline(0.0, color="gray", lw=0.8)
            ax.set_ylabel(label)
            ax.legend(fontsize=7)
        for ax in axes:
            ax.set_xlabel("initial gain g")
        axes[0].set_title(f"{task}, {model}" + (f", delay {delay}" if delay is not None else ""))
        axes[0].legend(fontsize=7)
        plotting.save_figure(fig, os.path.join(out, f"gain_{suffix}.png"))


def _plot_gain_curves(rows: Sequence[dict], out: str) -> None:
    """Seed 003 Figs 1B/C, 2 and 4: learning curves (test loss against epoch, log scale) per initial gain,
    one panel per rule (rows) x flossing mode (columns; global / local), thin lines per seed and the mean
    over seeds thick, a shared loss axis; ``gain_curves_<task>_<model>.png`` per task and model (and delay)."""
    from . import plotting

    cmap = plotting._plt().get_cmap("viridis")
    ok = [r for r in rows if r["status"] != "error"]
    for task, model, delay, cell, suffix in _by_delay(ok):
        gains = sorted({r["g"] for r in cell})
        modes = sorted({_line(r) for r in cell}, key=_mode_order)
        vary = _varying(m[4] for m in modes)
        rules = list(dict.fromkeys(m[1] for m in modes))
        # Columns: flossing mode (global / local), and lr / beta / target where the grid varies them.
        cols = sorted({(m[0], m[2], m[4]) for m in modes},
                      key=lambda c: (_MODE_ORDER.get(c[0], 9), c[0], c[1], _hp_order(c[2])))
        fig, axes = plotting.figure(len(cols), len(rules), size=(3.6, 3.0))
        for ax in axes[1:]:
            ax.sharey(axes[0])
        for ri, rule in enumerate(rules):
            for ci, (fl, local, hp) in enumerate(cols):
                ax = axes[ri * len(cols) + ci]
                mode = (fl, rule, local, None, hp)
                if mode not in modes:
                    ax.set_axis_off()
                    continue
                for i, g in enumerate(gains):
                    color = cmap(i / max(len(gains) - 1, 1))
                    curves = [c for c in (_read_curve(r["out"], "val_loss") for r in cell
                                          if _line(r) == mode and r["g"] == g) if c]
                    if not curves:
                        continue
                    n = min(len(c) for c in curves)
                    for c in curves:
                        ax.plot(range(1, n + 1), c[:n], color=color, lw=0.6, alpha=0.35)
                    mean = [_mean([c[j] for c in curves]) for j in range(n)]
                    ax.plot(range(1, n + 1), mean, color=color, lw=2, label=f"g = {g:g}")
                ax.set_yscale("log")
                ax.set_title(f"{task}: " + _mode_label(mode) + _hp_label(fl, hp, vary), fontsize=9)
                ax.set_xlabel("epoch")
                if ci == 0:
                    ax.set_ylabel("test loss")
        axes[0].legend(fontsize=7)
        plotting.save_figure(fig, os.path.join(out, f"gain_curves_{suffix}.png"))


def spec_from_args(args) -> SweepSpec:
    """A :class:`SweepSpec` from the command line: a preset, then any grid flags override it."""
    spec = dataclasses.replace(PRESETS[args.preset]) if args.preset else SweepSpec()
    spec.base = dict(spec.base)
    for name in ("tasks", "delays", "models", "flossing", "seeds", "gains", "rules", "lrs", "betas", "targets",
                 "surrogate_scales"):
        v = getattr(args, name, None)
        if v:
            setattr(spec, name, list(v))
    for f, (axis, _) in HPARAM_AXES.items():
        if getattr(args, axis, None):  # the axis replaces the preset's value (a flag for it as well is refused)
            spec.base.pop(f, None)
    v = getattr(args, "local", None)
    if v:  # --local no yes: "yes" = local flossing (only with flossing pre/during)
        spec.local = [x if isinstance(x, bool) else str(x).lower() in ("yes", "true", "1", "local") for x in v]
    for name in ("epochs", "N", "steps_per_epoch", "batch", "lr", "k", "pre_steps"):
        v = getattr(args, name, None)
        if v is not None:
            spec.base[name] = v
    if getattr(args, "success", None) is not None:
        spec.success = args.success
    return spec

