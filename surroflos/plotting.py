"""Figures people would rather look at than read: spectra, their convergence, flossing curves.

matplotlib is imported lazily with the non-interactive Agg backend, so importing surroflos stays cheap
and works on headless machines.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import torch

__all__ = ["figure", "plot_spectra", "plot_convergence", "plot_flossing", "save_figure"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _np(x):
    return torch.as_tensor(x).detach().cpu().double().numpy()


def plot_spectra(ax, spectra: Mapping[str, torch.Tensor], *, title: str = "", unit: str = "1/time") -> None:
    """Draw spectra ``{label: [k] or [B, k]}`` (mean with a +-1 std band over trajectories)."""
    for label, lam in spectra.items():
        lam = torch.as_tensor(lam).detach()
        mean = lam.mean(0) if lam.ndim == 2 else lam
        idx = range(1, mean.shape[0] + 1)
        line, = ax.plot(idx, _np(mean), marker="o", ms=3, label=label)
        if lam.ndim == 2 and lam.shape[0] > 1:
            std = lam.std(0)
            ax.fill_between(idx, _np(mean - std), _np(mean + std), color=line.get_color(), alpha=0.2)
    ax.axhline(0.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("exponent index i")
    ax.set_ylabel(f"Lyapunov exponent $\\lambda_i$ [{unit}]")
    if title:
        ax.set_title(title)
    ax.legend(frameon=False)


def plot_convergence(ax, history: torch.Tensor, times: torch.Tensor, *, n_show: int = 5, title: str = "") -> None:
    """Running estimates ``history [n_qr, B, k]`` of the first ``n_show`` exponents against time."""
    h = torch.as_tensor(history).detach().mean(1)
    t = _np(times)
    for i in range(min(n_show, h.shape[1])):
        ax.plot(t, _np(h[:, i]), lw=1, label=f"$\\lambda_{{{i + 1}}}$")
    ax.axhline(0.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("accumulated time")
    ax.set_ylabel("running estimate")
    if title:
        ax.set_title(title)
    ax.legend(frameon=False, fontsize="small")


def plot_flossing(ax, exponents: torch.Tensor, *, target: Optional[float] = 0.0, title: str = "",
                  labels: Optional[Sequence[str]] = None) -> None:
    """Exponents ``[steps, k]`` recorded during flossing against the step."""
    e = torch.as_tensor(exponents).detach()
    for i in range(e.shape[1]):
        ax.plot(_np(e[:, i]), lw=1, label=labels[i] if labels else (f"$\\lambda_{{{i + 1}}}$" if i < 5 else None))
    if target is not None:
        ax.axhline(float(target), color="k", lw=0.8, ls="--")
    ax.set_xlabel("flossing step")
    ax.set_ylabel("exponent estimate")
    if title:
        ax.set_title(title)
    ax.legend(frameon=False, fontsize="small")


def save_figure(fig, path: str | os.PathLike) -> str:
    """Save ``fig`` to ``path`` atomically (write a temporary file, then rename) and close it."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{ext}"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    _plt().close(fig)
    return path


def figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.6)):
    """A figure with a grid of axes (flattened list)."""
    plt = _plt()
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False,
                             layout="constrained")
    return fig, [ax for row in axes for ax in row]
