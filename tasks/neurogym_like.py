"""NeuroGym-like decision tasks with NeuroGym's default settings: ``2afc`` and ``dms``.

Source: NeuroGym (Molano-Mazon et al. 2022), environments ``PerceptualDecisionMaking`` and
``DelayMatchSample`` with their default timing, coherences and noise, as used by Zhang, Liu & Liu
(seed 003, Fig. 2). Reimplemented here as batched, vectorised supervised datasets (no gym loop).

Conventions shared with NeuroGym's supervised setting: durations in ms with step ``dt = 100`` ms
(rounded to the nearest step); input channel 0 is the fixation cue, the next ``dim_ring`` channels the
stimulus ring; the label is class 0 ("fixate") outside the decision period and the correct action
(1, 2, ...) inside it; input noise ``N(0, (sigma / sqrt(dt))^2)`` per step on the stimulus channels
while a stimulus is shown. ``T`` defaults to the trial length; longer ``T`` pads (unmasked).

Loss: cross-entropy over the mask, which covers the whole trial (``mask_fixation=True``, NeuroGym's
supervised targets, fixation steps included) or only the decision period (``mask_fixation=False``).
Metric: accuracy, per step, of ``argmax(outputs)`` over the masked decision steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .base import (Task, check_bool, check_float, check_int, check_T, decision_accuracy, randint, randn,
                   register, to_steps)


class _NeuroGymLike(Task):
    kind = "classification"
    metric = "accuracy"
    higher_is_better = True
    periods: tuple[str, ...]
    required: tuple[str, ...]  # periods that need at least one step

    def _setup(self, p: dict[str, Any]) -> dict[str, Any]:
        n = self.name
        dt = p["dt"] = check_float(n, "dt", p["dt"], 0.0, strict=True)
        self.steps: dict[str, int] = {}
        for key in self.periods:
            p[key] = check_float(n, key, p[key], 0.0)
            self.steps[key] = to_steps(n, key, p[key], dt, 1 if key in self.required else 0)
        p["sigma"] = check_float(n, "sigma", p["sigma"], 0.0)
        p["dim_ring"] = check_int(n, "dim_ring", p["dim_ring"], 2)
        p["mask_fixation"] = check_bool(n, "mask_fixation", p["mask_fixation"])
        # Period boundaries [start, end) in steps, in trial order.
        self.bounds: dict[str, tuple[int, int]] = {}
        t = 0
        for key in self.periods:
            self.bounds[key] = (t, t + self.steps[key])
            t += self.steps[key]
        self.trial_steps = t
        p["T"] = check_T(n, p["T"], t, "the trial (" + " + ".join(self.periods) + ")")
        self.noise_std = p["sigma"] / math.sqrt(dt)
        self.n_in = 1 + p["dim_ring"]
        self.theta = [2 * math.pi * k / p["dim_ring"] for k in range(p["dim_ring"])]
        return p

    def _mask(self, batch: int, device: torch.device) -> torch.Tensor:
        mask = torch.zeros(self.params["T"], batch, dtype=torch.bool, device=device)
        if self.params["mask_fixation"]:
            mask[:self.trial_steps] = True
        else:
            d0, d1 = self.bounds["decision"]
            mask[d0:d1] = True
        return mask

    def _score(self, outputs, targets, mask):
        return decision_accuracy(outputs, targets, mask, fixation_class=0)


@register
class PerceptualDecisionMaking(_NeuroGymLike):
    """Two-alternative forced choice (NeuroGym ``PerceptualDecisionMaking``, Britten et al. 1992).

    Trial: fixation (100 ms), stimulus (2000 ms), delay (0 ms), decision (100 ms): 22 steps at
    ``dt = 100``. Ground truth ``g`` uniform over ``dim_ring = 2`` choices, coherence ``c`` uniform over
    ``cohs = (0, 6.4, 12.8, 25.6, 51.2)`` (with ``c = 0`` the label is a coin flip, as in NeuroGym).

    Inputs ``[T, B, 1 + dim_ring]``: channel 0 = 1 during fixation; stimulus channel ``k`` =
    ``cos(theta_k - theta_g) c / 200 + 0.5`` plus noise during the stimulus period
    (``theta_k = 2 pi k / dim_ring``, noise std ``sigma / sqrt(dt) = 0.1``).
    Targets ``[T, B]`` (int64): 0 outside the decision period, ``1 + g`` during it.
    Mask and metric: see the module docstring.
    Per-trial info: ``ground_truth [B]`` (int64, ``0 .. dim_ring - 1``), ``coherence [B]``.

    Parameters: ``dt=100``, ``fixation=100``, ``stimulus=2000``, ``delay=0``, ``decision=100`` (ms),
    ``cohs``, ``sigma=1.0``, ``dim_ring=2``, ``mask_fixation=True``, ``T=None``.
    """

    name = "2afc"
    periods = ("fixation", "stimulus", "delay", "decision")
    required = ("stimulus", "decision")
    defaults = {"dt": 100.0, "fixation": 100.0, "stimulus": 2000.0, "delay": 0.0, "decision": 100.0,
                "cohs": [0.0, 6.4, 12.8, 25.6, 51.2], "sigma": 1.0, "dim_ring": 2, "mask_fixation": True,
                "T": None}

    def _setup(self, p: dict[str, Any]) -> dict[str, Any]:
        p = super()._setup(p)
        cohs = p["cohs"]
        if isinstance(cohs, (str, bytes)) or not isinstance(cohs, Sequence) or len(cohs) == 0:
            raise ValueError(f"{self.name}: cohs must be a non-empty list of coherences, got {cohs!r}")
        p["cohs"] = [check_float(self.name, "each coherence", c, 0.0) for c in cohs]
        self.n_out = 1 + p["dim_ring"]
        return p

    def _generate(self, batch, generator, device):
        p = self.params
        T, ring = p["T"], p["dim_ring"]
        gt = randint(ring, (batch,), generator, device)
        cohs = torch.tensor(p["cohs"], device=device)
        coh = cohs[randint(len(p["cohs"]), (batch,), generator, device)]
        theta = torch.tensor(self.theta, device=device)
        mean = torch.cos(theta - theta[gt].unsqueeze(1)) * (coh / 200).unsqueeze(1) + 0.5  # [B, ring]
        s0, s1 = self.bounds["stimulus"]
        noise = randn((s1 - s0, batch, ring), generator, device) * self.noise_std
        x = torch.zeros(T, batch, self.n_in, device=device)
        f0, f1 = self.bounds["fixation"]
        x[f0:f1, :, 0] = 1.0
        x[s0:s1, :, 1:] = mean + noise
        y = torch.zeros(T, batch, dtype=torch.long, device=device)
        d0, d1 = self.bounds["decision"]
        y[d0:d1] = 1 + gt
        return x, y, self._mask(batch, device), {"ground_truth": gt, "coherence": coh}


@register
class DelayedMatchToSample(_NeuroGymLike):
    """Delayed match-to-sample (NeuroGym ``DelayMatchSample``, Miller et al. 1996).

    Trial: fixation (300 ms), sample (500), delay (1000), test (500), decision (900): 32 steps at
    ``dt = 100``. The sample direction is drawn uniformly from the ring ``theta_k = 2 pi k / dim_ring``;
    on match trials (probability 1/2) the test repeats it, otherwise it is the opposite direction
    (``+ pi``).

    Inputs ``[T, B, 1 + dim_ring]``: channel 0 = 1 during the whole trial except the decision period
    (its offset is the go cue); stimulus channel ``k`` = ``0.5 cos(theta_k - theta) + 0.5`` plus noise
    (std ``sigma / sqrt(dt) = 0.1``) during sample (``theta`` = sample) and test (``theta`` = test).
    Targets ``[T, B]`` (int64): 0 outside the decision period, 1 (match) or 2 (non-match) during it.
    Mask and metric: see the module docstring.
    Per-trial info: ``ground_truth [B]`` (1 match, 2 non-match), ``sample [B]`` (ring index).

    Parameters: ``dt=100``, ``fixation=300``, ``sample=500``, ``delay=1000``, ``test=500``,
    ``decision=900`` (ms), ``sigma=1.0``, ``dim_ring=2``, ``mask_fixation=True``, ``T=None``.
    """

    name = "dms"
    periods = ("fixation", "sample", "delay", "test", "decision")
    required = ("sample", "test", "decision")
    defaults = {"dt": 100.0, "fixation": 300.0, "sample": 500.0, "delay": 1000.0, "test": 500.0,
                "decision": 900.0, "sigma": 1.0, "dim_ring": 2, "mask_fixation": True, "T": None}

    def _setup(self, p: dict[str, Any]) -> dict[str, Any]:
        p = super()._setup(p)
        self.n_out = 3
        return p

    def _generate(self, batch, generator, device):
        p = self.params
        T, ring = p["T"], p["dim_ring"]
        gt = 1 + randint(2, (batch,), generator, device)  # 1 match, 2 non-match
        sample = randint(ring, (batch,), generator, device)
        theta = torch.tensor(self.theta, device=device)
        th_sample = theta[sample]
        th_test = torch.where(gt == 1, th_sample, torch.remainder(th_sample + math.pi, 2 * math.pi))
        stim_sample = 0.5 * torch.cos(theta - th_sample.unsqueeze(1)) + 0.5  # [B, ring]
        stim_test = 0.5 * torch.cos(theta - th_test.unsqueeze(1)) + 0.5
        a0, a1 = self.bounds["sample"]
        b0, b1 = self.bounds["test"]
        noise = randn((a1 - a0 + b1 - b0, batch, ring), generator, device) * self.noise_std
        x = torch.zeros(T, batch, self.n_in, device=device)
        d0, d1 = self.bounds["decision"]
        x[:d0, :, 0] = 1.0
        x[a0:a1, :, 1:] = stim_sample + noise[:a1 - a0]
        x[b0:b1, :, 1:] = stim_test + noise[a1 - a0:]
        y = torch.zeros(T, batch, dtype=torch.long, device=device)
        y[d0:d1] = gt
        return x, y, self._mask(batch, device), {"ground_truth": gt, "sample": sample}


__all__ = ["PerceptualDecisionMaking", "DelayedMatchToSample"]
