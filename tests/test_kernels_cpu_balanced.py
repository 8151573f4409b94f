"""kernels/balanced.py on the CPU: the event-driven sequence reads the weights of the neurons that spiked through
the pattern's ``slot`` (issue 17: an ``[N, D]`` copy of all out-going weights, gathered for every 64 MiB time
chunk of ``BalancedNetwork.simulate``, made a simulation's cost grow with N^2; cached, it took 0.6 GB at N = 1e6),
so a change of the weights is seen at once and no call gathers all ``N K`` synapses."""

import torch

from surroflos.kernels import balanced as kbal
from surroflos.models.balanced import BalancedNetwork


def _net(N=300, K=20, seed=0):
    return BalancedNetwork(N=N, K=K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_outgoing_weights_are_the_transpose_with_zero_padding():
    net = _net()
    w, pre = net.weight_rec, net.pre_idx
    post, slot = kbal.out_pattern(pre)
    w_out = kbal._outgoing_weights(w, slot, torch.float64)
    N, K = pre.shape
    real = slot.long() < N * K
    assert torch.equal(w_out[real], w.reshape(-1)[slot.long()[real]])
    assert torch.equal(w_out[~real], torch.zeros_like(w_out[~real]))
    assert kbal._outgoing_weights(w, slot, torch.float32).dtype == torch.float32


def test_simulate_after_changing_the_weights_uses_the_new_ones():
    net, twin = _net(seed=1), _net(seed=1)
    state0 = net.initial_state(2, random=True, generator=torch.Generator().manual_seed(3))
    s_before = net.simulate(30, batch=2, state0=state0)
    assert torch.equal(s_before, twin.simulate(30, batch=2, state0=state0))
    with torch.no_grad():
        net.weight_rec.mul_(0.25)
        twin.weight_rec.copy_(twin.weight_rec * 0.25)
    twin.weight_rec = twin.weight_rec.clone()  # a new tensor
    s_after = net.simulate(30, batch=2, state0=state0)
    assert torch.equal(s_after, twin.simulate(30, batch=2, state0=state0))
    assert not torch.equal(s_after, s_before)


def test_simulate_in_many_chunks_equals_one_chunk_and_gathers_nothing(monkeypatch):
    """One step per time chunk gives the spikes of one chunk, and no call builds the [N, D] weight copy."""
    from surroflos.models import balanced as mbal

    net = _net(seed=2)
    state0 = net.initial_state(1, random=True, generator=torch.Generator().manual_seed(5))
    whole = net.simulate(40, state0=state0)
    assert bool(whole.any())  # the comparison below is not between two silent networks

    def forbidden(*args, **kwargs):
        raise AssertionError("the CPU path gathered all out-going weights")

    monkeypatch.setattr(kbal, "_outgoing_weights", forbidden)
    monkeypatch.setattr(mbal, "_SIM_CHUNK_BYTES", 1)  # one step per chunk
    assert torch.equal(net.simulate(40, state0=state0), whole)


def test_event_recurrent_equals_the_dense_product():
    """``r = J s`` read through slot (padding clamped into range) against the dense matrix, float64."""
    net = _net(N=120, K=9, seed=6)
    N, K = net.pre_idx.shape
    J = torch.zeros(N, N, dtype=torch.float64)
    J.scatter_add_(1, net.pre_idx, net.weight_rec.detach())
    fire = torch.rand(3, N, generator=torch.Generator().manual_seed(7)) < 0.3
    fire[0] = False  # a batch row without spikes
    got = kbal._event_recurrent(fire, kbal._pattern(net.pre_idx), net.weight_rec.detach().reshape(-1))
    want = fire.double() @ J.T
    assert torch.allclose(got, want, rtol=0, atol=64 * torch.finfo(torch.float64).eps * float(J.abs().sum(1).max()))
    assert torch.equal(got[0], torch.zeros(N, dtype=torch.float64))
