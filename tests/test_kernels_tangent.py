"""surroflos.kernels.tangent: the fused tangent ops (Triton via the interpreter on CPU, and the PyTorch
path) against naive per-batch references, every model's own tangent function, and lyapunov_spectrum /
floss with ``backend="triton"`` against ``backend="torch"``.

The naive references below are written independently of the ops: explicit ``diag`` matrices, one batch
element at a time, differentiated by autograd. The model references are the models' own tangent maps
(``lif_tangent``, ``cuba_tangent``, ``rate_tangent``, ``rleaky_flat_tangent``, ``rsynaptic_flat_tangent``,
``lif_recurrent_flat_tangent``), themselves tested against forward-mode AD of the step functions.
"""

import pytest
import torch
from torch import nn

import surroflos as sf
from surroflos.kernels import tangent as kt
from surroflos.kernels.backend import TritonUnavailableError
from surroflos.models import LinearMap

from _kernel_checks import DEVICE, assert_close_rel, requires_triton
from _tolerance import assert_within_rounding, rounding_rtol, scale_of

F64, F32 = torch.float64, torch.float32
pytestmark = pytest.mark.numerics
BACKENDS = ["torch", pytest.param("triton", marks=requires_triton)]
ON_CUDA = torch.cuda.is_available()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rnd(*shape, seed, dtype=F64, scale=1.0, grad=True):
    t = (torch.randn(shape, generator=gen(seed), dtype=F64) * scale).to(dtype).to(DEVICE)
    return t.requires_grad_(grad)


def coef(kind, B, N, seed, dtype):
    """A coefficient as a Python number, a 0-d, an [N] or a [B, N] tensor."""
    if kind == "float":
        return 0.37
    shape = {"0d": (), "N": (N,), "BN": (B, N)}[kind]
    return rnd(*shape, seed=seed, dtype=dtype)


def full(c, B, N, dtype):
    c = torch.as_tensor(c, dtype=dtype, device=DEVICE)
    return torch.broadcast_to(c, (B, N))


def naive_dense(W, d, a, Q, c=None):
    B, N, _ = Q.shape
    d, a = full(d, B, N, Q.dtype), full(a, B, N, Q.dtype)
    c = full(1.0 if c is None else c, B, N, Q.dtype)
    return torch.stack([torch.diag(c[b]) @ (W @ torch.diag(d[b]) @ Q[b] + torch.diag(a[b]) @ Q[b])
                        for b in range(B)])


def naive_block(W, d, a_s, a_m, c, Qs, Qm, Qw=None):
    B, N, _ = Qm.shape
    Qw = Qm if Qw is None else Qw
    d, a_s, a_m, c = (full(v, B, N, Qm.dtype) for v in (d, a_s, a_m, c))
    out = []
    for b in range(B):
        dsyn = torch.diag(a_s[b]) @ Qs[b] + W @ torch.diag(d[b]) @ Qw[b]
        out.append(torch.cat([dsyn, torch.diag(a_m[b]) @ Qm[b] + torch.diag(c[b]) @ dsyn]))
    return torch.stack(out)


def tensors(*xs):
    return [x for x in xs if isinstance(x, torch.Tensor) and x.requires_grad]


def tangent_rtols(B, N, k, dtype=F32) -> tuple[float, float]:
    """Rounding bounds (tests/_tolerance.py) relative to the scale, for (values, gradients) of one tangent map on
    a [B, N, k] frame: each entry is an N-term product plus <= 6 scalings and additions; the backward pass does as
    many again and a coefficient's gradient sums over the B x N x k entries."""
    return rounding_rtol(dtype, N + 6), rounding_rtol(dtype, 2 * (N + 6) + B * N * k)


def compare(fn, ref, inputs, rtol, seed=99, grad_rtol=None):
    """Values and the gradients of ``<out, G>`` w.r.t. every tensor input, relative to their scale
    (``grad_rtol``: the gradients' own bound, default ``rtol``)."""
    out = fn()
    expected = ref()
    assert out.dtype == expected.dtype and out.shape == expected.shape
    assert_close_rel(out.detach(), expected.detach(), rtol, "value")
    G = torch.randn(out.shape, generator=gen(seed), dtype=F64).to(out.dtype).to(out.device)
    g = torch.autograd.grad(out, inputs, G, allow_unused=True)
    g_ref = torch.autograd.grad(expected, inputs, G, allow_unused=True)
    for i, (a, b) in enumerate(zip(g, g_ref)):
        if b is None:
            assert a is None or float(a.abs().max()) == 0.0, f"input {i}: unexpected gradient"
            continue
        assert a is not None, f"input {i}: no gradient"
        assert_close_rel(a, b, rtol if grad_rtol is None else grad_rtol, f"grad of input {i}")


# --------------------------------------------------------------------------------------------------
# 1. The ops against naive references
# --------------------------------------------------------------------------------------------------

SHAPES = [(1, 1, 1), (1, 16, 16), (2, 37, 5), (3, 70, 17), (2, 33, 1)]  # not multiples of the 16/32/64 tiles
COEFS = [("BN", "float", None), ("BN", "0d", "BN"), ("N", "N", "N"), ("BN", "BN", "float")]  # (d, a, c)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kinds", COEFS, ids=["-".join(map(str, k)) for k in COEFS])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_dense_tangent_matches_naive(shape, kinds, backend):
    B, N, k = shape
    W = rnd(N, N, seed=1, dtype=F32, scale=N ** -0.5)
    Q = rnd(B, N, k, seed=2, dtype=F32)
    d, a = coef(kinds[0], B, N, 3, F32), coef(kinds[1], B, N, 4, F32)
    c = None if kinds[2] is None else coef(kinds[2], B, N, 5, F32)
    rtol, grad_rtol = tangent_rtols(B, N, k)  # float32 against the float64 result, rounded once
    compare(lambda: kt.dense_tangent(W, d, a, Q, c, backend=backend),
            lambda: naive_dense(*(t.double() if isinstance(t, torch.Tensor) else t for t in (W, d, a, Q, c))).float(),
            tensors(W, d, a, Q, c), rtol=rtol, grad_rtol=grad_rtol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("separate_qw", [False, True])
@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: "x".join(map(str, s[1:])))
def test_block_tangent_matches_naive(shape, separate_qw, backend):
    B, N, k = shape
    W = rnd(N, N, seed=1, dtype=F32, scale=N ** -0.5)
    Qfull = rnd(B, 3 * N, k, seed=2, dtype=F32)
    Qs, Qm, Qz = Qfull[:, :N], Qfull[:, N:2 * N], Qfull[:, 2 * N:]  # views of one frame, as models pass them
    Qw = Qz if separate_qw else None
    d, a_s, a_m, c = rnd(B, N, seed=3, dtype=F32), 0.8, rnd(N, seed=4, dtype=F32), rnd(B, N, seed=5, dtype=F32)

    def ref():
        dbl = [t.double() if isinstance(t, torch.Tensor) else t for t in (W, d, a_s, a_m, c, Qs, Qm, Qw)]
        return naive_block(*dbl).float()

    rtol, grad_rtol = tangent_rtols(B, N, k)  # float32 against the float64 result, rounded once
    compare(lambda: kt.block_tangent(W, d, a_s, a_m, c, Qs, Qm, Qw, backend=backend), ref,
            tensors(W, d, a_m, c, Qfull), rtol=rtol, grad_rtol=grad_rtol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_stays_float64(backend):
    B, N, k = 2, 23, 3
    W, Q, d, a = rnd(N, N, seed=1), rnd(B, N, k, seed=2), rnd(B, N, seed=3), rnd(N, seed=4)
    compare(lambda: kt.dense_tangent(W, d, a, Q, d, backend=backend), lambda: naive_dense(W, d, a, Q, d),
            tensors(W, Q, d, a), rtol=1e-12)
    compare(lambda: kt.block_tangent(W, d, a, 0.5, d, Q, Q * 2, backend=backend),
            lambda: naive_block(W, d, a, 0.5, d, Q, Q * 2), tensors(W, Q, d, a), rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ["dense", "block"])
def test_gradcheck_float64_tiny(form, backend):
    B, N, k = 2, 3, 2
    W, d, a, c = rnd(N, N, seed=1), rnd(B, N, seed=2), rnd(N, seed=3), rnd(B, N, seed=4)
    Q, Q2, Qw = rnd(B, N, k, seed=5), rnd(B, N, k, seed=6), rnd(B, N, k, seed=7)
    if form == "dense":
        def f(W, d, a, c, Q):
            return kt.dense_tangent(W, d, a, Q, c, backend=backend)
        args = (W, d, a, c, Q)
    else:
        def f(W, d, a, c, Q, Q2, Qw):
            return kt.block_tangent(W, d, a, c * 0.5, c, Q, Q2, Qw, backend=backend)
        args = (W, d, a, c, Q, Q2, Qw)
    assert torch.autograd.gradcheck(f, args, fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_aot_eager_captures_the_ops(backend):
    N = 17
    W, d, Q = rnd(N, N, seed=1), rnd(2, N, seed=2), rnd(2, 2 * N, 3, seed=3)

    def f(W, d, Q):
        Qs, Qm = Q.chunk(2, dim=-2)
        y = kt.dense_tangent(W, d, 0.5, Qs, 1.0 - d, backend=backend)
        z = kt.block_tangent(W, d, 0.3, 0.9, d, Qs, Qm, backend=backend)
        return y.square().sum() + z.square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    l1, l0 = compiled(W, d, Q), f(W, d, Q)
    torch.testing.assert_close(l1, l0, rtol=1e-12, atol=0)
    for a, b in zip(torch.autograd.grad(l1, (W, d, Q)), torch.autograd.grad(l0, (W, d, Q))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# 2. Every model's fused tangent function against the model's own tangent map
# --------------------------------------------------------------------------------------------------

N_M, B_M, K_M = 19, 2, 3


def _spiking(neuron, **kw):
    def make():
        m = sf.SpikingRNN(2, N_M, 1, neuron=neuron, g=2.0, generator=gen(0), dtype=F64, device=DEVICE, **kw)
        state = m.initial_state(B_M, random=True, generator=gen(1))
        with torch.no_grad():  # membranes spread around the threshold so that d and R vary
            state[:, -N_M:] = 2.0 * torch.rand(B_M, N_M, generator=gen(2), dtype=F64).to(DEVICE)
            state[:, :-N_M] = torch.randn(B_M, state.shape[1] - N_M, generator=gen(3), dtype=F64).to(DEVICE)
        return m, state
    return make


def _rate(**kw):
    def make():
        m = sf.RateRNN(2, N_M, 1, g=1.5, generator=gen(0), dtype=F64, device=DEVICE, **kw)
        return m, m.initial_state(B_M, random=True, generator=gen(1))
    return make


def _snn(cls, **kw):
    def make():
        from snntorch import surrogate as snn_sg

        import surroflos.snntorch as sf_snn
        torch.manual_seed(0)
        spike_grad = kw.pop("spike_grad", snn_sg.atan())
        layer = getattr(sf_snn, cls)(linear_features=N_M, spike_grad=spike_grad, **kw)
        net = nn.Sequential(nn.Linear(2, N_M), layer).to(F64).to(DEVICE)
        m = sf.models.as_model(net)
        return m, 1.5 * torch.rand(B_M, m.state_dim, generator=gen(1), dtype=F64).to(DEVICE)
    return make


def _norse(method, **kw):
    def make():
        import surroflos.norse as sf_norse
        torch.manual_seed(0)
        p = sf_norse.LIFParameters(method=method, v_th=torch.tensor(0.5), **kw)
        net = nn.Sequential(nn.Linear(2, 8), sf_norse.LIFRecurrentCell(8, N_M, p=p)).to(F64).to(DEVICE)
        with torch.no_grad():
            net[1].recurrent_weights.normal_(0.0, 3.0 / N_M ** 0.5)
        m = sf.models.as_model(net)
        return m, torch.rand(B_M, m.state_dim, generator=gen(1), dtype=F64).to(DEVICE)
    return make


MODELS = {
    "lif-subtract": _spiking("lif"),
    "lif-subtract-attached-per-neuron": _spiking("lif", detach_reset=False, learn_beta=True, learn_threshold=True,
                                                 beta=torch.linspace(0.5, 0.95, N_M),
                                                 threshold=torch.linspace(0.8, 1.2, N_M)),
    "lif-zero": _spiking("lif", reset="zero", learn_beta=True),
    "lif-zero-attached-smooth": _spiking("lif", reset="zero", detach_reset=False, smooth=True),
    "cuba-subtract": _spiking("cuba", learn_alpha=True, learn_beta=True),
    "cuba-subtract-attached": _spiking("cuba", detach_reset=False, learn_threshold=True),
    "cuba-zero": _spiking("cuba", reset="zero", alpha=torch.linspace(0.3, 0.9, N_M)),
    "cuba-zero-attached": _spiking("cuba", reset="zero", detach_reset=False, learn_beta=True),
    "rate-tanh": _rate(),
    "rate-tanh-dt": _rate(dt=0.3),
    "rate-relu-dt": _rate(dt=0.5, nonlinearity="relu"),
    "rleaky-subtract": _snn("RLeaky", beta=0.9, learn_beta=True),
    "rleaky-zero": _snn("RLeaky", beta=0.8, reset_mechanism="zero"),
    "rsynaptic-subtract": _snn("RSynaptic", alpha=0.7, beta=0.9, learn_alpha=True),
    "rsynaptic-zero": _snn("RSynaptic", alpha=0.7, beta=0.9, reset_mechanism="zero"),
    "norse-super": _norse("super"),
    "norse-triangle": _norse("triangle", alpha=torch.tensor(2.0)),
}
MODELS.update({f"lif-surrogate-{s}": _spiking("lif", surrogate=s)
               for s in ("fast_sigmoid", "atan", "sigmoid", "triangle", "exponential", "gaussian")})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(MODELS))
def test_fused_tangent_equals_the_models_own(name, backend):
    model, state = MODELS[name]()
    fused = kt.fused_tangent_function(model, backend)
    assert fused is not None, f"{name} should be recognised"
    reference = model.tangent_function
    x = torch.randn(B_M, model.n_in, generator=gen(4), dtype=F64).to(DEVICE)
    Q = torch.randn(B_M, model.state_dim, K_M, generator=gen(5), dtype=F64).to(DEVICE).requires_grad_(True)
    state = state.clone().requires_grad_(True)
    # gradients w.r.t. the state, the frame and every trainable parameter: they come through the
    # coefficients (d, a, c computed from the state) and the op's own backward (W, Q)
    params = [p for p in model.parameters() if p.requires_grad]

    def run(fn):
        return fn(x, state, model.params(), Q)

    compare(lambda: run(fused), lambda: run(reference), [state, Q] + params, rtol=1e-10)


def test_fused_d_reaches_every_surrogate():
    # The atan and gaussian fused maps differ: d really is sigma' of the chosen surrogate.
    outs = []
    for s in ("atan", "gaussian"):
        m, state = _spiking("lif", surrogate=s)()
        Q = torch.randn(B_M, N_M, K_M, generator=gen(5), dtype=F64).to(DEVICE)
        outs.append(kt.fused_tangent_function(m, "torch")(None, state, m.params(), Q))
    assert float((outs[0] - outs[1]).detach().abs().max()) > 1e-3


def test_registry_unknown_models_and_overrides():
    A = torch.eye(3, dtype=F64)
    assert kt.fused_tangent_function(LinearMap(A)) is None
    assert kt.fused_tangent_function(object()) is None

    class Custom(sf.SpikingRNN):  # replaces the tangent map: must not be swapped for the fused LIF one
        @property
        def tangent_function(self):
            return lambda x, s, p, Q: 2 * Q

    assert kt.fused_tangent_function(Custom(1, 4, 1)) is None

    class OwnChoice:
        def backend_tangent_function(self, backend):
            return ("mine", backend)

    assert kt.fused_tangent_function(OwnChoice(), "triton") == ("mine", "triton")


def test_rleaky_one_to_one_feedback_uses_the_reference():
    from snntorch import surrogate as snn_sg

    import surroflos.snntorch as sf_snn
    layer = sf_snn.RLeaky(beta=0.9, all_to_all=False, V=torch.linspace(0.1, 0.5, 6), spike_grad=snn_sg.atan())
    net = nn.Sequential(nn.Linear(2, 6), layer).to(F64)
    m = sf.models.as_model(net)
    fused = kt.fused_tangent_function(m, "torch")
    x, s, Q = torch.randn(2, 2, dtype=F64), torch.rand(2, 6, dtype=F64), torch.randn(2, 6, 2, dtype=F64)
    assert torch.equal(fused(x, s, m.params(), Q), m.tangent_function(x, s, m.params(), Q))


# --------------------------------------------------------------------------------------------------
# 3. Errors
# --------------------------------------------------------------------------------------------------

def test_bad_arguments_raise():
    W, Q, d = torch.randn(4, 4), torch.randn(2, 4, 3), torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"W must have shape \[N, N\]"):
        kt.dense_tangent(torch.randn(4, 5), d, 1.0, Q, backend="torch")
    with pytest.raises(ValueError, match=r"\[B, N, k\]"):
        kt.dense_tangent(W, d, 1.0, Q[0], backend="torch")
    with pytest.raises(ValueError, match="does not broadcast"):
        kt.dense_tangent(W, torch.randn(3), 1.0, Q, backend="torch")
    with pytest.raises(ValueError, match="float64"):
        kt.dense_tangent(W, d.double(), 1.0, Q, backend="torch")
    with pytest.raises(ValueError, match="W is torch.float64"):
        kt.dense_tangent(W.double(), d, 1.0, Q, backend="torch")
    with pytest.raises(TypeError, match="number or a tensor"):
        kt.dense_tangent(W, [1.0] * 4, 1.0, Q, backend="torch")
    with pytest.raises(TypeError, match="torch.Tensor"):
        kt.dense_tangent(W, d, 1.0, Q.tolist(), backend="torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        kt.dense_tangent(W, d, 1.0, Q, backend="cuda")
    with pytest.raises(ValueError, match="expected"):
        kt.block_tangent(W, d, 1.0, 1.0, 1.0, Q[:, :, :2], Q, backend="torch")


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    W, Q = torch.randn(4, 4), torch.randn(2, 4, 3)
    with pytest.raises(TritonUnavailableError, match="TRITON_INTERPRET"):
        kt.dense_tangent(W, 1.0, 1.0, Q, backend="triton")
    model = sf.SpikingRNN(1, 4, 1)
    with pytest.raises(TritonUnavailableError):
        sf.lyapunov_spectrum(model, torch.zeros(5, 1, 1), 2, backend="triton")


# --------------------------------------------------------------------------------------------------
# 4. lyapunov_spectrum and floss with backend="triton" equal backend="torch"
# --------------------------------------------------------------------------------------------------

def _lyap_model(kind):
    if kind == "rate":
        return sf.RateRNN(2, 12, 1, g=1.8, generator=gen(0), dtype=F64, device=DEVICE)
    return sf.SpikingRNN(2, 12, 1, neuron=kind, g=2.5, input_scale=2.0, generator=gen(0), dtype=F64, device=DEVICE)


@requires_triton
@pytest.mark.parametrize("kind", ["lif", "cuba", "rate"])
def test_lyapunov_triton_equals_torch(kind):
    model = _lyap_model(kind)
    x = torch.randn(16, 2, 2, generator=gen(1), dtype=F64).to(DEVICE)
    out = {}
    for backend in ("torch", "triton"):
        model.zero_grad(set_to_none=True)
        res = sf.lyapunov_spectrum(model, x, 3, qr_every=2, transient=3, frame_warmup=3, generator=gen(2),
                                   backend=backend)
        sf.flossing_loss(res.exponents).backward()
        out[backend] = res.exponents.detach(), model.weight_rec.grad.clone()
    assert float(out["torch"][0].std()) > 1e-3  # a non-trivial spectrum
    assert_close_rel(out["triton"][0], out["torch"][0], 1e-5, "exponents")
    assert_close_rel(out["triton"][1], out["torch"][1], 1e-5, "d loss / d weight_rec")


@requires_triton
def test_lyapunov_triton_with_an_unknown_model_uses_its_own_tangent():
    eigs = torch.tensor([1.2, 0.5, 0.25], dtype=F64)
    A = torch.diag(eigs).to(DEVICE)
    x = torch.zeros(60, 1, 0, dtype=F64, device=DEVICE)
    res = sf.lyapunov_spectrum(LinearMap(A), x, 3, frame_warmup=40, generator=gen(0), backend="triton")
    # the frame converges like (0.5 / 1.2)^40 ~ 1e-15 during the warm-up: exact up to rounding
    torch.testing.assert_close(res.exponents[0], torch.log(eigs).to(DEVICE), rtol=0, atol=1e-12)


@requires_triton
def test_floss_triton_equals_torch():
    hist, weights = {}, {}
    for backend in ("torch", "triton"):
        model = _lyap_model("lif")
        hist[backend] = sf.floss(model, 2, k=2, T=10, batch=2, lr=1e-2, generator=gen(3), progress=False,
                                 backend=backend)
        weights[backend] = model.weight_rec.detach()
    assert_close_rel(hist["triton"].exponents, hist["torch"].exponents, 1e-5, "flossed exponents")
    assert_close_rel(weights["triton"], weights["torch"], 1e-5, "weights after flossing")


def test_floss_rejects_unknown_backend_and_qr():
    model = _lyap_model("lif")
    with pytest.raises(ValueError, match="backend must be one of"):
        sf.floss(model, 1, k=2, T=10, backend="gpu", progress=False)
    with pytest.raises(ValueError, match="qr must be one of"):
        sf.floss(model, 1, k=2, T=10, qr="lapack", progress=False)


# --------------------------------------------------------------------------------------------------
# 5. CUDA only: low precision and inductor
# --------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not ON_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_on_cuda(dtype):
    B, N, k = 3, 70, 17
    W = rnd(N, N, seed=1, scale=N ** -0.5, grad=False)
    Q, d, a = rnd(B, N, k, seed=2, grad=False), rnd(B, N, seed=3, grad=False), rnd(N, seed=4, grad=False)
    out = kt.dense_tangent(W.to(dtype), d.to(dtype), a.to(dtype), Q.to(dtype), backend="triton")
    assert out.dtype == dtype
    ref = naive_dense(*(t.to(dtype).double() for t in (W, d, a, Q)))
    assert_close_rel(out.double(), ref, 1e-2, "fp16/bf16 dense")
    out = kt.block_tangent(W.to(dtype), d.to(dtype), a.to(dtype), 0.5, d.to(dtype), Q.to(dtype), Q.to(dtype),
                           backend="triton")
    ref = naive_block(*(t.to(dtype).double() for t in (W, d, a)), 0.5, d.to(dtype).double(),
                      Q.to(dtype).double(), Q.to(dtype).double())
    assert_close_rel(out.double(), ref, 1e-2, "fp16/bf16 block")


@pytest.mark.skipif(not ON_CUDA, reason="needs CUDA")
def test_torch_compile_inductor_on_cuda():
    N = 40
    W, d, Q = rnd(N, N, seed=1, dtype=F32), rnd(2, N, seed=2, dtype=F32), rnd(2, N, 5, seed=3, dtype=F32)

    def f(W, d, Q):
        return kt.dense_tangent(W, torch.sigmoid(d), 0.9, Q, backend="triton").square().sum()

    compiled = torch.compile(f, fullgraph=True)
    l1, l0 = compiled(W, d, Q), f(W, d, Q)
    # float32, compiled: the same map (plus the loss's sum of 2 x N x 5 squares) in another order
    rtol, grad_rtol = tangent_rtols(2, N, 5)
    assert_within_rounding(l1, l0, N + 6 + 2 * N * 5, "loss")
    g0 = torch.autograd.grad(l0, (W, d, Q))
    for a, b in zip(torch.autograd.grad(l1, (W, d, Q)), g0):
        assert_close_rel(a, b, grad_rtol + rtol, "grad")


# --------------------------------------------------------------------------------------------------
# 7. The lean step-loop path (lean_dense_tangent, lean_tangent_function): what lyapunov_spectrum's torch
#    backend runs, against the naive reference and the models' own maps, dense and sparse
# --------------------------------------------------------------------------------------------------

LEAN_COEFS = [("BN", "float"), ("BN", "0d"), ("N", "N"), ("BN", "BN"), ("BN", "zero")]  # (d, a)


def _lean_coef(kind, B, N, seed, dtype):
    return 0.0 if kind == "zero" else coef(kind, B, N, seed, dtype)


def _sparse_d(B, N, seed, dtype, active, shared):
    """A [B, N] coefficient that is exactly zero outside ``active`` neurons per trajectory (the same ones in every
    trajectory when ``shared``): what relu's slope or the triangle surrogate give."""
    d = torch.rand(B, N, generator=gen(seed), dtype=F64) + 0.5
    keep = torch.rand(1 if shared else B, N, generator=gen(seed + 1), dtype=F64) < active
    return (d * keep).to(dtype).to(DEVICE).requires_grad_(True)


@pytest.mark.parametrize("layout", ["contiguous", "column_major"])
@pytest.mark.parametrize("kinds", LEAN_COEFS, ids=["-".join(k) for k in LEAN_COEFS])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_lean_dense_tangent_matches_naive(shape, kinds, layout):
    B, N, k = shape
    W = rnd(N, N, seed=1, dtype=F32, scale=N ** -0.5)
    Q = rnd(B, N, k, seed=2, dtype=F32, grad=False)
    Q = (Q if layout == "contiguous" else Q.mT.contiguous().mT).requires_grad_(True)
    d, a = coef(kinds[0], B, N, 3, F32), _lean_coef(kinds[1], B, N, 4, F32)
    rtol, grad_rtol = tangent_rtols(B, N, k)
    compare(lambda: kt.lean_dense_tangent(W, d, a, Q),
            lambda: naive_dense(*(t.double() if isinstance(t, torch.Tensor) else t for t in (W, d, a, Q))).float(),
            tensors(W, d, a, Q), rtol=rtol, grad_rtol=grad_rtol)


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("case", ["union", "per_trajectory", "dense_fallback", "all_zero"])
def test_lean_sparse_product_is_the_dense_one(case, dtype):
    """The sparse product (only the neurons with non-zero d) against the dense path and the naive reference:
    float64 equal up to summation order (1e-12 relative), float32 within rounding of the float64 truth, values
    and gradients (W, Q and a; d's gradient is only claimed where d is non-zero: the callers' d have zero
    derivative where they vanish)."""
    B, N, k = 3, 64, 5
    active, shared = {"union": (0.3, True), "per_trajectory": (0.3, False), "dense_fallback": (0.9, False),
                      "all_zero": (0.0, True)}[case]
    W = rnd(N, N, seed=1, dtype=dtype, scale=N ** -0.5)
    Q = rnd(B, N, k, seed=2, dtype=dtype, grad=False).mT.contiguous().mT.requires_grad_(True)
    a = rnd(N, seed=4, dtype=dtype)
    d = _sparse_d(B, N, 3, dtype, active, shared)
    Qt = Q.detach().mT
    taken = kt._sparse_product(W.detach(), d.detach(), Qt, None)
    assert (taken is None) == (case == "dense_fallback")
    for W_t in (None, W.mT.contiguous()):
        out = kt.lean_dense_tangent(W, d, a, Q, sparse=True, W_t=W_t)
        dense = kt.lean_dense_tangent(W, d, a, Q)
        ref = naive_dense(*(t.double() for t in (W, d, a, Q))).to(dtype)
        G = torch.randn(out.shape, generator=gen(7), dtype=F64).to(dtype).to(DEVICE)
        wrt = [W, Q, a, d]
        got = (out.detach(),) + torch.autograd.grad(out, wrt, G)
        want = (dense.detach(),) + torch.autograd.grad(dense, wrt, G)
        truth = (ref.detach(),) + torch.autograd.grad(ref, wrt, G)
        mask = (d.detach() != 0).to(dtype)  # d's gradient: where d is non-zero
        got, want, truth = ([*t[:4], t[4] * mask] for t in (got, want, truth))
        rtol, grad_rtol = tangent_rtols(B, N, k, dtype)
        for i, (g_, w_, t_) in enumerate(zip(got, want, truth)):
            if dtype == F64:
                assert_close_rel(g_, w_, 1e-12, f"output {i} vs the dense path")
                assert_close_rel(g_, t_, 1e-12, f"output {i} vs the naive reference")
            else:
                assert_close_rel(g_, t_, rtol if i == 0 else grad_rtol, f"output {i} vs the float64 reference")


LEAN_MODELS = [n for n in MODELS if n.startswith(("lif-", "rate-"))]


@pytest.mark.parametrize("name", LEAN_MODELS)
def test_lean_tangent_equals_the_models_own(name):
    model, state = MODELS[name]()
    lean = kt.lean_tangent_function(model)
    assert lean is not None, f"{name} should be recognised"
    x = torch.randn(B_M, model.n_in, generator=gen(4), dtype=F64).to(DEVICE)
    Q = torch.randn(B_M, model.state_dim, K_M, generator=gen(5), dtype=F64).to(DEVICE).requires_grad_(True)
    state = state.clone().requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    compare(lambda: lean(x, state, model.params(), Q), lambda: model.tangent_function(x, state, model.params(), Q),
            [state, Q] + params, rtol=1e-12)


def test_lean_registry_leaves_other_models_alone():
    assert kt.lean_tangent_function(LinearMap(torch.eye(3, dtype=F64))) is None
    assert kt.lean_tangent_function(_spiking("cuba")()[0]) is None  # cuba: the model's own block map

    class Custom(sf.RateRNN):  # replaces the tangent map: must keep it
        tangent_function = staticmethod(lambda x, h, p, Q: 2.0 * Q)
    assert kt.lean_tangent_function(Custom(2, 4, 1)) is None


class _OwnMap:
    """Wraps a model so that lyapunov_spectrum cannot recognise it: it runs the model's own tangent map."""

    def __init__(self, model):
        self.m = model
        self.tangent_function = lambda x, s, p, Q: model.tangent_function(x, s, p, Q)

    def __getattr__(self, name):
        return getattr(self.m, name)


@pytest.mark.parametrize("kind", ["rate-tanh", "rate-relu-sparse", "lif-atan", "lif-triangle-sparse",
                                  "lif-zero-attached"])
def test_lyapunov_torch_lean_path_equals_the_models_own_map(kind):
    """lyapunov_spectrum(backend="torch") (lean maps, sparse for relu / triangle) against the same estimate with
    the model's own tangent map: exponents and the flossing gradient, float64, 1e-12 relative."""
    N = 40
    if kind.startswith("rate"):
        relu = "relu" in kind
        model = sf.RateRNN(2, N, 1, g=1.8 if not relu else 1.2, nonlinearity="relu" if relu else "tanh",
                           dt=0.5 if relu else 1.0, generator=gen(0), dtype=F64)
        state0 = model.initial_state(2, random=True, generator=gen(1)) - (2.0 if relu else 0.0)
        x = torch.randn(30, 2, 2, generator=gen(2), dtype=F64) - (1.0 if relu else 0.0)
    else:
        kw = dict(surrogate="triangle", beta=0.8, input_scale=0.5) if "triangle" in kind else dict(input_scale=2.0)
        if "zero" in kind:
            kw.update(reset="zero", detach_reset=False)
        model = sf.SpikingRNN(2, N, 1, g=2.5, generator=gen(0), dtype=F64, **kw)
        state0 = model.initial_state(2, random=True, generator=gen(1)) - (1.5 if "triangle" in kind else 0.0)
        x = torch.randn(30, 2, 2, generator=gen(2), dtype=F64) - (0.6 if "triangle" in kind else 0.0)
    if "sparse" in kind:  # precondition: the sparse product is really taken at some steps
        calls = []
        real = kt._sparse_product
        kt._sparse_product = lambda *a: calls.append(r := real(*a)) or r
        try:
            sf.lyapunov_spectrum(model, x, 3, state0=state0, generator=gen(3), backend="torch")
        finally:
            kt._sparse_product = real
        assert any(c is not None for c in calls), "the sparse product was never used"
    out = []
    for m in (model, _OwnMap(model)):
        model.zero_grad(set_to_none=True)
        res = sf.lyapunov_spectrum(m, x, 3, qr_every=2, transient=2, frame_warmup=3, state0=state0,
                                   generator=gen(3), backend="torch")
        sf.flossing_loss(res.exponents).backward()
        out.append((res.exponents.detach(), model.weight_rec.grad.clone(), res.history))
    assert float(out[0][0].std()) > 1e-3
    for i, what in enumerate(("exponents", "d loss / d weight_rec", "history")):
        assert_close_rel(out[0][i], out[1][i], 1e-12, what)
