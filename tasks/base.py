"""The :class:`Task` interface, input encodings and the task registry.

A task generates batches of trials, time first::

    inputs  [T, B, n_in]   floating (the requested dtype)
    targets [T, B, n_out]  floating, for ``kind == "regression"`` (MSE)
            [T, B]         int64 class indices, for ``kind == "classification"`` (cross-entropy)
    mask    [T, B]         bool, the steps the loss and the metric look at

Every draw comes from the ``torch.Generator`` passed to :meth:`Task.sample` (the global RNG when it is
``None``), on the generator's device; the finished batch is then moved to ``device`` and cast to
``dtype``. The same seed therefore gives the same trials whatever ``device`` and ``dtype`` are asked
for. Generation is vectorised over the batch (no Python loop over trials).

Encodings (parameter ``encoding``, common to all tasks; they act on every input channel):

- ``"analog"``: the raw input.
- ``"poisson"``: Bernoulli spikes, ``P(spike at t) = clamp(rate * input, 0, 1)`` per step, drawn from
  the same generator after the trial itself (so the trial, targets and mask equal the analog ones).
  Negative inputs (noise of the NeuroGym-like tasks) give probability 0.
- ``"current"``: a constant current ``gain * input``.

Tasks are registered by name (:func:`names`, :func:`make`); ``make(name, **task.params)`` rebuilds a
task from its resolved parameters, which are plain JSON values.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

ENCODINGS = ("analog", "poisson", "current")
KINDS = ("regression", "classification")
METRICS = ("accuracy", "error")

# Parameters every task accepts (encodings for spiking networks).
COMMON_DEFAULTS: dict[str, Any] = {"encoding": "analog", "rate": 0.5, "gain": 1.0}

Batch = tuple[Tensor, Tensor, Tensor]


# ----------------------------------------------------------------------------------------------
# Parameter checks (all raise ValueError: a bad parameter is a bad value for make()).
# ----------------------------------------------------------------------------------------------

def check_int(task: str, name: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as a Python int (bools refused), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{task}: {name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{task}: {name} must be >= {minimum}, got {value}")
    return value


def check_float(task: str, name: str, value: Any, minimum: float | None = None, *,
                strict: bool = False) -> float:
    """``value`` as a finite Python float, ``>= minimum`` (``> minimum`` when ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ValueError(f"{task}: {name} must be a finite number, got {value!r}")
    value = float(value)
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{task}: {name} must be {'>' if strict else '>='} {minimum}, got {value}")
    return value


def check_bool(task: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{task}: {name} must be True or False, got {value!r}")
    return value


def check_T(task: str, T: Any, needed: int, why: str) -> int:
    """Resolve the sequence length: ``None`` means ``needed``; otherwise at least ``needed``."""
    if T is None:
        return needed
    T = check_int(task, "T", T, 1)
    if T < needed:
        raise ValueError(f"{task}: T ({T}) is too short: {why} needs T >= {needed}")
    return T


def to_steps(task: str, name: str, duration: float, dt: float, minimum: int = 0) -> int:
    """A duration in the task's time unit as a whole number of steps (nearest step)."""
    steps = int(round(duration / dt))
    if steps < minimum:
        raise ValueError(f"{task}: {name} ({duration}) is {steps} steps of dt = {dt}; needs >= {minimum}")
    return steps


# ----------------------------------------------------------------------------------------------
# The interface
# ----------------------------------------------------------------------------------------------

class Task:
    """A temporal task: trial generator, loss and metric.

    Subclasses set the class attributes ``name``, ``kind``, ``metric``, ``higher_is_better`` and
    ``defaults`` (their own parameters with default values) and implement :meth:`_setup` (validate
    parameters, set ``n_in``, ``n_out``, ``T``), :meth:`_generate` (one analog batch) and, where the
    metric is not the default one, :meth:`_score`.

    Attributes:
        name: registered name.
        n_in, n_out: input and output channels.
        T: time steps per trial.
        kind: ``"regression"`` (MSE on targets ``[T, B, n_out]``) or ``"classification"``
            (cross-entropy on class indices ``[T, B]``, outputs are logits ``[T, B, n_out]``).
        metric: ``"accuracy"`` (fraction correct, higher is better) or ``"error"`` (masked MSE,
            lower is better).
        higher_is_better: whether a larger :meth:`score` is better.
        params: the resolved parameters (plain JSON values); ``make(name, **params)`` rebuilds the task.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "regression"
    metric: ClassVar[str] = "error"
    higher_is_better: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}

    n_in: int
    n_out: int
    T: int
    params: dict[str, Any]

    def __init__(self, **params: Any) -> None:
        valid = {**self.defaults, **COMMON_DEFAULTS}
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ValueError(f"{self.name}: unknown parameter(s) {unknown}; valid parameters: {sorted(valid)}")
        self._given = frozenset(params)  # which parameters the caller set (some defaults depend on it)
        p = {**valid, **params}
        encoding = p["encoding"]
        if encoding not in ENCODINGS:
            raise ValueError(f"{self.name}: encoding must be one of {list(ENCODINGS)}, got {encoding!r}")
        p["rate"] = check_float(self.name, "rate", p["rate"], 0.0)
        p["gain"] = check_float(self.name, "gain", p["gain"])
        self.params = self._setup(p)
        self.T = self.params["T"]

    # -- to be provided by each task -----------------------------------------------------------
    def _setup(self, p: dict[str, Any]) -> dict[str, Any]:
        """Validate ``p``, set ``n_in``/``n_out`` and return the resolved parameters (with ``T``)."""
        raise NotImplementedError

    def _generate(self, batch: int, generator: torch.Generator | None,
                  device: torch.device) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """One analog batch on ``device``: float32 inputs, targets (float32 or int64), bool mask and
        per-trial variables (``[B, ...]`` tensors)."""
        raise NotImplementedError

    def _score(self, outputs: Tensor, targets: Tensor, mask: Tensor) -> float:
        return masked_mse(outputs, targets, mask)

    # -- public API ----------------------------------------------------------------------------
    def sample(self, batch: int, generator: torch.Generator | None = None, *,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Batch:
        """A batch of ``batch`` trials: ``(inputs [T, B, n_in], targets, mask [T, B])``.

        Args:
            batch: number of trials (a positive integer).
            generator: source of every random draw (its device is where the draws happen); ``None``
                uses torch's global RNG of ``device``.
            device: where the returned tensors live (default: the generator's device, else CPU).
            dtype: floating dtype of the inputs (and of regression targets).
        """
        inputs, targets, mask, _ = self.sample_with_info(batch, generator, device=device, dtype=dtype)
        return inputs, targets, mask

    def sample_with_info(self, batch: int, generator: torch.Generator | None = None, *,
                         device: torch.device | str | None = None,
                         dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """:meth:`sample` plus the per-trial variables (ground truth, coherence, amplitudes, ...) as a
        dict of ``[B, ...]`` tensors, e.g. for psychometric curves. Same draws as :meth:`sample`."""
        if isinstance(batch, bool) or not isinstance(batch, numbers.Integral):
            raise TypeError(f"{self.name}: batch must be an integer, got {batch!r}")
        if batch < 1:
            raise ValueError(f"{self.name}: batch must be a positive integer, got {batch}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"{self.name}: dtype must be a floating torch.dtype, got {dtype!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"{self.name}: generator must be a torch.Generator or None, got {type(generator)}")
        out_device = torch.device(device) if device is not None else None
        if generator is not None:
            gen_device = generator.device
        else:
            gen_device = out_device if out_device is not None else torch.device("cpu")
        if out_device is None:
            out_device = gen_device
        inputs, targets, mask, info = self._generate(int(batch), generator, gen_device)
        inputs = self.encode(inputs, generator)
        inputs = inputs.to(device=out_device, dtype=dtype)
        targets = targets.to(device=out_device, dtype=dtype if self.kind == "regression" else torch.long)
        mask = mask.to(device=out_device, dtype=torch.bool)
        info = {k: v.to(out_device) for k, v in info.items()}
        return inputs, targets, mask, info

    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Apply the task's ``encoding`` to analog inputs ``x`` (any shape, floating).

        ``"analog"`` returns ``x``; ``"current"`` returns ``gain * x``; ``"poisson"`` returns Bernoulli
        spikes (0./1. in ``x.dtype``) with probability ``clamp(rate * x, 0, 1)``, drawn from
        ``generator`` on its device.
        """
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"{self.name}: encode expects a floating tensor, got {type(x)}")
        encoding = self.params["encoding"]
        if encoding == "analog":
            return x
        if encoding == "current":
            return self.params["gain"] * x
        prob = (self.params["rate"] * x).clamp(0.0, 1.0)
        where = generator.device if generator is not None else x.device
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=where).to(x.device)
        return (u < prob).to(x.dtype)

    def loss(self, outputs: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
        """Scalar loss averaged over the masked steps: MSE (mean over masked steps and output
        channels) for regression, cross-entropy of logits ``outputs`` for classification."""
        self._check(outputs, targets, mask)
        if self.kind == "regression":
            return ((outputs[mask] - targets[mask]) ** 2).mean()
        return F.cross_entropy(outputs[mask], targets[mask])

    def score(self, outputs: Tensor, targets: Tensor, mask: Tensor) -> float:
        """The task's metric (see ``metric`` and the task's docstring) as a Python float."""
        self._check(outputs, targets, mask)
        with torch.no_grad():
            return float(self._score(outputs.detach(), targets, mask))

    # -- helpers -------------------------------------------------------------------------------
    def _check(self, outputs: Tensor, targets: Tensor, mask: Tensor) -> None:
        for what, t in (("outputs", outputs), ("targets", targets), ("mask", mask)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{self.name}: {what} must be a tensor, got {type(t)}")
        if outputs.dim() != 3 or outputs.shape[-1] != self.n_out:
            raise ValueError(f"{self.name}: outputs must be [T, B, {self.n_out}], got {list(outputs.shape)}")
        if not outputs.is_floating_point():
            raise TypeError(f"{self.name}: outputs must be floating, got {outputs.dtype}")
        if mask.dtype != torch.bool:
            raise TypeError(f"{self.name}: mask must be bool, got {mask.dtype}")
        if mask.shape != outputs.shape[:2]:
            raise ValueError(f"{self.name}: mask {list(mask.shape)} does not match outputs {list(outputs.shape)}")
        want = outputs.shape if self.kind == "regression" else outputs.shape[:2]
        if targets.shape != want:
            raise ValueError(f"{self.name}: targets must be {list(want)} for {self.kind}, got {list(targets.shape)}")
        if self.kind == "classification" and targets.dtype != torch.long:
            raise TypeError(f"{self.name}: classification targets must be int64, got {targets.dtype}")
        if not bool(mask.any()):
            raise ValueError(f"{self.name}: mask selects no step")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


# ----------------------------------------------------------------------------------------------
# Metrics shared by several tasks
# ----------------------------------------------------------------------------------------------

def masked_mse(outputs: Tensor, targets: Tensor, mask: Tensor) -> float:
    """Mean squared error over the masked steps and all output channels."""
    return float(((outputs[mask] - targets[mask].to(outputs.dtype)) ** 2).mean())


def level_accuracy(outputs: Tensor, targets: Tensor, mask: Tensor, levels: tuple[float, ...]) -> float:
    """Fraction of masked output entries whose nearest value in ``levels`` equals the target
    (for targets in ``{0, 1}`` this is thresholding at 0.5)."""
    lv = torch.tensor(levels, dtype=outputs.dtype, device=outputs.device)
    out = outputs[mask]
    tgt = targets[mask].to(outputs.dtype)
    pred = lv[(out.unsqueeze(-1) - lv).abs().argmin(-1)]
    return float((pred == tgt).to(torch.float64).mean())


def decision_accuracy(outputs: Tensor, targets: Tensor, mask: Tensor, fixation_class: int = 0) -> float:
    """Per-step accuracy of ``argmax(outputs)`` over the masked decision steps (target class other
    than ``fixation_class``); the fixation steps count in the loss, not in the metric."""
    sel = mask & (targets != fixation_class)
    if not bool(sel.any()):
        return float("nan")
    return float((outputs[sel].argmax(-1) == targets[sel]).to(torch.float64).mean())


# ----------------------------------------------------------------------------------------------
# Random draws on the generator's device
# ----------------------------------------------------------------------------------------------

def rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.rand(shape, generator=generator, device=device)


def randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.randn(shape, generator=generator, device=device)


def randint(high: int, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    return torch.randint(0, high, shape, generator=generator, device=device)


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: register a :class:`Task` subclass under ``cls.name``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"task name {cls.name!r} is empty or already registered")
    if cls.kind not in KINDS or cls.metric not in METRICS:
        raise ValueError(f"task {cls.name!r}: bad kind {cls.kind!r} or metric {cls.metric!r}")
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    """Sorted names of the registered tasks."""
    return sorted(_REGISTRY)


def make(name: str, **params: Any) -> Task:
    """Build the task registered as ``name`` with ``params`` (ValueError naming the valid names or
    parameters when either is wrong)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; valid names: {names()}")
    return _REGISTRY[name](**params)


def task_class(name: str) -> type[Task]:
    """The registered class of ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; valid names: {names()}")
    return _REGISTRY[name]


__all__ = ["Task", "ENCODINGS", "names", "make", "register", "task_class", "masked_mse", "level_accuracy",
           "decision_accuracy"]
