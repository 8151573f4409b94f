"""Gradient flossing: the loss and its gradient, the schedule, ``floss`` and seed 000 Fig 1C/1D.

Fast tests run in CI (``pytest -m "not slow"``); the full Fig 1C/1D reproductions are marked slow.

Settings that reproduce Fig 1C/1D (see ``_FIG1_FLOSS`` and the notes there): rate networks N = 80,
discrete tanh map, one N(0, 1) input channel through N(0, 1) input weights (the reference's
``S = 1, wsS = 1``), Adam lr 1e-3, batch 16, T = 55 with 15 transient steps **and 15 frame-warm-up
steps**, 1000 steps. Without the frame warm-up (the reference's 55/15, frame started right after the
transient) the short estimate of a lambda_1 that flossing has lifted out of the bulk is biased low by
~0.05, so the flossed networks end with lambda_1 up to ~0.07 above their target.
"""

from __future__ import annotations


import pytest
import torch

import surroflos as sf
from surroflos.models.rate import RateParams, rate_step, rate_tangent

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rate_net(n_hidden=10, n_in=2, g=1.5, seed=0, dtype=F64, **kw) -> sf.RateRNN:
    return sf.RateRNN(n_in, n_hidden, 1, g=g, generator=gen(seed), dtype=dtype, **kw)


def long_estimate(model, k, *, seed=12345, T=1000, batch=8, transient=150, frame_warmup=150):
    """A fresh, long, held-out estimate of the k leading exponents (batch mean, no gradient)."""
    g = gen(seed)
    dtype = next(model.parameters()).dtype
    x = torch.randn(T, batch, model.n_in, generator=g, dtype=dtype)
    with torch.no_grad():
        res = sf.lyapunov_spectrum(model, x, k, transient=transient, frame_warmup=frame_warmup, generator=g)
    return res.exponents.mean(0)


def central_fd(f, tensor: torch.Tensor, index, eps: float = 1e-6) -> float:
    """Central finite difference of the scalar ``f()`` in ``tensor[index]`` (modified in place)."""
    with torch.no_grad():
        old = tensor[index].item()
        tensor[index] = old + eps
        fp = float(f())
        tensor[index] = old - eps
        fm = float(f())
        tensor[index] = old
    return (fp - fm) / (2 * eps)


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


# --------------------------------------------------------------------------------------------------
# 1. flossing_loss: value and gradient
# --------------------------------------------------------------------------------------------------

def test_loss_value_scalar_and_per_exponent_target():
    lam = torch.tensor([0.3, -0.1, -0.7], dtype=F64)
    assert sf.flossing_loss(lam).item() == pytest.approx(0.09 + 0.01 + 0.49)
    assert sf.flossing_loss(lam, -0.5).item() == pytest.approx(0.64 + 0.16 + 0.04)
    tgt = [0.3, 0.0, -1.0]
    assert sf.flossing_loss(lam, tgt).item() == pytest.approx(0.0 + 0.01 + 0.09)
    assert sf.flossing_loss(lam, torch.tensor(tgt)).item() == pytest.approx(0.01 + 0.09)
    # [B, k]: sum over exponents, mean over trajectories
    lam2 = torch.stack([lam, torch.zeros(3, dtype=F64)])
    expect = 0.5 * ((lam - torch.tensor(tgt, dtype=F64)) ** 2).sum() + 0.5 * (torch.tensor(tgt) ** 2).sum()
    assert sf.flossing_loss(lam2, tgt).item() == pytest.approx(expect.item())
    # [k] is the same as [1, k]
    assert sf.flossing_loss(lam, 0.2).item() == pytest.approx(sf.flossing_loss(lam[None], 0.2).item())
    out = sf.flossing_loss(lam2.float())
    assert out.ndim == 0 and out.dtype == torch.float32


@pytest.mark.parametrize("target", [[0.0, 1.0], [[0.0, 0.0, 0.0]], torch.zeros(4), torch.zeros(3, 1)])
def test_loss_bad_target_shape(target):
    with pytest.raises(ValueError, match="target"):
        sf.flossing_loss(torch.zeros(2, 3), target)


@pytest.mark.parametrize("bad", [torch.zeros(()), torch.zeros(2, 3, 4, 5), [0.1, 0.2], None])
def test_loss_bad_exponents(bad):
    with pytest.raises(ValueError, match="exponents"):
        sf.flossing_loss(bad)


@pytest.mark.parametrize("shape,target", [((5,), 0.0), ((4, 5), -0.5), ((4, 5), [0.1, 0.0, -0.2, -0.4, -1.0])])
def test_loss_gradient_wrt_exponents_matches_finite_differences(shape, target):
    lam = torch.randn(*shape, generator=gen(0), dtype=F64, requires_grad=True)
    sf.flossing_loss(lam, target).backward()
    flat = lam.detach().clone().view(-1)
    for i in range(flat.numel()):
        fd = central_fd(lambda: sf.flossing_loss(flat.view(shape), target), flat, i)
        assert rel_err(lam.grad.view(-1)[i].item(), fd) < 1e-5
    # and the closed form 2 (lambda - target) / B
    B = shape[0] if len(shape) == 2 else 1
    tgt = torch.as_tensor(target, dtype=F64)
    torch.testing.assert_close(lam.grad, 2 * (lam.detach() - tgt) / B)


def _fd_setup(seed=0):
    """A small chaotic rate network, fixed inputs, initial states and frame generator."""
    model = rate_net(n_hidden=10, n_in=2, g=1.5, seed=seed)
    g = gen(seed + 1)
    x = torch.randn(40, 3, 2, generator=g, dtype=F64)
    s0 = torch.randn(3, 10, generator=g, dtype=F64)
    return model, x, s0


def _entries(n, count, seed):
    idx = torch.randint(0, n, (count, 2), generator=gen(seed)).tolist()
    return [tuple(i) for i in idx]


@pytest.mark.parametrize("qr_every", [1, 3])
def test_loss_gradient_wrt_weight_rec_through_lyapunov_spectrum(qr_every):
    """The meaningful check: d L_floss / d J by backprop through the QR chain == central FD."""
    model, x, s0 = _fd_setup()
    target = torch.tensor([0.1, -0.2, -0.5], dtype=F64)

    def loss():
        res = sf.lyapunov_spectrum(model, x, 3, qr_every=qr_every, state0=s0, generator=gen(7))
        return sf.flossing_loss(res.exponents, target)

    loss().backward()
    grad = model.weight_rec.grad.clone()
    assert grad.abs().max() > 1e-3
    for ij in _entries(10, 6, seed=3):
        fd = central_fd(loss, model.weight_rec, ij)
        assert rel_err(grad[ij].item(), fd) < 1e-5, (ij, grad[ij].item(), fd)
    # input weights and bias get exact gradients too
    for p in (model.weight_in, model.bias):
        index = (0, 1) if p.ndim == 2 else (4,)
        fd = central_fd(loss, p, index)
        assert rel_err(p.grad[index].item(), fd) < 1e-5


def test_gradient_is_truncated_to_the_accumulation_window():
    """With ``transient > 0`` the state reaching the accumulation window is detached: the gradient
    equals that of a run started (transient = 0) from the detached post-transient state."""
    model, x, s0 = _fd_setup()
    t0 = 8
    res = sf.lyapunov_spectrum(model, x, 3, transient=t0, state0=s0, generator=gen(7))
    sf.flossing_loss(res.exponents).backward()
    g_trunc = model.weight_rec.grad.clone()
    model.zero_grad()
    with torch.no_grad():
        s = s0
        for t in range(t0):
            s = model.step(x[t], s)[1]
    res2 = sf.lyapunov_spectrum(model, x[t0:], 3, state0=s, generator=gen(7))
    torch.testing.assert_close(res2.exponents, res.exponents)
    sf.flossing_loss(res2.exponents).backward()
    torch.testing.assert_close(model.weight_rec.grad, g_trunc)


class _FrozenStateRate(sf.RecurrentModel):
    """Rate network whose state map uses a frozen copy of J while the tangent map uses the live J.

    Its exact gradient is what local flossing (``detach_state=True``) computes for the plain network.
    """

    def __init__(self, base: sf.RateRNN) -> None:
        super().__init__()
        self.base = base
        self.n_in, self.n_out, self.dt = base.n_in, base.n_out, base.dt
        self.frozen = RateParams(base.weight_rec.detach().clone(), base.weight_in.detach().clone(),
                                 base.bias.detach().clone(), base.dt, base.nonlinearity)

    @property
    def state_dim(self) -> int:
        return self.base.state_dim

    def params(self):
        return self.base.params(), self.frozen

    @staticmethod
    def step_function(x, s, p):
        return rate_step(x, s, p[1])

    @staticmethod
    def tangent_function(x, s, p, Q):
        return rate_tangent(x, s, p[0], Q)


def test_local_gradient_matches_finite_differences_of_frozen_trajectory():
    model, x, s0 = _fd_setup(seed=4)
    res = sf.lyapunov_spectrum(model, x, 2, state0=s0, generator=gen(7), detach_state=True)
    sf.flossing_loss(res.exponents, -0.3).backward()
    g_local = model.weight_rec.grad.clone()
    model.zero_grad()
    frozen = _FrozenStateRate(model)

    def loss():
        r = sf.lyapunov_spectrum(frozen, x, 2, state0=s0, generator=gen(7))
        return sf.flossing_loss(r.exponents, -0.3)

    torch.testing.assert_close(loss(), sf.flossing_loss(res.exponents.detach(), -0.3))
    for ij in _entries(10, 5, seed=5):
        fd = central_fd(loss, model.weight_rec, ij)
        assert rel_err(g_local[ij].item(), fd) < 1e-5, (ij, g_local[ij].item(), fd)
    # ... and differs from the full gradient (the state path matters)
    model.zero_grad()
    full = sf.lyapunov_spectrum(model, x, 2, state0=s0, generator=gen(7))
    sf.flossing_loss(full.exponents, -0.3).backward()
    assert not torch.allclose(model.weight_rec.grad, g_local, rtol=1e-3, atol=1e-6)


def test_loss_gradient_through_smooth_spiking_network_matches_finite_differences():
    model = sf.SpikingRNN(2, 8, 1, smooth=True, detach_reset=False, surrogate="atan", g=2.0,
                          generator=gen(0), dtype=F64)
    g = gen(1)
    x = torch.randn(40, 2, 2, generator=g, dtype=F64)
    s0 = model.initial_state(2, random=True, generator=g)

    def loss():
        r = sf.lyapunov_spectrum(model, x, 2, state0=s0, generator=gen(7))
        return sf.flossing_loss(r.exponents, 0.0)

    loss().backward()
    grad = model.weight_rec.grad.clone()
    for ij in _entries(8, 5, seed=2):
        fd = central_fd(loss, model.weight_rec, ij)
        assert rel_err(grad[ij].item(), fd) < 1e-5, (ij, grad[ij].item(), fd)


# --------------------------------------------------------------------------------------------------
# 2. FlossingSchedule
# --------------------------------------------------------------------------------------------------

def test_schedule_due_and_bout_epochs():
    s = sf.FlossingSchedule(pre_steps=500, every=100, steps=500, times=2)
    assert s.bout_epochs == [100, 200]
    assert [e for e in range(1000) if s.due(e)] == s.bout_epochs
    assert not s.due(0) and not s.due(99) and not s.due(300) and not s.due(101)
    s3 = sf.FlossingSchedule(every=1, steps=3, times=3)
    assert s3.bout_epochs == [1, 2, 3] and not s3.due(0) and not s3.due(4)
    # stateless: asking again (a resumed run) gives the same answer
    assert s3.due(2) and s3.due(2)


@pytest.mark.parametrize("kw", [{}, {"pre_steps": 500}, {"every": 10}, {"every": 10, "steps": 5}])
def test_schedule_without_bouts(kw):
    s = sf.FlossingSchedule(**kw)
    assert s.bout_epochs == []
    assert not any(s.due(e) for e in range(100))
    assert s.pre_steps == kw.get("pre_steps", 0)


@pytest.mark.parametrize("kw", [
    {"pre_steps": -1}, {"every": -5}, {"steps": -1}, {"times": -1},
    {"pre_steps": 1.5}, {"every": 2.0}, {"steps": "10"}, {"times": True}, {"pre_steps": None},
    {"times": 2, "every": 0, "steps": 10}, {"times": 2, "every": 10, "steps": 0}, {"times": 1},
])
def test_schedule_validation(kw):
    with pytest.raises(ValueError, match="FlossingSchedule"):
        sf.FlossingSchedule(**kw)


def test_schedule_is_frozen():
    s = sf.FlossingSchedule(every=2, steps=1, times=1)
    with pytest.raises(Exception):
        s.times = 5  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# 3. floss
# --------------------------------------------------------------------------------------------------

FAST = dict(T=40, batch=8, transient=10, frame_warmup=10, progress=False)


def held_out_loss(model, k, target):
    return sf.flossing_loss(long_estimate(model, k, T=600, batch=4, transient=100, frame_warmup=100), target).item()


def test_floss_lowers_the_loss():
    model = rate_net(n_hidden=32, n_in=1, g=0.5, seed=1)
    before = held_out_loss(model, 2, 0.0)
    hist = sf.floss(model, 60, k=2, lr=1e-2, generator=gen(2), **FAST)
    after = held_out_loss(model, 2, 0.0)
    assert before > 1.0  # lambda_1,2 ~ log g - ... ~ -1
    assert after < 0.1 * before, (before, after)
    assert isinstance(hist, sf.FlossingHistory) and len(hist) == 60
    assert hist.exponents.shape == (60, 2) and hist.loss.shape == (60,)
    assert hist.loss.dtype == torch.float64 and hist.target == 0.0
    assert bool(torch.isfinite(hist.exponents).all())
    assert hist.loss[-10:].mean() < 0.1 * hist.loss[:5].mean()
    assert bool((hist.exponents[:, 0] >= hist.exponents[:, 1]).all())


def test_history_loss_matches_exponents_for_a_single_trajectory():
    model = rate_net(n_hidden=16, n_in=1, g=0.8, seed=3)
    hist = sf.floss(model, 5, k=3, lr=1e-3, target=[0.0, -0.1, -0.2], generator=gen(1),
                    **dict(FAST, batch=1))
    expect = ((hist.exponents - torch.tensor([0.0, -0.1, -0.2])) ** 2).sum(-1)
    torch.testing.assert_close(hist.loss, expect.to(F64))


def test_floss_respects_params():
    model = rate_net(n_hidden=16, n_in=2, g=0.7, seed=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sf.floss(model, 10, k=1, lr=1e-2, params=[model.weight_rec], generator=gen(0), **FAST)
    for n, p in model.named_parameters():
        if n == "weight_rec":
            assert not torch.equal(p, before[n])
        else:
            assert torch.equal(p, before[n]), n
    # default: recurrent, input weights and bias move, the readout does not
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sf.floss(model, 10, k=1, lr=1e-2, generator=gen(0), **FAST)
    for n, p in model.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == (n in ("weight_rec", "weight_in", "bias")), n
        if n.startswith("readout"):
            assert p.grad is None


def test_floss_frozen_parameter_is_not_updated():
    model = rate_net(n_hidden=16, n_in=2, g=0.7, seed=2)
    model.weight_in.requires_grad_(False)
    w_in = model.weight_in.detach().clone()
    sf.floss(model, 5, k=1, lr=1e-2, generator=gen(0), **FAST)
    assert torch.equal(model.weight_in, w_in)
    for p in model.flossing_parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters"):
        sf.floss(model, 5, k=1, **FAST)


def test_floss_callback_and_early_stop():
    model = rate_net(n_hidden=16, n_in=1, g=0.7, seed=0)
    seen = []

    def cb(step, exps, loss):
        seen.append((step, exps.clone(), loss))
        return step == 3

    hist = sf.floss(model, 50, k=2, lr=1e-3, callback=cb, generator=gen(0), **FAST)
    assert len(hist) == 4 and [s for s, _, _ in seen] == [0, 1, 2, 3]
    for i, (_, exps, loss) in enumerate(seen):
        assert exps.shape == (2,) and not exps.requires_grad
        torch.testing.assert_close(exps, hist.exponents[i])
        assert isinstance(loss, float) and loss == hist.loss[i].item()


def test_floss_is_reproducible_with_the_same_generator():
    runs = []
    for _ in range(2):
        model = rate_net(n_hidden=16, n_in=1, g=0.9, seed=5)
        hist = sf.floss(model, 8, k=2, lr=5e-3, generator=gen(42), **FAST)
        runs.append((hist, model.weight_rec.detach().clone()))
    (h1, w1), (h2, w2) = runs
    assert torch.equal(h1.exponents, h2.exponents) and torch.equal(h1.loss, h2.loss)
    assert torch.equal(w1, w2)
    model = rate_net(n_hidden=16, n_in=1, g=0.9, seed=5)
    h3 = sf.floss(model, 8, k=2, lr=5e-3, generator=gen(43), **FAST)
    assert not torch.equal(h1.exponents, h3.exponents)


def test_floss_local_lowers_the_loss():
    model = rate_net(n_hidden=32, n_in=1, g=0.5, seed=1)
    before = held_out_loss(model, 2, 0.0)
    hist = sf.floss(model, 60, k=2, lr=1e-2, local=True, generator=gen(2), **FAST)
    after = held_out_loss(model, 2, 0.0)
    assert len(hist) == 60
    assert after < 0.2 * before, (before, after)


def test_floss_with_fixed_inputs_and_callable_inputs():
    model = rate_net(n_hidden=12, n_in=3, g=0.6, seed=0)
    x = torch.randn(40, 4, 3, generator=gen(9), dtype=F64)
    calls = []

    def source(step, g):
        assert isinstance(g, torch.Generator)
        calls.append(step)
        return x

    h_tensor = sf.floss(model, 3, k=1, inputs=x, generator=gen(0), **FAST)
    model2 = rate_net(n_hidden=12, n_in=3, g=0.6, seed=0)
    h_call = sf.floss(model2, 3, k=1, inputs=source, generator=gen(0), **FAST)
    assert calls == [0, 1, 2]
    torch.testing.assert_close(h_tensor.exponents, h_call.exponents)
    with pytest.raises(TypeError):
        sf.floss(model, 1, k=1, inputs="noise", **FAST)


def test_floss_steps_zero_and_options():
    model = rate_net(n_hidden=12, n_in=1, g=0.6, seed=0)
    w = model.weight_rec.detach().clone()
    hist = sf.floss(model, 0, k=3, **FAST)
    assert len(hist) == 0 and hist.exponents.shape == (0, 3)
    assert torch.equal(model.weight_rec, w)
    # clipping, qr_every and the default transient / warm-up run and stay finite
    hist = sf.floss(model, 3, k=2, T=30, batch=2, qr_every=3, max_grad_norm=0.01, generator=gen(0),
                    progress=False)
    assert bool(torch.isfinite(hist.exponents).all())


@pytest.mark.parametrize("kw,match", [
    ({"steps": -1}, "steps"), ({"steps": 2.0}, "steps"), ({"steps": True}, "steps"),
    ({"lr": 0.0}, "lr"), ({"lr": -1e-3}, "lr"), ({"lr": float("nan")}, "lr"), ({"lr": float("inf")}, "lr"),
    ({"lr": "1e-3"}, "lr"),
    ({"T": 1}, "T"), ({"T": 50.0}, "T"), ({"T": True}, "T"),
    ({"k": 0}, "k"), ({"k": 13}, "k="), ({"qr_every": 0}, "qr_every"),
    ({"transient": 20, "frame_warmup": 20}, "nothing is left"), ({"transient": -1}, "transient"),
    ({"target": [0.0, 1.0]}, "target"),
    ({"params": []}, "no parameters"),
])
def test_floss_bad_arguments(kw, match):
    model = rate_net(n_hidden=12, n_in=1, g=0.6, seed=0)
    args = dict(steps=2, k=1, T=40, batch=2, progress=False)
    args.update(kw)
    steps = args.pop("steps")
    w = model.weight_rec.detach().clone()
    with pytest.raises(ValueError, match=match):
        sf.floss(model, steps, **args)
    assert torch.equal(model.weight_rec, w)


def test_floss_float32():
    model = rate_net(n_hidden=24, n_in=1, g=0.5, seed=1, dtype=torch.float32)
    hist = sf.floss(model, 30, k=1, lr=1e-2, generator=gen(0), **FAST)
    assert hist.exponents.dtype == torch.float32
    assert hist.loss[-5:].mean() < 0.2 * hist.loss[:3].mean()


def test_floss_smooth_spiking_network():
    """Surrogate flossing (seed 001) on a LIF network whose forward pass uses the surrogate's
    primitive: its exact Jacobian is the surrogate tangent map, so the loss is a smooth function.

    beta = 0.5 leaves room below lambda_1 ~ -0.42: the exponents of a LIF network cannot go below
    log(beta) (silent neurons), so with snnTorch's beta = 0.9 everything is squeezed into [-0.105, 0).
    """
    model = sf.SpikingRNN(2, 24, 1, smooth=True, detach_reset=False, surrogate="atan", g=2.0, beta=0.5,
                          generator=gen(0), dtype=F64)
    target = -0.2
    before = held_out_loss(model, 1, target)
    hist = sf.floss(model, 60, k=1, lr=2e-2, target=target, generator=gen(1), **FAST)
    after = held_out_loss(model, 1, target)
    assert bool(torch.isfinite(hist.exponents).all())
    assert before > 0.03
    assert after < 0.25 * before, (before, after)
    lam1 = float(long_estimate(model, 1, T=600, batch=4, transient=100, frame_warmup=100)[0])
    assert abs(lam1 - target) < 0.1, lam1


# --------------------------------------------------------------------------------------------------
# 4. Seed 000 Fig 1C / 1D
# --------------------------------------------------------------------------------------------------

# Fig 1 settings: N = 80 discrete tanh map; one N(0,1) input channel through N(0,1) input weights
# (per-neuron input variance 1, as the reference's S = 1, wsS = 1, ws*s/S).
N_FIG1, N_IN_FIG1 = 80, 1
# Floss settings: the reference's Adam lr 1e-3, batch 16 and T = 55 with 15 transient steps, plus
# - a 15-step frame warm-up: the reference starts the frame right after the transient; that short
#   estimate is biased low (a random frame has not aligned with the leading direction yet), so
#   flossing the estimate to the target leaves the true lambda_1 up to ~0.07 above it;
# - 1000 steps instead of 500: with lr 1e-3, networks flossed to 0 end 500 steps at lambda_1 ~ -0.02
#   to -0.04 (still converging; targets -1 and -0.5 converge within 500). A larger lr (2e-3) is not
#   the fix: near the edge of chaos the weights then random-walk until a bifurcation throws lambda_1
#   back down (seen at -0.1 after 470 steps for one network).
# Measured (float64, the networks below): max |lambda_1 - target| = 0.013 (-1), 0.008 (-0.5), 0.030 (0);
# Fig 1D (k = 10, g = 0.5): max |lambda_i<=10| = 0.031, lambda_11 = -0.35. With the reference settings
# (500 steps, no frame warm-up) 7 of the 30 runs miss by more than 0.05 (max 0.085; targets -1 and
# -0.5 end above the target, target 0 below it) and Fig 1D reaches max |lambda_i<=10| = 0.11.
_FIG1_FLOSS = dict(steps=1000, lr=1e-3, batch=16, T=55, transient=15, frame_warmup=15, progress=False)
TOL = 0.05


def fig1_net(g: float, seed: int, dtype=F64) -> sf.RateRNN:
    return sf.RateRNN(N_IN_FIG1, N_FIG1, 1, g=g, generator=gen(seed), dtype=dtype)


def _floss_to(model, target, k, seed, **overrides):
    cfg = dict(_FIG1_FLOSS, **overrides)
    return sf.floss(model, cfg.pop("steps"), k=k, target=target, generator=gen(seed), **cfg)


def _short_estimates(model, batch=256):
    """Batch-mean flossing estimates (T = 55, 15 transient) without and with a 15-step frame warm-up."""
    g = gen(77)
    x = torch.randn(55, batch, model.n_in, generator=g, dtype=next(model.parameters()).dtype)
    with torch.no_grad():
        cold = sf.lyapunov_spectrum(model, x, 1, transient=15, generator=g).exponents.mean().item()
        warm = sf.lyapunov_spectrum(model, x, 1, transient=15, frame_warmup=15, generator=g).exponents.mean().item()
    return cold, warm


def test_fig1c_fast():
    """CI version of Fig 1C (~12 s): two networks from the U(0, 1) gain range, one pushed up to the
    edge of chaos (lambda_1 ~ -1.46 -> 0), one pushed down (-0.55 -> -1), same 0.05 criterion.

    Faster settings than the full figure: float32, batch 8, 300 steps at lr 3e-3 (lr 1e-2 is too
    noisy: a g = 0.8 network stalls at lambda_1 ~ -0.73 on its way to -1).
    """
    for g, target, seed in ((0.3, 0.0, 1), (0.8, -1.0, 2)):
        model = fig1_net(g, seed, dtype=torch.float32)
        lam0 = float(long_estimate(model, 1, T=600, batch=4, transient=100, frame_warmup=100)[0])
        assert abs(lam0 - target) > 0.4
        _floss_to(model, target, 1, seed, steps=300, lr=3e-3, batch=8)
        lam = float(long_estimate(model, 1, T=600, batch=4, transient=100, frame_warmup=100)[0])
        assert abs(lam - target) < TOL, (g, target, lam0, lam)
        if target > lam0:
            # Why Fig 1 needs the frame warm-up: flossing lambda_1 up lifts it out of the bulk of the
            # spectrum, and a random frame started right after the transient (the reference's 55/15
            # estimate) pays the log of its initial projection on the now isolated leading direction,
            # so that estimate is biased low (~ -0.05); 15 warm-up steps remove the bias.
            cold, warm = _short_estimates(model)
            assert cold - lam < -0.03, (lam, cold)
            assert abs(warm - lam) < 0.015, (lam, warm)


@pytest.mark.slow
@pytest.mark.parametrize("target", [-1.0, -0.5, 0.0])
def test_fig1c_ten_networks_reach_the_target(target):
    gains = torch.rand(10, generator=gen(0)).tolist()  # g ~ U(0, 1)
    finals = []
    for i, g in enumerate(gains):
        model = fig1_net(g, 100 + i)
        _floss_to(model, target, 1, 1000 + i)
        finals.append(float(long_estimate(model, 1, T=1500, batch=8, transient=200, frame_warmup=200)[0]))
    errs = [abs(f - target) for f in finals]
    assert max(errs) < TOL, list(zip(gains, finals))


@pytest.mark.slow
def test_fig1d_k_exponents_to_zero():
    k = 10
    model = fig1_net(0.5, 7)
    before = long_estimate(model, k + 1, T=1500, batch=8, transient=200, frame_warmup=200)
    assert bool((before < -0.5).all())
    _floss_to(model, 0.0, k, 1000)
    after = long_estimate(model, k + 1, T=1500, batch=8, transient=200, frame_warmup=200)
    assert float(after[:k].abs().max()) < TOL, after
    assert float(after[k]) < -0.1, after
