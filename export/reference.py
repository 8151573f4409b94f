"""An independent reference integrator of NIR graphs at a fixed time step.

It executes any graph of ``Input``, ``Output``, ``Affine``, ``Linear``, ``Scale``, ``LIF``, ``CubaLIF``,
``LI``, ``IF``, ``I`` and ``CubaLI`` nodes (nested ``NIRGraph`` nodes are inlined), written from the NIR
equations alone (it imports nothing from the rest of surroflos), in torch float64 on the CPU.

NIR equations (times in seconds, ``I`` the node's input)::

    LIF      tau dv/dt = (v_leak - v) + r I;                      spike z = [v > v_th], then v <- v_reset
    CubaLIF  tau_syn di/dt = -i + w_in I;  tau_mem dv/dt = (v_leak - v) + r i;   spike and reset as LIF
    LI       tau dv/dt = (v_leak - v) + r I                      (output: v)
    CubaLI   as CubaLIF without spikes                            (output: v)
    IF       dv/dt = r I;    spike and reset as LIF
    I        dv/dt = r I                                          (output: v)
    Affine   W I + b;   Linear   W I;   Scale   s * I

Signal convention (the one snnTorch's exporter uses): every edge carries one value per step, held
constant for the step; a spike is the value 1 during the step in which it is emitted (a pulse of height 1
and width dt, so it carries the charge ``dt``). Several edges into one node are summed. All states start
at zero (``v0="zero"``) or the membranes at ``v_leak`` (``v0="leak"``, Norse's convention).

Event order within a step, node by node in topological order::

    input -> (synaptic current) -> membrane -> threshold -> reset to v_reset -> output

Discretisations (``method``):

``"euler"`` (default) -- forward Euler with the step's input::

    LIF      v' = v + dt/tau (v_leak - v + r I)
    CubaLIF  i' = i + dt/tau_syn (-i + w_in I);   v' = v + dt/tau_mem (v_leak - v + r i')
    LI       v' = v + dt/tau (v_leak - v + r I)           IF / I   v' = v + dt r I
    then z = [v' > v_th] and v' <- v_reset where z (spiking nodes).

    With tau = dt / (1 - beta) and r = tau / dt this is snnTorch's ``v' = beta v + I``.

``"exact"`` -- the linear flow between steps is integrated exactly: held values are constant over the step,
spike trains (the outputs of spiking nodes, also after Affine/Linear/Scale nodes) arrive as impulses of
charge ``dt * z`` at the start of the step in which they are consumed, and the output of a leaky
integrator is passed on as the exact function of time within the step (a constant plus exponential
modes), so chains such as ``Linear -> LI -> LIF`` are integrated exactly. This is the discretisation of
:class:`surroflos.BalancedNetwork`. (An LI fed by a mode with its own time constant is not supported.)

Recurrence: the edges of a cycle that leave a spiking node carry the previous step's spikes (a one-step
delay: at step ``t`` they deliver what the node emitted at ``t - 1``, zeros at ``t = 0``), as in snnTorch's
``RLeaky`` and Norse's ``LIFRecurrentCell``. Any cycle without a spiking node is cut at a depth-first back
edge (same one-step delay). The other edges deliver the value computed in the same step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch

import nir

__all__ = ["simulate", "ReferenceResult", "flatten", "validate", "schedule", "node_sizes",
           "SUPPORTED_NODES", "SPIKING_NODES", "METHODS"]

SUPPORTED_NODES = ("Input", "Output", "Affine", "Linear", "Scale", "LIF", "CubaLIF", "LI", "IF", "I", "CubaLI")
SPIKING_NODES = ("LIF", "CubaLIF", "IF")
METHODS = ("euler", "exact")
F64 = torch.float64

# NIR parameter fields of each neuron node (all of one shape [N]).
_NEURON_FIELDS = {
    "LIF": ("tau", "r", "v_leak", "v_threshold", "v_reset"),
    "CubaLIF": ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in"),
    "LI": ("tau", "r", "v_leak"),
    "CubaLI": ("tau_syn", "tau_mem", "r", "v_leak", "w_in"),
    "IF": ("r", "v_threshold", "v_reset"),
    "I": ("r",),
}
_TAU_FIELDS = ("tau", "tau_syn", "tau_mem")


class _Pass:
    """An inlined subgraph's Input/Output node: passes its input on unchanged."""

    def __init__(self, size: int) -> None:
        self.size = size


def _kind(node: Any) -> str:
    return "Pass" if isinstance(node, _Pass) else type(node).__name__


# ----------------------------------------------------------------------------------------------
# Graph structure
# ----------------------------------------------------------------------------------------------


def flatten(graph: nir.NIRGraph) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Inline nested ``NIRGraph`` nodes: returns ``(nodes, edges)`` of one flat graph.

    A subgraph node ``s`` becomes its nodes named ``"s.<name>"``; its single ``Input`` and ``Output`` nodes
    become pass-through nodes that the outer edges into / out of ``s`` connect to.
    """
    if not isinstance(graph, nir.NIRGraph):
        raise TypeError(f"expected a nir.NIRGraph, got {type(graph).__name__}")
    nodes: dict[str, Any] = {}
    entry: dict[str, str] = {}  # subgraph name -> name of its inlined input
    exit_: dict[str, str] = {}
    edges: list[tuple[str, str]] = []
    for name, node in graph.nodes.items():
        if isinstance(node, nir.NIRGraph):
            sub_nodes, sub_edges = flatten(node)
            ins = [k for k, v in node.nodes.items() if isinstance(v, nir.Input)]
            outs = [k for k, v in node.nodes.items() if isinstance(v, nir.Output)]
            if len(ins) != 1 or len(outs) != 1:
                raise ValueError(f"subgraph node {name!r} must have exactly one Input and one Output node "
                                 f"to be inlined, found {len(ins)} and {len(outs)}")
            for k, v in sub_nodes.items():
                if k in ins:
                    v = _Pass(_io_size(v, "input", f"{name}.{k}"))
                elif k in outs:
                    v = _Pass(_io_size(v, "output", f"{name}.{k}"))
                nodes[f"{name}.{k}"] = v
            edges += [(f"{name}.{a}", f"{name}.{b}") for a, b in sub_edges]
            entry[name], exit_[name] = f"{name}.{ins[0]}", f"{name}.{outs[0]}"
        else:
            nodes[name] = node
    for a, b in graph.edges:
        if a not in graph.nodes or b not in graph.nodes:
            missing = a if a not in graph.nodes else b
            raise ValueError(f"edge ({a!r}, {b!r}) names node {missing!r}, which is not in the graph")
        edges.append((exit_.get(a, a), entry.get(b, b)))
    return nodes, edges


def _io_size(node: Any, port: str, name: str) -> int:
    types = node.input_type if port == "input" else node.output_type
    shape = np.asarray(list(types.values())[0]).reshape(-1)
    if shape.size != 1:
        raise ValueError(f"node {name!r} ({type(node).__name__}) has shape {shape.tolist()}; only flat "
                         "(one-dimensional) signals are supported")
    return int(shape[0])


def _param(node: Any, f: str, name: str) -> np.ndarray:
    a = getattr(node, f, None)
    if a is None:
        raise ValueError(f"node {name!r} ({type(node).__name__}) has no parameter {f!r}")
    return np.asarray(a)


def node_sizes(name: str, node: Any) -> tuple[int, int]:
    """``(input size, output size)`` of a supported node; ValueError naming the node otherwise."""
    kind = _kind(node)
    if kind == "Pass":
        return node.size, node.size
    if kind not in SUPPORTED_NODES:
        raise ValueError(f"node {name!r} has type {kind}, which the surroflos NIR tools do not support "
                         f"(supported: {', '.join(SUPPORTED_NODES)})")
    if kind == "Input":
        n = _io_size(node, "input", name)
        return n, n
    if kind == "Output":
        n = _io_size(node, "output", name)
        return n, n
    if kind in ("Affine", "Linear"):
        w = _param(node, "weight", name)
        if w.ndim != 2:
            raise ValueError(f"node {name!r} ({kind}) must have a 2-D weight [out, in], got shape {list(w.shape)}")
        if kind == "Affine":
            b = _param(node, "bias", name)
            if b.shape != (w.shape[0],):
                raise ValueError(f"node {name!r} (Affine): bias shape {list(b.shape)} does not match the weight's "
                                 f"{w.shape[0]} outputs")
        if not np.isfinite(w).all():
            raise ValueError(f"node {name!r} ({kind}) has non-finite weights")
        return int(w.shape[1]), int(w.shape[0])
    if kind == "Scale":
        s = _param(node, "scale", name).reshape(-1)
        return s.size, s.size
    shapes = {f: _param(node, f, name).shape for f in _NEURON_FIELDS[kind]}
    first = shapes[_NEURON_FIELDS[kind][0]]
    if len(first) != 1 or any(s != first for s in shapes.values()):
        raise ValueError(f"node {name!r} ({kind}): parameters must all be 1-D arrays of one shape [N], got "
                         + ", ".join(f"{f} {list(s)}" for f, s in shapes.items()))
    for f in _NEURON_FIELDS[kind]:
        a = _param(node, f, name).astype(np.float64)
        if not np.isfinite(a).all():
            raise ValueError(f"node {name!r} ({kind}): parameter {f} is not finite")
        if f in _TAU_FIELDS and not (a > 0).all():
            raise ValueError(f"node {name!r} ({kind}): time constant {f} must be positive")
    return int(first[0]), int(first[0])


def validate(graph: nir.NIRGraph) -> tuple[dict[str, Any], list[tuple[str, str]], dict[str, tuple[int, int]]]:
    """Check node types, parameter shapes and the sizes on every edge; returns the flat graph and sizes.

    Raises ValueError naming the offending node (unknown type, bad parameters) or edge (mismatched shapes).
    """
    nodes, edges = flatten(graph)
    sizes = {name: node_sizes(name, node) for name, node in nodes.items()}
    if not any(_kind(n) == "Input" for n in nodes.values()):
        raise ValueError("the graph has no Input node")
    if not any(_kind(n) == "Output" for n in nodes.values()):
        raise ValueError("the graph has no Output node")
    for a, b in edges:
        out_a, in_b = sizes[a][1], sizes[b][0]
        if out_a != in_b:
            raise ValueError(f"mismatched shapes on edge {a!r} -> {b!r}: node {a!r} ({_kind(nodes[a])}) outputs "
                             f"{out_a} values but node {b!r} ({_kind(nodes[b])}) takes {in_b}")
        if _kind(nodes[b]) == "Input":
            raise ValueError(f"edge {a!r} -> {b!r} points into the Input node {b!r}")
        if _kind(nodes[a]) == "Output":
            raise ValueError(f"edge {a!r} -> {b!r} leaves the Output node {a!r}")
    return nodes, edges, sizes


def _sccs(names: list[str], edges: list[tuple[str, str]]) -> dict[str, int]:
    """Strongly connected component id of every node (Tarjan, iterative)."""
    succ: dict[str, list[str]] = {n: [] for n in names}
    for a, b in edges:
        succ[a].append(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    comp: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    counter = 0
    for root in names:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on.add(v)
            recurse = False
            while i < len(succ[v]):
                w = succ[v][i]
                i += 1
                if w not in index:
                    work.append((v, i))
                    work.append((w, 0))
                    recurse = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if recurse:
                continue
            if low[v] == index[v]:
                cid = len(set(comp.values()))
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp[w] = cid
                    if w == v:
                        break
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return comp


def schedule(nodes: Mapping[str, Any], edges: list[tuple[str, str]]) -> tuple[list[str], set[tuple[str, str]]]:
    """Execution order and the set of delayed (recurrent) edges; see the module docstring."""
    names = list(nodes)
    comp = _sccs(names, edges)
    delayed = {(a, b) for a, b in edges if comp[a] == comp[b] and _kind(nodes[a]) in SPIKING_NODES}
    rest = [e for e in edges if e not in delayed]
    # Cycles left without a spiking node: cut them at depth-first back edges (inputs first).
    succ: dict[str, list[str]] = {n: [] for n in names}
    for a, b in rest:
        succ[a].append(b)
    state: dict[str, int] = {}
    roots = [n for n in names if _kind(nodes[n]) == "Input"] + names
    for root in roots:
        if root in state:
            continue
        state[root] = 1
        work = [(root, iter(succ[root]))]
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is None:
                state[v] = 2
                work.pop()
            elif state.get(w) == 1:
                delayed.add((v, w))
            elif w not in state:
                state[w] = 1
                work.append((w, iter(succ[w])))
    rest = [e for e in edges if e not in delayed]
    indeg = {n: 0 for n in names}
    for _, b in rest:
        indeg[b] += 1
    order: list[str] = []
    ready = [n for n in names if indeg[n] == 0]
    while ready:
        v = ready.pop(0)
        order.append(v)
        for a, b in rest:
            if a == v:
                indeg[b] -= 1
                if indeg[b] == 0:
                    ready.append(b)
    assert len(order) == len(names), "internal error: cycle left after cutting back edges"
    return order, delayed


# ----------------------------------------------------------------------------------------------
# Signals of the exact method: held value + impulse at the step start + exponential modes
# ----------------------------------------------------------------------------------------------


@dataclass
class _Sig:
    held: torch.Tensor  # [B, n], constant over the step
    imp: torch.Tensor  # [B, n], charge delivered at the step start
    modes: dict = field(default_factory=dict)  # tau (float) -> amplitude [B, n]: amp * exp(-s / tau)

    @staticmethod
    def zeros(batch: int, n: int) -> "_Sig":
        z = torch.zeros(batch, n, dtype=F64)
        return _Sig(z, z.clone(), {})

    def __add__(self, other: "_Sig") -> "_Sig":
        modes = dict(self.modes)
        for tau, amp in other.modes.items():
            modes[tau] = modes[tau] + amp if tau in modes else amp
        return _Sig(self.held + other.held, self.imp + other.imp, modes)

    def linear(self, W: torch.Tensor, b: Optional[torch.Tensor] = None) -> "_Sig":
        held = self.held @ W.T
        if b is not None:
            held = held + b
        return _Sig(held, self.imp @ W.T, {tau: a @ W.T for tau, a in self.modes.items()})

    def scale(self, s: torch.Tensor) -> "_Sig":
        return _Sig(self.held * s, self.imp * s, {tau: a * s for tau, a in self.modes.items()})

    def value(self, dt: float) -> torch.Tensor:
        """The value reported at the end of the step (a spike train's impulse as its height ``q / dt``)."""
        v = self.held + self.imp / dt
        for tau, amp in self.modes.items():
            v = v + amp * math.exp(-dt / tau)
        return v


def _leaky_profile(v0: torch.Tensor, sig: _Sig, tau: torch.Tensor, r: torch.Tensor, v_leak: torch.Tensor,
                   dt: float, name: str, *, want_profile: bool) -> tuple[torch.Tensor, Optional[_Sig]]:
    """Exact solution of ``tau v' = (v_leak - v) + r I(s)`` over one step: ``(v(dt), profile or None)``."""
    v0 = v0 + r * sig.imp / tau  # the impulse at the step start
    P = v_leak + r * sig.held
    A = v0 - P
    end = torch.zeros_like(v0)
    out_modes: dict = {}
    for tau_k, e in sig.modes.items():
        same = tau == tau_k
        denom = torch.where(same, torch.ones_like(tau), tau_k - tau)
        C = torch.where(same, torch.zeros_like(e), r * e * tau_k / denom)
        A = A - C
        end = end + C * math.exp(-dt / tau_k)
        if bool(same.any()):
            D = torch.where(same, r * e, torch.zeros_like(e))
            if want_profile and bool((D != 0).any()):
                raise NotImplementedError(
                    f"node {name!r}: exact integration of a leaky integrator driven by a mode with its own time "
                    f"constant ({tau_k} s) is not supported; use method='euler'")
            end = end + D * (dt / tau) * torch.exp(-dt / tau)
        if want_profile:
            out_modes[tau_k] = C
    decay = torch.exp(-dt / tau)
    end = end + P + A * decay
    if not want_profile:
        return end, None
    for u in torch.unique(tau).tolist():
        amp = torch.where(tau == u, A, torch.zeros_like(A))
        out_modes[u] = out_modes[u] + amp if u in out_modes else amp
    return end, _Sig(P, torch.zeros_like(P), out_modes)


# ----------------------------------------------------------------------------------------------
# Simulation
# ----------------------------------------------------------------------------------------------


@dataclass
class ReferenceResult:
    """What :func:`simulate` returns (all float64, time first).

    outputs: per Output node ``[T, B, n]``; spikes: per spiking node ``[T, B, N]``; membranes: per neuron
    node the membrane ``v`` after each step (after the reset) ``[T, B, N]``; order / delayed: the execution
    order and the delayed edges used.
    """

    outputs: dict[str, torch.Tensor]
    spikes: dict[str, torch.Tensor]
    membranes: dict[str, torch.Tensor]
    order: list[str]
    delayed: set

    @property
    def output(self) -> torch.Tensor:
        """The single Output node's trajectory (ValueError if the graph has several)."""
        if len(self.outputs) != 1:
            raise ValueError(f"the graph has {len(self.outputs)} Output nodes; use .outputs[name]")
        return next(iter(self.outputs.values()))


def _t(a: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=F64)


def simulate(graph: nir.NIRGraph, inputs: Union[torch.Tensor, np.ndarray, Mapping[str, Any]], dt: float, *,
             method: str = "euler", v0: str = "zero") -> ReferenceResult:
    """Run ``graph`` on ``inputs`` with time step ``dt`` (seconds); see the module docstring.

    Args:
        graph: the NIR graph (nested subgraphs are inlined).
        inputs: ``[T, B, n_in]`` for a graph with one Input node, or ``{input name: [T, B, n]}``.
        dt: time step in seconds.
        method: ``"euler"`` (default) or ``"exact"``.
        v0: initial membranes ``"zero"`` (default) or ``"leak"`` (``v_leak``, Norse's choice); synaptic
            currents start at zero.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if v0 not in ("zero", "leak"):
        raise ValueError(f"v0 must be 'zero' or 'leak', got {v0!r}")
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number of seconds, got {dt!r}")
    dt = float(dt)
    nodes, edges, sizes = validate(graph)
    order, delayed = schedule(nodes, edges)
    input_names = [n for n in nodes if _kind(nodes[n]) == "Input"]
    if not isinstance(inputs, Mapping):
        if len(input_names) != 1:
            raise ValueError(f"the graph has Input nodes {input_names}; pass inputs as a dict by name")
        inputs = {input_names[0]: inputs}
    xs: dict[str, torch.Tensor] = {}
    for name in input_names:
        if name not in inputs:
            raise ValueError(f"no inputs given for the Input node {name!r}")
        x = torch.as_tensor(inputs[name]).detach().to("cpu", F64)
        if x.ndim != 3 or x.shape[-1] != sizes[name][0]:
            raise ValueError(f"inputs for {name!r} must have shape [T, B, {sizes[name][0]}], got {tuple(x.shape)}")
        xs[name] = x
    shapes = {tuple(x.shape[:2]) for x in xs.values()}
    if len(shapes) != 1:
        raise ValueError(f"all inputs must share [T, B], got {sorted(shapes)}")
    T, B = shapes.pop()

    # Parameters as float64 tensors, states per node.
    params = {}
    state: dict[str, dict[str, torch.Tensor]] = {}
    for name, node in nodes.items():
        kind = _kind(node)
        if kind in _NEURON_FIELDS:
            p = {f: _t(getattr(node, f)) for f in _NEURON_FIELDS[kind]}
            params[name] = p
            n = sizes[name][1]
            v = p["v_leak"].expand(B, n).clone() if (v0 == "leak" and "v_leak" in p) else torch.zeros(B, n, dtype=F64)
            state[name] = {"v": v, "i": torch.zeros(B, n, dtype=F64)}
        elif kind in ("Affine", "Linear"):
            params[name] = {"W": _t(node.weight), "b": _t(node.bias) if kind == "Affine" else None}
        elif kind == "Scale":
            params[name] = {"s": _t(node.scale).reshape(-1)}

    preds: dict[str, list[tuple[str, bool]]] = {n: [] for n in nodes}
    for a, b in edges:
        preds[b].append((a, (a, b) in delayed))

    exact = method == "exact"
    zero = (lambda n: _Sig.zeros(B, n)) if exact else (lambda n: torch.zeros(B, n, dtype=F64))
    prev = {n: zero(sizes[n][1]) for n in nodes}
    outs = {n: [] for n in nodes if _kind(nodes[n]) == "Output"}
    spikes = {n: [] for n in nodes if _kind(nodes[n]) in SPIKING_NODES}
    membranes = {n: [] for n in nodes if _kind(nodes[n]) in _NEURON_FIELDS}
    for t in range(T):
        cur: dict[str, Any] = {}
        for name in order:
            node, kind = nodes[name], _kind(nodes[name])
            if kind == "Input":
                x = xs[name][t]
                cur[name] = _Sig(x, torch.zeros_like(x), {}) if exact else x
                continue
            inp = zero(sizes[name][0])
            for src, is_delayed in preds[name]:
                inp = inp + (prev[src] if is_delayed else cur[src])
            if exact:
                out = _exact_step(name, kind, inp, params.get(name), state.get(name), dt)
            else:
                out = _euler_step(kind, inp, params.get(name), state.get(name), dt)
            cur[name] = out
            if kind == "Output":
                outs[name].append(out.value(dt) if exact else out)
            if kind in SPIKING_NODES:
                spikes[name].append(state[name]["z"])
            if kind in _NEURON_FIELDS:
                membranes[name].append(state[name]["v"])
        prev = cur

    def stack(d: dict, n: dict) -> dict:
        return {k: torch.stack(v) if v else torch.zeros(0, B, n[k][1], dtype=F64) for k, v in d.items()}

    return ReferenceResult(stack(outs, sizes), stack(spikes, sizes), stack(membranes, sizes), order, delayed)


def _fire(st: dict, p: dict) -> torch.Tensor:
    """Threshold then reset (strict ``v > v_th``, as snnTorch and Norse); the spikes are the output."""
    z = (st["v"] > p["v_threshold"]).to(F64)
    st["v"] = torch.where(z > 0, p["v_reset"].expand_as(st["v"]), st["v"])
    st["z"] = z
    return z


def _euler_step(kind: str, x: torch.Tensor, p: Optional[dict], st: Optional[dict], dt: float) -> torch.Tensor:
    if kind in ("Output", "Pass"):
        return x
    if kind in ("Affine", "Linear"):
        y = x @ p["W"].T
        return y + p["b"] if p["b"] is not None else y
    if kind == "Scale":
        return x * p["s"]
    if kind in ("LIF", "LI"):
        st["v"] = st["v"] + dt / p["tau"] * (p["v_leak"] - st["v"] + p["r"] * x)
        return _fire(st, p) if kind == "LIF" else st["v"]
    if kind in ("CubaLIF", "CubaLI"):
        st["i"] = st["i"] + dt / p["tau_syn"] * (-st["i"] + p["w_in"] * x)
        st["v"] = st["v"] + dt / p["tau_mem"] * (p["v_leak"] - st["v"] + p["r"] * st["i"])
        return _fire(st, p) if kind == "CubaLIF" else st["v"]
    if kind in ("IF", "I"):
        st["v"] = st["v"] + dt * p["r"] * x
        return _fire(st, p) if kind == "IF" else st["v"]
    raise AssertionError(kind)  # pragma: no cover - validate() rejects other kinds


def _exact_step(name: str, kind: str, x: _Sig, p: Optional[dict], st: Optional[dict], dt: float) -> _Sig:
    if kind in ("Output", "Pass"):
        return x
    if kind in ("Affine", "Linear"):
        return x.linear(p["W"], p["b"])
    if kind == "Scale":
        return x.scale(p["s"])

    def spikes() -> _Sig:
        z = _fire(st, p)
        return _Sig(torch.zeros_like(z), dt * z, {})

    if kind in ("LIF", "LI"):
        st["v"], prof = _leaky_profile(st["v"], x, p["tau"], p["r"], p["v_leak"], dt, name,
                                       want_profile=kind == "LI")
        return spikes() if kind == "LIF" else prof
    if kind in ("CubaLIF", "CubaLI"):
        zero = torch.zeros_like(p["tau_syn"])
        st["i"], cur = _leaky_profile(st["i"], x, p["tau_syn"], p["w_in"], zero, dt, name, want_profile=True)
        st["v"], prof = _leaky_profile(st["v"], cur, p["tau_mem"], p["r"], p["v_leak"], dt, name,
                                       want_profile=kind == "CubaLI")
        return spikes() if kind == "CubaLIF" else prof
    if kind == "IF":
        v = st["v"] + p["r"] * (x.imp + x.held * dt)
        for tau_k, e in x.modes.items():
            v = v + p["r"] * e * tau_k * (1.0 - math.exp(-dt / tau_k))
        st["v"] = v
        return spikes()
    raise NotImplementedError(f"node {name!r}: method='exact' does not support {kind} nodes (their output is "
                              "not a constant plus exponentials within a step); use method='euler'")
