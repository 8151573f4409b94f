"""surroflos: surrogate Lyapunov spectra and gradient flossing for spiking and rate recurrent networks.

Shapes are time first: inputs ``[T, B, n_in]``, outputs ``[T, B, n_out]``, states ``[T, B, D]``.
"""

from . import surrogate
from .gradients import GradientPropagationResult, gradient_propagation
from .flossing import FlossingHistory, FlossingSchedule, floss, flossing_loss
from .lyapunov import (LyapunovResult, NonFiniteError, kaplan_yorke_dimension, ks_entropy, lyapunov_spectrum,
                       max_lyapunov_bruteforce)
from .models import BalancedNetwork, RateRNN, RecurrentModel, Rollout, SpikingRNN
from .surrogate import Surrogate, spike

__version__ = "0.1.0"

__all__ = [
    "surrogate", "Surrogate", "spike",
    "RateRNN", "SpikingRNN", "BalancedNetwork", "RecurrentModel", "Rollout",
    "lyapunov_spectrum", "max_lyapunov_bruteforce", "LyapunovResult", "NonFiniteError",
    "kaplan_yorke_dimension", "ks_entropy",
    "flossing_loss", "floss", "FlossingHistory", "FlossingSchedule",
    "gradient_propagation", "GradientPropagationResult",
    "__version__",
]
