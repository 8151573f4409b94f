"""The ``surroflos`` command line.

``surroflos lyapunov``  spectrum of a model configured by flags -> spectrum.json + spectrum.png
``surroflos demo``      spectra of a rate and a LIF network before/after preflossing
``surroflos train``     the README's main job: train a network on a temporal task, with gradient flossing
``surroflos sweep``     a grid of training runs (tasks x delays x models x flossing x seeds) -> tables + plots
``surroflos export``    a trained run -> NIR file, hardware-target checks, cross-simulator verification
``surroflos bench``     kernel benchmarks -> JSON + table
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from typing import Optional, Sequence

from . import _argtypes as at
from ._io import atomic_json, ensure_writable_folder
from ._threads import SMALL_STATE, threads_arg, torch_threads, train_threads
from .errors import UsageError

__all__ = ["main", "build_parser"]


def _device(name: str):
    try:
        return at.resolve_device(name)
    except ValueError as e:
        raise UsageError(f"--device {e}") from None


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Flags that build a model (shared by subcommands)."""
    m = p.add_argument_group("model")
    m.add_argument("--model", choices=["rate", "spiking"], default="rate", help="network family (default rate)")
    m.add_argument("--neuron", choices=["lif", "cuba"], default="lif", help="spiking neuron (default lif)")
    m.add_argument("--N", type=at.positive_int, default=100, help="number of hidden units (default 100)")
    m.add_argument("--g", type=at.nonneg_float, default=1.5, help="coupling gain, J ~ N(0, g^2/N) (default 1.5)")
    m.add_argument("--dt", type=at.positive_float, default=1.0,
                   help="time step; rate: <1 gives the Euler form (default 1)")
    m.add_argument("--n-in", type=at.nonneg_int, default=1, help="input channels (default 1; 0 = autonomous)")
    m.add_argument("--input-std", type=at.nonneg_float, default=1.0, help="std of the Gaussian input drive (default 1)")
    m.add_argument("--nonlinearity", choices=["tanh", "relu"], default="tanh", help="rate nonlinearity")
    m.add_argument("--beta", type=at.unit_float, default=0.9, help="spiking membrane decay (default 0.9)")
    m.add_argument("--alpha", type=at.unit_float, default=0.8, help="cuba synaptic decay (default 0.8)")
    m.add_argument("--threshold", type=at.positive_float, default=1.0, help="spiking threshold (default 1)")
    m.add_argument("--reset", choices=["subtract", "zero"], default="subtract")
    m.add_argument("--surrogate", choices=_surrogates(), default="atan", help="surrogate (default atan)")
    m.add_argument("--surrogate-scale", type=at.positive_float, default=None, help="surrogate scale (default: its own)")


def _surrogates() -> list:
    from .surrogate import SURROGATES

    return sorted(SURROGATES)


def build_model(args, device, dtype):
    """A RateRNN or SpikingRNN from parsed flags."""
    import torch

    from .models import RateRNN, SpikingRNN

    gen = torch.Generator().manual_seed(args.seed)
    if args.model == "rate":
        return RateRNN(args.n_in, args.N, 1, g=args.g, dt=args.dt, nonlinearity=args.nonlinearity,
                       generator=gen, device=device, dtype=dtype)
    from . import surrogate as sg

    return SpikingRNN(args.n_in, args.N, 1, neuron=args.neuron, beta=args.beta, alpha=args.alpha,
                      threshold=args.threshold, reset=args.reset, surrogate=sg.get(args.surrogate, args.surrogate_scale),
                      g=args.g, dt=args.dt, generator=gen, device=device, dtype=dtype)


def _versions() -> dict:
    import torch

    import surroflos

    return {"surroflos": surroflos.__version__, "torch": torch.__version__, "python": platform.python_version()}


def cmd_lyapunov(args) -> int:
    import torch

    from . import plotting
    from .lyapunov import lyapunov_spectrum
    from .memory import require_memory, spectrum_bytes

    device = _device(args.device)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    state_dim = 2 * args.N if args.model == "spiking" and args.neuron == "cuba" else args.N
    if args.k > state_dim:
        raise UsageError(f"--k {args.k} exceeds the state dimension {state_dim}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    require_memory(spectrum_bytes(state_dim, args.N, args.k, args.batch, itemsize,
                                  n_weights=args.N * (args.N + args.n_in + 2)) + itemsize * args.T * args.batch * args.n_in,
                   device, f"a spectrum of k={args.k} exponents of N={args.N} units", "lower --N, --k or --batch")
    ensure_writable_folder(args.out)
    try:
        model = build_model(args, device, dtype)
    except ValueError as e:
        raise UsageError(str(e)) from None
    gen = torch.Generator().manual_seed(args.seed + 1)
    x = args.input_std * torch.randn(args.T, args.batch, args.n_in, generator=gen, dtype=dtype).to(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        res = lyapunov_spectrum(model, x, args.k, qr_every=args.qr_every, transient=args.transient,
                                frame_warmup=args.frame_warmup, generator=gen)
    elapsed = time.perf_counter() - t0
    mean, std = res.mean().detach(), res.std().detach()
    payload = {
        "config": {k: v for k, v in vars(args).items() if k != "func"},
        "exponents": res.exponents.detach().cpu().tolist(),
        "mean": mean.cpu().tolist(), "std": std.cpu().tolist(),
        "kaplan_yorke_dimension": res.kaplan_yorke_dimension().detach().cpu().tolist(),
        "ks_entropy": res.ks_entropy().detach().cpu().tolist(),
        "accumulated_steps": res.steps, "unit": "per unit time (steps * dt)",
        "seconds": elapsed, "device": str(device), "versions": _versions(),
    }
    atomic_json(payload, os.path.join(args.out, "spectrum.json"))
    fig, (ax1, ax2) = plotting.figure(2)
    name = args.model if args.model == "rate" else f"spiking ({args.neuron})"
    plotting.plot_spectra(ax1, {f"{name}, N={args.N}, g={args.g}": res.exponents}, title="Lyapunov spectrum")
    plotting.plot_convergence(ax2, res.history, res.history_times, title="convergence")
    plotting.save_figure(fig, os.path.join(args.out, "spectrum.png"))
    print(f"{name}: N={args.N} g={args.g} k={args.k} T={args.T} qr_every={args.qr_every} ({elapsed:.2f} s)")
    print("lambda_i (mean over trajectories): " + " ".join(f"{v:+.4f}" for v in mean.cpu().tolist()))
    print(f"Kaplan-Yorke dimension {float(res.kaplan_yorke_dimension().mean()):.3f}, "
          f"KS entropy {float(res.ks_entropy().mean()):.4f}")
    print(f"wrote {os.path.join(args.out, 'spectrum.json')} and spectrum.png")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    ensure_writable_folder(args.out)
    run_demo(out=args.out, seed=args.seed, quick=args.quick, device=_device(args.device))
    return 0


def _task_param(s: str) -> tuple:
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {s!r}")
    key, value = s.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _float_or_none(s: str):
    return None if s.lower() in ("none", "off", "0") else at.positive_float(s)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``surroflos train`` (defaults from :class:`surroflos.train.TrainConfig`)."""
    from .train import FLOSSING_MODES, MODELS, RULES, TrainConfig

    d = TrainConfig()
    t = p.add_argument_group("task")
    t.add_argument("--task", default=None, help=f"task name (default: the main job, {d.task} with delay {d.delay} "
                   f"and T {d.T}; see surroflos.tasks.names())")
    t.add_argument("--delay", type=at.nonneg_int, default=None, help="task delay (default: the task's own)")
    t.add_argument("--T", type=at.positive_int, default=None, help="trial length in steps (default: the task's own)")
    t.add_argument("--task-param", type=_task_param, action="append", default=[], metavar="KEY=VALUE",
                   help="further task parameter (repeatable), e.g. --task-param T=60")
    m = p.add_argument_group("model")
    m.add_argument("--model", choices=MODELS, default=d.model, help=f"network (default {d.model})")
    m.add_argument("--N", type=at.positive_int, default=d.N, help=f"hidden units (default {d.N})")
    m.add_argument("--g", type=at.nonneg_float, default=d.g, help=f"recurrent gain (default {d.g})")
    m.add_argument("--beta", type=at.unit_float, default=d.beta, help=f"membrane decay per step (default {d.beta})")
    m.add_argument("--alpha", type=at.unit_float, default=d.alpha, help=f"synaptic decay, cuba (default {d.alpha})")
    m.add_argument("--threshold", type=at.positive_float, default=d.threshold)
    m.add_argument("--reset", choices=["subtract", "zero"], default=d.reset)
    m.add_argument("--surrogate", choices=_surrogates(), default=d.surrogate)
    m.add_argument("--surrogate-scale", type=at.positive_float, default=d.surrogate_scale,
                   help="surrogate width parameter (default: the surrogate's own; larger is narrower)")
    m.add_argument("--K", type=at.positive_int, default=d.K, help="balanced in-degree")
    m.add_argument("--init", choices=["gaussian", "orthogonal", "balanced", "limit_cycle"], default=None,
                   help="recurrent weight initialisation (default: the model's own N(0, g^2/N)); --g is its gain")
    m.add_argument("--nonlinearity", choices=["tanh", "relu"], default=d.nonlinearity, help="rate networks")
    m.add_argument("--rate-dt", type=at.positive_float, default=d.rate_dt, help="rate networks: Euler step in units of tau")
    m.add_argument("--backend", choices=["auto", "torch", "triton"], default=d.backend)
    f = p.add_argument_group("flossing")
    f.add_argument("--flossing", choices=FLOSSING_MODES, default=d.flossing, help=f"default {d.flossing}")
    f.add_argument("--k", type=at.positive_int, default=d.k, help=f"exponents flossed (default {d.k})")
    f.add_argument("--target", type=at.finite_float, default=d.target, help="flossing target of the exponents")
    f.add_argument("--pre-steps", type=at.nonneg_int, default=d.pre_steps)
    f.add_argument("--floss-every", type=at.nonneg_int, default=d.floss_every, help="epochs between bouts")
    f.add_argument("--floss-steps", type=at.nonneg_int, default=d.floss_steps, help="updates per bout")
    f.add_argument("--floss-times", type=at.nonneg_int, default=d.floss_times, help="bouts (0: all epochs)")
    f.add_argument("--floss-T", type=at.positive_int, default=d.floss_T)
    f.add_argument("--floss-batch", type=at.positive_int, default=d.floss_batch)
    f.add_argument("--floss-lr", type=at.positive_float, default=d.floss_lr)
    f.add_argument("--local-flossing", action="store_true",
                   help="flossing updates use local information only: the recurrent state is detached "
                        "(seed 003's preflossing for bio-plausible rules)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--rule", choices=RULES, default=d.rule,
                   help=f"learning rule (default {d.rule}): bptt = exact gradients, eprop = e-prop (rate, lif), "
                        "rflo = random-feedback local online learning (rate)")
    o.add_argument("--epochs", type=at.positive_int, default=d.epochs)
    o.add_argument("--steps-per-epoch", type=at.positive_int, default=d.steps_per_epoch)
    o.add_argument("--batch", type=at.positive_int, default=d.batch)
    o.add_argument("--lr", type=at.positive_float, default=d.lr)
    o.add_argument("--grad-clip", type=_float_or_none, default=d.grad_clip, help="gradient-norm clip (none: off)")
    o.add_argument("--seed", type=at.seed, default=d.seed)
    o.add_argument("--device", type=at.device, default=d.device, help="cpu, cuda, cuda:N or auto")
    o.add_argument("--dtype", choices=["float32", "float64"], default=d.dtype)
    o.add_argument("--eval-batch", type=at.positive_int, default=d.eval_batch)
    o.add_argument("--lyap-every", type=at.nonneg_int, default=d.lyap_every, help="epochs between lambda_1 estimates")
    o.add_argument("--spectrum-T", type=at.positive_int, default=d.spectrum_T)
    o.add_argument("--spectrum-k", type=at.positive_int, default=d.spectrum_k)
    o.add_argument("--ensemble", type=at.positive_int, default=None, metavar="E",
                   help="train E networks as one, with seeds seed .. seed+E-1 (each as its solo run would); "
                        "result.json reports every member and their mean, std and success rate")
    o.add_argument("--success", type=at.finite_float, default=None,
                   help="metric value counted as a success in an ensemble's summary")
    o.add_argument("--compare", action="store_true",
                   help="train the configured flossing and none as two ensembles of --ensemble seeds (default "
                        "8), same seeds and data, in OUT/flossed and OUT/unflossed; print and write the comparison "
                        "(success rates with Wilson intervals, Fisher and Mann-Whitney tests, time to threshold; "
                        "--success: the threshold, default accuracy 0.9)")
    o.add_argument("--out", default=d.out, help=f"run folder (default {d.out})")
    o.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    o.add_argument("--distributed", action="store_true",
                   help="data-parallel over the processes of torchrun (gloo on CPU, NCCL on CUDA): the global "
                        "--batch split over them, the same results as one process; rank 0 writes --out")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("--threads", default="auto", type=threads_arg,
                   help="torch CPU threads: a number, or auto (default): one thread for small networks (at most "
                        f"{SMALL_STATE} state elements per step, ensemble x batch x N), where waking a second thread "
                        "for every small op costs more than it gains; torch's default otherwise")


def cmd_train(args) -> int:
    from .train import TrainConfig

    fields = set(TrainConfig.__dataclass_fields__)
    values = {k: v for k, v in vars(args).items() if k in fields}
    params = dict(args.task_param)
    for name in ("delay", "T"):  # given as --task-param: one value, reported under its own name
        if name in params:
            if values[name] is not None and values[name] != params[name]:
                raise UsageError(f"--{name} {values[name]} conflicts with --task-param {name}={params[name]}; "
                                 f"give the {name} once")
            values[name] = params.pop(name)
    values["task_params"] = params
    if args.task is None:  # the main job: delayed XOR with the trainer's defaults unless overridden
        d = TrainConfig()
        values["task"] = d.task
        values["delay"] = d.delay if values["delay"] is None else values["delay"]
        values["T"] = d.T if values["T"] is None else values["T"]
    cfg = TrainConfig(**values)
    compare = getattr(args, "compare", False)
    with torch_threads(train_threads(cfg, getattr(args, "threads", "auto"), compare=compare)):
        if compare:
            return _cmd_compare(cfg, args)
        return _cmd_train(cfg, args)


def _cmd_train(cfg, args) -> int:
    from .train import train

    if not getattr(args, "distributed", False):
        train(cfg, resume=args.resume, progress=not args.no_progress)
        return 0
    from .distributed import DataParallel, check_config

    check_config(cfg, 1)  # what no process count can run, before joining the group
    dp = DataParallel.from_env(cfg.device)
    try:
        cfg.device = str(dp.device)
        train(cfg, resume=args.resume, progress=not args.no_progress, parallel=dp)
    except BaseException:
        dp.close(barrier=False)  # the other processes may never reach a barrier
        raise
    dp.close()
    return 0


def _cmd_compare(cfg, args) -> int:
    """``surroflos train --compare`` (see :mod:`surroflos.compare`)."""
    from .compare import compare

    if getattr(args, "distributed", False):
        raise UsageError("--compare trains both arms in one process; drop --distributed")
    if cfg.ensemble is not None and cfg.ensemble < 2:
        raise UsageError(f"--compare needs --ensemble 2 or more members per arm (default 8), got {cfg.ensemble}")
    compare(cfg, resume=args.resume, progress=not args.no_progress)
    return 0


def _pack_size(s: str):
    return "auto" if s == "auto" else at.positive_int(s)


def cmd_sweep(args) -> int:
    import shlex

    from .sweep import run_sweep, spec_from_args

    command = "surroflos sweep " + " ".join(shlex.quote(a) for a in args._argv)
    rows = run_sweep(spec_from_args(args), args.out, workers=args.workers, progress=not args.no_progress,
                     command=command, ensemble=args.ensemble, engine=args.engine, address=args.address,
                     cpus_per_pack=args.cpus_per_pack, gpus_per_pack=args.gpus_per_pack)
    with open(os.path.join(args.out, "results.md")) as f:
        print(f.read())
    failed = sum(r["status"] == "error" for r in rows)
    print(f"{len(rows)} runs ({failed} failed); wrote {args.out}/results.md, results.csv, runs.csv and plots")
    return 1 if failed else 0


class _Parser(argparse.ArgumentParser):
    """argparse with the error boundary's format: one line naming the flag, status 2, no usage dump."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="surroflos", description="Surrogate Lyapunov spectra and gradient "
                                     "flossing for spiking and rate recurrent networks.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("lyapunov", help="Lyapunov spectrum of a configured model (writes JSON + PNG)",
                       description="Estimate the Lyapunov spectrum (QR method) of a random rate or spiking "
                       "network driven by Gaussian input; writes spectrum.json and spectrum.png to --out.")
    add_model_arguments(p)
    e = p.add_argument_group("estimate")
    e.add_argument("--k", type=at.positive_int, default=10, help="number of exponents (default 10)")
    e.add_argument("--T", type=at.positive_int, default=2000, help="total steps incl. transient (default 2000)")
    e.add_argument("--qr-every", type=at.positive_int, default=5, help="steps between QRs (default 5)")
    e.add_argument("--transient", type=at.nonneg_int, default=200, help="state-only transient steps (default 200)")
    e.add_argument("--frame-warmup", type=at.nonneg_int, default=100, help="frame settling steps (default 100)")
    e.add_argument("--batch", type=at.positive_int, default=4, help="trajectories (default 4)")
    e.add_argument("--seed", type=at.seed, default=0)
    e.add_argument("--device", type=at.device, default="cpu", help="cpu, cuda, cuda:1 or auto (default cpu)")
    e.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    e.add_argument("--out", default="outputs/lyapunov", help="output folder (default outputs/lyapunov)")
    p.set_defaults(func=cmd_lyapunov)

    d = sub.add_parser("demo", help="spectra of a rate and a LIF network before/after preflossing",
                       description="The main job until `surroflos train` exists: spectra of a random rate "
                       "network and a recurrent LIF network, preflossing both, spectra before/after + PNG.")
    d.add_argument("--out", default="outputs/demo")
    d.add_argument("--seed", type=at.seed, default=0)
    d.add_argument("--quick", action="store_true", help="a few seconds instead of ~1-2 minutes (for tests)")
    d.add_argument("--device", type=at.device, default="cpu")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train a network on a temporal task (the README's main job)",
                       description="Train a rate, LIF, current-based or balanced network on a temporal task, "
                       "with no flossing, preflossing or flossing during training. Writes config.json, "
                       "metrics.jsonl, checkpoint.pt, result.json and plots to --out. Ctrl-C saves; --resume "
                       "continues exactly.")
    add_train_arguments(t)
    t.set_defaults(func=cmd_train)

    from .sweep import PRESETS
    from .train import FLOSSING_MODES, MODELS, RULES

    w = sub.add_parser("sweep", help="a grid of training runs -> results.md/csv + plots",
                       description="Run tasks x delays x models x flossing modes x seeds in parallel worker "
                       "processes; an interrupted sweep resumes when started again with the same command.")
    w.add_argument("--preset", choices=sorted(PRESETS), default=None, help="a predefined grid (flags override it)")
    w.add_argument("--tasks", nargs="+")
    w.add_argument("--delays", nargs="+", type=at.nonneg_int)
    w.add_argument("--models", nargs="+", choices=MODELS)
    w.add_argument("--flossing", nargs="+", choices=FLOSSING_MODES)
    w.add_argument("--seeds", nargs="+", type=at.seed)
    w.add_argument("--gains", nargs="+", type=at.nonneg_float, help="initial recurrent gains g (a grid axis)")
    w.add_argument("--rules", nargs="+", choices=RULES, help="learning rules (a grid axis)")
    w.add_argument("--local", nargs="+", choices=["no", "yes"], help="local flossing off/on (a grid axis; "
                   "'yes' applies to flossing pre/during only, 'yes' with flossing none is skipped)")
    w.add_argument("--lrs", nargs="+", type=at.positive_float,
                   help="learning rates lr (a grid axis; replaces a preset's lr, not to be given with --lr)")
    w.add_argument("--betas", nargs="+", type=at.unit_float, help="membrane decays beta per step of spiking "
                   "models (a grid axis)")
    w.add_argument("--targets", nargs="+", type=at.finite_float, help="flossing targets of the exponents (a grid "
                   "axis; runs with flossing none ignore it and run once, with the default target)")
    w.add_argument("--surrogate-scales", nargs="+", type=at.positive_float, help="surrogate widths (scales: larger "
                   "is narrower) of spiking models (a grid axis; members of one pack may differ in it)")
    w.add_argument("--epochs", type=at.positive_int)
    w.add_argument("--steps-per-epoch", type=at.positive_int)
    w.add_argument("--N", type=at.positive_int)
    w.add_argument("--batch", type=at.positive_int)
    w.add_argument("--lr", type=at.positive_float)
    w.add_argument("--k", type=at.positive_int)
    w.add_argument("--pre-steps", type=at.nonneg_int)
    w.add_argument("--success", type=at.finite_float, help="metric threshold counted as success")
    w.add_argument("--workers", type=at.positive_int, default=2, help="worker processes (default 2)")
    w.add_argument("--ensemble", type=_pack_size, default="auto", metavar="auto|E",
                   help="train runs that differ only in member-wise settings (seeds, gains, flossing modes, "
                        "learning rates, ...) as one ensemble: auto (default: all such runs of a grid cell), E "
                        "(at most E per ensemble) or 1 (every run alone); results are the same")
    w.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local (default): --workers processes on this machine; ray: each ensemble pack is a Ray "
                        "task (pip install 'surroflos[distributed]')")
    w.add_argument("--address", default=None, help="ray: the cluster to run on ('auto' or HOST:PORT; default: "
                   "start a local Ray instance with --workers x --cpus-per-pack CPUs)")
    w.add_argument("--cpus-per-pack", type=at.positive_float, default=1, help="ray: CPUs per task (default 1)")
    w.add_argument("--gpus-per-pack", type=at.nonneg_float, default=0,
                   help="ray: GPUs per task, a fraction shares one (e.g. 0.25; default 0)")
    w.add_argument("--out", default="outputs/sweep")
    w.add_argument("--no-progress", action="store_true")
    w.set_defaults(func=cmd_sweep)

    from .export.cli import add_export_parser

    add_export_parser(sub)

    try:
        from .bench import add_bench_parser
    except ImportError:  # pragma: no cover - the benchmark module is optional
        pass
    else:
        add_bench_parser(sub)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def _one_line(message: str) -> str:
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def _flag_names(parser: argparse.ArgumentParser) -> dict:
    """``dest -> --flag`` of a (sub)parser, to name flags in messages of the Python API."""
    return {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings}


def _with_flag(message: str, flags: dict) -> str:
    """``"beta must ..."`` -> ``"--beta must ..."`` when the message starts with a flag's field name."""
    m = re.match(r"([A-Za-z_]\w*)(?=[ =:])", message)
    if m and m.group(1) in flags:
        return flags[m.group(1)] + message[m.end():]
    return message


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``surroflos``; returns the exit status.

    The error boundary: a user error (a :class:`~surroflos.errors.UsageError`, raised by every check of
    flags, files and configurations before work starts) prints one line ``surroflos <command>: error: ...``
    naming the flag or file and exits with 2; a run that diverges numerically exits with 1, as does any
    unexpected error (one line; ``SURROFLOS_TRACEBACK=1`` shows the traceback); Ctrl-C exits with 130.
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args._argv = argv[1:]
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    prog = f"surroflos {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except UsageError as e:
        sub = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
        print(f"{prog}: error: {_with_flag(_one_line(e), _flag_names(sub))}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # the dynamics or the training diverged: a result, not a usage error
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:
        if os.environ.get("SURROFLOS_TRACEBACK"):
            raise
        where = f" ({e.filename})" if isinstance(e, OSError) and e.filename else ""
        print(f"{prog}: error: {type(e).__name__}{where}: {_one_line(e) or 'no message'} (an unexpected error; "
              "rerun with SURROFLOS_TRACEBACK=1 for the traceback and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
