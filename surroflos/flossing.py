"""Gradient flossing: push the leading Lyapunov exponents towards a target by gradient descent.

``L_floss = sum_{i<=k} (lambda_i - target)^2``, backpropagated through the QR chain of
:func:`surroflos.lyapunov_spectrum`. Keeping the first k exponents near zero keeps k directions of
the error gradient from exploding or vanishing over long horizons (Engelken & Abbott).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence, Union

import torch

from ._random import randn
from .kernels.backend import check_backend
from .lyapunov import QR_METHODS, lyapunov_spectrum
from .ensemble import MemberUpdates, check_generators
from .models.layered import as_model

__all__ = ["flossing_loss", "floss", "FlossingHistory", "FlossingSchedule"]

Target = Union[float, Sequence[float], torch.Tensor]
InputSource = Union[None, torch.Tensor, Callable[[int, torch.Generator], torch.Tensor]]


def flossing_loss(exponents: torch.Tensor, target: Target = 0.0) -> torch.Tensor:
    """Sum over the k exponents of ``(lambda_i - target_i)^2``, averaged over trajectories.

    Args:
        exponents: ``[B, k]`` (or ``[k]`` for a single spectrum); ``[E, B, k]`` for an ensemble gives one
            loss per member, ``[E]`` (their sum has each member's own gradient).
        target: a scalar or one value per exponent (``[k]``), finite; for an ensemble also one per member
            (``[E, 1]``) or per member and exponent (``[E, k]``).

    Raises:
        ValueError: ``exponents`` is empty or holds NaN/inf (a diverged estimate would otherwise give a
            NaN loss, or an empty one a silent 0), or ``target`` has the wrong shape or is not finite.
    """
    if not isinstance(exponents, torch.Tensor) or exponents.ndim not in (1, 2, 3):
        raise ValueError(f"exponents must be a tensor [B, k], [k] or [E, B, k], got "
                         f"{getattr(exponents, 'shape', exponents)!r}")
    if exponents.numel() == 0:
        raise ValueError(f"exponents is empty (shape {tuple(exponents.shape)}); flossing needs k >= 1 exponents "
                         "of at least one trajectory")
    lam = exponents if exponents.ndim >= 2 else exponents.unsqueeze(0)
    members = lam.shape[0] if lam.ndim == 3 else None
    tgt = _check_target(target, lam.shape[-1], members).to(dtype=lam.dtype, device=lam.device)
    if tgt.ndim == 2:  # per member: [E, k] against [E, B, k]
        tgt = tgt.unsqueeze(-2)
    # One host sync per loss; skipped under torch.compile, where it would break the graph.
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(lam.detach()).all()):
        raise ValueError("exponents contain NaN or inf (the spectrum estimate diverged); lower the learning "
                         "rate or the gain, or clip gradients")
    return ((lam - tgt) ** 2).sum(dim=-1).mean(dim=-1)


def _check_target(target: Target, k: int, members: Optional[int] = None) -> torch.Tensor:
    """``target`` as a tensor, after checking its shape against ``k`` exponents (and ``members`` for an
    ensemble) and that it is finite."""
    tgt = torch.as_tensor(target.detach() if isinstance(target, torch.Tensor) else target, dtype=torch.float64)
    per_member = members is not None and tgt.ndim == 2 and tgt.shape[0] == members and tgt.shape[1] in (1, k)
    if not per_member and (tgt.ndim > 1 or (tgt.ndim == 1 and tgt.shape[0] != k)):
        raise ValueError(f"target must be a scalar or have one value per exponent ({k})"
                         + (f" or per member [E={members}, 1 or k]" if members is not None else "")
                         + f", got shape {tuple(tgt.shape)}")
    if not bool(torch.isfinite(tgt).all()):
        raise ValueError(f"target must be finite, got {target!r} (a NaN target makes every flossing loss NaN)")
    return target if isinstance(target, torch.Tensor) else tgt  # numbers in float64: exact before the cast


@dataclass
class FlossingHistory:
    """What :func:`floss` did: per step the batch-mean exponents ``[steps, k]`` and the loss ``[steps]``
    (an ensemble: ``[steps, E, k]`` and ``[steps, E]``, NaN for a member after it diverged).

    ``stopped`` (ensembles): ``{member: "reason"}`` for members that diverged and were frozen; the others
    went on.
    """

    exponents: torch.Tensor
    loss: torch.Tensor
    target: Target = 0.0
    extra: dict = field(default_factory=dict)
    stopped: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.loss.shape[0])


@dataclass(frozen=True)
class FlossingSchedule:
    """When to floss inside a training loop.

    ``pre_steps`` flossing steps before training (preflossing); then, during training, a bout of
    ``steps`` flossing steps at epochs ``every, 2 every, ...``, at most ``times`` bouts. Stateless, so a
    resumed run asks the same questions and gets the same answers.
    """

    pre_steps: int = 0
    every: int = 0
    steps: int = 0
    times: int = 0

    def __post_init__(self) -> None:
        for name in ("pre_steps", "every", "steps", "times"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"FlossingSchedule.{name} must be a non-negative int, got {v!r}")
        if self.times > 0 and (self.every == 0 or self.steps == 0):
            raise ValueError("FlossingSchedule: flossing during training needs every > 0 and steps > 0")

    def due(self, epoch: int) -> bool:
        """True when a flossing bout runs before training epoch ``epoch`` (0-based)."""
        return self.times > 0 and epoch > 0 and epoch % self.every == 0 and epoch // self.every <= self.times

    @property
    def bout_epochs(self) -> list[int]:
        """The epochs at which flossing bouts run during training."""
        return [self.every * i for i in range(1, self.times + 1)] if self.times else []


def _member_inputs(draw, members: Optional[int]):
    """For an ensemble, ``draw(i, g)`` per member with its own generator, stacked as ``[T, E, B, n_in]``."""
    if members is None:
        return draw

    def draw_all(i: int, gens: list) -> torch.Tensor:
        return torch.stack([draw(i, g) for g in gens], dim=1)

    return draw_all


def _input_source(inputs: InputSource, T: int, batch: int, n_in: int, input_std: float, like: torch.Tensor):
    if inputs is None:
        def draw(i: int, g: torch.Generator) -> torch.Tensor:
            return input_std * randn(T, batch, n_in, generator=g, dtype=like.dtype, device=like.device)
        return draw
    if isinstance(inputs, torch.Tensor):
        return lambda i, g: inputs
    if callable(inputs):
        return inputs
    raise TypeError("inputs must be None, a tensor [T, B, n_in] or a callable (step, generator) -> tensor")


def floss(model, steps: int, *, k: int, T: int = 100, batch: int = 16, lr: Union[float, Sequence[float]] = 1e-3,
          target: Target = 0.0,
          params: Optional[Iterable[torch.nn.Parameter]] = None, inputs: InputSource = None,
          local: bool = False, callback: Optional[Callable[[int, torch.Tensor, float], Optional[bool]]] = None,
          qr_every: int = 1, transient: Optional[int] = None, frame_warmup: Optional[int] = None,
          input_std: float = 1.0, max_grad_norm: Optional[float] = None,
          generator: Optional[torch.Generator] = None, progress: bool = True, backend: str = "auto",
          qr: str = "auto") -> FlossingHistory:
    """Preflossing: ``steps`` Adam updates of ``params`` on ``flossing_loss(lyapunov exponents, target)``.

    Args:
        model: a surroflos model; updated in place.
        steps: number of flossing updates.
        k: number of exponents flossed.
        T: length of each estimate in steps, including ``transient`` (default ``T // 4``) and
            ``frame_warmup`` (default ``T // 4``).
        batch: trajectories per estimate.
        lr: Adam learning rate; for an ensemble also one per member (a list of E: member e flosses as a
            solo run with ``lr[e]``, see :class:`surroflos.ensemble.MemberUpdates`).
        target: scalar or per-exponent target (0 = the edge of chaos).
        params: parameters to update; default ``model.flossing_parameters()`` (recurrent, input
            weights and bias, not the readout).
        inputs: ``None`` draws fresh ``N(0, input_std^2)`` inputs ``[T, batch, n_in]`` every step; a
            tensor is reused; a callable ``(step, generator) -> [T, B, n_in]`` (e.g. task samples). For an
            ensemble a tensor is ``[T, E, B, n_in]``, and draws are made per member with its generator.
        local: detach the recurrent state so updates use local information only (seed 003).
        callback: ``callback(step, exponents [k], loss)`` after each update; return True to stop early.
        max_grad_norm: clip the flossing gradient norm (per member for an ensemble).
        generator: seeds inputs, initial states and frames (reproducible runs). For an ensemble
            (:mod:`surroflos.ensemble`) a list of E generators makes member e floss exactly as a solo run with
            the e-th generator; a member that diverges is frozen and reported (``history.stopped``) while
            the others go on.
        progress: show a progress bar.
        backend, qr: passed to :func:`surroflos.lyapunov_spectrum` (``"auto"``: the fused Triton
            tangent maps and CholeskyQR2 for CUDA tensors, PyTorch and Householder otherwise).

    Returns:
        :class:`FlossingHistory` with the batch-mean exponents ``[steps, k]`` before each update.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    lrs = list(lr) if isinstance(lr, (list, tuple)) else None  # one per member of an ensemble
    for v in [lr] if lrs is None else lrs:
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
            raise ValueError(f"lr must be a positive number (or one per member of an ensemble), got {lr!r}")
    if isinstance(T, bool) or not isinstance(T, int) or T < 2:
        raise ValueError(f"T must be an int >= 2, got {T!r}")
    check_backend(backend)
    if qr not in QR_METHODS:
        raise ValueError(f"qr must be one of {QR_METHODS}, got {qr!r}")
    model = as_model(model)
    members = getattr(model, "ensemble", None)
    _check_target(target, k, members)
    if lrs is not None and (members is None or len(lrs) != members):
        raise ValueError(f"lr: a list of learning rates is for an ensemble, one per member"
                         + ("" if members is None else f" ({members})") + f"; got {len(lrs)}")
    transient = T // 4 if transient is None else transient
    frame_warmup = T // 4 if frame_warmup is None else frame_warmup
    plist = list(model.flossing_parameters() if params is None else params)
    if not plist:
        raise ValueError("no parameters to floss (all frozen?)")
    like = plist[0]
    opt = torch.optim.Adam(plist, lr=lr if lrs is None else lrs[0])
    draw = _input_source(inputs, T, batch, model.n_in, input_std, like)
    new_generator = lambda: torch.Generator(device="cpu").manual_seed(int(torch.randint(0, 2**62, (1,)).item()))  # noqa: E731
    if members is None:
        g = generator if generator is not None else new_generator()
        guard = None
    else:
        g = check_generators(generator, members) or [generator or new_generator() for _ in range(members)]
        draw = draw if isinstance(inputs, torch.Tensor) else _member_inputs(draw, members)
        guard = MemberUpdates(plist, members, lr_scale=None if lrs is None else [v / lrs[0] for v in lrs])
    exps, losses = [], []
    bar = _progress(steps, progress, "flossing")
    for i in range(steps):
        x = draw(i, g)
        res = lyapunov_spectrum(model, x, k, qr_every=qr_every, transient=transient, frame_warmup=frame_warmup,
                                generator=g, detach_state=local, backend=backend, qr=qr)
        opt.zero_grad(set_to_none=True)
        if guard is None:
            loss = flossing_loss(res.exponents, target)
            loss.backward()
            if max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(plist, max_grad_norm)
            opt.step()
            mean = res.exponents.detach().mean(0)
            loss_value: Union[float, torch.Tensor] = float(loss.detach())
        else:
            for e in res.diverged.nonzero().flatten().tolist():
                guard.stop(e, f"the flossing spectrum diverged at flossing step {i}")
            active = guard.active
            # Only the members still going enter the loss: a diverged one has NaN exponents.
            per_member = torch.full((members,), float("nan"), dtype=res.exponents.dtype)
            if bool(active.any()):
                tgt = torch.as_tensor(target, dtype=res.exponents.dtype)
                tgt = tgt[active] if tgt.ndim == 2 else tgt
                member_loss = flossing_loss(res.exponents[active.to(res.exponents.device)], tgt)
                member_loss.sum().backward()
                per_member[active] = member_loss.detach().cpu()
            guard.step_(opt, max_grad_norm)  # per-member clipping, learning rates and stopping
            mean = res.exponents.detach().mean(-2)
            loss_value = per_member
        exps.append(mean)
        losses.append(loss_value)
        if bar is not None:
            bar.update(1)
            lam1 = mean[..., 0] if guard is None else mean[..., 0][guard.active.to(mean.device)]
            bar.set_postfix(lambda1=f"{float(lam1.mean()) if lam1.numel() else float('nan'):+.4f}",
                            loss=f"{float(torch.as_tensor(loss_value).nanmean()):.3g}")
        if callback is not None and callback(i, mean, loss_value):
            break
    if bar is not None:
        bar.close()
    if guard is None:
        k_out = exps[0].shape[0] if exps else k
        return FlossingHistory(torch.stack(exps) if exps else torch.empty(0, k_out),
                               torch.tensor(losses, dtype=torch.float64), target)
    return FlossingHistory(torch.stack(exps) if exps else torch.empty(0, members, k),
                           torch.stack(losses).to(torch.float64) if losses else torch.empty(0, members,
                                                                                           dtype=torch.float64),
                           target, stopped=dict(guard.reasons))


def _progress(total: int, enabled: bool, desc: str):
    if not enabled or total == 0:
        return None
    from tqdm.auto import tqdm

    # disable=None: no bar when output is not a terminal (logs, CI).
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=None)
