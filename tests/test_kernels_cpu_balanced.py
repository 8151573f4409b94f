"""kernels/balanced.py: the out-going weights ``w_out [N, D]`` are built once per weight tensor (issue 17: they
were gathered again for every call, i.e. every 64 MiB time chunk of ``BalancedNetwork.simulate``, which made a
simulation's cost grow with N^2), and rebuilt after an in-place change of the weights."""

import torch

from surroflos.kernels import balanced as kbal
from surroflos.models.balanced import BalancedNetwork


def _net(N=300, K=20, seed=0):
    return BalancedNetwork(N=N, K=K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_outgoing_weights_built_once_and_rebuilt_after_an_in_place_change():
    net = _net()
    w, pre = net.weight_rec, net.pre_idx
    _, slot = kbal.out_pattern(pre)
    a = kbal._outgoing_weights(w, slot, torch.float64, cache=True)
    assert kbal._outgoing_weights(w, slot, torch.float64, cache=True) is a  # cached: not gathered again
    fresh = torch.cat([w.reshape(-1), w.new_zeros(1)])[slot]
    assert torch.equal(a, fresh)
    with torch.no_grad():
        w.mul_(1.5)  # in place: the version changes
    b = kbal._outgoing_weights(w, slot, torch.float64, cache=True)
    assert b is not a and torch.equal(b, torch.cat([w.reshape(-1), w.new_zeros(1)])[slot])
    assert kbal._outgoing_weights(w, slot, torch.float32, cache=True).dtype == torch.float32  # another dtype: rebuilt


def test_simulate_after_changing_the_weights_uses_the_new_ones():
    net, twin = _net(seed=1), _net(seed=1)
    state0 = net.initial_state(2, random=True, generator=torch.Generator().manual_seed(3))
    s_before = net.simulate(30, batch=2, state0=state0)
    assert torch.equal(s_before, twin.simulate(30, batch=2, state0=state0))
    with torch.no_grad():
        net.weight_rec.mul_(0.25)
        twin.weight_rec.copy_(twin.weight_rec * 0.25)
    twin.weight_rec = twin.weight_rec.clone()  # a new tensor: nothing cached for it
    s_after = net.simulate(30, batch=2, state0=state0)
    assert torch.equal(s_after, twin.simulate(30, batch=2, state0=state0))
    assert not torch.equal(s_after, s_before)


def test_simulate_chunks_share_one_gather(monkeypatch):
    """Many time chunks (a tiny chunk size): the weights are gathered once, not once per chunk."""
    from surroflos.models import balanced as mbal

    monkeypatch.setattr(mbal, "_SIM_CHUNK_BYTES", 1)  # one step per chunk
    net = _net(seed=2)
    calls = []
    kbal._WEIGHTS_OUT.clear()
    gather = kbal._outgoing_weights

    def counting(w, slot, dtype, cache=False):
        hit = kbal._WEIGHTS_OUT.get(id(w))
        calls.append(cache and hit is not None and hit[0]() is w and hit[1] == (w._version, w.data_ptr()))
        return gather(w, slot, dtype, cache)

    monkeypatch.setattr(kbal, "_outgoing_weights", counting)
    net.simulate(12, batch=1)
    assert len(calls) == 12 and calls.count(False) == 1, calls


def test_calls_with_gradient_gather_every_time():
    """With gradient (training, gradcheck, which perturbs the weights through .data) nothing is reused."""
    net = _net(seed=4)
    _, slot = kbal.out_pattern(net.pre_idx)
    a = kbal._outgoing_weights(net.weight_rec, slot, torch.float64)
    assert kbal._outgoing_weights(net.weight_rec, slot, torch.float64) is not a
