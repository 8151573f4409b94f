"""Training on temporal tasks with optional gradient flossing: the engine of ``surroflos train``.

One run = one :class:`TrainConfig`. Everything random is drawn from generators seeded by ``seed``
(weights, training data, flossing inputs, the fixed validation set, spectrum estimates), and their
states are checkpointed with the model and the optimizer, so an interrupted run resumed with
``resume=True`` continues exactly where an uninterrupted one would be.

A run folder holds::

    config.json        the resolved configuration (plus versions)
    metrics.jsonl      one JSON line per epoch: losses, the task metric, lambda_1, flossing bouts
    checkpoint.pt      model, optimizer, RNG states, metrics (written atomically every epoch and on Ctrl-C)
    result.json        written once the run is complete: final metric, spectra before/after
    learning_curve.png, spectrum.png, lambda1.png, raster.png (spiking models)

Flossing modes: ``"none"``; ``"pre"`` (preflossing: ``pre_steps`` flossing updates before training);
``"during"`` (preflossing plus bouts of ``floss_steps`` updates every ``floss_every`` epochs, at most
``floss_times`` bouts, see :class:`~surroflos.flossing.FlossingSchedule`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from . import plotting
from ._argtypes import MAX_SEED, resolve_device
from ._io import atomic_json, atomic_write, ensure_writable_folder
from .checkpoint import CheckpointError, check_finite_state, load_checkpoint, remove_stale_temporaries, save_checkpoint
from .errors import UsageError
from .flossing import FlossingSchedule, floss
from .ensemble import MemberUpdates, select
from .learning import RULES, MemberRules, make_rule
from .lyapunov import lyapunov_spectrum

__all__ = ["TrainConfig", "TrainResult", "ConfigError", "train", "build_model", "MODELS", "FLOSSING_MODES", "RULES",
           "MEMBER_FIELDS", "ensemble_config", "member_config"]

MODELS = ("rate", "lif", "cuba", "balanced")
FLOSSING_MODES = ("none", "pre", "during")
# Which models each learning rule supports (surroflos.learning): RFLO is the rate-network rule.
RULE_MODELS = {"bptt": MODELS, "eprop": ("rate", "lif"), "rflo": ("rate",)}
DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Offsets that give each random stream its own seed (fixed forever: changing them changes every run).
_SEED_MODEL, _SEED_DATA, _SEED_EVAL, _SEED_FLOSS, _SEED_SPECTRUM, _SEED_FEEDBACK, _SEED_INIT = 0, 1, 2, 3, 4, 5, 6


# Settings that may differ between the members of an ensemble (TrainConfig.members): they keep every
# tensor's shape, so the members still train as one. Model values (g: initial weights; beta, alpha,
# threshold: per-member tensors of the spiking network), the optimiser's and flossing's learning rates
# (per-member rescaled steps, surroflos.ensemble.MemberUpdates), the flossing target and the flossing mode
# (a member flosses in the bouts its own schedule has, and is left alone in the others), and the surrogate's
# width (one scale per member: surroflos.surrogate.MemberSurrogate).
MEMBER_FIELDS = ("seed", "g", "beta", "alpha", "threshold", "lr", "floss_lr", "target", "flossing", "surrogate_scale")

# The files a run folder holds (checked to be writable files before any work starts).
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt", "result.json", "learning_curve.png",
             "spectrum.png", "lambda1.png", "raster.png")


class ConfigError(UsageError):
    """A training configuration that cannot run (reported before any work starts)."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (all JSON-serialisable).

    Task: ``task`` (a name from :func:`surroflos.tasks.names`), ``delay`` and ``T`` (trial length in
    steps; ``None``: the task's own default; the defaults 6 and 60 are those of the main job, delayed
    XOR, so set them to ``None`` for tasks without a delay such as ``flipflop``), ``task_params`` (further keyword arguments of :func:`surroflos.tasks.make`).
    Model: ``model`` in :data:`MODELS`, ``N`` hidden units, gain ``g``; spiking ``beta``, ``alpha``,
    ``threshold``, ``reset``, ``surrogate`` and its width ``surrogate_scale`` (``None``: the surrogate's own
    default, see :mod:`surroflos.surrogate`; larger is narrower); balanced ``K`` (in-degree). ``backend``: kernel backend.
    Flossing: ``flossing`` in :data:`FLOSSING_MODES`, ``k`` exponents towards ``target``,
    ``pre_steps``, ``floss_every``/``floss_steps``/``floss_times`` (during training), ``floss_T``
    (steps per estimate), ``floss_batch``, ``floss_lr``; ``local_flossing``: flossing updates use local
    information only (the recurrent state is detached, seed 003), e.g. to pair with a local rule.
    Learning rule: ``rule`` in :data:`RULES`: ``"bptt"`` (exact gradients), ``"eprop"`` (symmetric
    e-prop, rate and lif networks) or ``"rflo"`` (random-feedback e-prop on rate networks), see
    :mod:`surroflos.learning`; the random feedback matrix is seeded by ``seed``.
    The defaults are the README's main job (``surroflos train`` without arguments): a recurrent LIF
    network (64 neurons, beta 0.7, zero reset) on delayed XOR with delay 6, preflossed, 40 epochs; it
    reached 98% validation accuracy in 24 s on an idle 2-core CPU (seed 0).
    Initialisation: ``init`` (``None``: the model's own ``N(0, g^2/N)``; else a scheme of
    :mod:`surroflos.init`: ``gaussian``, ``orthogonal``, ``balanced``, ``limit_cycle``, seeded); rate
    networks: ``nonlinearity`` (tanh/relu) and ``rate_dt`` (Euler step in units of tau; 1 = discrete map).
    Optimisation: ``epochs`` x ``steps_per_epoch`` Adam steps on fresh batches of ``batch`` trials,
    learning rate ``lr``, gradient-norm clip ``grad_clip`` (``None``: off).
    Monitoring: validation on ``eval_batch`` fixed trials every epoch; lambda_1 every
    ``lyap_every`` epochs (0: never) from ``spectrum_T`` steps; spectra of ``spectrum_k`` exponents
    (default ``k``) before and after training.
    Ensembles: ``ensemble = E`` trains E networks as one (:mod:`surroflos.ensemble`), member ``e`` with seed
    ``seed + e`` and every random stream (weights, batches, validation set, flossing inputs, spectra)
    that a solo run with that seed uses; optimiser state and gradient clipping are per member, and a
    member whose loss or spectrum diverges is stopped and reported while the others go on. ``success``:
    the metric value counted as a success in the ensemble's summary (reporting only). ``members``: ``None``
    or E dicts, member e's settings where they differ from this configuration's: any of
    :data:`MEMBER_FIELDS` (``seed``, default ``seed + e``; ``g``, ``beta``, ``alpha``, ``threshold``, ``lr``,
    ``floss_lr``, ``target``, ``flossing``, ``surrogate_scale``), so that member e reproduces the solo run
    :func:`member_config` ``(cfg, e)``; :func:`ensemble_config` builds such a configuration from solo ones.
    """

    task: str = "xor"
    delay: Optional[int] = 6
    T: Optional[int] = 60
    task_params: dict = field(default_factory=dict)
    model: str = "lif"
    N: int = 64
    g: float = 1.0
    beta: float = 0.7
    alpha: float = 0.8
    threshold: float = 1.0
    reset: str = "zero"
    surrogate: str = "atan"
    surrogate_scale: Optional[float] = None
    K: int = 16
    backend: str = "auto"
    rule: str = "bptt"
    init: Optional[str] = None
    nonlinearity: str = "tanh"
    rate_dt: float = 1.0
    flossing: str = "pre"
    k: int = 4
    target: float = 0.0
    pre_steps: int = 100
    floss_every: int = 5
    floss_steps: int = 20
    floss_times: int = 0
    floss_T: int = 100
    floss_batch: int = 8
    floss_lr: float = 1e-3
    local_flossing: bool = False
    epochs: int = 40
    steps_per_epoch: int = 20
    batch: int = 32
    lr: float = 1e-2
    grad_clip: Optional[float] = 1.0
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    eval_batch: int = 256
    lyap_every: int = 2
    spectrum_T: int = 200
    spectrum_k: Optional[int] = None
    out: str = "outputs/train"
    ensemble: Optional[int] = None
    success: Optional[float] = None
    members: Optional[list] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    def schedule(self) -> FlossingSchedule:
        """The flossing schedule this configuration implies."""
        if self.flossing == "none":
            return FlossingSchedule()
        if self.flossing == "pre":
            return FlossingSchedule(pre_steps=self.pre_steps)
        times = self.floss_times or max(1, (self.epochs - 1) // max(self.floss_every, 1))
        return FlossingSchedule(pre_steps=self.pre_steps, every=self.floss_every, steps=self.floss_steps,
                                times=times)


@dataclass
class TrainResult:
    """What :func:`train` returns: per-epoch metrics, spectra before/after, the task's final metric."""

    config: TrainConfig
    metrics: list
    final: dict
    spectrum_before: Optional[list]
    spectrum_after: Optional[list]
    out: str
    interrupted: bool = False


# ----------------------------------------------------------------------------------------------
# Validation and construction
# ----------------------------------------------------------------------------------------------


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _make_task(cfg: TrainConfig):
    from . import tasks

    names = tasks.names()
    _check(cfg.task in names, f"unknown task {cfg.task!r}; available tasks: {', '.join(names)}")
    params = dict(cfg.task_params)
    for name in ("delay", "T"):
        if getattr(cfg, name) is not None:
            params.setdefault(name, getattr(cfg, name))
    if cfg.model != "rate" and "encoding" not in params:
        params["encoding"] = "current"  # spiking networks: inputs as constant currents by default
    try:
        return tasks.make(cfg.task, **params)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"task {cfg.task!r} with {params}: {e}") from e


def validate(cfg: TrainConfig):
    """Check ``cfg`` and build its task; raises :class:`ConfigError` with a clear message."""
    _check(cfg.model in MODELS, f"model must be one of {MODELS}, got {cfg.model!r}")
    _check(cfg.flossing in FLOSSING_MODES, f"flossing must be one of {FLOSSING_MODES}, got {cfg.flossing!r}")
    _check(cfg.rule in RULES, f"rule must be one of {RULES}, got {cfg.rule!r}")
    if cfg.model in MODELS and cfg.rule in RULES:
        ok = RULE_MODELS[cfg.rule]
        _check(cfg.model in ok, f"rule {cfg.rule!r} supports the models {ok}, not {cfg.model!r}"
               + ("; RFLO is the rate-network rule, use --rule eprop for lif" if cfg.rule == "rflo" else
                  "; use --rule bptt for it"))
    _check(isinstance(cfg.local_flossing, bool), f"local_flossing must be a bool, got {cfg.local_flossing!r}")
    _check(not (cfg.local_flossing and cfg.flossing == "none"),
           "local_flossing applies to flossing bouts, but flossing is 'none'; use flossing 'pre' or 'during'")
    _check(cfg.dtype in DTYPES, f"dtype must be one of {sorted(DTYPES)}, got {cfg.dtype!r}")
    from . import init as inits

    _check(cfg.init is None or cfg.init in inits.SCHEMES,
           f"init must be one of {sorted(inits.SCHEMES)} (or none: the model's own Gaussian), got {cfg.init!r}")
    _check(not (cfg.init is not None and cfg.model == "balanced"),
           "init applies to dense recurrent weights; the balanced network keeps its sparse [N, K] pattern")
    _check(cfg.nonlinearity in ("tanh", "relu"), f"nonlinearity must be 'tanh' or 'relu', got {cfg.nonlinearity!r}")
    _check(isinstance(cfg.rate_dt, (int, float)) and 0 < cfg.rate_dt <= 1,
           f"rate_dt must lie in (0, 1], got {cfg.rate_dt!r}")
    for name in ("N", "epochs", "steps_per_epoch", "batch", "eval_batch", "k", "floss_T", "floss_batch",
                 "spectrum_T"):
        v = getattr(cfg, name)
        _check(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{name} must be a positive int, got {v!r}")
    for name in ("pre_steps", "floss_every", "floss_steps", "floss_times", "lyap_every", "seed"):
        v = getattr(cfg, name)
        _check(isinstance(v, int) and not isinstance(v, bool) and v >= 0,
               f"{name} must be a non-negative int, got {v!r}")
    _check(cfg.seed <= MAX_SEED, f"seed must be at most 2**63 - 2 = {MAX_SEED}, got {cfg.seed}")
    for name in ("lr", "floss_lr"):
        v = getattr(cfg, name)
        _check(_is_real(v) and math.isfinite(v) and v > 0, f"{name} must be positive, got {v!r}")
    # Model values: checked here so that a bad one is named before any work (the models check them too).
    for name in ("beta", "alpha"):
        v = getattr(cfg, name)
        _check(_is_real(v) and 0.0 <= v <= 1.0, f"{name} must lie in [0, 1] (a decay per step), got {v!r}")
    _check(_is_real(cfg.threshold) and math.isfinite(cfg.threshold) and cfg.threshold > 0,
           f"threshold must be a positive number, got {cfg.threshold!r}")
    _check(_is_real(cfg.g) and math.isfinite(cfg.g) and cfg.g >= 0, f"g must be a finite number >= 0, got {cfg.g!r}")
    _check(_is_real(cfg.target) and math.isfinite(cfg.target),
           f"target must be a finite number (the flossed exponents' goal, e.g. 0), got {cfg.target!r}")
    from . import surrogate as sg

    _check(cfg.surrogate in sg.SURROGATES, f"surrogate must be one of {sorted(sg.SURROGATES)}, got {cfg.surrogate!r}")
    _check(cfg.surrogate_scale is None or (_is_real(cfg.surrogate_scale) and math.isfinite(cfg.surrogate_scale)
                                           and cfg.surrogate_scale > 0),
           f"surrogate_scale must be a positive number or None (the surrogate's own), got {cfg.surrogate_scale!r}")
    _check(cfg.reset in ("subtract", "zero"), f"reset must be 'subtract' or 'zero', got {cfg.reset!r}")
    _check_device(cfg.device, cfg.backend)
    _check(isinstance(cfg.task_params, dict), f"task_params must be a dict, got {cfg.task_params!r}")
    _check(cfg.ensemble is None or (isinstance(cfg.ensemble, int) and not isinstance(cfg.ensemble, bool)
                                    and cfg.ensemble >= 1),
           f"ensemble must be a positive int (the number of members) or None, got {cfg.ensemble!r}")
    if cfg.ensemble is not None:
        _check(cfg.members is not None or cfg.seed + cfg.ensemble - 1 <= MAX_SEED,
               f"seed + ensemble - 1 must be at most {MAX_SEED}")
        _check(cfg.model in ("rate", "lif", "cuba"), f"ensemble trains rate, lif and cuba networks, not "
               f"{cfg.model!r} (the balanced network's sparse weights have no member axis yet)")
    if cfg.members is not None:
        _check_members(cfg)
    _check(cfg.success is None or (_is_real(cfg.success) and math.isfinite(cfg.success)),
           f"success must be a finite number or None, got {cfg.success!r}")
    for name in ("delay", "T"):
        given, field_value = cfg.task_params.get(name), getattr(cfg, name)
        _check(name not in cfg.task_params or field_value is None or given == field_value,
               f"{name} is {field_value!r} but task_params sets {name}={given!r}; give the {name} once")
    _check(cfg.grad_clip is None or (math.isfinite(cfg.grad_clip) and cfg.grad_clip > 0),
           f"grad_clip must be positive or None, got {cfg.grad_clip!r}")
    _check(cfg.delay is None or (isinstance(cfg.delay, int) and cfg.delay >= 0),
           f"delay must be a non-negative int, got {cfg.delay!r}")
    _check(cfg.T is None or (isinstance(cfg.T, int) and cfg.T >= 1), f"T must be a positive int, got {cfg.T!r}")
    from .kernels.backend import BACKENDS

    _check(cfg.backend in BACKENDS, f"backend must be one of {BACKENDS}, got {cfg.backend!r}")
    if cfg.flossing == "during":
        _check(cfg.floss_every >= 1 and cfg.floss_steps >= 1, "flossing 'during' needs floss_every >= 1 and floss_steps >= 1")
    if cfg.model == "balanced":
        _check(1 <= cfg.K < cfg.N, f"balanced networks need 1 <= K < N, got K={cfg.K}, N={cfg.N}")
    state_dim = cfg.N if cfg.model in ("rate", "lif") else 2 * cfg.N
    if cfg.flossing != "none":
        _check(cfg.k <= state_dim, f"k={cfg.k} flossed exponents but the {cfg.model} network has only "
                                   f"{state_dim} state dimensions (N={cfg.N})")
    ks = cfg.spectrum_k or cfg.k
    _check(ks <= state_dim, f"spectrum_k={ks} exceeds the state dimension {state_dim}")
    _check(cfg.spectrum_T >= 8, f"spectrum_T must be >= 8 steps, got {cfg.spectrum_T}")
    return _make_task(cfg)


def _check_members(cfg: TrainConfig) -> None:
    """``cfg.members``: E dicts of :data:`MEMBER_FIELDS`, each member's solo configuration valid."""
    _check(isinstance(cfg.members, list) and all(isinstance(m, dict) for m in cfg.members),
           f"members must be a list of dicts (one per member), got {cfg.members!r}")
    _check(cfg.ensemble == len(cfg.members), f"members lists {len(cfg.members)} members but ensemble is "
           f"{cfg.ensemble!r}; give ensemble = len(members)")
    for e, m in enumerate(cfg.members):
        bad = sorted(map(str, set(m) - set(MEMBER_FIELDS)))
        _check(not bad, f"member {e} sets {bad}, which cannot differ between the members of an ensemble (they "
               f"would change shapes or settings shared by all); per member: {', '.join(MEMBER_FIELDS)}")
        try:
            validate(member_config(cfg, e))
        except ConfigError as err:
            raise ConfigError(f"member {e}: {err}") from None


def check_memory(cfg: TrainConfig, task) -> None:
    """Refuse (:class:`~surroflos.errors.UsageError`, with the estimate and the free memory) a run whose
    network cannot fit on its device; see :mod:`surroflos.memory`."""
    from .memory import require_memory, train_bytes

    require_memory(train_bytes(cfg, task), _check_device(cfg.device, cfg.backend),
                   f"a {cfg.model} network of N={cfg.N}", "lower --N, --batch, --eval-batch or --T")


def _surrogate(cfg: TrainConfig):
    from . import surrogate as sg

    return sg.get(cfg.surrogate, cfg.surrogate_scale)


def build_model(cfg: TrainConfig, task, device: torch.device, dtype: torch.dtype):
    """The network of ``cfg`` sized for ``task`` (weights seeded by ``cfg.seed``)."""
    from .models import BalancedNetwork, RateRNN, SpikingRNN

    gen = torch.Generator().manual_seed(_seed(cfg.seed, _SEED_MODEL))
    if cfg.model == "rate":
        return RateRNN(task.n_in, cfg.N, task.n_out, g=cfg.g, dt=cfg.rate_dt, nonlinearity=cfg.nonlinearity,
                       generator=gen, device=device, dtype=dtype)
    if cfg.model in ("lif", "cuba"):
        kwargs: dict[str, Any] = {}
        if cfg.backend != "auto":
            kwargs["backend"] = cfg.backend
        return SpikingRNN(task.n_in, cfg.N, task.n_out, neuron=cfg.model, beta=cfg.beta, alpha=cfg.alpha,
                          threshold=cfg.threshold, reset=cfg.reset, surrogate=_surrogate(cfg), g=cfg.g,
                          generator=gen, device=device, dtype=dtype, **kwargs)
    return BalancedNetwork(cfg.N, cfg.K, n_in=task.n_in, n_out=task.n_out, learn_recurrent=True,
                           surrogate=_surrogate(cfg), generator=gen, device=device, dtype=dtype)


def member_seeds(cfg: TrainConfig) -> Optional[list[int]]:
    """The seeds of an ensemble's members, ``seed .. seed + E - 1`` unless ``members`` sets them (``None``
    for a solo run)."""
    return None if cfg.ensemble is None else [member_config(cfg, e).seed for e in range(cfg.ensemble)]


def member_config(cfg: TrainConfig, index: int) -> TrainConfig:
    """The solo configuration that member ``index`` of an ensemble run reproduces: seed ``seed + index``,
    then the member's own settings (``members[index]``)."""
    own = cfg.members[index] if cfg.members is not None else {}
    return dataclasses.replace(cfg, **{"seed": cfg.seed + index, **own, "ensemble": None, "members": None})


def member_settings(cfg: TrainConfig) -> Optional[list[dict]]:
    """Each member's values of :data:`MEMBER_FIELDS` (``None`` for a solo run)."""
    if cfg.ensemble is None:
        return None
    return [{k: getattr(member_config(cfg, e), k) for k in MEMBER_FIELDS} for e in range(cfg.ensemble)]


def ensemble_config(configs: Sequence[TrainConfig], out: Optional[str] = None) -> TrainConfig:
    """One ensemble run whose member e reproduces the solo run ``configs[e]``.

    The configurations may differ in :data:`MEMBER_FIELDS` (and ``out``) only. Runs that differ only in
    consecutive seeds give the plain ``ensemble = E`` configuration; otherwise ``members`` lists, for every
    member, the fields that differ between them (and its seed). ``out``: the ensemble's folder (default the
    first configuration's).

    Raises:
        ConfigError: no configurations, an ensemble among them, or two that differ in a field that is not
            member-wise (named).
    """
    configs = list(configs)
    _check(bool(configs), "ensemble_config needs at least one configuration")
    first = configs[0]
    for i, c in enumerate(configs):
        _check(c.ensemble is None and c.members is None, f"configuration {i} is already an ensemble")
        a, b = c.to_dict(), first.to_dict()
        diff = sorted(k for k in a if k not in MEMBER_FIELDS and k != "out" and a[k] != b[k])
        _check(not diff, f"configuration {i} differs from configuration 0 in {diff}, which the members of one "
               f"ensemble share; per member: {', '.join(MEMBER_FIELDS)}")
    varying = [k for k in MEMBER_FIELDS if k != "seed" and len({repr(getattr(c, k)) for c in configs}) > 1]
    ens = dataclasses.replace(first, ensemble=len(configs), out=first.out if out is None else out)
    if varying or [c.seed for c in configs] != [first.seed + e for e in range(len(configs))]:
        ens.members = [{"seed": c.seed, **{k: getattr(c, k) for k in varying}} for c in configs]
    return ens


def _generators(cfg: TrainConfig, stream: int, offset: int = 0):
    """The generator of a random stream: one for a solo run, one per member (its solo run's) for an ensemble."""
    seeds = member_seeds(cfg)
    if seeds is None:
        return torch.Generator().manual_seed(_seed(cfg.seed, stream) + offset)
    return [torch.Generator().manual_seed(_seed(s, stream) + offset) for s in seeds]


def build_initialized_model(cfg: TrainConfig, task, device: torch.device, dtype: torch.dtype):
    """:func:`build_model`, then the recurrent weights replaced by ``cfg.init`` (seeded) if one is named.

    ``g`` is the gain of the ``gaussian`` and ``orthogonal`` schemes and ``J0`` of ``balanced``;
    ``limit_cycle`` takes no gain (its ranges are in :mod:`surroflos.init`). For an ensemble, the stack
    (:func:`surroflos.ensemble.stack`) of its members' solo networks.
    """
    if cfg.ensemble is not None:
        from .ensemble import stack

        return stack([build_initialized_model(member_config(cfg, e), task, device, dtype)
                      for e in range(cfg.ensemble)])
    model = build_model(cfg, task, device, dtype)
    if cfg.init is not None:
        from . import init as inits

        gen = torch.Generator().manual_seed(_seed(cfg.seed, _SEED_INIT))
        kw = {"g": cfg.g} if inits.SCHEMES[cfg.init].gain else {}
        inits.initialize_(model, cfg.init, generator=gen, **kw)
    return model


def _is_real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def _check_device(name: object, backend: str) -> torch.device:
    """The device ``name`` resolves to, after checking that this machine has it and that
    ``backend='triton'`` can run there."""
    _check(isinstance(name, str), f"device must be a string such as 'cpu', 'cuda', 'cuda:1' or 'auto', got {name!r}")
    try:
        dev = resolve_device(name)
    except ValueError as e:
        raise ConfigError(f"device {e}") from None
    if backend == "triton" and dev.type != "cuda":
        from .kernels.backend import interpreter_requested

        _check(interpreter_requested(), "backend 'triton' needs a CUDA device (or TRITON_INTERPRET=1, the slow "
               "interpreter for tests); use --backend auto or torch on the CPU")
    return dev


def _seed(seed: int, stream: int) -> int:
    return (seed * 1_000_003 + stream * 7919) % (2**63 - 1)


# ----------------------------------------------------------------------------------------------
# Data helpers
# ----------------------------------------------------------------------------------------------


def _sample(task, batch: int, gen, device, dtype):
    """A batch drawn on the CPU generator, then moved: identical data on every device. With a list of
    generators (an ensemble), each member's batch from its own, stacked on a member axis after time."""
    if isinstance(gen, list):
        parts = [_sample(task, batch, g, device, dtype) for g in gen]
        return tuple(torch.stack(p, dim=1) for p in zip(*parts))
    x, y, m = task.sample(batch, generator=gen, dtype=dtype)
    return x.to(device), y.to(device), m.to(device)


def _long_inputs(task, T: int, batch: int, gen, device, dtype) -> torch.Tensor:
    """``[T, batch, n_in]`` task inputs: consecutive trials concatenated in time (for spectra);
    ``[T, E, batch, n_in]`` for a list of member generators."""
    if isinstance(gen, list):
        return torch.stack([_long_inputs(task, T, batch, g, device, dtype) for g in gen], dim=1)
    chunks, n = [], 0
    while n < T:
        x = task.sample(batch, generator=gen, dtype=dtype)[0]
        chunks.append(x)
        n += x.shape[0]
    return torch.cat(chunks)[:T].to(device)


def _spectrum(model, task, cfg: TrainConfig, k: int, tag: int, device, dtype) -> list:
    """Batch-mean spectrum of ``k`` exponents on task inputs (deterministic given ``tag``); for an ensemble
    one per member (``None`` entries for a member whose estimate diverged)."""
    gen = _generators(cfg, _SEED_SPECTRUM, tag)
    x = _long_inputs(task, cfg.spectrum_T, 4, gen, device, dtype)
    with torch.no_grad():
        res = lyapunov_spectrum(model, x, k, transient=cfg.spectrum_T // 4, frame_warmup=cfg.spectrum_T // 4,
                                generator=gen)
    return _values(res.mean())


def _values(t: torch.Tensor):
    """A tensor as JSON values: floats (NaN as ``None``), nested per member for ``[E, ...]``."""
    values = t.detach().cpu().tolist()

    def clean(v):
        return [clean(u) for u in v] if isinstance(v, list) else (None if math.isnan(v) else float(v))

    return clean(values)


def _losses(task, out: torch.Tensor, y: torch.Tensor, m: torch.Tensor, members: Optional[int]) -> torch.Tensor:
    """The task loss of a solo run (a scalar), or ``[E]``: each member's on its own slice."""
    if members is None:
        return task.loss(out, y, m)
    return torch.stack([task.loss(out[:, e], y[:, e], m[:, e]) for e in range(members)])


def _scores(task, out: torch.Tensor, y: torch.Tensor, m: torch.Tensor, members: Optional[int]):
    """The task metric (a float), or one per member."""
    if members is None:
        return float(task.score(out, y, m))
    return [float(task.score(out[:, e], y[:, e], m[:, e])) for e in range(members)]


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def _write_metrics(path: str, metrics: list) -> None:
    atomic_write(path, lambda fh: fh.writelines(json.dumps(row) + "\n" for row in metrics))


# Keys that may differ between a checkpoint and a resumed run without changing what was computed
# (``epochs`` may only grow: more epochs continue the same run).
_RESUMABLE_CHANGES = {"epochs", "out", "device", "backend", "success"}
_CHECKPOINT_KEYS = ("config", "model", "optimizer", "g_data", "g_floss", "torch_rng", "state")
_STATE_KEYS = {"epoch", "metrics", "spectrum_before", "preflossed", "preflossing"}


def prepare_run_folder(out: str) -> None:
    """Create the run folder ``out`` (and parents) and check that every file of a run can be written there.

    Raises:
        ConfigError: ``out`` is a file, cannot be created or is not writable, or one of :data:`RUN_FILES`
            exists there as a folder.
    """
    ensure_writable_folder(out, "--out", ConfigError)
    for name in RUN_FILES:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            raise ConfigError(f"{path} is a folder, but the run writes a file there; remove it or use another --out")


def _check_resume(ck: dict, cfg: TrainConfig, path: str) -> None:
    """Refuse a resume whose configuration differs from the checkpoint's, or that would undo epochs."""
    saved, state = ck["config"], ck["state"]
    if not isinstance(saved, dict) or not isinstance(state, dict) or not _STATE_KEYS <= set(state) \
            or not isinstance(state["epoch"], int) or not isinstance(state["metrics"], list):
        raise CheckpointError(f"{path} is not a surroflos train checkpoint (its config or state is malformed)")
    now = cfg.to_dict()
    # Keys added to TrainConfig after the checkpoint was written took their defaults in that run.
    saved = {**{k: v for k, v in TrainConfig().to_dict().items() if k not in saved}, **saved}
    diff = sorted(k for k in set(saved) | set(now) if k not in _RESUMABLE_CHANGES and saved.get(k) != now.get(k))
    if diff:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff)
        raise ConfigError(f"--resume: the configuration differs from the checkpoint's ({detail}); only "
                          f"{sorted(_RESUMABLE_CHANGES)} may change. Use a new --out folder for a new run.")
    if cfg.epochs < state["epoch"]:
        raise ConfigError(f"--resume: --epochs {cfg.epochs} but the checkpoint has completed {state['epoch']} "
                          f"epochs; give --epochs {state['epoch']} or more (or a new --out for a shorter run)")


def load_weights(model: torch.nn.Module, weights: object, path: str) -> None:
    """Load a checkpoint's ``model`` entry into ``model`` after checking that it is a state dict of finite
    tensors with this network's names and shapes; raises :class:`CheckpointError` naming what does not fit."""
    mine = model.state_dict()
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{path}: its 'model' entry is not a state dict of tensors")
    missing, extra = sorted(set(mine) - set(weights)), sorted(set(weights) - set(mine))
    if missing or extra:
        raise CheckpointError(f"{path} holds the weights of another network (missing {missing}, unexpected {extra})")
    for name, t in mine.items():
        if tuple(weights[name].shape) != tuple(t.shape):
            raise CheckpointError(f"{path}: {name!r} has shape {list(weights[name].shape)} but this network's is "
                                  f"{list(t.shape)} (the checkpoint is of another size)")
    check_finite_state(weights, path)
    model.load_state_dict(weights)


def _restore(ck: dict, path: str, model, opt, g_data, g_floss) -> None:
    """Load a checkpoint's weights, optimiser and RNG states (one generator per stream, or one per member
    of an ensemble), or raise :class:`CheckpointError` naming what does not fit."""
    def is_state(v) -> bool:
        return isinstance(v, torch.Tensor) and v.dtype == torch.uint8

    for name, gen in (("g_data", g_data), ("g_floss", g_floss), ("torch_rng", None)):
        v = ck[name]
        ok = (isinstance(v, list) and isinstance(gen, list) and len(v) == len(gen) and all(map(is_state, v))) \
            or (not isinstance(gen, list) and is_state(v))
        if not ok:
            raise CheckpointError(f"{path}: {name!r} is not the random-generator state"
                                  + (f" of {len(gen)} members" if isinstance(gen, list) else " (a uint8 tensor)"))
    load_weights(model, ck["model"], path)
    try:
        opt.load_state_dict(ck["optimizer"])
        for gen, st in ((g_data, ck["g_data"]), (g_floss, ck["g_floss"])):
            for g, v in zip(gen, st) if isinstance(gen, list) else ((gen, st),):
                g.set_state(v)
        torch.set_rng_state(ck["torch_rng"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path} cannot be restored: {str(e).splitlines()[0]}") from None


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True,
          stop_after: Optional[int] = None, log: Callable[[str], None] = print, parallel=None) -> TrainResult:
    """Run (or resume) the training described by ``cfg``; write everything to ``cfg.out``.

    Args:
        cfg: the configuration (validated first: a bad one raises :class:`ConfigError` before any work).
        resume: continue from ``cfg.out/checkpoint.pt`` (exactly: same data, same RNG states).
        progress: show a progress bar (loss, metric, lambda_1).
        stop_after: stop (as if interrupted, checkpoint written) after this many epochs of this call;
            for tests of resumption.
        log: where summary lines go.
        parallel: a :class:`surroflos.distributed.DataParallel` (``surroflos train --distributed`` under
            torchrun): this process computes its share of the global batch, the ranks together compute what
            one process computes, and only rank 0 writes the run folder and logs.

    Returns:
        :class:`TrainResult`. ``Ctrl-C`` writes a checkpoint of the last completed epoch and re-raises
        ``KeyboardInterrupt``.
    """
    dp = parallel
    main = dp is None or dp.is_main
    if dp is not None:
        from .distributed import check_config

        check_config(cfg, dp.world)
        if not main:
            log = _no_log
            progress = False
    task = validate(cfg)
    device, dtype = _check_device(cfg.device, cfg.backend), DTYPES[cfg.dtype]
    check_memory(cfg, task)
    ckpt_path = os.path.join(cfg.out, "checkpoint.pt")

    def open_run():  # rank 0's part when data-parallel: the folder, and the checkpoint to resume
        prepare_run_folder(cfg.out)
        if not resume:
            return None
        if not os.path.exists(ckpt_path):
            raise ConfigError(f"--resume: no checkpoint at {ckpt_path}; start without --resume")
        remove_stale_temporaries(cfg.out)  # leftovers of a write that a kill interrupted
        ck = load_checkpoint(ckpt_path, required=_CHECKPOINT_KEYS, map_location=device if dp is None else "cpu")
        _check_resume(ck, cfg, ckpt_path)
        return ck

    ck = open_run() if dp is None else dp.on_main(open_run)
    E = cfg.ensemble
    # An ensemble's members as solo runs (their own seeds and member-wise settings, TrainConfig.members)
    solo = None if E is None else [member_config(cfg, e) for e in range(E)]
    seeds = member_seeds(cfg)
    model = build_initialized_model(cfg, task, device, dtype)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr if E is None else solo[0].lr)
    # The random feedback of e-prop/RFLO is drawn from its own seeded stream: rebuilt identically on resume.
    if E is None:
        rule = make_rule(cfg.rule, model, generator=torch.Generator().manual_seed(_seed(cfg.seed, _SEED_FEEDBACK)))
    else:  # each member's own rule and feedback (BPTT runs vectorised below and needs none)
        rule = None if cfg.rule == "bptt" else MemberRules(model, lambda net, e: make_rule(
            cfg.rule, net, generator=torch.Generator().manual_seed(_seed(seeds[e], _SEED_FEEDBACK))))
    g_data = _generators(cfg, _SEED_DATA)
    g_floss = _generators(cfg, _SEED_FLOSS)
    # Ensembles: per-member clipping and learning rates, and members that diverge are frozen while the
    # others go on.
    members = None if E is None else MemberUpdates(list(model.parameters()), E,
                                                   lr_scale=[c.lr / solo[0].lr for c in solo])
    schedule = cfg.schedule() if E is None else _union_schedule([c.schedule() for c in solo])
    # Which members floss in a bout: all of a solo run; of an ensemble, those whose own schedule has it.
    flossers = (lambda when: None) if E is None else (lambda when: [  # noqa: E731
        e for e, c in enumerate(solo) if (c.schedule().pre_steps > 0 if when is None else c.schedule().due(when))])
    k_spec = cfg.spectrum_k or cfg.k
    state: dict[str, Any] = {"epoch": 0, "metrics": [], "spectrum_before": None, "preflossed": False,
                             "preflossing": None, "stopped": {}}
    if resume:
        _restore(ck, ckpt_path, model, opt, g_data, g_floss)
        state = ck["state"]
        for e, reason in state.get("stopped", {}).items():  # frozen at the weights they were saved with
            members.stop(int(e), reason)
        log(f"resumed {cfg.out} at epoch {state['epoch']}")
    else:
        torch.manual_seed(_seed(cfg.seed, _SEED_MODEL))
    metrics_path = os.path.join(cfg.out, "metrics.jsonl")
    if main:
        record = {"config": cfg.to_dict(), "versions": _versions(), "schedule": dataclasses.asdict(schedule)}
        if dp is not None:
            record["parallel"] = {"processes": dp.world, "backend": dp.backend}
        atomic_json(record, os.path.join(cfg.out, "config.json"))
        _write_metrics(metrics_path, state["metrics"])  # drops lines of epochs after the checkpoint

    g_eval = _generators(cfg, _SEED_EVAL)
    x_val, y_val, m_val = _sample(task, cfg.eval_batch, g_eval, device, dtype)

    def floss_inputs(i: int, g: torch.Generator) -> torch.Tensor:
        return _long_inputs(task, cfg.floss_T, cfg.floss_batch, g, device, dtype)

    def stop(e: int, reason: str) -> None:
        if e in members.stopped:
            return
        members.stop(e, reason)
        state["stopped"][str(e)] = reason
        log(f"member {e} (seed {seeds[e]}) stopped: {reason}")
        if len(members.stopped) == E:
            raise FloatingPointError(f"every member of the ensemble diverged ({reason}); lower --lr, set "
                                     "--grad-clip, or lower --g")

    def floss_bout(steps: int, when: Optional[int] = None) -> Optional[dict]:
        """Flossing bout (``when``: the epoch it precedes, ``None``: preflossing); for an ensemble only the
        members whose own schedule has it and that are still going (``None`` if there are none)."""
        t0 = time.perf_counter()
        if members is not None:
            idx = [e for e in flossers(when) if e not in members.stopped]
            if not idx:
                return None
            net = model if len(idx) == E else select(model, idx)  # the members that floss, as one ensemble
            saved = [p.detach().clone() for p in model.parameters()]
            lrs, targets = [solo[e].floss_lr for e in idx], [solo[e].target for e in idx]
            hist = floss(net, steps, k=cfg.k, T=cfg.floss_T, batch=cfg.floss_batch,
                         lr=lrs[0] if len(set(lrs)) == 1 else lrs,
                         target=targets[0] if len(set(targets)) == 1 else [[t] for t in targets],
                         inputs=floss_inputs, generator=[g_floss[e] for e in idx], progress=progress,
                         max_grad_norm=cfg.grad_clip, local=cfg.local_flossing)
            if net is not model:
                with torch.no_grad():
                    for p, q in zip(model.parameters(), net.parameters()):
                        p[idx] = q
            for j, reason in hist.stopped.items():
                e = idx[j]
                with torch.no_grad():  # its weights before the bout: the update that diverged is undone
                    for p, v in zip(model.parameters(), saved):
                        p[e] = v[e]
                stop(e, reason)
            lam = hist.exponents

            def spread(v):  # per participant -> per member (None for the members left out)
                if v is None or len(idx) == E:
                    return v
                full = [None] * E
                for j, e in enumerate(idx):
                    full[e] = v[j]
                return full

            return {"steps": len(hist), "lambda_first": spread(_values(lam[0])) if len(hist) else None,
                    "lambda_last": spread(_values(lam[-1])) if len(hist) else None,
                    "loss_last": spread(_values(hist.loss[-1])) if len(hist) else None,
                    "seconds": time.perf_counter() - t0}
        if dp is None:
            hist = floss(model, steps, k=cfg.k, T=cfg.floss_T, batch=cfg.floss_batch, lr=cfg.floss_lr,
                         target=cfg.target, inputs=floss_inputs, generator=g_floss, progress=progress,
                         max_grad_norm=cfg.grad_clip, local=cfg.local_flossing)
        else:
            from .distributed import floss_data_parallel

            hist = floss_data_parallel(dp, model, steps, k=cfg.k, T=cfg.floss_T, batch=cfg.floss_batch,
                                       lr=cfg.floss_lr, target=cfg.target, inputs=floss_inputs, generator=g_floss,
                                       max_grad_norm=cfg.grad_clip, local=cfg.local_flossing, progress=progress)
        lam = hist.exponents
        return {"steps": len(hist), "lambda_first": _values(lam[0]) if len(hist) else None,
                "lambda_last": _values(lam[-1]) if len(hist) else None,
                "loss_last": _values(hist.loss[-1]) if len(hist) else None, "seconds": time.perf_counter() - t0}

    def save() -> None:
        if main:
            save_checkpoint(snapshot(), ckpt_path)

    def forward(x: torch.Tensor, with_states: bool = True):
        """The network on a batch ``[T, B, ...]``; data-parallel: on this rank's slice, the outputs (and
        ``with_states`` the states) assembled into the global batch, differentiably."""
        if dp is None:
            return model(x)
        n = x.shape[1]
        out, states = model(x[:, dp.part(n)])
        return dp.assemble(out, n, dim=1), dp.assemble(states.detach(), n, dim=1) if with_states else None

    def gen_state(g):
        return [x.get_state() for x in g] if isinstance(g, list) else g.get_state()

    def snapshot() -> dict:
        return {"config": cfg.to_dict(), "model": model.state_dict(), "optimizer": opt.state_dict(),
                "g_data": gen_state(g_data), "g_floss": gen_state(g_floss), "torch_rng": torch.get_rng_state(),
                "state": state, "versions": _versions()}

    interrupted = False
    bar = None
    try:
        if state["spectrum_before"] is None:
            state["spectrum_before"] = _spectrum(model, task, cfg, k_spec, 0, device, dtype)
            log("spectrum before: " + _fmt(state["spectrum_before"]))
            save()  # from here on, --resume always has a checkpoint
        if schedule.pre_steps and not state["preflossed"]:
            state["preflossing"] = floss_bout(schedule.pre_steps)
            state["preflossed"] = True
            log(f"preflossing: lambda_1..{cfg.k} {_fmt(state['preflossing']['lambda_first'])} -> "
                f"{_fmt(state['preflossing']['lambda_last'])}")
            save()
        if cfg.lyap_every and state.get("lambda1_start") is None:
            lam = _spectrum(model, task, cfg, 1, 0, device, dtype)
            state["lambda1_start"] = lam[0] if E is None else [None if v is None else v[0] for v in lam]
        bar = _progress_bar(cfg.epochs, state["epoch"], progress)
        done_this_call = 0
        while state["epoch"] < cfg.epochs:
            if stop_after is not None and done_this_call >= stop_after:
                interrupted = True
                break
            epoch = state["epoch"]
            t0 = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch + 1}
            if schedule.due(epoch):
                bout = floss_bout(schedule.steps, epoch)
                if bout is not None:
                    row["flossing"] = bout
            model.train()
            losses = []
            for _ in range(cfg.steps_per_epoch):
                x, y, m = _sample(task, cfg.batch, g_data, device, dtype)
                opt.zero_grad(set_to_none=True)
                if cfg.rule == "bptt":
                    out, _ = forward(x, with_states=False)
                    loss = _losses(task, out, y, m, E)
                else:  # e-prop / RFLO: the rule sets .grad (no backward through time)
                    loss = rule.step(x, y, m, task)
                if members is None:
                    _check_finite(loss, epoch)
                    if cfg.rule == "bptt":
                        loss.backward()
                else:
                    for e in (~torch.isfinite(loss.detach())).nonzero().flatten().tolist():
                        stop(e, f"training loss became {float(loss[e].detach())} at epoch {epoch + 1}")
                    if cfg.rule == "bptt":
                        loss[members.active.to(loss.device)].sum().backward()
                if dp is not None:  # summed: the gradient of the global batch's loss
                    dp.all_reduce_grads(model.parameters())
                if members is not None:  # per member: clipping, learning rate, stopped members left alone
                    members.step_(opt, cfg.grad_clip)
                else:
                    if cfg.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    opt.step()
                losses.append(loss.detach().cpu())
            model.eval()
            with torch.no_grad():
                out, states = forward(x_val)
                train_loss = sum(float(v) for v in losses) / len(losses) if E is None else \
                    torch.stack(losses).mean(dim=0)
                row["train_loss"] = train_loss if E is None else _values(train_loss)
                row["val_loss"] = _values(_losses(task, out, y_val, m_val, E))
                row[task.metric] = _scores(task, out, y_val, m_val, E)
                if hasattr(model, "spikes"):
                    spikes = model.spikes(states)
                    row["rate"] = float(spikes.mean()) if E is None else _values(spikes.transpose(0, 1).reshape(E, -1)
                                                                                 .mean(dim=1))
            if cfg.lyap_every and ((epoch + 1) % cfg.lyap_every == 0 or epoch + 1 == cfg.epochs):
                lam = _spectrum(model, task, cfg, 1, epoch + 1, device, dtype)
                row["lambda1"] = lam[0] if E is None else [None if v is None else v[0] for v in lam]
            if members is not None and members.stopped:
                row["stopped"] = members.stopped
            row["seconds"] = time.perf_counter() - t0
            state["metrics"].append(row)
            state["epoch"] = epoch + 1
            done_this_call += 1
            if main:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
            save()
            if bar is not None:
                bar.update(1)
                post = {"loss": f"{_mean(row['train_loss']):.3g}", task.metric[:3]: f"{_mean(row[task.metric]):.3f}"}
                if "lambda1" in row:
                    post["lambda1"] = f"{_mean(row['lambda1']):+.3f}"
                bar.set_postfix(post)
    except KeyboardInterrupt:
        # The checkpoint on disk is the last completed epoch (written at its end); say how to go on.
        if bar is not None:
            bar.close()
        log(f"interrupted after epoch {state['epoch']}; checkpoint {ckpt_path}; continue with --resume")
        raise
    if bar is not None:
        bar.close()
    if interrupted:
        return TrainResult(cfg, state["metrics"], {}, state["spectrum_before"], None, cfg.out, interrupted=True)
    after = _spectrum(model, task, cfg, k_spec, 10**6, device, dtype)
    last = state["metrics"][-1] if state["metrics"] else {}
    final = {task.metric: last.get(task.metric), "val_loss": last.get("val_loss"), "metric": task.metric,
             "higher_is_better": task.higher_is_better, "epochs": state["epoch"], "rule": cfg.rule,
             "local_flossing": cfg.local_flossing}
    result = {"config": cfg.to_dict(), "final": final, "spectrum_before": state["spectrum_before"],
              "spectrum_after": after, "preflossing": state["preflossing"],
              "lambda1_start": state.get("lambda1_start"), "versions": _versions()}
    if E is not None:
        result["members"] = _member_results(cfg, task, state, after)
        result["aggregate"] = _aggregate(cfg, task, result["members"])
        final[task.metric], final["val_loss"] = result["aggregate"]["mean"], _mean(last.get("val_loss"))
    if dp is not None:
        result["parallel"] = {"processes": dp.world, "backend": dp.backend}
    if not main:
        return TrainResult(cfg, state["metrics"], final, state["spectrum_before"], after, cfg.out)
    atomic_json(result, os.path.join(cfg.out, "result.json"))
    _plots(cfg, task, model, state, after, x_val, device)
    log(f"{cfg.task} (delay {cfg.delay}), {cfg.model} N={cfg.N}, rule={cfg.rule}, flossing={cfg.flossing}"
        f"{' (local)' if cfg.local_flossing else ''}: "
        + (f"{task.metric} {final[task.metric]:.3f} after {state['epoch']} epochs" if E is None else
           f"{task.metric} {_aggregate_line(result['aggregate'])} over {E} members after {state['epoch']} epochs"))
    if E is None:
        log("spectrum before: " + _fmt(state["spectrum_before"]))
        log("spectrum after:  " + _fmt(after))
    log(f"wrote {cfg.out}/ (config.json, metrics.jsonl, checkpoint.pt, result.json, plots)")
    return TrainResult(cfg, state["metrics"], final, state["spectrum_before"], after, cfg.out)


def _union_schedule(schedules: list) -> FlossingSchedule:
    """An ensemble's bouts: every bout of any member's schedule (members share pre_steps, floss_every,
    floss_steps and floss_times, and differ only in which of the bouts they take part in)."""
    during = [s for s in schedules if s.times]
    d = during[0] if during else FlossingSchedule()
    return FlossingSchedule(pre_steps=max(s.pre_steps for s in schedules), every=d.every, steps=d.steps,
                            times=d.times)


def _no_log(_message: str) -> None:
    pass


def _mean(v) -> float:
    """A float, or the mean of a per-member list ignoring ``None`` (stopped members)."""
    if not isinstance(v, list):
        return float("nan") if v is None else float(v)
    vals = [float(u) for u in v if u is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def _member_results(cfg: TrainConfig, task, state: dict, after: list) -> list[dict]:
    """``result.json``'s ``members``: each member's seed, settings (:data:`MEMBER_FIELDS`) and final values,
    as its solo run reports them."""
    last = state["metrics"][-1] if state["metrics"] else {}
    out = []
    for e, settings in enumerate(member_settings(cfg)):
        stopped = state["stopped"].get(str(e))
        final = {task.metric: None if stopped else (last.get(task.metric) or [None] * cfg.ensemble)[e],
                 "val_loss": None if stopped else (last.get("val_loss") or [None] * cfg.ensemble)[e],
                 "metric": task.metric, "higher_is_better": task.higher_is_better, "epochs": state["epoch"],
                 "rule": cfg.rule, "local_flossing": cfg.local_flossing}
        out.append({"seed": settings["seed"], "settings": settings, "final": final, "stopped": stopped,
                    "spectrum_before": state["spectrum_before"][e], "spectrum_after": after[e]})
    return out


def _aggregate(cfg: TrainConfig, task, members: list[dict]) -> dict:
    """Mean, standard deviation and (given ``cfg.success``) success rate of the members' final metric;
    stopped members count as failures and are left out of mean and std."""
    values = [m["final"][task.metric] for m in members if m["stopped"] is None]
    n = len(values)
    mean = sum(values) / n if n else None
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else (0.0 if n else None)
    succ = None
    if cfg.success is not None:
        ok = [v >= cfg.success if task.higher_is_better else v <= cfg.success for v in values]
        succ = sum(ok) / len(members)
    return {"metric": task.metric, "mean": mean, "std": std, "members": len(members), "completed": n,
            "stopped": len(members) - n, "success": cfg.success, "success_rate": succ}


def _aggregate_line(agg: dict) -> str:
    text = "n/a" if agg["mean"] is None else f"{agg['mean']:.3f} +- {agg['std']:.3f}"
    if agg["success_rate"] is not None:
        text += f", success rate {agg['success_rate']:.2f} at {agg['success']:g}"
    return text + (f", {agg['stopped']} stopped" if agg["stopped"] else "")


def _check_finite(loss: torch.Tensor, epoch: int) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss became {float(loss)} at epoch {epoch + 1}; lower "
                                 "--lr, set --grad-clip, or lower --g")


def _fmt(values, n: int = 6) -> str:
    """Leading values ``+0.123 ...``; per-member lists as their mean over members (``None`` left out)."""
    values = values or []
    if values and isinstance(values[0], list) or (values and values[0] is None):
        cols = [[m[i] for m in values if m is not None and m[i] is not None] for i in range(len(next(
            (m for m in values if m is not None), [])))]
        return " ".join(f"{sum(c) / len(c):+.3f}" if c else "nan" for c in cols[:n]) + f" (mean of {len(values)} members)"
    return " ".join(f"{v:+.3f}" for v in values[:n])


def _versions() -> dict:
    import platform

    from . import __version__

    return {"surroflos": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


def _progress_bar(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="training", unit="epoch", dynamic_ncols=True, disable=None)


def _plots(cfg: TrainConfig, task, model, state: dict, after: list, x_val: torch.Tensor, device) -> None:
    """learning_curve.png, spectrum.png, lambda1.png and (spiking models) raster.png; an ensemble's show
    every member (one line each; spectra: one curve per member)."""
    rows = state["metrics"]
    ep = [r["epoch"] for r in rows]
    E = cfg.ensemble
    lw = 1.5 if E is None else 0.8
    fig, (a1, a2) = plotting.figure(2)
    for key, color, label in (("train_loss", "C0", "train"), ("val_loss", "C1", "validation")):
        lines = a1.plot(ep, _series(rows, key), color=color, lw=lw)
        lines[0].set_label(label)
    a1.set_xlabel("epoch")
    a1.set_ylabel("loss")
    a1.set_yscale("log")
    a1.legend()
    a2.plot(ep, _series(rows, task.metric), color="C2", lw=lw)
    a2.set_xlabel("epoch")
    a2.set_ylabel(task.metric)
    a2.set_title(f"{cfg.task}, delay {cfg.delay}, flossing {cfg.flossing}"
                 + ("" if E is None else f", {E} members (seeds {_seed_range(member_seeds(cfg))})"))
    plotting.save_figure(fig, os.path.join(cfg.out, "learning_curve.png"))

    fig, (ax,) = plotting.figure(1)
    as_rows = (lambda v: torch.tensor([v])) if E is None else (lambda v: torch.tensor(_nan(v)))  # noqa: E731
    plotting.plot_spectra(ax, {"before training": as_rows(state["spectrum_before"]),
                               "after training": as_rows(after)},
                          title=f"{cfg.model} N={cfg.N}: Lyapunov spectrum", unit="1/step")
    plotting.save_figure(fig, os.path.join(cfg.out, "spectrum.png"))

    lam = [(r["epoch"], r["lambda1"]) for r in rows if "lambda1" in r]
    if state.get("lambda1_start") is not None:
        lam.insert(0, (0, state["lambda1_start"]))  # after preflossing, before the first epoch
    if lam:
        fig, (ax,) = plotting.figure(1)
        ax.plot([e for e, _ in lam], _nan([v for _, v in lam]), marker=".", lw=lw)
        ax.axhline(cfg.target if cfg.flossing != "none" else 0.0, color="gray", lw=0.8, ls="--")
        for r in rows:
            if "flossing" in r:
                ax.axvline(r["epoch"] - 0.5, color="C3", lw=0.8, alpha=0.6)
        ax.set_xlabel("epoch")
        ax.set_ylabel("$\\lambda_1$")
        ax.set_title("largest Lyapunov exponent during training" + (" (red: flossing bouts)" if cfg.flossing == "during" else "")
                     + ("\nepoch 0: after preflossing" if cfg.flossing != "none" and cfg.pre_steps else ""))
        plotting.save_figure(fig, os.path.join(cfg.out, "lambda1.png"))

    if hasattr(model, "spikes"):
        from .models.balanced import plot_raster

        with torch.no_grad():
            _, states = model(x_val[:, :1] if E is None else x_val[:, :, :1])
        spikes = model.spikes(states) if E is None else model.spikes(states)[:, 0]  # (member 0's)
        unit = "s" if cfg.model == "balanced" else "steps"  # SpikingRNN counts time in steps (dt = 1)
        plot_raster(spikes.cpu(), float(model.dt), os.path.join(cfg.out, "raster.png"),
                    title=f"{cfg.model}: spikes on one validation trial"
                    + ("" if E is None else f" (member 0, seed {member_seeds(cfg)[0]})"),
                    time_unit=unit)


def _seed_range(seeds: list) -> str:
    """``0-15`` for consecutive seeds, else the first few listed."""
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds[:6])) + (" ..." if len(seeds) > 6 else "")


def _nan(v):
    """JSON values (``None`` for missing) as floats with NaN, nested lists kept."""
    return [_nan(u) for u in v] if isinstance(v, list) else (float("nan") if v is None else v)


def _series(rows: list, key: str) -> list:
    """Per-epoch values of ``key``: floats, or per-member lists (NaN where a member has none)."""
    return [_nan(r.get(key)) for r in rows]
