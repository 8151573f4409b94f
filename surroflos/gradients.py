"""How error gradients propagate back in time, measured by backpropagation through the rollout.

Seed 001: surrogate Lyapunov exponents predict how surrogate error gradients grow or vanish over a
time lag. :func:`gradient_propagation` measures the gradient side of that link *independently* of
the tangent maps that :func:`surroflos.lyapunov_spectrum` uses: it differentiates the model's own
``step_function`` with ordinary reverse-mode autograd (for spiking networks the surrogate derivative
enters through the spike function's ``backward``, exactly as in surrogate gradient training).

What is measured
----------------
For an end time ``t`` and a random unit *error direction* ``e`` in state space, the loss
``L_t = <e, h_t>`` has the gradient ``dL_t/dh_{t-lag} = e^T D_t D_{t-1} ... D_{t-lag+1}``, the error
signal that reaches the state ``lag`` steps earlier (``D_s = dh_s/dh_{s-1}``). Any loss of ``h_t``
(a readout and an error) gives such a row vector with ``e`` its (normalised) gradient at ``h_t``; a
random ``e`` is the generic case. Its norm is recorded for every lag, and

    ``log_norm[lag] = mean over end times, trajectories and probes of log ||dL_t/dh_{t-lag}||``

is the *typical* (geometric-mean) gradient size. For large lags ``log_norm[lag] ~ lambda_1 * lag * dt
+ c``: the slope is the largest Lyapunov exponent and the offset ``c`` (about ``-0.5 log D`` for a
random ``e`` in ``D`` dimensions) is the log of ``e``'s projection on the leading adjoint direction;
it does not change the slope. Logs are averaged, not norms: ``log E||g||`` is dominated by rare
segments with large finite-time exponents and grows faster than ``lambda_1``.

At small lags the curve bends while the back-propagated vector aligns with the leading direction
(over ``~1/(lambda_1 - lambda_2)`` time); fit the growth rate over lags beyond that
(``growth_rate(min_lag=...)`` or by choosing ``lags``).

How it is computed
------------------
``inputs [T, B, n_in]`` are simulated from ``state0`` (default ``model.initial_state(B, random=True)``).
The first ``transient`` steps move the state only. ``h_s`` is the state after step ``s`` (after
consuming ``inputs[s]``) and ``h_{transient-1}`` the state after the transient (``state0`` when
``transient = 0``). End times ``t`` range over ``[transient - 1 + max(lags), T - 1]``, so
``max(lags) <= T - transient``; ``n_times`` of them are spread evenly over that range. For each end
time the state ``h_{t - max(lags)}`` is detached, made to require grad, copied once per probe, and the
model is stepped ``max(lags)`` times with autograd recording; one ``torch.autograd.grad`` call then
returns ``dL_t/dh_{t-lag}`` for all lags at once (the states at intermediate steps are graph inputs).
End times, trajectories and probes are batched together, in chunks that bound memory; the
directions are drawn one end time at a time, so the chunking does not change the result. Batch
elements must evolve independently (true of every surroflos model).

Cost: ``n_times * max(lags)`` steps forward and backward on ``B * n_probe`` rows, i.e. about
``max(lags)`` times a Lyapunov estimate over ``n_times`` steps; the samples kept in the result take
``n_lags * n_times * B * n_probe`` numbers. ``n_times=None`` (every end time) gives the lowest
variance, since every window of the trajectory is used.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Union

import torch

from ._random import randn
from .lyapunov import NonFiniteError, _check_int, _check_model, _prepare
from .ensemble import check_generators, member
from .models.base import check_inputs

__all__ = ["GradientPropagationResult", "gradient_propagation"]

# Upper bound on (steps * rows * state_dim) recorded by autograd in one chunk (~6 saved tensors of this
# size per step for a rate network: ~100 MB in float64).
_CHUNK_ELEMENTS = 2 ** 21


@dataclass
class GradientPropagationResult:
    """Result of :func:`gradient_propagation`.

    Attributes:
        lags: ``[n_lags]`` (int64, ascending) lags in steps.
        log_norm: ``[n_lags]`` mean of ``log ||dL_t/dh_{t-lag}||`` over end times, trajectories and
            probes (unit error vectors, so the value at lag 0 would be exactly 0).
        log_norms: ``[n_lags, n_times, B, n_probe]`` every sample.
        end_times: ``[n_times]`` (int64) the end times ``t`` used (indices into the inputs).
        dt: time per step; growth rates are per unit time (divided by ``dt``), like Lyapunov exponents.
        n_probe: random error directions per end time and trajectory.
    """

    lags: torch.Tensor
    log_norm: torch.Tensor
    log_norms: torch.Tensor = field(repr=False)
    end_times: torch.Tensor = field(repr=False)
    dt: float
    n_probe: int

    def std(self) -> torch.Tensor:
        """Standard deviation of the log-norm samples per lag, ``[n_lags]`` (spread, not the error of the mean)."""
        s = self.log_norms.flatten(1)
        return s.std(dim=1) if s.shape[1] > 1 else torch.zeros_like(self.log_norm)

    def trajectory_log_norm(self) -> torch.Tensor:
        """Mean log-norm per trajectory, ``[B, n_lags]`` (averaged over end times and probes)."""
        return self.log_norms.mean(dim=(1, 3)).T

    def _fit_mask(self, min_lag: Optional[int], max_lag: Optional[int]) -> torch.Tensor:
        mask = torch.ones_like(self.lags, dtype=torch.bool)
        if min_lag is not None:
            mask &= self.lags >= min_lag
        if max_lag is not None:
            mask &= self.lags <= max_lag
        if int(mask.sum()) < 2:
            raise ValueError(f"a growth rate needs at least two lags in [min_lag, max_lag] = [{min_lag}, {max_lag}]; "
                             f"the result has lags {self.lags.tolist()}")
        return mask

    def _slope(self, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = y[..., mask.to(y.device)].to(torch.float64)
        x = self.lags[mask].to(device=y.device, dtype=torch.float64) * self.dt
        xc = x - x.mean()
        return ((y - y.mean(dim=-1, keepdim=True)) * xc).sum(dim=-1) / (xc * xc).sum()

    def growth_rate(self, min_lag: Optional[int] = None, max_lag: Optional[int] = None) -> float:
        """Least-squares slope of ``log_norm`` against ``lag * dt``: the gradient's exponential growth rate
        per unit time (compare with ``lambda_1``). ``min_lag``/``max_lag`` restrict the fit (inclusive)."""
        mask = self._fit_mask(min_lag, max_lag)
        return float(self._slope(self.log_norm, mask))

    def intercept(self, min_lag: Optional[int] = None, max_lag: Optional[int] = None) -> float:
        """Intercept at lag 0 of the same least-squares line (the alignment offset ``c``)."""
        mask = self._fit_mask(min_lag, max_lag)
        x = self.lags[mask].to(torch.float64) * self.dt
        y = self.log_norm.cpu()[mask].to(torch.float64)
        return float(y.mean() - self._slope(self.log_norm, mask).cpu() * x.mean())

    def trajectory_growth_rates(self, min_lag: Optional[int] = None, max_lag: Optional[int] = None) -> torch.Tensor:
        """Growth rate of each trajectory, ``[B]`` (float64), for comparison with per-trajectory exponents."""
        mask = self._fit_mask(min_lag, max_lag)
        return self._slope(self.trajectory_log_norm(), mask)

    def plot(self, ax_or_path: Any, lambda1: Union[float, torch.Tensor, None] = None, *, label: str = "gradient",
             fit: bool = True, min_lag: Optional[int] = None, title: str = "") -> Any:
        """Draw the typical gradient norm ``exp(log_norm)`` against the time lag on a log axis.

        Beside it: ``exp(lambda1 * lag * dt)`` anchored at lag 0, where a unit error vector has norm 1
        (black dashed; a tensor ``lambda1`` is averaged), and with ``fit=True`` the least-squares line over
        lags ``>= min_lag`` (red dotted). The band is +-1 std of the log-norm samples. ``ax_or_path`` is a
        matplotlib axis (returned) or a file path: then a figure is made, saved and the path returned.
        """
        from . import plotting

        fit_line = (self.growth_rate(min_lag=min_lag), self.intercept(min_lag=min_lag)) if fit else None
        path = None
        if isinstance(ax_or_path, (str, os.PathLike)):
            path = ax_or_path
            fig, (ax,) = plotting.figure()
        else:
            ax = ax_or_path
        np_ = plotting._np
        x = np_(self.lags) * self.dt
        y, s = np_(self.log_norm), np_(self.std())
        xs = [0.0] + list(x)
        line, = ax.plot(xs, [1.0] + list(math.e ** y), marker="o", ms=3, label=f"{label} $\\|dL_t/dh_{{t-\\tau}}\\|$")
        ax.fill_between(x, math.e ** (y - s), math.e ** (y + s), color=line.get_color(), alpha=0.15, lw=0)
        if lambda1 is not None:
            lam = float(torch.as_tensor(lambda1, dtype=torch.float64).mean())
            ax.plot(xs, [math.exp(lam * v) for v in xs], color="k", ls="--", lw=1,
                    label=f"$e^{{\\lambda_1 \\tau}}$, $\\lambda_1$ = {lam:.3g}")
        if fit_line is not None:
            rate, c = fit_line
            x0 = x[x >= (min_lag or 0) * self.dt] if min_lag else x
            ax.plot(x0, [math.exp(c + rate * v) for v in x0], color="C3", ls=":", lw=2,
                    label=f"fit: rate = {rate:.3g}")
        ax.set_yscale("log")
        ax.set_xlabel("time lag $\\tau$ = lag $\\times$ dt")
        ax.set_ylabel("gradient norm (geometric mean)")
        if title:
            ax.set_title(title)
        ax.legend(frameon=False, fontsize="small")
        if path is not None:
            return plotting.save_figure(fig, path)
        return ax


def _check_lags(lags: Any, window: int) -> torch.Tensor:
    if isinstance(lags, bool):
        raise ValueError(f"lags must be positive ints, got {lags!r}")
    if isinstance(lags, int):
        lags = range(1, lags + 1) if lags >= 1 else [lags]
    if isinstance(lags, torch.Tensor):
        if lags.is_floating_point() or lags.is_complex() or lags.dtype == torch.bool:
            raise ValueError(f"lags must be integers, got a tensor of dtype {lags.dtype}")
        lags = lags.flatten().tolist()
    try:
        values = list(lags)
    except TypeError:
        raise ValueError(f"lags must be an int or a sequence of positive ints, got {type(lags).__name__}") from None
    if not values:
        raise ValueError("lags is empty: give at least one positive lag")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"lags must be positive ints, got {v!r} in {values}")
    values = [int(v) for v in values]
    if len(set(values)) != len(values):
        raise ValueError(f"lags must be distinct, got {values}")
    if max(values) > window:
        raise ValueError(f"the largest lag {max(values)} exceeds the T - transient = {window} steps available "
                         "after the transient (lags must be <= T - transient)")
    return torch.tensor(sorted(values), dtype=torch.int64)


def _check_state(state: torch.Tensor, where: str) -> None:
    if not bool(torch.isfinite(state).all()):
        raise NonFiniteError(f"the network state became NaN/inf {where}: the dynamics diverged "
                             "(check the coupling gain, input scale, dt and the initial state)")


def gradient_propagation(model, inputs: torch.Tensor, lags: Union[int, Iterable[int], torch.Tensor], *,
                         state0: Optional[torch.Tensor] = None, transient: int = 0, n_probe: int = 8,
                         n_times: Optional[int] = 16,
                         generator: Optional[torch.Generator] = None
                         ) -> Union[GradientPropagationResult, list[GradientPropagationResult]]:
    """Typical norm of the error gradient sent back ``lag`` steps, ``||dL_t/dh_{t-lag}||``, per lag.

    Backpropagates random unit error vectors ``e`` at end times ``t`` (``L_t = <e, h_t>``) through the
    model's own step function with autograd and averages ``log ||dL_t/dh_{t-lag}||`` over end times,
    trajectories and probes (see the module docstring for the definitions and the rationale).

    Args:
        model: a surroflos model (the protocol of :mod:`surroflos.models.base`; only ``step_function``,
            ``params()``, ``initial_state``, ``state_dim``, ``n_in`` and ``dt`` are used, never a tangent map).
        inputs: ``[T, B, n_in]``, time first, finite; each batch element is one trajectory.
        lags: distinct positive ints (steps), ``max(lags) <= T - transient``; an int ``L`` means
            ``1, ..., L``. Lags are returned sorted.
        state0: initial state ``[B, D]``; default ``model.initial_state(B, random=True, generator=...)``.
        transient: initial steps that only move the state.
        n_probe: random error directions per end time and trajectory.
        n_times: number of end times per trajectory, spread evenly over the available range
            ``[transient - 1 + max(lags), T - 1]`` (fewer if the range is shorter); ``None``: all of them.
        generator: seeds the random initial state and the error directions.

    An ensemble of E members (:mod:`surroflos.ensemble`, inputs ``[T, E, B, n_in]``, ``state0 [E, B, D]``,
    ``generator`` a list of E generators or one) is measured member by member.

    Returns:
        :class:`GradientPropagationResult` (``lags``, ``log_norm``, ``growth_rate()``, ``plot()``, ...),
        detached; for an ensemble a list of E of them, member ``e``'s equal to the solo measurement of
        ``surroflos.ensemble.member(model, e)`` on ``inputs[:, e]`` with the e-th generator.

    Raises:
        ValueError: bad shapes, arguments or NaN/inf inputs. :class:`~surroflos.NonFiniteError` (a
        ValueError) when the state or a gradient becomes NaN/inf, or a gradient is exactly zero (its log
        is undefined: e.g. dead ReLUs or a surrogate with compact support far from threshold; float32
        underflows below ~1e-38, use float64 for strongly contracting networks and long lags).
    """
    model = _check_model(model)  # (a layer stack is wrapped, as in lyapunov_spectrum)
    E = getattr(model, "ensemble", None)
    if E is not None:
        check_inputs(inputs, model.n_in, finite=True, ensemble=E)
        gens = check_generators(generator, E) or [generator] * E
        if state0 is not None and (not isinstance(state0, torch.Tensor) or state0.ndim != 3 or state0.shape[0] != E):
            raise ValueError(f"state0 of an ensemble must be [E, B, D] with E={E}, got "
                             f"{getattr(state0, 'shape', type(state0).__name__)}")
        return [gradient_propagation(member(model, e), inputs[:, e], lags,
                                     state0=None if state0 is None else state0[e], transient=transient,
                                     n_probe=n_probe, n_times=n_times, generator=gens[e]) for e in range(E)]
    transient = _check_int("transient", transient, 0)
    n_probe = _check_int("n_probe", n_probe, 1)
    if n_times is not None:
        n_times = _check_int("n_times", n_times, 1)
    check_inputs(inputs, model.n_in, finite=True)
    T = inputs.shape[0]
    window = T - transient
    if window < 1:
        raise ValueError(f"inputs have T={T} steps but transient={transient}: no steps are left to measure")
    lag_t = _check_lags(lags, window)
    state, params, step, _ = _prepare(model, inputs, state0, generator)
    batch, D = state.shape
    max_lag = int(lag_t[-1])
    dtype, device = inputs.dtype, inputs.device

    # End times t (state after step t); the segment for t starts at the state h_{t - max_lag}.
    first, last = transient - 1 + max_lag, T - 1
    available = last - first + 1
    n = available if n_times is None else min(n_times, available)
    if n == 1:
        ends = torch.tensor([last], dtype=torch.int64)
    else:
        ends = torch.unique(torch.linspace(first, last, n, dtype=torch.float64).round().to(torch.int64))
    starts = ends - max_lag  # index s of h_s; -1 means the state before step 0 (state0)

    # Plain forward pass (no graph) to collect the segment start states.
    start_states = torch.empty(len(ends), batch, D, dtype=dtype, device=device)
    wanted = {int(s): i for i, s in enumerate(starts)}  # distinct since ends are distinct
    eager = device.type == "cpu"  # on accelerators check once at the end (no sync per step)
    finite = torch.ones((), dtype=torch.bool, device=device)
    with torch.no_grad():
        if -1 in wanted:
            start_states[wanted[-1]] = state
        for t in range(int(starts.max()) + 1):
            state = step(inputs[t], state, params)[1]
            if eager:
                _check_state(state, f"at step {t}")
            else:
                finite &= torch.isfinite(state).all()
            if t in wanted:
                start_states[wanted[t]] = state
    if not bool(finite):
        _check_state(torch.tensor(float("nan")), "before the last segment start")

    per_end = batch * n_probe
    chunk = max(1, _CHUNK_ELEMENTS // max(1, max_lag * per_end * D))
    offsets = torch.arange(1, max_lag + 1, device=device)
    pick = (max_lag - lag_t).tolist()  # position of h_{t-lag} in the recorded segment
    out = torch.empty(len(lag_t), len(ends), batch, n_probe, dtype=dtype, device=device)
    for c0 in range(0, len(ends), chunk):
        c1 = min(c0 + chunk, len(ends))
        m = c1 - c0
        rows = m * per_end
        # Inputs of each segment: steps s+1 .. s+max_lag = t  ->  [max_lag, m, B, n_in] -> [max_lag, rows, n_in]
        idx = starts[c0:c1].to(device).unsqueeze(0) + offsets.unsqueeze(1)  # [max_lag, m]
        x = inputs[idx]  # [max_lag, m, B, n_in]
        x = x.unsqueeze(3).expand(-1, -1, -1, n_probe, -1).reshape(max_lag, rows, inputs.shape[-1])
        h0 = start_states[c0:c1].unsqueeze(2).expand(-1, -1, n_probe, -1).reshape(rows, D)
        # Unit error directions, one draw per end time so that the chunking does not change them.
        e = torch.stack([randn(batch, n_probe, D, generator=generator, dtype=dtype, device=device)
                         for _ in range(m)]).reshape(rows, D)
        e = e / e.norm(dim=-1, keepdim=True)
        with torch.enable_grad():
            h = h0.detach().clone().requires_grad_(True)
            hs = [h]
            for j in range(max_lag):
                h = step(x[j], h, params)[1]
                hs.append(h)
            _check_state(h.detach(), "while re-simulating a segment")
            targets = [hs[p] for p in pick]
            if h.requires_grad:
                grads = torch.autograd.grad(h, targets, grad_outputs=e, allow_unused=True)
            else:  # the step does not depend on the state at all
                grads = [None] * len(targets)
        for i, g in enumerate(grads):
            norm = torch.zeros(rows, dtype=dtype, device=device) if g is None else g.detach().norm(dim=-1)
            out[i, c0:c1] = norm.reshape(m, batch, n_probe)
        del hs, targets, grads, h, h0, e

    bad = ~torch.isfinite(out) | (out <= 0)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        lag = int(lag_t[i])
        kind = "NaN/inf" if not bool(torch.isfinite(out[i]).all()) else "exactly zero"
        raise NonFiniteError(
            f"the gradient sent back {lag} steps is {kind} for some samples, so its log-norm is undefined "
            + ("(it overflowed: use float64 or shorter lags)" if kind == "NaN/inf" else
               "(the backpropagated signal died: dead units, a surrogate with compact support far from "
               "threshold, or float underflow; use float64 or shorter lags)"))
    log_norms = out.log()
    return GradientPropagationResult(lags=lag_t, log_norm=log_norms.mean(dim=(1, 2, 3)), log_norms=log_norms,
                                     end_times=ends, dt=float(model.dt), n_probe=n_probe)
