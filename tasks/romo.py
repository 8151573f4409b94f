"""Romo delayed comparison, the variant of Schuessler et al. (NeurIPS 2020) used by seed 003.

Sources: Romo et al., Nature 399 (1999) for the task; Schuessler, Mastrogiuseppe, Dubreuil, Ostojic &
Barak, "The interplay between randomness and structure during learning in RNNs" (NeurIPS 2020) for
this variant, as trained by Zhang, Liu & Liu (seed 003); SCIENCE.md section 5.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import Task, check_bool, check_float, check_T, rand, register, to_steps


@register
class Romo(Task):
    """Romo task: which of two pulses, separated by a random gap, was larger?

    Times are in units of the network time constant tau, discretised with step ``dt``: each duration
    is rounded to the nearest step, the random gap is floored (``int(gap / dt)``) as in the reference.

    Trial: fixation (``fixation = 3``), pulse 1 (length ``pulse = 1``, amplitude ``u1``), gap
    ``U[gap_min, gap_max] = U[2, 8]``, pulse 2 (``u2``), decision delay (``delay = 5``), decision window
    (``window = 10``). Amplitudes ``U[amp_min, amp_max] = U[0.5, 1.5]`` with ``|u1 - u2| >= min_diff =
    0.2``: uniform on that region, drawn exactly (no rejection loop).

    Inputs ``[T, B, 1]``: the two pulses. Targets ``[T, B, 2]``: during the decision window the output
    unit of the larger pulse (0 = first, 1 = second) is ``target = 0.5``, the other 0; 0 elsewhere
    (regression, MSE). Mask: the decision window and, with ``fixate=True`` (reference default), every
    step up to the end of the second pulse (output held at 0). The decision delay is never masked.
    Metric: accuracy, per masked decision step, of ``argmax(outputs) == the larger pulse's unit``.
    ``T`` defaults to the longest trial, ``fix + 2 pulse + gap_max + delay + window`` = 56 steps at
    ``dt = 0.5``; shorter trials are padded (unmasked).
    Per-trial info: ``amplitudes [B, 2]``, ``gap_steps [B]`` (int64), ``larger [B]`` (int64, 0/1).
    """

    name = "romo"
    kind = "regression"
    metric = "accuracy"
    higher_is_better = True
    defaults = {"dt": 0.5, "fixation": 3.0, "pulse": 1.0, "gap_min": 2.0, "gap_max": 8.0, "delay": 5.0,
                "window": 10.0, "amp_min": 0.5, "amp_max": 1.5, "min_diff": 0.2, "target": 0.5,
                "fixate": True, "T": None}

    def _setup(self, p: dict[str, Any]) -> dict[str, Any]:
        n = self.name
        dt = p["dt"] = check_float(n, "dt", p["dt"], 0.0, strict=True)
        for key in ("fixation", "pulse", "gap_min", "gap_max", "delay", "window", "min_diff"):
            p[key] = check_float(n, key, p[key], 0.0)
        for key in ("amp_min", "amp_max"):
            p[key] = check_float(n, key, p[key])
        p["target"] = check_float(n, "target", p["target"], 0.0, strict=True)
        p["fixate"] = check_bool(n, "fixate", p["fixate"])
        if p["gap_max"] < p["gap_min"]:
            raise ValueError(f"{n}: gap_max ({p['gap_max']}) must be >= gap_min ({p['gap_min']})")
        if p["amp_max"] - p["amp_min"] <= p["min_diff"]:
            raise ValueError(f"{n}: amp_max - amp_min ({p['amp_max'] - p['amp_min']}) must exceed "
                             f"min_diff ({p['min_diff']})")
        self.fix_steps = to_steps(n, "fixation", p["fixation"], dt)
        self.pulse_steps = to_steps(n, "pulse", p["pulse"], dt, 1)
        self.delay_steps = to_steps(n, "delay", p["delay"], dt)
        self.window_steps = to_steps(n, "window", p["window"], dt, 1)
        # floor as the reference does; the tiny slack keeps e.g. 8 / 0.5 from flooring to 15.
        self.gap_min_steps = int(math.floor(p["gap_min"] / dt + 1e-9))
        self.gap_max_steps = int(math.floor(p["gap_max"] / dt + 1e-9))
        longest = (self.fix_steps + 2 * self.pulse_steps + self.gap_max_steps + self.delay_steps
                   + self.window_steps)
        p["T"] = check_T(n, p["T"], longest, "the longest trial (fixation + 2 pulse + gap_max + delay + window)")
        self.n_in, self.n_out = 1, 2
        return p

    def _generate(self, batch, generator, device):
        p = self.params
        T, dt = p["T"], p["dt"]
        lo, hi, m = p["amp_min"], p["amp_max"], p["min_diff"]
        # Uniform on {lo <= u <= hi, |u1 - u2| >= m}: (small - lo, hi - big) is uniform on the
        # triangle a + b <= (hi - lo) - m (fold the unit square onto its lower triangle), and which
        # pulse is the larger one is a fair coin.
        a, b, coin, g = rand((4, batch), generator, device)
        fold = a + b > 1.0
        a, b = torch.where(fold, 1.0 - a, a), torch.where(fold, 1.0 - b, b)
        side = (hi - lo) - m
        small, big = lo + side * a, hi - side * b
        larger = (coin < 0.5).long()  # 0: first pulse larger, 1: second
        u1 = torch.where(larger == 0, big, small)
        u2 = torch.where(larger == 0, small, big)
        gap = p["gap_min"] + (p["gap_max"] - p["gap_min"]) * g
        gap_steps = torch.floor(gap / dt).long().clamp(self.gap_min_steps, self.gap_max_steps)

        t = torch.arange(T, device=device).unsqueeze(1)  # [T, 1] against per-trial times [B]
        s1 = self.fix_steps
        s2 = s1 + self.pulse_steps + gap_steps  # [B]
        on1 = (t >= s1) & (t < s1 + self.pulse_steps)
        on2 = (t >= s2) & (t < s2 + self.pulse_steps)
        r0 = s2 + self.pulse_steps + self.delay_steps
        window = (t >= r0) & (t < r0 + self.window_steps)
        x = (on1 * u1 + on2 * u2).unsqueeze(-1)
        y = torch.zeros(T, batch, 2, device=device)
        y[..., 0] = p["target"] * (window & (larger == 0))
        y[..., 1] = p["target"] * (window & (larger == 1))
        mask = window
        if p["fixate"]:
            mask = mask | (t < s2 + self.pulse_steps)
        info = {"amplitudes": torch.stack([u1, u2], 1), "gap_steps": gap_steps, "larger": larger}
        return x, y, mask, info

    def _score(self, outputs, targets, mask):
        decide = mask & (targets.max(-1).values > 0)
        if not bool(decide.any()):
            return float("nan")
        hit = outputs[decide].argmax(-1) == targets[decide].argmax(-1)
        return float(hit.to(torch.float64).mean())


__all__ = ["Romo"]
