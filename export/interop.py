"""The interop table: how many hidden spikes each NIR consumer reproduces, on the spec file and on its own form.

``python -m surroflos.export.interop [--run RUN_DIR] [--json OUT.json]`` builds the networks of issue 15 (the
main job's LIF network, a ``Linear -> Leaky -> Linear`` stack, a current-based recurrent network, a small
balanced network) and a subtract-reset LIF network (the one spyx can run), runs :func:`surroflos.export.verify`
on each with ``form="spec"`` (every consumer reads the spec-exact file: "before") and ``form="consumer"`` (each
reads the file written for it: "after"), and prints a Markdown table of the fraction of identical hidden spikes
with the versions that produced it. spyx, Rockpool and sinabs run in the environments ``make interop`` builds
(``scripts/interop.sh``); a consumer that is not installed is reported as such. ``docs/INTEROP.md`` holds the
measured table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import warnings
from typing import Optional

import torch
from torch import nn

CONSUMER_COLUMNS = ("rockpool", "sinabs", "snntorch", "norse", "spyx")


def networks(run_dir: Optional[str] = None) -> list:
    """``(label, model, dt, inputs)`` of the measured networks (float32, as trained), seeded."""
    import surroflos
    from surroflos import tasks
    from surroflos.snntorch import Leaky
    from surroflos.train import TrainConfig, build_model

    from . import targets as tg

    if run_dir is not None:
        model, task, cfg = tg.load_run(run_dir)
        label = f"main job LIF (trained run {run_dir})"
    else:
        cfg = TrainConfig()
        task = tasks.make(cfg.task, delay=cfg.delay, T=cfg.T)
        torch.manual_seed(0)
        model = build_model(cfg, task, torch.device("cpu"), torch.float32)
        label = f"main job LIF ({cfg.N} neurons, untrained init)"
    x, _, _ = tg._validation_set(task, cfg, torch.float32)
    x = x[:, :64]
    g = torch.Generator().manual_seed(0)
    n_in = x.shape[-1]
    ff = nn.Sequential(nn.Linear(n_in, 64), Leaky(beta=0.8, reset_mechanism="zero"), nn.Linear(64, 2))
    with torch.no_grad():
        ff[0].weight.mul_(3.0)
    cuba = surroflos.SpikingRNN(n_in, 64, 2, neuron="cuba", reset="zero", g=1.5, generator=g)
    sub = surroflos.SpikingRNN(n_in, 64, 2, neuron="lif", reset="subtract", g=1.5, generator=g)
    bal = surroflos.BalancedNetwork(N=200, K=20, J0=1.0, I0=1.0, dt=1e-4, generator=g)
    xb = torch.zeros(1000, 8, 0)
    return [(label, model, 1e-3, x), ("feed-forward Linear -> Leaky -> Linear", ff, 1e-3, x),
            ("current-based (cuba, zero reset)", cuba, 1e-3, x), ("LIF, subtract reset", sub, 1e-3, x),
            ("balanced (N=200, K=20, dt=0.1 ms)", bal, 1e-4, xb)]


def measure(run_dir: Optional[str] = None) -> dict:
    from .verify import verify

    rows = []
    versions: dict = {}
    for label, model, dt, x in networks(run_dir):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            before = verify(model, dt, x, simulators=("ours",) + CONSUMER_COLUMNS, form="spec")
            after = verify(model, dt, x, simulators=("ours",) + CONSUMER_COLUMNS, form="consumer")
        for rep in (before, after):
            for r in rep.results.values():
                if r.version:
                    versions[r.simulator] = r.version
        rows.append({"network": label, "before": before.to_dict(), "after": after.to_dict()})
    return {"rows": rows, "versions": versions, "python": platform.python_version(), "torch": torch.__version__}


def _cell(r: dict) -> str:
    if r["status"] == "ok":
        return f"{r['spike_agreement']:.3f}"
    kind = r["status"].split(":")[0]
    return {"failed": "crashes", "not applicable": "n/a", "not installed": "not installed"}.get(kind, kind)


def markdown(data: dict) -> str:
    v = data["versions"]
    head = "| network | " + " | ".join(f"{c} {v.get(c, '?')}" for c in CONSUMER_COLUMNS) + " |"
    lines = [head, "|---" * (len(CONSUMER_COLUMNS) + 1) + "|"]
    notes = []
    for row in data["rows"]:
        cells = []
        for c in CONSUMER_COLUMNS:
            b, a = row["before"]["results"][c], row["after"]["results"][c]
            if a.get("refusal"):
                cells.append(f"{_cell(b)} -> refused")
                notes.append(f"- {row['network']}, {c}: {a['refusal']}")
            else:
                shift = " (one step late per layer)" if any((a.get("shift") or {}).values()) else ""
                cells.append(f"{_cell(b)} -> **{_cell(a)}**{shift}")
            for r in (b, a):
                if r["status"] != "ok" and r["status"].split(":")[0] in ("failed", "not applicable"):
                    notes.append(f"- {row['network']}, {c} ({'spec file' if r is b else 'its form'}): {r['status']}")
        lines.append(f"| {row['network']} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + list(dict.fromkeys(notes)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m surroflos.export.interop", description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="a `surroflos train` run folder for the main job's network")
    p.add_argument("--json", default=None, help="also write the measurements to this JSON file")
    args = p.parse_args(argv)
    data = measure(args.run)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1, default=str)
    print(f"fraction of identical hidden spikes, spec file -> the consumer's own form (python {data['python']}, "
          f"torch {data['torch']}; command: python -m surroflos.export.interop"
          + (f" --run {args.run}" if args.run else "") + ")\n")
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
