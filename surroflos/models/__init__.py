"""Network models: pure step and tangent functions plus thin ``nn.Module`` wrappers."""

from .base import RecurrentModel, Rollout, jvp_tangent
from .balanced import (BalancedNetwork, BalancedParams, balanced_step, balanced_tangent, plot_raster,
                       sparse_fixed_indegree)
from .layered import LayeredNetwork, as_model
from .linear import LinearMap
from .rate import RateParams, RateRNN, rate_step, rate_tangent
from .spiking import (SpikingParams, SpikingRNN, cuba_step, cuba_tangent, lif_step, lif_tangent,
                      membrane_time_constant)

__all__ = [
    "RecurrentModel", "Rollout", "jvp_tangent", "LayeredNetwork", "as_model", "LinearMap",
    "BalancedNetwork", "BalancedParams", "balanced_step", "balanced_tangent", "sparse_fixed_indegree", "plot_raster",
    "RateRNN", "RateParams", "rate_step", "rate_tangent",
    "SpikingRNN", "SpikingParams", "lif_step", "lif_tangent", "cuba_step", "cuba_tangent", "membrane_time_constant",
]
