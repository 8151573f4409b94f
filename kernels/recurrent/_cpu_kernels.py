"""numba kernels of the recurrent spiking network (see :mod:`.cpu` for how they are called and why).

Arrays: ``x [T, R, N]`` (``R = E B`` rows: member-major), ``Wt [E, N, N]`` with ``Wt[e, k, n] = W[e][n, k]`` (a
presynaptic neuron's out-going weights contiguous), parameters ``[E, N]``, states ``[T, R, D]``. Constants of
the state dtype (``one``) are passed in, so that no float64 literal promotes a float32 computation.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def rnn_forward(x, Wt, mem0, syn0, beta, alpha, theta, bias, has_bias, cuba, zero, zmem, B, one, r0, r1,
                spk, states, bits):
    """Rows ``[r0, r1)`` over all ``T`` steps: the recurrent input sums the out-going weight rows of the
    neurons that spiked at the previous step (spike-sparse), then the neuron update of
    :func:`surroflos.kernels.recurrent._forward_torch`, operation by operation."""
    T, R, N = x.shape
    D = states.shape[2]
    zero_f = one - one
    s = np.empty(N, x.dtype)  # S[t-1] as numbers
    active = np.empty(N, np.int32)  # the ids where S[t-1] = 1
    rec = np.empty(N, x.dtype)
    mem = np.empty(N, x.dtype)
    syn = np.empty(N, x.dtype)
    for r in range(r0, r1):
        e = r // B
        n_act = 0
        for n in range(N):
            mem[n] = mem0[r, n]
            syn[n] = syn0[r, n] if cuba else zero_f
            if mem[n] > theta[e, n]:
                s[n] = one
                active[n_act] = n
                n_act += 1
            else:
                s[n] = zero_f
        for t in range(T):
            for n in range(N):
                rec[n] = zero_f
            for i in range(n_act):  # the out-going weights of the neurons that spiked
                k = active[i]
                for n in range(N):
                    rec[n] += Wt[e, k, n]
            # The update, one branch-free loop per variant (so that LLVM vectorises it), in the PyTorch path's
            # order of operations: cur = (x + S W^T) (+ b).
            if has_bias:
                for n in range(N):
                    rec[n] = (x[t, r, n] + rec[n]) + bias[e, n]
            else:
                for n in range(N):
                    rec[n] = x[t, r, n] + rec[n]
            if cuba:
                for n in range(N):
                    y = alpha[e, n] * syn[n] + rec[n]
                    syn[n] = y
                    states[t, r, n] = y
                    rec[n] = y
            if zero and cuba and not zmem:
                for n in range(N):
                    mem[n] = (beta[e, n] * mem[n] + rec[n]) * (one - s[n])
            elif zero:
                for n in range(N):
                    mem[n] = (beta[e, n] * (one - s[n])) * mem[n] + rec[n]
            else:
                for n in range(N):
                    mem[n] = (beta[e, n] * mem[n] + rec[n]) - s[n] * theta[e, n]
            for n in range(N):
                m = mem[n]
                states[t, r, D - N + n] = m
                sp = one if m > theta[e, n] else zero_f
                s[n] = sp
                spk[t, r, n] = sp
                bits[t, r, n] = m > theta[e, n]
            n_act = 0
            for n in range(N):
                if s[n] != zero_f:
                    active[n_act] = n
                    n_act += 1
