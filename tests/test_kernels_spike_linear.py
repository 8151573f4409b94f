"""surroflos.kernels.spike_linear (a linear readout of 0/1 spikes that keeps them as bytes) against nn.Linear and
torch.matmul: outputs bit for bit, gradients within rounding (float64), windows of the weight gradient, what it
saves for the backward, and the recurrent network's training step keeping no float spike or zero arrays."""

from __future__ import annotations

import pytest
import torch

from surroflos.kernels import spike_linear as sl
from surroflos.models import SpikingRNN

from _kernel_checks import assert_close_rel

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def spikes(shape, seed, p=0.3, dtype=F64):
    return (torch.rand(shape, generator=gen(seed), dtype=F64) < p).to(dtype)


def check(S, W, b, reference, window_elems=None, monkeypatch=None):
    if window_elems is not None:
        monkeypatch.setattr(sl, "_WINDOW_ELEMS", window_elems)
    g = torch.randn(*S.shape[:-1], W.shape[-2], generator=gen(9), dtype=S.dtype)
    leaves = [t.detach().clone().requires_grad_(True) for t in (S, W, b)]
    y = sl.spike_linear(*leaves)
    grads = torch.autograd.grad((g * y).sum(), leaves)
    ref_leaves = [t.detach().clone().requires_grad_(True) for t in (S, W, b)]
    y_ref = reference(*ref_leaves)
    ref_grads = torch.autograd.grad((g * y_ref).sum(), ref_leaves)
    assert torch.equal(y, y_ref)  # the same operations forward
    for name, a, e in zip(("spikes", "weight", "bias"), grads, ref_grads):
        assert float(e.abs().max()) > 0, name
        assert_close_rel(a, e, 1e-12, name)


@pytest.mark.parametrize("shape", [(7, 3, 11), (5, 11), (2, 3, 4, 11)], ids=["TBN", "BN", "4d"])
@pytest.mark.parametrize("window", [None, 11, 3 * 11])
def test_solo_matches_linear(shape, window, monkeypatch):
    # windows of 1 row and of 3 rows (not dividing the rows) of the weight gradient, and the default (one GEMM)
    S = spikes(shape, 1)
    W, b = torch.randn(4, 11, generator=gen(2), dtype=F64), torch.randn(4, generator=gen(3), dtype=F64)
    check(S, W, b, torch.nn.functional.linear, window, monkeypatch)


@pytest.mark.parametrize("window", [None, 3 * 2 * 11, 2 * 3 * 2 * 11])
def test_ensemble_matches_matmul(window, monkeypatch):
    T, E, B, N, n_out = 5, 3, 2, 11, 4
    S = spikes((T, E, B, N), 4)
    W, b = torch.randn(E, n_out, N, generator=gen(5), dtype=F64), torch.randn(E, n_out, generator=gen(6), dtype=F64)
    check(S, W, b, lambda s, w, bb: torch.matmul(s, w.mT) + bb.unsqueeze(-2), window, monkeypatch)


def test_saves_bytes_not_numbers():
    S = spikes((50, 4, 16), 7, dtype=torch.float32).requires_grad_(True)
    W = torch.randn(3, 16, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        sl.spike_linear(S, W, None)
    assert sorted(t.dtype for t in saved if t.shape == S.shape) == [torch.bool]


def test_shape_errors():
    with pytest.raises(ValueError, match="do not fit weight"):
        sl.spike_linear(torch.zeros(3, 5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="do not fit weight"):
        sl.spike_linear(torch.zeros(3, 2, 1, 5), torch.zeros(3, 2, 5))
    with pytest.raises(ValueError, match="bias must have shape"):
        sl.spike_linear(torch.zeros(3, 5), torch.zeros(2, 5), torch.zeros(3))


@pytest.mark.parametrize("ensemble", [None, 2])
@pytest.mark.parametrize("neuron", ["lif", "cuba"])
def test_training_step_keeps_no_float_spikes(neuron, ensemble):
    # What autograd keeps between forward and backward of a SpikingRNN step: the states (the one float array
    # of the sequence's length), the spikes as booleans, the inputs and weights; no float spike train.
    T, B, N, n_in = 40, 3, 24, 5
    model = SpikingRNN(n_in, N, 2, neuron=neuron, g=2.0, input_scale=2.0, generator=gen(0), ensemble=ensemble)
    lead = (T,) if ensemble is None else (T, ensemble)
    x = torch.rand(*lead, B, n_in, generator=gen(1))
    saved = {}

    def pack(t):
        saved[t.data_ptr(), t.dtype, tuple(t.shape)] = t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, states = model(x)
    spike_train = states[..., :N].numel()  # [T, (E,) B, N]: any view of a spike train has as many elements
    seq = [k for k, n in saved.items() if n >= spike_train]
    floats = sorted(k[2] for k in seq if k[1].is_floating_point)
    assert floats == [tuple(states.shape)]  # the states only (the input x has n_in < N features)
    assert sum(1 for k in seq if k[1] == torch.bool) >= 1
    out.backward(torch.randn_like(out))
    assert float(model.weight_rec.grad.abs().sum()) > 0
