"""Spectra and flossing of networks assembled from snnTorch/Norse drop-in layers (nn.Sequential)."""

import pytest
import torch
from torch import nn

import surroflos
import surroflos.norse as sf_norse
import surroflos.snntorch as sf_snn
from snntorch import surrogate as snn_surrogate
from surroflos.models import LayeredNetwork, as_model, jvp_tangent

F64 = torch.float64


def _snn_stack(n_in=3, n=12, n_out=2, reset="subtract", seed=0):
    torch.manual_seed(seed)
    stack = nn.Sequential(nn.Linear(n_in, n), sf_snn.RLeaky(beta=0.85, linear_features=n, reset_mechanism=reset,
                                                            spike_grad=snn_surrogate.atan()), nn.Linear(n, n_out))
    with torch.no_grad():
        stack[0].weight.mul_(2.0)
        stack[1].recurrent.weight.normal_(0.0, 2.5 / n ** 0.5)
    return stack.to(F64)


def _norse_stack(n_in=3, n=10, seed=0):
    torch.manual_seed(seed)
    p = sf_norse.LIFParameters(v_th=torch.tensor(0.5))
    stack = nn.Sequential(nn.Linear(n_in, 8), sf_norse.LIFRecurrentCell(8, n, p=p), nn.Linear(n, 2))
    with torch.no_grad():
        stack[1].recurrent_weights.normal_(0.0, 3.0 / n ** 0.5)
        stack[1].input_weights.mul_(4.0)
    return stack.to(F64)


def test_snntorch_stack_spectrum_equals_the_equivalent_spikingrnn():
    # Linear -> RLeaky(subtract, reset delayed and detached) -> Linear is SpikingRNN(lif) with
    # W_in = Linear.weight, b = Linear.bias + recurrent bias, W = recurrent weight: same exponents.
    stack = _snn_stack()
    lin, rl = stack[0], stack[1]
    # snnTorch keeps beta as a float32 buffer: take its exact value.
    ref = surroflos.SpikingRNN(3, 12, 2, neuron="lif", beta=float(rl.beta), threshold=1.0, reset="subtract",
                               surrogate="atan", dtype=F64)
    with torch.no_grad():
        ref.weight_in.copy_(lin.weight)
        ref.bias.copy_(lin.bias + rl.recurrent.bias)
        ref.weight_rec.copy_(rl.recurrent.weight)
    x = torch.randn(200, 3, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    s0 = torch.rand(3, 12, generator=torch.Generator().manual_seed(2), dtype=F64)
    kw = dict(qr_every=2, transient=20, frame_warmup=20, state0=s0)
    with torch.no_grad():
        a = surroflos.lyapunov_spectrum(stack, x, 6, generator=torch.Generator().manual_seed(3), **kw)
        b = surroflos.lyapunov_spectrum(ref, x, 6, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.allclose(a.exponents, b.exponents, atol=1e-10, rtol=0)
    assert (a.exponents[:, 0] > a.exponents[:, -1]).all()  # a non-trivial spectrum


@pytest.mark.parametrize("make", [_snn_stack, lambda: _snn_stack(reset="zero"), _norse_stack],
                         ids=["rleaky-subtract", "rleaky-zero", "norse-lifrecurrent"])
def test_layered_tangent_equals_forward_mode_ad(make):
    net = LayeredNetwork(make())
    x = torch.randn(30, 2, net.n_in, generator=torch.Generator().manual_seed(0), dtype=F64)
    state = net.initial_state(2, random=True, generator=torch.Generator().manual_seed(1))
    p = net.params()
    spiked = 0.0
    for t in range(30):
        Q = torch.randn(2, net.state_dim, 4, generator=torch.Generator().manual_seed(t), dtype=F64)
        a = net.tangent(x[t], state, Q, p)
        b = jvp_tangent(net.step_function, x[t], state, p, Q)
        assert torch.allclose(a, b, atol=1e-10, rtol=0), t
        out, state = net.step(x[t], state, p)
        spiked += float(out.sum())
    assert spiked > 0  # the trajectory crossed threshold, so the surrogate terms were exercised


def test_norse_stack_runs_with_the_cells_time_step():
    stack = _norse_stack()
    x = torch.randn(120, 2, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    with torch.no_grad():
        res = surroflos.lyapunov_spectrum(stack, x, 5, transient=20, generator=torch.Generator().manual_seed(1))
    assert res.dt == pytest.approx(1e-3)  # Norse's dt: exponents per second
    assert res.exponents.shape == (2, 5) and torch.isfinite(res.exponents).all()
    # The same estimate with dt overridden to 1 is the per-step spectrum: a factor 1/dt apart.
    per_step = surroflos.lyapunov_spectrum(LayeredNetwork(stack, dt=1.0), x, 5, transient=20,
                                           generator=torch.Generator().manual_seed(1))
    assert torch.allclose(res.exponents * 1e-3, per_step.exponents.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make,steps", [(_snn_stack, 40), (_norse_stack, 15)], ids=["snntorch", "norse"])
def test_flossing_a_stack_lowers_the_loss_and_leaves_the_readout(make, steps):
    stack = make()
    readout = stack[2].weight.detach().clone()
    n_in = stack[0].in_features
    x_eval = torch.randn(150, 4, n_in, generator=torch.Generator().manual_seed(5), dtype=F64)

    def loss():
        with torch.no_grad():
            r = surroflos.lyapunov_spectrum(stack, x_eval, 2, transient=20, frame_warmup=20,
                                            generator=torch.Generator().manual_seed(6))
        return float(surroflos.flossing_loss(r.exponents, target=0.0))

    before = loss()
    hist = surroflos.floss(stack, steps, k=2, T=60, batch=8, lr=1e-2, generator=torch.Generator().manual_seed(7),
                           progress=False)
    after = loss()
    assert len(hist) == steps
    # Held-out estimate (other inputs, frame and window than during flossing): a real decrease.
    assert after < 0.9 * before, (before, after)
    assert torch.equal(stack[2].weight, readout)


def test_as_model_errors():
    with pytest.raises(ValueError, match="exactly one recurrent layer"):
        as_model(nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1)))
    with pytest.raises(ValueError, match="exactly one recurrent layer"):
        as_model(nn.Sequential(nn.Linear(2, 4), sf_snn.RLeaky(beta=0.9, linear_features=4),
                               sf_snn.RLeaky(beta=0.9, linear_features=4)))
    with pytest.raises(TypeError, match="not a surroflos dynamical model"):
        surroflos.lyapunov_spectrum(nn.Linear(2, 2), torch.zeros(5, 1, 2), 1)
    net = surroflos.RateRNN(2, 4, 1)
    assert as_model(net) is net
