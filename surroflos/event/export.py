"""NIR export of an :class:`~surroflos.event.EventNetwork` (LIF neurons).

NIR runs graphs in steps of ``dt`` (the convention of :mod:`surroflos.export`: every edge carries one value per
step, a spike is a pulse of charge ``dt``), so an event network is exported as its time-stepped counterpart,
exactly the network of :meth:`EventNetwork.to_balanced` with delta synapses (``tau_s = 0``):

======================= ========== =============================================================================
event network           NIR node   parameters
======================= ========== =============================================================================
LIF membranes           ``LIF``    ``tau = tau_m``, ``r = 1``, ``v_leak = 1 + iext`` (the drive),
                                   ``v_threshold = 1``, ``v_reset = 0``
kicks ``J_j`` (sparse)  ``Linear`` dense ``[N, N]``, ``W_ij = J_j tau_m / dt`` (a spike's charge ``dt`` through
                                   ``tau dv/dt = ... + W z`` moves ``v`` by ``J_j``); the target lists are kept in
                                   the node's metadata (``indptr``, ``indices``)
graph input             ``Input``  a current ``[N]`` straight into the membranes (zero for the autonomous network)
======================= ========== =============================================================================

Run with :func:`surroflos.export.reference.simulate` (``method="exact"``) the graph reproduces
``net.to_balanced(dt)`` step for step; its spikes act at the end of the step in which the threshold was
crossed, so they converge to the exact event times as ``dt -> 0`` (error O(dt)). The graph's metadata records
this (``exact: false``, with the reason). Theta neurons have no NIR node (NIR has no quadratic integrate-and-fire
neuron) and are refused.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .network import EventNetwork

__all__ = ["to_nir", "MAX_DENSE_BYTES"]

MAX_DENSE_BYTES = 2 << 30  # the dense recurrent weight matrix NIR needs (float64)


def to_nir(net: EventNetwork, dt: float, *, metadata: Optional[dict] = None):
    """Export a LIF :class:`EventNetwork` as a ``nir.NIRGraph`` for time step ``dt`` (seconds); see the module
    docstring. Write it with :func:`surroflos.export.write` (which accepts a graph)."""
    import nir

    from surroflos.export import reference as ref
    from surroflos.export.to_nir import _GENERATOR, _Builder, _check_dt, _json, _version

    if not isinstance(net, EventNetwork):
        raise TypeError(f"net must be an EventNetwork, got {type(net).__name__}")
    if net.neuron != "lif":
        raise NotImplementedError("NIR has no quadratic integrate-and-fire (theta) neuron node; only "
                                  "neuron='lif' EventNetworks can be exported")
    dt = _check_dt(dt)
    user = {} if metadata is None else metadata
    if not isinstance(user, dict):
        raise TypeError(f"metadata must be a dict, got {type(user).__name__}")
    _json(user, "metadata")
    N = net.N
    need = N * N * 8
    if need > MAX_DENSE_BYTES:
        raise ValueError(f"NIR has no sparse weight node: N={N} needs a dense {N} x {N} float64 weight matrix "
                         f"({need / 2**30:.1f} GiB > {MAX_DENSE_BYTES / 2**30:.0f} GiB)")
    W = np.zeros((N, N), dtype=np.float64)
    pre = np.repeat(np.arange(N), np.diff(net.indptr))
    W[net.indices, pre] = net.jump[pre] * (net.tau_m / dt)
    b = _Builder()
    b.add("input", nir.Input(input_type=np.array([N])))
    b.add("lif", nir.LIF(tau=np.full(N, net.tau_m), r=np.ones(N), v_leak=np.full(N, 1.0 + net.iext),
                         v_threshold=np.ones(N), v_reset=np.zeros(N)))
    b.add("w_rec", nir.Linear(weight=W), {"indptr": net.indptr.copy(), "indices": net.indices.copy(),
                                          "jump": net.jump.copy()})
    b.add("output", nir.Output(output_type=np.array([N])))
    for e in (("input", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")):
        b.edge(*e)
    b.flag("lif", f"NIR steps in dt = {dt} s: a spike is registered, and kicks its targets, at the end of the step "
           "in which the threshold was crossed (spike times off by up to dt; the graph equals "
           "EventNetwork.to_balanced(dt))", "a smaller dt (the error is O(dt))")
    graph = nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata={})
    ref.validate(graph)
    settings: dict[str, Any] = {
        "N": N, "K": net.K, "J0": net.J0, "rate": net.rate, "tau_m": net.tau_m, "neuron": net.neuron,
        "seed": net.seed, "iext": net.iext, "graph": net.graph, "ei": net.ei, "f_E": net.f_E, "g": net.g,
    }
    spec = {"model": settings, "surrogate": None, "discretisation": "exact", "initial_membrane": "zero",
            "model_class": "EventNetwork", "dt": dt, "surroflos_version": _version(), "exact": False,
            "inexact": b.inexact, "user": user, "mismatch": None}
    graph.metadata = {
        "generator": _GENERATOR, "surroflos_version": spec["surroflos_version"], "dt": dt,
        "model_class": "EventNetwork", "discretisation": "exact", "initial_membrane": "zero", "exact": False,
        "surroflos": _json(spec, "the export metadata"),
    }
    return graph

