"""Read NIR files and rebuild surroflos models from NIR graphs.

:func:`read` loads a ``.nir`` file with clear errors; :func:`from_nir` turns a graph (or a file) into a model:

- a graph written by :func:`surroflos.export.to_nir` is rebuilt as the same class (``SpikingRNN``,
  ``BalancedNetwork`` or the ``nn.Sequential`` of the same layers) from its nodes, with what NIR does not hold
  (surrogate, reset, detach flags, which tensors are trainable) and the exact parameter values taken from the
  metadata. Export then import round-trips exactly: same parameters, same outputs bit for bit. A parameter
  edited in the graph after export (so that it no longer matches the stored value) is taken from the graph,
  with a warning. At a ``dt`` other than the export ``dt`` (warned): a ``SpikingRNN`` gets ``beta = 1 - dt/tau``
  etc. and the graph's input scale (``r dt/tau``; ``r w_in dt^2/(tau_mem tau_syn)`` for cuba) folded into its
  weights, so that it follows the graph's Euler equations at the new ``dt``; a ``BalancedNetwork`` keeps its
  continuous-time parameters and integrates with the new ``dt``; a layered graph is rebuilt like a foreign
  graph (below).
- any other graph (e.g. exported by snnTorch) is rebuilt as the closest model, with a
  :class:`NIRImportWarning` listing what was assumed. Supported: a chain ``Input -> ... -> Output`` of
  ``Affine``/``Linear`` and ``LIF``/``CubaLIF`` nodes, each neuron node optionally with a recurrent
  ``Affine``/``Linear`` edge back to itself, and an ``LI`` readout. ``[Affine] -> LIF (+ recurrence) ->
  [Affine] [-> LI]`` becomes a :class:`~surroflos.SpikingRNN` (``neuron="lif"``, ``reset="zero"``, which is
  NIR's LIF exactly); other chains become an ``nn.Sequential`` of ``nn.Linear``, surroflos' snnTorch
  ``Leaky(reset_mechanism="zero")`` / ``RLeaky(reset_mechanism="zero", reset_delay=False)`` for ``LIF`` (a
  ``v_reset`` other than 0 is replaced by 0, with the warning) and surroflos' Norse ``LIFCell`` /
  ``LIFRecurrentCell`` for ``CubaLIF``. The input scale ``r dt / tau`` (``r w_in dt / tau_syn`` for CubaLIF)
  and the leak ``dt/tau v_leak`` are folded into the preceding weights and bias, so the rebuilt model follows
  the graph's Euler dynamics at ``dt`` (see :mod:`surroflos.export.reference`).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

import nir

from . import reference as ref
from .to_nir import NIRImportWarning, _check_dt, _norse, metadata_of

__all__ = ["read", "from_nir"]

_NIR_TYPES = ("Affine", "AvgPool2d", "Conv1d", "Conv2d", "CubaLI", "CubaLIF", "Delay", "Flatten", "I", "IF", "Input",
              "LI", "LIF", "Linear", "NIRGraph", "Output", "Scale", "SumPool2d", "Threshold")


# ----------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------


def _str(v: Any) -> str:
    return v.decode("utf8") if isinstance(v, bytes) else str(v)


def _build_node(name: str, data: dict, path: str) -> nir.NIRNode:
    if not isinstance(data, dict) or "type" not in data:
        raise ValueError(f"{path} is not a valid NIR file: node {name!r} has no type")
    kind = _str(data["type"])
    if kind not in _NIR_TYPES:
        raise ValueError(f"{path}: node {name!r} has the unknown node type {kind!r} (NIR knows "
                         f"{', '.join(_NIR_TYPES)})")
    data = dict(data)
    data["type"] = kind
    if kind == "NIRGraph":
        return _build_graph(name, data, path)
    try:
        return nir.dict2NIRNode(data)
    except Exception as err:  # nir asserts on inconsistent parameters
        msg = str(err) or type(err).__name__
        raise ValueError(f"{path}: node {name!r} ({kind}) is invalid: {msg}") from None


def _build_graph(name: str, data: dict, path: str) -> nir.NIRGraph:
    if "nodes" not in data or "edges" not in data:
        raise ValueError(f"{path} is not a valid NIR file: graph {name!r} has no nodes or edges")
    nodes = {_str(k): _build_node(_str(k), v, path) for k, v in data["nodes"].items()}
    edges = [(_str(a), _str(b)) for a, b in np.asarray(data["edges"]).reshape(-1, 2)] if len(data["edges"]) else []
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=data.get("metadata", {}) or {}, type_check=False)


def read(path: Union[str, os.PathLike]) -> nir.NIRGraph:
    """Read a NIR file.

    Raises FileNotFoundError (naming the file) when it does not exist; ValueError "not a valid NIR file" when
    it is not an HDF5 NIR file, or is corrupted or truncated; ValueError naming the node for unknown or
    unsupported node types, invalid parameters and mismatched shapes.
    """
    import h5py
    from nir.serialization import hdf2dict

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"NIR file not found: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a valid NIR file")
    try:
        with h5py.File(path, "r") as f:
            if "node" not in f:
                raise ValueError(f"{path} is not a valid NIR file: it has no 'node' group")
            data = hdf2dict(f["node"])
    except ValueError:
        raise
    except Exception as err:  # h5py: OSError (signature, truncation), RuntimeError, KeyError on damaged files
        raise ValueError(f"{path} is not a valid NIR file (not HDF5, corrupted or truncated): {err}") from None
    if not isinstance(data, dict) or _str(data.get("type", "")) != "NIRGraph":
        raise ValueError(f"{path} is not a valid NIR file: its root node is not a NIRGraph")
    graph = _build_graph("<root>", data, str(path))
    ref.validate(graph)
    return graph


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _torch_dtype(a: np.ndarray) -> torch.dtype:
    return {np.dtype("float16"): torch.float16, np.dtype("float64"): torch.float64}.get(np.asarray(a).dtype,
                                                                                      torch.float32)


def _t(a: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a)).to(dtype).clone()


def _f(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _scalar_or_vector(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """A per-neuron float64 array as the model's tensor: a scalar when all entries are equal."""
    a = np.asarray(a, dtype=np.float64)
    if a.size and np.all(a == a.reshape(-1)[0]):
        return torch.tensor(float(a.reshape(-1)[0]), dtype=dtype)
    return torch.as_tensor(a).to(dtype)


class _Restorer:
    """Exact parameter values from node metadata when they still match the graph (and dt is the export dt)."""

    def __init__(self, dt: float, meta_dt: float) -> None:
        self.same_dt = math.isclose(dt, meta_dt, rel_tol=1e-12)
        if not self.same_dt:
            warnings.warn(f"the graph was exported for dt={meta_dt} s and is rebuilt for dt={dt} s: the discrete "
                          "parameters (beta, alpha, ...) follow from the graph's time constants at the new dt",
                          NIRImportWarning, stacklevel=4)

    def get(self, node: Any, key: str, derived: np.ndarray, name: str, transform=None) -> Optional[torch.Tensor]:
        stored = (getattr(node, "metadata", None) or {}).get("surroflos", {}).get(key)
        if stored is None or not self.same_dt:
            return None
        t = torch.as_tensor(np.asarray(stored))
        check = (transform(t) if transform else t).to(torch.float64).expand(derived.shape).numpy()
        if not np.allclose(check, derived, rtol=1e-6, atol=1e-9):
            warnings.warn(f"node {name!r}: {key} in the graph no longer matches the value stored at export (edited "
                          "graph?); using the graph's value", NIRImportWarning, stacklevel=4)
            return None
        return t.clone()


def _decay(tau: np.ndarray, dt: float, name: str, what: str) -> np.ndarray:
    d = 1.0 - dt / _f(tau)
    if (d < 0).any():
        warnings.warn(f"node {name!r}: {what} = 1 - dt/tau < 0 (tau < dt); clamped to 0", NIRImportWarning,
                      stacklevel=4)
    return np.clip(d, 0.0, 1.0)


def _node(nodes: dict, name: str, kinds: tuple, model: str) -> Any:
    node = nodes.get(name)
    if node is None or type(node).__name__ not in kinds:
        got = "missing" if node is None else type(node).__name__
        raise ValueError(f"the graph's metadata describes a {model}, but its node {name!r} is {got} (expected "
                         f"{' or '.join(kinds)}); was the graph edited?")
    return node


def _copy(param: torch.Tensor, value: torch.Tensor) -> None:
    with torch.no_grad():
        if param.shape != value.shape:
            raise ValueError(f"shape mismatch restoring a parameter: {tuple(value.shape)} vs {tuple(param.shape)}")
        param.copy_(value)


def _surrogate(info: Optional[dict]):
    from surroflos import surrogate as sg

    if not info or "name" not in info:
        return sg.Surrogate("atan")
    return sg.Surrogate(info["name"], info["scale"])


# ----------------------------------------------------------------------------------------------
# Our own graphs
# ----------------------------------------------------------------------------------------------


def _build_spiking_rnn(graph: nir.NIRGraph, dt: float, meta: dict):
    from surroflos.models import SpikingRNN

    s = meta["model"]
    nodes, _ = ref.flatten(graph)
    lif = _node(nodes, "lif", ("LIF",) if s["neuron"] == "lif" else ("CubaLIF",), "SpikingRNN")
    w_in = _node(nodes, "w_in", ("Affine",), "SpikingRNN")
    w_rec = _node(nodes, "w_rec", ("Linear",), "SpikingRNN")
    readout = _node(nodes, "readout", ("Affine",), "SpikingRNN")
    R = _Restorer(dt, meta["dt"])
    dtype = _torch_dtype(w_rec.weight)
    tau_mem = lif.tau if s["neuron"] == "lif" else lif.tau_mem
    beta_d = _decay(tau_mem, dt, "lif", "beta")
    clamp = lambda t: t.clamp(0, 1)  # noqa: E731 - the stored raw value is compared after the model's clamp
    beta = R.get(lif, "beta", beta_d, "lif", clamp)
    beta = _scalar_or_vector(beta_d, dtype) if beta is None else beta
    theta = R.get(lif, "threshold", _f(lif.v_threshold), "lif")
    theta = _scalar_or_vector(lif.v_threshold, dtype) if theta is None else theta
    alpha = torch.tensor(0.8, dtype=dtype)
    if s["neuron"] == "cuba":
        alpha_d = _decay(lif.tau_syn, dt, "lif", "alpha")
        alpha = R.get(lif, "alpha", alpha_d, "lif", clamp)
        alpha = _scalar_or_vector(alpha_d, dtype) if alpha is None else alpha
    readout_beta = s["readout_beta"]
    if s["readout"] == "leaky":
        li = _node(nodes, "li", ("LI",), "SpikingRNN")
        if not np.all(_f(li.tau) == _f(li.tau)[0]):
            raise ValueError("node 'li': SpikingRNN's leaky readout has one time constant; the graph's differ")
        rb = float(_decay(li.tau, dt, "li", "readout_beta")[0])
        if not (R.same_dt and math.isclose(rb, readout_beta, rel_tol=1e-6, abs_tol=1e-9)):
            readout_beta = rb
    model = SpikingRNN(s["n_in"], s["n_hidden"], s["n_out"], neuron=s["neuron"], beta=beta.clamp(0, 1),
                       alpha=alpha.clamp(0, 1), threshold=theta, reset=s["reset"], detach_reset=s["detach_reset"],
                       surrogate=_surrogate(meta.get("surrogate")), learn_beta=s["learn_beta"],
                       learn_alpha=s["learn_alpha"], learn_threshold=s["learn_threshold"], g=s["g"], bias=s["bias"],
                       readout=s["readout"], readout_beta=readout_beta, dt=s["dt"], dtype=dtype, backend=s["backend"],
                       generator=torch.Generator().manual_seed(0))
    _copy(model.beta, beta.to(dtype))  # the raw (unclamped) value, if training pushed it out of [0, 1]
    _copy(model.alpha, alpha.to(dtype))
    # The graph's input scale per step: r dt/tau (LIF) or r w_in dt^2/(tau_mem tau_syn) (CubaLIF; the model's syn
    # is that of the graph times r dt/tau_mem). Exactly 1 at the export dt; else folded into the weights.
    if s["neuron"] == "lif":
        scale = _f(lif.r) * dt / _f(lif.tau)
    else:
        scale = _f(lif.r) * _f(lif.w_in) * dt * dt / (_f(lif.tau_mem) * _f(lif.tau_syn))
    W_in, b, W = _f(w_in.weight), _f(w_in.bias), _f(w_rec.weight)
    W_out, b_out = _f(readout.weight), _f(readout.bias)
    folded = not np.allclose(scale, 1.0, rtol=1e-9, atol=0)
    if folded:
        W_in, b, W = W_in * scale[:, None], b * scale, W * scale[:, None]
    if s["readout"] == "leaky":
        r_scale = _f(li.r) * dt / _f(li.tau)
        if not np.allclose(r_scale, 1.0, rtol=1e-9, atol=0):
            W_out, b_out, folded = W_out * r_scale[:, None], b_out * r_scale, True
    if folded:
        if R.same_dt:
            warnings.warn("the graph's input scale r dt/tau is not 1 at its export dt (edited graph?); folded into "
                          "the weights", NIRImportWarning, stacklevel=3)
        _copy(model.weight_in, torch.as_tensor(W_in).to(dtype))
        _copy(model.bias, torch.as_tensor(b).to(dtype))
        _copy(model.weight_rec, torch.as_tensor(W).to(dtype))
        _copy(model.readout_layer.weight, torch.as_tensor(W_out).to(dtype))
        _copy(model.readout_layer.bias, torch.as_tensor(b_out).to(dtype))
        return model
    _copy(model.weight_in, _t(w_in.weight, dtype))
    _copy(model.bias, _t(w_in.bias, dtype))
    _copy(model.weight_rec, _t(w_rec.weight, dtype))
    _copy(model.readout_layer.weight, _t(readout.weight, dtype))
    _copy(model.readout_layer.bias, _t(readout.bias, dtype))
    return model


def _build_balanced(graph: nir.NIRGraph, dt: float, meta: dict):
    from surroflos.models import BalancedNetwork

    s = meta["model"]
    nodes, _ = ref.flatten(graph)
    lif = _node(nodes, "lif", ("LIF",), "BalancedNetwork")
    syn = _node(nodes, "syn", ("LI",), "BalancedNetwork")
    w_rec = _node(nodes, "w_rec", ("Linear",), "BalancedNetwork")
    for what, a in (("tau_m", lif.tau), ("tau_s", syn.tau)):
        a = _f(a)
        if not np.all(a == a[0]):
            raise ValueError(f"a BalancedNetwork has one {what} for all neurons; the graph's differ")
    _Restorer(dt, meta["dt"])  # (warns when dt is not the export dt)
    dtype = _torch_dtype(w_rec.weight)
    N, K = s["N"], s["K"]
    tau_m, tau_s = float(_f(lif.tau)[0]), float(_f(syn.tau)[0])
    model = BalancedNetwork(N, K, s["J0"], s["I0"], tau_m=tau_m, tau_s=tau_s, dt=dt, n_in=s["n_in"], n_out=s["n_out"],
                            synapse_norm=s["synapse_norm"], ei=s["ei"], f_E=s["f_E"], g=s["g"],
                            learn_recurrent=s["learn_recurrent"], surrogate=_surrogate(meta.get("surrogate")),
                            detach_reset=s["detach_reset"], dtype=dtype, backend=s["backend"],
                            generator=torch.Generator().manual_seed(0))
    r_expected = model.c * tau_s / meta["dt"]  # r = c tau_s / dt carries the spike charge dt of the export
    if not np.allclose(_f(syn.r), r_expected, rtol=1e-9):
        warnings.warn(f"node 'syn': r = {float(_f(syn.r)[0])} does not match the synapse normalisation "
                      f"{s['synapse_norm']!r} at the export dt={meta['dt']} (expected {r_expected}); the rebuilt "
                      f"network uses {s['synapse_norm']!r}", NIRImportWarning, stacklevel=3)
    J = _t(w_rec.weight, dtype)
    pre = (getattr(w_rec, "metadata", None) or {}).get("surroflos", {}).get("pre_idx")
    if pre is not None:
        pre = torch.as_tensor(np.asarray(pre)).long()
    else:  # the nonzero pattern, sorted per row
        nz = [torch.nonzero(row).reshape(-1) for row in J]
        if any(len(r) != K for r in nz):
            raise ValueError(f"node 'w_rec': a BalancedNetwork needs exactly K={K} synapses per row; without the "
                             "stored index pattern the nonzero pattern must have K entries per row")
        pre = torch.stack(nz)
    if tuple(pre.shape) != (N, K):
        raise ValueError(f"node 'w_rec': stored index pattern has shape {tuple(pre.shape)}, expected {(N, K)}")
    model.pre_idx = pre.to(device=model.pre_idx.device, dtype=torch.int32)
    _copy(model.weight_rec, torch.gather(J, 1, pre))
    if s["n_in"] > 0:
        _copy(model.weight_in, _t(_node(nodes, "w_in", ("Linear",), "BalancedNetwork").weight, dtype))
    _copy(model.drive, _t(lif.v_leak, dtype))
    if s["n_out"] > 0:
        readout = _node(nodes, "readout", ("Affine",), "BalancedNetwork")
        _copy(model.readout_layer.weight, _t(readout.weight, dtype))
        _copy(model.readout_layer.bias, _t(readout.bias, dtype))
    return model


def _spike_grad(info: Optional[dict]):
    if not info or "name" not in info:
        return None
    import snntorch.surrogate as ss

    from surroflos import surrogate as sg

    arg = {"atan": "alpha", "fast_sigmoid": "slope", "sigmoid": "slope"}.get(info["name"])
    if arg is not None:
        return getattr(ss, info["name"])(**{arg: info["scale"]})
    return sg.Surrogate(info["name"], info["scale"])


def _build_snntorch_layer(layer: dict, nodes: dict, R: _Restorer, dt: float) -> nn.Module:
    import snntorch

    from surroflos import snntorch as dropin

    cls_name = layer["type"].split(".")[1]
    s = layer["settings"]
    name, n = layer["node"], layer["n"]
    cuba = cls_name in ("Synaptic", "RSynaptic")
    node = _node(nodes, name, ("CubaLIF",) if cuba else ("LIF",), "stack")
    dtype = torch.float64 if np.asarray(node.metadata.get("surroflos", {}).get("beta", np.float32(0))).dtype == \
        np.float64 else torch.float32
    clamp = lambda t: t.clamp(0, 1)  # noqa: E731
    beta_d = _decay(node.tau_mem if cuba else node.tau, dt, name, "beta")
    beta = R.get(node, "beta", beta_d, name, clamp)
    beta = _scalar_or_vector(beta_d, dtype) if beta is None else beta
    theta = R.get(node, "threshold", _f(node.v_threshold), name)
    theta = _scalar_or_vector(node.v_threshold, dtype) if theta is None else theta
    g = (node.metadata or {}).get("surroflos", {}).get("graded_spikes_factor")
    kwargs = dict(beta=beta, threshold=theta, spike_grad=_spike_grad(layer.get("surrogate")),
                  init_hidden=s.get("init_hidden", False),
                  surrogate_disable=s["surrogate_disable"], learn_beta=s["learn_beta"],
                  learn_threshold=s["learn_threshold"], reset_mechanism=s["reset_mechanism"], output=s["output"],
                  reset_delay=s["reset_delay"])
    if cuba:
        alpha_d = _decay(node.tau_syn, dt, name, "alpha")
        alpha = R.get(node, "alpha", alpha_d, name, clamp)
        kwargs["alpha"] = _scalar_or_vector(alpha_d, dtype) if alpha is None else alpha
        kwargs["learn_alpha"] = s["learn_alpha"]
    if cls_name == "Leaky":
        kwargs["graded_spikes_factor"] = torch.as_tensor(np.asarray(g)) if g is not None else 1.0
        kwargs["learn_graded_spikes_factor"] = s["learn_graded_spikes_factor"]
    rec = None
    if cls_name in ("RLeaky", "RSynaptic"):
        rec = _node(nodes, layer["recurrent_node"], ("Affine", "Linear"), "stack")
        kwargs.update(all_to_all=s["all_to_all"], learn_recurrent=s["learn_recurrent"])
        if s["all_to_all"]:
            kwargs["linear_features"] = n
        else:
            V = (rec.metadata or {}).get("surroflos", {}).get("V")
            kwargs["V"] = torch.as_tensor(np.asarray(V)) if V is not None else \
                torch.as_tensor(np.diag(np.asarray(rec.weight)).copy())
    cls = getattr(dropin if s["dropin"] else snntorch, cls_name)
    module = cls(**kwargs)
    if cls_name != "Leaky" and g is not None:  # only Leaky's constructor takes it
        module.graded_spikes_factor = torch.as_tensor(np.asarray(g))
    if rec is not None and s["all_to_all"]:
        w = _t(rec.weight, _torch_dtype(rec.weight))
        lin = nn.Linear(n, n, bias=isinstance(rec, nir.Affine), dtype=w.dtype)
        _copy(lin.weight, w)
        if lin.bias is not None:
            _copy(lin.bias, _t(rec.bias, w.dtype))
        module.recurrent = lin
        if not s["learn_recurrent"]:
            for p in lin.parameters():
                p.requires_grad_(False)
    return module


def _build_norse_layer(layer: dict, nodes: dict, R: _Restorer, dt: float) -> nn.Module:
    from surroflos import norse as dropin

    nt = _norse()
    cls_name = layer["type"].split(".")[1]
    s = layer["settings"]
    name = layer["node"]
    box = cls_name in ("LIFBoxCell", "LIFBox")
    node = _node(nodes, name, ("LIF",) if box else ("CubaLIF",), "stack")
    stored = (node.metadata or {}).get("surroflos", {})
    dtype = torch.float64 if np.asarray(stored.get("v_th", np.float32(0))).dtype == np.float64 else torch.float32
    layer_dt = s["dt"]
    derived = {"tau_mem_inv": 1.0 / _f(node.tau if box else node.tau_mem), "v_leak": _f(node.v_leak),
               "v_th": _f(node.v_threshold), "v_reset": _f(node.v_reset)}
    if not box:
        derived["tau_syn_inv"] = 1.0 / _f(node.tau_syn)
    fields = {}
    for f, d in derived.items():
        v = R.get(node, f, d, name)
        fields[f] = _scalar_or_vector(d, dtype) if v is None else v
    alpha = torch.as_tensor(s["alpha"])
    ns = dropin if s["dropin"] else nt
    if box:
        from norse.torch.functional.reset import reset_subtract, reset_value

        p = nt.LIFBoxParameters(method=s["method"], alpha=alpha,
                                reset_method=reset_subtract if s.get("reset_method") == "subtract" else reset_value,
                                **fields)
        if cls_name == "LIFBoxCell":
            return ns.LIFBoxCell(p, dt=layer_dt)
        return dropin.LIFBox(p, dt=layer_dt, record_states=s["record_states"])
    p = nt.LIFParameters(method=s["method"], alpha=alpha, **fields)
    if cls_name == "LIFCell":
        return ns.LIFCell(p, dt=layer_dt)
    if cls_name == "LIF":
        return ns.LIF(p, dt=layer_dt, record_states=s["record_states"])
    w_in = _node(nodes, layer["input_node"], ("Linear",), "stack")
    w_rec = _node(nodes, layer["recurrent_node"], ("Linear",), "stack")
    win, wrec = _t(w_in.weight, _torch_dtype(w_in.weight)), _t(w_rec.weight, _torch_dtype(w_rec.weight))
    cls = getattr(ns, cls_name)
    kw = dict(record_states=s["record_states"]) if cls_name == "LIFRecurrent" else {}
    return cls(s["input_size"], s["hidden_size"], p, input_weights=nn.Parameter(win),
               recurrent_weights=nn.Parameter(wrec), autapses=s["autapses"], dt=layer_dt, **kw)


def _build_stack(graph: nir.NIRGraph, dt: float, meta: dict) -> nn.Sequential:
    if not math.isclose(dt, meta["dt"], rel_tol=1e-12):
        return _build_foreign(graph, dt, f"the layered graph was exported for dt={meta['dt']} s and its layer options "
                                         f"apply only there; for dt={dt} s it is rebuilt like a foreign graph")
    nodes, _ = ref.flatten(graph)
    R = _Restorer(dt, meta["dt"])
    modules = []
    for layer in meta["layers"]:
        kind = layer["type"]
        if kind == "torch.Linear":
            node = _node(nodes, layer["node"], ("Affine", "Linear"), "stack")
            w = _t(node.weight, _torch_dtype(node.weight))
            lin = nn.Linear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine), dtype=w.dtype)
            _copy(lin.weight, w)
            if lin.bias is not None:
                _copy(lin.bias, _t(node.bias, w.dtype))
            modules.append(lin)
        elif kind.startswith("snntorch."):
            modules.append(_build_snntorch_layer(layer, nodes, R, dt))
        elif kind.startswith("norse."):
            modules.append(_build_norse_layer(layer, nodes, R, dt))
        else:
            raise ValueError(f"unknown layer type {kind!r} in the graph's metadata")
    return nn.Sequential(*modules)


# ----------------------------------------------------------------------------------------------
# Foreign graphs
# ----------------------------------------------------------------------------------------------


def _chain(nodes: dict, edges: list) -> tuple[list[str], dict[str, str]]:
    """The node chain from Input to Output and the recurrent partner of each neuron node."""
    rec: dict[str, str] = {}
    for a, b in edges:
        ka, kb = type(nodes[a]).__name__, type(nodes[b]).__name__
        if ka in ("LIF", "CubaLIF") and kb in ("Affine", "Linear") and (b, a) in edges:
            others = [e for e in edges if (e[0] == b or e[1] == b) and e not in ((a, b), (b, a))]
            if not others:
                rec[a] = b
    rest = [(a, b) for a, b in edges if not (a in rec and rec[a] == b) and not (b in rec and rec[b] == a)]
    succ: dict[str, list[str]] = {}
    for a, b in rest:
        succ.setdefault(a, []).append(b)
    inputs = [k for k, v in nodes.items() if isinstance(v, nir.Input)]
    if len(inputs) != 1:
        raise NotImplementedError(f"from_nir rebuilds graphs with one Input node; this one has {len(inputs)}")
    chain, cur = [], inputs[0]
    while True:
        chain.append(cur)
        nxt = succ.get(cur, [])
        if not nxt:
            break
        if len(nxt) > 1:
            raise NotImplementedError(f"from_nir rebuilds chains of layers; node {cur!r} feeds {len(nxt)} nodes "
                                      f"({nxt})")
        cur = nxt[0]
        if cur in chain:
            raise NotImplementedError(f"from_nir found a cycle through {cur!r} that is not a neuron's recurrent edge")
    if len(chain) + len(rec) != len(nodes):
        left = sorted(set(nodes) - set(chain) - set(rec.values()))
        raise NotImplementedError(f"from_nir rebuilds chains of layers; nodes {left} are off the Input->Output chain")
    if not isinstance(nodes[chain[-1]], nir.Output):
        raise NotImplementedError(f"the chain from the Input node ends at {chain[-1]!r}, not at an Output node")
    # Pass-through nodes of inlined subgraphs carry nothing.
    return [c for c in chain if type(nodes[c]).__name__ not in ("_Pass",)], rec


def _lin_parts(node: Any) -> tuple[np.ndarray, np.ndarray]:
    w = _f(node.weight)
    b = _f(node.bias) if isinstance(node, nir.Affine) else np.zeros(w.shape[0])
    return w, b


def _build_foreign(graph: nir.NIRGraph, dt: float, why: str = "the graph has no surroflos metadata"):
    nodes, edges, sizes = ref.validate(graph)
    chain, rec = _chain(nodes, edges)
    assumed: list[str] = [f"dt={dt} s per step (Euler discretisation, see surroflos.export.reference)",
                          "the default surrogate atan(2) for gradients"]
    dtype = torch.float32
    for k in chain:
        if isinstance(nodes[k], (nir.Affine, nir.Linear)):
            dtype = _torch_dtype(nodes[k].weight)
            break
    body = chain[1:-1]
    kinds = [type(nodes[k]).__name__ for k in body]
    for k, kind in zip(body, kinds):
        if kind not in ("Affine", "Linear", "LIF", "CubaLIF", "LI"):
            raise NotImplementedError(f"from_nir cannot rebuild node {k!r} of type {kind} in a foreign graph "
                                      "(supported: Affine, Linear, LIF, CubaLIF, LI)")
    # Pending linear map (W, b) that feeds the next neuron node: scales are folded into it.
    layers: list[tuple[str, Any]] = []  # ("linear", (W, b)) | ("lif", name) | ("cuba", name) | ("li", name)
    for k, kind in zip(body, kinds):
        if kind in ("Affine", "Linear"):
            W, b = _lin_parts(nodes[k])
            if layers and layers[-1][0] == "linear":  # two linear maps in a row: compose them
                W0, b0 = layers[-1][1]
                W, b = W @ W0, W @ b0 + b
                layers.pop()
            layers.append(("linear", (W, b)))
        else:
            layers.append((kind.lower() if kind != "CubaLIF" else "cuba", k))
    neuron_layers = [x for x in layers if x[0] in ("lif", "cuba")]
    li_layers = [i for i, x in enumerate(layers) if x[0] == "li"]
    if li_layers and (li_layers != [len(layers) - 1] or len(neuron_layers) != 1 or neuron_layers[0][0] != "lif"):
        raise NotImplementedError("from_nir rebuilds an LI node only as the leaky readout of a single recurrent LIF "
                                  "layer ([Affine] -> LIF -> [Affine] -> LI -> Output)")
    spiking_rnn = (len(neuron_layers) == 1 and neuron_layers[0][0] == "lif" and neuron_layers[0][1] in rec
                   and layers[0][0] == "linear" and layers[1][0] == "lif")
    if spiking_rnn:
        return _foreign_spiking_rnn(nodes, layers, rec, dt, dtype, assumed, why)
    modules: list[nn.Module] = []
    pending: Optional[tuple[np.ndarray, np.ndarray]] = None

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            W, b = pending
            lin = nn.Linear(W.shape[1], W.shape[0], dtype=dtype)
            _copy(lin.weight, torch.as_tensor(W).to(dtype))
            _copy(lin.bias, torch.as_tensor(b).to(dtype))
            modules.append(lin)
            pending = None

    for kind, item in layers:
        if kind == "linear":
            pending = item
            continue
        node, name = nodes[item], item
        n = sizes[name][0]
        if pending is None:  # the neuron reads the raw input: an identity map to fold scales into
            pending = (np.eye(n), np.zeros(n))
        W, b = pending
        R = rec.get(name)
        Wr, br = _lin_parts(nodes[R]) if R else (None, None)
        if kind == "lif":
            tau = _f(node.tau)
            s = _f(node.r) * dt / tau
            pending = (W * s[:, None], b * s + dt / tau * _f(node.v_leak) + (s * br if R else 0.0))
            if np.any(_f(node.v_reset) != 0):
                assumed.append(f"node {name!r}: v_reset = 0 (snnTorch's zero reset; the graph has v_reset != 0)")
            flush()
            from surroflos import snntorch as dropin

            beta = _scalar_or_vector(_decay(tau, dt, name, "beta"), dtype)
            theta = _scalar_or_vector(node.v_threshold, dtype)
            if R:
                layer = dropin.RLeaky(beta=beta, threshold=theta, reset_mechanism="zero", reset_delay=False,
                                      all_to_all=True, linear_features=n)
                lin = nn.Linear(n, n, bias=False, dtype=dtype)
                _copy(lin.weight, torch.as_tensor(Wr * s[:, None]).to(dtype))
                layer.recurrent = lin
                assumed.append(f"node {name!r}: snnTorch RLeaky(reset_mechanism='zero', reset_delay=False)")
            else:
                layer = dropin.Leaky(beta=beta, threshold=theta, reset_mechanism="zero")
                assumed.append(f"node {name!r}: snnTorch Leaky(reset_mechanism='zero')")
            modules.append(layer)
        else:  # CubaLIF: Norse's cell, whose current j = r i absorbs the input scale r w_in dt / tau_syn
            tau_syn, tau_mem = _f(node.tau_syn), _f(node.tau_mem)
            s = _f(node.r) * _f(node.w_in) * dt / tau_syn
            pending = (W * s[:, None], b * s + (s * br if R else 0.0))
            flush()
            nt = _norse()
            from surroflos import norse as dropin_n

            p = nt.LIFParameters(tau_syn_inv=_scalar_or_vector(1.0 / tau_syn, dtype),
                                 tau_mem_inv=_scalar_or_vector(1.0 / tau_mem, dtype),
                                 v_leak=_scalar_or_vector(node.v_leak, dtype),
                                 v_th=_scalar_or_vector(node.v_threshold, dtype),
                                 v_reset=_scalar_or_vector(node.v_reset, dtype))
            if R:
                eye = torch.eye(n, dtype=dtype)
                layer = dropin_n.LIFRecurrentCell(n, n, p, input_weights=nn.Parameter(eye),
                                                  recurrent_weights=nn.Parameter(torch.as_tensor(Wr * s[:, None])
                                                                                 .to(dtype)),
                                                  autapses=True, dt=dt)
                assumed.append(f"node {name!r}: Norse LIFRecurrentCell (membranes start at v_leak)")
            else:
                layer = dropin_n.LIFCell(p, dt=dt)
                assumed.append(f"node {name!r}: Norse LIFCell (membranes start at v_leak)")
            modules.append(layer)
    flush()
    warnings.warn(f"{why}; rebuilt the closest model, an nn.Sequential of "
                  f"{[type(m).__name__ for m in modules]}. Assumed: " + "; ".join(assumed), NIRImportWarning,
                  stacklevel=3)
    return nn.Sequential(*modules)


def _foreign_spiking_rnn(nodes: dict, layers: list, rec: dict, dt: float, dtype: torch.dtype, assumed: list,
                         why: str):
    from surroflos.models import SpikingRNN

    (W, b), name = layers[0][1], layers[1][1]
    node = nodes[name]
    n = W.shape[0]
    tau = _f(node.tau)
    s = _f(node.r) * dt / tau
    Wr, br = _lin_parts(nodes[rec[name]])
    readout = [x for x in layers[2:] if x[0] == "linear"]
    leaky = any(x[0] == "li" for x in layers)
    Wo, bo = readout[0][1] if readout else (np.eye(n), np.zeros(n))
    if not readout:
        assumed.append("an identity readout (the graph has none)")
    readout_beta = 0.9
    if leaky:
        li = nodes[layers[-1][1]]
        tau_r = _f(li.tau)
        scale = _f(li.r) * dt / tau_r
        if not (np.all(tau_r == tau_r[0]) and np.allclose(_f(li.v_leak), 0)):
            raise NotImplementedError("an LI readout needs one time constant and v_leak = 0 to become SpikingRNN's "
                                      "leaky readout")
        readout_beta = float(_decay(tau_r, dt, layers[-1][1], "readout_beta")[0])
        Wo, bo = Wo * scale[:, None], bo * scale
    if np.any(_f(node.v_reset) != 0):
        assumed.append(f"node {name!r}: v_reset = 0 (the graph has v_reset != 0)")
    model = SpikingRNN(W.shape[1], n, Wo.shape[0], neuron="lif", beta=_scalar_or_vector(_decay(tau, dt, name, "beta"),
                                                                                         dtype),
                       threshold=_scalar_or_vector(node.v_threshold, dtype), reset="zero",
                       readout="leaky" if leaky else "linear", readout_beta=readout_beta, dtype=dtype,
                       generator=torch.Generator().manual_seed(0))
    _copy(model.weight_in, torch.as_tensor(W * s[:, None]).to(dtype))
    _copy(model.bias, torch.as_tensor(b * s + dt / tau * _f(node.v_leak) + s * br).to(dtype))
    _copy(model.weight_rec, torch.as_tensor(Wr * s[:, None]).to(dtype))
    _copy(model.readout_layer.weight, torch.as_tensor(Wo).to(dtype))
    _copy(model.readout_layer.bias, torch.as_tensor(bo).to(dtype))
    warnings.warn(f"{why}; rebuilt the closest model, SpikingRNN(neuron='lif', "
                  "reset='zero') (NIR's LIF resets to v_reset: the zero reset). Assumed: " + "; ".join(assumed),
                  NIRImportWarning, stacklevel=3)
    return model


# ----------------------------------------------------------------------------------------------
# Public
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Graphs written by snnTorch's and Norse's own exporters
# ----------------------------------------------------------------------------------------------

PRODUCERS = ("snntorch", "norse")


def _broadcast(a: Any, n: int) -> np.ndarray:
    a = _f(a).reshape(-1)
    return np.full(n, a[0]) if a.size == 1 else a


def _producer_chain(graph: nir.NIRGraph) -> tuple[dict, list, dict]:
    nodes, edges = ref.flatten(graph)
    rec: dict[str, str] = {}
    for a, b in edges:
        if isinstance(nodes[a], (nir.LIF, nir.CubaLIF)) and isinstance(nodes[b], (nir.Affine, nir.Linear)) and \
                (b, a) in edges:
            rec[a] = b
    rest = [(a, b) for a, b in edges if rec.get(a) != b and rec.get(b) != a]
    succ: dict[str, str] = {}
    for a, b in rest:
        if a in succ:
            raise NotImplementedError(f"from_nir(producer=...) rebuilds chains of layers; {a!r} feeds several nodes")
        succ[a] = b
    start = [k for k, v in nodes.items() if isinstance(v, nir.Input)]
    if len(start) != 1:
        raise NotImplementedError("from_nir(producer=...) rebuilds graphs with one Input node")
    chain, cur = [], start[0]
    while cur in succ:
        cur = succ[cur]
        if not isinstance(nodes[cur], (nir.Output, ref._Pass)):
            chain.append(cur)
    return nodes, chain, rec


def _linear_from(node: Any, dtype: torch.dtype) -> nn.Linear:
    w = _t(node.weight, dtype)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine), dtype=dtype)
    _copy(lin.weight, w)
    if lin.bias is not None:
        _copy(lin.bias, _t(node.bias, dtype))
    return lin


def _build_producer(graph: nir.NIRGraph, dt: float, producer: str, reset: Optional[str],
                    reset_delay: Optional[bool]) -> nn.Sequential:
    """Rebuild the network an snnTorch 1.0 / Norse 1.1 exporter wrote, in its own conventions."""
    nodes, chain, rec = _producer_chain(graph)
    dtype = torch.float32
    modules: list[nn.Module] = []
    width = None
    for name in chain:
        node = nodes[name]
        if isinstance(node, (nir.Affine, nir.Linear)):
            lin = _linear_from(node, dtype)
            modules.append(lin)
            width = lin.out_features
            continue
        if not isinstance(node, (nir.LIF, nir.CubaLIF)):
            raise NotImplementedError(f"from_nir(producer={producer!r}) cannot rebuild node {name!r} "
                                      f"({type(node).__name__})")
        n = width if width is not None else _f(node.v_threshold).size
        if producer == "snntorch":
            from surroflos import snntorch as sn

            opts = dict(reset_mechanism=reset or "subtract")
            tau = node.tau if isinstance(node, nir.LIF) else node.tau_mem
            beta = _scalar_or_vector(1.0 - 1e-4 / _broadcast(tau, n), dtype)
            theta = _scalar_or_vector(_broadcast(node.v_threshold, n), dtype)
            if isinstance(node, nir.CubaLIF):
                alpha = _scalar_or_vector(1.0 - 1e-4 / _broadcast(node.tau_syn, n), dtype)
                if name in rec:
                    raise NotImplementedError("from_nir(producer='snntorch'): RSynaptic graphs are not rebuilt")
                layer = sn.Synaptic(alpha=alpha, beta=beta, threshold=theta, reset_delay=bool(
                    True if reset_delay is None else reset_delay), **opts)
            elif name in rec:
                w = nodes[rec[name]]
                layer = sn.RLeaky(beta=beta, threshold=theta, linear_features=n, reset_delay=bool(
                    True if reset_delay is None else reset_delay), **opts)
                _copy(layer.recurrent.weight, _t(w.weight, dtype))
                _copy(layer.recurrent.bias, _t(w.bias, dtype) if isinstance(w, nir.Affine) else
                      torch.zeros(n, dtype=dtype))
            else:
                layer = sn.Leaky(beta=beta, threshold=theta, **opts)
        else:
            from surroflos import norse as dn

            if name in rec:
                raise NotImplementedError("from_nir(producer='norse'): Norse's exporter writes no recurrence")
            common = dict(v_leak=_scalar_or_vector(_broadcast(node.v_leak, n), dtype),
                          v_th=_scalar_or_vector(_broadcast(node.v_threshold, n), dtype),
                          v_reset=_scalar_or_vector(_broadcast(getattr(node, "v_reset", 0.0) if
                                                               getattr(node, "v_reset", None) is not None else 0.0, n),
                                                    dtype))
            if isinstance(node, nir.LIF):  # Norse writes tau = dt / tau_mem_inv
                layer = dn.LIFBoxCell(dn.LIFBoxParameters(tau_mem_inv=_scalar_or_vector(dt / _broadcast(node.tau, n),
                                                                                         dtype), **common), dt=dt)
            else:
                layer = dn.LIFCell(dn.LIFParameters(tau_syn_inv=_scalar_or_vector(dt / _broadcast(node.tau_syn, n),
                                                                                  dtype),
                                                    tau_mem_inv=_scalar_or_vector(dt / _broadcast(node.tau_mem, n),
                                                                                  dtype), **common), dt=dt)
        modules.append(layer)
    return nn.Sequential(*modules)


def from_nir(graph_or_path: Union[nir.NIRGraph, str, os.PathLike], dt: float, *, producer: Optional[str] = None,
             reset: Optional[str] = None, reset_delay: Optional[bool] = None):
    """Rebuild a model from a NIR graph or file for time step ``dt`` (seconds); see the module docstring.

    Returns a :class:`~surroflos.SpikingRNN`, :class:`~surroflos.BalancedNetwork` or ``nn.Sequential``.

    ``producer``: a graph written by another library's exporter, read in that exporter's conventions, so that the
    rebuilt network reproduces the exported network's spikes:

    - ``"snntorch"`` (``snntorch.export_nir.export_to_nir``, snnTorch 1.0): time constants for its fixed
      ``dt = 1e-4`` (``beta = 1 - 1e-4/tau``), ``Leaky``/``Synaptic`` nodes and ``RLeaky``'s recurrent subgraph
      (``<i>.lif <-> <i>.w_rec``) become surroflos's snnTorch drop-ins. NIR stores no reset: ``reset`` /
      ``reset_delay`` give the exported layers' (default: snnTorch's defaults, ``"subtract"`` and ``True``).
    - ``"norse"`` (``norse.torch.to_nir``, Norse 1.1): Norse writes ``tau = dt / tau_inv`` and one value per
      layer; ``dt`` must be the step the Norse network ran with (its default 1e-3). ``LIF`` -> ``LIFBoxCell``,
      ``CubaLIF`` -> ``LIFCell`` (surroflos's Norse drop-ins, membranes starting at ``v_leak``).
    """
    if producer is not None:
        if producer not in PRODUCERS:
            raise ValueError(f"unknown producer {producer!r}; choose None or one of {PRODUCERS}")
        if reset is not None and reset not in ("subtract", "zero", "none"):
            raise ValueError(f"reset must be 'subtract', 'zero' or 'none', got {reset!r}")
        if producer == "norse" and (reset is not None or reset_delay is not None):
            raise ValueError("reset/reset_delay describe snnTorch layers; Norse's LIF resets to v_reset")
        graph = nir.read(str(graph_or_path)) if isinstance(graph_or_path, (str, os.PathLike)) else graph_or_path
        if not isinstance(graph, nir.NIRGraph):
            raise TypeError(f"from_nir expects a nir.NIRGraph or a path, got {type(graph_or_path).__name__}")
        dt = _check_dt(dt)
        if producer == "snntorch" and not math.isclose(dt, 1e-4, rel_tol=1e-12):
            warnings.warn(f"snnTorch's exporter writes time constants for dt = 1e-4 s; the rebuilt layers step with "
                          f"snnTorch's beta = 1 - 1e-4/tau whatever dt={dt} says", NIRImportWarning, stacklevel=2)
        return _build_producer(graph, dt, producer, reset, reset_delay)
    if reset is not None or reset_delay is not None:
        raise ValueError("reset/reset_delay apply with producer='snntorch' only")
    if isinstance(graph_or_path, (str, os.PathLike)):
        graph = read(graph_or_path)
    elif isinstance(graph_or_path, nir.NIRGraph):
        graph = graph_or_path
        ref.validate(graph)
    else:
        raise TypeError(f"from_nir expects a nir.NIRGraph or a path, got {type(graph_or_path).__name__}")
    dt = _check_dt(dt)
    meta = metadata_of(graph)
    if meta is None:
        return _build_foreign(graph, dt)
    if meta.get("consumer"):
        c = meta["consumer"]["consumer"]
        raise ValueError(f"this graph is the form written for consumer={c!r} (time constants for its dt "
                         f"{meta['consumer']['consumer_dt']:g}, its reset and recurrence layout); from_nir rebuilds "
                         "models from the spec-exact file: export with consumer=None")
    kind = meta.get("model_class")
    if kind == "SpikingRNN":
        return _build_spiking_rnn(graph, dt, meta)
    if kind == "BalancedNetwork":
        return _build_balanced(graph, dt, meta)
    if kind == "Sequential":
        return _build_stack(graph, dt, meta)
    raise ValueError(f"the graph's metadata names an unknown model class {kind!r}")
