"""k-bit flip-flop (Sussillo & Barak, Neural Computation 25, 2013; listed in seed 002).

Each of ``bits`` input channels receives brief +1/-1 pulses at random times; the matching output
channel must hold the sign of the most recent pulse on its channel until the next one arrives, so
the network has to store ``bits`` independent bits indefinitely (2^bits stable states).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Task, check_float, check_int, level_accuracy, rand, register


@register
class FlipFlop(Task):
    """k-bit flip-flop memory.

    Inputs ``[T, B, bits]``: on each channel and step independently, a pulse with probability ``p``,
    of sign +1 or -1 with equal probability; 0 otherwise.
    Targets ``[T, B, bits]``: channel ``k`` at step ``t`` is the value of the last pulse on channel
    ``k`` at or before ``t``, 0 before its first pulse (regression, MSE).
    Mask: every step.
    Metric: accuracy, the fraction of output entries whose nearest level in ``{-1, 0, 1}`` is the target.

    Parameters: ``bits=3``, ``p=0.05`` (pulse probability per step and channel), ``T=300`` (steps).
    """

    name = "flipflop"
    kind = "regression"
    metric = "accuracy"
    higher_is_better = True
    defaults = {"bits": 3, "p": 0.05, "T": 300}

    def _setup(self, p: dict[str, Any]) -> dict[str, Any]:
        p["bits"] = check_int(self.name, "bits", p["bits"], 1)
        p["p"] = check_float(self.name, "p", p["p"], 0.0)
        if p["p"] > 1.0:
            raise ValueError(f"{self.name}: p must be a probability in [0, 1], got {p['p']}")
        p["T"] = check_int(self.name, "T", p["T"], 1)
        self.n_in = self.n_out = p["bits"]
        return p

    def _generate(self, batch, generator, device):
        T, k = self.params["T"], self.params["bits"]
        on = rand((T, batch, k), generator, device) < self.params["p"]
        sign = torch.where(rand((T, batch, k), generator, device) < 0.5, 1.0, -1.0)
        x = on * sign
        # Index of the latest pulse at or before t (-1 before the first): a running max over time.
        t = torch.arange(T, device=device).view(T, 1, 1)
        last = torch.where(on, t, torch.full_like(t, -1)).cummax(0).values
        y = torch.gather(x, 0, last.clamp(min=0)) * (last >= 0)
        mask = torch.ones(T, batch, dtype=torch.bool, device=device)
        return x, y, mask, {}

    def _score(self, outputs, targets, mask):
        return level_accuracy(outputs, targets, mask, (-1.0, 0.0, 1.0))


__all__ = ["FlipFlop"]
