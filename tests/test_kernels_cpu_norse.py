"""Compiled CPU kernels (numba, ``backend="cpu"``) of Norse's LIF and LIF box (surroflos.kernels.norse_lif_cpu).

The checks of tests/test_kernels_norse_lif.py with ``backend="cpu"``: against the naive per-step loops (every
surrogate and Heaviside, both box resets, numbers / 0-dim / per-neuron learnable parameters, shapes across
blocks, broadcast initial states), float64 gradcheck; then the forward bit for bit the PyTorch path's,
float64 gradients equal to the PyTorch path's to 1e-12, gradients of some outputs only (no zero fill),
torch.compile, fake tensors, the drop-in modules on ``auto``, threads, the dispatch rules.
"""

import pytest
import torch

from surroflos import norse as sn
from surroflos import surrogate as sg
from surroflos.kernels import backend as kb
from surroflos.kernels import norse_lif as nl

from _tolerance import exact_tol, scale_of
from test_kernels_norse_lif import F32, F64, SG_IDS, SURROGATES, _margin, box_case, check_spiking, compare_box, \
    compare_lif, grads, leaves, lif_case, naive_box, naive_lif, run_box, run_lif

import norse.torch as nt  # noqa: E402

pytestmark = [pytest.mark.numerics,
              pytest.mark.skipif(not kb.cpu_kernels_importable(), reason="numba does not import")]


@pytest.mark.parametrize("surrogate", SURROGATES, ids=SG_IDS)
def test_lif_every_surrogate(surrogate):
    compare_lif((7, 3, 5), "per_neuron", F32, surrogate, "cpu", 10)


@pytest.mark.parametrize("shape,kind,dtype", [((7, 3, 5), "scalar", F32), ((7, 3, 5), "tensor", F64),
                                              ((1, 2, 5), "per_neuron", F32), ((9, 1, 3), "tensor", F32),
                                              ((5, 2, 3, 4), "per_neuron", F64), ((4, 3, 100), "per_neuron", F32),
                                              ((3, 2, 700), "per_neuron", F64)])
def test_lif_shapes_and_parameters(shape, kind, dtype):
    """(3, 2, 700): M = 1400 neurons, several 256-neuron blocks and a partial one."""
    compare_lif(shape, kind, dtype, sg.Surrogate("atan"), "cpu", 20)


@pytest.mark.parametrize("reset", nl.RESETS)
@pytest.mark.parametrize("surrogate", SURROGATES, ids=SG_IDS)
def test_box_every_surrogate_and_reset(reset, surrogate):
    compare_box((7, 3, 5), "per_neuron", F32, reset, surrogate, "cpu", 30)


@pytest.mark.parametrize("shape,kind,dtype,reset", [((6, 3, 5), "scalar", F64, "value"),
                                                    ((1, 1, 7), "tensor", F32, "subtract"),
                                                    ((5, 2, 2, 3), "tensor", F64, "subtract"),
                                                    ((4, 3, 100), "per_neuron", F32, "value"),
                                                    ((3, 2, 700), "per_neuron", F64, "subtract")])
def test_box_shapes_and_parameters(shape, kind, dtype, reset):
    compare_box(shape, kind, dtype, reset, sg.Surrogate("fast_sigmoid", 5.0), "cpu", 40)


def test_broadcast_initial_state_gets_summed_gradient():
    x, _, _, p = lif_case((4, 3, 5), "tensor", F64, 60)
    v0 = torch.full((5,), 0.2, dtype=F64, requires_grad=True)
    i0 = torch.zeros((), dtype=F64, requires_grad=True)
    out = run_lif(x, v0, i0, p, 1e-3, sg.Surrogate("atan"), "cpu")
    ref = naive_lif(x, v0, i0, p, 1e-3, sg.Surrogate("atan"))[:3]
    w = leaves(x, v0, i0, p=p)
    for a, b in zip(grads(out, w, 61), grads(ref, w, 61)):
        torch.testing.assert_close(a, b, **exact_tol(scale_of(b)))


def test_lif_gradcheck():
    x, v0, i0, p = lif_case((4, 2, 3), "per_neuron", F64, 70)
    p["tau_syn_inv"] = torch.tensor(180.0, dtype=F64, requires_grad=True)
    z, _, _, u = naive_lif(x, v0, i0, p, 1e-3, None)
    check_spiking(z)
    assert _margin(u, p["v_th"]) > 1e-3
    names = list(p)

    def f(x, v0, i0, *vals):
        return run_lif(x, v0, i0, dict(zip(names, vals)), 1e-3, None, "cpu")

    assert torch.autograd.gradcheck(f, (x, v0, i0, *p.values()))


@pytest.mark.parametrize("reset", nl.RESETS)
def test_box_gradcheck(reset):
    x, v0, p = box_case((4, 2, 3), "per_neuron", F64, 80)
    z, _, u = naive_box(x, v0, p, 1e-3, reset, None)
    check_spiking(z)
    assert _margin(u, p["v_th"]) > 1e-3
    names = list(p)

    def f(x, v0, *vals):
        return run_box(x, v0, dict(zip(names, vals)), 1e-3, reset, None, "cpu")

    assert torch.autograd.gradcheck(f, (x, v0, *p.values()))


def _both(run, seed, used):
    """Outputs and gradients (of the outputs listed in ``used``) of the cpu and the torch backends."""
    res = {}
    for backend in ("cpu", "torch"):
        out, w = run(backend)
        g = torch.Generator().manual_seed(seed)
        loss = sum((out[k] * torch.randn(out[k].shape, generator=g, dtype=out[k].dtype)).sum() for k in used)
        res[backend] = ([o.detach() for o in out], torch.autograd.grad(loss, w, allow_unused=True))
    return res


@pytest.mark.parametrize("used", [(0,), (1,), (2,), (0, 1, 2)], ids=["z", "v", "i", "all"])
@pytest.mark.parametrize("surrogate", [sg.Surrogate("atan"), None], ids=["atan", "heaviside"])
def test_lif_equals_torch_path_float64(used, surrogate):
    """float64, per-neuron learnable parameters: the forward bit for bit, every gradient to 1e-12, also when
    only some outputs are used (the others' gradients reach the kernel as None)."""
    def run(backend):
        x, v0, i0, p = lif_case((12, 3, 300), "per_neuron", F64, 100)
        return run_lif(x, v0, i0, p, 1e-3, surrogate, backend), leaves(x, v0, i0, p=p)

    res = _both(run, 101, used)
    check_spiking(res["torch"][0][0])
    for a, b in zip(res["cpu"][0], res["torch"][0]):
        assert torch.equal(a, b)
    for k, (a, b) in enumerate(zip(res["cpu"][1], res["torch"][1])):
        torch.testing.assert_close(a, b, **exact_tol(scale_of(b)), msg=f"gradient {k}")


@pytest.mark.parametrize("used", [(0,), (1,), (0, 1)], ids=["z", "v", "all"])
@pytest.mark.parametrize("reset", nl.RESETS)
def test_box_equals_torch_path_float64(reset, used):
    def run(backend):
        x, v0, p = box_case((12, 3, 300), "per_neuron", F64, 110)
        return run_box(x, v0, p, 1e-3, reset, sg.Surrogate("sigmoid", 4.0), backend), leaves(x, v0, p=p)

    res = _both(run, 111, used)
    check_spiking(res["torch"][0][0])
    for a, b in zip(res["cpu"][0], res["torch"][0]):
        assert torch.equal(a, b)
    for k, (a, b) in enumerate(zip(res["cpu"][1], res["torch"][1])):
        torch.testing.assert_close(a, b, **exact_tol(scale_of(b)), msg=f"gradient {k}")


def test_forward_float32_equals_torch_path():
    x, v0, i0, p = lif_case((9, 4, 130), "per_neuron", F32, 120)
    xb, vb, pb = box_case((9, 4, 130), "per_neuron", F32, 121)
    with torch.no_grad():
        for a, b in zip(run_lif(x, v0, i0, p, 1e-3, None, "cpu"), run_lif(x, v0, i0, p, 1e-3, None, "torch")):
            assert torch.equal(a, b)
        for reset in nl.RESETS:
            for a, b in zip(run_box(xb, vb, pb, 1e-3, reset, None, "cpu"),
                            run_box(xb, vb, pb, 1e-3, reset, None, "torch")):
                assert torch.equal(a, b)


def test_two_threads_equal_one(monkeypatch):
    from surroflos.kernels import lif_cpu

    monkeypatch.setattr(lif_cpu, "SMALL", 0)
    x, v0, i0, p = lif_case((10, 4, 300), "per_neuron", F32, 130)
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out = run_lif(x, v0, i0, p, 1e-3, sg.Surrogate("atan"), "cpu")
            results.append([o.detach() for o in out] + list(grads(out, leaves(x, v0, i0, p=p), 131)))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_torch_compile_captures_the_ops():
    torch._dynamo.reset()
    x, v0, i0, p = lif_case((5, 2, 4), "per_neuron", F32, 90)
    xb, vb, pb = box_case((5, 2, 4), "tensor", F32, 91)

    def fn(x, v0, i0, tau, v_th, xb, vb, tau_b):
        z, v, i = nl.lif_feed_forward_sequence(x, v0, i0, tau_mem_inv=tau, tau_syn_inv=200.0, v_leak=0.0, v_th=v_th,
                                               v_reset=0.0, dt=1e-3, surrogate=sg.Surrogate("atan"), backend="cpu")
        zb, vbo = nl.lif_box_sequence(xb, vb, tau_mem_inv=tau_b, v_leak=0.1, v_th=0.9, v_reset=0.0, dt=1e-3,
                                      reset="subtract", surrogate=sg.Surrogate("superspike"), backend="cpu")
        return (z * 1.5).sum() + (v * i).sum() + (zb - vbo).square().sum()

    args = (x, v0, i0, p["tau_mem_inv"], p["v_th"], xb, vb, pb["tau_mem_inv"])
    eager = fn(*args)
    g_eager = torch.autograd.grad(eager, args)
    out = torch.compile(fn, fullgraph=True, backend="aot_eager")(*args)
    assert torch.equal(out, eager)  # the same ops on the same inputs
    for a, b in zip(torch.autograd.grad(out, args), g_eager):
        assert torch.equal(a, b)


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(5, 2, 3)
        outs = nl.lif_feed_forward_sequence(x, torch.zeros(2, 3), torch.zeros(2, 3), tau_mem_inv=100.0,
                                            tau_syn_inv=200.0, v_leak=0.0, v_th=1.0, v_reset=0.0, backend="cpu")
        assert [o.shape for o in outs] == [(5, 2, 3)] * 3


def test_auto_dispatch(monkeypatch):
    """``auto``: the kernels for float32/float64 CPU tensors, the PyTorch path for half precision and with
    SURROFLOS_DISABLE_CPU_KERNELS=1 (then ``cpu`` explains)."""
    assert nl._resolve("auto", "cpu", "torch.float32") == nl._resolve("cpu", "cpu", "torch.float16") == "cpu"
    assert nl._resolve("auto", "cpu", "torch.float16") == "torch"
    from surroflos.kernels import norse_lif_cpu

    calls = []
    real = norse_lif_cpu.lif_box_forward
    monkeypatch.setattr(norse_lif_cpu, "lif_box_forward", lambda *a: calls.append(a[0].dtype) or real(*a))
    xb, vb, pb = box_case((6, 2, 5), "tensor", F32, 140)
    with torch.no_grad():
        for dtype in (F32, F64):
            run_box(xb.to(dtype), vb.to(dtype), pb, 1e-3, "value", None, "auto")
        run_box(xb.half(), vb.half(), pb, 1e-3, "value", None, "auto")
    assert calls == [F32, F64]
    monkeypatch.setenv("SURROFLOS_DISABLE_CPU_KERNELS", "1")
    with torch.no_grad():
        run_box(xb, vb, pb, 1e-3, "value", None, "auto")
        assert len(calls) == 2
        with pytest.raises(kb.CpuKernelUnavailableError, match="numba"):
            run_box(xb, vb, pb, 1e-3, "value", None, "cpu")


def test_dropin_modules_run_the_kernels(monkeypatch):
    """surroflos.norse.LIF / LIFBox on CPU tensors (``auto``) reach the compiled kernels and keep Norse's results."""
    from surroflos.kernels import norse_lif_cpu

    calls = []
    for name in ("lif_ff_forward", "lif_box_forward"):
        real = getattr(norse_lif_cpu, name)
        monkeypatch.setattr(norse_lif_cpu, name, lambda *a, _r=real, _n=name: calls.append(_n) or _r(*a))
    x = 3.0 * torch.rand(20, 2, 6, generator=torch.Generator().manual_seed(0), dtype=F64)
    ours, _ = sn.LIF(nt.LIFParameters())(x)
    ref, _ = nt.LIF(nt.LIFParameters())(x)
    assert "lif_ff_forward" in calls
    check_spiking(ref)
    assert torch.equal(ours, ref)
    p = nt.LIFBoxParameters(v_th=torch.as_tensor(0.9, dtype=F64))
    ours_b, _ = sn.LIFBox(p)(x)
    cell, state, zs = nt.LIFBoxCell(p), None, []
    for t in range(x.shape[0]):
        z, state = cell(x[t], state)
        zs.append(z)
    assert "lif_box_forward" in calls and torch.equal(ours_b, torch.stack(zs))


def test_kernels_are_cached_on_disk():
    from surroflos.kernels import _lif_cpu_kernels as k

    assert k._CACHE
    for fn in (k.norse_ff_fwd, k.norse_ff_bwd, k.norse_box_fwd, k.norse_box_bwd):
        assert fn._cache is not None and type(fn._cache).__name__ == "FunctionCache"


def test_dropin_modules_take_backend_cpu(monkeypatch):
    """``backend="cpu"`` on the Norse drop-ins runs the compiled kernels (bit for bit what ``auto`` gives on a
    float32 CPU tensor), the recurrent layer runs the recurrent op's compiled forward with it, and the loop-only
    cases raise."""
    from surroflos.kernels import norse_lif_cpu

    calls = []
    real = norse_lif_cpu.lif_ff_forward
    monkeypatch.setattr(norse_lif_cpu, "lif_ff_forward", lambda *a: calls.append(1) or real(*a))
    x = 3.0 * torch.rand(20, 2, 6, generator=torch.Generator().manual_seed(1))
    cpu_out, _ = sn.LIF(nt.LIFParameters(), backend="cpu")(x)
    auto_out, _ = sn.LIF(nt.LIFParameters())(x)
    assert len(calls) == 2 and torch.equal(cpu_out, auto_out)
    assert "backend='cpu'" in repr(sn.LIF(backend="cpu"))
    from surroflos.kernels.recurrent import cpu as rec_cpu

    rec_calls = []
    real_rec = rec_cpu.forward
    monkeypatch.setattr(rec_cpu, "forward", lambda *a: rec_calls.append(1) or real_rec(*a))
    torch.manual_seed(5)
    layer = sn.LIFRecurrent(6, 4, backend="cpu")
    z_cpu, _ = layer(x)
    layer.backend = "torch"
    z_torch, _ = layer(x)
    assert rec_calls == [1] and torch.equal(z_cpu, z_torch)
    with pytest.raises(NotImplementedError, match=r"backend='cpu'"):  # a [2, 6] parameter: only the loop
        sn.LIF(nt.LIFParameters(v_th=torch.ones(2, 6)), backend="cpu")(x)
