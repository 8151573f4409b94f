"""surroflos.export: NIR (Neuromorphic Intermediate Representation) export and import of surroflos networks.

- :func:`to_nir` / :func:`write`: a ``SpikingRNN``, ``BalancedNetwork`` or ``nn.Sequential`` of snnTorch / Norse
  layers as a ``nir.NIRGraph`` / an atomically written ``.nir`` file (mapping table: :mod:`.to_nir`).
- :func:`read` / :func:`from_nir`: a NIR file with clear errors / the model rebuilt from a graph (exact round
  trip for graphs written by :func:`to_nir`; the closest model for foreign graphs).
- :func:`simulate` (:mod:`.reference`): an independent integrator of NIR's equations at a time step.
- :func:`verify`: the same input through our model, the reference and each NIR consumer with its own modules
  (snnTorch, Norse, nirtorch; spyx, Rockpool and sinabs in the environments ``make interop`` builds).
- ``to_nir(..., consumer=...)`` (:mod:`.consumers`): the file one consumer runs exactly, or
  :class:`ConsumerRefusal` with the reason and the nearest exact alternative.
"""

from .consumers import CONSUMERS, ConsumerRefusal
from .from_nir import from_nir, read
from .reference import ReferenceResult, simulate
from .to_nir import NIRExportWarning, NIRImportWarning, fold_r, metadata_of, to_nir, write
from .verify import SimulatorResult, VerificationReport, simulate_with, verify

__all__ = [
    "to_nir", "write", "read", "from_nir", "metadata_of", "fold_r",
    "simulate", "ReferenceResult", "verify", "VerificationReport", "SimulatorResult", "simulate_with",
    "NIRExportWarning", "NIRImportWarning", "CONSUMERS", "ConsumerRefusal",
]
