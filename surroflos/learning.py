"""Biologically plausible learning rules for recurrent networks: e-prop and RFLO.

BPTT propagates the error backwards through the recurrent weights, so every synapse needs activity from
the whole network and from the future. e-prop (Bellec et al. 2020) and RFLO (Murray 2019) drop exactly
the non-local part of the gradient: the dependence of a neuron's state on the *other* neurons' past
states. What remains factorises into a product of two locally available quantities,

    dE/dW_ji  ~=  sum_t  L_j[t] e_ji[t]

- the **eligibility trace** ``e_ji[t] = dr_j[t]/dh_j[t] * eps_ji[t]``, where the eligibility vector
  ``eps_ji[t] = dh_j[t]/dW_ji`` is differentiated through neuron j's *own* state only
  (``eps_ji[t] = D_j[t] eps_ji[t-1] + dh_j[t]/dW_ji|explicit``, ``D_j[t] = dh_j[t]/dh_j[t-1]`` with the
  recurrent input held fixed), computed forward in time;
- the **learning signal** ``L_j[t] = sum_k B_jk dE/dy_k[t]``: the output error at time t sent back to
  neuron j through feedback weights ``B``: ``B = W_out^T`` (symmetric e-prop) or a fixed random matrix
  (random e-prop; RFLO is random e-prop on a rate network).

The readout ``y = W_out r + b_out`` is trained by its exact gradient, which is local already.

Models and their local Jacobians ``D_j[t]`` (the diagonal path kept by the truncation):

- :class:`~surroflos.models.RateRNN`, ``h[t] = (1-dt) h[t-1] + dt (J phi(h[t-1]) + W_in x[t] + b)``
  (seed 003 writes the same map with ``alpha = 1 - dt``): ``D = 1 - dt`` (0 for the discrete map
  ``dt = 1``), the same for every neuron. So ``eps_ji[t] = (1-dt) eps_ji[t-1] + dt phi(h_i[t-1])``
  does not depend on j: the trace of ``J_ji`` is a low-pass filtered presynaptic rate, one vector per
  trajectory (likewise ``dt x[t]`` for ``W_in`` and ``dt`` for ``b``), and
  ``e_ji[t] = phi'(h_j[t]) eps_i[t]``. Note that the self-coupling ``J_jj phi(h_j)`` is recurrent
  input and is dropped, as in e-prop and RFLO. (Murray's RFLO network leaks the rates,
  ``r[t] = (1-dt) r[t-1] + dt phi(W r[t-1] + ...)``, which moves ``phi'`` inside the filter; here the
  leak acts on the pre-activation ``h``, and the same truncation gives the form above.)
- :class:`~surroflos.models.SpikingRNN` with ``neuron="lif"``, ``U[t] = beta U[t-1] + W_in x[t] +
  W S[t-1] + b - R[t] theta`` (``R[t] = S[t-1]``, detached by default): ``D_j = beta_j`` for a
  detached subtract reset; ``beta_j - theta_j sigma'(U_j[t-1] - theta_j)`` when the reset is not
  detached; ``beta_j (1 - R_j[t])`` (minus ``beta_j U_j[t-1] sigma'`` if not detached) for the zero
  reset. The pseudo-derivative ``dS_j/dU_j`` is the surrogate derivative ``sigma'(U_j[t] - theta_j)``.
  When ``D`` differs between neurons (zero reset, non-detached reset, per-neuron ``beta``), the
  eligibility vector of ``W_ji`` depends on both j and i and is stored per synapse.

A leaky readout ``y[t] = kappa y[t-1] + W_out S[t] + b_out`` (``SpikingRNN(readout="leaky")``) is
handled as in Bellec et al.: traces and readout inputs are low-pass filtered with ``kappa``.

Two implementations of the same update, equal to rounding (tested to 1e-10 in float64):

(a) ``implementation="online"``: one forward pass under ``torch.no_grad`` carrying the eligibility
    vectors and accumulating ``sum_t L_j[t] e_ji[t]``. Nothing is stored per time step, so memory does
    not grow with T (:meth:`EProp.online_state_bytes`): traces ``[B, 1, N + n_in + 1]`` for a rate or
    uniform-decay LIF network, ``[B, N, N + n_in + 1]`` (per synapse) otherwise and with a leaky
    readout, plus gradient accumulators of the parameters' size.
(b) ``implementation="autograd"``: truncated BPTT. The model is rerun with the recurrent activity that
    enters ``W phi(h[t-1])`` (rate) or ``W S[t-1]`` (LIF) **detached**; the leak ``(1-dt) h[t-1]`` /
    ``beta U[t-1]``, the reset through the neuron's own spike (when the model does not detach it) and the
    activity read by the readout keep their graph. The readout is a custom autograd function whose
    forward is ``W_out r + b_out`` and whose backward sends ``dE/dy`` to the activity through ``B``
    instead of ``W_out^T`` (the readout weights still get their exact gradient). ``loss.backward()``
    then yields exactly the e-prop update, at the memory cost of a T-step graph.

The per-step learning signal of (a) needs ``dE/dy[t]`` at time t: the task's loss must be a mean of
per-step terms over the masked steps (true of every :mod:`surroflos.tasks` loss: masked MSE and
cross-entropy, whose gradients (a) writes in closed form). For any other ``task.loss`` of that kind,
step t contributes ``task.loss(step t) * (masked entries at t) / (all masked)``, differentiated on
its own.

Usage::

    rule = make_rule("eprop", model)          # or "rflo" (rate networks), "bptt"
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = rule.step(x, y, mask, task)        # sets .grad of the trained parameters
    opt.step()
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._random import randn
from .models.base import Rollout, check_inputs, check_state_and_model
from .models.rate import RateRNN, _dphi, _phi
from .models.spiking import SpikingRNN, _fire
from .tasks.base import Task

__all__ = ["RULES", "FEEDBACKS", "IMPLEMENTATIONS", "LearningRule", "BPTT", "EProp", "MemberRules", "make_rule"]

RULES = ("bptt", "eprop", "rflo")
FEEDBACKS = ("symmetric", "random")
IMPLEMENTATIONS = ("online", "autograd")

# The parameters e-prop updates: network weights through eligibility traces, the readout exactly.
_NETWORK = ("weight_rec", "weight_in", "bias")
_READOUT = ("readout_layer.weight", "readout_layer.bias")

Feedback = Union[str, torch.Tensor]


class LearningRule:
    """Common interface: ``step(x, y, mask, task) -> loss`` sets ``.grad`` so an optimizer can step."""

    name: str = ""
    model: nn.Module

    def parameters(self) -> list[nn.Parameter]:
        """The parameters whose ``.grad`` :meth:`step` sets."""
        return [p for _, p in self.named_parameters()]

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def gradients(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, task, *,
                  state0: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, {parameter name: update direction})`` for one batch; parameters are left untouched."""
        raise NotImplementedError  # pragma: no cover - abstract

    def step(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, task, *,
             state0: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Compute the rule's gradients for one batch and store them in ``.grad``; returns the loss.

        Args:
            x: inputs ``[T, B, n_in]``; y: targets as ``task.loss`` expects them; mask: ``[T, B]`` bool.
            task: anything with ``loss(outputs, targets, mask)`` (a :mod:`surroflos.tasks` task).
            state0: initial state ``[B, D]`` (default: the model's zero state).

        Returns:
            The batch loss (0-dim, detached), the same value as ``task.loss(model(x)[0], y, mask)``.
        """
        loss, grads = self.gradients(x, y, mask, task, state0=state0)
        for name, p in self.named_parameters():
            p.grad = grads[name]
        return loss

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class BPTT(LearningRule):
    """Backpropagation through time: the exact gradient of the task loss (``loss.backward()``)."""

    name = "bptt"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def gradients(self, x, y, mask, task, *, state0=None):
        out, _ = self.model(x, state0)
        loss = task.loss(out, y, mask)
        named = self.named_parameters()
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        return loss.detach(), {n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(named, grads)}

    def step(self, x, y, mask, task, *, state0=None):
        out, _ = self.model(x, state0)
        loss = task.loss(out, y, mask)
        for p in self.parameters():
            p.grad = None
        loss.backward()
        return loss.detach()


class _FeedbackLinear(torch.autograd.Function):
    """``F.linear(r, W, b)`` whose backward sends the output error to ``r`` through ``B`` ``[N, n_out]``.

    The gradients of ``W`` and ``b`` are the exact ones; only the path into the network is replaced
    (``B = W^T`` reproduces the ordinary linear layer).
    """

    @staticmethod
    def forward(ctx, activity, weight, bias, feedback):  # type: ignore[override]
        ctx.save_for_backward(activity, feedback)
        return F.linear(activity, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        activity, feedback = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1])
        grad_act = grad_out @ feedback.T if ctx.needs_input_grad[0] else None
        grad_w = g.T @ activity.reshape(-1, activity.shape[-1]) if ctx.needs_input_grad[1] else None
        grad_b = g.sum(0) if ctx.needs_input_grad[2] else None
        return grad_act, grad_w, grad_b, None


class EProp(LearningRule):
    """e-prop (Bellec et al. 2020) for :class:`~surroflos.models.RateRNN` and LIF
    :class:`~surroflos.models.SpikingRNN`; RFLO (Murray 2019) is ``EProp(rate_net, feedback="random")``.

    Updates ``weight_rec``, ``weight_in`` and ``bias`` with eligibility traces times learning signals and
    the readout with its exact gradient (see the module docstring for the equations).

    Args:
        model: a ``RateRNN`` or a ``SpikingRNN`` with ``neuron="lif"`` (linear or leaky readout). Other
            trainable parameters (``learn_beta``, ...) are rejected: e-prop does not define their update.
        feedback: ``"symmetric"`` (``B = W_out^T``, the current readout weights), ``"random"`` (a fixed
            ``B ~ N(0, 1/N)`` ``[N, n_out]``, drawn from ``generator``) or a tensor ``[N, n_out]``.
        generator: seeds the random feedback matrix.
        implementation: ``"online"`` (eligibility traces, memory independent of T) or ``"autograd"``
            (truncated BPTT through the local state); both give the same update.
        name: the rule's name (``"eprop"``; :func:`make_rule` uses ``"rflo"`` for RFLO).
    """

    def __init__(self, model: nn.Module, *, feedback: Feedback = "symmetric",
                 generator: Optional[torch.Generator] = None, implementation: str = "online",
                 name: str = "eprop") -> None:
        if isinstance(model, RateRNN):
            self.kind = "rate"
        elif isinstance(model, SpikingRNN):
            if model.neuron != "lif":
                raise ValueError(f"e-prop is implemented for LIF spiking networks, got neuron={model.neuron!r}; "
                                 "use neuron='lif' or BPTT")
            self.kind = "lif"
        else:
            raise TypeError(f"e-prop supports RateRNN and SpikingRNN(neuron='lif'), got {type(model).__name__}")
        if model.n_out < 1:
            raise ValueError("e-prop needs a readout (n_out >= 1): the learning signal is the output error")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        extra = [n for n, p in model.named_parameters() if p.requires_grad and n not in _NETWORK + _READOUT]
        if extra:
            raise ValueError(f"e-prop updates {list(_NETWORK + _READOUT)} only, but {extra} are trainable; "
                             "freeze them (requires_grad_(False)) or use BPTT")
        self.model, self.name, self.implementation = model, name, implementation
        w = model.readout_layer.weight
        N, n_out = model.n_hidden, model.n_out
        if isinstance(feedback, torch.Tensor):
            if feedback.shape != (N, n_out):
                raise ValueError(f"a feedback matrix must have shape [N, n_out] = [{N}, {n_out}], "
                                 f"got {tuple(feedback.shape)}")
            if not feedback.is_floating_point() or not bool(torch.isfinite(feedback).all()):
                raise ValueError("the feedback matrix must be floating point and finite")
            self.feedback = "random"
            self._B: Optional[torch.Tensor] = feedback.detach().to(device=w.device, dtype=w.dtype).clone()
        elif feedback == "symmetric":
            self.feedback, self._B = "symmetric", None
        elif feedback == "random":
            self.feedback = "random"
            self._B = (randn(N, n_out, generator=generator, dtype=w.dtype) / math.sqrt(N)).to(w.device)
        else:
            raise ValueError(f"feedback must be one of {FEEDBACKS} or a tensor [N, n_out], got {feedback!r}")

    # -- pieces ---------------------------------------------------------------------------------------------

    @property
    def feedback_matrix(self) -> torch.Tensor:
        """``B: [N, n_out]``: ``W_out^T`` (symmetric, detached) or the fixed random matrix."""
        w = self.model.readout_layer.weight
        if self._B is None:
            return w.detach().T
        if self._B.device != w.device or self._B.dtype != w.dtype:  # the model was moved after construction
            self._B = self._B.to(device=w.device, dtype=w.dtype)
        return self._B

    def _kappa(self) -> Optional[float]:
        """Decay of a leaky readout, None for a linear one."""
        if self.kind == "lif" and self.model.readout_kind == "leaky":
            return float(self.model.readout_beta)
        return None

    def _uniform_decay(self, p) -> bool:
        """True when ``D_j[t]`` is one number for all neurons (the traces then factorise over j)."""
        if self.kind == "rate":
            return True
        return p.reset == "subtract" and p.detach_reset and p.beta.numel() == 1

    def _activity(self, state: torch.Tensor, p) -> torch.Tensor:
        """What neuron i sends to the others at the next step: ``phi(h_i)`` or ``S_i``."""
        if self.kind == "rate":
            return _phi(state, p.nonlinearity)
        return _fire(state - p.threshold, p)

    def _local_decay(self, state: torch.Tensor, p, spikes: torch.Tensor):
        """``(D[t], c)``: ``dh_j[t]/dh_j[t-1]`` with the recurrent input fixed, and the input gain c.

        ``state`` is ``h[t-1]`` and ``spikes`` its activity (LIF: the spikes that reset at step t).
        ``D`` is a float, a 0-dim tensor or ``[B, N]``; the explicit derivative of ``h_j[t]`` in a weight
        from i is ``c * (presynaptic value)``.
        """
        if self.kind == "rate":
            return (0.0 if p.dt == 1.0 else 1.0 - p.dt), p.dt
        if self._uniform_decay(p):
            return p.beta, 1.0  # 0-dim: broadcasts over the factorised traces
        v = state - p.threshold
        if p.reset == "subtract":
            D = p.beta if p.detach_reset else p.beta - p.threshold * p.surrogate.derivative(v)
        else:
            D = p.beta * (1.0 - spikes)
            if not p.detach_reset:
                D = D - p.beta * state * p.surrogate.derivative(v)
        return D.expand(state.shape), 1.0

    def _pseudo_derivative(self, state: torch.Tensor, p) -> torch.Tensor:
        """``dr_j[t]/dh_j[t]``: ``phi'(h)`` or the surrogate derivative ``sigma'(U - theta)``."""
        if self.kind == "rate":
            return _dphi(state, p.nonlinearity)
        return p.surrogate.derivative(state - p.threshold)

    def _check(self, x, mask, state0) -> None:
        check_inputs(x, self.model.n_in)
        check_state_and_model(self.model, x, state0)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != x.shape[:2]:
            raise ValueError(f"mask must be a bool tensor [T, B] = {list(x.shape[:2])}, got "
                             f"{getattr(mask, 'dtype', type(mask).__name__)} {list(getattr(mask, 'shape', []))}")
        if not bool(mask.any()):
            raise ValueError("mask selects no step: there is no error to learn from")

    # -- (b) truncated autograd -----------------------------------------------------------------------------

    def _truncated_step(self, x: torch.Tensor, state: torch.Tensor, p):
        """The model's step with the recurrent activity detached where it enters the recurrent weights.

        Same floating-point operations in the same order as ``rate_step`` / ``lif_step`` (the forward
        values are identical); only the graph differs.
        """
        if self.kind == "rate":
            r_prev = _phi(state, p.nonlinearity).detach()
            drive = r_prev @ p.weight_rec.T + x @ p.weight_in.T + p.bias
            h_new = drive if p.dt == 1.0 else (1.0 - p.dt) * state + p.dt * drive
            return _phi(h_new, p.nonlinearity), h_new
        spk_prev = _fire(state - p.threshold, p)
        R = spk_prev.detach() if p.detach_reset else spk_prev  # the neuron's own reset is local
        current = x @ p.weight_in.T + spk_prev.detach() @ p.weight_rec.T + p.bias
        if p.reset == "subtract":
            U_new = p.beta * state + current - R * p.threshold
        else:
            U_new = p.beta * (1.0 - R) * state + current
        return _fire(U_new - p.threshold, p), U_new

    def _readout(self, activity: torch.Tensor) -> torch.Tensor:
        """The model's readout of ``activity [T, B, N]``, with the feedback matrix in its backward."""
        lin = self.model.readout_layer
        drive = _FeedbackLinear.apply(activity, lin.weight, lin.bias, self.feedback_matrix)
        kappa = self._kappa()
        if kappa is None:
            return drive
        y, out = torch.zeros_like(drive[0]), []
        for t in range(drive.shape[0]):
            y = kappa * y + drive[t]
            out.append(y)
        return torch.stack(out)

    def truncated_rollout(self, x: torch.Tensor, state0: Optional[torch.Tensor] = None) -> Rollout:
        """Forward pass whose autograd graph is the e-prop one: ``backward`` of a loss on ``.outputs``
        gives the e-prop update (implementation (b)). Values equal ``model.rollout(x, state0)``."""
        check_inputs(x, self.model.n_in)
        check_state_and_model(self.model, x, state0)
        m = self.model
        state = m.initial_state(x.shape[1], device=x.device, dtype=x.dtype) if state0 is None else state0
        p = m.params()
        states, acts = [], []
        for t in range(x.shape[0]):
            a, state = self._truncated_step(x[t], state, p)
            states.append(state)
            acts.append(a)
        act = torch.stack(acts)
        return Rollout(self._readout(act), torch.stack(states), act)

    def _autograd(self, x, y, mask, task, state0):
        out = self.truncated_rollout(x, state0).outputs
        loss = task.loss(out, y, mask)
        named = self.named_parameters()
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        return loss.detach(), {n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(named, grads)}

    # -- (a) online eligibility traces ----------------------------------------------------------------------

    def online_state_bytes(self, batch: int) -> int:
        """Bytes the online implementation keeps while it runs (traces + accumulators), for any T.

        Eligibility vectors ``[batch, 1 or N, N + n_in + 1]`` (plus their kappa-filtered copy ``[batch, N,
        N + n_in + 1]`` with a leaky readout), accumulators of the parameters' size, state, activity and
        outputs. Temporaries of one step come on top (about as much again).
        """
        m = self.model
        N, n_in, n_out = m.n_hidden, m.n_in, m.n_out
        rows = 1 if self._uniform_decay(m.params()) else N
        P = N + n_in + 1
        n = batch * rows * P + N * P + n_out * (N + 1)
        if self._kappa() is not None:
            n += batch * N * P + batch * N
        n += batch * (3 * N + n_out)
        return n * m.readout_layer.weight.element_size()

    @torch.no_grad()
    def _online(self, x, y, mask, task, state0):
        m = self.model
        T, batch = x.shape[0], x.shape[1]
        N, n_in = m.n_hidden, m.n_in
        p = m.params()
        state = m.initial_state(batch, device=x.device, dtype=x.dtype) if state0 is None else state0
        lin = m.readout_layer
        B = self.feedback_matrix
        kappa = self._kappa()
        rows = 1 if self._uniform_decay(p) else N
        # One eligibility vector per presynaptic source, side by side: [recurrent activity | input | 1 (bias)].
        P = N + n_in + 1
        eps = x.new_zeros(batch, rows, P)
        ebar = x.new_zeros(batch, N, P) if kappa is not None else None  # kappa-filtered e_ji (leaky readout)
        acc = x.new_zeros(N, P)
        acc_w, acc_b = torch.zeros_like(lin.weight), torch.zeros_like(lin.bias)
        ones = x.new_ones(batch, 1)
        total = mask.sum()
        loss = x.new_zeros(())
        y_hat = x.new_zeros(batch, m.n_out)
        r_bar, c_bar = x.new_zeros(batch, N), 0.0
        act_prev = self._activity(state, p)  # afterwards: the activity the step before returned
        for t in range(T):
            D, c = self._local_decay(state, p, act_prev)
            act, state = m.step_function(x[t], state, p)  # the model's own forward step
            psi = self._pseudo_derivative(state, p)
            pre = torch.cat([act_prev, x[t], ones], dim=-1)
            # eps[t] = D[t] eps[t-1] + c * presynaptic value
            eps = (D.unsqueeze(-1) if isinstance(D, torch.Tensor) and D.ndim == 2 else D) * eps + c * pre.unsqueeze(1)
            act_prev = act
            drive = F.linear(act, lin.weight, lin.bias)
            if kappa is None:
                y_hat = drive
            else:
                y_hat = kappa * y_hat + drive
                r_bar = kappa * r_bar + act
                c_bar = kappa * c_bar + 1.0
                ebar = kappa * ebar + psi.unsqueeze(-1) * eps
            step_loss, g = _step_loss_grad(task, y_hat, y[t], mask[t], total)
            if g is None:
                continue
            loss += step_loss
            L = g @ B.T  # learning signal [batch, N]
            acc_w += g.T @ (act if kappa is None else r_bar)
            acc_b += g.sum(0) * (1.0 if kappa is None else c_bar)
            if kappa is not None:
                acc += torch.einsum("bj,bjp->jp", L, ebar)
            elif rows == 1:
                acc += (L * psi).T @ eps[:, 0, :]
            else:
                acc += torch.einsum("bj,bjp->jp", L * psi, eps)
        grads = {"weight_rec": acc[:, :N], "weight_in": acc[:, N:N + n_in], "bias": acc[:, N + n_in],
                 "readout_layer.weight": acc_w, "readout_layer.bias": acc_b}
        return loss, {name: grads[name].contiguous() for name, _ in self.named_parameters()}

    # -- public ---------------------------------------------------------------------------------------------

    def gradients(self, x, y, mask, task, *, state0=None, implementation: Optional[str] = None):
        """``(loss, {name: e-prop update})`` for one batch (``implementation`` overrides the default)."""
        impl = self.implementation if implementation is None else implementation
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {impl!r}")
        self._check(x, mask, state0)
        if impl == "online":
            return self._online(x, y, mask, task, state0)
        return self._autograd(x, y, mask, task, state0)

    def __repr__(self) -> str:
        return (f"EProp(name={self.name!r}, model={self.kind}, feedback={self.feedback!r}, "
                f"implementation={self.implementation!r})")


def _step_loss_grad(task, y_hat: torch.Tensor, target: torch.Tensor, mask_t: torch.Tensor, total: torch.Tensor):
    """Step t's share of the masked-mean loss and its gradient ``dE/dy[t]`` (``None`` if t is unmasked)."""
    n = mask_t.sum()
    if not bool(n):
        return None, None
    if isinstance(task, Task) and type(task).loss is Task.loss:
        # Closed forms of Task.loss (masked MSE / cross-entropy, means over all masked entries).
        w = mask_t.to(y_hat.dtype).unsqueeze(-1)
        if task.kind == "regression":
            z = total.to(y_hat.dtype) * y_hat.shape[-1]
            diff = (y_hat - target.to(y_hat.dtype)) * w
            return (diff * diff).sum() / z, 2.0 * diff / z
        z = total.to(y_hat.dtype)
        logp = torch.log_softmax(y_hat, dim=-1)
        idx = torch.where(mask_t, target, torch.zeros_like(target)).unsqueeze(-1)  # unmasked labels may be invalid
        loss_t = -(logp.gather(-1, idx) * w).sum() / z
        g = logp.exp().scatter_add(-1, idx, -torch.ones_like(logp[..., :1]))
        return loss_t, g * w / z
    # Any other loss: differentiate it on step t alone and reweight to the share of masked entries.
    out = y_hat.detach().unsqueeze(0).requires_grad_(True)
    with torch.enable_grad():
        loss_t = task.loss(out, target.unsqueeze(0), mask_t.unsqueeze(0))
        (g,) = torch.autograd.grad(loss_t, out)
    w = n.to(y_hat.dtype) / total.to(y_hat.dtype)  # in the outputs' precision (int / int is float32)
    return loss_t.detach() * w, g[0] * w


class MemberRules(LearningRule):
    """A local learning rule for each member of an ensemble (:mod:`surroflos.ensemble`), applied member by
    member: e-prop and RFLO keep per-network eligibility traces and feedback, so each member runs its own
    solo rule on its own slice of the batch, and the gradients are stacked on the member axis. (BPTT needs
    no such wrapper: an ensemble's loss summed over members backpropagates member by member.)

    Args:
        model: the ensemble.
        make: ``make(solo_model, e) -> LearningRule``, the rule member ``e`` would have on its own (e.g. with
            the feedback matrix its solo run draws).
    """

    def __init__(self, model: nn.Module, make: Callable[[nn.Module, int], LearningRule]) -> None:
        from .ensemble import member

        E = getattr(model, "ensemble", None)
        if E is None:
            raise ValueError(f"MemberRules is for ensembles; {type(model).__name__} is a solo network")
        self.model = model
        self.members = [member(model, e) for e in range(E)]
        self.rules = [make(m, e) for e, m in enumerate(self.members)]
        self.name = self.rules[0].name

    def gradients(self, x, y, mask, task, *, state0=None):
        losses, grads = [], {}
        ensemble_params = dict(self.model.named_parameters())
        for e, (solo, rule) in enumerate(zip(self.members, self.rules)):
            with torch.no_grad():  # the member's current weights
                for n, p in solo.named_parameters():
                    p.copy_(ensemble_params[n][e])
            loss, g = rule.gradients(x[:, e], y[:, e], mask[:, e], task, state0=None if state0 is None else state0[e])
            losses.append(loss)
            for n, v in g.items():
                grads.setdefault(n, []).append(v)
        return torch.stack(losses), {n: torch.stack(v) for n, v in grads.items()}

    def __repr__(self) -> str:
        return f"MemberRules({self.rules[0]!r} x {len(self.rules)})"


def make_rule(name: str, model: nn.Module, *, generator: Optional[torch.Generator] = None,
              feedback: Optional[Feedback] = None, implementation: str = "online") -> LearningRule:
    """The learning rule ``name`` in :data:`RULES` for ``model``.

    ``"bptt"``: exact gradients; ``"eprop"``: symmetric e-prop (``feedback="random"`` for random
    e-prop), rate or LIF networks; ``"rflo"``: random-feedback local online learning, e-prop with a
    fixed random feedback matrix (seeded by ``generator``) on a rate network.
    """
    if name not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {name!r}")
    if name == "bptt":
        if feedback is not None:
            raise ValueError("BPTT has no feedback matrix; feedback applies to 'eprop' and 'rflo'")
        return BPTT(model)
    if name == "rflo":
        if not isinstance(model, RateRNN):
            raise ValueError(f"RFLO (Murray 2019) is defined for rate networks, got {type(model).__name__}; "
                             "use 'eprop' for LIF networks")
        if isinstance(feedback, str) and feedback != "random":
            raise ValueError(f"RFLO uses random feedback (or a given matrix), got feedback={feedback!r}")
        return EProp(model, feedback="random" if feedback is None else feedback, generator=generator,
                     implementation=implementation, name="rflo")
    return EProp(model, feedback="symmetric" if feedback is None else feedback, generator=generator,
                 implementation=implementation)
