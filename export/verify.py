"""Cross-check an exported network in the NIR consumers themselves.

:func:`verify` runs the same input through

- ``"ours"``: the model itself (the baseline every other simulator is compared with),
- ``"reference"``: :func:`surroflos.export.reference.simulate` on the spec file (``consumer=None``), with the
  discretisation and initial membranes recorded in its metadata,
- ``"snntorch"``: ``snntorch.import_nir.import_from_nir`` (snnTorch 1.0), stepped with ``module(x_t, state)``,
- ``"norse"``: ``norse.torch.from_nir(graph, dt=...)`` (Norse 1.1),
- ``"nirtorch"``: ``nirtorch.nir_to_torch(graph, {})`` with nirtorch 2.6's *own default mapping* (it has no
  neuron modules, so a spiking graph is "not applicable"; its default ``Affine`` also leaves the bias at
  PyTorch's random initialisation),
- ``"nirtorch-euler"``: nirtorch's graph executor with surroflos's Euler node modules (the reference's
  equations): a check of nirtorch's wiring, summation and delays only, not a consumer,
- ``"spyx"``, ``"rockpool"``, ``"sinabs"``: those packages' own importers, run by ``export/_consumer_run.py`` in
  the environment ``make interop`` builds (``.interop/<name>``, or ``$SURROFLOS_INTEROP_DIR/<name>``), or in
  this Python if the package is importable here; "not installed" otherwise,

each on the file written for it (``form="consumer"``, the default: ``to_nir(model, dt, consumer=name)``; where
that consumer refuses the network, the spec file, with the refusal recorded) or on the spec file
(``form="spec"``: what every consumer does with the file NIR's equations define). It reports per simulator the
fraction of identical hidden spikes (over every hidden neuron, time step and batch element) overall and per
spiking node (layer), the first step at which any spike differs and the largest output difference, or ``"not
applicable: <reason>"`` / ``"not installed: <reason>"`` / ``"failed: <error>"``.

spyx emits at step ``t + k`` the spikes of the ``k``-th spiking layer at ``t`` (it thresholds the previous
membrane): on its own form the comparison shifts each layer by its ``k`` (``SimulatorResult.shift``) and
covers the steps both sides have.

Conventions of the consumers on the spec file (asserted in ``tests/test_export.py``; the forms that undo them
are in :mod:`surroflos.export.consumers`):

- snnTorch assumes ``dt = 1e-4`` s (``beta = 1 - 1e-4/tau``; the threshold is divided by ``r 1e-4 / tau``),
  ``v_leak = 0``, resets to zero at once and runs in float32; it rebuilds a cycle ``lif <-> w_rec`` as
  ``Input -> w_rec -> lif`` (``w_rec`` applied to the external input too); it has no ``LI`` node.
- Norse ignores ``r`` on ``LIF``, starts membranes at ``v_leak``, drops ``v_reset``, runs in float32 and has no
  ``LI`` node.
- nirtorch's interpreter delays the edge *into* the neuron (``w_rec -> lif``, zeros at the first step) where
  the reference delays the spikes (``lif -> w_rec``): the two agree unless the recurrent edge has a bias.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

import nir

from . import consumers as cons
from . import reference as ref
from .to_nir import _compare_spikes, _model_device, _model_dtype, graph_inputs, metadata_of, run_model, to_nir

__all__ = ["verify", "VerificationReport", "SimulatorResult", "SIMULATORS", "EXTERNAL", "simulate_with", "NOTES",
           "interop_python"]

EXTERNAL = ("spyx", "rockpool", "sinabs")  # run in their own environments (make interop)
SIMULATORS = ("ours", "reference", "snntorch", "norse", "nirtorch", "nirtorch-euler") + EXTERNAL
CONSUMER_SIMULATORS = ("snntorch", "norse") + EXTERNAL  # the ones that get a consumer form
EXTERNAL_TIMEOUT_S = 120.0  # a consumer that does not finish by then failed

NOTES = {
    "ours": "the model itself (baseline)",
    "reference": "NIR's equations (surroflos.export.reference) on the spec file",
    "snntorch": "snnTorch 1.0 import_from_nir: dt fixed at 1e-4 s, v_leak refused, immediate zero reset, float32; "
                "rebuilds a two-node cycle as Input -> w_rec -> lif (w_rec also applied to the input)",
    "norse": "Norse 1.1 from_nir: ignores r on LIF, drops v_reset, membranes start at v_leak, float32, no LI",
    "nirtorch": "nirtorch 2.6 nir_to_torch with its own default mapping (no neuron modules)",
    "nirtorch-euler": "nirtorch 2.6's graph executor with surroflos's Euler node modules: checks the wiring only",
    "spyx": "spyx 1.0 from_nir: reads tau and v_threshold only, delayed subtract reset, one step late per layer",
    "rockpool": "Rockpool 3.1.0 from_nir: crashes on nir.LIF; CubaLIF: subtract reset, several spikes per step",
    "sinabs": "sinabs 3.1.3 from_nir (nir 1.0.4): skips Linear, ignores r and v_reset, subtract reset, multi-spike",
}


class _NotApplicable(Exception):
    pass


class _NotInstalled(Exception):
    pass


@dataclass
class SimulatorResult:
    """One simulator's agreement with ``ours``.

    ``status`` is ``"ok"``, ``"not applicable: <reason>"``, ``"not installed: <reason>"`` or ``"failed:
    <error>"``; the numbers are None unless ``ok``. ``form``: the file it ran (``"spec"`` or the consumer whose
    form it is); ``refusal``: why that consumer's form was refused (then it ran the spec file). ``spike_agreement``:
    fraction of identical hidden spikes (all spiking nodes, neurons, steps, batch); ``per_node``: the same per
    spiking node (layer); ``shift``: per node, how many steps late the simulator emits (spyx's form); ``first_
    divergence_step`` / ``_time`` (s): the first step at which any hidden spike differs (None: never);
    ``output_error``: max |output - ours|; ``version``: the consumer's version where known.
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
    form: str = "spec"
    refusal: Optional[str] = None
    shift: dict = field(default_factory=dict)
    version: Optional[str] = None

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
    form: str = "consumer"

    def __getitem__(self, name: str) -> SimulatorResult:
        return self.results[name]

    def to_dict(self) -> dict:
        """A JSON-serialisable dict."""
        d = asdict(self)
        d["results"] = {k: asdict(v) for k, v in self.results.items()}
        return d

    def table(self) -> str:
        """A plain-text summary table (reasons of refused, non-applicable or failed simulators below it)."""
        head = (f"NIR verification of {self.model_class} at dt={self.dt:g} s ({self.steps} steps, batch {self.batch}; "
                f"spec export {'exact' if self.exact else 'NOT exact'}, discretisation {self.discretisation}; "
                f"{'each consumer on its own form' if self.form == 'consumer' else 'every simulator on the spec file'})")
        multi = any(len(r.per_node) > 1 for r in self.results.values())
        cols = ["simulator", "file", "identical spikes"] + (["per layer"] if multi else []) + \
            ["first divergence", "max |output err|", "spikes"]
        rows = [tuple(cols)]
        notes = []
        for r in self.results.values():
            form = r.form if r.refusal is None else "spec (form refused)"
            if r.ok:
                first = "-" if r.first_divergence_step is None else \
                    f"step {r.first_divergence_step} ({r.first_divergence_time:.4g} s)"
                per = ", ".join(f"{k} {v:.4f}" for k, v in r.per_node.items())
                row = [r.simulator, form, f"{r.spike_agreement:.6f}"] + ([per] if multi else []) + \
                    [first, f"{r.output_error:.3g}", str(r.spikes)]
                rows.append(tuple(row))
                if r.spike_agreement < 1.0 and r.note:  # say which known convention explains the difference
                    notes.append(f"  {r.simulator} (known convention difference): {r.note}")
                if r.shift and any(r.shift.values()):
                    notes.append(f"  {r.simulator}: compared {', '.join(f'{k} {v} step(s) late' for k, v in r.shift.items())}")
            else:
                kind = r.status.split(":")[0]
                rows.append(tuple([r.simulator, form, kind] + ([""] if multi else []) + ["", "", ""]))
                notes.append(f"  {r.simulator}: {r.status}")
            if r.refusal:
                notes.append(f"  {r.simulator} form refused: {r.refusal}")
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


class _Affine(nn.Linear):  # nirtorch 2.6's default Affine leaves the bias unset
    def __init__(self, node: Any) -> None:
        w = torch.as_tensor(np.asarray(node.weight, dtype=np.float64))
        super().__init__(w.shape[1], w.shape[0], dtype=torch.float64)
        with torch.no_grad():
            self.weight.copy_(w)
            self.bias.copy_(torch.as_tensor(np.asarray(node.bias, dtype=np.float64)))


def _nirtorch_euler(graph: nir.NIRGraph, x: torch.Tensor, dt: float, v0: str, method: str
                    ) -> tuple[torch.Tensor, dict]:
    if method != "euler":
        raise _NotApplicable("the graph's discretisation is exact (impulses and exponential modes within a "
                             "step); nirtorch steps each node module once per step with Euler's equations")
    import nirtorch

    node_map = {getattr(nir, k): (lambda n: _EulerNode(n, dt, v0)) for k in ref._NEURON_FIELDS}
    node_map[nir.Affine] = _Affine
    module = nirtorch.nir_to_torch(graph, node_map, dtype=torch.float64)
    return _run_steps(module, x.to(torch.float64), graph)


def _nirtorch_default(graph: nir.NIRGraph, x: torch.Tensor, dt: float) -> tuple[torch.Tensor, dict]:
    """nirtorch with nothing but its own default node map."""
    import nirtorch

    try:
        module = nirtorch.nir_to_torch(copy.deepcopy(graph), {})
    except ValueError as err:
        kinds = sorted(_kinds(graph) & {"LIF", "CubaLIF", "LI", "IF", "I", "CubaLI"})
        raise _NotApplicable(f"nirtorch {getattr(nirtorch, '__version__', '?')}'s default mapping has no module for "
                             f"{', '.join(kinds) or 'a node of this graph'} (it maps Input, Output, Affine, Linear, "
                             f"Conv1d/2d, Flatten and pooling; {err})") from None
    return _run_steps(module, x.to(torch.float32), graph)


def _interop_root() -> Path:
    env = os.environ.get("SURROFLOS_INTEROP_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / ".interop"  # the checkout's, where make interop builds them


def interop_python(name: str) -> Optional[str]:
    """The Python that runs consumer ``name`` (spyx, rockpool, sinabs): ``<interop dir>/<name>/bin/python`` built
    by ``make interop``, else this Python if the package imports here, else None."""
    exe = _interop_root() / name / "bin" / "python"
    if exe.exists():
        return str(exe)
    import importlib.util

    if importlib.util.find_spec(name) is not None:
        return sys.executable
    return None


def _spyx_chain_loops(graph: nir.NIRGraph) -> Optional[str]:
    """spyx 1.0 orders layers by following the first edge out of each node from ``"input"`` until ``"output"``,
    after collapsing each two-node cycle ``neuron <-> linear`` into one node; a longer cycle on that path makes
    it loop forever. Returns the node where the walk would repeat itself (None: it ends)."""
    edges = list(dict.fromkeys(graph.edges))
    for a, b in list(edges):
        if (b, a) in edges and isinstance(graph.nodes.get(a), (nir.LIF, nir.CubaLIF, nir.IF)) and \
                isinstance(graph.nodes.get(b), (nir.Affine, nir.Linear)) and \
                sum(e[0] == b for e in edges) == 1 and sum(e[1] == b for e in edges) == 1:
            edges = [e for e in edges if e not in ((a, b), (b, a))]
    cur, seen = "input", set()
    while cur != "output":
        if cur in seen:
            return cur
        seen.add(cur)
        nxt = next((b for a, b in edges if a == cur), None)
        if nxt is None:
            return None
        cur = nxt
    return None


def _external(name: str, graph: nir.NIRGraph, x: torch.Tensor, dt: float) -> tuple[torch.Tensor, dict, str, str]:
    """Run ``graph`` in spyx / rockpool / sinabs through export/_consumer_run.py in that consumer's Python."""
    if name == "spyx":
        loop = _spyx_chain_loops(graph)
        if loop is not None:
            raise _NotApplicable(f"spyx 1.0's from_nir follows the first edge out of each node from 'input' and "
                                 f"comes back to {loop!r} without reaching 'output': it would loop forever")
    exe = interop_python(name)
    if exe is None:
        raise _NotInstalled(f"{name} is not importable here and {_interop_root() / name} does not exist (build it "
                            "with `make interop`)")
    runner = Path(__file__).resolve().parent / "_consumer_run.py"
    with tempfile.TemporaryDirectory(prefix="surroflos-verify-") as tmp:
        gpath, xpath, opath = (os.path.join(tmp, f) for f in ("graph.nir", "x.npy", "out.npz"))
        g = copy.deepcopy(graph)
        g.metadata = dict(g.metadata or {}, dt=float(dt))
        nir.write(gpath, g)
        np.save(xpath, x.detach().to("cpu", torch.float64).numpy())
        try:
            subprocess.run([exe, str(runner), name, gpath, xpath, opath], check=True, timeout=EXTERNAL_TIMEOUT_S,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{name} did not finish within {EXTERNAL_TIMEOUT_S:g} s") from None
        except subprocess.CalledProcessError as err:
            tail = (err.stderr or b"").decode("utf8", "replace").strip().splitlines()[-1:] or [""]
            raise RuntimeError(f"{name}'s runner exited with status {err.returncode}: {tail[0]}") from None
        with np.load(opath) as o:
            if "error" in o.files:
                raise RuntimeError(str(o["error"]))
            out = torch.as_tensor(o["output"], dtype=torch.float64)
            spikes = {f[len("spikes/"):]: torch.as_tensor(o[f], dtype=torch.float64) for f in o.files
                      if f.startswith("spikes/")}
            return out, spikes, str(o["version"]), str(o["read_note"]) if "read_note" in o.files else ""


def simulate_with(simulator: str, graph: nir.NIRGraph, inputs: torch.Tensor, dt: float, *,
                  method: Optional[str] = None, v0: Optional[str] = None) -> tuple[torch.Tensor, dict]:
    """Run ``graph`` on ``inputs [T, B, n_in]`` in one simulator (``"reference"``, ``"snntorch"``, ``"norse"``,
    ``"nirtorch"``, ``"nirtorch-euler"``, ``"spyx"``, ``"rockpool"``, ``"sinabs"``).

    ``dt``: the step the simulator takes where it takes one (reference, Norse, nirtorch-euler, spyx; a consumer
    form's own dt is ``graph.metadata["dt"]``). Returns ``(outputs [T, B, n_out], {spiking node: spikes [T, B,
    N]})`` in float64. ``method`` / ``v0`` (reference and nirtorch-euler) default to the graph's metadata, else
    ``"euler"`` / ``"zero"``. Raises ValueError when the simulator does not apply to the graph or is not
    installed; RuntimeError when an external consumer fails.
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
            return _nirtorch_default(graph, inputs, dt)
        if simulator == "nirtorch-euler":
            return _nirtorch_euler(graph, inputs, dt, v0, method)
        if simulator in EXTERNAL:
            out, spikes, _, _ = _external(simulator, graph, inputs, dt)
            return out, spikes
    except _NotApplicable as err:
        raise ValueError(f"{simulator} does not apply to this graph: {err}") from None
    except _NotInstalled as err:
        raise ValueError(f"{simulator} is not installed: {err}") from None
    raise ValueError(f"unknown simulator {simulator!r}; choose from {SIMULATORS[1:]}")


# ----------------------------------------------------------------------------------------------
# verify
# ----------------------------------------------------------------------------------------------


def _shifted(ours: torch.Tensor, theirs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Align a simulator ``k`` steps late with ours: ours[t] against theirs[t + k], over the common steps."""
    if k == 0:
        return ours, theirs
    T = ours.shape[0]
    return ours[: T - k], theirs[k:]


def _result(name: str, out: torch.Tensor, spikes: dict, ours_out: torch.Tensor, ours_spikes: dict, dt: float,
            shift: Optional[dict] = None, **extra) -> SimulatorResult:
    shift = {k: int(v) for k, v in (shift or {}).items() if k in ours_spikes}
    missing = sorted(set(ours_spikes) - set(spikes))
    if missing:
        return SimulatorResult(name, f"failed: no spikes recorded for nodes {missing}", note=NOTES[name], **extra)
    if tuple(out.shape) != tuple(ours_out.shape):
        return SimulatorResult(name, f"failed: output shape {tuple(out.shape)} != ours {tuple(ours_out.shape)}",
                               note=NOTES[name], **extra)
    a, b = {}, {}
    for k in ours_spikes:
        a[k], b[k] = _shifted(ours_spikes[k], spikes[k].to(torch.float64), shift.get(k, 0))
    diff, first, _, n_sim = _compare_spikes(a, b)
    per_node = {k: 1.0 - _compare_spikes({k: a[k]}, {k: b[k]})[0] for k in a}
    o_a, o_b = _shifted(ours_out.to(torch.float64), out.to(torch.float64), max(shift.values(), default=0))
    err = float((o_b - o_a).abs().max()) if o_a.numel() else 0.0
    return SimulatorResult(name, "ok", spike_agreement=1.0 - diff, per_node=per_node, first_divergence_step=first,
                           first_divergence_time=None if first is None else first * dt, output_error=err,
                           spikes=n_sim, note=NOTES[name], shift=shift, **extra)


def _version(name: str) -> Optional[str]:
    if name in ("ours", "reference", "nirtorch-euler"):
        return None
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # not installed here (an external consumer reports its own)
        return None


def verify(model: Any, dt: float, inputs: torch.Tensor, *, simulators: Sequence[str] = SIMULATORS,
           form: str = "consumer") -> VerificationReport:
    """Export ``model`` at ``dt`` and run ``inputs [T, B, n_in]`` through each of ``simulators``.

    ``form="consumer"`` (default): snnTorch, Norse, spyx, rockpool and sinabs each run the file written for them
    (``to_nir(model, dt, consumer=name)``), or the spec file where that consumer refuses the network (the
    refusal is recorded); ``form="spec"``: every simulator runs the spec file (``consumer=None``). See the module
    docstring. The spec export's own warnings (a non-exact export) are recorded in ``report.export_warnings``
    instead of being raised again.
    """
    unknown = [s for s in simulators if s not in SIMULATORS]
    if unknown:
        raise ValueError(f"unknown simulators {unknown}; choose from {SIMULATORS}")
    if form not in ("consumer", "spec"):
        raise ValueError(f"form must be 'consumer' or 'spec', got {form!r}")
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
        extra: dict[str, Any] = {"version": _version(name)}
        if name == "ours":
            results[name] = _result(name, ours_out, ours_spikes, ours_out, ours_spikes, dt)
            continue
        g, sim_dt, shift = graph, dt, None
        if form == "consumer" and name in CONSUMER_SIMULATORS:
            try:
                g = to_nir(model, dt, consumer=name)
                f = metadata_of(g)["consumer"]
                sim_dt, shift, extra["form"] = f["consumer_dt"], f["spike_shift"], name
            except cons.ConsumerRefusal as err:
                extra["refusal"] = str(err)
        try:
            if name in EXTERNAL:
                out, spikes, version, read_note = _external(name, g, gx, sim_dt)
                extra["version"] = version
                if read_note:
                    extra["note_read"] = read_note
            else:
                out, spikes = simulate_with(name, g, gx, sim_dt)
        except _NotApplicable as err:
            results[name] = SimulatorResult(name, f"not applicable: {err}", note=NOTES[name], **{
                k: v for k, v in extra.items() if k != "note_read"})
            continue
        except (ValueError, _NotInstalled) as err:
            msg = str(err)
            for prefix, kind in ((f"{name} does not apply to this graph: ", "not applicable"),
                                 (f"{name} is not installed: ", "not installed")):
                if msg.startswith(prefix):
                    status = f"{kind}: {msg[len(prefix):]}"
                    break
            else:
                status = f"not installed: {msg}" if isinstance(err, _NotInstalled) else f"failed: {msg}"
            extra.pop("note_read", None)
            results[name] = SimulatorResult(name, status, note=NOTES[name], **extra)
            continue
        except Exception as err:  # another library's failure is a result, not a crash
            extra.pop("note_read", None)
            results[name] = SimulatorResult(name, f"failed: {type(err).__name__}: {err}", note=NOTES[name], **extra)
            continue
        read_note = extra.pop("note_read", None)
        r = _result(name, out, spikes, ours_out, ours_spikes, dt, shift, **extra)
        if read_note:
            r.note = f"{r.note}; {read_note}"
        results[name] = r
    return VerificationReport(model_class=md["model_class"], dt=float(dt), steps=int(inputs.shape[0]),
                              batch=int(inputs.shape[1]), exact=bool(md["exact"]),
                              discretisation=md["discretisation"],
                              export_warnings=[str(w.message) for w in caught], results=results, form=form)
