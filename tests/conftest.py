"""Shared test settings.

Without a GPU, the Triton kernels are tested through Triton's CPU interpreter: ``TRITON_INTERPRET``
must be set before any kernel module is imported (Triton decides at decoration time), hence here, at
the top of the first file pytest loads. On a machine with CUDA the same tests run compiled.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Small sequential matrix ops: extra threads only add contention on a shared 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed_global_rng():
    # Tests seed their own generators; seeding the global RNG too keeps any accidental use reproducible.
    torch.manual_seed(1234)
