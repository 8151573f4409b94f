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


def _test_threads() -> int:
    """Torch threads per test module: ``SURROFLOS_TEST_THREADS`` (default 1). With 2 or more, reductions and
    matrix products split their work differently, so float32 results round differently: the suite's
    tolerances must hold either way (docs/TESTING.md)."""
    value = os.environ.get("SURROFLOS_TEST_THREADS", "1")
    try:
        n = int(value)
    except ValueError:
        raise pytest.UsageError(f"SURROFLOS_TEST_THREADS must be a positive integer, got {value!r}") from None
    if n < 1:
        raise pytest.UsageError(f"SURROFLOS_TEST_THREADS must be a positive integer, got {value!r}")
    return n


TEST_THREADS = _test_threads()


@pytest.fixture(autouse=True, scope="module")
def _test_thread_count():
    # Small sequential matrix ops: by default one thread, since extra threads only add contention on a shared
    # 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(TEST_THREADS)
    yield
    torch.set_num_threads(n)


def pytest_report_header(config):
    keys = ("SURROFLOS_TEST_THREADS", "MKL_CBWR", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS", "TRITON_INTERPRET")
    return "numerics: " + ", ".join(f"{k}={os.environ.get(k, '')}" for k in keys) + \
        f"; torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


@pytest.fixture(autouse=True)
def _seed_global_rng():
    # Tests seed their own generators; seeding the global RNG too keeps any accidental use reproducible.
    torch.manual_seed(1234)
