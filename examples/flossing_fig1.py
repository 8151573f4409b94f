"""Reproduce seed 000 Fig 1C/1D: gradient flossing controls the Lyapunov exponents of rate networks.

Panel C: ``--networks`` random rate networks (discrete tanh map, N = 80, ``J ~ N(0, g^2/N)`` with
``g ~ U(0, 1)``, one N(0, 1) input channel through N(0, 1) input weights) are flossed with k = 1 towards
``lambda_1 = -1, -0.5, 0``. The curves are the flossing estimates of lambda_1 at every step; the dots at
the right are the final lambda_1 of a fresh, long, held-out estimate (T = 1500 with 200 transient and
200 frame-warm-up steps, 8 trajectories).

Panel D: one network (g = 0.5) flossed with ``k = 1, 10, 20, 40`` exponents towards 0; its first 60
exponents before and after (long estimates).

Flossing settings (full mode): Adam lr 1e-3, 1000 steps, batch 16, T = 55 per estimate with 15
transient and 15 frame-warm-up steps. The reference (Engelken's code) uses 500 steps and no frame
warm-up. Without the warm-up the short estimate is biased low once flossing has lifted lambda_1 out
of the bulk of the spectrum (a random frame pays the log of its initial projection on the isolated
leading direction, ~ -0.05 over 40 steps), so the flossed networks end with lambda_1 up to ~0.07
above their target. With lr 1e-3 and 500 steps the networks flossed to 0 are not yet converged (lambda_1 ~ -0.02
to -0.04), and a larger lr (2e-3) makes the weights random-walk near the edge of chaos until a
bifurcation throws lambda_1 back down.

Usage::

    python examples/flossing_fig1.py --quick            # ~1 min: 2 networks, 300 steps at lr 3e-3, batch 8
    python examples/flossing_fig1.py --jobs 2           # the full figure (~9 min on 2 cores)
    python examples/flossing_fig1.py --jobs 2 --steps 500 --frame-warmup 0 --ks 10 --out outputs/fig1_ref
                                                        # the reference settings (biased, see above)

Writes ``fig1.png`` and ``fig1.json`` to ``--out`` (default ``outputs/fig1``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

import surroflos as sf

N, N_IN = 80, 1
TARGETS = (-1.0, -0.5, 0.0)
MEASURE = dict(T=1500, batch=8, transient=200, frame_warmup=200, seed=12345)
QUICK_MEASURE = dict(T=800, batch=4, transient=100, frame_warmup=100, seed=12345)


def floss_settings(quick: bool, steps: int | None, lr: float | None = None, frame_warmup: int | None = None) -> dict:
    if quick:
        cfg = dict(steps=300, lr=3e-3, batch=8, T=55, transient=15, frame_warmup=15)
    else:
        cfg = dict(steps=1000, lr=1e-3, batch=16, T=55, transient=15, frame_warmup=15)
    for name, value in (("steps", steps), ("lr", lr), ("frame_warmup", frame_warmup)):
        if value is not None:
            cfg[name] = value
    return cfg


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_net(g: float, seed: int) -> sf.RateRNN:
    return sf.RateRNN(N_IN, N, 1, g=g, generator=gen(seed), dtype=torch.float64)


def long_estimate(model, k: int, measure: dict) -> list[float]:
    g = gen(measure["seed"])
    x = torch.randn(measure["T"], measure["batch"], model.n_in, generator=g, dtype=torch.float64)
    with torch.no_grad():
        res = sf.lyapunov_spectrum(model, x, k, transient=measure["transient"],
                                   frame_warmup=measure["frame_warmup"], generator=g)
    return res.exponents.mean(0).tolist()


def run_c(job: dict) -> dict:
    """Floss one network (k = 1) towards one target; returns the lambda_1 history and final estimate."""
    torch.set_num_threads(1)
    t0 = time.time()
    model = make_net(job["g"], job["net_seed"])
    lam0 = long_estimate(model, 1, job["measure"])[0]
    cfg = dict(job["floss"])
    hist = sf.floss(model, cfg.pop("steps"), k=1, target=job["target"], generator=gen(job["floss_seed"]),
                    progress=False, **cfg)
    final = long_estimate(model, 1, job["measure"])[0]
    return dict(net=job["net"], g=job["g"], target=job["target"], lambda1_initial=lam0, lambda1_final=final,
                history=hist.exponents[:, 0].tolist(), seconds=time.time() - t0)


def run_d(job: dict) -> dict:
    """Floss k exponents of the panel-D network to 0; returns its leading spectrum after."""
    torch.set_num_threads(1)
    t0 = time.time()
    model = make_net(job["g"], job["net_seed"])
    cfg = dict(job["floss"])
    hist = sf.floss(model, cfg.pop("steps"), k=job["k"], target=0.0, generator=gen(job["floss_seed"]),
                    progress=False, **cfg)
    after = long_estimate(model, job["n_show"], job["measure"])
    k = job["k"]
    return dict(k=k, spectrum_after=after, max_abs_first_k=max(abs(v) for v in after[:k]),
                lambda_k_plus_1=after[k], final_training_estimate=hist.exponents[-1].tolist(),
                seconds=time.time() - t0)


def _run_all(fn, jobs, n_workers, label):
    results, t0 = [], time.time()
    if n_workers <= 1:
        it = map(fn, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(n_workers)
        it = pool.map(fn, jobs)
    for i, r in enumerate(it, 1):
        results.append(r)
        if "target" in r:
            what = (f"net {r['net']} (g={r['g']:.3f}) target {r['target']:+.1f}: lambda_1 "
                    f"{r['lambda1_initial']:+.3f} -> {r['lambda1_final']:+.3f}")
        else:
            what = (f"k={r['k']}: max|lambda_i<=k| = {r['max_abs_first_k']:.3f}, "
                    f"lambda_k+1 = {r['lambda_k_plus_1']:+.3f}")
        print(f"[{label} {i}/{len(jobs)}] {what}  ({r['seconds']:.0f}s, total {time.time() - t0:.0f}s)",
              flush=True)
    if pool is not None:
        pool.shutdown()
    return results


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_c, ax_d) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = {-1.0: "tab:blue", -0.5: "tab:orange", 0.0: "tab:green"}
    for r in data["panel_c"]["runs"]:
        c = colors.get(r["target"], "k")
        ax_c.plot(range(1, len(r["history"]) + 1), r["history"], color=c, lw=0.7, alpha=0.6)
        ax_c.plot([len(r["history"]) * 1.03], [r["lambda1_final"]], "o", color=c, ms=3.5, clip_on=False)
    for t in data["panel_c"]["targets"]:
        ax_c.axhline(t, color=colors.get(t, "k"), ls="--", lw=1.2, label=f"target {t:+.1f}")
    ax_c.set_xlabel("flossing step")
    ax_c.set_ylabel(r"first Lyapunov exponent $\lambda_1$")
    steps = data["settings"]["floss"]["steps"]
    ax_c.set_xlim(0, steps * 1.06)
    lo = min(min(r["history"]) for r in data["panel_c"]["runs"])
    ax_c.set_ylim(max(lo, -3.5) - 0.1, 0.4)
    ax_c.set_title(f"C  {data['panel_c']['networks']} networks, g ~ U(0, 1), N = {N}  "
                   f"(dots: long held-out estimate)", fontsize=10, loc="left")
    ax_c.legend(loc="upper right", ncol=3, fontsize=8)

    d = data["panel_d"]
    idx = list(range(1, len(d["spectrum_before"]) + 1))
    ax_d.plot(idx, d["spectrum_before"], "o-", color="0.5", ms=2.5, lw=1, label="before flossing")
    cmap = plt.get_cmap("viridis")
    for j, r in enumerate(d["runs"]):
        c = cmap(j / max(1, len(d["runs"]) - 1) * 0.9)
        ax_d.plot(idx, r["spectrum_after"], "o-", color=c, ms=2.5, lw=1, label=f"after flossing k = {r['k']}")
        ax_d.axvline(r["k"] + 0.5, color=c, ls=":", lw=1)
    ax_d.axhline(0.0, color="k", lw=0.8)
    ax_d.set_xlabel("index i")
    ax_d.set_ylabel(r"Lyapunov exponent $\lambda_i$")
    ax_d.set_title(f"D  first {len(idx)} of {N} exponents, g = {d['g']}, target 0 for i <= k",
                   fontsize=10, loc="left")
    ax_d.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--networks", type=int, default=None, help="networks in panel C (default 10, quick 2)")
    ap.add_argument("--steps", type=int, default=None, help="flossing steps (default 1000, quick 300)")
    ap.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-3, quick 3e-3)")
    ap.add_argument("--frame-warmup", type=int, default=None,
                    help="frame warm-up steps of each flossing estimate (default 15; the reference: 0)")
    ap.add_argument("--ks", type=str, default=None, help="comma-separated k for panel D (default 1,10,20,40; "
                    "quick 1,10)")
    ap.add_argument("--gain-d", type=float, default=0.5, help="coupling gain of the panel-D network")
    ap.add_argument("--out", type=Path, default=Path("outputs/fig1"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small, fast run (larger lr, fewer steps)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (1 thread each)")
    args = ap.parse_args(argv)

    n_net = args.networks if args.networks is not None else (2 if args.quick else 10)
    ks = [int(v) for v in (args.ks or ("1,10" if args.quick else "1,10,20,40")).split(",")]
    if n_net < 1 or any(not 1 <= k < N for k in ks) or (args.steps is not None and args.steps < 1) \
            or (args.lr is not None and not args.lr > 0) or (args.frame_warmup is not None and args.frame_warmup < 0):
        ap.error(f"need --networks >= 1, --steps >= 1, --lr > 0, --frame-warmup >= 0 and 1 <= k < {N}")
    cfg = floss_settings(args.quick, args.steps, args.lr, args.frame_warmup)
    measure = QUICK_MEASURE if args.quick else MEASURE
    n_show = min(N, max(60, max(ks) + 10))
    base = 10_000 * args.seed
    gains = torch.rand(n_net, generator=gen(args.seed)).tolist()  # g ~ U(0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    print(f"floss settings: {cfg}; long estimates: {measure}", flush=True)
    t0 = time.time()

    jobs_c = [dict(net=i, g=g, target=t, net_seed=base + 100 + i, floss_seed=base + 1000 + i, floss=cfg,
                   measure=measure) for i, g in enumerate(gains) for t in TARGETS]
    jobs_d = [dict(k=k, g=args.gain_d, net_seed=base + 7, floss_seed=base + 1000, floss=cfg, measure=measure,
                   n_show=n_show) for k in ks]
    # longest jobs first keeps the workers busy
    res_d = _run_all(run_d, sorted(jobs_d, key=lambda j: -j["k"]), args.jobs, "D")
    res_c = _run_all(run_c, jobs_c, args.jobs, "C")
    res_d.sort(key=lambda r: r["k"])
    before = long_estimate(make_net(args.gain_d, base + 7), n_show, measure)

    errs = {t: max(abs(r["lambda1_final"] - t) for r in res_c if r["target"] == t) for t in TARGETS}
    data = dict(
        settings=dict(N=N, n_in=N_IN, input="N(0,1) through W_in ~ N(0,1)", floss=cfg, long_estimate=measure,
                      seed=args.seed, quick=args.quick, dtype="float64"),
        panel_c=dict(networks=n_net, gains=gains, targets=list(TARGETS), runs=res_c,
                     max_abs_error=errs),
        panel_d=dict(g=args.gain_d, spectrum_before=before, runs=res_d),
        seconds=time.time() - t0,
    )
    with open(args.out / "fig1.json", "w") as f:
        json.dump(data, f, indent=1)
    plot(data, args.out / "fig1.png")
    print("panel C, max |lambda_1 - target| over networks: "
          + ", ".join(f"{t:+.1f}: {e:.3f}" for t, e in errs.items()))
    for r in res_d:
        print(f"panel D, k={r['k']}: max |lambda_i|, i<=k: {r['max_abs_first_k']:.3f}; "
              f"lambda_(k+1) = {r['lambda_k_plus_1']:+.3f}")
    print(f"wrote {args.out / 'fig1.png'} and {args.out / 'fig1.json'} in {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
