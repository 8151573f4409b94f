"""Hardware profiles for NIR graphs: checks against them, and post-training weight quantisation.

A NIR graph says *what* a network computes; a neuromorphic chip can only run graphs within its
limits (weight precision, node types, one threshold per layer, no biases, its reset modes, its
size). This module states those limits per target, checks a graph against them, quantises the
weights the way the chip stores them and measures what quantisation does to a trained network.

Targets (:data:`TARGETS`; every limit carries its source in :attr:`HardwareTarget.sources`, and a
limit we found no documentation for says ``"not documented"`` instead of a guess):

``generic``
    NIR itself: any node type, floating-point weights, biases, per-neuron parameters. NIR resets to
    ``v_reset`` only, so a subtract reset (kept in metadata by surroflos) is a warning.
``loihi2``
    Intel Loihi 2 through Lava / lava-dl: 8-bit weight mantissas with one power-of-two exponent per
    layer (Lava ``Dense``: ``num_weight_bits`` 8, ``weight_exp``), fixed-point neuron parameters,
    reset to zero, no biases and no ``v_leak``, one threshold and one set of decays per layer.
    No released package reads NIR for Loihi: neither lava-nc 0.10 nor lava-dl 0.6 has a NIR importer;
    the limits of the node set come from the NIR paper's conversion *script* ``paper/nir_to_lava.py``
    (not a package), the numeric limits from Lava's processes.
``spinnaker2``
    SpiNNaker2 through py-spinnaker2's NIR import: the weights into each population are scaled
    so that the largest is 127 (int8 ``[-127, 127]``); threshold and bias are scaled by the same
    factor; reset subtract or to zero; biases allowed.
``xylo``
    SynSense Xylo through Rockpool: 8-bit input, recurrent and readout weights, integer
    per-neuron thresholds, subtractive reset, up to 1000 hidden neurons, 16 input channels and 8
    outputs (Xylo Audio 2), and the node set Rockpool 3.1.0's ``from_nir`` converts *without
    crashing*: ``CubaLIF`` (alone or in a 4-node recurrent subgraph), ``Affine``, ``Linear`` and ``LI``
    (whose ``tau`` it casts to an integer); a ``nir.LIF`` node crashes it (it reads ``tau_mem``).
``speck``
    SynSense Speck through Sinabs (3.1.3, which pins ``nir<=1.0.4`` and cannot read files of nir 1.0.6+
    that carry ``v_reset`` or ``Input.input_type``; its ``from_nir`` skips ``nir.Linear``, so dense layers must
    be ``Affine``): integrate-and-fire (``IF``) layers behind convolutions or dense
    layers, 8-bit weights and biases, 16-bit state, one integer threshold per layer, reset to zero
    or subtract, feed-forward only, at most 1024 features per layer.

Quantisation (:func:`quantize_graph`, :func:`quantize_model`): symmetric, round to nearest, one scale
per layer, ``q = clip(round(W / s), -qmax, qmax)`` with ``qmax = 2**(bits-1) - 1`` and ``s`` chosen so
that the largest weight maps to ``qmax`` (rounded up to a power of two for ``loihi2``). The returned
graph holds the *dequantised* weights ``q s`` (so any NIR simulator runs what the chip computes) and
``quant_scale`` / ``quant_bits`` in each weight node's metadata; the integers themselves are in
:attr:`QuantizationInfo.integer_weights`.

How integer-weight chips are modelled: a chip stores ``q``, not ``q s``. Dividing every input of a
population by ``s`` divides its membrane by ``s`` (the dynamics are linear below threshold), so the
integer network uses ``q`` with *thresholds (and biases, ``v_leak``, ``v_reset``) rescaled by 1/s*
instead of weights scaled by ``s`` -- the same spikes. Hence, for the hardware targets, all weight
matrices that feed one population share one scale (a population has one threshold scale), and for
targets whose thresholds are integers (``loihi2``, ``xylo``, ``speck``) the thresholds and biases
of that population are also rounded onto its grid: ``theta' = round(theta / s) s``. ``generic``
quantises each weight matrix on its own and leaves thresholds and biases in floating point. The
finite precision of membrane state (16 bits on Speck, fixed point on Loihi) is not modelled.

:func:`evaluate_quantized` measures accuracy (``task.score``) and spike agreement with the float
model after quantisation, either by quantising the model's own weight tensors (``via="model"``, the
default for :class:`~surroflos.SpikingRNN`: exact, and independent of the NIR conversion) or through the
graph (``via="nir"``, the default for other models: ``to_nir`` -> :func:`quantize_graph` -> ``from_nir``).

Consumer forms (:func:`quantize_consumer_form`, ``evaluate_quantized(..., consumer=NAME)``): the quantised network in
the form one NIR consumer runs exactly (:mod:`surroflos.export.consumers`). The spec graph is quantised by the rules
above (the chip's grid is defined on the network: per population, thresholds in membrane units), then the consumer's
own conversion turns the quantised graph into its form -- the same conversion ``to_nir(..., consumer=NAME)`` applies
to the float graph. Quantising the form's graph instead would put the grid on the form's folded weights (Norse's
``1/(1 - beta)``, spyx's input scales), round thresholds on the wrong grid, and clip snnTorch's identity node, so
:func:`quantize_graph` refuses the Norse, snnTorch and spyx forms. A folded weight keeps its grid: its
``quant_scale`` is the population's scale times the fold (one per row where the fold differs between neurons). The
form then runs in the consumer's own importer (the machinery :func:`surroflos.export.verify` uses: Norse's and
snnTorch's ``from_nir`` here in float32, spyx in the environment ``make interop`` builds, ``"nir"`` in
:func:`surroflos.export.simulate`), and accuracy and spike agreement are measured against the float model, with the
consumer's agreement with the quantised network itself alongside.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from ..errors import UsageError

__all__ = [
    "HardwareTarget", "TARGETS", "get_target", "Issue", "check_graph", "format_issues",
    "QuantizationInfo", "LayerQuantization", "quantize_graph", "quantize_model", "quantize_array",
    "weight_bits_needed", "evaluate_quantized", "quantize_consumer_form", "load_run", "RunError", "SEVERITIES",
    "RESET_MODES",
]

SEVERITIES = ("error", "warning")
RESET_MODES = ("zero", "subtract")
BIAS_RULES = ("allowed", "warning", "forbidden")

# Every node type of NIR 1.0 (class names, as in the files).
ALL_NODE_TYPES = frozenset({
    "Input", "Output", "NIRGraph", "Affine", "Linear", "Scale", "Conv1d", "Conv2d", "SumPool2d", "AvgPool2d",
    "Flatten", "Delay", "Threshold", "I", "IF", "LI", "LIF", "CubaLI", "CubaLIF",
})
WEIGHT_TYPES = ("Affine", "Linear", "Conv1d", "Conv2d")
SPIKING_TYPES = ("LIF", "CubaLIF", "IF")  # neurons with a threshold
NEURON_TYPES = SPIKING_TYPES + ("LI", "CubaLI", "I")


# ----------------------------------------------------------------------------------------------
# Hardware profiles
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HardwareTarget:
    """The limits of one NIR consumer (a chip and the toolchain that maps NIR onto it).

    Attributes:
        name: key in :data:`TARGETS`.
        description: one line.
        weight_bits: signed weight precision; ``None`` = floating point (no limit).
        integer_weights: the chip stores integer weights, and thresholds/biases are rescaled by the
            weight scale of their population (see the module docstring).
        power_of_two_scale: the weight scale must be ``2**e`` (Loihi's shared ``weight_exp``).
        integer_thresholds: thresholds (and biases) are integers on the chip, so quantisation also
            rounds them onto the population's grid.
        single_threshold: one threshold per layer (all neurons of a node share it).
        shared_decays: one set of time constants per layer.
        bias: ``"allowed"``, ``"warning"`` (accepted with a caveat) or ``"forbidden"``.
        bias_bits: bias precision when biases are stored like weights (``None``: not limited here).
        v_leak_zero: ``v_leak`` must be 0.
        node_types: the NIR node types the toolchain converts.
        reset_modes: resets the chip implements (``"zero"``: to ``v_reset``; ``"subtract"``).
        reset_severity: severity of a reset it does not implement.
        recurrent: edge cycles (recurrent connections) allowed.
        max_neurons_per_layer, max_inputs, max_outputs, max_fan_in, max_layers, max_kernel: size
            limits (``None``: none documented).
        sources: where each limit comes from (``"not documented"`` where we found nothing).
    """

    name: str
    description: str
    weight_bits: Optional[int]
    integer_weights: bool
    power_of_two_scale: bool
    integer_thresholds: bool
    single_threshold: bool
    shared_decays: bool
    bias: str
    bias_bits: Optional[int]
    v_leak_zero: bool
    node_types: frozenset
    reset_modes: tuple
    reset_severity: str
    recurrent: bool
    max_neurons_per_layer: Optional[int]
    max_inputs: Optional[int]
    max_outputs: Optional[int]
    max_fan_in: Optional[int]
    max_layers: Optional[int]
    max_kernel: Optional[int]
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def qmax(self) -> Optional[int]:
        """Largest integer weight magnitude (symmetric range), or ``None`` for floating point."""
        return None if self.weight_bits is None else 2 ** (self.weight_bits - 1) - 1

    @property
    def weight_range(self) -> Optional[tuple]:
        """``(-qmax, qmax)``, or ``None`` for floating point."""
        q = self.qmax
        return None if q is None else (-q, q)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["node_types"] = sorted(self.node_types)
        d["reset_modes"] = list(self.reset_modes)
        d["weight_range"] = list(self.weight_range) if self.weight_range else None
        d["sources"] = dict(self.sources)
        return d


_ND = "not documented"

TARGETS: dict[str, HardwareTarget] = {
    "generic": HardwareTarget(
        name="generic", description="NIR itself (any NIR simulator): floating point, every node type",
        weight_bits=None, integer_weights=False, power_of_two_scale=False, integer_thresholds=False,
        single_threshold=False, shared_decays=False, bias="allowed", bias_bits=None, v_leak_zero=False,
        node_types=ALL_NODE_TYPES, reset_modes=("zero",), reset_severity="warning", recurrent=True,
        max_neurons_per_layer=None, max_inputs=None, max_outputs=None, max_fan_in=None, max_layers=None,
        max_kernel=None,
        sources={
            "node_types": "NIR 1.0 node set (package nir)",
            "reset_modes": "NIR neurons reset to v_reset; a subtract reset is surroflos metadata that other "
                           "importers ignore (SCIENCE.md section 6)",
            "weight_bits": "floating point (HDF5 arrays)",
        }),
    "loihi2": HardwareTarget(
        name="loihi2", description="Intel Loihi 2 via Lava / lava-dl (fixed point; no released package reads NIR)",
        weight_bits=8, integer_weights=True, power_of_two_scale=True, integer_thresholds=True,
        single_threshold=True, shared_decays=True, bias="forbidden", bias_bits=None, v_leak_zero=True,
        node_types=frozenset({"Input", "Output", "Affine", "Linear", "Conv2d", "SumPool2d", "Flatten", "IF",
                              "LIF", "CubaLIF", "NIRGraph"}),
        reset_modes=("zero",), reset_severity="error", recurrent=True,
        max_neurons_per_layer=None, max_inputs=None, max_outputs=None, max_fan_in=None, max_layers=None,
        max_kernel=None,
        sources={
            "weight_bits": "Lava Dense process: num_weight_bits, 'default is for weights to use full 8 bit "
                           "precision', one shared base-2 weight_exp per process",
            "power_of_two_scale": "Lava Dense weight_exp: 'shared weight exponent of base 2'",
            "integer_thresholds": "Lava fixed-point LIF (vth mantissa; NIR paper nir_to_lava.py fixed_pt)",
            "bias": "SCIENCE.md section 6 (bias 0 on the lava-dl path); NIR paper nir_to_lava.py: 'Non-zero "
                    "bias not supported by Lava' (Affine, Lava path), 'bias not supported in lava-dl' (Conv2d)",
            "v_leak_zero": "NIR paper nir_to_lava.py (lava-dl CubaLIF): 'v_leak not supported'",
            "single_threshold": "NIR paper nir_to_lava.py: IF and CubaLIF 'v_thr must be same for all neurons'",
            "shared_decays": "NIR paper nir_to_lava.py: CubaLIF 'cur_decay/vol_decay must be same for all neurons'",
            "node_types": "the NIR paper's script paper/nir_to_lava.py (a script in the NIR paper's repository, "
                          "not a package: lava-nc 0.10 and lava-dl 0.6 have no NIR importer): Lava path Affine, "
                          "LIF; lava-dl path Affine, Linear, Conv2d, SumPool2d, Flatten, IF, CubaLIF and recurrent "
                          "CubaLIF subgraphs (LIF 'not implemented yet in lava-dl')",
            "reset_modes": "Lava LIF process docstring: 'v[t] = 0  # reset at spike' (early Lava tutorials "
                           "subtracted vth); the lava-dl CUBA neuron's reset was not checked",
            "max_neurons_per_layer": _ND, "max_fan_in": _ND, "max_inputs": _ND, "max_outputs": _ND,
        }),
    "spinnaker2": HardwareTarget(
        name="spinnaker2", description="SpiNNaker2 via py-spinnaker2's NIR import (int8 weights)",
        weight_bits=8, integer_weights=True, power_of_two_scale=False, integer_thresholds=False,
        single_threshold=False, shared_decays=False, bias="allowed", bias_bits=None, v_leak_zero=False,
        node_types=frozenset({"Input", "Output", "Affine", "Linear", "Conv2d", "SumPool2d", "Flatten", "IF",
                              "LIF", "CubaLIF"}),
        reset_modes=("subtract", "zero"), reset_severity="error", recurrent=True,
        max_neurons_per_layer=None, max_inputs=None, max_outputs=None, max_fan_in=None, max_layers=None,
        max_kernel=None,
        sources={
            "weight_bits": "SCIENCE.md section 6 (weights scaled to [-127, 127]); py-spinnaker2 s2_nir: "
                           "w_scale = 127 / max|w| over the weights into each population",
            "integer_weights": "py-spinnaker2 s2_nir: threshold and i_offset multiplied by the same w_scale",
            "integer_thresholds": "thresholds stay real numbers (scaled, not rounded) in s2_nir",
            "bias": "py-spinnaker2 s2_nir: Affine/Conv biases accumulated into i_offset",
            "reset_modes": "SCIENCE.md section 6 (reset subtract or zero); s2_nir ConversionConfig.reset",
            "node_types": "py-spinnaker2 s2_nir: LIF, IF, CubaLIF, Input, Output, Affine, Linear, Conv2d, "
                          "SumPool2d, Flatten",
            "max_neurons_per_layer": _ND, "max_fan_in": _ND, "max_inputs": _ND, "max_outputs": _ND,
        }),
    "xylo": HardwareTarget(
        name="xylo", description="SynSense Xylo via Rockpool (8-bit weights, subtractive reset)",
        weight_bits=8, integer_weights=True, power_of_two_scale=False, integer_thresholds=True,
        single_threshold=False, shared_decays=False, bias="warning", bias_bits=None, v_leak_zero=False,
        node_types=frozenset({"Input", "Output", "Affine", "Linear", "LI", "CubaLIF", "NIRGraph"}),
        reset_modes=("subtract",), reset_severity="error", recurrent=True,
        max_neurons_per_layer=1000, max_inputs=16, max_outputs=8, max_fan_in=None, max_layers=None,
        max_kernel=None,
        sources={
            "weight_bits": "Rockpool docs, 'Overview of the Xylo family': 8-bit input, recurrent and readout "
                           "weights",
            "integer_thresholds": "Rockpool docs: digital LIF neurons with per-neuron thresholds (bit width "
                                  "not documented there)",
            "single_threshold": "Rockpool docs: 'independently chosen time constants and thresholds per neuron'",
            "reset_modes": "Rockpool docs: 'Subtractive reset'",
            "bias": "Rockpool nir.py from_nir: 'Affine biases are not supported in recurrent LIF modules' "
                    "(warned and dropped); neuron biases come from v_leak",
            "node_types": "Rockpool 3.1.0 rockpool/nn/modules/torch/nir.py from_nir: Input, Output, Affine, Linear, "
                          "LI (tau cast to int), CubaLIF and 4-node recurrent CubaLIF subgraphs; its nir.LIF branch "
                          "reads node.tau_mem, which nir.LIF does not have, and crashes (measured: docs/INTEROP.md); "
                          "which of these Rockpool's Xylo mapper deploys was not checked",
            "max_neurons_per_layer": "Rockpool docs: up to 1000 hidden neurons (Xylo Audio 2)",
            "max_inputs": "Rockpool docs: up to 16 input channels",
            "max_outputs": "Rockpool docs: up to 8 readout neurons (Xylo Audio 2)",
            "max_fan_in": _ND,
        }),
    "speck": HardwareTarget(
        name="speck", description="SynSense Speck via Sinabs (IAF layers, one threshold per layer)",
        weight_bits=8, integer_weights=True, power_of_two_scale=False, integer_thresholds=True,
        single_threshold=True, shared_decays=True, bias="allowed", bias_bits=8, v_leak_zero=True,
        node_types=frozenset({"Input", "Output", "Affine", "Conv2d", "SumPool2d", "Flatten", "IF"}),
        reset_modes=("zero", "subtract"), reset_severity="error", recurrent=False,
        max_neurons_per_layer=1024, max_inputs=None, max_outputs=None, max_fan_in=None, max_layers=9,
        max_kernel=16,
        sources={
            "weight_bits": "Sinabs discretize.py: DYNAPCNN_WEIGHT_PRECISION_BITS = 8 (weights and biases); "
                           "samna Speck 2b: 'Weight resolution 8 bit'",
            "integer_thresholds": "Sinabs discretize.py: weights, bias and thresholds share one scale; "
                                  "DYNAPCNN_STATE_PRECISION_BITS = 16",
            "single_threshold": "SCIENCE.md section 6; Sinabs DynapcnnConfigBuilder: one threshold_high per layer",
            "reset_modes": "Sinabs DynapcnnConfigBuilder: MembraneReset -> return_to_zero, MembraneSubtract",
            "node_types": "sinabs 3.1.3 nir.py from_nir (Affine, Conv1d/2d, LI, IF, LIF, SumPool2d, Flatten; "
                          "nir.Linear is skipped) and discretize.py (spiking layers on the chip must be IAF); sinabs "
                          "pins nir<=1.0.4, which cannot read nir 1.0.8 files (docs/INTEROP.md)",
            "v_leak_zero": "Sinabs nir.py from_nir: '`v_leak` must be 0'",
            "recurrent": "Sinabs maps a feed-forward chain of layers onto the CNN cores (DynapcnnConfigBuilder)",
            "max_neurons_per_layer": "samna Speck 2b: 'Max feature number 1024'",
            "max_layers": "samna Speck 2b: 9 convolutional layers",
            "max_kernel": "samna Speck 2b: 'Max kernel size 16*16'; Sinabs: square kernels only",
            "max_fan_in": _ND,
        }),
}


def get_target(target: Union[str, HardwareTarget]) -> HardwareTarget:
    """The profile named ``target`` (or ``target`` itself); :class:`ValueError` for unknown names."""
    if isinstance(target, HardwareTarget):
        return target
    if not isinstance(target, str):
        raise TypeError(f"target must be a name or a HardwareTarget, got {type(target).__name__}")
    try:
        return TARGETS[target]
    except KeyError:
        raise ValueError(f"unknown target {target!r}; known targets: {', '.join(TARGETS)}") from None


# ----------------------------------------------------------------------------------------------
# Graph helpers
# ----------------------------------------------------------------------------------------------


def _nir():
    import nir

    return nir


def _check_graph_type(graph) -> None:
    nir = _nir()
    if not isinstance(graph, nir.NIRGraph):
        raise TypeError(f"expected a nir.NIRGraph, got {type(graph).__name__}")


def _walk(graph, prefix: str = "") -> Iterator[tuple]:
    """``(path, node, parent_graph)`` for every node, depth first into subgraphs."""
    nir = _nir()
    for name, node in graph.nodes.items():
        path = f"{prefix}{name}"
        yield path, node, graph
        if isinstance(node, nir.NIRGraph):
            yield from _walk(node, path + ".")


def _ntype(node) -> str:
    return type(node).__name__


def _arr(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _meta_str(v: Any) -> Any:
    return v.decode("utf8") if isinstance(v, bytes) else v


_RESET_KEYS = ("reset", "reset_mode", "reset_mechanism")


def _reset_mode(node, graph) -> tuple:
    """``(mode, where)``: the node's reset from its metadata, else the graph's, else NIR's own (zero)."""
    for md, where in ((getattr(node, "metadata", None) or {}, "node metadata"),
                      (getattr(graph, "metadata", None) or {}, "graph metadata")):
        for k in _RESET_KEYS:
            if k in md:
                return str(_meta_str(md[k])).lower(), where
    return "zero", "NIR semantics: reset to v_reset"


def _source_reset(graph) -> Optional[str]:
    """The reset of the model a surroflos export came from (its ``metadata["surroflos"]`` JSON), if known."""
    raw = (getattr(graph, "metadata", None) or {}).get("surroflos")
    try:
        spec = json.loads(_meta_str(raw)) if isinstance(raw, (str, bytes)) else None
    except (TypeError, ValueError):
        return None
    model = spec.get("model") if isinstance(spec, dict) else None
    reset = model.get("reset") if isinstance(model, dict) else None
    return str(reset) if reset is not None else None


def _size(shape) -> int:
    try:
        return int(np.prod(np.asarray(shape, dtype=np.int64)))
    except (TypeError, ValueError):
        return 0


def _node_size(node) -> int:
    """Number of neurons (or channels) a node outputs."""
    out = getattr(node, "output_type", None) or {}
    if out:
        n = _size(next(iter(out.values())))
        if n:
            return n
    for attr in ("v_threshold", "tau", "tau_mem", "r"):
        if hasattr(node, attr):
            return int(np.size(getattr(node, attr)))
    return 0


def _flow_order(graph) -> list:
    """Node names in the order signals reach them (breadth first from the Input nodes), then the rest;
    files read back list them alphabetically."""
    succ: dict = {}
    for a, b in graph.edges:
        succ.setdefault(a, []).append(b)
    queue = [n for n, node in graph.nodes.items() if type(node).__name__ == "Input"]
    seen = list(dict.fromkeys(queue))
    while queue:
        for m in succ.get(queue.pop(0), ()):
            if m not in seen:
                seen.append(m)
                queue.append(m)
    return seen + [n for n in graph.nodes if n not in seen]


def _has_cycle(graph) -> bool:
    succ: dict = {}
    for a, b in graph.edges:
        succ.setdefault(a, []).append(b)
    state: dict = {}  # 1: on the stack, 2: done

    def visit(n) -> bool:
        state[n] = 1
        for m in succ.get(n, ()):
            s = state.get(m)
            if s == 1 or (s is None and visit(m)):
                return True
        state[n] = 2
        return False

    return any(state.get(n) is None and visit(n) for n in list(graph.nodes))


def weight_bits_needed(weight, scale: Optional[float] = None, *, max_bits: int = 16) -> Optional[int]:
    """Smallest signed bit width that holds ``weight`` exactly on a symmetric integer grid.

    With ``scale`` (e.g. the ``quant_scale`` that :func:`quantize_graph` stores; one value per row for a weight
    whose rows a consumer form rescaled differently) the grid is ``scale * Z``. Without, integer-valued weights are
    their own grid, and otherwise the per-layer grid ``max|W| / qmax`` is tried for 2..``max_bits`` bits. ``None``:
    not on any such grid (floating point). Tolerances allow for the weights having been stored as float32.
    """
    w = _arr(weight)
    if w.size == 0 or not np.all(np.isfinite(w)):
        return None
    m = float(np.max(np.abs(w)))
    if m == 0.0:
        return 1

    def bits_for(qm: float) -> int:
        return int(math.ceil(math.log2(qm + 1.0))) + 1

    if scale is not None:
        sc = _arr(scale)
        if sc.size > 1:  # per row
            if w.ndim < 1 or sc.size != w.shape[0]:
                return None
            sc = sc.reshape((-1,) + (1,) * (w.ndim - 1))
        else:
            sc = sc.reshape(())
    if scale is not None and np.all(sc > 0):
        q = w / sc
        qm = float(np.max(np.abs(q)))
        if np.max(np.abs(q - np.round(q))) <= 1e-6 * max(1.0, qm) + 1e-3:
            return bits_for(float(np.max(np.abs(np.round(q)))))
        return None
    if np.all(w == np.round(w)):
        return bits_for(m)
    for b in range(2, max_bits + 1):
        q = w * ((2 ** (b - 1) - 1) / m)
        if np.max(np.abs(q - np.round(q))) <= 1e-6 * (2 ** (b - 1)) + 1e-3:
            return b
    return None


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issue:
    """One way a graph does not fit a target: ``node`` (path, ``""`` for the whole graph), ``rule``,
    ``detail`` and ``severity`` (``"error"``: the toolchain refuses it or changes the computation;
    ``"warning"``: it runs, with a caveat)."""

    node: str
    rule: str
    detail: str
    severity: str = "error"

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        where = self.node or "<graph>"
        return f"{self.severity}: {where}: [{self.rule}] {self.detail}"


def check_graph(graph, target: Union[str, HardwareTarget]) -> list:
    """Check a NIR graph against a hardware profile; returns the :class:`Issue` list (empty: it fits).

    Rules: ``node_type``, ``weight_bits`` (error when the weights need more bits than the target has;
    warning for floating-point weights that its toolchain will quantise), ``bias``, ``v_leak``,
    ``threshold_per_layer``, ``shared_decays``, ``reset``, ``recurrent``, ``max_neurons``,
    ``max_inputs``, ``max_outputs``, ``max_fan_in``, ``max_layers``, ``kernel``. Subgraphs are checked
    too (node paths ``"sub.node"``).
    """
    _check_graph_type(graph)
    t = get_target(target)
    nir = _nir()
    issues: list[Issue] = []
    add = lambda node, rule, detail, sev="error": issues.append(Issue(node, rule, detail, sev))  # noqa: E731

    graphs = [("", graph)] + [(p, n) for p, n, _ in _walk(graph) if isinstance(n, nir.NIRGraph)]
    if not t.recurrent:
        for path, g in graphs:
            if _has_cycle(g):
                add(path, "recurrent", f"the graph has recurrent edges (a cycle); {t.name} runs feed-forward "
                    f"networks only")
    n_layers = 0
    for path, node, parent in _walk(graph):
        kind = _ntype(node)
        if kind not in t.node_types:
            add(path, "node_type", f"{kind} nodes are not supported by {t.name} (supported: "
                f"{', '.join(sorted(t.node_types))})")
        if kind in WEIGHT_TYPES:
            w = _arr(node.weight)
            md = getattr(node, "metadata", None) or {}
            scale = md.get("quant_scale")
            bits = weight_bits_needed(w, scale)
            if t.weight_bits is not None:
                if bits is None:
                    add(path, "weight_bits", f"floating-point weights (|w| <= {np.max(np.abs(w)):.4g}); {t.name} "
                        f"stores {t.weight_bits}-bit integers, so its toolchain will quantise them: measure the "
                        f"effect with quantize_graph / surroflos export --quantize", "warning")
                elif bits > t.weight_bits:
                    add(path, "weight_bits", f"weights need {bits} bits, {t.name} has {t.weight_bits} "
                        f"(range {list(t.weight_range)})")
            fan_in = int(np.prod(w.shape[1:])) if w.ndim >= 2 else 0
            if t.max_fan_in is not None and fan_in > t.max_fan_in:
                add(path, "max_fan_in", f"fan-in {fan_in} > {t.max_fan_in}")
            bias = getattr(node, "bias", None)
            if bias is not None and np.any(_arr(bias) != 0):
                if t.bias == "forbidden":
                    add(path, "bias", f"non-zero bias (|b| <= {np.max(np.abs(_arr(bias))):.4g}); {t.name} needs "
                        f"bias 0")
                elif t.bias == "warning":
                    add(path, "bias", f"non-zero bias: {t.sources.get('bias', 'may be dropped')}", "warning")
            if kind == "Conv2d" and t.max_kernel is not None:
                k = tuple(int(s) for s in w.shape[2:])
                if len(set(k)) > 1 or max(k) > t.max_kernel:
                    add(path, "kernel", f"kernel {k}: {t.name} needs square kernels up to {t.max_kernel}")
        if kind in NEURON_TYPES:
            n_layers += 1
            n = _node_size(node)
            if t.max_neurons_per_layer is not None and n > t.max_neurons_per_layer:
                add(path, "max_neurons", f"{n} neurons > {t.max_neurons_per_layer} per layer")
            if t.v_leak_zero and hasattr(node, "v_leak") and np.any(_arr(node.v_leak) != 0):
                add(path, "v_leak", f"non-zero v_leak; {t.name} needs v_leak = 0")
            if t.shared_decays:
                for attr in ("tau", "tau_mem", "tau_syn"):
                    if hasattr(node, attr) and np.unique(_arr(getattr(node, attr))).size > 1:
                        add(path, "shared_decays", f"{attr} differs between neurons; {t.name} has one per layer")
        if kind in SPIKING_TYPES:
            th = np.unique(_arr(node.v_threshold))
            if t.single_threshold and th.size > 1:
                add(path, "threshold_per_layer", f"{th.size} different thresholds in one layer "
                    f"({th.min():.4g}..{th.max():.4g}); {t.name} has one threshold per layer")
            mode, where = _reset_mode(node, parent)
            if mode not in t.reset_modes:
                detail = f"reset {mode!r} ({where}); {t.name} implements {' or '.join(t.reset_modes)}"
                if t.name == "generic":
                    detail += ": importers that ignore the metadata reset to v_reset instead"
                source = _source_reset(graph)
                if source is not None and source != mode:
                    detail += f" (the exported model itself resets by {source!r})"
                add(path, "reset", detail, t.reset_severity)
        if kind == "Input" and t.max_inputs is not None:
            n = _size(node.input_type.get("input", ()))
            if n > t.max_inputs:
                add(path, "max_inputs", f"{n} input channels > {t.max_inputs}")
        if kind == "Output" and t.max_outputs is not None:
            n = _size(node.output_type.get("output", ()))
            if n > t.max_outputs:
                add(path, "max_outputs", f"{n} outputs > {t.max_outputs}")
    if t.max_layers is not None and n_layers > t.max_layers:
        add("", "max_layers", f"{n_layers} neuron layers > {t.max_layers}")
    return issues


def format_issues(issues: Sequence[Issue], target: Union[str, HardwareTarget, None] = None) -> str:
    """A readable list (errors first), or a line saying the graph fits."""
    name = get_target(target).name if target is not None else "the target"
    if not issues:
        return f"fits {name}: no issues"
    errors = sum(i.severity == "error" for i in issues)
    lines = [f"{name}: {errors} error(s), {len(issues) - errors} warning(s)"]
    for i in sorted(issues, key=lambda i: SEVERITIES.index(i.severity)):
        lines.append(f"  {i}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Quantisation
# ----------------------------------------------------------------------------------------------


def _check_bits(bits, t: HardwareTarget) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    bits = int(bits)
    if not 2 <= bits <= 32:
        raise ValueError(f"bits must lie in [2, 32], got {bits}")
    if t.weight_bits is not None and bits > t.weight_bits:
        raise ValueError(f"{t.name} stores {t.weight_bits}-bit weights; bits={bits} is more than it has")
    return bits


def _scale_for(max_abs: float, qmax: int, power_of_two: bool) -> float:
    """Per-layer scale: the largest weight maps to qmax (a power of two at or above that for Loihi)."""
    if not (max_abs > 0.0) or not math.isfinite(max_abs):
        return 1.0
    s = max_abs / qmax
    if power_of_two:
        s = 2.0 ** math.ceil(math.log2(s))
    return s


def quantize_array(w, scale: float, qmax: int) -> tuple:
    """``(q, w_hat)``: ``q = clip(round(w / scale), -qmax, qmax)`` (int64) and ``w_hat = q * scale`` in
    ``w``'s dtype (computed in float64). Ties round half to even (numpy's rule)."""
    a = np.asarray(w)
    q = np.clip(np.round(a.astype(np.float64) / scale), -qmax, qmax).astype(np.int64)
    w_hat = (q.astype(np.float64) * scale).astype(a.dtype if np.issubdtype(a.dtype, np.floating) else np.float64)
    return q, w_hat


def _round_on_grid(x, scale: float, *, keep_positive: bool = False) -> np.ndarray:
    """``round(x / scale) * scale``; with ``keep_positive`` a positive value (a threshold) stays at least one
    step, since a zero threshold would fire on any input."""
    a = np.asarray(x)
    k = np.round(a.astype(np.float64) / scale)
    if keep_positive:
        k = np.where(a > 0, np.maximum(k, 1.0), k)
    return (k * scale).astype(a.dtype if np.issubdtype(a.dtype, np.floating) else np.float64)


@dataclass
class LayerQuantization:
    """Quantisation of one weight matrix: its scale, group (layers sharing the scale) and errors."""

    name: str
    shape: tuple
    group: str
    scale: float
    qmax: int
    max_abs_weight: float
    max_abs_error: float
    mean_abs_error: float
    n_clipped: int = 0
    bias_max_abs_error: Optional[float] = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class QuantizationInfo:
    """What :func:`quantize_graph` / :func:`quantize_model` did.

    ``layers``: one :class:`LayerQuantization` per weight matrix; ``thresholds``: per population, the
    scale its thresholds were rounded onto and the largest threshold change (only for targets with
    integer thresholds); ``integer_weights``: the integer matrices ``q`` (not in :meth:`to_dict`);
    ``rescaled_thresholds``: whether the integer network divides thresholds by the scale instead of
    multiplying weights by it (all hardware targets; see the module docstring).
    """

    target: str
    bits: int
    per_layer: bool
    qmax: int
    power_of_two_scale: bool
    rescaled_thresholds: bool
    layers: list = field(default_factory=list)
    thresholds: dict = field(default_factory=dict)
    integer_weights: dict = field(default_factory=dict, repr=False)

    @property
    def max_abs_error(self) -> float:
        return max((l.max_abs_error for l in self.layers), default=0.0)

    def to_dict(self) -> dict:
        return {"target": self.target, "bits": self.bits, "per_layer": self.per_layer, "qmax": self.qmax,
                "power_of_two_scale": self.power_of_two_scale, "rescaled_thresholds": self.rescaled_thresholds,
                "layers": [l.to_dict() for l in self.layers], "thresholds": dict(self.thresholds),
                "max_abs_error": self.max_abs_error}

    def table(self) -> str:
        head = f"{'layer':<24} {'shape':<12} {'group':<14} {'scale':>11} {'max|w|':>9} {'max err':>10} {'mean err':>10}"
        rows = [f"quantisation for {self.target}: {self.bits}-bit symmetric, "
                f"{'per-layer' if self.per_layer else 'one global'} scale"
                f"{' (powers of two)' if self.power_of_two_scale else ''}", head, "-" * len(head)]
        for l in self.layers:
            rows.append(f"{l.name:<24} {'x'.join(map(str, l.shape)):<12} {l.group:<14} {l.scale:>11.4g} "
                        f"{l.max_abs_weight:>9.4g} {l.max_abs_error:>10.3g} {l.mean_abs_error:>10.3g}")
        for pop, d in self.thresholds.items():
            rows.append(f"thresholds of {pop}: rounded onto scale {d['scale']:.4g}, max change "
                        f"{d['max_abs_change']:.3g}")
        return "\n".join(rows)


def _layer_record(name, group, w, q, w_hat, scale, qmax) -> LayerQuantization:
    a = np.asarray(w, dtype=np.float64)
    err = np.abs(np.asarray(w_hat, dtype=np.float64) - a)
    raw = np.abs(a) / scale
    return LayerQuantization(name=name, shape=tuple(int(s) for s in a.shape), group=group, scale=float(scale),
                             qmax=int(qmax), max_abs_weight=float(np.max(np.abs(a))) if a.size else 0.0,
                             max_abs_error=float(err.max()) if a.size else 0.0,
                             mean_abs_error=float(err.mean()) if a.size else 0.0,
                             n_clipped=int(np.sum(raw > qmax + 0.5)))


def _groups(graph, names: list, t: HardwareTarget, per_layer: bool) -> dict:
    """Weight node -> group key. Hardware targets: the neuron population it feeds (one threshold scale
    per population); generic: itself; ``per_layer=False``: one group."""
    if not per_layer:
        return {n: "all" for n in names}
    if not t.integer_weights:
        return {n: n for n in names}
    succ: dict = {}
    for a, b in graph.edges:
        succ.setdefault(a, []).append(b)
    out = {}
    for n in names:
        neurons = [m for m in succ.get(n, ()) if _ntype(graph.nodes[m]) in NEURON_TYPES]
        out[n] = neurons[0] if len(neurons) == 1 else n
    return out


def quantize_graph(graph, target: Union[str, HardwareTarget] = "generic", *, bits: int = 8,
                   per_layer: bool = True) -> tuple:
    """Quantise every weight matrix of a NIR graph to ``bits``-bit symmetric integers.

    Args:
        graph: a ``nir.NIRGraph`` (not modified; subgraphs are quantised level by level).
        target: a name in :data:`TARGETS` or a :class:`HardwareTarget`; decides which matrices share a
            scale, whether scales are powers of two and whether thresholds/biases are rounded too (see
            the module docstring). ``bits`` may not exceed the target's weight precision.
        bits: weight precision (2..32); ``qmax = 2**(bits-1) - 1``.
        per_layer: one scale per layer (per population on hardware targets); ``False``: one scale for
            the whole graph.

    Returns:
        ``(quantised graph, QuantizationInfo)``. The graph holds the dequantised weights ``q * scale``
        (same dtype), and thresholds/biases on the population grid for integer-threshold targets;
        weight nodes get ``quant_scale``, ``quant_bits`` and ``quant_group`` metadata, and the graph
        ``quant_target``, ``quant_bits``, ``quant_per_layer``. Weights already on the grid come back
        unchanged; otherwise each weight moves by at most ``scale / 2``.

    A graph that is surroflos's ``norse``, ``snntorch`` or ``spyx`` form (or the balanced network's ``nir`` form) is
    refused with a ValueError: its weights carry the consumer's folds, not the chip's; use
    :func:`quantize_consumer_form`.
    """
    _check_graph_type(graph)
    t = get_target(target)
    bits = _check_bits(bits, t)
    _refuse_consumer_form(graph)
    qmax = 2 ** (bits - 1) - 1
    nir = _nir()
    out = copy.deepcopy(graph)
    info = QuantizationInfo(target=t.name, bits=bits, per_layer=bool(per_layer), qmax=qmax,
                            power_of_two_scale=t.power_of_two_scale, rescaled_thresholds=t.integer_weights)
    levels = [("", out)] + [(p + ".", n) for p, n, _ in _walk(out) if isinstance(n, nir.NIRGraph)]
    global_max = max((float(np.max(np.abs(_arr(n.weight)))) for _, n, _ in _walk(out)
                      if _ntype(n) in WEIGHT_TYPES and np.size(n.weight)), default=0.0)
    for prefix, g in levels:
        names = [n for n in _flow_order(g) if _ntype(g.nodes[n]) in WEIGHT_TYPES]
        groups = _groups(g, names, t, per_layer)
        scales = {}
        for key in set(groups.values()):
            members = [n for n in names if groups[n] == key]
            m = global_max if not per_layer else max(float(np.max(np.abs(_arr(g.nodes[n].weight))))
                                                       if np.size(g.nodes[n].weight) else 0.0 for n in members)
            scales[key] = _scale_for(m, qmax, t.power_of_two_scale)
        for n in names:
            node, key = g.nodes[n], groups[n]
            s = scales[key]
            q, w_hat = quantize_array(node.weight, s, qmax)
            rec = _layer_record(prefix + n, prefix + key, node.weight, q, w_hat, s, qmax)
            node.weight = w_hat
            if t.integer_thresholds and getattr(node, "bias", None) is not None:
                b = np.asarray(node.bias)
                b_hat = _round_on_grid(b, s)
                if t.bias_bits is not None:  # biases stored like weights (Speck): clip to their range
                    bq = 2 ** (t.bias_bits - 1) - 1
                    b_hat = np.clip(b_hat, -bq * s, bq * s).astype(b_hat.dtype)
                rec.bias_max_abs_error = float(np.max(np.abs(b_hat - b))) if b.size else 0.0
                node.bias = b_hat
            node.metadata = dict(node.metadata or {}, quant_scale=float(s), quant_bits=int(bits),
                                 quant_group=prefix + key)
            info.layers.append(rec)
            info.integer_weights[prefix + n] = q
        if t.integer_thresholds:
            for key, s in scales.items():
                node = g.nodes.get(key)
                if node is None or _ntype(node) not in NEURON_TYPES:
                    continue
                change = 0.0
                for attr in ("v_threshold", "v_leak", "v_reset"):
                    v = getattr(node, attr, None)
                    if v is None:
                        continue
                    v_hat = _round_on_grid(v, s, keep_positive=attr == "v_threshold")
                    if attr == "v_threshold":
                        change = float(np.max(np.abs(v_hat - np.asarray(v, dtype=np.float64)))) if np.size(v) else 0.0
                    setattr(node, attr, v_hat)
                node.metadata = dict(node.metadata or {}, quant_scale=float(s))
                _sync_exact_threshold(node)
                info.thresholds[prefix + key] = {"scale": float(s), "max_abs_change": change}
    out.metadata = dict(out.metadata or {}, quant_target=t.name, quant_bits=int(bits),
                        quant_per_layer=bool(per_layer))
    return out, info


def _refuse_consumer_form(graph) -> None:
    """A surroflos consumer form whose conversion folded gains into the weights or added structural nodes (Norse,
    snnTorch, spyx; the balanced network's ``nir`` form) cannot be quantised as a graph: its weights are not the
    chip's (see the module docstring). ValueError naming what to do instead."""
    md = getattr(graph, "metadata", None) or {}
    consumer = _meta_str(md.get("consumer")) if _meta_str(md.get("generator")) == "surroflos" else None
    if consumer is None:
        return
    model_class = _meta_str(md.get("model_class"))
    if consumer == "nir" and model_class != "BalancedNetwork":
        return  # the nir form of a layered network is the spec graph
    raise ValueError(f"this graph is the {consumer!r} form of a {model_class}, whose weights carry the consumer's "
                     "folded gains (or structural identity nodes): quantising it would put the grid on those. "
                     f"Quantise the network instead: quantize_consumer_form(model, dt, {consumer!r}, target) "
                     f"(command line: surroflos export --consumer {consumer} --quantize), or quantize_graph of the "
                     "spec graph to_nir(model, dt)")


def _sync_exact_threshold(node) -> None:
    """surroflos's ``to_nir`` keeps the model's exact threshold in ``node.metadata["surroflos"]`` so that
    ``from_nir`` restores it bit for bit; after rounding the threshold, store the rounded one there too (in
    the original dtype and shape), or ``from_nir`` would bring the unquantised value back."""
    exact = (node.metadata or {}).get("surroflos")
    if not isinstance(exact, dict) or "threshold" not in exact:
        return
    old = np.asarray(exact["threshold"])
    new = np.asarray(node.v_threshold)
    if old.size == 1:
        val = new.reshape(-1)[0].astype(old.dtype)
        new_exact = val if np.ndim(exact["threshold"]) == 0 else np.full(old.shape, val, dtype=old.dtype)
    elif old.size == new.size:
        new_exact = new.reshape(old.shape).astype(old.dtype)
    else:
        return
    node.metadata = dict(node.metadata, surroflos=dict(exact, threshold=new_exact))


# ----------------------------------------------------------------------------------------------
# Quantising a model's own tensors (the same rules as quantize_graph)
# ----------------------------------------------------------------------------------------------


def _model_layers(model) -> list:
    """``(name, weight tensor, bias tensor or None, group)`` of a surroflos spiking network, grouped as
    ``quantize_graph`` groups the graph ``to_nir`` makes of it: input and recurrent weights feed the
    hidden population, the readout its own layer."""
    from ..models import SpikingRNN

    if not isinstance(model, SpikingRNN):
        raise TypeError(f"quantize_model supports SpikingRNN (lif, cuba) networks, got {type(model).__name__}")
    return [("weight_in", model.weight_in, model.bias, "hidden"),
            ("weight_rec", model.weight_rec, None, "hidden"),
            ("readout", model.readout_layer.weight, model.readout_layer.bias, "readout")]


def quantize_model(model, target: Union[str, HardwareTarget] = "generic", *, bits: int = 8,
                   per_layer: bool = True) -> tuple:
    """Quantise a :class:`~surroflos.SpikingRNN`'s weights in a copy of it, by :func:`quantize_graph`'s rules.

    Groups: ``weight_in`` and ``weight_rec`` share the hidden population's scale on hardware targets
    (each its own on ``generic``); the readout has its own. On integer-threshold targets the hidden
    threshold and bias (and the readout bias) are rounded onto their grid. Returns ``(model copy,
    QuantizationInfo)``; ``model`` itself is not changed.
    """
    import torch

    t = get_target(target)
    bits = _check_bits(bits, t)
    qmax = 2 ** (bits - 1) - 1
    layers = _model_layers(model)
    qmodel = copy.deepcopy(model)
    qlayers = _model_layers(qmodel)
    info = QuantizationInfo(target=t.name, bits=bits, per_layer=bool(per_layer), qmax=qmax,
                            power_of_two_scale=t.power_of_two_scale, rescaled_thresholds=t.integer_weights)

    def np_(x):
        return x.detach().cpu().numpy()

    if not per_layer:
        groups = {name: "all" for name, *_ in layers}
    elif t.integer_weights:
        groups = {name: g for name, _, _, g in layers}
    else:
        groups = {name: name for name, *_ in layers}
    maxes: dict = {}
    for name, w, _, _ in layers:
        maxes[groups[name]] = max(maxes.get(groups[name], 0.0), float(np.max(np.abs(np_(w)))) if w.numel() else 0.0)
    scales = {k: _scale_for(m, qmax, t.power_of_two_scale) for k, m in maxes.items()}
    with torch.no_grad():
        for (name, w, b, _), (_, qw, qb, _) in zip(layers, qlayers):
            s = scales[groups[name]]
            q, w_hat = quantize_array(np_(w), s, qmax)
            rec = _layer_record(name, groups[name], np_(w), q, w_hat, s, qmax)
            qw.copy_(torch.from_numpy(w_hat).to(qw.dtype))
            if t.integer_thresholds and qb is not None:
                b_np = np_(b)
                b_hat = _round_on_grid(b_np, s)
                if t.bias_bits is not None:
                    bq = 2 ** (t.bias_bits - 1) - 1
                    b_hat = np.clip(b_hat, -bq * s, bq * s).astype(b_hat.dtype)
                rec.bias_max_abs_error = float(np.max(np.abs(b_hat - b_np))) if b_np.size else 0.0
                qb.copy_(torch.from_numpy(b_hat).to(qb.dtype))
            info.layers.append(rec)
            info.integer_weights[name] = q
        if t.integer_thresholds:
            key = groups["weight_in"]
            s = scales[key]
            th = np_(qmodel.threshold)
            th_hat = _round_on_grid(th, s, keep_positive=True)
            qmodel.threshold.copy_(torch.from_numpy(np.asarray(th_hat)).to(qmodel.threshold.dtype))
            info.thresholds[key] = {"scale": float(s), "max_abs_change": float(np.max(np.abs(th_hat - th)))}
    return qmodel, info


# ----------------------------------------------------------------------------------------------
# Consumer forms of the quantised network
# ----------------------------------------------------------------------------------------------


def _quantized_consumer_forms(model, dt: float, consumer: str, t: HardwareTarget, bits: int, per_layer: bool,
                              metadata: Optional[dict] = None) -> tuple:
    """``(float form, quantised form, quantised spec graph, QuantizationInfo, quantised network)``.

    The float form first, so that a consumer that refuses the network refuses before any work
    (:class:`~surroflos.export.consumers.ConsumerRefusal`). The quantised network is ``from_nir`` of the quantised
    spec graph (bit for bit the quantised weights and rounded thresholds)."""
    import warnings
    from types import SimpleNamespace

    from . import consumers as cons
    from .from_nir import from_nir
    from .to_nir import NIRExportWarning, NIRImportWarning, _consumer_graph, metadata_of, to_nir

    c = cons.check_consumer(consumer)
    if c is None:
        raise ValueError("consumer must name a NIR consumer (the spec graph is quantised by quantize_graph)")
    fform = to_nir(model, dt, consumer=c, metadata=metadata)
    with warnings.catch_warnings():  # a spec graph that NIR's neurons cannot express exactly (spyx's subtract
        warnings.simplefilter("ignore", NIRExportWarning)  # reset) is still the network the form is made from
        warnings.simplefilter("ignore", NIRImportWarning)
        spec = to_nir(model, dt, metadata=metadata)
        qspec, info = quantize_graph(spec, t, bits=bits, per_layer=per_layer)
        qnet = from_nir(qspec, dt)
    smeta = metadata_of(qspec)
    if smeta["model_class"] == "BalancedNetwork":
        th = _arr(qspec.nodes["lif"].v_threshold)
        if np.any(th != 1.0):
            raise ValueError(f"{t.name} rounds the BalancedNetwork's threshold onto its weight grid ({th.min():.6g}), "
                             "and the balanced network's forms fix it at 1: use target 'generic' or 'spinnaker2' "
                             "(thresholds in floating point)")
    smeta["mismatch"] = None
    b = SimpleNamespace(nodes=copy.deepcopy(dict(qspec.nodes)), edges=[tuple(e) for e in qspec.edges])
    qform = _consumer_graph(qnet, b, smeta, float(dt), c)
    qform.metadata = dict(qform.metadata, quant_target=t.name, quant_bits=int(bits), quant_per_layer=bool(per_layer))
    return fform, qform, qspec, info, qnet


def quantize_consumer_form(model, dt: float, consumer: str, target: Union[str, HardwareTarget] = "generic", *,
                           bits: Optional[int] = None, per_layer: bool = True,
                           metadata: Optional[dict] = None) -> tuple:
    """The quantised network in the form ``consumer`` runs exactly: ``(graph, QuantizationInfo)``.

    ``to_nir(model, dt)`` is quantised by :func:`quantize_graph`'s rules for ``target`` (``bits``: default the
    target's precision, 8 for ``generic``; ``per_layer``), then turned into ``consumer``'s form by the conversion
    ``to_nir(model, dt, consumer=consumer)`` applies (see the module docstring). The graph's metadata is that form's
    (``metadata_of(graph)["consumer"]``) plus ``quant_target``, ``quant_bits`` and ``quant_per_layer``; each weight
    node that holds quantised weights keeps ``quant_scale`` (its population's scale times the form's fold, per row
    where the fold differs between neurons), ``quant_bits`` and ``quant_group``. ``metadata``: as in ``to_nir``.

    Raises :class:`~surroflos.export.consumers.ConsumerRefusal` where the consumer cannot run the network exactly
    (the same refusal as ``to_nir``), ValueError for an unknown consumer or a bad ``bits``.
    """
    t = get_target(target)
    bits = _check_bits((t.weight_bits or 8) if bits is None else bits, t)
    _, qform, _, info, _ = _quantized_consumer_forms(model, dt, consumer, t, bits, per_layer, metadata)
    return qform, info


def _run_consumer(consumer: str, graph, gx, T: int) -> tuple:
    """``(outputs [T, B, n_out], {spiking node: spikes [T, B, N]}, version)`` of ``graph`` (a consumer form) run in
    ``consumer``'s own importer, the way :func:`surroflos.export.verify` runs it: ``"nir"`` in the reference
    integrator, Norse and snnTorch here (float32), spyx through ``make interop``'s environment. spyx emits spiking
    layer ``k``'s spikes ``k`` steps late: the input gets ``max k`` steps of zeros appended and each layer is read
    ``k`` steps on, so all ``T`` steps are compared."""
    import torch

    from .to_nir import metadata_of
    from .verify import EXTERNAL, _external, _NotApplicable, _NotInstalled, _version, simulate_with

    form = metadata_of(graph)["consumer"]
    shift = {k: int(v) for k, v in (form.get("spike_shift") or {}).items()}
    K = max(shift.values(), default=0)
    x = gx.detach().to("cpu", torch.float64)
    if K:
        x = torch.cat([x, x.new_zeros((K,) + tuple(x.shape[1:]))])
    cdt = float(form["consumer_dt"])
    version = _version(consumer) if consumer != "nir" else None
    if consumer in EXTERNAL:
        try:
            out, spikes, version, _ = _external(consumer, graph, x, cdt)
        except _NotApplicable as err:
            raise ValueError(f"{consumer} does not apply to this graph: {err}") from None
        except _NotInstalled as err:
            raise ValueError(f"{consumer} is not installed: {err}") from None
    else:
        out, spikes = simulate_with("reference" if consumer == "nir" else consumer, graph, x, cdt)
    out = out[K:K + T]
    spikes = {k: v[shift.get(k, 0):shift.get(k, 0) + T] for k, v in spikes.items()}
    return out, spikes, version


def _agreement(a: dict, b: dict) -> tuple:
    """``(fraction of identical spikes over the nodes of a, first differing step or None, per node)``; a node of
    ``a`` missing from ``b`` or of another shape is an error."""
    import torch

    same = total = 0
    first = None
    per = {}
    for k, x in a.items():
        if k not in b:
            raise ValueError(f"the consumer recorded no spikes for node {k!r} (it recorded {sorted(b)})")
        y = b[k].to(x.device, torch.float64)
        if tuple(y.shape) != tuple(x.shape):
            raise ValueError(f"node {k!r}: the consumer's spikes have shape {tuple(y.shape)}, ours {tuple(x.shape)}")
        eq = x.to(torch.float64) == y
        same += int(eq.sum())
        total += eq.numel()
        per[k] = float(eq.to(torch.float64).mean()) if eq.numel() else 1.0
        bad = (~eq).reshape(eq.shape[0], -1).any(dim=1).nonzero()
        if bad.numel():
            first = int(bad[0, 0]) if first is None else min(first, int(bad[0, 0]))
    return (same / total if total else 1.0), first, per


def _evaluate_consumer(model, task, x, y, m, dt: float, t: HardwareTarget, bits: int, per_layer: bool,
                       consumer: str) -> dict:
    """evaluate_quantized's ``consumer=`` part (see there)."""
    import torch

    from .to_nir import graph_inputs, metadata_of, run_model

    fform, qform, _, info, qnet = _quantized_consumer_forms(model, dt, consumer, t, bits, per_layer)
    qnet.eval()
    T = int(x.shape[0])
    gx = graph_inputs(model, x)
    with torch.no_grad():
        out_f, spk_f = run_model(model, x)
        out_n, spk_n = run_model(qnet, x.to("cpu", next(qnet.parameters()).dtype))
    out_c0, spk_c0, _ = _run_consumer(consumer, fform, gx, T)
    out_q, spk_q, version = _run_consumer(consumer, qform, gx, T)

    def score(out):
        return float(task.score(out.to(device=y.device, dtype=out_f.dtype), y, m))

    agree, first, per = _agreement(spk_f, spk_q)
    agree_net, first_net, _ = _agreement(spk_n, spk_q)
    conv, _, _ = _agreement(spk_f, spk_c0)
    score_f, score_q = float(task.score(out_f, y, m)), score(out_q)
    acc = task.metric == "accuracy"
    form = metadata_of(qform)["consumer"]
    grid = {k: (n.metadata or {}).get("quant_scale") for k, n in qform.nodes.items()
            if _ntype(n) in WEIGHT_TYPES and "quant_scale" in (n.metadata or {})}
    rate = lambda spk: float(sum(float(v.to(torch.float64).sum()) for v in spk.values()) /  # noqa: E731
                             max(1, sum(v.numel() for v in spk.values())))
    return {
        "via": "consumer", "consumer": consumer, "consumer_version": version, "consumer_dt": float(form["consumer_dt"]),
        "consumer_run": form["run"], "spike_shift": dict(form.get("spike_shift") or {}),
        "metric": task.metric, "higher_is_better": bool(task.higher_is_better),
        "score_float": score_f, "score_quantized": score_q,
        "accuracy_float": score_f if acc else None, "accuracy": score_q if acc else None,
        "spike_agreement": agree, "per_node_agreement": per, "first_divergence_step": first,
        "output_max_abs_error": float((out_q.to(torch.float64) - out_f.detach().cpu().to(torch.float64)).abs().max()),
        "rate_float": rate(spk_f), "rate_quantized": rate(spk_q),
        "score_quantized_network": score(out_n),
        "consumer_agreement": agree_net, "consumer_first_divergence_step": first_net,
        "conversion_agreement": conv, "score_float_consumer": score(out_c0),
        "n_trials": int(x.shape[1]), "T": T,
        "quantization": dict(info.to_dict(), form_quant_scales={
            k: (v.tolist() if isinstance(v, np.ndarray) else float(v)) for k, v in grid.items()}),
    }


# ----------------------------------------------------------------------------------------------
# Runs and evaluation
# ----------------------------------------------------------------------------------------------


class RunError(UsageError):
    """A run folder that cannot be loaded (missing, no checkpoint, unsupported model)."""


def load_run(run_dir: Union[str, os.PathLike], *, device: str = "cpu") -> tuple:
    """``(model, task, cfg)`` of a ``surroflos train`` run folder: the configuration from
    ``config.json``, the network rebuilt with :func:`surroflos.train.build_model` and the weights of
    ``checkpoint.pt``. Raises :class:`RunError` with a clear message when something is missing."""
    import torch

    from ..checkpoint import load_checkpoint
    from ..train import DTYPES, ConfigError, TrainConfig, build_model, load_weights, validate

    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise RunError(f"run folder {run_dir!r} does not exist (train one with: surroflos train --out {run_dir})")
    cfg_path = os.path.join(run_dir, "config.json")
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")
    if not os.path.exists(cfg_path):
        raise RunError(f"{run_dir!r} is not a surroflos train run: no config.json")
    if not os.path.exists(ckpt_path):
        raise RunError(f"no checkpoint.pt in {run_dir!r}: the run has not completed an epoch yet "
                       f"(continue it with: surroflos train --out {run_dir} --resume)")
    try:
        with open(cfg_path) as f:
            raw = json.load(f)
        cfg = TrainConfig.from_dict(raw["config"] if "config" in raw else raw)
        task = validate(cfg)
    except (json.JSONDecodeError, KeyError, TypeError, ConfigError) as e:
        raise RunError(f"cannot read {cfg_path}: {e}") from e
    dtype = DTYPES[cfg.dtype]
    model = build_model(cfg, task, torch.device(device), dtype)
    # Safe loading (no pickled code runs); a damaged, foreign or unsafe file is a CheckpointError.
    ck = load_checkpoint(ckpt_path, required=("model",), map_location=device)
    load_weights(model, ck["model"], ckpt_path)
    model.eval()
    return model, task, cfg


def _validation_set(task, cfg, dtype):
    """The run's fixed validation trials (exactly those ``surroflos train`` scores every epoch)."""
    import torch

    from .. import train as tr

    gen = torch.Generator().manual_seed(tr._seed(cfg.seed, tr._SEED_EVAL))
    return tr._sample(task, cfg.eval_batch, gen, torch.device("cpu"), dtype)


def _activity(model, x):
    if not hasattr(model, "rollout"):
        raise TypeError(f"{type(model).__name__} has no rollout(); cannot read its spikes")
    r = model.rollout(x)
    return r.outputs, r.activity


def _export_fn(name: str):
    """A function of the surroflos.export API (written alongside this module)."""
    import importlib

    pkg = importlib.import_module("surroflos.export")
    obj = getattr(pkg, name, None)
    if obj is not None and not callable(obj):  # the submodule of the same name, not re-exported
        obj = getattr(obj, name, None)
    if obj is None:
        raise ImportError(f"surroflos.export.{name} is not available")
    return obj


def evaluate_quantized(source, dt: float, target: Union[str, HardwareTarget] = "generic", *, bits: Optional[int] = None,
                       per_layer: bool = True, via: str = "auto", n_trials: Optional[int] = None,
                       seed: int = 0, consumer: Optional[str] = None) -> dict:
    """Accuracy and spike agreement of a trained network before and after weight quantisation.

    Args:
        source: a ``surroflos train`` run folder (its validation trials are used, as in training), or a
            ``(model, task)`` pair (``n_trials`` trials drawn with ``seed``; default 256).
        dt: seconds per step, for the NIR graph (``via="nir"``); checked either way.
        target: hardware profile (decides grouping, power-of-two scales, threshold rounding).
        bits: weight bits (default: the target's precision, 8 for ``generic``).
        per_layer: per-layer (per-population) scales, else one global scale.
        via: ``"model"``: quantise the model's weight tensors directly (:func:`quantize_model`), which
            isolates the effect of quantisation; ``"nir"``: ``to_nir`` -> :func:`quantize_graph` ->
            ``from_nir``, i.e. what a simulator reading the quantised file runs (then
            ``conversion_agreement`` reports ``from_nir`` of the float graph against the model);
            ``"auto"`` (default): ``"model"`` for a :class:`~surroflos.SpikingRNN`, ``"nir"`` otherwise.
        n_trials: use only the first ``n_trials`` trials.
        seed: generator seed for the ``(model, task)`` form.
        consumer: ``None`` (default): as above. A consumer name (``"nir"``, ``"norse"``, ``"snntorch"``, ``"spyx"``):
            the quantised network in that consumer's form (:func:`quantize_consumer_form`) run in the consumer's own
            importer (``via`` must be ``"auto"`` or ``"nir"``; the result's ``via`` is ``"consumer"``); its outputs
            are scored and its spikes compared with the float model. Also returned: ``consumer_agreement`` (the
            consumer's spikes against the quantised network run by surroflos: 1.0 where the consumer runs exactly
            what quantisation made; Norse, snnTorch and spyx compute in float32, and a membrane within rounding of
            the threshold -- an exact tie where the target rounds thresholds onto the weight grid and the inputs are
            integers -- can be settled otherwise), ``score_quantized_network``, ``conversion_agreement`` /
            ``score_float_consumer`` (the consumer on the float form), ``consumer_version``, ``consumer_dt``,
            ``spike_shift``, ``per_node_agreement``. A consumer that cannot run the network exactly raises
            :class:`~surroflos.export.consumers.ConsumerRefusal`; one that is not installed, ValueError.

    Returns:
        dict with ``metric``, ``score_float``, ``score_quantized``, ``accuracy_float`` /
        ``accuracy`` (the same scores when the metric is accuracy, else ``None``),
        ``spike_agreement`` (fraction of identical spikes, all steps x trials x neurons),
        ``first_divergence_step`` (first step with a differing spike, ``None`` if none),
        ``output_max_abs_error``, firing rates, sizes, and ``quantization`` (per-layer errors).
    """
    import torch

    t = get_target(target)
    if not (isinstance(dt, (int, float)) and not isinstance(dt, bool) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number of seconds, got {dt!r}")
    if via not in ("auto", "model", "nir"):
        raise ValueError(f"via must be 'auto', 'model' or 'nir', got {via!r}")
    if consumer is not None:
        from .consumers import check_consumer

        check_consumer(consumer)
        if via == "model":
            raise ValueError(f"via='model' runs the quantised tensors in surroflos; consumer={consumer!r} runs the "
                             "quantised graph in its own importer: use via='auto' (or 'nir') with a consumer")
    bits = (t.weight_bits or 8) if bits is None else bits
    if isinstance(source, (str, os.PathLike)):
        model, task, cfg = load_run(source)
        dtype = next(model.parameters()).dtype
        x, y, m = _validation_set(task, cfg, dtype)
    elif isinstance(source, (tuple, list)) and len(source) == 2:
        model, task = source
        dtype = next(model.parameters()).dtype
        gen = torch.Generator().manual_seed(int(seed))
        x, y, m = task.sample(256 if n_trials is None else int(n_trials), generator=gen, dtype=dtype)
        device = next(model.parameters()).device
        x, y, m = x.to(device), y.to(device), m.to(device)
    else:
        raise TypeError("source must be a run folder or a (model, task) pair")
    if n_trials is not None:
        if isinstance(n_trials, bool) or int(n_trials) < 1:
            raise ValueError(f"n_trials must be a positive int, got {n_trials!r}")
        x, y, m = x[:, :n_trials], y[:, :n_trials], m[:, :n_trials]
    if consumer is not None:
        bits = _check_bits(bits, t)
        was_training = model.training
        model.eval()
        try:
            res = _evaluate_consumer(model, task, x, y, m, float(dt), t, bits, per_layer, consumer)
        finally:
            model.train(was_training)
        return dict({"target": t.name, "bits": int(bits), "per_layer": bool(per_layer), "dt": float(dt)}, **res)
    if via == "auto":
        from ..models import SpikingRNN

        via = "model" if isinstance(model, SpikingRNN) else "nir"
    was_training = model.training
    model.eval()
    result: dict[str, Any] = {"target": t.name, "bits": int(bits), "per_layer": bool(per_layer), "dt": float(dt)}
    result["via"] = via
    with torch.no_grad():
        out_f, spk_f = _activity(model, x)
        if via == "model":
            qmodel, info = quantize_model(model, t, bits=bits, per_layer=per_layer)
        else:
            to_nir, from_nir = _export_fn("to_nir"), _export_fn("from_nir")
            graph = to_nir(model, dt)
            qgraph, info = quantize_graph(graph, t, bits=bits, per_layer=per_layer)
            fmodel = from_nir(graph, dt)
            qmodel = from_nir(qgraph, dt)
            _, spk_c = _activity(fmodel, x)
            result["conversion_agreement"] = float((spk_c == spk_f).to(torch.float64).mean()) \
                if spk_c.shape == spk_f.shape else None
        qmodel.eval()
        out_q, spk_q = _activity(qmodel, x)
    model.train(was_training)
    if spk_q.shape != spk_f.shape:
        raise ValueError(f"the quantised model's spikes have shape {tuple(spk_q.shape)}, the float model's "
                         f"{tuple(spk_f.shape)}")
    same = spk_q == spk_f
    differ_t = (~same).reshape(same.shape[0], -1).any(dim=1).nonzero()
    score_f, score_q = float(task.score(out_f, y, m)), float(task.score(out_q, y, m))
    acc = task.metric == "accuracy"
    result.update({
        "metric": task.metric, "higher_is_better": bool(task.higher_is_better),
        "score_float": score_f, "score_quantized": score_q,
        "accuracy_float": score_f if acc else None, "accuracy": score_q if acc else None,
        "spike_agreement": float(same.to(torch.float64).mean()),
        "first_divergence_step": int(differ_t[0, 0]) if differ_t.numel() else None,
        "output_max_abs_error": float((out_q - out_f).abs().max()),
        "rate_float": float(spk_f.to(torch.float64).mean()), "rate_quantized": float(spk_q.to(torch.float64).mean()),
        "n_trials": int(x.shape[1]), "T": int(x.shape[0]),
        "quantization": info.to_dict(),
    })
    return result
