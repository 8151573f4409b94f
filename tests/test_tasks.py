"""Tests of surroflos.tasks: each vectorised generator against a slow per-trial definition written
here (loops over t and b), plus shapes, seeding, devices/dtypes, loss/metric and encodings."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn import functional as F

from surroflos import tasks

from _tolerance import rounding_tol, scale_of

B = 7
# Small configurations (every timing parameter away from its default where the task has one).
SMALL = {
    "copy": dict(delay=5, T=20, items=2),
    "pwm": dict(delay=6, items=3, T=12, low=-1.0, high=2.0),
    "xor": dict(delay=6, T=20),
    "parity": dict(delay=9, taps=3, T=25),
    "gonogo_temporal": dict(delay=4, pulse=2, gap=1, response=3, T=15),
    "gonogo_spatial": dict(delay=4, pulse=2, response=3),
    "romo": dict(),
    "2afc": dict(),
    "dms": dict(),
    "flipflop": dict(bits=2, p=0.2, T=30),
}
ALL = sorted(SMALL)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grid(T: int, B: int, n: int | None, value=0.0):
    if n is None:
        return [[value for _ in range(B)] for _ in range(T)]
    return [[[value] * n for _ in range(B)] for _ in range(T)]


def assert_same(actual: torch.Tensor, expected, ops: int = 0):
    """Equal, or for floats within ``ops`` roundings of the values' scale (tests/_tolerance.py): the task computes
    in float32 what the test writes down in Python's float64 and rounds once."""
    expected = torch.tensor(expected, dtype=actual.dtype) if not isinstance(expected, torch.Tensor) else expected
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if actual.dtype in (torch.bool, torch.long):
        assert torch.equal(actual, expected)
    else:
        atol = rounding_tol(actual.dtype, scale_of(expected), ops) if ops else 0.0
        torch.testing.assert_close(actual, expected, atol=atol, rtol=0.0)


# ------------------------------------------------------------------------------------------------
# Registry and interface
# ------------------------------------------------------------------------------------------------

def test_names_are_the_ten_tasks_sorted():
    want = ["2afc", "copy", "dms", "flipflop", "gonogo_spatial", "gonogo_temporal", "parity", "pwm", "romo",
            "xor"]
    assert tasks.names() == want


@pytest.mark.parametrize("name", ALL)
def test_shapes_dtypes_and_attributes(name):
    task = tasks.make(name, **SMALL[name])
    assert isinstance(task, tasks.Task) and task.name == name
    assert task.kind in ("regression", "classification") and task.metric in ("accuracy", "error")
    assert task.higher_is_better == (task.metric == "accuracy")
    x, y, m = task.sample(B, gen())
    assert x.shape == (task.T, B, task.n_in) and x.dtype == torch.float32
    assert m.shape == (task.T, B) and m.dtype == torch.bool and bool(m.any())
    if task.kind == "regression":
        assert y.shape == (task.T, B, task.n_out) and y.dtype == torch.float32
    else:
        assert y.shape == (task.T, B) and y.dtype == torch.long
        assert int(y.min()) >= 0 and int(y.max()) < task.n_out
    assert task.params["T"] == task.T
    json.dumps(task.params)  # plain JSON values, for configs


@pytest.mark.parametrize("name", ALL)
def test_params_round_trip_through_make(name):
    task = tasks.make(name, **SMALL[name])
    again = tasks.make(name, **task.params)
    assert again.params == task.params
    for a, b in zip(task.sample(3, gen(5)), again.sample(3, gen(5))):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# Targets against slow per-trial definitions
# ------------------------------------------------------------------------------------------------

def test_copy_matches_definition():
    task = tasks.make("copy", **SMALL["copy"])
    x, y, m = task.sample(B, gen(1))
    T, d, n = 20, 5, 2
    xs = x.tolist()
    y_ref, m_ref = grid(T, B, n), grid(T, B, None, False)
    for t in range(T):
        for b in range(B):
            assert all(v in (0.0, 1.0) for v in xs[t][b])
            if t >= d:
                m_ref[t][b] = True
                y_ref[t][b] = list(xs[t - d][b])
    assert_same(y, y_ref)
    assert_same(m, m_ref)
    assert 0.3 < float(x.mean()) < 0.7


def test_pwm_matches_definition():
    task = tasks.make("pwm", **SMALL["pwm"])
    x, y, m, info = task.sample_with_info(B, gen(2))
    T, d, k = 12, 6, 3
    v = info["values"].tolist()
    x_ref, y_ref, m_ref = grid(T, B, 1), grid(T, B, 1), grid(T, B, None, False)
    for b in range(B):
        for i in range(k):
            assert -1.0 <= v[b][i] < 2.0
            x_ref[i][b] = [v[b][i]]
    for t in range(T):
        for b in range(B):
            if d <= t < d + k:
                m_ref[t][b] = True
                y_ref[t][b] = list(x_ref[t - d][b])  # y[t] = x[t - d] on the recall window
    assert_same(x, x_ref)
    assert_same(y, y_ref)
    assert_same(m, m_ref)


def _bits_parity(xs, t, b, lags):
    return float(sum(int(xs[t - lag][b][0]) for lag in lags) % 2)


def test_xor_matches_definition():
    task = tasks.make("xor", **SMALL["xor"])
    x, y, m = task.sample(B, gen(3))
    T, d = 20, 6
    xs = x.tolist()
    y_ref, m_ref = grid(T, B, 1), grid(T, B, None, False)
    for t in range(d, T):
        for b in range(B):
            m_ref[t][b] = True
            y_ref[t][b] = [float(int(xs[t - d // 2][b][0]) ^ int(xs[t - d][b][0]))]
    assert_same(y, y_ref)
    assert_same(m, m_ref)


@pytest.mark.parametrize("params, lags", [(dict(delay=9, taps=3, T=25), [3, 6, 9]),
                                          (dict(taps=[1, 4, 7], T=25), [1, 4, 7]),
                                          (dict(delay=5, taps=1, T=25), [5])])
def test_parity_matches_definition(params, lags):
    task = tasks.make("parity", **params)
    assert task.params["delay"] == max(lags)
    x, y, m = task.sample(B, gen(4))
    T, d = 25, max(lags)
    xs = x.tolist()
    y_ref, m_ref = grid(T, B, 1), grid(T, B, None, False)
    for t in range(d, T):
        for b in range(B):
            m_ref[t][b] = True
            y_ref[t][b] = [_bits_parity(xs, t, b, lags)]
    assert_same(y, y_ref)
    assert_same(m, m_ref)


def test_parity_with_two_taps_is_xor_and_one_tap_is_copy():
    x1, y1, m1 = tasks.make("parity", delay=8, taps=2, T=30).sample(B, gen(9))
    x2, y2, m2 = tasks.make("xor", delay=8, T=30).sample(B, gen(9))
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(m1, m2)
    x1, y1, m1 = tasks.make("parity", delay=8, taps=1, T=30).sample(B, gen(9))
    x2, y2, m2 = tasks.make("copy", delay=8, T=30).sample(B, gen(9))
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(m1, m2)


def test_flipflop_matches_definition():
    task = tasks.make("flipflop", **SMALL["flipflop"])
    x, y, m = task.sample(B, gen(5))
    T, k = 30, 2
    xs = x.tolist()
    y_ref = grid(T, B, k)
    for b in range(B):
        for c in range(k):
            state = 0.0
            for t in range(T):
                assert xs[t][b][c] in (-1.0, 0.0, 1.0)
                if xs[t][b][c] != 0.0:
                    state = xs[t][b][c]
                y_ref[t][b][c] = state
    assert_same(y, y_ref)
    assert bool(m.all())
    assert bool((x == 1).any()) and bool((x == -1).any())


@pytest.mark.parametrize("name", ["gonogo_temporal", "gonogo_spatial"])
def test_gonogo_matches_definition(name):
    params = SMALL[name]
    task = tasks.make(name, **params)
    x, y, m, info = task.sample_with_info(B, gen(6))
    pulse, delay, resp = params["pulse"], params["delay"], params["response"]
    gap = params.get("gap", 0)
    if name == "gonogo_temporal":
        ctx_on, stim_on = range(0, pulse), range(pulse + gap, 2 * pulse + gap)
    else:
        ctx_on = stim_on = range(0, pulse)
    last = stim_on[-1]
    T = params.get("T", last + delay + resp)
    assert task.T == T
    ctx, stim = info["context"].tolist(), info["stimulus"].tolist()
    x_ref, y_ref, m_ref = grid(T, B, 4), grid(T, B, 1), grid(T, B, None, False)
    xs = x.tolist()
    for b in range(B):
        # The rule, read back from the inputs: go iff (A, 1) or (B, 2).
        c = 0 if xs[ctx_on[0]][b][0] == 1.0 else 1
        s = 0 if xs[stim_on[0]][b][2] == 1.0 else 1
        assert (c, s) == (ctx[b], stim[b])
        go = (c == 0 and s == 0) or (c == 1 and s == 1)
        assert bool(info["go"][b]) == go
        for t in range(T):
            if t in ctx_on:
                x_ref[t][b][c] = 1.0
            if t in stim_on:
                x_ref[t][b][2 + s] = 1.0
            if last + delay <= t < last + delay + resp:
                m_ref[t][b] = True
                y_ref[t][b] = [1.0 if go else 0.0]
    assert_same(x, x_ref)
    assert_same(y, y_ref)
    assert_same(m, m_ref)


def test_romo_matches_definition():
    task = tasks.make("romo")
    assert task.T == 56  # (3 + 1 + 8 + 1 + 5 + 10) tau at dt = 0.5
    x, y, m, info = task.sample_with_info(B, gen(7))
    amps, gaps, larger = info["amplitudes"].tolist(), info["gap_steps"].tolist(), info["larger"].tolist()
    per_tau = 2  # steps per tau
    x_ref, y_ref, m_ref = grid(56, B, 1), grid(56, B, 2), grid(56, B, None, False)
    for b in range(B):
        u1, u2 = amps[b]
        assert 0.5 <= u1 <= 1.5 and 0.5 <= u2 <= 1.5 and abs(u1 - u2) >= 0.2 - 1e-6
        assert 2 * per_tau <= gaps[b] <= 8 * per_tau
        assert larger[b] == (0 if u1 > u2 else 1)
        p1 = 3 * per_tau                      # first pulse after the fixation
        p2 = p1 + 1 * per_tau + gaps[b]       # second pulse after the gap
        r0 = p2 + 1 * per_tau + 5 * per_tau   # decision window after the decision delay
        for t in range(56):
            if p1 <= t < p1 + per_tau:
                x_ref[t][b] = [u1]
            if p2 <= t < p2 + per_tau:
                x_ref[t][b] = [u2]
            if t < p2 + per_tau:
                m_ref[t][b] = True            # fixate: output 0 until the second pulse ends
            if r0 <= t < r0 + 10 * per_tau:
                m_ref[t][b] = True
                y_ref[t][b][larger[b]] = 0.5
    assert_same(x, x_ref, ops=1)  # the amplitudes, copied; at most the one rounding to float32
    assert_same(y, y_ref)
    assert_same(m, m_ref)


def test_romo_trial_statistics():
    # Uniform amplitudes on the square minus the band |u1 - u2| < m: E|u1 - u2| from the density
    # 2 (L - s) / L^2 of |U1 - U2| on [0, L], conditioned on s >= m.
    task = tasks.make("romo")
    _, _, _, info = task.sample_with_info(20000, gen(8))
    u = info["amplitudes"]
    L, m = 1.0, 0.2
    num = 2 / L ** 2 * ((L ** 3 / 6) - (L * m ** 2 / 2 - m ** 3 / 3))  # int_m^L s 2 (L - s) / L^2 ds
    den = (L - m) ** 2 / L ** 2                                           # int_m^L 2 (L - s) / L^2 ds
    expected = num / den
    assert abs(float((u[:, 0] - u[:, 1]).abs().mean()) - expected) < 0.01
    assert abs(float(info["larger"].float().mean()) - 0.5) < 0.02
    assert abs(float(u.mean()) - 1.0) < 0.01
    # Gap U[2, 8] tau floored to steps of 0.5: steps 4 .. 15 equally likely, mean 9.5.
    g = info["gap_steps"]
    assert int(g.min()) == 4 and int(g.max()) == 15
    assert abs(float(g.float().mean()) - 9.5) < 0.1


def test_2afc_matches_definition_without_noise():
    task = tasks.make("2afc", sigma=0.0)
    assert task.T == 22  # (100 + 2000 + 0 + 100) ms / 100 ms
    x, y, m, info = task.sample_with_info(40, gen(9))
    gt, coh = info["ground_truth"].tolist(), info["coherence"].tolist()
    x_ref, y_ref = grid(22, 40, 3), grid(22, 40, None, 0)
    for b in range(40):
        assert gt[b] in (0, 1) and coh[b] in (0.0, pytest.approx(6.4), pytest.approx(12.8),
                                              pytest.approx(25.6), pytest.approx(51.2))
        theta_g = math.pi * gt[b]
        for t in range(22):
            if t == 0:
                x_ref[t][b][0] = 1.0
            if 1 <= t < 21:
                for k in range(2):
                    x_ref[t][b][1 + k] = math.cos(math.pi * k - theta_g) * coh[b] / 200 + 0.5
            if t == 21:
                y_ref[t][b] = 1 + gt[b]
    assert_same(x, x_ref, ops=6)  # cos, scalings, the offset and the roundings to float32
    assert_same(y, y_ref)
    assert bool(m.all())
    assert len(set(gt)) == 2 and len({round(c, 1) for c in coh}) >= 4


def test_2afc_noise_and_decision_only_mask():
    task = tasks.make("2afc", mask_fixation=False)
    x, y, m, info = task.sample_with_info(400, gen(10))
    clean = tasks.make("2afc", sigma=0.0, mask_fixation=False).sample(400, gen(10))[0]
    noise = x - clean  # same draws for the trial variables, the noise comes last
    assert float(noise[1:21, :, 1:].std()) == pytest.approx(0.1, rel=0.05)  # sigma / sqrt(dt)
    assert float(noise[1:21, :, 1:].mean()) == pytest.approx(0.0, abs=0.01)
    assert bool((noise[[0, 21]] == 0).all()) and bool((noise[..., 0] == 0).all())
    assert m[:21].sum() == 0 and bool(m[21].all())


def test_dms_matches_definition_without_noise():
    task = tasks.make("dms", sigma=0.0, dim_ring=4)
    assert task.T == 32 and task.n_in == 5 and task.n_out == 3
    x, y, m, info = task.sample_with_info(40, gen(11))
    gt, smp = info["ground_truth"].tolist(), info["sample"].tolist()
    x_ref, y_ref = grid(32, 40, 5), grid(32, 40, None, 0)
    for b in range(40):
        th_s = 2 * math.pi * smp[b] / 4
        th_t = th_s if gt[b] == 1 else th_s + math.pi
        for t in range(32):
            x_ref[t][b][0] = 0.0 if t >= 23 else 1.0    # fixation off at the decision (go cue)
            for k in range(4):
                if 3 <= t < 8:                           # sample: 300 .. 800 ms
                    x_ref[t][b][1 + k] = 0.5 * math.cos(2 * math.pi * k / 4 - th_s) + 0.5
                if 18 <= t < 23:                         # test: 1800 .. 2300 ms
                    x_ref[t][b][1 + k] = 0.5 * math.cos(2 * math.pi * k / 4 - th_t) + 0.5
            if t >= 23:
                y_ref[t][b] = gt[b]
    assert_same(x, x_ref, ops=6)  # cos, scalings, the offset and the roundings to float32
    assert_same(y, y_ref)
    assert bool(m.all())
    assert set(gt) == {1, 2} and len(set(smp)) > 1


def test_dms_noise_only_during_sample_and_test():
    x = tasks.make("dms").sample(300, gen(12))[0]
    clean = tasks.make("dms", sigma=0.0).sample(300, gen(12))[0]
    noise = x - clean
    on = list(range(3, 8)) + list(range(18, 23))
    off = [t for t in range(32) if t not in on]
    assert float(noise[on][..., 1:].std()) == pytest.approx(0.1, rel=0.05)
    assert bool((noise[off] == 0).all()) and bool((noise[..., 0] == 0).all())


# ------------------------------------------------------------------------------------------------
# Seeding, devices, dtypes
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ALL)
def test_seeded_generator_reproduces_trials(name):
    task = tasks.make(name, **SMALL[name])
    a, b, c = task.sample(B, gen(21)), task.sample(B, gen(21)), task.sample(B, gen(22))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("name", ["copy", "romo", "2afc"])
def test_device_and_dtype_arguments(name):
    task = tasks.make(name, **SMALL[name])
    x, y, m = task.sample(B, gen(3))
    x64, y64, m64 = task.sample(B, gen(3), device="cpu", dtype=torch.float64)
    assert x64.dtype == torch.float64 and x64.device.type == "cpu"
    assert torch.equal(x64, x.double()) and torch.equal(m64, m)
    assert y64.dtype == (torch.float64 if task.kind == "regression" else torch.long)
    assert torch.equal(y64.to(y.dtype), y)
    x2 = task.sample(B, gen(3), device=torch.device("cpu"), dtype=torch.bfloat16)[0]
    assert x2.dtype == torch.bfloat16
    torch.manual_seed(77)
    g1 = task.sample(B)
    torch.manual_seed(77)
    g2 = task.sample(B)
    assert torch.equal(g1[0], g2[0])  # generator=None draws from the global RNG


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ALL)
def test_cuda_device_matches_cpu(name):
    task = tasks.make(name, **SMALL[name], encoding="poisson")
    cpu = task.sample(B, gen(4))
    cuda = task.sample(B, gen(4), device="cuda")
    for u, v in zip(cpu, cuda):
        assert v.device.type == "cuda" and torch.equal(u, v.cpu())
    gcuda = torch.Generator(device="cuda").manual_seed(4)
    out = task.sample(B, gcuda)
    assert all(t.device.type == "cuda" for t in out)
    again = task.sample(B, torch.Generator(device="cuda").manual_seed(4))
    assert all(torch.equal(u, v) for u, v in zip(out, again))


# ------------------------------------------------------------------------------------------------
# Loss and metric
# ------------------------------------------------------------------------------------------------

def _bad_outputs(task, y):
    if task.kind == "classification":
        return 10.0 * F.one_hot((y + 1) % task.n_out, task.n_out).float()
    if task.name == "pwm":
        return y + 0.5
    if task.name == "romo":
        return y.flip(-1)
    if task.name == "flipflop":
        return -y
    return 1.0 - y


@pytest.mark.parametrize("name", ALL)
def test_perfect_outputs_score_best_and_bad_outputs_worse(name):
    task = tasks.make(name, **SMALL[name])
    x, y, m = task.sample(16, gen(30))
    if task.kind == "regression":
        perfect = y.clone()
        assert float(task.loss(perfect, y, m)) == 0.0
    else:
        perfect = 50.0 * F.one_hot(y, task.n_out).float()
        # cross-entropy log(1 + (n - 1) e^-50) ~ 1e-21, computed as logsumexp - 50: float32 rounding of 50
        assert float(task.loss(perfect, y, m)) <= rounding_tol(torch.float32, 50.0, 4)
    best = 1.0 if task.higher_is_better else 0.0
    assert task.score(perfect, y, m) == best
    bad = _bad_outputs(task, y)
    worse = task.score(bad, y, m)
    assert (worse < best) if task.higher_is_better else (worse > best)
    assert float(task.loss(bad, y, m)) > float(task.loss(perfect, y, m))


@pytest.mark.parametrize("name", ALL)
def test_loss_is_the_masked_mean(name):
    task = tasks.make(name, **SMALL[name])
    x, y, m = task.sample(5, gen(31))
    out = torch.randn(task.T, 5, task.n_out, generator=gen(32), dtype=torch.float64)
    yy = y.double() if task.kind == "regression" else y
    total, count = 0.0, 0
    for t in range(task.T):
        for b in range(5):
            if not m[t, b]:
                continue
            if task.kind == "regression":
                for k in range(task.n_out):
                    total += (out[t, b, k].item() - yy[t, b, k].item()) ** 2
                    count += 1
            else:
                logits = out[t, b].tolist()
                lse = math.log(sum(math.exp(v) for v in logits))
                total += lse - logits[y[t, b].item()]
                count += 1
    assert float(task.loss(out, yy, m)) == pytest.approx(total / count, rel=1e-9)
    # Unmasked steps do not matter, even when they are not finite.
    poisoned = out.clone()
    poisoned[~m] = float("nan")
    assert float(task.loss(poisoned, yy, m)) == pytest.approx(total / count, rel=1e-9)
    out.requires_grad_(True)
    task.loss(out, yy, m).backward()
    assert bool((out.grad[~m] == 0).all())


def test_trial_accuracy_counts_trials():
    task = tasks.make("gonogo_spatial", delay=3, response=4)
    x, y, m, info = task.sample_with_info(200, gen(33))
    out = y.clone()
    out[:, :50] = 1.0 - out[:, :50]  # a quarter of the trials answered wrongly
    assert task.score(out, y, m) == pytest.approx(0.75)


# ------------------------------------------------------------------------------------------------
# Encodings
# ------------------------------------------------------------------------------------------------

def test_poisson_encode_rate_statistics_and_values():
    task = tasks.make("copy", encoding="poisson", rate=0.3)
    x = torch.tensor([0.0, 0.5, 1.0, 2.0, 5.0, -1.0]).repeat(20000, 1)
    s = task.encode(x, gen(40))
    assert s.dtype == x.dtype and set(s.unique().tolist()) <= {0.0, 1.0}
    n = x.shape[0]
    for j, p in enumerate([0.0, 0.15, 0.3, 0.6, 1.0, 0.0]):  # clamp(rate * x, 0, 1)
        tol = 5 * math.sqrt(p * (1 - p) / n) + 1e-12
        assert abs(float(s[:, j].mean()) - p) <= tol


def test_poisson_sample_keeps_the_trial_and_spikes_at_the_rate():
    analog = tasks.make("copy", delay=5, T=200, items=2)
    spiking = tasks.make("copy", delay=5, T=200, items=2, encoding="poisson", rate=0.6)
    xa, ya, ma = analog.sample(64, gen(41))
    xs, ys, ms = spiking.sample(64, gen(41))
    assert torch.equal(ya, ys) and torch.equal(ma, ms)
    assert set(xs.unique().tolist()) <= {0.0, 1.0}
    assert bool((xs[xa == 0] == 0).all())
    ones = xs[xa == 1]
    assert abs(float(ones.mean()) - 0.6) < 5 * math.sqrt(0.24 / ones.numel())
    assert torch.equal(xs, spiking.sample(64, gen(41))[0])  # spikes seeded by the same generator


def test_current_encoding_scales_the_input():
    a = tasks.make("romo").sample(B, gen(42))
    c = tasks.make("romo", encoding="current", gain=2.5).sample(B, gen(42))
    assert torch.equal(c[0], 2.5 * a[0]) and torch.equal(c[1], a[1]) and torch.equal(c[2], a[2])


def test_analog_encode_is_identity():
    task = tasks.make("pwm")
    x = torch.rand(4, 3, 1)
    assert torch.equal(task.encode(x), x)


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------

def test_unknown_task_names_the_valid_ones():
    with pytest.raises(ValueError, match="copy"):
        tasks.make("no_such_task")


@pytest.mark.parametrize("name, params, match", [
    ("copy", dict(delay=300, T=300), "delay"),
    ("copy", dict(delay=301), "delay"),
    ("xor", dict(delay=1), "delay"),
    ("parity", dict(delay=2, taps=3), "taps"),
    ("parity", dict(taps=[3, 3]), "distinct"),
    ("parity", dict(taps=[2, 5], delay=4), "max"),
    ("pwm", dict(delay=6, items=3, T=8), "T"),
    ("pwm", dict(low=1.0, high=0.0), "high"),
    ("gonogo_temporal", dict(delay=10, T=5), "T"),
    ("gonogo_spatial", dict(gap=2), "gap"),
    ("romo", dict(gap_min=5.0, gap_max=3.0), "gap_max"),
    ("romo", dict(min_diff=1.5), "min_diff"),
    ("romo", dict(T=40), "T"),
    ("2afc", dict(cohs=[]), "cohs"),
    ("dms", dict(decision=0.0), "decision"),
    ("copy", dict(dly=3), "delay"),
    ("copy", dict(encoding="spikes"), "encoding"),
    ("copy", dict(delay=2.5), "integer"),
    ("copy", dict(p=1.5), "probability"),
    ("flipflop", dict(bits=0), "bits"),
])
def test_bad_parameters_raise_value_errors(name, params, match):
    with pytest.raises(ValueError, match=match):
        tasks.make(name, **params)


def test_bad_sample_and_loss_arguments():
    task = tasks.make("copy", delay=2, T=6)
    with pytest.raises(ValueError, match="batch"):
        task.sample(-1)
    with pytest.raises(ValueError, match="batch"):
        task.sample(0)
    with pytest.raises(TypeError, match="batch"):
        task.sample(2.0)
    with pytest.raises(TypeError, match="dtype"):
        task.sample(2, dtype=torch.long)
    x, y, m = task.sample(3, gen())
    with pytest.raises(ValueError, match="outputs"):
        task.loss(torch.zeros(6, 3, 2), y, m)
    with pytest.raises(ValueError, match="mask"):
        task.loss(torch.zeros(6, 3, 1), y, m[:, :2])
    with pytest.raises(TypeError, match="mask"):
        task.score(torch.zeros(6, 3, 1), y, m.float())
