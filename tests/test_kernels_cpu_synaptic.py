"""Compiled CPU kernels (numba, ``backend="cpu"``) of ``synaptic_sequence`` (snnTorch Synaptic; issue 17).

The same checks as tests/test_kernels_cpu.py for Leaky: against the naive per-step reference on the Triton
kernels' grid (tests/test_kernels_lif.py: every reset x reset_delay x detach_reset, the six surrogates,
scalar and per-neuron alpha/beta/threshold, graded 0.8): float32 within the rounding bound, float64 to
``exact_tol``, the forward bit for bit the PyTorch path's in both dtypes; gradcheck in float64 with learnable
alpha/beta/threshold; torch.compile; fake tensors; the member axis ``[T, E, B, N]``; shapes across several
blocks; gradients of some outputs only; threads; the ``auto``/disabled/no-numba dispatch.
"""

import os
import subprocess
import sys

import pytest
import torch

from surroflos import Surrogate
from surroflos.kernels import backend as kb
from surroflos.kernels import lif

from _tolerance import exact_tol, scale_of
from test_kernels_lif import SURROGATE_NAMES, _matrix, check_against_reference, check_compiled_op, far_case, \
    fused, make_case, reference, run

pytestmark = [pytest.mark.numerics,
              pytest.mark.skipif(not kb.cpu_kernels_importable(), reason="numba does not import")]

SYNAPTIC_MATRIX = [p for p in _matrix() if p.values[0] == "synaptic"]


def forward_equal_to_torch(inputs, cfg):
    """The cpu forward is the PyTorch path's, bit for bit (same operations in the same order)."""
    with torch.no_grad():
        a = lif.synaptic_sequence(*inputs, backend="cpu", **cfg)
        b = lif.synaptic_sequence(*inputs, backend="torch", **cfg)
    for name, u, v in zip(("spk", "syn", "mem"), a, b):
        assert u.dtype == v.dtype and torch.equal(u, v), name


def test_grid_covers_every_configuration():
    """The grid below is the Triton kernels' synaptic grid: all 12 reset x delay x detach combinations, with
    scalar and per-neuron parameters and every surrogate (a guard against the shared grid shrinking)."""
    combos = {tuple(p.values[1:4]) for p in SYNAPTIC_MATRIX}
    assert len(combos) == 12
    assert {p.values[5] for p in SYNAPTIC_MATRIX} == {True, False}
    assert {p.values[4] for p in SYNAPTIC_MATRIX} == set(SURROGATE_NAMES)


@pytest.mark.parametrize("kind,reset,reset_delay,detach_reset,sur,per_neuron", SYNAPTIC_MATRIX)
def test_matrix_cpu_reference(kind, reset, reset_delay, detach_reset, sur, per_neuron):
    # the Triton grid's synaptic rows: (9, 3, 7) float32, graded 0.8
    cfg = dict(surrogate=sur, reset=reset, reset_delay=reset_delay, detach_reset=detach_reset, graded=0.8)
    inputs = make_case(kind, per_neuron=per_neuron)
    check_against_reference(kind, ["cpu"], cfg, inputs)
    forward_equal_to_torch(inputs, cfg)


def _exact(cfg, shape=(8, 2, 9), seed=3):
    """float64: outputs equal to the PyTorch path's, outputs and all six gradients to the reference's to 1e-12."""
    inputs = make_case("synaptic", shape=shape, dtype=torch.float64, seed=seed)
    ref_outs, ref_grads = run(reference("synaptic", **cfg), inputs)
    outs, grads = run(fused("synaptic", "cpu", **cfg), inputs)
    assert 0.02 < float((ref_outs[0] != 0).double().mean()) < 0.9
    forward_equal_to_torch(inputs, cfg)
    for a, b in zip(outs, ref_outs):
        torch.testing.assert_close(a, b, **exact_tol(scale_of(b)))
    terms = scale_of(ref_grads[0]) * max(1.0, scale_of(*ref_outs[1:]))
    for name, a, b in zip(["x", "syn0", "mem0", "alpha", "beta", "threshold"], grads, ref_grads):
        torch.testing.assert_close(a, b, **exact_tol(max(scale_of(b), terms)), msg=name)


@pytest.mark.parametrize("reset_delay,detach_reset", [(True, True), (False, False)], ids=["linear", "general"])
@pytest.mark.parametrize("sur", SURROGATE_NAMES)
def test_float64_exact(sur, reset_delay, detach_reset):
    _exact(dict(surrogate=sur, reset="subtract", reset_delay=reset_delay, detach_reset=detach_reset, graded=1.0))


@pytest.mark.parametrize("reset_delay,detach_reset", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("reset", ["zero", "none"])
def test_float64_exact_other_resets(reset, reset_delay, detach_reset):
    _exact(dict(surrogate="atan", reset=reset, reset_delay=reset_delay, detach_reset=detach_reset, graded=1.3),
           seed=4)


@pytest.mark.parametrize("reset,reset_delay,detach_reset,per_neuron", [
    ("subtract", True, True, False), ("subtract", False, False, True), ("zero", True, False, True),
    ("zero", False, True, False), ("none", False, True, True), ("zero", True, True, True),
    ("subtract", True, False, True), ("zero", False, False, True)])
def test_gradcheck_cpu(reset, reset_delay, detach_reset, per_neuron):
    inputs = [t.requires_grad_(True) for t in far_case("synaptic", per_neuron)]
    fn = fused("synaptic", "cpu", surrogate=Surrogate("triangle", 0.7), reset=reset, reset_delay=reset_delay,
               detach_reset=detach_reset, graded=1.3)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("shape", [(1, 4, 5), (8, 1, 5), (6, 37), (5, 2, 3, 4), (6, 2, 300)],
                         ids=["T1", "B1", "flat", "rank4", "blocks"])
def test_shapes(shape):
    # (6, 2, 300): M = 600 neurons = two full 256-neuron blocks and a partial one
    inputs = make_case("synaptic", shape=shape, per_neuron=shape != (6, 37), seed=7)
    for cfg in (dict(surrogate="atan", reset="zero"), dict(surrogate="sigmoid", reset="subtract", reset_delay=False)):
        check_against_reference("synaptic", ["cpu"], cfg, inputs)
        forward_equal_to_torch(inputs, cfg)


def test_empty_sequence():
    x = torch.zeros(0, 2, 3)
    spk, syn, mem = lif.synaptic_sequence(x, None, None, 0.5, 0.9, 1.0, surrogate="atan", backend="cpu")
    assert spk.shape == syn.shape == mem.shape == (0, 2, 3)


def test_member_axis_is_one_solo_run_per_member():
    """An ensemble's ``[T, E, B, N]`` input (per-neuron parameters): each member's slice equals its own
    ``[T, B, N]`` run bit for bit (float64; each neuron's forward and backward are the same operations)."""
    T, E, B, N = 6, 3, 2, 130
    x, s0, m0, alpha, beta, thr = make_case("synaptic", shape=(T, E, B, N), dtype=torch.float64, seed=9)
    gen = torch.Generator().manual_seed(1)
    ws = [torch.randn(T, E, B, N, generator=gen, dtype=torch.float64) for _ in range(3)]

    def run_slice(xs, s0s, m0s, weights, **cfg):
        leaves = [t.clone().requires_grad_(True) for t in (xs, s0s, m0s)]
        outs = lif.synaptic_sequence(*leaves, alpha, beta, thr, surrogate="fast_sigmoid", backend="cpu", **cfg)
        loss = sum((o * w).sum() for o, w in zip(outs, weights))
        return [o.detach() for o in outs], torch.autograd.grad(loss, leaves)

    for cfg in ({}, dict(reset_delay=False, detach_reset=False)):
        outs, grads = run_slice(x, s0, m0, ws, **cfg)
        assert 0.02 < float((outs[0] != 0).double().mean()) < 0.9
        for e in range(E):
            o, g = run_slice(x[:, e].contiguous(), s0[e].contiguous(), m0[e].contiguous(), [w[:, e] for w in ws],
                             **cfg)
            for a, b in zip(outs, o):
                assert torch.equal(a[:, e], b)
            assert torch.equal(grads[0][:, e], g[0])
            assert torch.equal(grads[1][e], g[1]) and torch.equal(grads[2][e], g[2])


@pytest.mark.parametrize("used", [(0,), (1,), (2,), (0, 2)], ids=["spk", "syn", "mem", "spk+mem"])
@pytest.mark.parametrize("reset_delay", [True, False], ids=["linear", "general"])
def test_gradient_of_some_outputs(used, reset_delay):
    """Unused outputs: their gradients reach the kernels as None (no [T, M] zero fill) and count as zero."""
    inputs = make_case("synaptic", shape=(7, 3, 11), dtype=torch.float64, seed=5)
    grads = {}
    for backend in ("cpu", "torch"):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        outs = lif.synaptic_sequence(*leaves, surrogate="sigmoid", reset_delay=reset_delay, backend=backend)
        gen = torch.Generator().manual_seed(1)
        loss = sum((outs[i] * torch.randn(outs[i].shape, generator=gen, dtype=torch.float64)).sum() for i in used)
        grads[backend] = torch.autograd.grad(loss, leaves)
    assert scale_of(grads["torch"][0]) > 0.01
    for a, b in zip(grads["cpu"], grads["torch"]):
        torch.testing.assert_close(a, b, **exact_tol(scale_of(*grads["torch"])))


def test_torch_compile_captures_the_op():
    check_compiled_op("synaptic", "cpu")


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(5, 2, 3)
        outs = lif.synaptic_sequence(x, None, None, 0.5, 0.9, 1.0, surrogate="atan", backend="cpu")
        assert [o.shape for o in outs] == [(5, 2, 3)] * 3


def test_auto_picks_cpu(monkeypatch):
    """``auto`` runs the kernels for float32/float64 CPU tensors (the result is the cpu backend's, bit for bit),
    the PyTorch path for half precision and when the kernels are disabled."""
    inputs = make_case("synaptic", shape=(6, 2, 5))
    calls = []
    from surroflos.kernels import lif_cpu

    real = lif_cpu.synaptic_forward
    monkeypatch.setattr(lif_cpu, "synaptic_forward", lambda *a: calls.append(a[0].dtype) or real(*a))
    for dtype in (torch.float32, torch.float64):
        cast = [t.to(dtype) for t in inputs]
        with torch.no_grad():
            auto = lif.synaptic_sequence(*cast, surrogate="atan")
            cpu = lif.synaptic_sequence(*cast, surrogate="atan", backend="cpu")
        assert all(torch.equal(a, b) for a, b in zip(auto, cpu))
    assert calls == [torch.float32, torch.float32, torch.float64, torch.float64]
    half = [inputs[0].half(), inputs[1].half(), inputs[2].half(), *inputs[3:]]
    lif.synaptic_sequence(*half, surrogate="atan")
    monkeypatch.setenv("SURROFLOS_DISABLE_CPU_KERNELS", "1")
    lif.synaptic_sequence(*inputs, surrogate="atan")
    assert len(calls) == 4  # neither half precision nor the disabled kernels reached them
    with pytest.raises(kb.CpuKernelUnavailableError, match="numba"):
        lif.synaptic_sequence(*inputs, surrogate="atan", backend="cpu")


def test_half_precision_explicit():
    inputs = make_case("synaptic", shape=(10, 2, 17), per_neuron=True)
    low = [inputs[0].half(), inputs[1].half(), inputs[2].half(), *inputs[3:]]
    forward_equal_to_torch(low, dict(surrogate="atan", reset="subtract", reset_delay=False))


def test_two_threads_equal_one(monkeypatch):
    """Blocks are independent: the thread count cannot change any result (bit for bit)."""
    from surroflos.kernels import lif_cpu

    monkeypatch.setattr(lif_cpu, "SMALL", 0)  # two threads even for this small problem
    inputs = make_case("synaptic", shape=(12, 4, 300), per_neuron=True, seed=2)
    before = torch.get_num_threads()
    for cfg in (dict(surrogate="gaussian", reset="zero"), dict(surrogate="atan", reset_delay=False)):
        results = []
        try:
            for n in (1, 2):
                torch.set_num_threads(n)
                results.append(run(fused("synaptic", "cpu", **cfg), inputs))
        finally:
            torch.set_num_threads(before)
        (o1, g1), (o2, g2) = results
        for a, b in zip(list(o1) + list(g1), list(o2) + list(g2)):
            assert torch.equal(a, b)


def test_without_numba_auto_falls_back_to_torch():
    """In a process where ``import numba`` fails, ``auto`` runs the PyTorch path and ``cpu`` says why."""
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import torch\n"
        "from surroflos.kernels import lif, backend as kb\n"
        "x = torch.rand(6, 2, 3, requires_grad=True)\n"
        "out = lif.synaptic_sequence(x, None, None, 0.5, 0.9, 0.5, surrogate='atan')\n"
        "out[0].sum().backward()\n"
        "ref = lif.synaptic_sequence(x, None, None, 0.5, 0.9, 0.5, surrogate='atan', backend='torch')\n"
        "assert all(torch.equal(a, b) for a, b in zip(out, ref)) and x.grad is not None\n"
        "try:\n"
        "    lif.synaptic_sequence(x, None, None, 0.5, 0.9, 0.5, surrogate='atan', backend='cpu')\n"
        "except kb.CpuKernelUnavailableError as e:\n"
        "    print('refused:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "SURROFLOS_DISABLE_CPU_KERNELS": "0"})
    assert out.returncode == 0, out.stderr
    assert "refused: backend='cpu' needs numba" in out.stdout


def test_kernels_are_cached_on_disk():
    from surroflos.kernels import _lif_cpu_kernels as k

    assert k._CACHE, "no writable numba cache location in the test environment"
    for fn in (k.synaptic_fwd, k.synaptic_bwd_linear, k.synaptic_bwd_general):
        assert fn._cache is not None and type(fn._cache).__name__ == "FunctionCache"


def test_dropin_sequence_runs_the_kernels(monkeypatch):
    """surroflos.snntorch.Synaptic.sequence (``auto``) on CPU tensors reaches the compiled kernels, with
    snnTorch's own step loop's results."""
    from surroflos import snntorch as S
    from surroflos.kernels import lif_cpu

    calls = []
    real = lif_cpu.synaptic_forward
    monkeypatch.setattr(lif_cpu, "synaptic_forward", lambda *a: calls.append(1) or real(*a))
    layer = S.Synaptic(alpha=0.7, beta=0.9, threshold=0.6)
    x = torch.rand(8, 2, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    spk, syn, mem = layer.sequence(x)
    assert calls and 0 < float(spk.mean()) < 1
    ref = layer.sequence(x, backend="torch")
    for a, b in zip((spk, syn, mem), ref):
        assert torch.equal(a, b)
