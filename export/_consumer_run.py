"""Run a NIR file in one consumer (spyx, rockpool, sinabs) with that consumer's own modules, in its own environment.

Standalone: imports only numpy, nir and the consumer, so that it runs in the environments ``make interop``
builds (sinabs pins ``nir<=1.0.4`` and cannot live next to surroflos). Used by
:func:`surroflos.export.verify` as::

    <env>/bin/python _consumer_run.py CONSUMER GRAPH.nir INPUTS.npy OUT.npz

``INPUTS.npy``: ``[T, B, n_in]`` float64. ``OUT.npz``: ``output [T, B, n_out]`` and ``spikes/<node>
[T, B, N]`` for every spiking node (the node's own output, recorded while the consumer runs), ``version``;
or ``error`` (a string) when the consumer fails. Each consumer is driven the way its documentation shows:

- spyx: ``spyx.nir.from_nir`` builds the model; its ``Sequential`` layers are stepped one by one with
  ``jax.lax.scan``'s per-step protocol ``(x_t, state) -> (out, state)`` so that each spiking layer's output is
  recorded (the same loop ``Sequential.__call__`` runs);
- rockpool: ``rockpool.nn.modules.torch.nir.from_nir`` (a nirtorch ``GraphExecutor``), called once on the whole
  ``[B, T, n]`` sequence (its modules loop over time themselves and keep only batch 0's state between calls);
- sinabs: ``sinabs.nir.from_nir(graph, batch_size=B, num_timesteps=1)``, called once per step (its layers keep
  their membranes between calls).
"""

import sys
import traceback

import numpy as np


def _spiking(graph):
    import nir

    names = []
    for k, v in graph.nodes.items():
        if isinstance(v, (nir.LIF, nir.CubaLIF, nir.IF)):
            names.append(k)
        elif isinstance(v, nir.NIRGraph):
            names += [k for k2, v2 in v.nodes.items() if isinstance(v2, (nir.LIF, nir.CubaLIF, nir.IF))][:1]
    return names


def run_spyx(graph, x):
    import jax
    import jax.numpy as jnp
    import spyx
    from flax import nnx
    from spyx import nir as snir

    model = snir._build_model(graph, 1.0 if "dt" not in graph.metadata else float(graph.metadata.get("dt", 1.0)),
                              nnx.Rngs(0))
    # The layer keys follow the chain from "input" (spyx's own ordering); a recurrent layer is named after its
    # neuron node.
    keys = []
    cur = "input"
    edges = list(graph.edges)
    while True:
        nxt = next((b for a, b in edges if a == cur), None)
        if nxt is None or nxt == "output":
            break
        keys.append(nxt)
        cur = nxt
    state = model.initial_state(x.shape[1])
    outs, rec = [], {}
    xs = jnp.asarray(x, dtype=jnp.float32)
    layers = list(model.layers)
    names = [k for k in keys if k in graph.nodes]
    for t in range(x.shape[0]):
        h = xs[t]
        new_state = []
        for i, (layer, s) in enumerate(zip(layers, state)):
            if s is not None:
                h, s = layer(h, s)
                name = names[i] if i < len(names) else f"layer{i}"
                rec.setdefault(name, []).append(np.asarray(h, dtype=np.float64))
            else:
                h = layer(h)
            new_state.append(s)
        state = new_state
        outs.append(np.asarray(h, dtype=np.float64))
    return np.stack(outs), {k: np.stack(v) for k, v in rec.items()}, spyx.__version__ if hasattr(spyx, "__version__") \
        else "?"


def _executor_run(module, x_steps):
    """Step a nirtorch GraphExecutor and collect each node's cached output."""
    import torch

    state, outs, cache = None, [], {}
    with torch.no_grad():
        for xt in x_steps:
            y, state = module(xt, state)
            outs.append(y)
            for k, v in state.cache.items():
                cache.setdefault(k, []).append(v)
    return outs, cache


def run_rockpool(graph, x):
    import torch
    import rockpool
    from rockpool.nn.modules.torch.nir import from_nir

    module = from_nir(graph)
    xb = torch.as_tensor(np.transpose(x, (1, 0, 2)), dtype=torch.float32)  # [B, T, n]
    outs, cache = _executor_run(module, [xb])
    out = outs[0].detach().double().numpy().transpose(1, 0, 2)
    spikes = {}
    for name in _spiking(graph):
        v = cache.get(name.replace(".", "_"))
        if v is not None:
            spikes[name] = v[0].detach().double().numpy().transpose(1, 0, 2)
    return out, spikes, rockpool.__version__


def run_sinabs(graph, x):
    import torch
    import sinabs
    from sinabs.nir import from_nir

    module = from_nir(graph, batch_size=x.shape[1], num_timesteps=1)
    steps = [torch.as_tensor(x[t], dtype=torch.float32) for t in range(x.shape[0])]
    outs, cache = _executor_run(module, steps)
    out = np.stack([o.detach().double().numpy() for o in outs])
    spikes = {}
    for name in _spiking(graph):
        v = cache.get(name.replace(".", "_"))
        if v is not None and len(v) == x.shape[0]:
            spikes[name] = np.stack([s.detach().double().numpy() for s in v])
    return out, spikes, sinabs.__version__


def _read_dropping_unknown(path):
    """Read a NIR file with this environment's nir, dropping node fields its node classes do not take (a file of
    nir 1.0.8 read by nir 1.0.4, which has no ``v_reset``). Returns ``(graph, dropped field names)``."""
    import inspect

    import h5py
    import nir
    from nir.serialization import hdf2dict

    dropped = set()

    def clean(d):
        if not isinstance(d, dict) or "type" not in d:
            return d
        kind = d["type"].decode("utf8") if isinstance(d["type"], bytes) else str(d["type"])
        d = dict(d)
        if kind == "NIRGraph":
            d["nodes"] = {k: clean(v) for k, v in d["nodes"].items()}
            return d
        if kind in ("Input", "Output"):  # nir 1.0.4 reads these from a "shape" field
            types = d.pop("input_type" if kind == "Input" else "output_type", None)
            if isinstance(types, dict) and "shape" not in d:
                d["shape"] = next(iter(types.values()))
                dropped.add(f"{kind}.{'input' if kind == 'Input' else 'output'}_type (as shape)")
            d.pop("output_type" if kind == "Input" else "input_type", None)
            return d
        params = inspect.signature(getattr(nir, kind)).parameters
        for k in list(d):
            if k not in ("type",) and k not in params:
                dropped.add(f"{kind}.{k}")
                del d[k]
        return d

    with h5py.File(path, "r") as f:
        data = clean(hdf2dict(f["node"]))
    return nir.dict2NIRNode(data), sorted(dropped)


def main(argv):
    consumer, gpath, xpath, opath = argv[1:5]
    try:
        import nir

        read_note = ""
        try:
            graph = nir.read(gpath)
        except (TypeError, KeyError) as err:  # an older nir than the file's: say so, and read what it knows
            graph, dropped = _read_dropping_unknown(gpath)
            read_note = f"nir.read failed ({type(err).__name__}: {err}); read with {', '.join(dropped)} dropped"
        x = np.load(xpath)
        out, spikes, version = {"spyx": run_spyx, "rockpool": run_rockpool, "sinabs": run_sinabs}[consumer](graph, x)
        np.savez(opath, output=out, version=str(version), read_note=read_note,
                 **{f"spikes/{k}": v for k, v in spikes.items()})
    except BaseException as err:  # the consumer's failure is the result
        msg = f"{type(err).__name__}: {err}".strip()
        np.savez(opath, error=msg.splitlines()[0][:400] if msg else type(err).__name__,
                 trace=traceback.format_exc()[-2000:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
