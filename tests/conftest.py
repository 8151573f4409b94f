"""Shared test settings."""

import pytest
import torch


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
