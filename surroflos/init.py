"""Initialisations of the recurrent weight matrix ``J = weight_rec [N, N]``.

Pure functions return a fresh ``[N, N]`` tensor, seeded by an optional ``torch.Generator`` (on any device;
the numbers are drawn where the generator lives and then moved, as in :mod:`surroflos._random`), in any
floating dtype and on any device. :func:`initialize_` writes one of them into ``model.weight_rec`` in
place (under ``no_grad``).

Schemes (:data:`SCHEMES`):

- ``"gaussian"`` (:func:`gaussian`): ``J_ij ~ N(0, g^2 / N)``, the default of every surroflos model (seed
  003's "gain"). Circular law: for large N the eigenvalues fill the disk of radius ``g`` uniformly, so
  the spectral radius is about ``g``; a tanh rate network is chaotic for ``g > 1``.
- ``"orthogonal"`` (:func:`orthogonal`): ``g Q`` with ``Q`` Haar-distributed on the orthogonal group:
  every eigenvalue and every singular value has modulus ``g``.
- ``"balanced"`` (:func:`balanced_sparse`): the dense view of the sparse fixed-in-degree matrix of
  :class:`surroflos.models.BalancedNetwork` (seed 000): ``K`` non-zeros per row, no self-connections,
  weights ``-J0/sqrt(K)`` (or ``+J0/sqrt(K)`` from excitatory and ``-g_I J0/sqrt(K)`` from inhibitory
  neurons). The random part has bulk radius ``J0 sqrt(1 - K/N)``; the mean coupling adds one outlier
  eigenvalue near ``-J0 sqrt(K)`` (inhibitory) or ``-J0 (g_I K_I - K_E)/sqrt(K)`` (E/I).
- ``"limit_cycle"`` (:func:`limit_cycle`): seed 002's block-diagonal matrix of ``2 x 2`` blocks
  ``alpha_i R(theta_i)``: uncoupled 2-D oscillators, each of which carries one zero Lyapunov exponent.

Example::

    net = surroflos.RateRNN(1, 64, 1)
    surroflos.init.initialize_(net, "orthogonal", g=1.0, generator=torch.Generator().manual_seed(0))
    surroflos.init.initialize_(net, "limit_cycle", generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple, Optional, Sequence

import torch

from ._random import rand, randn
from .models.balanced import sparse_fixed_indegree
from .models.rate import RateRNN

__all__ = ["gaussian", "orthogonal", "balanced_sparse", "limit_cycle", "initialize_", "Scheme", "SCHEMES",
           "names", "ALPHA_RANGE", "THETA_RANGE"]

# Default ranges of the limit-cycle initialisation (see limit_cycle's docstring for why).
ALPHA_RANGE: tuple[float, float] = (1.05, 1.2)
THETA_RANGE: tuple[float, float] = (0.15, 1.4)


# ----------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------


def _check_size(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _check_number(name: str, value, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be {'positive' if positive else 'non-negative'} and finite, got {value!r}")
    return v


def _factory(generator, dtype, device) -> tuple[torch.dtype, torch.device]:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.is_complex:
        raise ValueError(f"dtype must be a real floating-point torch.dtype, got {dtype!r}")
    return dtype, torch.device("cpu") if device is None else torch.device(device)


def _check_range(name: str, rng, low: float, high: float, *, open_low: bool) -> tuple[float, float]:
    if not isinstance(rng, Sequence) or isinstance(rng, str) or len(rng) != 2:
        raise ValueError(f"{name} must be a pair (low, high), got {rng!r}")
    lo, hi = rng
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must hold two finite numbers, got {rng!r}")
    lo, hi = float(lo), float(hi)
    if lo > hi:
        raise ValueError(f"{name} = {rng!r}: low must not exceed high")
    if (lo <= low if open_low else lo < low) or hi > high:
        lo_br = "(" if open_low else "["
        raise ValueError(f"{name} = {rng!r} must lie in {lo_br}{low:g}, {high:g}]")
    return lo, hi


def _cpu_generator(generator: Optional[torch.Generator]) -> Optional[torch.Generator]:
    """A CPU generator for draws that must happen on the CPU, seeded from ``generator`` if it lives elsewhere."""
    if generator is None or generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------
# Schemes (pure functions)
# ----------------------------------------------------------------------------------------------


def gaussian(N: int, g: float = 1.0, *, generator: Optional[torch.Generator] = None,
             dtype: Optional[torch.dtype] = None, device: torch.device | str | None = None) -> torch.Tensor:
    """``J_ij ~ N(0, g^2 / N)``, i.i.d.: ``[N, N]``; spectral radius about ``g`` for large N (circular law).

    Draws exactly what the models' constructors draw first from the same generator
    (:meth:`surroflos.models.base.RecurrentModel._init_network`), so ``gaussian(N, g, generator=G(seed))``
    equals ``RateRNN(n_in, N, n_out, g=g, generator=G(seed)).weight_rec``. Like ``torch.randn``, the draw
    depends on ``dtype`` (the other schemes draw in float64 and cast, so they agree across dtypes).
    """
    N = _check_size("N", N, 1)
    g = _check_number("g", g)
    dtype, device = _factory(generator, dtype, device)
    return randn(N, N, generator=generator, dtype=dtype, device=device) * (g / math.sqrt(N))


def orthogonal(N: int, g: float = 1.0, *, generator: Optional[torch.Generator] = None,
               dtype: Optional[torch.dtype] = None, device: torch.device | str | None = None) -> torch.Tensor:
    """``g Q`` with ``Q`` a Haar-random ``[N, N]`` orthogonal matrix: ``Q^T Q = I``, every ``|eig| = g``.

    ``Q`` comes from the QR decomposition of a Gaussian matrix (computed in float64, then cast) with the
    signs of ``R``'s diagonal moved into ``Q`` (``Q diag(sign R_ii)``); without that correction ``Q`` is not
    Haar-distributed (e.g. ``Q_00`` would always have one sign).
    """
    N = _check_size("N", N, 1)
    g = _check_number("g", g)
    dtype, device = _factory(generator, dtype, device)
    A = randn(N, N, generator=generator, dtype=torch.float64,
              device=generator.device if generator is not None else device)
    Q, R = torch.linalg.qr(A)
    d = torch.sign(torch.diagonal(R))
    d = torch.where(d == 0, torch.ones_like(d), d)  # a zero pivot has probability zero; keep Q orthogonal anyway
    return (Q * d * g).to(device=device, dtype=dtype)


def balanced_sparse(N: int, K: int, J0: float = 1.0, *, ei: bool = False, f_E: float = 0.8, g_I: float = 5.0,
                    generator: Optional[torch.Generator] = None, dtype: Optional[torch.dtype] = None,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Dense ``[N, N]`` view of the fixed-in-degree balanced matrix of :class:`surroflos.BalancedNetwork`.

    Row ``i`` (the postsynaptic neuron) has exactly ``K`` non-zeros in the columns of ``K`` distinct
    presynaptic neurons ``j != i`` (:func:`surroflos.models.balanced.sparse_fixed_indegree`), all equal to
    ``-J0 / sqrt(K)``. With ``ei=True`` neurons ``0..N_E-1`` (``N_E = round(f_E N)``) are excitatory; every
    row has ``K_E = round(f_E K)`` entries ``+J0 / sqrt(K)`` in excitatory columns and ``K - K_E`` entries
    ``-g_I J0 / sqrt(K)`` in inhibitory ones (``g_I`` is ``BalancedNetwork``'s ``g``). With the same
    generator seed the pattern is the one ``BalancedNetwork(N, K, J0, ei=ei, f_E=f_E, g=g_I)`` draws.

    The pattern is drawn on the CPU; a generator on another device seeds a CPU generator first.
    """
    N = _check_size("N", N, 2)
    K = _check_size("K", K, 1)
    if K >= N:
        raise ValueError(f"K={K} synapses per neuron need K < N={N}: each neuron draws K distinct presynaptic "
                         "partners among the other N - 1")
    J0 = _check_number("J0", J0)
    if not isinstance(ei, bool):
        raise TypeError(f"ei must be a bool, got {ei!r}")
    if ei:
        if isinstance(f_E, bool) or not isinstance(f_E, (int, float)) or not 0.0 < f_E < 1.0:
            raise ValueError(f"f_E (fraction of excitatory neurons) must lie in (0, 1), got {f_E!r}")
        g_I = _check_number("g_I", g_I)
    dtype, device = _factory(generator, dtype, device)
    pre, _, K_E, _ = sparse_fixed_indegree(N, K, generator=_cpu_generator(generator), ei=ei, f_E=f_E)
    scale = J0 / math.sqrt(K)
    w = torch.full((N, K), -scale, dtype=dtype)
    if ei:  # rows hold K_E excitatory ids first, then the inhibitory ones
        w[:, :K_E] = scale
        w[:, K_E:] = -g_I * scale
    J = torch.zeros(N, N, dtype=dtype)
    J.scatter_(1, pre, w)
    return J.to(device)


def limit_cycle(N: int, *, n_blocks: Optional[int] = None, alpha_range: tuple[float, float] = ALPHA_RANGE,
                theta_range: tuple[float, float] = THETA_RANGE, remainder: float = 0.0,
                generator: Optional[torch.Generator] = None, dtype: Optional[torch.dtype] = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Seed 002's block-diagonal "stable limit cycle" matrix: ``n_blocks`` uncoupled 2-D oscillators.

    ``J = diag(alpha_1 R(theta_1), ..., alpha_m R(theta_m), remainder I_{N - 2m})`` with the rotation
    ``R(theta) = [[cos, -sin], [sin, cos]]``, ``alpha_i ~ U(alpha_range)`` and ``theta_i ~ U(theta_range)``
    drawn from ``generator`` (all alphas first, then all thetas). Block ``i`` acts on units ``2i, 2i+1``.

    Why these ranges. The seed's experiments use the discrete tanh network (``RateRNN`` with ``dt = 1``),
    where each block evolves as ``h <- alpha R(theta) tanh(h)`` (input and bias off). Its rest state has
    the eigenvalues ``alpha e^{+-i theta}``: for ``alpha > 1`` it is unstable and (a Neimark-Sacker / Hopf
    bifurcation at ``alpha = 1``) the state settles on a closed invariant curve of radius about
    ``2 sqrt(alpha - 1)`` whose size tanh's saturation fixes; along it the state rotates by about ``theta``
    per step (period ``~ 2 pi / theta`` steps), so ``theta`` sets each oscillator's frequency. On that curve
    the phase is neutral (one zero Lyapunov exponent per block: perturbations of the phase are neither
    forgotten nor amplified, the seed's "1-dimensional non-vanishing/non-exploding gradient") and the radius
    is attracting with exponent about ``-2 (alpha - 1)``. The seed gives the form but no numbers; the
    defaults come from measuring the 2-D map (float64, 10^4 steps, ``alpha`` in [1.01, 1.6]):

    - ``alpha_range = (1.05, 1.2)``, "slightly above 1": far enough for the cycle to attract within tens of
      steps (radial exponent -0.1 to -0.5) and have an amplitude of 0.45-1.1 (tanh in its bend), close
      enough that the curve stays near a circle (rotation per step within 0.07 rad of ``theta``).
    - ``theta_range = (0.15, 1.4)`` rad, periods of about 4.5 to 40 steps. The nonlinearity can lock the
      rotation to a periodic orbit (then the phase exponent is negative, not zero): measured locking
      intervals are ``theta`` within about 0.1 rad of ``pi/2`` (period 4, the strongest resonance of the
      square-symmetric tanh) and ``theta < 0.1`` (locking onto a fixed point) for ``alpha <= 1.2``; the
      range avoids both. Further locking intervals at other rational rotations exist but are too thin to
      see at a 0.005 rad resolution.

    Args:
        N: number of units (>= 2).
        n_blocks: number of oscillators ``m``, ``1 <= m <= N // 2``; default ``N // 2``.
        alpha_range: ``(low, high)`` of the block gains, ``0 < low <= high``; ``alpha < 1`` gives
            damped oscillations that decay to rest.
        theta_range: ``(low, high)`` of the rotation angles in ``[0, pi]``.
        remainder: the diagonal value of the ``N - 2m`` units outside the blocks. ``0`` (default) is the
            seed's zero block (those units only relay their input); a value in ``(0, 1)`` gives them a
            stable rest state with exponent ``log(remainder)`` (finite, unlike ``0``'s ``-inf``).
        generator, dtype, device: as for the other schemes.

    Other settings: with the leaky form (``RateRNN`` with ``dt < 1``) a block oscillates only when
    ``|1 - dt + dt alpha e^{i theta}| > 1`` (``alpha cos theta > 1`` as ``dt -> 0``), which the defaults do
    not ensure (:func:`initialize_` warns). Spiking models accept the matrix, without these guarantees.
    """
    N = _check_size("N", N, 2)
    m = N // 2 if n_blocks is None else _check_size("n_blocks", n_blocks, 1)
    if 2 * m > N:
        raise ValueError(f"n_blocks={m} 2x2 blocks need 2 * n_blocks <= N={N}")
    a_lo, a_hi = _check_range("alpha_range", alpha_range, 0.0, math.inf, open_low=True)
    t_lo, t_hi = _check_range("theta_range", theta_range, 0.0, math.pi, open_low=False)
    if isinstance(remainder, bool) or not isinstance(remainder, (int, float)) or not math.isfinite(remainder):
        raise ValueError(f"remainder must be a finite number, got {remainder!r}")
    dtype, device = _factory(generator, dtype, device)
    u = rand(2 * m, generator=generator, dtype=torch.float64).cpu()
    alpha = a_lo + (a_hi - a_lo) * u[:m]
    theta = t_lo + (t_hi - t_lo) * u[m:]
    c, s = alpha * torch.cos(theta), alpha * torch.sin(theta)
    J = torch.zeros(N, N, dtype=torch.float64)
    i = torch.arange(m) * 2
    J[i, i], J[i, i + 1], J[i + 1, i], J[i + 1, i + 1] = c, -s, s, c
    rest = torch.arange(2 * m, N)
    J[rest, rest] = float(remainder)
    return J.to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# Registry and in-place initialisation
# ----------------------------------------------------------------------------------------------


class Scheme(NamedTuple):
    """An entry of :data:`SCHEMES`.

    build: the pure function, called as ``build(N, **params, generator=..., dtype=..., device=...)``.
    gain: the name of ``build``'s argument that :func:`initialize_`'s ``g`` sets (``"g"``, ``"J0"``), or
    None when the scheme has no gain (``limit_cycle``: its scale is ``alpha_range``).
    summary: one line for help texts.
    """

    build: Callable[..., torch.Tensor]
    gain: Optional[str]
    summary: str


SCHEMES: dict[str, Scheme] = {
    "gaussian": Scheme(gaussian, "g", "i.i.d. N(0, g^2/N): spectral radius ~ g (the models' default)"),
    "orthogonal": Scheme(orthogonal, "g", "g times a Haar-random orthogonal matrix: every |eigenvalue| = g"),
    "balanced": Scheme(balanced_sparse, "J0", "sparse fixed in-degree K, weights -J0/sqrt(K) (g sets J0; "
                                              "ei=True for E/I)"),
    "limit_cycle": Scheme(limit_cycle, None, "block-diagonal alpha R(theta) 2x2 oscillators (seed 002); no gain"),
}


def names() -> list[str]:
    """The scheme names :func:`initialize_` accepts, sorted."""
    return sorted(SCHEMES)


def initialize_(model, scheme: str, *, g: Optional[float] = None, generator: Optional[torch.Generator] = None,
                **params) -> torch.nn.Module | torch.Tensor:
    """Overwrite ``model.weight_rec`` (``[N, N]``) in place with the ``scheme`` initialisation; returns ``model``.

    Args:
        model: a model with a square ``weight_rec`` (``RateRNN``, ``SpikingRNN``), or that tensor itself.
            ``BalancedNetwork`` stores ``[N, K]`` weights on its own sparse pattern and is refused.
        scheme: a key of :data:`SCHEMES`: ``"gaussian"``, ``"orthogonal"``, ``"balanced"``, ``"limit_cycle"``.
        g: the gain: ``g`` of ``gaussian``/``orthogonal``, ``J0`` of ``balanced``. Default: ``model.g`` when the
            model has one (the gain it was built with), else 1. Not accepted by ``limit_cycle``.
        generator: seeds the draw (default: the global RNG).
        **params: the scheme's other arguments (``K``, ``ei``, ``f_E``, ``g_I`` for ``balanced``; ``n_blocks``,
            ``alpha_range``, ``theta_range``, ``remainder`` for ``limit_cycle``).

    The matrix is built in ``weight_rec``'s dtype and on its device and copied under ``torch.no_grad()``: the
    tensor object (and an optimizer's reference to it) stays the same and ``requires_grad`` is unchanged.
    Only ``weight_rec`` is written (not ``model.g``). Warns for ``limit_cycle`` on a leaky ``RateRNN``
    (``dt < 1``) when some blocks have a stable rest state (they would not oscillate).
    """
    if not isinstance(scheme, str) or scheme not in SCHEMES:
        raise ValueError(f"unknown initialisation {scheme!r}; choose one of {names()}")
    entry = SCHEMES[scheme]
    if isinstance(model, torch.Tensor):
        W = model
    else:
        W = getattr(model, "weight_rec", None)
        if not isinstance(W, torch.Tensor):
            raise TypeError(f"{type(model).__name__} has no tensor weight_rec to initialise")
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"initialize_ needs a square weight_rec [N, N], got shape {tuple(W.shape)}"
                         + (" (BalancedNetwork keeps [N, K] weights on its own sparse pattern)"
                            if W.ndim == 2 else ""))
    if not W.is_floating_point():
        raise ValueError(f"weight_rec must be floating point, got {W.dtype}")
    for key in ("generator", "dtype", "device"):
        if key in params:
            raise TypeError(f"initialize_ sets {key} itself (from the arguments / weight_rec); do not pass it")
    kwargs = dict(params)
    if entry.gain is None:
        if g is not None:
            raise ValueError(f"the {scheme!r} initialisation has no gain g (its scale is set by its own "
                             "parameters); leave g out")
    else:
        if g is not None and entry.gain in kwargs:
            raise ValueError(f"pass either g or {entry.gain} for {scheme!r}, not both (g sets {entry.gain})")
        if g is not None:
            kwargs[entry.gain] = g
        elif entry.gain not in kwargs:
            model_g = getattr(model, "g", None)
            kwargs[entry.gain] = float(model_g) if isinstance(model_g, (int, float)) and not isinstance(
                model_g, bool) else 1.0
    N = W.shape[0]
    try:
        J = entry.build(N, **kwargs, generator=generator, dtype=W.dtype, device=W.device)
    except TypeError as err:  # an argument the scheme does not know: name the scheme in the message
        raise TypeError(f"initialisation {scheme!r}: {err}") from None
    if scheme == "limit_cycle":
        _warn_if_damped(model, J, kwargs.get("n_blocks") or N // 2)
    with torch.no_grad():
        W.copy_(J)
    return model


def _warn_if_damped(model, J: torch.Tensor, n_blocks: int) -> None:
    """Warn when a leaky rate model (dt < 1) would let some limit-cycle blocks decay to rest."""
    if not isinstance(model, RateRNN) or model.dt >= 1.0:
        return
    dt = model.dt
    idx = torch.arange(n_blocks) * 2
    Jd = J.detach().to("cpu", torch.float64)
    blocks = torch.complex(Jd[idx, idx], Jd[idx + 1, idx])  # alpha e^{i theta}
    damped = int(((1.0 - dt) + dt * blocks).abs().le(1.0).sum())
    if damped:
        warnings.warn(f"limit_cycle on a RateRNN with dt={dt}: {damped} of {blocks.numel()} blocks have a stable "
                      "rest state (|1 - dt + dt alpha e^(i theta)| <= 1) and will not oscillate; the default "
                      "ranges are for the discrete map (dt = 1). Use larger alpha or smaller theta "
                      "(alpha cos(theta) > 1 for small dt).", stacklevel=3)
