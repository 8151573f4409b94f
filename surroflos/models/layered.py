"""Networks assembled from layers, seen as one dynamical system.

``nn.Sequential(nn.Linear(n_in, N), RLeaky(...), nn.Linear(N, n_out))`` (snnTorch drop-ins from
:mod:`surroflos.snntorch`, Norse drop-ins from :mod:`surroflos.norse`, or any layer with the same
interface) is a recurrent network whose state is the recurrent layer's flat state. The layer provides
its pure one-step map and its surrogate tangent map:

- ``layer.step_function(u, state, p) -> (out, new_state)`` with ``u`` the layer's input at that step,
- ``layer.tangent_function(u, state, p, Q) -> D Q`` (optional; forward-mode AD otherwise),
- ``layer.params()`` (or ``layer.flat_params()``) and ``layer.state_dim``.

:class:`LayeredNetwork` wraps such a stack into the model protocol of :mod:`surroflos.models.base`:
the layers before the recurrent one map ``x[t]`` to ``u[t]`` (they do not depend on the state, so the
tangent map is the layer's own), the layers after it read out the activity. :func:`as_model` does this
on the fly, so ``lyapunov_spectrum(seq, x, k)`` and ``floss(seq, ...)`` work on the stack directly.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
from torch import nn

from .._random import rand
from .base import RecurrentModel, jvp_tangent

__all__ = ["LayeredNetwork", "as_model", "is_recurrent_layer"]

_PROTOCOL = ("step_function", "params", "initial_state", "state_dim", "n_in", "dt")


def _layer_params(module: nn.Module):
    """The bundle the layer's pure functions read: ``flat_params()`` (Norse drop-ins) or ``params()``."""
    for name in ("flat_params", "params"):
        fn = getattr(module, name, None)
        if callable(fn):
            return fn
    return None


def is_recurrent_layer(module: nn.Module) -> bool:
    """True for a layer with a flat one-step map: ``step_function``, ``state_dim`` and ``params()``
    (or ``flat_params()``)."""
    return (hasattr(type(module), "step_function") and hasattr(type(module), "state_dim")
            and _layer_params(module) is not None and not isinstance(module, RecurrentModel))


class LayeredParams(NamedTuple):
    layer: Any  # the recurrent layer's own params()
    encoder: nn.Module  # the layers before it (x -> u)
    step: Any  # the layer's pure step function
    tangent: Any  # the layer's pure tangent function or None


def _layered_step(x: torch.Tensor, state: torch.Tensor, p: LayeredParams):
    return p.step(p.encoder(x), state, p.layer)


def _layered_tangent(x: torch.Tensor, state: torch.Tensor, p: LayeredParams, Q: torch.Tensor) -> torch.Tensor:
    u = p.encoder(x)
    if p.tangent is None:
        return jvp_tangent(p.step, u, state, p.layer, Q)
    return p.tangent(u, state, p.layer, Q)


def _in_features(modules) -> Optional[int]:
    for m in modules:
        n = getattr(m, "in_features", None) or getattr(m, "input_size", None)
        if isinstance(n, int):
            return n
    return None


class LayeredNetwork(RecurrentModel):
    """A stack ``encoder -> recurrent layer -> readout`` as a surroflos model.

    Args:
        net: an ``nn.Sequential`` with exactly one recurrent layer (see :func:`is_recurrent_layer`).
        dt: time per step (the unit of the exponents); default the layer's ``dt`` attribute if it has
            one (Norse cells) else 1.
        n_in: input size; inferred from the first layer with ``in_features``/``input_size``.

    The wrapped modules are shared, not copied: flossing the wrapper updates ``net``.
    """

    step_function = staticmethod(_layered_step)
    tangent_function = staticmethod(_layered_tangent)

    def __init__(self, net: nn.Sequential, *, dt: Optional[float] = None, n_in: Optional[int] = None) -> None:
        super().__init__()
        if not isinstance(net, nn.Sequential):
            raise TypeError(f"expected an nn.Sequential of layers, got {type(net).__name__}")
        idx = [i for i, m in enumerate(net) if is_recurrent_layer(m)]
        if len(idx) != 1:
            raise ValueError(f"the stack must contain exactly one recurrent layer with a flat step map "
                             f"(step_function/params/state_dim), found {len(idx)}: "
                             f"{[type(net[i]).__name__ for i in idx]}")
        i = idx[0]
        self.net = net
        self.encoder = nn.Sequential(*list(net)[:i])
        self.layer = net[i]
        self.decoder = nn.Sequential(*list(net)[i + 1:])
        n_in = n_in if n_in is not None else _in_features(list(net)[: i + 1])
        if n_in is None:
            raise ValueError("cannot infer n_in from the stack; pass n_in=...")
        self.n_in = int(n_in)
        layer_dt = getattr(self.layer, "dt", None)
        if dt is None:
            dt = float(layer_dt) if isinstance(layer_dt, (int, float)) else 1.0
        self.dt = float(dt)
        self._state_dim = int(self.layer.state_dim)
        self.n_hidden = self._state_dim

    @property
    def state_dim(self) -> int:
        return self._state_dim

    def params(self) -> LayeredParams:
        tangent = getattr(self.layer, "tangent_function", None)
        return LayeredParams(_layer_params(self.layer)(), self.encoder, self.layer.step_function, tangent)

    def _factory(self) -> dict:
        for t in list(self.parameters()) + list(self.buffers()):
            if t.is_floating_point():
                return {"device": t.device, "dtype": t.dtype}
        return {"device": torch.device("cpu"), "dtype": torch.get_default_dtype()}

    def initial_state(self, batch: int, *, random: bool = False, generator: torch.Generator | None = None,
                      device=None, dtype=None) -> torch.Tensor:
        """Zeros, or (``random=True``) uniform [0, 1) entries: a generic start below a unit threshold.

        The layers' own ``initial_state`` methods have library-specific signatures and are not used.
        """
        f = self._factory()
        device, dtype = device or f["device"], dtype or f["dtype"]
        if not random:
            return torch.zeros(batch, self.state_dim, device=device, dtype=dtype)
        return rand(batch, self.state_dim, generator=generator, dtype=dtype, device=device)

    def readout(self, activity: torch.Tensor) -> torch.Tensor:
        return self.decoder(activity)

    def flossing_parameters(self) -> list[nn.Parameter]:
        """The encoder's and the recurrent layer's trainable parameters (not the readout)."""
        return [p for p in list(self.encoder.parameters()) + list(self.layer.parameters()) if p.requires_grad]


def as_model(model: Any) -> Any:
    """``model`` itself if it follows the model protocol, a :class:`LayeredNetwork` for a layer stack."""
    if all(hasattr(model, a) for a in _PROTOCOL):
        return model
    if isinstance(model, nn.Sequential):
        return LayeredNetwork(model)
    missing = [a for a in _PROTOCOL if not hasattr(model, a)]
    raise TypeError(f"{type(model).__name__} is not a surroflos dynamical model: it lacks {missing} "
                    "(see surroflos.models.base), and it is not an nn.Sequential of layers with one "
                    "recurrent layer (see surroflos.models.layered)")
