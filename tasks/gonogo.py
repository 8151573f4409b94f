"""Delayed context-dependent go/no-go: ``gonogo_temporal`` and ``gonogo_spatial``.

Source: Engelken & Abbott (seed 000, Fig. 2B/D-H): a context signal and a stimulus decide whether to
respond ("go") or not ("no-go"), and the answer is given after a delay ``d``. In the *temporal*
version context and stimulus come one after the other; in the *spatial* version together. The
channel layout, rule and timing below are this library's concrete choice (the seed gives none).

Rule: two contexts (A, B) and two stimuli (1, 2); go when (A, 1) or (B, 2), no-go otherwise. Neither
the context nor the stimulus alone predicts the answer (it is their XOR), so the context has to be
combined with the stimulus. Times are in steps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from .base import Task, check_int, check_T, randint, register


def trial_accuracy(outputs: Tensor, targets: Tensor, mask: Tensor) -> float:
    """Fraction of trials whose mean masked output is on the same side of 0.5 as the target."""
    m = mask.to(outputs.dtype).unsqueeze(-1)
    n = m.sum(0).clamp(min=1.0)
    out = (outputs * m).sum(0) / n
    tgt = (targets.to(outputs.dtype) * m).sum(0) / n
    keep = mask.any(0)
    return float(((out > 0.5) == (tgt > 0.5))[keep].to(torch.float64).mean())


class _GoNoGo(Task):
    kind = "regression"
    metric = "accuracy"
    higher_is_better = True
    temporal: bool

    def _setup(self, p: dict[str, Any]) -> dict[str, Any]:
        p["delay"] = check_int(self.name, "delay", p["delay"], 1)
        p["pulse"] = check_int(self.name, "pulse", p["pulse"], 1)
        p["response"] = check_int(self.name, "response", p["response"], 1)
        gap = check_int(self.name, "gap", p["gap"], 0) if self.temporal else 0
        if self.temporal:
            p["gap"] = gap
            self.context_on = (0, p["pulse"])
            self.stimulus_on = (p["pulse"] + gap, 2 * p["pulse"] + gap)
        else:
            self.context_on = self.stimulus_on = (0, p["pulse"])
        last_stimulus = self.stimulus_on[1] - 1
        self.response_on = (last_stimulus + p["delay"], last_stimulus + p["delay"] + p["response"])
        p["T"] = check_T(self.name, p["T"], self.response_on[1],
                         "the response window (last stimulus step + delay + response)")
        self.n_in, self.n_out = 4, 1
        return p

    def _generate(self, batch, generator, device):
        T = self.params["T"]
        context = randint(2, (batch,), generator, device)
        stimulus = randint(2, (batch,), generator, device)
        go = context == stimulus
        x = torch.zeros(T, batch, 4, device=device)
        x[self.context_on[0]:self.context_on[1], :, 0:2] = F.one_hot(context, 2).float()
        x[self.stimulus_on[0]:self.stimulus_on[1], :, 2:4] = F.one_hot(stimulus, 2).float()
        y = torch.zeros(T, batch, 1, device=device)
        r0, r1 = self.response_on
        y[r0:r1, :, 0] = go.float()
        mask = torch.zeros(T, batch, dtype=torch.bool, device=device)
        mask[r0:r1] = True
        return x, y, mask, {"context": context, "stimulus": stimulus, "go": go}

    def _score(self, outputs, targets, mask):
        return trial_accuracy(outputs, targets, mask)


_DOC_COMMON = """
    Inputs ``[T, B, 4]``: channels 0/1 = context A/B (one-hot), 2/3 = stimulus 1/2 (one-hot).
    Targets ``[T, B, 1]``: 1 (go) or 0 (no-go) during the response window
    ``[s + delay, s + delay + response)``, ``s`` = last stimulus step (a stimulus at step ``s`` is
    answered at ``s + delay``, as in ``y[t] = x[t - d]``); 0 elsewhere (regression, MSE).
    Mask: the response window.
    Metric: accuracy per trial (mean output over the window thresholded at 0.5).
    Per-trial info: ``context``, ``stimulus`` (``[B]`` int64, 0/1) and ``go`` (``[B]`` bool).
"""


@register
class GoNoGoTemporal(_GoNoGo):
    __doc__ = """Temporal context-dependent go/no-go: context, then stimulus, then the delayed answer.

    Context on ``[0, pulse)``, stimulus on ``[pulse + gap, 2 pulse + gap)``.
    """ + _DOC_COMMON + """
    Parameters: ``delay=20``, ``pulse=1``, ``gap=0`` (steps between context and stimulus),
    ``response=5``, ``T=None`` (the end of the response window; longer pads).
    """

    name = "gonogo_temporal"
    temporal = True
    defaults = {"delay": 20, "pulse": 1, "gap": 0, "response": 5, "T": None}


@register
class GoNoGoSpatial(_GoNoGo):
    __doc__ = """Spatial context-dependent go/no-go: context together with the stimulus, then the
    delayed answer.

    Context and stimulus both on ``[0, pulse)``.
    """ + _DOC_COMMON + """
    Parameters: ``delay=20``, ``pulse=1``, ``response=5``, ``T=None`` (the end of the response window;
    longer pads).
    """

    name = "gonogo_spatial"
    temporal = False
    defaults = {"delay": 20, "pulse": 1, "response": 5, "T": None}


__all__ = ["GoNoGoTemporal", "GoNoGoSpatial", "trial_accuracy"]
