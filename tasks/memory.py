"""Delayed-recall tasks on bit streams and analog items: ``copy``, ``pwm``, ``xor``, ``parity``.

Source: Engelken & Abbott (seed 000, Fig. 2A/C: parametric working memory ``y_t = x_{t-d}``, d = 40)
and Engelken's gradient-flossing paper (delayed copy and delayed XOR ``y_t = x_{t-d/2} XOR x_{t-d}``);
the parity task generalises XOR to more taps. Times are in steps. The stream tasks default to
``T = 300`` (the reference training length, see SCIENCE.md section 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .base import Task, check_float, check_int, check_T, level_accuracy, rand, register


def _check_prob(task: str, value: Any) -> float:
    value = check_float(task, "p", value, 0.0)
    if value > 1.0:
        raise ValueError(f"{task}: p must be a probability in [0, 1], got {value}")
    return value


def _stream_T(task: str, p: dict[str, Any], delay: int) -> int:
    T = check_int(task, "T", p["T"], 1)
    if delay >= T:
        raise ValueError(f"{task}: delay ({delay}) must be < T ({T})")
    return T


@register
class Copy(Task):
    """Delayed copy of a bit stream, ``y[t] = x[t - delay]``.

    Inputs ``[T, B, items]``: i.i.d. bits, ``P(1) = p``, on ``items`` independent channels (one channel
    is the task of seed 000 Fig. 2A; several channels store several items at once).
    Targets ``[T, B, items]``: ``x[t - delay]`` for ``t >= delay``, else 0 (regression, MSE).
    Mask: ``t >= delay``.
    Metric: accuracy, the fraction of masked output entries on the right side of 0.5.

    Parameters: ``delay=40`` (steps, ``1 <= delay < T``), ``T=300``, ``items=1``, ``p=0.5``.
    """

    name = "copy"
    kind = "regression"
    metric = "accuracy"
    higher_is_better = True
    defaults = {"delay": 40, "T": 300, "items": 1, "p": 0.5}

    def _setup(self, p: dict[str, Any]) -> dict[str, Any]:
        p["delay"] = check_int(self.name, "delay", p["delay"], 1)
        p["T"] = _stream_T(self.name, p, p["delay"])
        p["items"] = check_int(self.name, "items", p["items"], 1)
        p["p"] = _check_prob(self.name, p["p"])
        self.n_in = self.n_out = p["items"]
        return p

    def _generate(self, batch, generator, device):
        T, d = self.params["T"], self.params["delay"]
        x = (rand((T, batch, self.n_in), generator, device) < self.params["p"]).float()
        y = torch.zeros_like(x)
        y[d:] = x[:T - d]
        mask = torch.zeros(T, batch, dtype=torch.bool, device=device)
        mask[d:] = True
        return x, y, mask, {}

    def _score(self, outputs, targets, mask):
        return level_accuracy(outputs, targets, mask, (0.0, 1.0))


@register
class ParametricWorkingMemory(Task):
    """Parametric working memory: recall ``items`` analog values after a delay.

    Inputs ``[T, B, 1]``: item ``i`` (value ``U[low, high]``) at step ``i``, ``i < items``; 0 elsewhere.
    Targets ``[T, B, 1]``: item ``i`` at step ``delay + i`` (that is, ``y[t] = x[t - delay]`` over the
    recall window), 0 elsewhere (regression, MSE).
    Mask: the recall window ``delay <= t < delay + items``.
    Metric: error, the masked MSE (seed 000 Fig. 2A/C reports the test error of this task).
    Per-trial info: ``values [B, items]``.

    Parameters: ``delay=40`` (steps, >= 1), ``items=1``, ``low=0.0``, ``high=1.0`` (non-negative by
    default so that the Poisson encoding can carry them), ``T=None`` (``delay + items``; longer pads).
    """

    name = "pwm"
    kind = "regression"
    metric = "error"
    higher_is_better = False
    defaults = {"delay": 40, "items": 1, "low": 0.0, "high": 1.0, "T": None}

    def _setup(self, p: dict[str, Any]) -> dict[str, Any]:
        p["delay"] = check_int(self.name, "delay", p["delay"], 1)
        p["items"] = check_int(self.name, "items", p["items"], 1)
        p["low"] = check_float(self.name, "low", p["low"])
        p["high"] = check_float(self.name, "high", p["high"])
        if p["high"] <= p["low"]:
            raise ValueError(f"{self.name}: high ({p['high']}) must be > low ({p['low']})")
        p["T"] = check_T(self.name, p["T"], p["delay"] + p["items"], "delay + items")
        self.n_in = self.n_out = 1
        return p

    def _generate(self, batch, generator, device):
        T, d, k = self.params["T"], self.params["delay"], self.params["items"]
        lo, hi = self.params["low"], self.params["high"]
        values = lo + (hi - lo) * rand((batch, k), generator, device)
        x = torch.zeros(T, batch, 1, device=device)
        y = torch.zeros(T, batch, 1, device=device)
        x[:k, :, 0] = values.T
        y[d:d + k, :, 0] = values.T
        mask = torch.zeros(T, batch, dtype=torch.bool, device=device)
        mask[d:d + k] = True
        return x, y, mask, {"values": values}


class _DelayedBoolean(Task):
    """Shared by xor and parity: ``y[t] = (sum_j x[t - lag_j]) mod 2`` on one bit stream."""

    kind = "regression"
    metric = "accuracy"
    higher_is_better = True
    lags: tuple[int, ...]

    def _generate(self, batch, generator, device):
        T, d = self.params["T"], max(self.lags)
        x = (rand((T, batch, 1), generator, device) < self.params["p"]).float()
        acc = torch.zeros(T - d, batch, 1, device=device)
        for lag in self.lags:  # a loop over the few taps, not over trials
            acc = acc + x[d - lag:T - lag]
        y = torch.zeros_like(x)
        y[d:] = torch.remainder(acc, 2.0)
        mask = torch.zeros(T, batch, dtype=torch.bool, device=device)
        mask[d:] = True
        return x, y, mask, {}

    def _score(self, outputs, targets, mask):
        return level_accuracy(outputs, targets, mask, (0.0, 1.0))


@register
class DelayedXOR(_DelayedBoolean):
    """Delayed XOR, ``y[t] = x[t - delay // 2] XOR x[t - delay]`` (Engelken's gradient flossing paper).

    Inputs ``[T, B, 1]``: i.i.d. bits, ``P(1) = p``.
    Targets ``[T, B, 1]``: the XOR for ``t >= delay``, else 0 (regression, MSE). Mask: ``t >= delay``.
    Metric: accuracy (masked outputs thresholded at 0.5).

    Parameters: ``delay=40`` (steps, ``2 <= delay < T``; odd delays use ``delay // 2``), ``T=300``,
    ``p=0.5``.
    """

    name = "xor"
    defaults = {"delay": 40, "T": 300, "p": 0.5}

    def _setup(self, p: dict[str, Any]) -> dict[str, Any]:
        p["delay"] = check_int(self.name, "delay", p["delay"], 2)
        p["T"] = _stream_T(self.name, p, p["delay"])
        p["p"] = _check_prob(self.name, p["p"])
        self.lags = (p["delay"] // 2, p["delay"])
        self.n_in = self.n_out = 1
        return p


@register
class DelayedParity(_DelayedBoolean):
    """Delayed parity, ``y[t] = (x[t - l_1] + ... + x[t - l_k]) mod 2``; XOR is two taps.

    ``taps`` is either the number of taps ``k``, spread over the delay as ``l_j = (delay * j) // k``,
    ``j = 1..k`` (so ``taps=2`` is the delayed XOR and ``taps=1`` the copy task), or the explicit list
    of distinct positive lags (then ``delay`` is their maximum).
    Inputs ``[T, B, 1]``: i.i.d. bits, ``P(1) = p``. Targets ``[T, B, 1]``: the parity for
    ``t >= delay``, else 0 (regression, MSE). Mask: ``t >= delay``. Metric: accuracy.

    Parameters: ``delay=40`` (steps, ``taps <= delay < T``), ``taps=3``, ``T=300``, ``p=0.5``.
    """

    name = "parity"
    defaults = {"delay": 40, "taps": 3, "T": 300, "p": 0.5}

    def _setup(self, p: dict[str, Any]) -> dict[str, Any]:
        taps = p["taps"]
        if isinstance(taps, Sequence) and not isinstance(taps, str):
            lags = [check_int(self.name, "each lag in taps", lag, 1) for lag in taps]
            if not lags or len(set(lags)) != len(lags):
                raise ValueError(f"{self.name}: taps must be a non-empty list of distinct lags, got {taps!r}")
            if "delay" in self._given and p["delay"] != max(lags):
                raise ValueError(f"{self.name}: delay ({p['delay']}) must equal max(taps) ({max(lags)}) "
                                 f"when taps lists the lags")
            p["delay"] = max(lags)
            p["taps"] = sorted(lags)
            self.lags = tuple(sorted(lags))
        else:
            k = check_int(self.name, "taps", taps, 1)
            p["delay"] = check_int(self.name, "delay", p["delay"], 1)
            if p["delay"] < k:
                raise ValueError(f"{self.name}: delay ({p['delay']}) must be >= taps ({k}) for distinct lags")
            self.lags = tuple((p["delay"] * j) // k for j in range(1, k + 1))
        p["T"] = _stream_T(self.name, p, p["delay"])
        p["p"] = _check_prob(self.name, p["p"])
        self.n_in = self.n_out = 1
        return p


__all__ = ["Copy", "ParametricWorkingMemory", "DelayedXOR", "DelayedParity"]
