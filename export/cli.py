"""``surroflos export``: a trained run as a NIR file, checked against a hardware target.

::

    surroflos export RUN_DIR --dt DT [--out model.nir] [--target generic|loihi2|spinnaker2|xylo|speck]
                     [--consumer nir|norse|snntorch|spyx|rockpool|sinabs] [--verify] [--quantize] [--bits B]
                     [--trials N] [--via auto|model|nir] [--strict]

Loads ``config.json`` and ``checkpoint.pt`` of a ``surroflos train`` run (the network rebuilt with
:func:`surroflos.train.build_model`, the checkpoint's weights loaded), writes the NIR graph (its
metadata holds the training configuration), reads the file back and prints a summary: nodes, shapes
and parameter ranges; the target check (:func:`surroflos.export.targets.check_graph`); with
``--verify`` the agreement of each simulator with the model (:func:`surroflos.export.verify`); with
``--consumer NAME`` the file is the form that consumer runs exactly (:mod:`surroflos.export.consumers`; a
consumer that cannot run the network exactly is a usage error naming the reason and the nearest exact
alternative, and nothing is written); with
``--quantize`` accuracy and spike agreement after weight quantisation
(:func:`~surroflos.export.targets.evaluate_quantized`) and the quantised graph as a second file
``<out>.<target>.q<bits>.nir``; with ``--consumer NAME --quantize`` the quantised network in that consumer's form
(:func:`~surroflos.export.targets.quantize_consumer_form`), run in the consumer's own importer for the accuracy and
agreement, and written as ``<out>.<target>.q<bits>.<NAME>.nir``. Everything printed also goes to a JSON report
beside the ``.nir`` file (``<out without .nir>.export.json``).

``surroflos/cli.py`` wires it in with ``add_export_parser(subparsers)``; ``cmd_export(args)`` returns
the exit status (0; 1 with ``--strict`` when the target check finds errors) and raises
:class:`~surroflos.errors.UsageError` for a bad run folder, checkpoint, ``--out`` or an unsupported
model, which the command line reports as one line with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from typing import Any, Optional

import numpy as np

from .._argtypes import positive_float as _positive_float
from .._io import atomic_json, ensure_writable_folder
from ..errors import UsageError
from .._argtypes import positive_int as _positive_int
from .consumers import CONSUMERS, ConsumerRefusal
from .targets import TARGETS, _flow_order, check_graph, format_issues, get_target

__all__ = ["add_export_parser", "cmd_export", "graph_summary", "format_graph_table", "report_path"]


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to ``surroflos``'s subparsers (sets ``func=cmd_export``)."""
    p = subparsers.add_parser(
        "export", help="write a trained run as a NIR graph; check it against a hardware target",
        description="Export the network of a `surroflos train` run folder to NIR, print nodes, shapes and "
                    "parameter ranges, check the graph against a hardware profile, optionally verify it in "
                    "other simulators (--verify) and measure weight quantisation (--quantize). Writes "
                    "<out> and a JSON report <out>.export.json.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder written by `surroflos train --out RUN_DIR`")
    p.add_argument("--out", default=None, help="NIR file to write (default RUN_DIR/model.nir)")
    p.add_argument("--dt", type=_positive_float, required=True,
                   help="seconds per simulation step (NIR stores time constants in seconds), e.g. 1e-3")
    p.add_argument("--target", choices=list(TARGETS), default="generic",
                   help="hardware profile to check against and quantise for (default generic)")
    p.add_argument("--consumer", choices=list(CONSUMERS), default=None,
                   help="write the form of the graph this NIR consumer runs exactly (its dt, r, reset and "
                        "recurrence layout); default: the spec-exact file of NIR's equations")
    p.add_argument("--verify", action="store_true", help="simulate the exported graph in the supported "
                   "simulators and report spike agreement with the model")
    p.add_argument("--quantize", action="store_true", help="quantise the weights for --target; report "
                   "accuracy and spike agreement; write the quantised graph too (with --consumer: the quantised "
                   "network in that consumer's form, run in the consumer itself)")
    p.add_argument("--bits", type=_positive_int, default=None,
                   help="weight bits for --quantize (default: the target's precision, 8 for generic)")
    p.add_argument("--trials", type=_positive_int, default=64,
                   help="validation trials used by --verify and --quantize (default 64)")
    p.add_argument("--via", choices=["auto", "model", "nir"], default="auto",
                   help="--quantize by quantising the model's tensors (model) or the NIR graph read back by "
                        "from_nir (nir); auto (default): model for lif/cuba networks, nir otherwise; with "
                        "--consumer the quantised graph always runs in the consumer (auto or nir)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if the target check finds errors")
    p.set_defaults(func=cmd_export)
    return p


def report_path(nir_path: str) -> str:
    """The JSON report beside a ``.nir`` file: ``model.nir`` -> ``model.export.json``."""
    stem = nir_path[:-4] if nir_path.lower().endswith(".nir") else nir_path
    return stem + ".export.json"


def _quantized_path(nir_path: str, target: str, bits: int, consumer: Optional[str] = None) -> str:
    """``model.nir`` -> ``model.<target>.q<bits>.nir`` (``model.<target>.q<bits>.<consumer>.nir`` for a consumer
    form)."""
    stem = nir_path[:-4] if nir_path.lower().endswith(".nir") else nir_path
    return f"{stem}.{target}.q{bits}{'' if consumer is None else '.' + consumer}.nir"


def _shape(t) -> list:
    if not t:
        return []
    v = next(iter(t.values()))
    try:
        return [int(s) for s in np.asarray(v).reshape(-1)]
    except (TypeError, ValueError):
        return []


def _walk_ordered(graph, prefix: str = ""):
    for name in _flow_order(graph):
        node = graph.nodes[name]
        yield prefix + name, node
        if type(node).__name__ == "NIRGraph":
            yield from _walk_ordered(node, prefix + name + ".")


def graph_summary(graph) -> list:
    """One dict per node, in signal-flow order (subgraphs inlined as ``"sub.node"``): ``name``, ``type``,
    ``input_shape``, ``output_shape`` and ``params`` (``{field: [min, max, shape]}`` for every numeric
    array parameter)."""
    rows = []
    for path, node in _walk_ordered(graph):
        params = {}
        if dataclasses.is_dataclass(node):
            for f in dataclasses.fields(node):
                if f.name in ("input_type", "output_type", "metadata", "nodes", "edges"):
                    continue
                v = getattr(node, f.name, None)
                if isinstance(v, (np.ndarray, list, tuple, float, int)) and not isinstance(v, bool):
                    a = np.asarray(v)
                    if a.size and np.issubdtype(a.dtype, np.number):
                        params[f.name] = [float(a.min()), float(a.max()), [int(s) for s in a.shape]]
        rows.append({"name": path, "type": type(node).__name__,
                     "input_shape": _shape(getattr(node, "input_type", None)),
                     "output_shape": _shape(getattr(node, "output_type", None)), "params": params})
    return rows


def format_graph_table(rows: list, edges: Optional[list] = None) -> str:
    """The node table printed by ``surroflos export``."""
    head = f"{'node':<20} {'type':<9} {'in':>8} {'out':>8}  parameters [min, max]"
    lines = [head, "-" * max(len(head), 72)]
    for r in rows:
        shp = lambda s: "x".join(map(str, s)) if s else "-"  # noqa: E731
        ps = ", ".join(f"{k} [{v[0]:.3g}, {v[1]:.3g}]" for k, v in r["params"].items()) or "-"
        lines.append(f"{r['name']:<20} {r['type']:<9} {shp(r['input_shape']):>8} {shp(r['output_shape']):>8}  {ps}")
    if edges is not None:
        lines.append("edges: " + ", ".join(f"{a}->{b}" for a, b in edges))
    return "\n".join(lines)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def _check_out(out: str) -> None:
    """``--out`` names a file we can write (its folder is created), checked before any work."""
    if os.path.isdir(out):
        raise UsageError(f"--out {out} is a folder; give a file name such as {os.path.join(out, 'model.nir')}")
    if os.path.isdir(report_path(out)):
        raise UsageError(f"{report_path(out)} (the report beside --out) is a folder; remove it or choose another --out")
    ensure_writable_folder(os.path.dirname(os.path.abspath(out)), f"--out {out}: its folder")


def cmd_export(args) -> int:
    """Run ``surroflos export`` with parsed arguments; returns the exit status (user errors raise
    :class:`~surroflos.errors.UsageError`)."""
    import torch

    from . import targets as tg

    run_dir = args.run_dir
    out = args.out or os.path.join(run_dir, "model.nir")
    target = get_target(args.target)
    try:
        bits = tg._check_bits((target.weight_bits or 8) if args.bits is None else args.bits, target)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--bits: {e}") from None
    model, task, cfg = tg.load_run(run_dir)  # RunError / CheckpointError: reported by the CLI's boundary
    _check_out(out)
    try:
        write, read = tg._export_fn("write"), tg._export_fn("read")
    except ImportError as e:
        raise UsageError(f"NIR export is not available: {e}") from None

    metadata = {"source": "surroflos train run", "run_dir": os.path.abspath(run_dir), "task": cfg.task,
                "model": cfg.model, "training_config": cfg.to_dict()}
    consumer = getattr(args, "consumer", None)
    try:
        kw = {} if consumer is None else {"consumer": consumer}
        write(out, model, args.dt, metadata=metadata, **kw)
    except ConsumerRefusal as e:
        raise UsageError(f"--consumer {consumer}: {e}") from None
    except (TypeError, NotImplementedError, ValueError, KeyError, AttributeError) as e:
        raise UsageError(f"cannot export the {cfg.model!r} network of {run_dir!r}: {e}") from None
    graph = read(out)
    rows = graph_summary(graph)
    report: dict[str, Any] = {"run_dir": os.path.abspath(run_dir), "nir": os.path.abspath(out), "dt": args.dt,
                              "target": target.name, "training_config": cfg.to_dict(),
                              "graph": {"nodes": rows, "edges": [list(e) for e in graph.edges]},
                              "target_profile": target.to_dict()}
    report["consumer"] = consumer
    form = "" if consumer is None else f", the form {consumer} runs exactly: {CONSUMERS[consumer].run}"
    print(f"exported {cfg.model} network (N={cfg.N}, task {cfg.task}) of {run_dir} to {out} (dt = {args.dt:g} s"
          f"{form})")
    print(format_graph_table(rows, graph.edges))

    issues = check_graph(graph, target)
    report["check"] = [i.to_dict() for i in issues]
    print()
    print(format_issues(issues, target))

    x_val = None
    if args.verify or args.quantize:
        x_val, _, _ = tg._validation_set(task, cfg, next(model.parameters()).dtype)
        x_val = x_val[:, : args.trials]
    if args.verify:
        try:
            verify = tg._export_fn("verify")
        except ImportError as e:
            raise UsageError(f"--verify is not available: {e}") from None
        with torch.no_grad():
            vrep = verify(model, args.dt, x_val)
        print()
        print(vrep.table())
        report["verify"] = vrep.to_dict()
    if args.quantize:
        try:
            res = tg.evaluate_quantized(run_dir, args.dt, target, bits=bits, via=args.via, n_trials=args.trials,
                                        consumer=consumer)
            if consumer is None:
                qgraph, info = tg.quantize_graph(graph, target, bits=bits)
            else:  # the graph evaluated above (deterministic), with the run's metadata like the float file
                qgraph, info = tg.quantize_consumer_form(model, args.dt, consumer, target, bits=bits,
                                                         metadata=metadata)
        except (ImportError, TypeError, ValueError) as e:  # ConsumerRefusal too (refused at the write above)
            raise UsageError(f"--quantize failed: {e}") from None
        except RuntimeError as e:  # the consumer itself failed (an external one's runner)
            raise UsageError(f"--quantize --consumer {consumer}: {consumer} failed: {e}") from None
        qpath = _quantized_path(out, target.name, bits, consumer)
        import nir

        nir.write(qpath, qgraph)
        q_issues = check_graph(qgraph, target)
        res["quantized_nir"] = os.path.abspath(qpath)
        res["graph_quantization"] = info.to_dict()
        res["check_quantized"] = [i.to_dict() for i in q_issues]
        report["quantize"] = res
        m = res["metric"]
        print()
        print(info.table())
        if consumer is not None:  # the grid each weight keeps in the form (the population's scale times its fold)
            grid = res["quantization"]["form_quant_scales"]
            print(f"grid in the {consumer} form: " + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} per row {min(v):.4g}..{max(v):.4g}"
                for k, v in grid.items()))
        version = "" if consumer is None or not res["consumer_version"] else " " + res["consumer_version"]
        where = "via " + res["via"] if consumer is None else f"the {consumer} form run in {consumer}{version}"
        print(f"{m} on {res['n_trials']} validation trials: float {res['score_float']:.4f} -> "
              f"{bits}-bit {res['score_quantized']:.4f} ({where})")
        fd = res["first_divergence_step"]
        print(f"spike agreement with the float model: {res['spike_agreement']:.4f} "
              f"(first differing step: {'none' if fd is None else fd}); firing rate "
              f"{res['rate_float']:.4f} -> {res['rate_quantized']:.4f}")
        if consumer is not None:
            print(f"{consumer} vs the quantised network run by surroflos: spike agreement "
                  f"{res['consumer_agreement']:.4f} ({m} {res['score_quantized_network']:.4f}); {consumer} on the "
                  f"float form: agreement {res['conversion_agreement']:.4f}, {m} {res['score_float_consumer']:.4f}")
        elif res.get("conversion_agreement") is not None:
            print(f"from_nir of the float graph vs the model: agreement {res['conversion_agreement']:.4f}")
        print(f"wrote the quantised graph to {qpath}; " + format_issues(q_issues, target).splitlines()[0])
    rpath = report_path(out)
    atomic_json(_jsonable(report), rpath)
    print(f"\nwrote {out} and {rpath}")
    errors = sum(i.severity == "error" for i in issues)
    return 1 if (args.strict and errors) else 0
