"""Per-consumer NIR files: the graph each NIR consumer runs exactly, or a refusal saying why not.

A NIR file written by :func:`surroflos.export.to_nir` with ``consumer=None`` is the spec-exact graph (NIR 1.0.8's
continuous-time equations; see :mod:`surroflos.export.to_nir`). No third-party importer reproduces it as is:
each reads NIR with conventions of its own (measured in issue 15 and below). ``to_nir(model, dt,
consumer=NAME)`` writes, for the consumer ``NAME``, a graph whose discrete dynamics *in that consumer* are
the model's, or raises :class:`ConsumerRefusal` (a ``ValueError``) with the precise reason and the nearest
exact alternative. What each consumer does with a graph, read from its source (versions below):

=========== ===============================================================================================
consumer    how it reads a graph, and what its form changes
=========== ===============================================================================================
``nir``     NIR's equations stepped with forward Euler at the export ``dt`` from zero states
            (:func:`surroflos.export.reference.simulate`, ``method="euler"``): the form for generic NIR
            simulators. Equal to the spec file except for ``BalancedNetwork``, whose exact exponential step
            is rewritten as an Euler-equivalent graph (``tau = dt/(1 - a)`` per decay ``a``, the synaptic
            ``LI`` node's ``r`` absorbing the spike jump and the coupling ``b``).
``norse``   Norse 1.1 ``norse.torch.from_nir(graph)`` (its default ``dt = 1e-3``): ``LIF`` becomes
            ``LIFBoxCell`` and ignores ``r``; ``CubaLIF`` applies ``v_leak`` to the synapse too; ``v_reset``
            is dropped (reset to 0); membranes start at ``v_leak``; ``LI`` is skipped; recurrence runs
            through nirtorch's ``GraphExecutor`` (the edge into the neuron carries the previous step). The
            form: time constants rescaled to ``dt = 1e-3`` (``tau dt_N / dt``: the same decay per step),
            ``r`` folded into the incoming weights (``r = 1``), a recurrent bias moved into the input bias,
            the balanced network's drive as an ``Affine`` bias (``v_leak = 0``) and its synapse as a
            ``Linear(diag(a_s))`` self-loop (a discrete synapse, Norse has no ``LI``).
``snntorch`` snnTorch 1.0 ``snntorch.import_nir.import_from_nir(graph)``: fixed ``dt = 1e-4``; ``beta = 1 -
            1e-4/tau``; ``v_leak`` refused; one threshold per layer; zero reset at once; no ``LI``; a cycle
            ``lif <-> w_rec`` is rewritten so that ``w_rec`` also multiplies the external input. The form:
            time constants rescaled to ``dt = 1e-4``, ``r = tau/1e-4`` (``w_in = tau_syn/1e-4``) with the
            input scale folded into the weights, every recurrent cycle routed through an identity ``Linear``
            (``lif -> w_rec -> <lif>_rec_pass -> lif``: no two-node cycle, so nirtorch 2.6 runs it as a graph
            with the previous step's spikes), the balanced network as for Norse.
``spyx``    spyx 1.0 ``spyx.nir.from_nir(graph, x)`` (its default ``dt = 1``): reads only ``tau`` and
            ``v_threshold``; ``LIF``/``RLIF`` threshold the *previous* membrane, then ``V = beta V + x - s
            theta`` (snnTorch's delayed subtract reset, each spiking layer one step late); ``CubaLIF``
            subtracts before the decay; follows the first edge out of each node from ``"input"`` (a longer
            cycle never ends). The form (subtract-reset LIF networks only): time constants in steps
            (``dt = 1``), the input scale folded into the weights, a recurrent bias moved into the input bias.
            spyx's spikes of layer ``k`` (1 for the first spiking layer) at step ``t + k`` are the model's at
            ``t``; :func:`surroflos.export.verify` compares them with that shift.
``rockpool`` Rockpool 3.1.0 ``rockpool.nn.modules.torch.nir.from_nir``: reads ``tau_mem`` from ``nir.LIF``
            (which has ``tau``) and crashes; ``CubaLIF`` becomes ``LIFTorch`` (``dt = min(tau_mem/(1+r))``,
            ``w_in`` ignored, subtractive reset before the next decay, up to ``2**16`` spikes per step); ``LI``
            casts ``tau`` to an integer. No surroflos network has that reset: always refused.
``sinabs``  sinabs 3.1.3 ``sinabs.nir.from_nir`` (pins ``nir<=1.0.4``): skips ``nir.Linear`` nodes; ``tau``
            in steps; ignores ``r`` and ``v_reset``; ``LIFSqueeze`` subtracts the threshold and emits
            ``trunc(v/theta)`` spikes per step. No surroflos network has that reset: always refused.
=========== ===============================================================================================

The forms are exact in real arithmetic; in floating point a consumer's spikes are identical wherever the
membrane keeps further from the threshold than the rounding of its (float32) arithmetic, which the tests
check with a threshold margin. ``to_nir(..., consumer=...)`` records ``consumer``, ``consumer_dt`` and the
how-to-run line in the graph's metadata (``metadata_of(graph)["consumer"]``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

import nir

__all__ = ["CONSUMERS", "ConsumerInfo", "ConsumerRefusal", "convert", "check_consumer", "spike_shift"]


class ConsumerRefusal(ValueError):
    """The consumer cannot run this network exactly; the message names the reason and the exact alternative."""

    def __init__(self, consumer: str, what: str, reason: str, alternative: str) -> None:
        self.consumer, self.reason, self.alternative = consumer, reason, alternative
        super().__init__(f"consumer={consumer!r} cannot run this {what} exactly: {reason}. Nearest exact "
                         f"alternative: {alternative}")


@dataclass(frozen=True)
class ConsumerInfo:
    """One NIR consumer: its package, the version its conventions were read from, its time step and how to run
    the file written for it."""

    name: str
    package: Optional[str]
    version: Optional[str]
    dt: Optional[float]  # the consumer's time step (None: the export dt)
    run: str
    note: str


CONSUMERS: dict[str, ConsumerInfo] = {
    "nir": ConsumerInfo("nir", None, None, None, "surroflos.export.simulate(graph, x, dt)  # forward Euler, zero states",
                        "NIR's equations with forward Euler at the export dt"),
    "norse": ConsumerInfo("norse", "norse", "1.1.0", 1e-3, "norse.torch.from_nir(graph)  # dt=1e-3, Norse's default",
                          "LIF ignores r, v_reset dropped, membranes start at v_leak, no LI"),
    "snntorch": ConsumerInfo("snntorch", "snntorch", "1.0.0", 1e-4,
                             "snntorch.import_nir.import_from_nir(graph)  # dt fixed at 1e-4",
                             "dt 1e-4, v_leak refused, one threshold per layer, no LI, two-node cycles rewired"),
    "spyx": ConsumerInfo("spyx", "spyx", "1.0.0", 1.0, "spyx.nir.from_nir(graph, x)  # dt=1, spyx's default",
                         "reads tau and v_threshold only; delayed subtract reset; each spiking layer one step late"),
    "rockpool": ConsumerInfo("rockpool", "rockpool", "3.1.0", None, "rockpool.nn.modules.torch.nir.from_nir(graph)",
                             "crashes on nir.LIF; CubaLIF: subtract reset before decay, several spikes per step"),
    "sinabs": ConsumerInfo("sinabs", "sinabs", "3.1.3", None, "sinabs.nir.from_nir(graph, batch_size=B, num_timesteps=1)",
                           "skips Linear, tau in steps, subtract reset, several spikes per step; nir<=1.0.4"),
}

_ALT_OTHERS = "consumer='norse' or consumer='snntorch' (or 'nir'), which run it exactly"


def check_consumer(consumer: Any) -> Optional[str]:
    """``None`` or a known consumer name; ValueError otherwise."""
    if consumer is None:
        return None
    if not isinstance(consumer, str) or consumer not in CONSUMERS:
        raise ValueError(f"unknown consumer {consumer!r}; choose None (the spec-exact file) or one of "
                         f"{', '.join(CONSUMERS)}")
    return consumer


# ----------------------------------------------------------------------------------------------
# Graph helpers (flat graphs as written by to_nir: dict nodes, list edges)
# ----------------------------------------------------------------------------------------------


def _a(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _preds(edges: list, name: str) -> list[str]:
    return [a for a, b in edges if b == name]


def _succs(edges: list, name: str) -> list[str]:
    return [b for a, b in edges if a == name]


def _is_lin(node: Any) -> bool:
    return isinstance(node, (nir.Affine, nir.Linear))


def _neuron_names(nodes: dict) -> list[str]:
    return [k for k, v in nodes.items() if isinstance(v, (nir.LIF, nir.CubaLIF, nir.LI))]


def _rec_partner(nodes: dict, edges: list, name: str) -> Optional[str]:
    """The linear node of a two-node cycle ``name <-> w`` (None if there is none)."""
    for b in _succs(edges, name):
        if _is_lin(nodes[b]) and (b, name) in edges:
            return b
    return None


def _rescaled_meta(old: Any, new: Any, factor: Any) -> Any:
    """Give ``new`` (``old``'s weight times ``factor`` per row, ``factor`` a scalar or one value per row) ``old``'s
    metadata. A quantisation grid recorded by :func:`surroflos.export.targets.quantize_graph` (``quant_scale``: the
    weight is ``q * quant_scale`` with integers ``q``) is multiplied by the same factor, so the folded weight stays
    on its grid: one scale where the factor is the same for every row, else one per row."""
    md = dict(getattr(old, "metadata", None) or {})
    if not md:
        return new
    if "quant_scale" in md:
        rows = np.asarray(new.weight).shape[0]
        s = np.asarray(md["quant_scale"], dtype=np.float64) * np.broadcast_to(_a(factor), (rows,))
        md["quant_scale"] = float(s[0]) if np.all(s == s[0]) else s
    new.metadata = md
    return new


def _scale_linear(node: Any, q: np.ndarray) -> Any:
    """``diag(q) node``: rows of the weight (and the bias) times ``q``; the weight's dtype and the node's metadata
    (its quantisation grid rescaled by ``q``) are kept."""
    w = np.asarray(node.weight)
    wq = (w.astype(np.float64) * q[:, None]).astype(w.dtype)
    if isinstance(node, nir.Affine):
        b = np.asarray(node.bias)
        return _rescaled_meta(node, nir.Affine(weight=wq, bias=(b.astype(np.float64) * q).astype(b.dtype)), q)
    return _rescaled_meta(node, nir.Linear(weight=wq), q)


def _fold_into_inputs(nodes: dict, edges: list, name: str, q: np.ndarray) -> None:
    """Multiply everything that flows into node ``name`` by ``q`` (per neuron), through its input edges.

    Each predecessor must be an ``Affine``/``Linear`` node feeding only ``name``; another predecessor (the graph's
    Input, a node feeding several) gets a ``Linear(diag(q))`` of its own between it and ``name``.
    """
    if np.all(q == 1.0):
        return
    for p in list(_preds(edges, name)):
        if _is_lin(nodes[p]) and _succs(edges, p) == [name]:
            nodes[p] = _scale_linear(nodes[p], q)
        else:
            k = f"{name}_scale_{p}"
            nodes[k] = nir.Linear(weight=np.diag(q))
            edges[edges.index((p, name))] = (p, k)
            edges.append((k, name))


def _input_scale(node: Any, dt: float) -> np.ndarray:
    """What one step of forward Euler multiplies the node's input by on its way into the membrane."""
    if isinstance(node, nir.CubaLIF):
        return _a(node.w_in) * dt / _a(node.tau_syn) * _a(node.r) * dt / _a(node.tau_mem)
    return _a(node.r) * dt / _a(node.tau)


def _retime(node: Any, factor: float) -> None:
    for f in ("tau", "tau_syn", "tau_mem"):
        if hasattr(node, f) and getattr(node, f) is not None:
            setattr(node, f, _a(getattr(node, f)) * factor)


def _move_recurrent_bias(nodes: dict, edges: list, what: str, c: str) -> None:
    """A recurrent ``Affine``'s bias enters every step; NIR consumers that delay the edge into the neuron miss
    it at the first step (and spyx never reads it): move it to the feed-forward input bias."""
    for name in _neuron_names(nodes):
        w = _rec_partner(nodes, edges, name)
        if w is None or not isinstance(nodes[w], nir.Affine):
            continue
        bias = _a(nodes[w].bias)
        ff = [p for p in _preds(edges, name) if p != w]
        if len(ff) != 1:
            raise ConsumerRefusal(c, what, f"node {name!r} has a recurrent bias and {len(ff)} feed-forward inputs",
                                  "a recurrent layer without a recurrent bias (bias=False)")
        p = ff[0]
        if not (_is_lin(nodes[p]) and _succs(edges, p) == [name]):
            k = f"{name}_in"
            n = bias.shape[0]
            nodes[k] = nir.Affine(weight=np.eye(n), bias=np.zeros(n))
            edges[edges.index((p, name))] = (p, k)
            edges.append((k, name))
            p = k
        pn = nodes[p]
        old = _a(pn.bias) if isinstance(pn, nir.Affine) else np.zeros(bias.shape[0])
        nodes[p] = _keep_meta(pn, nir.Affine(weight=np.asarray(pn.weight),
                                             bias=(old + bias).astype(np.asarray(pn.weight).dtype)))
        wn = nodes[w]
        nodes[w] = nir.Linear(weight=np.asarray(wn.weight))
        for k in ("metadata",):
            if getattr(wn, k, None):
                nodes[w].metadata = wn.metadata


def _keep_meta(old: Any, new: Any) -> Any:
    md = getattr(old, "metadata", None)
    if md:
        new.metadata = md
    return new


# ----------------------------------------------------------------------------------------------
# Which networks each consumer can run
# ----------------------------------------------------------------------------------------------


def _spec_refusal(c: str, what: str, spec: dict) -> None:
    """The spec export itself is not exact (subtract reset, delayed zero reset, graded spikes, ...): NIR's own
    neurons, which nir/norse/snntorch run, cannot express it."""
    if spec.get("exact", True):
        return
    flags = spec["inexact"]
    reason = "; ".join(f"{f['node']}: {f['reason']}" for f in flags)
    alt = "; ".join(dict.fromkeys(f["alternative"] for f in flags))
    if c in ("nir", "norse", "snntorch"):
        raise ConsumerRefusal(c, what, f"{CONSUMERS[c].package or 'NIR'} resets to v_reset at once like NIR's "
                                       f"neurons, and {reason}", alt)


def _spyx_layers_ok(what: str, spec: dict, nodes: dict) -> None:
    """spyx runs snnTorch's delayed subtract reset on LIF only."""
    c = "spyx"
    alt_reset = ("train with reset='subtract' (snnTorch's delayed subtract reset), which spyx runs exactly (each "
                 "spiking layer one step late); or " + _ALT_OTHERS)
    model = spec.get("model")
    if spec["model_class"] == "SpikingRNN":
        if model["neuron"] != "lif":
            raise ConsumerRefusal(c, what, "spyx 1.0's CuBaLIF/RCuBaLIF subtract the threshold before the decay "
                                           "(V = beta (V - s theta) + I) and the current-based SpikingRNN does not",
                                  "neuron='lif' with reset='subtract' for spyx; or " + _ALT_OTHERS)
        if model["reset"] != "subtract":
            raise ConsumerRefusal(c, what, "spyx 1.0's LIF/RLIF reset by subtracting the threshold (V = beta V + x - "
                                           "s theta); a zero reset cannot be expressed", alt_reset)
        if model["readout"] == "leaky":
            raise ConsumerRefusal(c, what, "spyx 1.0 reads an LI node only as half of its PSU_LIF (LI followed by a "
                                           "Threshold), so the leaky readout has no spyx module",
                                  "readout='linear' for spyx; or consumer='nir'")
        return
    if spec["model_class"] == "BalancedNetwork":
        raise ConsumerRefusal(c, what, "spyx 1.0's LIF resets by subtracting the threshold, the balanced network "
                                       "to zero; and spyx follows one edge out of each node from 'input', so the "
                                       "three-node cycle lif -> w_rec -> syn never ends", _ALT_OTHERS)
    for layer in spec["layers"]:
        kind = layer["type"]
        if kind == "torch.Linear":
            continue
        s = layer["settings"]
        if kind in ("snntorch.Leaky", "snntorch.RLeaky"):
            if s["reset_mechanism"] != "subtract" or not s["reset_delay"]:
                raise ConsumerRefusal(c, what, f"layer {layer['node']!r}: spyx 1.0 resets by subtracting the threshold "
                                               "on the step after the spike (snnTorch's reset_mechanism='subtract', "
                                               "reset_delay=True); this layer resets otherwise",
                                      "construct it with reset_mechanism='subtract' (reset_delay=True, the default); "
                                      "or " + _ALT_OTHERS)
            gsf = np.asarray(nodes[layer["node"]].metadata["surroflos"].get("graded_spikes_factor", 1.0))
            if not np.all(gsf == 1):
                raise ConsumerRefusal(c, what, f"layer {layer['node']!r} emits graded spikes",
                                      "graded_spikes_factor=1 with the factor folded into the next weights")
            continue
        raise ConsumerRefusal(c, what, f"layer {layer['node']!r} ({kind}) has no exact spyx 1.0 module (spyx's "
                                       "CuBaLIF subtracts before the decay; its LIF subtracts instead of resetting "
                                       "to v_reset)", _ALT_OTHERS)


def _always_refused(c: str, what: str) -> None:
    if c == "rockpool":
        raise ConsumerRefusal(
            c, what, "Rockpool 3.1.0's from_nir reads tau_mem from nir.LIF nodes (which have tau) and crashes; its "
            "CubaLIF module (LIFTorch) subtracts the threshold before the next decay and emits up to 2**16 spikes per "
            "step (floor(v / theta)); no surroflos network resets that way", _ALT_OTHERS)
    if c == "sinabs":
        raise ConsumerRefusal(
            c, what, "sinabs 3.1.3's from_nir skips nir.Linear nodes, ignores r and v_reset, and builds LIFSqueeze "
            "layers that subtract the threshold before the next decay and emit trunc(v / theta) spikes per step; no "
            "surroflos network resets that way", _ALT_OTHERS)


def _node_checks(c: str, what: str, nodes: dict) -> None:
    for name, node in nodes.items():
        if isinstance(node, nir.LI):
            alt = ("readout='linear' (then the readout is an Affine node)" if name == "li" else
                   "a network without LI nodes") + "; or consumer='nir'"
            if c in ("norse", "snntorch"):
                raise ConsumerRefusal(c, what, f"node {name!r} is an LI node, which {CONSUMERS[c].package} "
                                               f"{CONSUMERS[c].version}'s importer has no module for"
                                               + (" (Norse skips it silently)" if c == "norse" else ""), alt)
        if isinstance(node, (nir.LIF, nir.CubaLIF)):
            v_leak, v_reset = _a(node.v_leak), _a(node.v_reset)
            if c == "norse":
                if np.any(v_reset != 0):
                    raise ConsumerRefusal(c, what, f"node {name!r} resets to v_reset != 0, and Norse 1.1's from_nir "
                                                   "drops v_reset (resets to 0)", "v_reset = 0")
                if isinstance(node, nir.CubaLIF) and np.any(v_leak != 0):
                    raise ConsumerRefusal(c, what, f"node {name!r} has v_leak != 0, which Norse 1.1's from_nir also "
                                                   "applies to the synaptic current of a CubaLIF", "v_leak = 0")
            if c in ("snntorch", "spyx"):
                if np.any(v_leak != 0):
                    raise ConsumerRefusal(c, what, f"node {name!r} has v_leak != 0 and its membranes start at v_leak "
                                                   f"(Norse's convention); {CONSUMERS[c].package} starts them at 0 and "
                                                   "has no v_leak", "v_leak = 0; or consumer='norse'")
                if c == "snntorch" and np.any(v_reset != 0):
                    raise ConsumerRefusal(c, what, f"node {name!r} resets to v_reset != 0; snnTorch resets to 0",
                                          "v_reset = 0; or consumer='nir'")
            if c == "snntorch" and np.unique(_a(node.v_threshold)).size > 1:
                raise ConsumerRefusal(c, what, f"node {name!r} has one threshold per neuron; snnTorch 1.0's importer "
                                               "takes one threshold per layer",
                                      "one threshold for the layer (a scalar, learn_threshold=False); or consumer='norse'")


# ----------------------------------------------------------------------------------------------
# The forms
# ----------------------------------------------------------------------------------------------


def _convert_layered(nodes: dict, edges: list, spec: dict, dt: float, c: str, what: str) -> None:
    """SpikingRNN and nn.Sequential graphs (already forward-Euler graphs): rescale, fold, rewire in place."""
    if c == "spyx":
        _spyx_layers_ok(what, spec, nodes)
    else:
        _spec_refusal(c, what, spec)
    _node_checks(c, what, nodes)
    if c == "nir":
        return
    _move_recurrent_bias(nodes, edges, what, c)
    dt_c = CONSUMERS[c].dt
    factor = dt_c / dt
    for name in _neuron_names(nodes):
        node = nodes[name]
        s = _input_scale(node, dt)  # invariant under retiming: dt/tau stays
        new = copy.deepcopy(node)
        _retime(new, factor)
        n = s.shape[0]
        if isinstance(node, nir.CubaLIF):
            if c == "norse":
                new.r, target = new.r, s  # Norse honours r and w_in: nothing to fold
            else:  # snntorch: r = tau_mem/dt, w_in = tau_syn/dt (its asserts), input scale 1
                new.r = _a(new.tau_mem) / dt_c
                new.w_in = _a(new.tau_syn) / dt_c
                target = np.ones(n)
        elif c == "norse":  # LIFBoxCell ignores r
            new.r = np.ones(n)
            target = dt_c / _a(new.tau)
        else:  # snntorch (r = tau/1e-4: its w_scale 1, the threshold untouched) and spyx (reads no r; x enters as is)
            new.r = _a(new.tau) / dt_c
            target = np.ones(n)
        nodes[name] = _keep_meta(node, new)
        _fold_into_inputs(nodes, edges, name, s / target)
    if c == "spyx":  # a deeper layer sees its input late, but a bias at once: only zero biases stay exact
        depth = spike_shift(nodes, edges)
        for name, k in depth.items():
            if k < 2:
                continue
            for p in _preds(edges, name):
                if isinstance(nodes[p], nir.Affine) and np.any(_a(nodes[p].bias) != 0) and p != _rec_partner(
                        nodes, edges, name):
                    raise ConsumerRefusal(c, what, f"node {name!r} is spiking layer {k} and its input {p!r} has a "
                                                   f"bias: spyx delivers the spikes of layer {k - 1} one step late but "
                                                   "the bias at once, from the first step",
                                          "bias=False on the nn.Linear layers after the first spiking layer; or "
                                          + _ALT_OTHERS)
    if c == "snntorch":  # no two-node cycle: snnTorch would rebuild it as RLeaky with w_rec on the input too
        for name in [k for k, v in nodes.items() if isinstance(v, (nir.LIF, nir.CubaLIF))]:
            w = _rec_partner(nodes, edges, name)
            if w is None:
                continue
            n = np.asarray(nodes[w].weight).shape[0]
            k = f"{name}_rec_pass"
            nodes[k] = nir.Linear(weight=np.eye(n, dtype=np.asarray(nodes[w].weight).dtype))
            edges[edges.index((w, name))] = (w, k)
            edges.append((k, name))


def _convert_balanced(nodes: dict, edges: list, model: Any, dt: float, c: str, what: str) -> None:
    """The balanced network's exact step as a graph that ``c`` steps exactly (see the module docstring).

    Ours: ``I' = a_s I + a_s c J s``, ``V' = a_m V_r + b I + b c J s + (1 - a_m) u``; with ``y = k I'``,
    ``k = b / (a_s (1 - a_m))``: ``V' = a_m V_r + (1 - a_m) (y + u)`` and ``y' = a_s y + a_s k c J s``.
    """
    if c == "spyx":
        _spyx_layers_ok(what, {"model_class": "BalancedNetwork"}, nodes)
    N = model.N
    a_m, a_s, b, cc = float(model.a_m), float(model.a_s), float(model.b), float(model.c)
    k = b / (a_s * (1.0 - a_m))
    J = np.asarray(nodes["w_rec"].weight)
    wdt = J.dtype
    drive = np.asarray(model.drive.detach().cpu().numpy(), dtype=np.float64)
    dt_c = CONSUMERS[c].dt or dt
    if model.n_in > 0:
        W_in = np.asarray(nodes["w_in"].weight, dtype=np.float64)
    else:  # the graph input is a current straight into the membranes: an identity carries the drive
        W_in = np.eye(N)
        edges[edges.index(("input", "lif"))] = ("input", "w_in")
        edges.append(("w_in", "lif"))
    tau_v = np.full(N, dt_c / (1.0 - a_m))
    q = 1.0 - a_m if c == "snntorch" else 1.0  # snnTorch's Leaky adds its input unscaled
    r_v = tau_v / dt_c if c == "snntorch" else np.ones(N)
    old_lif = nodes["lif"]
    nodes["lif"] = _keep_meta(old_lif, nir.LIF(tau=tau_v, r=r_v, v_leak=np.zeros(N), v_threshold=np.ones(N),
                                               v_reset=np.zeros(N)))
    w_in = nir.Affine(weight=(W_in * q).astype(wdt), bias=(drive * q).astype(wdt))
    nodes["w_in"] = _rescaled_meta(nodes["w_in"], w_in, q) if model.n_in > 0 else w_in
    old_rec = nodes["w_rec"]
    if c == "nir":
        tau_y = dt_c / (1.0 - a_s)
        nodes["syn"] = nir.LI(tau=np.full(N, tau_y), r=np.full(N, k * a_s * cc / (1.0 - a_s)), v_leak=np.zeros(N))
    else:  # a discrete synapse: y' = a_s (y + k c J s), y fed back to itself through a self-loop
        nodes["w_rec"] = _rescaled_meta(old_rec, nir.Linear(weight=(J.astype(np.float64) * (k * cc * q)).astype(wdt)),
                                        k * cc * q)
        nodes["syn"] = nir.Linear(weight=np.diag(np.full(N, a_s)).astype(wdt))
        edges.append(("syn", "syn"))


def convert(nodes: dict, edges: list, spec: dict, model: Any, dt: float, consumer: str) -> dict:
    """Turn the spec graph's ``nodes``/``edges`` (modified in place) into the form of ``consumer``.

    Returns the metadata to record (``consumer``, ``consumer_dt``, ``run``, ``spike_shift``). Raises
    :class:`ConsumerRefusal` where the consumer cannot run the network exactly.
    """
    c = check_consumer(consumer)
    kind = spec["model_class"]
    what = {"SpikingRNN": "SpikingRNN", "BalancedNetwork": "BalancedNetwork", "Sequential": "nn.Sequential"}[kind]
    if kind == "SpikingRNN":
        what = f"SpikingRNN (neuron={spec['model']['neuron']!r}, reset={spec['model']['reset']!r})"
    _always_refused(c, what)
    if kind == "BalancedNetwork":
        _convert_balanced(nodes, edges, model, dt, c, what)
    else:
        _convert_layered(nodes, edges, spec, dt, c, what)
    order = _flow_order(nodes, edges)
    reordered = {k: nodes[k] for k in order}
    nodes.clear()
    nodes.update(reordered)  # nirtorch 2.6 traces nodes in dict order: a node fed only by delayed edges must come
    info = CONSUMERS[c]  # after its sources, or it gets a [1]-shaped placeholder at the first step
    return {"consumer": c, "consumer_dt": info.dt if info.dt is not None else dt, "consumer_version": info.version,
            "run": info.run, "spike_shift": spike_shift(nodes, edges) if c == "spyx" else {}}


def _flow_order(nodes: dict, edges: list) -> list[str]:
    """Nodes breadth-first from the Input node(s) along the edges, the rest after them."""
    order = [k for k, v in nodes.items() if isinstance(v, nir.Input)]
    seen = set(order)
    i = 0
    while i < len(order):
        for b in _succs(edges, order[i]):
            if b not in seen:
                seen.add(b)
                order.append(b)
        i += 1
    return order + [k for k in nodes if k not in seen]


def spike_shift(nodes: dict, edges: list) -> dict:
    """spyx's latency: spiking node -> its depth (1 for the first spiking layer on the path from the input)."""
    out: dict[str, int] = {}
    spiking = {k for k, v in nodes.items() if isinstance(v, (nir.LIF, nir.CubaLIF, nir.IF))}
    depth = {"input": 0}
    frontier = ["input"]
    while frontier:
        nxt = []
        for a in frontier:
            for b in _succs(edges, a):
                if b in depth:
                    continue
                depth[b] = depth[a] + (1 if b in spiking else 0)
                nxt.append(b)
        frontier = nxt
    for k in spiking:
        if k in depth:
            out[k] = depth[k]
    return out
