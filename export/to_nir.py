"""Export surroflos networks to NIR (the Neuromorphic Intermediate Representation).

:func:`to_nir` turns a :class:`~surroflos.SpikingRNN`, a :class:`~surroflos.BalancedNetwork` or an
``nn.Sequential`` of ``nn.Linear`` and spiking layers (snnTorch's ``Leaky``, ``Synaptic``, ``RLeaky``,
``RSynaptic`` and Norse's ``LIFCell``/``LIF``, ``LIFRecurrentCell``/``LIFRecurrent``, ``LIFBoxCell``/``LIFBox``,
the surroflos drop-ins included) into a ``nir.NIRGraph``; :func:`write` saves it atomically.

Signal convention (shared with snnTorch's exporter and :mod:`surroflos.export.reference`): every edge carries
one value per step ``dt``, held for the step; a spike is the value 1 during one step. NIR stores no ``dt``: the
time constants below are only meaningful together with the ``dt`` the graph was exported for (recorded in
the graph's metadata). Recurrence is an edge cycle ``lif -> w_rec -> lif`` in the flat top-level graph (an
explicit ``Input`` node is the graph's entry); the edge leaving the spiking node carries the previous step's
spikes.

Parameter mapping (Euler: ``beta = 1 - dt/tau``, hence ``tau = dt/(1 - beta)`` and ``r = tau/dt``, as in
snnTorch's exporter; ``beta = 1`` has no finite ``tau`` and is refused):

============================== ============ ========================================================== =====
surroflos / library            NIR node     parameters                                                 exact
============================== ============ ========================================================== =====
``SpikingRNN`` lif             ``LIF``      ``tau = dt/(1-beta)``, ``r = tau/dt``, ``v_leak = 0``,     zero
                                            ``v_threshold = theta``, ``v_reset = 0``                   reset
``SpikingRNN`` cuba            ``CubaLIF``  ``tau_syn = dt/(1-alpha)``, ``w_in = tau_syn/dt``,          no
                                            ``tau_mem = dt/(1-beta)``, ``r = tau_mem/dt``, rest as lif
``W_in x + b``, ``W S``        ``Affine``   ``(W_in, b)`` into the neurons; ``Linear(W)`` recurrent      yes
readout linear / leaky         ``Affine``   ``(W_out, b_out)``; leaky: then ``LI(tau = dt/(1-beta_r),  yes
                               (+ ``LI``)   r = tau/dt, v_leak = 0)``
``BalancedNetwork`` membrane   ``LIF``      ``tau = tau_m``, ``r = 1``, ``v_leak = I_ext`` (the drive),  yes
                                            ``v_threshold = 1``, ``v_reset = 0``                       (1)
  synaptic current             ``LI``       ``tau = tau_s``, ``r = c tau_s / dt``, ``v_leak = 0``        yes
  ``J`` (``[N, K]`` sparse)    ``Linear``   dense ``[N, N]`` (NIR has no sparse weight node);
                                            the index pattern ``[N, K]`` is kept in node metadata
  ``W_in x``                   ``Linear``   straight into the membrane (``n_in = 0``: the graph input
                                            is a current ``[N]`` into the membrane)
snnTorch ``Leaky``             ``LIF``      as ``SpikingRNN`` lif                                      zero
snnTorch ``Synaptic``          ``CubaLIF``  as ``SpikingRNN`` cuba                                     (2)
snnTorch ``RLeaky``            ``LIF`` +    recurrent ``nn.Linear`` -> ``Affine``/``Linear``; one-to-one (2)
                               rec. edge    ``V`` -> ``Linear(diag(V))``
snnTorch ``RSynaptic``         ``CubaLIF``  as ``Synaptic`` plus the recurrent edge                    no
Norse ``LIFCell``/``LIF``      ``CubaLIF``  ``tau_syn = 1/tau_syn_inv``, ``w_in = tau_syn/dt``,         yes
                                            ``tau_mem = 1/tau_mem_inv``, ``r = 1``, ``v_leak``, ``v_th``,  (3)
                                            ``v_reset``
Norse ``LIFRecurrentCell``     ``Linear`` + as ``LIFCell``; ``input_weights`` -> ``Linear``,           yes
                               ``CubaLIF``  ``recurrent_weights`` -> recurrent ``Linear``              (3)
Norse ``LIFBoxCell``/``LIFBox`` ``LIF``     ``tau = 1/tau_mem_inv``, ``r = 1``, ``v_leak``, ``v_th``,     value
                                            ``v_reset``                                                reset
``nn.Linear``                  ``Affine``   ``(weight, bias)``, or ``Linear`` without bias              yes
============================== ============ ========================================================== =====

(1) In continuous time, and step by step with the reference's ``method="exact"`` (the balanced network
integrates the linear flow exactly; spikes act as impulses at the start of the next step). The drive is
``v_leak`` rather than an ``Affine`` bias because a bias would have to enter through the input edge with
``r = 1``, which is equally exact but leaves a graph without input weights (``n_in = 0``) with nothing to
carry it; ``v_leak`` needs no extra node. ``c = tau_m/tau_s`` (``synapse_norm="tau_m"``) or 1; ``tau_s = 0``
(delta synapses) is refused.
(2) Only with ``reset_mechanism="zero"`` and ``reset_delay=False``. (3) When the layer's own ``dt`` equals the
export ``dt``. Membranes start at ``v_leak`` (Norse's convention; recorded in the metadata).

Where NIR cannot express the dynamics exactly, :func:`to_nir` warns (:class:`NIRExportWarning`) with the
mismatch measured on the exported network: our model against :func:`surroflos.export.reference.simulate`
on a short random input (fraction of differing hidden spikes, first divergence step), and names the exact
alternative. The cases: the subtract reset (NIR resets to ``v_reset``; train with ``reset="zero"``);
snnTorch's delayed zero reset of ``Synaptic``/``RLeaky``/``RSynaptic`` and ``SpikingRNN`` cuba, which zeroes
the whole update on the step after a spike (NIR resets at once and keeps integrating); no reset
(``reset_mechanism="none"``); graded spikes; Norse's ``reset_subtract``; a Norse layer ``dt`` other than the
export ``dt``. Detach flags only change gradients and play no role.

Metadata: the graph's ``metadata`` holds ``generator``, ``surroflos_version``, ``dt``, ``model_class``,
``discretisation`` (``"euler"`` or ``"exact"``), ``initial_membrane`` (``"zero"`` or ``"leak"``), ``exact``
and ``surroflos``, a JSON string with everything needed to rebuild the model (constructor settings,
surrogate name and scale, the layer list, the user's ``metadata`` such as a training config, the measured
mismatch); read it back with :func:`metadata_of`. Neuron and recurrent nodes carry the model's own parameter
values (``beta``, ``alpha``, ...; the index pattern of a sparse ``J``) under ``node.metadata["surroflos"]`` so
that :func:`surroflos.export.from_nir` restores them bit for bit.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

import nir

from . import consumers as cons
from . import reference as ref

__all__ = ["to_nir", "write", "metadata_of", "fold_r", "run_model", "graph_inputs", "to_float64", "NIRExportWarning",
           "NIRImportWarning", "PROBE_STEPS", "PROBE_BATCH", "SEQUENCE_LAYERS"]

PROBE_STEPS = 50  # the random input on which an inexact export's mismatch is measured
PROBE_BATCH = 4
_GENERATOR = "surroflos"


class NIRExportWarning(UserWarning):
    """The exported graph does not reproduce the model exactly (the message gives the measured mismatch)."""


class NIRImportWarning(UserWarning):
    """:func:`surroflos.export.from_nir` had to assume something the graph does not say."""


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def _np(t: Any, dtype=None) -> np.ndarray:
    a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return a.astype(dtype) if dtype is not None else a.copy()


def _f64(t: Any, n: int, what: str) -> np.ndarray:
    """A scalar or ``[n]`` parameter as a float64 ``[n]`` array."""
    a = _np(t, np.float64)
    if a.ndim == 0 or a.size == 1:
        return np.full(n, float(a.reshape(-1)[0]))
    if a.shape != (n,):
        raise ValueError(f"{what} has shape {list(a.shape)}; expected a scalar or [{n}] (one per neuron)")
    return a


def _exact_value(t: Any) -> Any:
    """A parameter tensor as stored in node metadata: its exact values, dtype and shape (HDF5-safe)."""
    a = _np(torch.as_tensor(t))
    return a.reshape(-1)[0] if a.ndim == 0 else a  # HDF5 refuses 0-d arrays with compression; use a scalar


def _tau(decay: np.ndarray, dt: float, what: str) -> np.ndarray:
    """``dt / (1 - decay)`` for a clamped decay factor in [0, 1); decay = 1 has no finite time constant."""
    if (decay >= 1.0).any():
        raise ValueError(f"{what} = 1 (a perfect integrator) has no finite NIR time constant tau = dt/(1 - {what}); "
                         f"use {what} < 1")
    return dt / (1.0 - decay)


def _surrogate_info(s: Any) -> Optional[dict]:
    if s is None:
        return None
    return {"name": s.name, "scale": float(s.scale)}


def _version() -> str:
    try:
        import surroflos

        return str(surroflos.__version__)
    except Exception:  # pragma: no cover - partial install
        return "unknown"


def _check_dt(dt: Any) -> float:
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be a positive number of seconds per step, got {dt!r}")
    return float(dt)


def _json(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be JSON-serialisable (dicts, lists, str, numbers, bool, None): {err}") from None


class _Builder:
    """Collects nodes, edges and the facts about exactness while a model is translated."""

    def __init__(self) -> None:
        self.nodes: dict[str, nir.NIRNode] = {}
        self.edges: list[tuple[str, str]] = []
        self.inexact: list[dict] = []  # {"node": ..., "reason": ..., "alternative": ...}

    def add(self, name: str, node: nir.NIRNode, exact_params: Optional[dict] = None) -> str:
        if exact_params:
            node.metadata = {"surroflos": exact_params}
        self.nodes[name] = node
        return name

    def edge(self, a: str, b: str) -> None:
        self.edges.append((a, b))

    def flag(self, node: str, reason: str, alternative: str) -> None:
        self.inexact.append({"node": node, "reason": reason, "alternative": alternative})


def _affine(layer_weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nir.NIRNode:
    if bias is None:
        return nir.Linear(weight=_np(layer_weight))
    return nir.Affine(weight=_np(layer_weight), bias=_np(bias))


def _lif_node(beta: np.ndarray, threshold: np.ndarray, dt: float, n: int) -> nir.LIF:
    tau = _tau(beta, dt, "beta")
    return nir.LIF(tau=tau, r=tau / dt, v_leak=np.zeros(n), v_threshold=threshold, v_reset=np.zeros(n))


def _cuba_node(alpha: np.ndarray, beta: np.ndarray, threshold: np.ndarray, dt: float, n: int) -> nir.CubaLIF:
    tau_syn = _tau(alpha, dt, "alpha")
    tau_mem = _tau(beta, dt, "beta")
    return nir.CubaLIF(tau_syn=tau_syn, tau_mem=tau_mem, r=tau_mem / dt, v_leak=np.zeros(n),
                       v_threshold=threshold, v_reset=np.zeros(n), w_in=tau_syn / dt)


# ----------------------------------------------------------------------------------------------
# SpikingRNN
# ----------------------------------------------------------------------------------------------


def _export_spiking_rnn(model, dt: float, b: _Builder) -> dict:
    if model.smooth:
        raise ValueError("a SpikingRNN with smooth=True emits the surrogate's primitive, not spikes; NIR has no "
                         "such neuron. Export the same network with smooth=False")
    N = model.n_hidden
    p = model.params()
    beta = _f64(p.beta, N, "beta")
    theta = _f64(model.threshold, N, "threshold")
    b.add("input", nir.Input(input_type=np.array([model.n_in])))
    b.add("w_in", nir.Affine(weight=_np(model.weight_in), bias=_np(model.bias)))
    exact = {"beta": _exact_value(model.beta), "threshold": _exact_value(model.threshold)}
    if model.neuron == "lif":
        node = _lif_node(beta, theta, dt, N)
    else:
        node = _cuba_node(_f64(p.alpha, N, "alpha"), beta, theta, dt, N)
        exact["alpha"] = _exact_value(model.alpha)
    b.add("lif", node, exact)
    b.add("w_rec", nir.Linear(weight=_np(model.weight_rec)))
    b.add("readout", nir.Affine(weight=_np(model.readout_layer.weight), bias=_np(model.readout_layer.bias)))
    b.add("output", nir.Output(output_type=np.array([model.n_out])))
    for e in (("input", "w_in"), ("w_in", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "readout")):
        b.edge(*e)
    if model.readout_kind == "leaky":
        rb = np.array([model.readout_beta])
        tau = _tau(rb, dt, "readout_beta")
        n_out = model.n_out
        b.add("li", nir.LI(tau=np.full(n_out, tau[0]), r=np.full(n_out, tau[0] / dt), v_leak=np.zeros(n_out)))
        b.edge("readout", "li")
        b.edge("li", "output")
    else:
        b.edge("readout", "output")
    if model.reset == "subtract":
        b.flag("lif", "the subtract reset (U - theta after a spike) has no NIR equivalent: NIR resets the membrane to "
               "v_reset", "train with reset='zero' (neuron='lif'), which NIR's LIF expresses exactly")
    elif model.neuron == "cuba":
        b.flag("lif", "cuba's zero reset zeroes the whole update (beta mem + syn) on the step after a spike; NIR's "
               "CubaLIF resets v to 0 at once and keeps integrating the synaptic current",
               "use neuron='lif' with reset='zero', or a Norse LIFRecurrentCell layer (NIR's CubaLIF expresses "
               "its dynamics exactly)")
    settings = {
        "n_in": model.n_in, "n_hidden": N, "n_out": model.n_out, "neuron": model.neuron, "reset": model.reset,
        "detach_reset": model.detach_reset, "readout": model.readout_kind, "readout_beta": model.readout_beta,
        "dt": model.dt, "backend": getattr(model, "backend", "auto"),
        "bias": isinstance(model.bias, nn.Parameter),
        "learn_beta": isinstance(model.beta, nn.Parameter), "learn_alpha": isinstance(model.alpha, nn.Parameter),
        "learn_threshold": isinstance(model.threshold, nn.Parameter), "g": model.g,
        "dtype": str(model.weight_rec.dtype).replace("torch.", ""),
    }
    return {"model": settings, "surrogate": _surrogate_info(model.surrogate), "discretisation": "euler",
            "initial_membrane": "zero"}


# ----------------------------------------------------------------------------------------------
# BalancedNetwork
# ----------------------------------------------------------------------------------------------


def _export_balanced(model, dt: float, b: _Builder) -> dict:
    if model.tau_s == 0:
        raise NotImplementedError("BalancedNetwork with tau_s = 0 (delta synapses): the spikes would have to jump the "
                                  "membrane directly, which the exported LI synapse cannot express; use tau_s > 0")
    if not math.isclose(dt, model.dt, rel_tol=1e-12):
        raise ValueError(f"the BalancedNetwork integrates with dt={model.dt} s; export it with the same dt (got "
                         f"dt={dt}): its discrete dynamics are those of dt={model.dt}")
    N, K = model.N, model.K
    w = model.weight_rec.detach()
    J = torch.zeros(N, N, dtype=w.dtype, device=w.device)
    J.scatter_(1, model.pre_idx, w)  # the K presynaptic ids of a row are distinct
    n = N
    if model.n_in > 0:
        b.add("input", nir.Input(input_type=np.array([model.n_in])))
        b.add("w_in", nir.Linear(weight=_np(model.weight_in)))
        b.edge("input", "w_in")
        b.edge("w_in", "lif")
    else:
        b.add("input", nir.Input(input_type=np.array([N])))  # a current straight into the membranes
        b.edge("input", "lif")
    b.add("lif", nir.LIF(tau=np.full(n, model.tau_m), r=np.ones(n), v_leak=_np(model.drive, np.float64),
                         v_threshold=np.ones(n), v_reset=np.zeros(n)))
    b.add("w_rec", nir.Linear(weight=_np(J)), {"pre_idx": _np(model.pre_idx)})
    b.add("syn", nir.LI(tau=np.full(n, model.tau_s), r=np.full(n, model.c * model.tau_s / dt), v_leak=np.zeros(n)))
    for e in (("lif", "w_rec"), ("w_rec", "syn"), ("syn", "lif")):
        b.edge(*e)
    if model.n_out > 0:
        b.add("readout", nir.Affine(weight=_np(model.readout_layer.weight), bias=_np(model.readout_layer.bias)))
        b.add("output", nir.Output(output_type=np.array([model.n_out])))
        b.edge("lif", "readout")
        b.edge("readout", "output")
    else:
        b.add("output", nir.Output(output_type=np.array([N])))
        b.edge("lif", "output")
    settings = {
        "N": N, "K": K, "J0": model.J0, "I0": model.I0, "tau_m": model.tau_m, "tau_s": model.tau_s, "dt": model.dt,
        "n_in": model.n_in, "n_out": model.n_out, "synapse_norm": model.synapse_norm, "ei": model.ei,
        "f_E": model.f_E if model.ei else 0.8, "g": model.g if model.ei else 5.0,
        "learn_recurrent": isinstance(model.weight_rec, nn.Parameter), "detach_reset": model.detach_reset,
        "backend": model.backend, "dtype": str(w.dtype).replace("torch.", ""),
    }
    return {"model": settings, "surrogate": _surrogate_info(model.surrogate), "discretisation": "exact",
            "initial_membrane": "zero"}


# ----------------------------------------------------------------------------------------------
# nn.Sequential stacks
# ----------------------------------------------------------------------------------------------


def _snn():
    import snntorch

    return snntorch


def _norse():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        import norse.torch as nt
    return nt


def _layer_kind(layer: nn.Module) -> Optional[str]:
    """``"torch.Linear"``, ``"snntorch.Leaky"``, ``"norse.LIFCell"``, ... or None (unsupported)."""
    if isinstance(layer, nn.Linear):
        return "torch.Linear"
    snn = _snn()
    for cls in ("RSynaptic", "RLeaky", "Synaptic", "Leaky"):  # subclasses first
        if isinstance(layer, getattr(snn, cls)):
            return f"snntorch.{cls}"
    nt = _norse()
    for cls in ("LIFRecurrentCell", "LIFRecurrent", "LIFBoxCell", "LIFCell", "LIF"):
        if isinstance(layer, getattr(nt, cls)):
            return f"norse.{cls}"
    from surroflos.norse import LIFBox

    if isinstance(layer, LIFBox):
        return "norse.LIFBox"
    return None


SEQUENCE_LAYERS = ("torch.Linear", "snntorch.Leaky", "snntorch.Synaptic", "snntorch.RLeaky", "snntorch.RSynaptic",
                   "norse.LIFCell", "norse.LIF", "norse.LIFRecurrentCell", "norse.LIFRecurrent", "norse.LIFBoxCell",
                   "norse.LIFBox")


def _snn_reset(layer) -> str:
    return ("subtract", "zero", "none")[int(layer.reset_mechanism_val)]


def _snn_surrogate(layer) -> Optional[dict]:
    from surroflos.snntorch import surrogate_from_spike_grad

    return _surrogate_info(surrogate_from_spike_grad(layer.spike_grad))


def _width_of(t: Any) -> Optional[int]:
    t = torch.as_tensor(t)
    return int(t.shape[0]) if t.ndim == 1 and t.shape[0] > 1 else None


def _export_snntorch(kind: str, layer, i: int, width: Optional[int], dt: float, b: _Builder, prev: str
                     ) -> tuple[str, int, dict]:
    name = f"layer{i}"
    cls = kind.split(".")[1]
    if getattr(layer, "inhibition", False) or getattr(layer, "state_quant", False):
        raise ValueError(f"layer {i} ({cls}): inhibition and state_quant have no NIR equivalent")
    recurrent = cls in ("RLeaky", "RSynaptic")
    rec_node = None
    if recurrent:
        rec = layer.recurrent
        if isinstance(rec, nn.Linear):
            n = rec.out_features
            rec_node = _affine(rec.weight, rec.bias)
        elif hasattr(rec, "V"):
            V = torch.as_tensor(rec.V).detach()
            n = width if V.ndim == 0 else int(V.shape[0])
            if n is None:
                raise ValueError(f"layer {i} ({cls}): a scalar one-to-one V does not fix the layer size; put an "
                                 "nn.Linear before it")
            rec_node = nir.Linear(weight=np.diag(_f64(V, n, "V")).astype(_np(V).dtype))
        else:
            raise ValueError(f"layer {i} ({cls}): recurrent module {type(rec).__name__} (convolutional recurrence) "
                             "has no NIR mapping here")
    else:
        n = width
        for t in (layer.beta, layer.threshold) + ((layer.alpha,) if cls == "Synaptic" else ()):
            n = n or _width_of(t)
    if n is None:
        raise ValueError(f"layer {i} ({cls}): cannot tell its number of neurons (scalar parameters and no preceding "
                         "nn.Linear); start the stack with an nn.Linear")
    if width is not None and width != n:
        raise ValueError(f"layer {i} ({cls}) has {n} neurons but receives {width} inputs")
    beta = _f64(layer.beta.clamp(0, 1), n, "beta")
    theta = _f64(layer.threshold, n, "threshold")
    exact = {"beta": _exact_value(layer.beta), "threshold": _exact_value(layer.threshold),
             "graded_spikes_factor": _exact_value(layer.graded_spikes_factor)}
    if cls in ("Synaptic", "RSynaptic"):
        node = _cuba_node(_f64(layer.alpha.clamp(0, 1), n, "alpha"), beta, theta, dt, n)
        exact["alpha"] = _exact_value(layer.alpha)
    else:
        node = _lif_node(beta, theta, dt, n)
    b.add(name, node, exact)
    b.edge(prev, name)
    rec_name = None
    if recurrent:
        rec_name = b.add(f"{name}_rec", rec_node)
        b.edge(name, rec_name)
        b.edge(rec_name, name)
    reset = _snn_reset(layer)
    delay = bool(layer.reset_delay)
    alt = f"construct the layer with reset_mechanism='zero'{', reset_delay=False' if cls != 'Leaky' else ''}"
    if reset == "subtract":
        b.flag(name, f"{cls}'s subtract reset has no NIR equivalent (NIR resets the membrane to v_reset)", alt)
    elif reset == "none":
        b.flag(name, f"{cls} without reset: NIR's neurons always reset to v_reset after a spike",
               "construct the layer with reset_mechanism='zero'")
    elif cls == "RSynaptic":
        b.flag(name, "RSynaptic's zero reset zeroes the whole update on the step after a spike (snnTorch 1.0 ignores "
               "reset_delay=False for RSynaptic); NIR resets at once and keeps integrating",
               "use a Norse LIFRecurrentCell, which NIR's CubaLIF expresses exactly")
    elif cls != "Leaky" and delay:
        b.flag(name, f"{cls}'s delayed zero reset zeroes the whole update on the step after a spike; NIR resets at "
               "once and keeps integrating", "construct the layer with reset_mechanism='zero', reset_delay=False")
    if not bool(torch.all(torch.as_tensor(layer.graded_spikes_factor) == 1)):
        b.flag(name, f"{cls} emits graded spikes (graded_spikes_factor != 1); NIR spikes have height 1",
               "fold the factor into the next layer's weights and use graded_spikes_factor=1")
    settings = {"reset_mechanism": reset, "reset_delay": delay, "init_hidden": bool(layer.init_hidden),
                "learn_beta": isinstance(layer.beta, nn.Parameter),
                "learn_threshold": isinstance(layer.threshold, nn.Parameter),
                "learn_graded_spikes_factor": isinstance(layer.graded_spikes_factor, nn.Parameter),
                "output": bool(getattr(layer, "output", False)),
                "surrogate_disable": bool(getattr(layer, "surrogate_disable", False)),
                "dropin": type(layer).__module__.startswith("surroflos")}
    if cls in ("Synaptic", "RSynaptic"):
        settings["learn_alpha"] = isinstance(layer.alpha, nn.Parameter)
    if recurrent:
        rec = layer.recurrent
        settings["all_to_all"] = bool(layer.all_to_all)
        settings["learn_recurrent"] = bool(getattr(layer, "learn_recurrent", True))
        if isinstance(rec, nn.Linear):
            settings["linear_features"] = n
            settings["recurrent_bias"] = rec.bias is not None
        else:
            exact_v = {"V": _exact_value(rec.V)}
            b.nodes[rec_name].metadata = {"surroflos": exact_v}
    info = {"type": kind, "node": name, "recurrent_node": rec_name, "n": n, "settings": settings,
            "surrogate": _snn_surrogate(layer)}
    return name, n, info


_LIF_FIELDS = ("tau_syn_inv", "tau_mem_inv", "v_leak", "v_th", "v_reset")
_BOX_FIELDS = ("tau_mem_inv", "v_leak", "v_th", "v_reset")


def _export_norse(kind: str, layer, i: int, width: Optional[int], dt: float, b: _Builder, prev: str
                  ) -> tuple[str, int, dict]:
    name = f"layer{i}"
    cls = kind.split(".")[1]
    p = layer.p
    box = cls in ("LIFBoxCell", "LIFBox")
    fields = _BOX_FIELDS if box else _LIF_FIELDS
    recurrent = cls in ("LIFRecurrentCell", "LIFRecurrent")
    if recurrent:
        n_in, n = int(layer.input_size), int(layer.hidden_size)
        if width is not None and width != n_in:
            raise ValueError(f"layer {i} ({cls}) takes {n_in} inputs but receives {width}")
        in_name = b.add(f"{name}_in", nir.Linear(weight=_np(layer.input_weights)))
        b.edge(prev, in_name)
        prev = in_name
    else:
        n = width
        for f in fields:
            n = n or _width_of(getattr(p, f))
        if n is None:
            raise ValueError(f"layer {i} ({cls}): cannot tell its number of neurons (scalar parameters and no "
                             "preceding nn.Linear); start the stack with an nn.Linear")
    vals = {f: _f64(getattr(p, f), n, f"p.{f}") for f in fields}
    if box:
        node = nir.LIF(tau=1.0 / vals["tau_mem_inv"], r=np.ones(n), v_leak=vals["v_leak"], v_threshold=vals["v_th"],
                       v_reset=vals["v_reset"])
    else:
        tau_syn = 1.0 / vals["tau_syn_inv"]
        node = nir.CubaLIF(tau_syn=tau_syn, tau_mem=1.0 / vals["tau_mem_inv"], r=np.ones(n), v_leak=vals["v_leak"],
                           v_threshold=vals["v_th"], v_reset=vals["v_reset"], w_in=tau_syn / dt)
    b.add(name, node, {f: _exact_value(getattr(p, f)) for f in fields})
    b.edge(prev, name)
    rec_name = None
    if recurrent:
        rec_name = b.add(f"{name}_rec", nir.Linear(weight=_np(layer.recurrent_weights)))
        b.edge(name, rec_name)
        b.edge(rec_name, name)
    layer_dt = float(layer.dt)
    if not math.isclose(layer_dt, dt, rel_tol=1e-12):
        b.flag(name, f"the Norse layer integrates with its own dt={layer_dt} s but the graph is exported for dt={dt} s",
               f"export with dt={layer_dt}")
    if box:
        from norse.torch.functional.reset import reset_subtract, reset_value

        rm = getattr(p, "reset_method", reset_value)
        if rm is reset_subtract:
            b.flag(name, "reset_subtract has no NIR equivalent (NIR resets to v_reset)", "use reset_value (default)")
        elif rm is not reset_value:
            raise ValueError(f"layer {i} ({cls}): custom reset_method {rm!r} has no NIR mapping")
    alpha = torch.as_tensor(p.alpha)
    settings = {"method": p.method, "alpha": _exact_value(alpha).tolist(), "dt": layer_dt,
                "dropin": type(layer).__module__.startswith("surroflos"),
                "record_states": bool(getattr(layer, "record_states", False))}
    if recurrent:
        settings.update(input_size=n_in, hidden_size=n, autapses=bool(layer.autapses))
    if box:
        settings["reset_method"] = "subtract" if getattr(p, "reset_method", None).__name__ == "reset_subtract" \
            else "value"
    info = {"type": kind, "node": name, "recurrent_node": rec_name, "input_node": f"{name}_in" if recurrent else None,
            "n": n, "settings": settings, "surrogate": {"norse_method": p.method, "alpha": float(alpha.reshape(-1)[0])}}
    return name, n, info


def _export_stack(seq: nn.Sequential, dt: float, b: _Builder) -> dict:
    if len(seq) == 0:
        raise ValueError("the nn.Sequential is empty")
    layers = []
    kinds = [_layer_kind(m) for m in seq]
    for i, (m, k) in enumerate(zip(seq, kinds)):
        if k is None:
            raise ValueError(f"layer {i} ({type(m).__name__}) has no NIR mapping; supported layers: "
                             f"{', '.join(SEQUENCE_LAYERS)}")
    first = seq[0]
    if isinstance(first, nn.Linear):
        n_in = first.in_features
    elif kinds[0] in ("norse.LIFRecurrentCell", "norse.LIFRecurrent"):
        n_in = int(first.input_size)
    else:
        n_in = None
        for f in ("beta", "threshold"):
            n_in = n_in or (_width_of(getattr(first, f)) if hasattr(first, f) else None)
        if n_in is None:
            raise ValueError("cannot tell the stack's input size: start it with an nn.Linear")
    b.add("input", nir.Input(input_type=np.array([n_in])))
    prev, width = "input", n_in
    norse_seen = False
    for i, (m, k) in enumerate(zip(seq, kinds)):
        if k == "torch.Linear":
            if width != m.in_features:
                raise ValueError(f"layer {i} (Linear) takes {m.in_features} inputs but receives {width}")
            name = b.add(f"layer{i}", _affine(m.weight, m.bias))
            b.edge(prev, name)
            prev, width = name, m.out_features
            layers.append({"type": k, "node": name, "n": width,
                           "settings": {"in_features": m.in_features, "out_features": m.out_features,
                                        "bias": m.bias is not None}})
        elif k.startswith("snntorch."):
            prev, width, info = _export_snntorch(k, m, i, width, dt, b, prev)
            layers.append(info)
        else:
            norse_seen = True
            prev, width, info = _export_norse(k, m, i, width, dt, b, prev)
            layers.append(info)
    b.add("output", nir.Output(output_type=np.array([width])))
    b.edge(prev, "output")
    dtypes = {str(p.dtype).replace("torch.", "") for p in seq.parameters() if p.is_floating_point()}
    return {"layers": layers, "n_in": n_in, "n_out": width, "discretisation": "euler",
            "initial_membrane": "leak" if norse_seen else "zero", "dtype": sorted(dtypes)[0] if dtypes else "float32"}


# ----------------------------------------------------------------------------------------------
# Running our side (probe, verify)
# ----------------------------------------------------------------------------------------------


def _model_kind(model: Any) -> str:
    from surroflos.models import BalancedNetwork, SpikingRNN

    if isinstance(model, SpikingRNN):
        return "SpikingRNN"
    if isinstance(model, BalancedNetwork):
        return "BalancedNetwork"
    if isinstance(model, nn.Sequential):
        return "Sequential"
    raise TypeError(f"to_nir exports SpikingRNN, BalancedNetwork and nn.Sequential stacks of nn.Linear and spiking "
                    f"layers; got {type(model).__name__}")


def _run_layer(kind: str, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The spike sequence ``[T, B, N]`` of one spiking layer on ``x: [T, B, F]`` from its zero/default state."""
    cls = kind.split(".")[1]
    if kind.startswith("snntorch.") and layer.init_hidden:  # the state lives on the module: run a fresh copy
        layer = copy.deepcopy(layer)
        layer.reset_mem()
        out = []
        for t in range(x.shape[0]):
            res = layer(x[t])
            out.append(res[0] if isinstance(res, tuple) else res)
        return torch.stack(out)
    if kind.startswith("snntorch."):
        if hasattr(layer, "sequence"):  # the surroflos drop-ins
            return layer.sequence(x)[0]
        # A plain snnTorch layer: its own step with explicit states.
        names = {"Leaky": 1, "Synaptic": 2, "RLeaky": 2, "RSynaptic": 3}[cls]
        n = layer.recurrent.out_features if hasattr(layer, "recurrent") and isinstance(layer.recurrent, nn.Linear) \
            else x.shape[-1]
        state = [x.new_zeros(*x.shape[1:-1], n) for _ in range(names)]
        out = []
        for t in range(x.shape[0]):
            res = layer(x[t], *state)
            out.append(res[0])
            state = list(res[-names:]) if cls in ("RLeaky", "RSynaptic") else list(res[1:])
        return torch.stack(out)
    if cls in ("LIF", "LIFRecurrent", "LIFBox"):
        return layer(x)[0]
    state, out = None, []
    for t in range(x.shape[0]):
        z, state = layer(x[t], state)
        out.append(z)
    return torch.stack(out)


def run_model(model: Any, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run one of our exportable models on ``x: [T, B, n_in]`` from its initial state (no gradients).

    Returns ``(outputs, spikes)``: ``outputs [T, B, n]`` is what the exported graph's Output node gives (the
    readout; the spikes of a BalancedNetwork without readout), ``spikes`` maps the name of each spiking NIR
    node of the exported graph to that layer's spikes ``[T, B, N]``.
    """
    kind = _model_kind(model)
    with torch.no_grad():
        if kind in ("SpikingRNN", "BalancedNetwork"):
            r = model.rollout(x)
            out = r.activity if kind == "BalancedNetwork" and model.n_out == 0 else r.outputs
            return out, {"lif": r.activity}
        spikes = {}
        for i, m in enumerate(model):
            k = _layer_kind(m)
            if k == "torch.Linear":
                x = m(x)
            else:
                x = _run_layer(k, m, x)
                spikes[f"layer{i}"] = x
        return x, spikes


def graph_inputs(model: Any, x: torch.Tensor) -> torch.Tensor:
    """What the exported graph's Input node receives for the model input ``x`` (a zero current ``[T, B, N]``
    for a BalancedNetwork without inputs)."""
    if _model_kind(model) == "BalancedNetwork" and model.n_in == 0:
        return x.new_zeros(x.shape[0], x.shape[1], model.N)
    return x


def _model_dtype(model: Any) -> torch.dtype:
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()


def _model_device(model: Any) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _n_in(model: Any, spec: dict) -> int:
    return int(spec["model"]["n_in"]) if "model" in spec else int(spec["n_in"])


def _compare_spikes(a: dict, b: dict) -> tuple[float, Optional[int], int, int]:
    """Fraction of differing spikes over the common nodes, first divergence step, spike counts."""
    diff = total = 0
    first: Optional[int] = None
    na = nb = 0
    for name in a:
        if name not in b:
            continue
        sa, sb = a[name].detach().to("cpu", torch.float64) != 0, b[name].detach().to("cpu", torch.float64) != 0
        ne = sa != sb
        diff += int(ne.sum())
        total += ne.numel()
        na, nb = na + int(sa.sum()), nb + int(sb.sum())
        steps = ne.flatten(1).any(1).nonzero()
        if len(steps):
            first = int(steps[0]) if first is None else min(first, int(steps[0]))
    return (diff / total if total else 0.0), first, na, nb


def to_float64(model: Any) -> Any:
    """A float64 CPU copy of ``model`` (Norse layers' ``p`` tensors included), for comparisons in double precision."""
    m = copy.deepcopy(model).to(device="cpu", dtype=torch.float64)
    for mod in m.modules():
        p = getattr(mod, "p", None)
        if p is not None and hasattr(p, "_replace"):
            mod.p = p._replace(**{f: v.to(device="cpu", dtype=torch.float64) for f, v in p._asdict().items()
                                  if isinstance(v, torch.Tensor) and v.is_floating_point()})
    return m


def _probe(model: Any, graph: nir.NIRGraph, dt: float, spec: dict) -> dict:
    """Measure ours against the reference integrator on a seeded random input."""
    m64 = to_float64(model)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(PROBE_STEPS, PROBE_BATCH, _n_in(model, spec), generator=gen, dtype=torch.float64)
    _, ours = run_model(m64, x)
    res = ref.simulate(graph, graph_inputs(model, x), dt, method=spec["discretisation"], v0=spec["initial_membrane"])
    frac, first, n_ours, n_ref = _compare_spikes(ours, res.spikes)
    return {"steps": PROBE_STEPS, "batch": PROBE_BATCH, "input": "N(0, 1), seed 0", "differing_spikes": frac,
            "first_divergence_step": first, "spikes_ours": n_ours, "spikes_reference": n_ref}


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def to_nir(model: Any, dt: float, *, metadata: Optional[dict] = None, consumer: Optional[str] = None
           ) -> nir.NIRGraph:
    """Export ``model`` as a NIR graph for time step ``dt`` (seconds per step); see the module docstring.

    Args:
        model: a :class:`~surroflos.SpikingRNN`, :class:`~surroflos.BalancedNetwork` or ``nn.Sequential`` of
            ``nn.Linear`` and snnTorch / Norse spiking layers.
        dt: the step the discrete model takes, in seconds (``BalancedNetwork``: must equal ``model.dt``).
        metadata: extra JSON-serialisable information stored with the graph (e.g.
            ``{"training_config": cfg}``); read it back as ``metadata_of(graph)["user"]``.
        consumer: ``None`` (default): the spec-exact graph of NIR's continuous-time equations. ``"nir"``,
            ``"norse"``, ``"snntorch"``, ``"spyx"``, ``"rockpool"``, ``"sinabs"``: the graph that consumer runs
            exactly (its dt, r, reset, recurrence layout, drive as a bias; see :mod:`surroflos.export.consumers`),
            or :class:`~surroflos.export.consumers.ConsumerRefusal` (a ValueError) with the reason and the
            nearest exact alternative.

    Returns the graph; warns :class:`NIRExportWarning` with the measured mismatch where NIR cannot express the
    model exactly (``consumer=None`` only: a consumer form is exact or refused).
    """
    dt = _check_dt(dt)
    consumer = cons.check_consumer(consumer)
    kind = _model_kind(model)
    user = {} if metadata is None else metadata
    if not isinstance(user, dict):
        raise TypeError(f"metadata must be a dict, got {type(user).__name__}")
    _json(user, "metadata")
    b = _Builder()
    if kind == "SpikingRNN":
        spec = _export_spiking_rnn(model, dt, b)
    elif kind == "BalancedNetwork":
        spec = _export_balanced(model, dt, b)
    else:
        spec = _export_stack(model, dt, b)
    exact = not b.inexact
    spec.update(model_class=kind, dt=dt, surroflos_version=_version(), exact=exact, inexact=b.inexact, user=user,
                mismatch=None)
    if consumer is not None:
        return _consumer_graph(model, b, spec, dt, consumer)
    graph = nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata={})
    ref.validate(graph)  # our own output must pass our own checks
    if not exact:
        spec["mismatch"] = _probe(model, graph, dt, spec)
    graph.metadata = {
        "generator": _GENERATOR, "surroflos_version": spec["surroflos_version"], "dt": dt, "model_class": kind,
        "discretisation": spec["discretisation"], "initial_membrane": spec["initial_membrane"], "exact": exact,
        "surroflos": _json(spec, "the export metadata"),
    }
    if not exact:
        _warn_mismatch(kind, spec, dt)
    return graph


def _consumer_graph(model: Any, b: _Builder, spec: dict, dt: float, consumer: str) -> nir.NIRGraph:
    """The form of the graph that ``consumer`` runs exactly (or ConsumerRefusal)."""
    form = cons.convert(b.nodes, b.edges, spec, model, dt, consumer)
    graph = nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata={})
    ref.validate(graph)
    norse_leak = spec.get("initial_membrane") == "leak" and consumer == "norse"
    spec.update(consumer=form, exact=True, discretisation="euler",
                initial_membrane="leak" if norse_leak else "zero")
    graph.metadata = {
        "generator": _GENERATOR, "surroflos_version": spec["surroflos_version"], "dt": form["consumer_dt"],
        "export_dt": dt, "model_class": spec["model_class"], "consumer": consumer,
        "discretisation": spec["discretisation"], "initial_membrane": spec["initial_membrane"], "exact": True,
        "surroflos": _json(spec, "the export metadata"),
    }
    return graph


def _warn_mismatch(kind: str, spec: dict, dt: float) -> None:
    m = spec["mismatch"]
    reasons = "; ".join(f"{f['node']}: {f['reason']}" for f in spec["inexact"])
    alternatives = "; ".join(dict.fromkeys(f["alternative"] for f in spec["inexact"]))
    if m["first_divergence_step"] is None:
        measured = (f"on a {m['steps']}-step random probe (batch {m['batch']}) no hidden spike differed "
                    f"({m['spikes_ours']} spikes), but other inputs can diverge")
    else:
        t = m["first_divergence_step"]
        measured = (f"measured on the exported graph against the reference integrator ({m['steps']} steps, batch "
                    f"{m['batch']}, random N(0, 1) input): {100 * m['differing_spikes']:.2f}% of hidden spikes differ, "
                    f"first divergence at step {t} ({t * dt:.6g} s); spikes ours {m['spikes_ours']}, NIR "
                    f"{m['spikes_reference']}")
    warnings.warn(f"the NIR export of this {kind} is not exact: {reasons}. {measured}. Exact alternative: "
                  f"{alternatives}.", NIRExportWarning, stacklevel=3)


def metadata_of(graph: nir.NIRGraph) -> Optional[dict]:
    """The surroflos export metadata of ``graph`` as a dict (None for a graph surroflos did not write).

    Keys: ``model_class``, ``dt``, ``surroflos_version``, ``discretisation``, ``initial_membrane``, ``exact``,
    ``inexact`` (the reasons), ``mismatch`` (the measured one, or None), ``surrogate`` (SpikingRNN /
    BalancedNetwork: ``{"name", "scale"}``), ``model`` (constructor settings) or ``layers`` (stacks; each with
    its ``surrogate``), ``user`` (the ``metadata`` given to :func:`to_nir`), and for a consumer form
    ``consumer`` (``{"consumer", "consumer_dt", "consumer_version", "run", "spike_shift"}``).
    """
    md = getattr(graph, "metadata", None) or {}
    raw = md.get("surroflos")
    if md.get("generator") != _GENERATOR or raw is None:
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf8")
    try:
        return json.loads(str(raw))
    except json.JSONDecodeError as err:
        raise ValueError(f"the graph's surroflos metadata is not valid JSON: {err}") from None


def write(path: Union[str, os.PathLike], model: Any, dt: Optional[float] = None, *,
          metadata: Optional[dict] = None, consumer: Optional[str] = None) -> nir.NIRGraph:
    """Export ``model`` (or write a ``nir.NIRGraph`` as is) to the NIR file ``path``, atomically.

    The file appears complete or not at all (written to a temporary file in the same folder, then renamed).
    Returns the graph written. ``dt`` is required for a model and ignored for a graph. ``consumer``: as in
    :func:`to_nir` (the form one consumer runs exactly; a refusal raises before anything is written).
    """
    if isinstance(model, nir.NIRGraph):
        if metadata is not None or consumer is not None:
            raise ValueError("metadata and consumer are set by to_nir; pass a model, or write the graph as it is")
        graph = model
        ref.validate(graph)
    else:
        if dt is None:
            raise ValueError("dt (seconds per step) is required to export a model")
        graph = to_nir(model, dt, metadata=metadata, consumer=consumer)
    path = Path(path)
    if not path.parent.exists():
        raise FileNotFoundError(f"cannot write {path}: the folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        nir.write(tmp, graph)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return graph


def fold_r(graph: nir.NIRGraph) -> nir.NIRGraph:
    """An equivalent graph with ``r = 1`` on every ``LIF``/``LI`` node, ``r`` folded into the incoming weights.

    ``tau dv/dt = (v_leak - v) + r W x`` equals ``(v_leak - v) + (r W) x``; ``CubaLIF``'s ``r`` is folded into
    ``w_in``. For importers that ignore ``r`` (Norse's ``from_nir`` assumes ``r = 1`` for LIF and LI). Every
    edge into such a node must come from an ``Affine``/``Linear`` node that feeds nothing else. The input graph
    is not modified. Nested subgraphs are not supported.
    """
    g = copy.deepcopy(graph)
    consumers: dict[str, list[str]] = {}
    for a, b_ in g.edges:
        consumers.setdefault(a, []).append(b_)
    for name, node in g.nodes.items():
        if isinstance(node, nir.NIRGraph):
            raise ValueError(f"fold_r does not support nested subgraphs (node {name!r})")
        if isinstance(node, nir.CubaLIF):
            node.w_in = np.asarray(node.w_in, dtype=np.float64) * np.asarray(node.r, dtype=np.float64)
            node.r = np.ones_like(np.asarray(node.r, dtype=np.float64))
            continue
        if not isinstance(node, (nir.LIF, nir.LI)):
            continue
        r = np.asarray(node.r, dtype=np.float64)
        if np.all(r == 1):
            continue
        for src, dst in g.edges:
            if dst != name:
                continue
            pre = g.nodes[src]
            if not isinstance(pre, (nir.Affine, nir.Linear)) or consumers.get(src) != [name]:
                raise ValueError(f"fold_r: node {name!r} receives input from {src!r} ({type(pre).__name__}), which is "
                                 "not an Affine/Linear node feeding only it; r cannot be folded")
            w = np.asarray(pre.weight)
            pre.weight = (w.astype(np.float64) * r[:, None]).astype(w.dtype)
            if isinstance(pre, nir.Affine):
                bias = np.asarray(pre.bias)
                pre.bias = (bias.astype(np.float64) * r).astype(bias.dtype)
        node.r = np.ones_like(r)
    return g
