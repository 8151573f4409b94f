"""Cross-check an exported network in other simulators.

:func:`verify` exports a model with :func:`~surroflos.export.to_nir`, runs the same input through

- ``"ours"``: the model itself (the baseline every other simulator is compared with),
- ``"reference"``: :func:`surroflos.export.reference.simulate` on the exported graph, with the discretisation
  and initial membranes recorded in its metadata,
- ``"snntorch"``: ``snntorch.import_nir.import_from_nir`` (snnTorch 1.0),
- ``"norse"``: ``norse.torch.from_nir(graph, dt=dt)`` (Norse 1.1),
- ``"nirtorch"``: ``nirtorch.nir_to_torch`` (nirtorch 2.6's graph interpreter) with node modules that step
  NIR's Euler equations (those of the reference; so this checks nirtorch's wiring, summation and delays),

and reports per simulator the fraction of identical hidden spikes (over every hidden neuron, time step and
batch element), the first step at which any spike differs, and the largest output difference, or
``"not applicable: <reason>"`` / ``"failed: <error>"``.

Known conventions of the importers (measured and asserted in ``tests/test_export.py``):

- snnTorch assumes ``dt = 1e-4`` s (``beta = 1 - 1e-4/tau``; the threshold is divided by ``r 1e-4 / tau``),
  ``v_leak = 0``, resets to zero at once (``reset_delay=False``) and runs in float32. So it reproduces a graph
  exported at ``dt = 1e-4``; exported at another ``dt`` it follows the reference at ``dt = 1e-4``. Its
  importer rebuilds a recurrent cycle ``lif <-> w_rec`` as a subgraph ``Input -> w_rec -> lif`` that applies
  ``w_rec`` to the external input as well as to the fed-back spikes; it has no ``LI`` node.
- Norse ignores ``r`` on ``LIF`` (and has no ``LI`` node; an ``LI`` node makes the graph not applicable),
  starts membranes at ``v_leak`` and runs in float32: with ``fold_r(graph)`` it follows the Euler reference.
- nirtorch's interpreter delays the edge *into* the neuron (``w_rec -> lif``, zeros at the first step) where
  the reference delays the spikes (``lif -> w_rec``); the two agree unless the recurrent edge has a bias
  (an ``Affine``), which nirtorch then misses at the first step. Its default ``Affine`` mapping leaves the bias
  unset, so :func:`verify` supplies its own. Graphs with ``discretisation="exact"`` (BalancedNetwork) are not
  applicable: the node modules step Euler's equations.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

import nir

from . import reference as ref
from .to_nir import _compare_spikes, _model_device, _model_dtype, graph_inputs, metadata_of, run_model, to_nir

__all__ = ["verify", "VerificationReport", "SimulatorResult", "SIMULATORS", "simulate_with", "NOTES"]

SIMULATORS = ("ours", "reference", "snntorch", "norse", "nirtorch")

NOTES = {
    "ours": "the model itself (baseline)",
    "reference": "NIR's equations (surroflos.export.reference)",
    "snntorch": "snnTorch 1.0 import_from_nir: dt fixed at 1e-4 s, v_leak = 0, immediate zero reset, float32; "
                "rebuilds a recurrent cycle as Input -> w_rec -> lif (w_rec also applied to the input)",
    "norse": "Norse 1.1 from_nir(dt=dt): ignores r on LIF (see fold_r), membranes start at v_leak, float32, no LI",
    "nirtorch": "nirtorch 2.6 nir_to_torch with Euler node modules: delays the edge into the neuron "
                "(a recurrent Affine bias is missing at the first step)",
}


class _NotApplicable(Exception):
    pass


@dataclass
class SimulatorResult:
    """One simulator's agreement with ``ours``.

    ``status`` is ``"ok"``, ``"not applicable: <reason>"`` or ``"failed: <error>"``; the numbers are None
    unless ``ok``. ``spike_agreement``: fraction of identical hidden spikes (all spiking nodes, neurons, steps,
    batch); ``per_node``: the same per spiking node; ``first_divergence_step`` / ``_time`` (s): the first step
    at which any hidden spike differs (None: never); ``output_error``: max |output - ours|.
    """

    simulator: str
    status: str
    spike_agreement: Optional[float] = None
    per_node: dict = field(default_factory=dict)
    first_divergence_step: Optional[int] = None
    first_divergence_time: Optional[float] = None
    output_error: Optional[float] = None
    spikes: Optional[int] = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class VerificationReport:
    """What :func:`verify` returns; ``report["norse"]`` gives one :class:`SimulatorResult`."""

    model_class: str
    dt: float
    steps: int
    batch: int
    exact: bool
    discretisation: str
    export_warnings: list
    results: dict

    def __getitem__(self, name: str) -> SimulatorResult:
        return self.results[name]

    def to_dict(self) -> dict:
        """A JSON-serialisable dict."""
        d = asdict(self)
        d["results"] = {k: asdict(v) for k, v in self.results.items()}
        return d

    def table(self) -> str:
        """A plain-text summary table (reasons of non-applicable or failed simulators below it)."""
        head = (f"NIR verification of {self.model_class} at dt={self.dt:g} s ({self.steps} steps, batch {self.batch}; "
                f"export {'exact' if self.exact else 'NOT exact'}, discretisation {self.discretisation})")
        rows = [("simulator", "identical spikes", "first divergence", "max |output err|", "spikes")]
        notes = []
        for r in self.results.values():
            if r.ok:
                first = "-" if r.first_divergence_step is None else \
                    f"step {r.first_divergence_step} ({r.first_divergence_time:.4g} s)"
                rows.append((r.simulator, f"{r.spike_agreement:.6f}", first, f"{r.output_error:.3g}", str(r.spikes)))
                if r.spike_agreement < 1.0 and r.note:  # say which known convention explains the difference
                    notes.append(f"  {r.simulator} (known convention difference): {r.note}")
            else:
                kind = r.status.split(":")[0]
                rows.append((r.simulator, kind, "", "", ""))
                notes.append(f"  {r.simulator}: {r.status}")
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [head] + ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        lines += notes
        lines += [f"  export warning: {w}" for w in self.export_warnings]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# ----------------------------------------------------------------------------------------------
# The simulators
# ----------------------------------------------------------------------------------------------


def _kinds(graph: nir.NIRGraph) -> set:
    nodes, _ = ref.flatten(graph)
    return {type(n).__name__ for n in nodes.values()}


def _record(module: nn.Module, names: Sequence[str]) -> tuple[dict, list]:
    """Forward hooks that collect the spikes of the submodules whose last name is one of ``names``."""
    wanted = {n.replace(".", "_"): n for n in names}
    rec: dict[str, list] = {n: [] for n in names}
    handles = []
    for path, m in module.named_modules():
        leaf = path.split(".")[-1]
        if leaf in wanted and not isinstance(m, torch.fx.GraphModule) and not type(m).__name__ == "ModuleDict":
            node = wanted[leaf]

            def hook(mod, inp, out, node=node):
                z = out[0] if isinstance(out, (tuple, list)) else out
                rec[node].append(z.detach().to(torch.float64))

            handles.append(m.register_forward_hook(hook))
    return rec, handles


def _spiking_names(graph: nir.NIRGraph) -> list[str]:
    nodes, _ = ref.flatten(graph)
    return [k for k, v in nodes.items() if type(v).__name__ in ref.SPIKING_NODES]


def _run_steps(module: nn.Module, x: torch.Tensor, graph: nir.NIRGraph) -> tuple[torch.Tensor, dict]:
    names = _spiking_names(graph)
    rec, handles = _record(module, names)
    try:
        state, outs = None, []
        with torch.no_grad():
            for t in range(x.shape[0]):
                y, state = module(x[t], state)
                outs.append(y.detach().to(torch.float64))
    finally:
        for h in handles:
            h.remove()
    spikes = {k: torch.stack(v) for k, v in rec.items() if len(v) == x.shape[0]}
    return torch.stack(outs), spikes


def _snntorch(graph: nir.NIRGraph, x: torch.Tensor, dt: float) -> tuple[torch.Tensor, dict]:
    kinds = _kinds(graph)
    bad = kinds - {"Input", "Output", "Affine", "Linear", "LIF", "CubaLIF", "_Pass"}
    if bad:
        raise _NotApplicable(f"snnTorch's importer has no mapping for {', '.join(sorted(bad))}")
    nodes, _ = ref.flatten(graph)
    for k, n in nodes.items():
        if hasattr(n, "v_leak") and not np.allclose(np.asarray(n.v_leak), 0):
            raise _NotApplicable(f"snnTorch's importer requires v_leak = 0 (node {k!r})")
        if isinstance(n, nir.CubaLIF) and not np.allclose(np.asarray(n.r), np.asarray(n.tau_mem) / 1e-4):
            raise _NotApplicable(f"snnTorch's importer requires r = tau_mem / 1e-4 on CubaLIF nodes (node {k!r})")
        if isinstance(n, (nir.LIF, nir.CubaLIF)) and np.unique(np.asarray(n.v_threshold)).size > 1:
            raise _NotApplicable(f"snnTorch's importer needs one threshold per layer (node {k!r})")
    from snntorch.import_nir import import_from_nir

    with contextlib.redirect_stdout(io.StringIO()):  # the importer prints its progress
        module = import_from_nir(copy.deepcopy(graph))
        return _run_steps(module, x.to(torch.float32), graph)


def _norse_sim(graph: nir.NIRGraph, x: torch.Tensor, dt: float) -> tuple[torch.Tensor, dict]:
    kinds = _kinds(graph)
    bad = kinds - {"Input", "Output", "Affine", "Linear", "LIF", "CubaLIF", "IF", "_Pass"}
    if bad:
        raise _NotApplicable(f"Norse's from_nir has no mapping for {', '.join(sorted(bad))}")
    from .to_nir import _norse

    nt = _norse()
    logger = logging.getLogger()
    level = logger.level
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # nirtorch.load is deprecated
        module = nt.from_nir(copy.deepcopy(graph), dt=dt, ignore_warnings=True)
    names = _spiking_names(graph)
    outs, spikes = [], {n: [] for n in names}
    state = None
    xs = x.to(torch.float32)
    try:
        logger.setLevel(logging.ERROR)
        with torch.no_grad():
            for t in range(xs.shape[0]):
                y, state = module(xs[t], state)
                outs.append(y.detach().to(torch.float64))
                for n in names:
                    spikes[n].append(state.cache[n.replace(".", "_")].detach().to(torch.float64))
    finally:
        logger.setLevel(level)
    return torch.stack(outs), {k: torch.stack(v) for k, v in spikes.items()}


class _EulerNode(nn.Module):
    """A NIR neuron node stepped with the reference's Euler equations, in nirtorch's module protocol."""

    def __init__(self, node: Any, dt: float, v0: str) -> None:
        super().__init__()
        self.kind = type(node).__name__
        self.dt, self.v0 = dt, v0
        for f in ref._NEURON_FIELDS[self.kind]:
            self.register_buffer(f, torch.as_tensor(np.asarray(getattr(node, f), dtype=np.float64)))

    def forward(self, x: torch.Tensor, state: Optional[dict] = None):
        p = {f: getattr(self, f) for f in ref._NEURON_FIELDS[self.kind]}
        if state is None:
            v = p["v_leak"].expand_as(x).clone() if self.v0 == "leak" and "v_leak" in p else torch.zeros_like(x)
            state = {"v": v, "i": torch.zeros_like(x)}
        st = dict(state)
        out = ref._euler_step(self.kind, x.to(torch.float64), p, st, self.dt)
        return out, st


class _Affine(nn.Linear):
    def __init__(self, node: Any) -> None:
        w = torch.as_tensor(np.asarray(node.weight, dtype=np.float64))
        super().__init__(w.shape[1], w.shape[0], dtype=torch.float64)
        with torch.no_grad():
            self.weight.copy_(w)
            self.bias.copy_(torch.as_tensor(np.asarray(node.bias, dtype=np.float64)))


def _nirtorch(graph: nir.NIRGraph, x: torch.Tensor, dt: float, v0: str, method: str) -> tuple[torch.Tensor, dict]:
    if method != "euler":
        raise _NotApplicable("the graph's discretisation is exact (impulses and exponential modes within a "
                             "step); nirtorch steps each node module once per step with Euler's equations")
    import nirtorch

    node_map = {getattr(nir, k): (lambda n: _EulerNode(n, dt, v0)) for k in ref._NEURON_FIELDS}
    node_map[nir.Affine] = _Affine
    module = nirtorch.nir_to_torch(graph, node_map, dtype=torch.float64)
    return _run_steps(module, x.to(torch.float64), graph)


def simulate_with(simulator: str, graph: nir.NIRGraph, inputs: torch.Tensor, dt: float, *,
                  method: Optional[str] = None, v0: Optional[str] = None) -> tuple[torch.Tensor, dict]:
    """Run ``graph`` on ``inputs [T, B, n_in]`` in ``"reference"``, ``"snntorch"``, ``"norse"`` or ``"nirtorch"``.

    Returns ``(outputs [T, B, n_out], {spiking node: spikes [T, B, N]})`` in float64. ``method`` / ``v0``
    (reference and nirtorch) default to the graph's metadata, else ``"euler"`` / ``"zero"``. Raises
    ValueError when the simulator does not apply to the graph.
    """
    md = metadata_of(graph) or {}
    method = method or md.get("discretisation", "euler")
    v0 = v0 or md.get("initial_membrane", "zero")
    try:
        if simulator == "reference":
            r = ref.simulate(graph, inputs, dt, method=method, v0=v0)
            return r.output, r.spikes
        if simulator == "snntorch":
            return _snntorch(graph, inputs, dt)
        if simulator == "norse":
            return _norse_sim(graph, inputs, dt)
        if simulator == "nirtorch":
            return _nirtorch(graph, inputs, dt, v0, method)
    except _NotApplicable as err:
        raise ValueError(f"{simulator} does not apply to this graph: {err}") from None
    raise ValueError(f"unknown simulator {simulator!r}; choose from {SIMULATORS[1:]}")


# ----------------------------------------------------------------------------------------------
# verify
# ----------------------------------------------------------------------------------------------


def _result(name: str, out: torch.Tensor, spikes: dict, ours_out: torch.Tensor, ours_spikes: dict, dt: float
            ) -> SimulatorResult:
    missing = sorted(set(ours_spikes) - set(spikes))
    if missing:
        return SimulatorResult(name, f"failed: no spikes recorded for nodes {missing}", note=NOTES[name])
    if tuple(out.shape) != tuple(ours_out.shape):
        return SimulatorResult(name, f"failed: output shape {tuple(out.shape)} != ours {tuple(ours_out.shape)}",
                               note=NOTES[name])
    diff, first, _, n_sim = _compare_spikes(ours_spikes, spikes)
    per_node = {k: 1.0 - _compare_spikes({k: ours_spikes[k]}, {k: spikes[k]})[0] for k in ours_spikes}
    err = float((out.to(torch.float64) - ours_out.to(torch.float64)).abs().max()) if out.numel() else 0.0
    return SimulatorResult(name, "ok", spike_agreement=1.0 - diff, per_node=per_node, first_divergence_step=first,
                           first_divergence_time=None if first is None else first * dt, output_error=err,
                           spikes=n_sim, note=NOTES[name])


def verify(model: Any, dt: float, inputs: torch.Tensor, *, simulators: Sequence[str] = SIMULATORS
           ) -> VerificationReport:
    """Export ``model`` at ``dt`` and run ``inputs [T, B, n_in]`` through each of ``simulators``.

    See the module docstring. The export's own warnings (a non-exact export) are recorded in
    ``report.export_warnings`` instead of being raised again.
    """
    unknown = [s for s in simulators if s not in SIMULATORS]
    if unknown:
        raise ValueError(f"unknown simulators {unknown}; choose from {SIMULATORS}")
    if not isinstance(inputs, torch.Tensor) or inputs.ndim != 3:
        raise ValueError(f"inputs must be a tensor [T, B, n_in], got {getattr(inputs, 'shape', type(inputs))}")
    if not bool(torch.isfinite(inputs).all()):
        raise ValueError("inputs contain NaN or inf")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = to_nir(model, dt)
    md = metadata_of(graph)
    x = inputs.to(device=_model_device(model), dtype=_model_dtype(model))
    ours_out, ours_spikes = run_model(model, x)
    ours_out = ours_out.detach().to("cpu", torch.float64)
    ours_spikes = {k: v.detach().to("cpu", torch.float64) for k, v in ours_spikes.items()}
    gx = graph_inputs(model, inputs).to("cpu", torch.float64)
    results: dict[str, SimulatorResult] = {}
    for name in simulators:
        if name == "ours":
            results[name] = _result(name, ours_out, ours_spikes, ours_out, ours_spikes, dt)
            continue
        try:
            out, spikes = simulate_with(name, graph, gx, dt)
        except ValueError as err:
            msg = str(err)
            prefix = f"{name} does not apply to this graph: "
            status = f"not applicable: {msg[len(prefix):]}" if msg.startswith(prefix) else f"failed: {msg}"
            results[name] = SimulatorResult(name, status, note=NOTES[name])
            continue
        except Exception as err:  # another library's failure is a result, not a crash
            results[name] = SimulatorResult(name, f"failed: {type(err).__name__}: {err}", note=NOTES[name])
            continue
        results[name] = _result(name, out, spikes, ours_out, ours_spikes, dt)
    return VerificationReport(model_class=md["model_class"], dt=float(dt), steps=int(inputs.shape[0]),
                              batch=int(inputs.shape[1]), exact=bool(md["exact"]),
                              discretisation=md["discretisation"],
                              export_warnings=[str(w.message) for w in caught], results=results)
