"""The ``surroflos`` command line.

``surroflos lyapunov``  spectrum of a model configured by flags -> spectrum.json + spectrum.png
``surroflos demo``      the README's main job: spectra of a rate and a LIF network before/after preflossing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Optional, Sequence

__all__ = ["main", "build_parser"]


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but no CUDA device is available (use --device cpu)")
    return dev


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _nonneg_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {s}")
    return v


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Flags that build a model (shared by subcommands)."""
    m = p.add_argument_group("model")
    m.add_argument("--model", choices=["rate", "spiking"], default="rate", help="network family (default rate)")
    m.add_argument("--neuron", choices=["lif", "cuba"], default="lif", help="spiking neuron (default lif)")
    m.add_argument("--N", type=_positive_int, default=100, help="number of hidden units (default 100)")
    m.add_argument("--g", type=float, default=1.5, help="coupling gain, J ~ N(0, g^2/N) (default 1.5)")
    m.add_argument("--dt", type=float, default=1.0, help="time step; rate: <1 gives the Euler form (default 1)")
    m.add_argument("--n-in", type=_nonneg_int, default=1, help="input channels (default 1; 0 = autonomous)")
    m.add_argument("--input-std", type=float, default=1.0, help="std of the Gaussian input drive (default 1)")
    m.add_argument("--nonlinearity", choices=["tanh", "relu"], default="tanh", help="rate nonlinearity")
    m.add_argument("--beta", type=float, default=0.9, help="spiking membrane decay (default 0.9)")
    m.add_argument("--alpha", type=float, default=0.8, help="cuba synaptic decay (default 0.8)")
    m.add_argument("--threshold", type=float, default=1.0, help="spiking threshold (default 1)")
    m.add_argument("--reset", choices=["subtract", "zero"], default="subtract")
    m.add_argument("--surrogate", default="atan", help="surrogate name (default atan)")
    m.add_argument("--surrogate-scale", type=float, default=None, help="surrogate scale (default: its own)")


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


def _write_json(path: str, payload: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def cmd_lyapunov(args) -> int:
    import torch

    from . import plotting
    from .lyapunov import lyapunov_spectrum

    device = _device(args.device)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    try:
        model = build_model(args, device, dtype)
        if args.k > model.state_dim:
            raise ValueError(f"--k {args.k} exceeds the state dimension {model.state_dim}")
        gen = torch.Generator().manual_seed(args.seed + 1)
        x = args.input_std * torch.randn(args.T, args.batch, args.n_in, generator=gen, dtype=dtype).to(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            res = lyapunov_spectrum(model, x, args.k, qr_every=args.qr_every, transient=args.transient,
                                    frame_warmup=args.frame_warmup, generator=gen)
        elapsed = time.perf_counter() - t0
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
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
    _write_json(os.path.join(args.out, "spectrum.json"), payload)
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

    run_demo(out=args.out, seed=args.seed, quick=args.quick, device=_device(args.device))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="surroflos", description="Surrogate Lyapunov spectra and gradient "
                                     "flossing for spiking and rate recurrent networks.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("lyapunov", help="Lyapunov spectrum of a configured model (writes JSON + PNG)",
                       description="Estimate the Lyapunov spectrum (QR method) of a random rate or spiking "
                       "network driven by Gaussian input; writes spectrum.json and spectrum.png to --out.")
    add_model_arguments(p)
    e = p.add_argument_group("estimate")
    e.add_argument("--k", type=_positive_int, default=10, help="number of exponents (default 10)")
    e.add_argument("--T", type=_positive_int, default=2000, help="total steps incl. transient (default 2000)")
    e.add_argument("--qr-every", type=_positive_int, default=5, help="steps between QRs (default 5)")
    e.add_argument("--transient", type=_nonneg_int, default=200, help="state-only transient steps (default 200)")
    e.add_argument("--frame-warmup", type=_nonneg_int, default=100, help="frame settling steps (default 100)")
    e.add_argument("--batch", type=_positive_int, default=4, help="trajectories (default 4)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default cpu)")
    e.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    e.add_argument("--out", default="outputs/lyapunov", help="output folder (default outputs/lyapunov)")
    p.set_defaults(func=cmd_lyapunov)

    d = sub.add_parser("demo", help="spectra of a rate and a LIF network before/after preflossing",
                       description="The main job until `surroflos train` exists: spectra of a random rate "
                       "network and a recurrent LIF network, preflossing both, spectra before/after + PNG.")
    d.add_argument("--out", default="outputs/demo")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quick", action="store_true", help="a few seconds instead of ~1-2 minutes (for tests)")
    d.add_argument("--device", default="cpu")
    d.set_defaults(func=cmd_demo)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
