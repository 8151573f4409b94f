"""Importing surroflos (models, drop-ins, training) does not import torch._dynamo (1.5 s and 145 MB): the
kernels mark their trace-time constants with kernels.backend.constant_result, not
torch.compiler.assume_constant_result, which imports Dynamo."""

import subprocess
import sys

import torch

from surroflos.kernels.backend import constant_result

CODE = ("import sys\nimport surroflos, surroflos.models, surroflos.norse, surroflos.snntorch, surroflos.train\n"
        "import surroflos.lyapunov, surroflos.kernels.balanced, surroflos.kernels.tangent\n"
        "print('torch._dynamo' in sys.modules)")


def test_import_does_not_load_dynamo():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_constant_result_is_a_trace_time_constant():
    """torch.compile calls a marked function while tracing and bakes its answer in: a later change of what it
    reads does not reach the compiled graph (it would with a traced, unmarked function)."""
    box = {"v": 1.0}

    @constant_result
    def read():
        return box["v"]

    def f(x):
        return x * read()

    torch._dynamo.reset()
    g = torch.compile(f, backend="eager", fullgraph=True)
    x = torch.ones(3)
    assert torch.equal(g(x), x)
    box["v"] = 5.0
    assert torch.equal(g(x), x)  # the constant of the compiled graph
    assert torch.equal(f(x), 5 * x)  # eager reads the new value


def test_a_small_spiking_network_does_not_import_numba():
    """SpikingRNN's "auto" backend decides on the network's size before asking whether numba imports: below 512
    neurons it runs the PyTorch path and never imports numba (about a second and 100 MB)."""
    code = ("import sys, torch, surroflos\nm = surroflos.SpikingRNN(2, 8, 1)\nm(torch.rand(5, 3, 2))[0].sum().backward()\n"
            "print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
