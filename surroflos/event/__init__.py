"""Exact event-based simulation of sparse spiking networks and their exact Lyapunov spectra (seed 004).

:class:`EventNetwork` simulates pulse-coupled LIF and theta (QIF) networks spike by spike in ``O(K log N)``
per spike (SparseProp); :func:`lyapunov_spectrum` computes their Lyapunov spectra from the exact single-spike
Jacobians; :func:`max_lyapunov_bruteforce` is the two-trajectory oracle for the largest exponent;
:func:`to_nir` exports a LIF network to NIR and :meth:`EventNetwork.to_balanced` builds the time-stepped
:class:`surroflos.BalancedNetwork` with the same graph. :mod:`surroflos.event.reference` is the plain O(N)
per spike reference the compiled loop is tested against.
"""

from .lyapunov import EventLyapunovResult, kaplan_yorke_dimension, ks_entropy, lyapunov_spectrum, max_lyapunov_bruteforce
from .export import to_nir
from .network import GRAPHS, NEURONS, EventNetwork, SimulationResult

__all__ = ["EventNetwork", "SimulationResult", "NEURONS", "GRAPHS", "lyapunov_spectrum", "EventLyapunovResult",
           "max_lyapunov_bruteforce", "kaplan_yorke_dimension", "ks_entropy", "to_nir"]
