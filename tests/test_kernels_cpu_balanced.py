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


def _simulate_both_ways(net, monkeypatch, steps=60):
    """simulate with the presynaptic-weight shortcut as taken, and with it disabled (the gather through slot)."""
    state0 = net.initial_state(2, random=True, generator=torch.Generator().manual_seed(8))
    fast, fast_state, _ = net.simulate(steps, state0=state0, return_state=True)
    with monkeypatch.context() as m:
        m.setattr(kbal, "_presynaptic_weights", lambda *a, **k: None)
        slow, slow_state, _ = net.simulate(steps, state0=state0, return_state=True)
    assert bool(fast.any())  # not two silent networks
    assert torch.equal(fast, slow) and torch.equal(fast_state, slow_state)  # same numbers, same order: bit for bit


def test_presynaptic_weights_shortcut_for_fixed_weights_is_exact(monkeypatch):
    for net in (_net(seed=9), BalancedNetwork(N=300, K=20, ei=True, generator=torch.Generator().manual_seed(9),
                                              dtype=torch.float64)):
        kbal._JUMPS.clear()
        _simulate_both_ways(net, monkeypatch)
        jump = kbal._JUMPS.peek(net.weight_rec)
        assert jump is not None  # the shortcut was taken
        pre = net.pre_idx.long()
        assert torch.equal(jump[pre], net.weight_rec.detach())  # and it is the weights, read per presynaptic id


def test_presynaptic_weights_shortcut_declines_general_weights(monkeypatch):
    net = _net(seed=10)
    with torch.no_grad():
        net.weight_rec[3, 0] *= 1.5  # one synapse off: the weights no longer depend on the presynaptic id alone
    kbal._JUMPS.clear()
    _simulate_both_ways(net, monkeypatch)
    assert kbal._JUMPS.peek(net.weight_rec) is None
    with torch.no_grad():
        net.weight_rec[3, 0] /= 1.5  # back: the version changed, so it is checked again and taken
    net.simulate(5, batch=1)
    assert kbal._JUMPS.peek(net.weight_rec) is not None


def test_calls_with_gradient_never_use_the_shortcut():
    net = _net(seed=11)
    kbal._JUMPS.clear()
    u = net.drive.expand(10, 1, net.N).clone()
    s0 = net.initial_state(1, random=True, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    with torch.enable_grad():
        spikes, states = kbal.balanced_sequence(u, s0, net.weight_rec, net.pre_idx, a_m=net.a_m, a_s=net.a_s,
                                                b=net.b, bc=net.bc, ac=net.ac)
    assert states.requires_grad and len(kbal._JUMPS) == 0


def test_tensor_cache_hits_only_the_same_tensor_stamp_and_companion():
    import gc

    cache = kbal._TensorCache()
    a, b, other = torch.zeros(3), torch.zeros(3), torch.zeros(2)
    assert cache.get(a, 0) == (False, None)
    cache.put(a, 0, "value", also=other)
    assert cache.get(a, 0, also=other) == (True, "value")
    assert cache.get(b, 0, also=other) == (False, None)  # another tensor, equal values
    assert cache.get(a, 0, also=torch.zeros(2)) == (False, None)  # another companion: the entry is dropped
    assert len(cache) == 0
    cache.put(a, 0, "value")
    a.add_(1)  # in place: the caller's stamp (the version) changes
    assert cache.get(a, a._version) == (False, None) and len(cache) == 0
    cache.put(a, a._version, "new")
    assert cache.peek(a) == "new"
    del a
    gc.collect()
    assert len(cache) == 0  # the entry died with its tensor
