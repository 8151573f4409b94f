"""Compiled CPU kernels (numba, ``backend="cpu"``) of ``leaky_sequence`` (surroflos.kernels.lif_cpu).

Against the naive per-step reference on the same configuration grid as the Triton kernels
(tests/test_kernels_lif.py: every reset x reset_delay x detach_reset with all six surrogates, scalar and
per-neuron parameters): float32 within the rounding bound, float64 to ``exact_tol``; the forward is
bit for bit the PyTorch path's in both dtypes. Then gradcheck in float64, torch.compile, the member axis
``[T, E, B, N]``, shapes across several 256-neuron blocks, gradients of one output only, threads, and the
fallbacks: numba absent, no writable cache directory.

The kernels compile once per dtype (~10 s each, cached on disk in kernels/__pycache__ afterwards); every
test reuses the same compiled functions (the configuration is a runtime argument, not a specialisation).
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

LEAKY_MATRIX = [p for p in _matrix() if p.values[0] == "leaky"]


def forward_equal_to_torch(inputs, cfg):
    """The cpu forward is the PyTorch path's, bit for bit (same operations in the same order)."""
    with torch.no_grad():
        a = lif.leaky_sequence(*inputs, backend="cpu", **cfg)
        b = lif.leaky_sequence(*inputs, backend="torch", **cfg)
    for u, v in zip(a, b):
        assert u.dtype == v.dtype and torch.equal(u, v)


@pytest.mark.parametrize("kind,reset,reset_delay,detach_reset,sur,per_neuron", LEAKY_MATRIX)
def test_matrix_cpu_reference(kind, reset, reset_delay, detach_reset, sur, per_neuron):
    # the Triton grid's leaky rows: (9, 3, 7) float32, graded 0.8
    cfg = dict(surrogate=sur, reset=reset, reset_delay=reset_delay, detach_reset=detach_reset, graded=0.8)
    inputs = make_case(kind, per_neuron=per_neuron)
    check_against_reference(kind, ["cpu"], cfg, inputs)
    forward_equal_to_torch(inputs, cfg)


@pytest.mark.parametrize("reset_delay,detach_reset", [(True, True), (False, False)], ids=["linear", "general"])
@pytest.mark.parametrize("sur", SURROGATE_NAMES)
def test_float64_exact(sur, reset_delay, detach_reset):
    """float64: spikes and membrane equal to the PyTorch path's, gradients to the reference's to 1e-12."""
    cfg = dict(surrogate=sur, reset="subtract", reset_delay=reset_delay, detach_reset=detach_reset, graded=1.0)
    inputs = make_case("leaky", shape=(7, 2, 9), dtype=torch.float64, seed=3)
    ref_outs, ref_grads = run(reference("leaky", **cfg), inputs)
    outs, grads = run(fused("leaky", "cpu", **cfg), inputs)
    assert 0.02 < float((ref_outs[0] != 0).double().mean()) < 0.9
    forward_equal_to_torch(inputs, cfg)
    for a, b in zip(outs, ref_outs):
        torch.testing.assert_close(a, b, **exact_tol(scale_of(b)))
    terms = scale_of(ref_grads[0]) * max(1.0, scale_of(ref_outs[1]))
    for name, a, b in zip(["x", "mem0", "beta", "threshold"], grads, ref_grads):
        torch.testing.assert_close(a, b, **exact_tol(max(scale_of(b), terms)), msg=name)


@pytest.mark.parametrize("reset", ["zero", "none"])
def test_float64_exact_other_resets(reset):
    cfg = dict(surrogate="atan", reset=reset, graded=1.3)
    inputs = make_case("leaky", shape=(8, 3, 5), dtype=torch.float64, seed=4)
    ref_outs, ref_grads = run(reference("leaky", **cfg), inputs)
    outs, grads = run(fused("leaky", "cpu", **cfg), inputs)
    forward_equal_to_torch(inputs, cfg)
    for a, b in zip(list(outs) + list(grads), list(ref_outs) + list(ref_grads)):
        torch.testing.assert_close(a, b, **exact_tol(scale_of(*ref_grads)))


@pytest.mark.parametrize("reset,reset_delay,detach_reset,per_neuron", [
    ("subtract", True, True, False), ("subtract", False, False, True), ("zero", True, False, True),
    ("zero", False, True, False), ("none", False, True, True), ("zero", True, True, True)])
def test_gradcheck_cpu(reset, reset_delay, detach_reset, per_neuron):
    inputs = [t.requires_grad_(True) for t in far_case("leaky", per_neuron)]
    fn = fused("leaky", "cpu", surrogate=Surrogate("triangle", 0.7), reset=reset, reset_delay=reset_delay,
               detach_reset=detach_reset, graded=1.3)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("shape", [(1, 4, 5), (8, 1, 5), (6, 37), (5, 2, 3, 4), (6, 2, 300)],
                         ids=["T1", "B1", "flat", "rank4", "blocks"])
def test_shapes(shape):
    # (6, 2, 300): M = 600 neurons = two full 256-neuron blocks and a partial one
    inputs = make_case("leaky", shape=shape, per_neuron=shape != (6, 37), seed=7)
    cfg = dict(surrogate="atan", reset="zero")
    check_against_reference("leaky", ["cpu"], cfg, inputs)
    forward_equal_to_torch(inputs, cfg)


def test_member_axis_is_one_solo_run_per_member():
    """An ensemble's ``[T, E, B, N]`` input (per-neuron parameters): each member's slice equals its own
    ``[T, B, N]`` run bit for bit (float64; each neuron's forward and backward are the same operations)."""
    T, E, B, N = 6, 3, 2, 130
    x, m0, beta, thr = make_case("leaky", shape=(T, E, B, N), dtype=torch.float64, seed=9)
    gen = torch.Generator().manual_seed(1)
    w_spk, w_mem = (torch.randn(T, E, B, N, generator=gen, dtype=torch.float64) for _ in range(2))

    def run_slice(xs, m0s, ws, wm):
        leaves = [t.clone().requires_grad_(True) for t in (xs, m0s)]
        spk, mem = lif.leaky_sequence(*leaves, beta, thr, surrogate="fast_sigmoid", backend="cpu")
        return (spk.detach(), mem.detach()), torch.autograd.grad((spk * ws).sum() + (mem * wm).sum(), leaves)

    outs, grads = run_slice(x, m0, w_spk, w_mem)
    for e in range(E):
        o, g = run_slice(x[:, e].contiguous(), m0[e].contiguous(), w_spk[:, e], w_mem[:, e])
        assert torch.equal(outs[0][:, e], o[0]) and torch.equal(outs[1][:, e], o[1])
        assert torch.equal(grads[0][:, e], g[0]) and torch.equal(grads[1][e], g[1])  # per neuron: same operations


@pytest.mark.parametrize("which", ["spk", "mem"])
def test_gradient_of_one_output(which):
    """Only one output used: the other's gradient reaches the kernel as None (no [T, M] zero fill)."""
    inputs = make_case("leaky", shape=(7, 3, 11), dtype=torch.float64, seed=5)
    grads = {}
    for backend in ("cpu", "torch"):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        spk, mem = lif.leaky_sequence(*leaves, surrogate="sigmoid", backend=backend)
        out = spk if which == "spk" else mem
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        grads[backend] = torch.autograd.grad((out * w).sum(), leaves)
    for a, b in zip(grads["cpu"], grads["torch"]):
        torch.testing.assert_close(a, b, **exact_tol(scale_of(*grads["torch"])))


def test_torch_compile_captures_the_op():
    check_compiled_op("leaky", "cpu")


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(5, 2, 3)
        spk, mem = lif.leaky_sequence(x, None, 0.9, 1.0, surrogate="atan", backend="cpu")
        assert spk.shape == mem.shape == (5, 2, 3)


def test_auto_picks_cpu_for_float_cpu_tensors():
    x = make_case("leaky")[0]
    assert lif._backend("auto", x) == "cpu"
    assert lif._backend("auto", x.double()) == "cpu"
    assert lif._backend("auto", x.half()) == "torch"  # half precision: the reference path
    assert lif._backend("auto", x, cpu_kernel=False) == "torch"  # an op without CPU kernels
    assert kb.resolve_backend("cpu", "cpu") == "torch"  # ... where "cpu" runs the PyTorch path


def test_half_precision_explicit():
    inputs = make_case("leaky", shape=(10, 2, 17), per_neuron=True)
    low = [inputs[0].half(), inputs[1].half(), inputs[2], inputs[3]]
    cfg = dict(surrogate="atan", reset="subtract", reset_delay=False)
    forward_equal_to_torch(low, cfg)  # both accumulate in float32 and round once


def test_two_threads_equal_one(monkeypatch):
    """Blocks are independent: the thread count cannot change any result (bit for bit)."""
    from surroflos.kernels import lif_cpu

    monkeypatch.setattr(lif_cpu, "SMALL", 0)  # two threads even for this small problem
    inputs = make_case("leaky", shape=(12, 4, 300), per_neuron=True, seed=2)
    cfg = dict(surrogate="gaussian", reset="zero")
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append(run(fused("leaky", "cpu", **cfg), inputs))
    finally:
        torch.set_num_threads(before)
    (o1, g1), (o2, g2) = results
    for a, b in zip(list(o1) + list(g1), list(o2) + list(g2)):
        assert torch.equal(a, b)


def test_cpu_backend_refuses_other_devices_and_missing_numba(monkeypatch):
    with pytest.raises(kb.CpuKernelUnavailableError, match="CPU tensors"):
        kb.resolve_backend("cpu", "cuda", cpu_kernel=True)
    monkeypatch.setenv("SURROFLOS_DISABLE_CPU_KERNELS", "1")
    with pytest.raises(kb.CpuKernelUnavailableError, match="numba"):
        lif.leaky_sequence(torch.rand(3, 2), None, 0.9, 1.0, surrogate="atan", backend="cpu")
    assert lif._backend("auto", torch.rand(3, 2)) == "torch"


def test_without_numba_auto_falls_back_to_torch():
    """In a process where ``import numba`` fails, ``auto`` runs the PyTorch path and ``cpu`` says why."""
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import torch\n"
        "from surroflos.kernels import lif, backend as kb\n"
        "x = torch.rand(6, 2, 3, requires_grad=True)\n"
        "assert lif._backend('auto', x) == 'torch'\n"
        "spk, mem = lif.leaky_sequence(x, None, 0.9, 0.5, surrogate='atan')\n"
        "spk.sum().backward()\n"
        "ref = lif.leaky_sequence(x, None, 0.9, 0.5, surrogate='atan', backend='torch')\n"
        "assert torch.equal(spk, ref[0]) and x.grad is not None\n"
        "try:\n"
        "    lif.leaky_sequence(x, None, 0.9, 0.5, surrogate='atan', backend='cpu')\n"
        "except kb.CpuKernelUnavailableError as e:\n"
        "    print('refused:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "SURROFLOS_DISABLE_CPU_KERNELS": "0"})
    assert out.returncode == 0, out.stderr
    assert "refused: backend='cpu' needs numba" in out.stdout


def test_cache_dir_fallback_when_nothing_is_writable(monkeypatch, tmp_path):
    """Read-only install and home: the kernels' cache goes to a temporary directory instead of failing."""
    import numba

    from surroflos.kernels import lif_cpu

    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(lif_cpu.os, "access", lambda *a, **k: False)
    monkeypatch.setattr(lif_cpu.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(numba.config, "CACHE_DIR", numba.config.CACHE_DIR)
    lif_cpu._cache_dir_fallback()
    assert numba.config.CACHE_DIR.startswith(str(tmp_path)) and os.path.isdir(numba.config.CACHE_DIR)


def test_kernels_are_cached_on_disk():
    from surroflos.kernels import _lif_cpu_kernels as k

    assert k._CACHE, "no writable numba cache location in the test environment"
    for fn in (k.leaky_fwd, k.leaky_bwd_linear, k.leaky_bwd_general):
        assert fn._cache is not None and type(fn._cache).__name__ == "FunctionCache"


def test_idle_threads_sleep(monkeypatch):
    """After a two-thread call the pool's threads wait without spinning: no CPU time while idle."""
    import resource
    import time

    from surroflos.kernels import lif_cpu

    monkeypatch.setattr(lif_cpu, "SMALL", 0)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        lif.leaky_sequence(torch.rand(20, 4, 300), None, 0.9, 0.5, surrogate="atan", backend="cpu")
        time.sleep(0.05)  # let any OpenMP worker of torch's own ops finish its spin-wait
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(0.5)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        torch.set_num_threads(before)
    assert len(lif_cpu._POOL) >= 1  # the pool exists: its threads are alive and idle
    busy = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    assert busy < 0.1, f"{busy:.3f} s of CPU time in 0.5 s of idling: something spins"


def test_forked_child_gets_its_own_pool(monkeypatch):
    """A child forked after the pool started (multiprocessing) runs two-thread calls instead of hanging on the
    parent's threads, which it does not have."""
    import multiprocessing as mp

    from surroflos.kernels import lif_cpu

    monkeypatch.setattr(lif_cpu, "SMALL", 0)
    x = torch.rand(20, 4, 300)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ref = lif.leaky_sequence(x, None, 0.9, 0.5, surrogate="atan", backend="cpu")[0]
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_child, args=(x, q))
        p.start()
        got = q.get(timeout=120)
        p.join(timeout=60)
    finally:
        torch.set_num_threads(before)
    assert p.exitcode == 0 and got == ref.numpy().tobytes()


def _child(x, q):
    torch.set_num_threads(2)
    # bytes, not a tensor: a tensor travels as a shared-memory handle that dies with this process
    q.put(lif.leaky_sequence(x, None, 0.9, 0.5, surrogate="atan", backend="cpu")[0].numpy().tobytes())


def test_snntorch_dropins_take_backend_cpu(monkeypatch):
    """``sequence(x, backend="cpu")`` on the snnTorch drop-ins: Leaky and Synaptic run the compiled kernels (bit
    for bit what ``auto`` gives on a float32 CPU tensor); the recurrent layers, which have none, raise."""
    from surroflos import snntorch as st
    from surroflos.kernels import lif_cpu

    calls = []
    for name in ("leaky_forward", "synaptic_forward"):
        real = getattr(lif_cpu, name)
        monkeypatch.setattr(lif_cpu, name, lambda *a, _r=real, _n=name: calls.append(_n) or _r(*a))
    x = 2.0 * torch.rand(15, 3, 8, generator=torch.Generator().manual_seed(4))
    for layer in (st.Leaky(beta=0.9), st.Synaptic(alpha=0.8, beta=0.9)):
        cpu = layer.sequence(x, backend="cpu")
        auto = layer.sequence(x)
        assert all(torch.equal(a, b) for a, b in zip(cpu, auto))
    assert calls == ["leaky_forward"] * 2 + ["synaptic_forward"] * 2
    assert bool(cpu[0].any())
    # the recurrent layers run the recurrent op's compiled (spike-sparse) forward
    from surroflos.kernels.recurrent import cpu as rec_cpu

    rec_calls = []
    real_rec = rec_cpu.forward
    monkeypatch.setattr(rec_cpu, "forward", lambda *a: rec_calls.append(1) or real_rec(*a))
    torch.manual_seed(6)
    for layer in (st.RLeaky(beta=0.9, linear_features=8), st.RSynaptic(alpha=0.8, beta=0.9, linear_features=8)):
        cpu = layer.sequence(x, backend="cpu")
        ref = layer.sequence(x, backend="torch")
        assert torch.equal(cpu[0], ref[0]) and all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(cpu, ref))
    assert rec_calls == [1, 1]
    with pytest.raises(ValueError, match="backend must be one of"):
        st.Leaky(beta=0.9).sequence(x, backend="numba")
