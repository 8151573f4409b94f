"""Differentiable Lyapunov spectra by the QR (orthonormal-frame) method.

Phases over the input sequence ``x: [T, B, n_in]`` (DynamicalSystems.jl style, all explicit):

1. ``transient`` steps: the state alone, no frame (no gradient unless ``grad_through_transient``).
2. ``frame_warmup`` steps: a random orthonormal frame ``Q: [B, D, k]`` is carried along
   (``Q <- D[t] Q``, re-orthonormalised every ``qr_every`` steps) so that it aligns with the leading
   directions; nothing is accumulated (no gradient unless ``grad_through_transient``).
3. the remaining ``T - transient - frame_warmup`` steps: the same, and ``log|R_ii|`` of every QR is
   summed. ``lambda_i = sum log|R_ii| / (steps * dt)`` (per unit time). A last QR closes the window
   when its length is not a multiple of ``qr_every``.

An ensemble (:mod:`surroflos.ensemble`) adds a member axis in front of the batch: inputs ``[T, E, B, n_in]``,
frames ``[E, B, D, k]``, exponents ``[E, B, k]``; each member is estimated exactly as it would be alone.

Gradients flow through phase 3 (state trajectory, tangent maps and ``torch.linalg.qr``), and with
``grad_through_transient=True`` through phases 1-2 as well, so the exponents can be used in a loss
(:mod:`surroflos.flossing`). With ``detach_state=True`` the state is simulated without gradient and only the explicit dependence of the tangent maps on the parameters is
differentiated (the local form of seed 003).

``backend="triton"`` (the default ``"auto"`` picks it for CUDA inputs) swaps the model's tangent map
for the fused one of :mod:`surroflos.kernels.tangent` where the model is a known one, and
re-orthonormalises with CholeskyQR2 (:mod:`surroflos.kernels.qr`); ``backend="torch"`` is the plain
PyTorch computation (``torch.linalg.qr``; for a known model, the rate network and the LIF network, its
tangent formula in the step-loop form of :func:`surroflos.kernels.tangent.lean_tangent_function`, else the
model's own map).

The step loop is kept lean: a solo frame ``[B, D, k]`` is carried column-major (as the transpose of a
contiguous ``[B, k, D]``), the layout ``torch.linalg.qr`` reads and writes, so that with the lean maps the
tangent product is one matrix product ``[B k, D] @ [D, D]`` and the frame is never copied; the finiteness
checks cost no host sync per step (flags are read every 64 steps on the CPU, at the end on accelerators)
and the lost-precision diagnostic is computed from the stored ``R`` factors in batches.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from ._random import orthonormal_frame, randn
from .ensemble import draw_per_member
from .kernels.backend import check_backend, resolve_backend
from .kernels.qr import cholesky_qr2
from .kernels.tangent import fused_tangent_function, lean_tangent_function
from .models.base import check_inputs, check_state_and_model, jvp_tangent
from .models.layered import as_model

__all__ = [
    "LyapunovResult",
    "lyapunov_spectrum",
    "max_lyapunov_bruteforce",
    "kaplan_yorke_dimension",
    "ks_entropy",
    "NonFiniteError",
]


class NonFiniteError(FloatingPointError, ValueError):
    """The state or the tangent frame became NaN/inf during an estimate."""


def kaplan_yorke_dimension(exponents: torch.Tensor) -> torch.Tensor:
    """Kaplan-Yorke dimension ``j + sum_{i<=j} lambda_i / |lambda_{j+1}|`` of spectra ``[..., k]``.

    ``j`` is the largest index whose partial sum is non-negative (0 when ``lambda_1 < 0``). When every
    partial sum of the k given exponents is non-negative the dimension is at least ``k`` and ``k`` is
    returned (compute more exponents for the true value).
    """
    lam = torch.sort(exponents, dim=-1, descending=True).values
    k = lam.shape[-1]
    csum = torch.cumsum(lam, dim=-1)
    j = (csum >= 0).sum(dim=-1)  # partial sums decrease after the first negative exponent
    j_idx = j.clamp(max=k - 1)
    partial = torch.where(j > 0, torch.gather(csum, -1, (j - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1),
                          torch.zeros_like(csum[..., 0]))
    nxt = torch.gather(lam, -1, j_idx.unsqueeze(-1)).squeeze(-1).abs()
    dim = j.to(lam.dtype) + partial / nxt
    return torch.where(j >= k, torch.full_like(dim, float(k)), dim)


def ks_entropy(exponents: torch.Tensor) -> torch.Tensor:
    """Kolmogorov-Sinai entropy rate bound: the sum of the positive exponents, ``[..., k] -> [...]``."""
    return exponents.clamp(min=0).sum(dim=-1)


@dataclass
class LyapunovResult:
    """Result of :func:`lyapunov_spectrum`.

    Attributes:
        exponents: ``[B, k]``, one spectrum per trajectory, descending, per unit time (``[E, B, k]`` for an
            ensemble of E members).
        dt: time per step.
        steps: number of accumulated steps.
        qr_every: re-orthonormalisation interval used.
        history: ``[n_qr, B, k]`` (``[n_qr, E, B, k]``) running estimates after each QR of the accumulation window
            (detached; for convergence plots), and ``history_times`` their times.
        diverged: ensembles only, ``[E]`` bool: the members whose state or frame stopped being finite
            (their exponents are NaN; the other members' are unaffected). ``None`` for a solo model, where a
            divergence raises :class:`NonFiniteError`.
    """

    exponents: torch.Tensor
    dt: float
    steps: int
    qr_every: int
    history: torch.Tensor = field(repr=False)
    history_times: torch.Tensor = field(repr=False)
    diverged: torch.Tensor | None = None

    def mean(self) -> torch.Tensor:
        """Spectrum averaged over trajectories, ``[k]`` (``[E, k]``: per member)."""
        return self.exponents.mean(dim=-2)

    def std(self) -> torch.Tensor:
        """Standard deviation over trajectories, ``[k]`` (``[E, k]``; zero for a single trajectory)."""
        if self.exponents.shape[-2] < 2:
            return torch.zeros_like(self.exponents.select(-2, 0))
        return self.exponents.std(dim=-2)

    def kaplan_yorke_dimension(self) -> torch.Tensor:
        """Kaplan-Yorke dimension of each trajectory's spectrum, ``[B]`` (``[E, B]``)."""
        return kaplan_yorke_dimension(self.exponents)

    def ks_entropy(self) -> torch.Tensor:
        """Sum of positive exponents of each trajectory, ``[B]`` (``[E, B]``)."""
        return ks_entropy(self.exponents)


def _check_model(model: Any) -> Any:
    """The model itself, or a :class:`~surroflos.models.layered.LayeredNetwork` around a layer stack."""
    return as_model(model)


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


QR_METHODS = ("auto", "householder", "cholesky_qr2")


def _resolve_engine(inputs: Any, backend: str, qr: str) -> tuple[str, str]:
    """``(backend, qr)`` after resolution: ``"torch"``/``"triton"`` and ``"householder"``/``"cholesky_qr2"``.

    ``qr="auto"`` is CholeskyQR2 with the Triton backend, Householder (today's ``torch.linalg.qr``)
    with the torch backend.
    """
    check_backend(backend)
    if qr not in QR_METHODS:
        raise ValueError(f"qr must be one of {QR_METHODS}, got {qr!r}")
    # a non-tensor input gets its TypeError from check_inputs in _prepare
    be = resolve_backend(backend, inputs.device if isinstance(inputs, torch.Tensor) else "cpu")
    if qr == "auto":
        qr = "cholesky_qr2" if be == "triton" else "householder"
    return be, qr


def _prepare(model, inputs, state0, generator, backend: str = "torch"):
    check_inputs(inputs, model.n_in, finite=True, ensemble=getattr(model, "ensemble", None))
    check_state_and_model(model, inputs, state0)
    batch = inputs.shape[-2]
    if state0 is None:
        state0 = model.initial_state(batch, random=True, generator=generator, device=inputs.device, dtype=inputs.dtype)
    elif not bool(torch.isfinite(state0).all()):
        raise ValueError("state0 contains NaN or inf")
    params = model.params()
    step = model.step_function
    tangent = fused_tangent_function(model, "triton") if backend == "triton" else lean_tangent_function(model)
    if tangent is None:
        tangent = getattr(model, "tangent_function", None)
    if tangent is None:
        def tangent(x, s, p, Q):
            return jvp_tangent(step, x, s, p, Q)
    return state0, params, step, tangent


class _FiniteGuard:
    """Checks state and QR diagonal for NaN/inf without a host sync per step.

    Every step appends its state (a reference: no op) to a pending list, every QR its ``log|R_ii|``; every
    :attr:`CHECK_EVERY` steps they are reduced to one ``max |x|`` each (a few ops for all of them, no sync;
    finite exactly when the entry is), which on the CPU are read at once (one sync), on accelerators only at
    the end (and before an error of the model is let through, :meth:`reporting`), and
    the first non-finite entry in step order is reported: the step where the state stopped being finite, or
    where the frame degenerated (the state is checked first at a step). The detached ``R`` factors wait the
    same way for the lost-precision diagnostic (:meth:`qr`), which is then computed for all of them at once.

    For an ensemble (``members=E``) the flags are per member: a member that diverges is recorded (its
    estimate becomes NaN, the others are untouched, as every operation acts member by member) and only a
    divergence of every member raises, naming the step by which all had diverged.
    """

    CHECK_EVERY = 64

    def __init__(self, device: torch.device, qr_every: int, method: str = "householder",
                 members: int | None = None) -> None:
        self.eager = device.type == "cpu"
        self.method = method
        self.qr_every = qr_every
        self.members = members
        self.pending: list[tuple[int, bool, torch.Tensor]] = []  # (step, is_state, state or log|R_ii|)
        self.steps = 0  # state entries in pending
        self.reduced: list[tuple[list[tuple[int, bool]], torch.Tensor]] = []  # (entries, max |x| of each)
        self.factors: list[tuple[torch.Tensor, torch.Tensor]] = []  # (log|R_ii|, R), detached
        self.min_kept: torch.Tensor | None = None
        self.diverged: torch.Tensor | None = None  # [E] bool, ensembles only

    def check_state(self, t: int, state: torch.Tensor) -> None:
        """Record the state after step ``t`` (a reference: no op); called every step, before that step's QR."""
        self.pending.append((t, True, state))
        self.steps += 1
        if self.steps >= self.CHECK_EVERY:
            self._reduce()
            if self.eager:
                self.flush()

    def qr(self, t: int, Q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-orthonormalise ``Q``; return the new frame and ``log|R_ii|`` (their finiteness recorded).

        Also tracks how much of each column survived orthogonalisation, ``|R_ii| / ||q_i||``: below
        ``sqrt(eps)`` of the dtype the small directions are being lost to rounding (``qr_every`` too
        large for the spread of the spectrum), which :meth:`finish` reports as a warning.
        """
        if self.method == "householder":
            Qn, R = torch.linalg.qr(Q)
        else:  # computed in float32 for low-precision frames, float64 for float64 ones
            flat = Q.reshape(-1, *Q.shape[-2:])  # CholeskyQR2 takes [B, D, k]: an ensemble's members in the batch
            Qn, R = cholesky_qr2(flat if flat.dtype in (torch.float32, torch.float64) else flat.float())
            Qn, R = Qn.to(Q.dtype).reshape(Q.shape), R.to(Q.dtype).reshape(*Q.shape[:-2], *R.shape[-2:])
        logdiag = R.diagonal(dim1=-2, dim2=-1).abs().log()
        ld = logdiag.detach()
        self.pending.append((t, False, ld))
        self.factors.append((ld, R.detach()))
        if len(self.factors) >= self.CHECK_EVERY:
            self._reduce_kept()
        return Qn, logdiag

    def _reduce_kept(self) -> None:
        """Fold the waiting factors into ``min_kept`` (no sync): ``||q_i|| = ||R[:, i]||`` as ``Q = Qn R``."""
        if not self.factors:
            return
        logdiag = torch.stack([f[0] for f in self.factors])
        kept = logdiag - torch.stack([f[1] for f in self.factors]).norm(dim=-2).log()
        self.factors = []
        if self.members is not None:  # a diverged member's NaN must not hide the others' values
            kept = torch.where(kept.isfinite(), kept, torch.inf)
        kept = kept.min()
        self.min_kept = kept if self.min_kept is None else torch.minimum(self.min_kept, kept)

    def _reduce(self) -> None:
        """The pending states and ``log|R_ii|`` as one ``max |x|`` per entry (per member for an ensemble; no
        sync): finite exactly when the entry is, as the maximum propagates NaN."""
        if not self.pending:
            return
        pending, self.pending, self.steps = self.pending, [], 0
        lead = 1 if self.members is None else 2
        parts = []
        with torch.no_grad():
            for kind in (True, False):
                idx = [i for i, e in enumerate(pending) if e[1] is kind]
                if idx:
                    parts.append((idx, torch.stack([pending[i][2] for i in idx]).abs().flatten(lead).amax(lead)))
            if len(parts) == 1:
                sizes = parts[0][1]
            else:
                first = parts[0][1]
                sizes = first.new_empty((len(pending), *first.shape[1:]))
                for idx, v in parts:
                    sizes[torch.tensor(idx, device=sizes.device)] = v.to(sizes.dtype)
        self.reduced.append(([(t, kind) for t, kind, _ in pending], sizes))

    def flush(self) -> None:
        """Read the pending entries (one sync); raise for the first non-finite one (solo) or record the
        diverged members (ensemble; raise when all have)."""
        self._reduce()
        if not self.reduced:
            return
        reduced, self.reduced = self.reduced, []
        pending = [m for meta, _ in reduced for m in meta]  # (step, is_state)
        ok = torch.isfinite(torch.cat([sizes for _, sizes in reduced])).cpu()  # [n] or [n, E]
        if self.members is None:
            bad = (~ok).nonzero()
            if len(bad):
                t, is_state = pending[int(bad[0])]
                self._raise_if_bad(t, not is_state, is_state)
            return
        bad = ~ok
        if self.diverged is not None:
            bad[0] |= self.diverged.cpu()
        cum = bad.cumsum(dim=0) > 0  # [n, E]: diverged by entry i
        self.diverged = cum[-1]
        every = cum.all(dim=1).nonzero()
        if len(every):
            self._raise_all_diverged(pending[int(every[0])][0])

    @contextlib.contextmanager
    def reporting(self):
        """Around the step loop: an error raised by a model fed a state that already diverged (a step or map
        that cannot take NaN) is reported as that divergence, as the per-step check did."""
        try:
            yield
        except NonFiniteError:
            raise
        except Exception:
            self.flush()
            raise

    def finish(self) -> None:
        self.flush()
        self._reduce_kept()
        if self.members is not None and self.diverged is not None and bool(self.diverged.all()):
            self._raise_all_diverged(None)
        if self.min_kept is not None:
            limit = 0.5 * math.log(torch.finfo(self.min_kept.dtype).eps)
            if float(self.min_kept) < limit:
                warnings.warn(
                    f"lyapunov_spectrum: between two QRs the smallest tracked direction shrank to "
                    f"exp({float(self.min_kept):.1f}) of its column's length, below sqrt(eps) of "
                    f"{self.min_kept.dtype}; the smallest exponents lose accuracy to rounding. "
                    + (f"Lower qr_every={self.qr_every}, " if self.qr_every > 1 else "")
                    + "ask for fewer exponents k, or use float64.",
                    RuntimeWarning, stacklevel=3)

    def _raise_all_diverged(self, t: int | None) -> None:
        raise NonFiniteError(f"every member's state or tangent frame became NaN/inf{'' if t is None else f' by step {t}'}:"
                             " the dynamics diverged (check the coupling gain, input scale, dt and the initial state)")

    def _raise_if_bad(self, t: int, state_ok: bool, r_ok: bool) -> None:
        if not state_ok:
            raise NonFiniteError(f"the network state became NaN/inf at step {t}: the dynamics diverged "
                                 "(check the coupling gain, input scale, dt and the initial state)")
        if not r_ok:
            raise NonFiniteError(
                f"the tangent frame became degenerate at step {t} (log|R_ii| is NaN/inf): vectors overflowed "
                f"or collapsed between re-orthonormalisations (lower qr_every={self.qr_every}, use float64, or "
                "ask for fewer exponents k if the Jacobian is singular)")


def lyapunov_spectrum(model, inputs: torch.Tensor, k: int, *, qr_every: int = 1, transient: int = 0,
                      frame_warmup: int = 0, state0: torch.Tensor | None = None,
                      generator: torch.Generator | None = None, detach_state: bool = False,
                      grad_through_transient: bool = False, backend: str = "auto",
                      qr: str = "auto", frame0: torch.Tensor | None = None) -> LyapunovResult:
    """The k leading Lyapunov exponents of ``model`` driven by ``inputs``, one spectrum per trajectory.

    Args:
        model: a surroflos model (``RateRNN``, ``SpikingRNN`` or anything following
            :mod:`surroflos.models.base`); without a ``tangent_function`` its tangent map comes from
            forward-mode AD of its step function.
        inputs: ``[T, B, n_in]``, time first; each batch element is one trajectory. Use
            ``torch.zeros(T, B, n_in)`` for an autonomous network. An ensemble of E members
            (:mod:`surroflos.ensemble`) takes ``[T, E, B, n_in]`` and gives one spectrum per member and
            trajectory.
        k: number of exponents, ``1 <= k <= D`` (the state dimension).
        qr_every: re-orthonormalise every this many steps (1..10 is typical; large values overflow
            or lose the small directions).
        transient: initial steps that only move the state.
        frame_warmup: further steps that settle the frame before accumulation starts (an unsettled
            frame biases the estimate).
        state0: initial state ``[B, D]`` (``[E, B, D]``); default ``model.initial_state(B, random=True,
            generator=...)``.
        generator: seeds the random initial state and frame. For an ensemble, a list of E generators
            gives member e the initial state and frame a solo estimate with the e-th generator draws.
        detach_state: simulate the state without gradient (local flossing).
        grad_through_transient: also differentiate through the transient and the frame warm-up. By
            default they run without gradient: the state and frame at the start of the accumulation
            window are treated as given, which avoids backpropagating through a long (possibly
            chaotic) transient, the very explosion flossing fights.
        backend: ``"auto"`` (Triton for CUDA inputs, else torch), ``"torch"`` or ``"triton"``
            (:mod:`surroflos.kernels.backend`). With ``"triton"`` the tangent map is the fused one of
            :func:`surroflos.kernels.tangent.fused_tangent_function` when the model is a known one,
            else the model's own; ``"torch"`` uses the PyTorch step-loop form of the known models' maps
            (:func:`surroflos.kernels.tangent.lean_tangent_function`: ``RateRNN``, LIF ``SpikingRNN``; the
            same formula, equal up to summation order; neurons whose surrogate slope is exactly zero, as
            relu's and the triangle surrogate's off their support, skipped on the CPU), else the model's own.
        qr: re-orthonormalisation: ``"householder"`` (``torch.linalg.qr``), ``"cholesky_qr2"``
            (:mod:`surroflos.kernels.qr`, falls back to Householder per trajectory when the frame is
            ill-conditioned) or ``"auto"`` (CholeskyQR2 with the Triton backend, else Householder).
        frame0: the frame at the end of the transient, ``[B, D, k]`` (``[E, B, D, k]``) with orthonormal
            columns; default a random one drawn from ``generator`` there (after ``state0``). Given with
            ``state0``, a batch's slice of both reproduces that slice's trajectories of the whole batch's
            estimate (data-parallel flossing, :mod:`surroflos.distributed`).

    Returns:
        :class:`LyapunovResult` with ``exponents [B, k]`` (``[E, B, k]``; descending, per unit time).

    Raises:
        ValueError: bad shapes or arguments, NaN inputs; :class:`NonFiniteError` (a ValueError) when
        the state or the frame stops being finite, naming the step (for an ensemble: when every member's
        does, naming the step by which all had; single members are reported in ``result.diverged``). On
        the CPU the check runs every 64 steps (so up to 63 steps run past a divergence before the error),
        on accelerators at the end.
    """
    model = _check_model(model)
    k = _check_int("k", k, 1)
    qr_every = _check_int("qr_every", qr_every, 1)
    transient = _check_int("transient", transient, 0)
    frame_warmup = _check_int("frame_warmup", frame_warmup, 0)
    if k > model.state_dim:
        raise ValueError(f"k={k} exponents asked for, but the state has only D={model.state_dim} dimensions")
    be, qr_method = _resolve_engine(inputs, backend, qr)
    state, params, step, tangent = _prepare(model, inputs, state0, generator, be)
    T, batch, E = inputs.shape[0], inputs.shape[-2], getattr(model, "ensemble", None)
    start = transient + frame_warmup
    n_acc = T - start
    if n_acc < 1:
        raise ValueError(f"inputs have T={T} steps but transient + frame_warmup = {start}: "
                         "nothing is left to accumulate")
    guard = _FiniteGuard(inputs.device, qr_every, qr_method, members=E)
    dt = float(model.dt)
    xs = inputs.unbind(0)

    with guard.reporting(), contextlib.nullcontext() if grad_through_transient else torch.no_grad():
        for t in range(transient):
            state = step(xs[t], state, params)[1]
            guard.check_state(t, state)
        if frame0 is None:
            Q = draw_per_member(lambda g: orthonormal_frame(batch, model.state_dim, k, generator=g,
                                                            dtype=inputs.dtype, device=inputs.device), generator, E)
        else:
            want = (*inputs.shape[1:-1], model.state_dim, k)
            if not isinstance(frame0, torch.Tensor) or tuple(frame0.shape) != want:
                raise ValueError(f"frame0 must be a tensor of shape {list(want)} (batch, D, k), got "
                                 f"{list(getattr(frame0, 'shape', [])) or type(frame0).__name__}")
            Q = frame0.to(device=inputs.device, dtype=inputs.dtype)
        if Q.ndim == 3:  # column-major frames, the layout torch.linalg.qr reads and writes (no copies)
            Q = Q.mT.contiguous().mT
        for j, t in enumerate(range(transient, start)):
            Q = tangent(xs[t], state, params, Q)
            state = step(xs[t], state, params)[1]
            guard.check_state(t, state)
            if (j + 1) % qr_every == 0 or t == start - 1:
                Q, _ = guard.qr(t, Q)

    log_sum = torch.zeros(*Q.shape[:-2], k, dtype=inputs.dtype, device=inputs.device)
    history, counts = [], []
    with guard.reporting():
        for j, t in enumerate(range(start, T)):
            Q = tangent(xs[t], state, params, Q)
            if detach_state:
                with torch.no_grad():
                    state = step(xs[t], state, params)[1]
            else:
                state = step(xs[t], state, params)[1]
            guard.check_state(t, state)
            if (j + 1) % qr_every == 0 or t == T - 1:
                Q, logdiag = guard.qr(t, Q)
                log_sum = log_sum + logdiag
                history.append(log_sum.detach())
                counts.append(j + 1)
    guard.finish()
    exponents = torch.sort(log_sum / (n_acc * dt), dim=-1, descending=True).values
    times = torch.tensor(counts, dtype=torch.float64) * dt
    scale = times.to(device=inputs.device, dtype=inputs.dtype).view(-1, *[1] * log_sum.ndim)
    hist = torch.sort(torch.stack(history) / scale, dim=-1, descending=True).values
    diverged = None
    if E is not None:  # a member whose state or frame stopped being finite: its exponents are NaN
        diverged = guard.diverged.detach() if guard.diverged is not None else torch.zeros(E, dtype=torch.bool)
        exponents = torch.where(diverged.to(exponents.device).view(E, 1, 1), torch.nan, exponents)
    return LyapunovResult(exponents, dt, n_acc, qr_every, hist, times, diverged)


def max_lyapunov_bruteforce(model, inputs: torch.Tensor, *, eps: float | None = None, transient: int = 0,
                            warmup: int = 0, state0: torch.Tensor | None = None,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """Largest exponent from two nearby trajectories, renormalised to distance ``eps`` every step.

    An oracle independent of tangent maps and QR: it runs the model's own step function twice. For
    spiking networks it measures the true (Heaviside) dynamics, which matches the surrogate spectrum
    only for ``smooth=True`` networks. Returns ``[B]`` exponents per unit time (``[E, B]`` for an ensemble,
    whose ``generator`` may be a list with one per member).

    Args:
        eps: perturbation size (default 1e-8 in float64, 1e-4 in float32).
        transient: steps run before the perturbation is placed.
        warmup: steps after that during which the perturbation aligns but nothing is accumulated.
    """
    model = _check_model(model)
    transient = _check_int("transient", transient, 0)
    warmup = _check_int("warmup", warmup, 0)
    state, params, step, _ = _prepare(model, inputs, state0, generator)
    T = inputs.shape[0]
    if T - transient - warmup < 1:
        raise ValueError(f"inputs have T={T} steps but transient + warmup = {transient + warmup}")
    if eps is None:
        eps = 1e-8 if inputs.dtype == torch.float64 else 1e-4
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    with torch.no_grad():
        for t in range(transient):
            state = step(inputs[t], state, params)[1]
        delta = draw_per_member(lambda g: randn(*state.shape[-2:], generator=g, dtype=state.dtype,
                                                device=state.device), generator, getattr(model, "ensemble", None))
        other = state + eps * delta / delta.norm(dim=-1, keepdim=True)
        log_sum = torch.zeros(state.shape[:-1], dtype=state.dtype, device=state.device)
        for t in range(transient, T):
            state = step(inputs[t], state, params)[1]
            other = step(inputs[t], other, params)[1]
            diff = other - state
            dist = diff.norm(dim=-1)
            if not bool(torch.isfinite(dist).all()) or bool((dist == 0).any()):
                raise NonFiniteError(f"the perturbation became NaN/inf/zero at step {t}; choose another eps")
            if t >= transient + warmup:
                log_sum += torch.log(dist / eps)
            other = state + diff * (eps / dist).unsqueeze(-1)
    return log_sum / ((T - transient - warmup) * float(model.dt))
