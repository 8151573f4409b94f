"""Flossing a sparse balanced LIF network toward the edge of chaos (examples/balanced_flossing.py).

Exponents here are per membrane time constant: ``lambda_1 [1/s] * tau_m``. The "after" value is always a
fresh held-out estimate (new initial states and frames, longer window, no gradient), never the last
training estimate. The fast test checks that flossing at least halves |lambda_1|; the slow test checks
that the full run ends within 0.1 of 0.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "balanced_flossing.py"


def _example():
    spec = importlib.util.spec_from_file_location("balanced_flossing_example", _EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_balanced_flossing_halves_lambda1_fast():
    ex = _example()
    torch.manual_seed(0)
    net = ex.build(seed=0)
    before, se_b = ex.held_out_lambda1(net, seed=11, T=400)
    assert before > 0.4, f"the unflossed network should be clearly chaotic, lambda_1 tau_m = {before:.3f}"
    lams, _ = ex.floss_adaptive(net, 80, seed=12)
    assert all(torch.isfinite(torch.tensor(lams)))
    after, se_a = ex.held_out_lambda1(net, seed=13, T=400)  # fresh trajectories
    assert abs(after) <= 0.5 * abs(before), (
        f"flossing should at least halve |lambda_1|: before {before:+.3f} +- {se_b:.3f}, "
        f"after {after:+.3f} +- {se_a:.3f} (per tau_m)")
    rate = ex.mean_rate(net, seed=14, steps=1000, batch=2)[0]
    assert 1.0 < rate < 200.0, f"the flossed network should stay active and asynchronous-ish, rate {rate:.1f} Hz"


@pytest.mark.slow
def test_balanced_flossing_reaches_edge_of_chaos():
    ex = _example()
    torch.manual_seed(0)
    net = ex.build(seed=0)
    before, _ = ex.held_out_lambda1(net, seed=21)
    assert before > 0.4
    ex.floss_adaptive(net, 300, seed=22)
    after, se = ex.held_out_lambda1(net, seed=23, T=1200, batch=16)  # fresh, longer held-out estimate
    assert abs(after) < 0.1, f"lambda_1 tau_m after flossing = {after:+.3f} +- {se:.3f}, expected within 0.1 of 0"
    rate = ex.mean_rate(net, seed=24)[0]
    assert 1.0 < rate < 200.0, f"rate {rate:.1f} Hz"
