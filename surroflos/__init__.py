"""surroflos: surrogate Lyapunov spectra and gradient flossing for spiking and rate recurrent networks.

Shapes are time first: inputs ``[T, B, n_in]``, outputs ``[T, B, n_out]``, states ``[T, B, D]``.
"""

import os as _os
import sys as _sys

# libgomp's worker threads spin while they wait: on a CPU that other processes share, that made a flossing step
# of a small network 15x slower with 2 threads than with 1 (BENCHMARKS.md, "OpenMP wait policy"). Passive
# waiting removes that. libgomp reads the variable once, when torch loads it, so this acts only when surroflos
# is imported before torch (always so for the `surroflos` command); a value the user set wins.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import surrogate  # noqa: E402
from .gradients import GradientPropagationResult, gradient_propagation
from .flossing import FlossingHistory, FlossingSchedule, floss, flossing_loss
from .lyapunov import (LyapunovResult, NonFiniteError, kaplan_yorke_dimension, ks_entropy, lyapunov_spectrum,
                       max_lyapunov_bruteforce)
from .models import BalancedNetwork, RateRNN, RecurrentModel, Rollout, SpikingRNN
from .surrogate import MemberSurrogate, Surrogate, spike

__version__ = "0.1.0"

__all__ = [
    "surrogate", "Surrogate", "MemberSurrogate", "spike",
    "RateRNN", "SpikingRNN", "BalancedNetwork", "RecurrentModel", "Rollout",
    "lyapunov_spectrum", "max_lyapunov_bruteforce", "LyapunovResult", "NonFiniteError",
    "kaplan_yorke_dimension", "ks_entropy",
    "flossing_loss", "floss", "FlossingHistory", "FlossingSchedule",
    "gradient_propagation", "GradientPropagationResult",
    "__version__",
]
