"""surroflos.tasks: temporal cognitive task generators and Tonic event-based datasets.

Every task is a :class:`Task` built by name::

    import torch
    from surroflos import tasks

    tasks.names()                                    # ['2afc', 'copy', 'dms', 'flipflop', ...]
    task = tasks.make("copy", delay=40, T=300)
    g = torch.Generator().manual_seed(0)
    x, y, mask = task.sample(16, g)                  # [T, B, n_in], [T, B, n_out], [T, B] bool
    loss = task.loss(outputs, y, mask)               # masked MSE or cross-entropy
    task.score(outputs, y, mask)                     # task.metric ("accuracy" or "error")

Tasks (time in steps unless the task says otherwise; details and sources in each docstring):

- ``copy``: ``y[t] = x[t - d]`` on ``items`` bit channels (seed 000 Fig. 2A).
- ``pwm``: parametric working memory, recall ``items`` analog values after ``d`` steps.
- ``xor``: ``y[t] = x[t - d/2] XOR x[t - d]``; ``parity``: parity of ``taps`` delayed bits.
- ``gonogo_temporal`` / ``gonogo_spatial``: context-dependent go/no-go answered after a delay
  (seed 000 Fig. 2B/D-H).
- ``romo``: delayed comparison of two pulses, Schuessler et al. 2020 variant (seed 003).
- ``2afc``, ``dms``: NeuroGym-like perceptual decision making and delayed match-to-sample (seed 003).
- ``flipflop``: k-bit flip-flop (Sussillo & Barak 2013; seed 002).

Common parameters: ``T``, ``delay`` where it applies, and ``encoding`` = ``"analog"`` | ``"poisson"``
(Bernoulli spikes with probability ``rate * input`` per step) | ``"current"`` (``gain * input``) for
spiking networks.

Event datasets (SHD, N-MNIST, DVS Gesture through Tonic, binned to ``[T, n_in]`` frames, cached, never
downloaded implicitly): :mod:`surroflos.tasks.datasets` (``datasets.load(name, root, ...)``).
"""

from . import datasets
from .base import ENCODINGS, Task, make, names, task_class
# Importing the task modules registers their tasks.
from .flipflop import FlipFlop
from .gonogo import GoNoGoSpatial, GoNoGoTemporal
from .memory import Copy, DelayedParity, DelayedXOR, ParametricWorkingMemory
from .neurogym_like import DelayedMatchToSample, PerceptualDecisionMaking
from .romo import Romo

__all__ = [
    "Task", "names", "make", "task_class", "ENCODINGS",
    "Copy", "ParametricWorkingMemory", "DelayedXOR", "DelayedParity",
    "GoNoGoTemporal", "GoNoGoSpatial", "Romo", "PerceptualDecisionMaking", "DelayedMatchToSample",
    "FlipFlop", "datasets",
]
