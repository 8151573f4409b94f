"""The numba kernels of :mod:`surroflos.kernels.lif_cpu` (imported by it lazily: importing this module
imports numba). Module-level functions, so that numba's on-disk cache can reuse them (closures calling
other jitted closures are recompiled in every process)."""

import os

import numba
import numpy as np

_SUB, _ZERO, _NONE = 0, 1, 2


def _cache_ok() -> bool:
    """Whether numba has somewhere to write its cache for this file (else compile per process)."""
    try:
        numba.njit(cache=True)(lambda: 0)  # raises at decoration when no cache locator applies
    except Exception:  # pragma: no cover - read-only install, read-only home, no NUMBA_CACHE_DIR
        return False
    return True


_CACHE = _cache_ok() and os.environ.get("SURROFLOS_NUMBA_CACHE", "1") != "0"


# error_model="numpy": a float division by zero gives inf/nan as in PyTorch, instead of a check and a Python
# exception per element (the branch would keep LLVM from vectorising the surrogates' divisions).


def jit(fn):
    # Serial kernels over a range of blocks, called from several Python threads at once (nogil): the host
    # hands out blocks one at a time (kernels/lif_cpu.py, _run_blocks).
    return numba.njit(cache=_CACHE, nogil=True, error_model="numpy")(fn)


def jit_inline(fn):
    return numba.njit(inline="always", cache=_CACHE, error_model="numpy")(fn)


@jit_inline
def surrogate_row(v, out, w, sid, c1, c2, one):
    """``out[:w] = sigma'(v[:w])`` in the rounding order of :func:`surroflos.surrogate.surrogate_derivative`.

    ``c1``/``c2``: the Python-double constants of that formula cast to the working dtype, as PyTorch
    casts them (:func:`_surrogate_constants`); ``one``: 1 in the working dtype (numba would promote a
    float32 expression with a Python literal to float64).
    """
    if sid == 0:  # fast_sigmoid: 1 / (scale |x| + 1)^2
        for j in range(w):
            d = c2 * abs(v[j]) + one
            out[j] = one / (d * d)
    elif sid == 1:  # atan: (scale / 2) / (1 + (pi / 2 scale x)^2)
        for j in range(w):
            u = c1 * v[j]
            out[j] = c2 / (one + u * u)
    elif sid == 2:  # sigmoid: scale s(scale x) s(-scale x)
        for j in range(w):
            y = c1 * v[j]
            s1 = one / (one + np.exp(-y))
            s2 = one / (one + np.exp(y))
            out[j] = (c1 * s1) * s2
    elif sid == 3:  # triangle: scale relu(1 - |x|)
        zero = one - one
        for j in range(w):
            out[j] = c2 * max(one - abs(v[j]), zero)
    elif sid == 4:  # exponential: (scale / 2) exp(-scale |x|)
        for j in range(w):
            out[j] = c2 * np.exp(c1 * abs(v[j]))
    elif sid < 0:  # no surrogate (Norse's method="heaviside"): no gradient through the spike
        zero = one - one
        for j in range(w):
            out[j] = zero
    else:  # gaussian: scale / sqrt(2 pi) exp(-(scale x)^2 / 2)
        half = one / (one + one)
        for j in range(w):
            u = c1 * v[j]
            out[j] = c2 * np.exp(-(u * u) * half)

@jit_inline
def box_membrane(x, v_leak, v, a):
    """``(d, u)`` of the LIF box: ``d = (x + v_leak) - v`` and the membrane before the spike ``u = d a + v``,
    operation by operation. The forward and both backward loops compute ``u`` here, so the spikes the backward
    recomputes are the forward's bit for bit."""
    d = x + v_leak
    d = d - v
    u = d * a
    u = u + v
    return d, u


@jit_inline
def surrogate_one(v, sid, c1, c2, one):
    """``sigma'(v)`` of one element: :func:`surrogate_row`'s formulas and rounding, for the fused loops. Called
    with a constant ``sid`` from a loop written once per surrogate (``if sid == 0: row(..., 0, ...)``), so the
    branch below folds away and the loop vectorises (the exponential ones call ``exp`` per element)."""
    zero = one - one
    if sid == 0:
        d = c2 * abs(v) + one
        return one / (d * d)
    if sid == 1:
        u = c1 * v
        return c2 / (one + u * u)
    if sid == 2:
        y = c1 * v
        s1 = one / (one + np.exp(-y))
        s2 = one / (one + np.exp(y))
        return (c1 * s1) * s2
    if sid == 3:
        return c2 * max(one - abs(v), zero)
    if sid == 4:
        return c2 * np.exp(c1 * abs(v))
    if sid < 0:
        return zero
    half = one / (one + one)
    u = c1 * v
    return c2 * np.exp(-(u * u) * half)


@jit_inline
def block_span(blk, BLOCK, M):
    """``(lo, w)``: the first neuron of block ``blk`` and its width (the last block may be partial)."""
    lo = blk * BLOCK
    return lo, min(BLOCK, M - lo)


@jit_inline
def per_neuron(p, lo, w):
    """A block's copy of a parameter: ``out[j] = p[(lo + j) % len(p)]`` (``p``: one value or ``[N]``; the
    flattened neuron ``i`` of ``[T, K*N]`` has parameter index ``i % N``)."""
    n = p.shape[0]
    out = np.empty(w, p.dtype)
    for j in range(w):
        out[j] = p[(lo + j) % n]
    return out


@jit_inline
def block_state(s0, lo, w):
    """A block's copy of an initial state ``s0[lo:lo + w]`` (the time loop updates it in place)."""
    out = np.empty(w, s0.dtype)
    for j in range(w):
        out[j] = s0[lo + j]
    return out


@jit
def leaky_fwd(x, mem0, beta, thr, reset, late, g, one, BLOCK, b0, b1, spk, mem):
    """Forward of Leaky over ``x: [T, M]``: writes ``spk`` (``g`` or 0) and ``mem``, both ``[T, M]``.

    The operations and their order are those of the PyTorch path (``_leaky_forward_torch``): the
    reset signal ``R = H(u - theta)`` of the stored previous membrane ``u``, ``m = beta u + x - R theta``
    (``(u - R u) beta + x`` for the zero reset), then the immediate reset when ``late``.
    """
    T, M = x.shape
    nblk = (M + BLOCK - 1) // BLOCK
    zero = one - one
    xf = x.ravel()
    sf = spk.ravel()
    mf = mem.ravel()
    for blk in range(b0, min(b1, nblk)):
        lo, w = block_span(blk, BLOCK, M)
        u = block_state(mem0, lo, w)
        bl = per_neuron(beta, lo, w)
        th = per_neuron(thr, lo, w)
        R = np.empty(w, x.dtype)
        for t in range(T):
            base = t * M + lo
            xs = xf[base:base + w]
            ss = sf[base:base + w]
            ms = mf[base:base + w]
            if reset == _SUB and not late:  # snnTorch's default: one fused loop
                for j in range(w):
                    uj = u[j]
                    r = one if uj > th[j] else zero
                    m = uj * bl[j]
                    m = m + xs[j]
                    m = m + r * (-th[j])
                    u[j] = m
                    ss[j] = g if m > th[j] else zero
                    ms[j] = m
                continue
            for j in range(w):
                R[j] = one if (reset != _NONE and u[j] > th[j]) else zero
            if reset == _ZERO:
                for j in range(w):
                    k = u[j] - R[j] * u[j]
                    m = k * bl[j]
                    u[j] = m + xs[j]
            else:
                for j in range(w):
                    m = u[j] * bl[j]
                    m = m + xs[j]
                    if reset == _SUB:
                        m = m + R[j] * (-th[j])
                    u[j] = m
            if late:
                for j in range(w):
                    m = u[j]
                    s = one if m > th[j] else zero
                    d = s - R[j]
                    if reset == _SUB:
                        m = m + d * (-th[j])
                    else:
                        m = m - d * m
                    u[j] = m
                    ss[j] = g if s != zero else zero
                    ms[j] = m
            else:
                for j in range(w):
                    m = u[j]
                    ss[j] = g if m > th[j] else zero
                    ms[j] = m


@jit_inline
def _leaky_bwd_row(gss, gms, ps, gxs, G, mc, bl, th, w, sid, c1, c2, g, one):
    """One row of :func:`leaky_bwd_linear` without parameter gradients and a reset other than zero, the
    surrogate fused in (``sid`` a constant: one loop per surrogate)."""
    for j in range(w):
        sm = surrogate_one(mc[j] - th[j], sid, c1, c2, one)
        gsm = gss[j] * sm
        gsm = gsm * g
        a = gms[j] + gsm
        a = a + G[j] * bl[j]
        G[j] = a
        gxs[j] = a
        mc[j] = ps[j]


@jit
def leaky_bwd_linear(gspk, gmem, has_gspk, has_gmem, mem0, mem, beta, thr, sid, c1, c2, reset, g, one, params, BLOCK, b0, b1,
                     gx, gmem0, dbeta, dthr):
    """Backward of the delayed, detached reset: ``G[t] = (gmem[t] + g gspk[t] sigma'(m[t] - theta))
    + c[t+1] G[t+1]`` scanned in reverse (the PyTorch path's linear scan and its rounding order), with
    ``c = beta`` (``beta (1 - R)`` for the zero reset). ``gspk``/``gmem`` are one row of zeros unless
    ``has_gspk``/``has_gmem`` (an unused output).
    Per-element partials of the parameters' gradients go to ``dbeta``/``dthr`` (``[M]``)."""
    T, M = mem.shape
    nblk = (M + BLOCK - 1) // BLOCK
    zero = one - one
    rs = one if reset == _SUB else zero  # R enters dthr for the subtract reset only
    gsf = gspk.ravel()
    gmf = gmem.ravel()
    mf = mem.ravel()
    gxf = gx.ravel()
    for blk in range(b0, min(b1, nblk)):
        lo, w = block_span(blk, BLOCK, M)
        G = np.zeros(w, mem.dtype)  # G[t+1] (0 after the last step)
        cn = np.zeros(w, mem.dtype)  # c[t+1] (zero reset)
        bl = per_neuron(beta, lo, w)
        th = per_neuron(thr, lo, w)
        v = np.empty(w, mem.dtype)
        sm = np.empty(w, mem.dtype)
        mc = block_state(mem[T - 1], lo, w)  # m[t]
        db = np.zeros(w, mem.dtype)
        dt = np.zeros(w, mem.dtype)
        for t in range(T - 1, -1, -1):
            base = t * M + lo
            gss = gsf[base:base + w] if has_gspk else gsf[lo:lo + w]
            gxs = gxf[base:base + w]
            gms = gmf[base:base + w] if has_gmem else gmf[lo:lo + w]
            ps = mf[base - M:base - M + w] if t > 0 else mem0[lo:lo + w]
            if reset != _ZERO and not params:  # snnTorch's fixed beta/threshold: one loop per surrogate
                if sid == 0:
                    _leaky_bwd_row(gss, gms, ps, gxs, G, mc, bl, th, w, 0, c1, c2, g, one)
                elif sid == 1:
                    _leaky_bwd_row(gss, gms, ps, gxs, G, mc, bl, th, w, 1, c1, c2, g, one)
                elif sid == 2:
                    _leaky_bwd_row(gss, gms, ps, gxs, G, mc, bl, th, w, 2, c1, c2, g, one)
                elif sid == 3:
                    _leaky_bwd_row(gss, gms, ps, gxs, G, mc, bl, th, w, 3, c1, c2, g, one)
                elif sid == 4:
                    _leaky_bwd_row(gss, gms, ps, gxs, G, mc, bl, th, w, 4, c1, c2, g, one)
                elif sid == 5:
                    _leaky_bwd_row(gss, gms, ps, gxs, G, mc, bl, th, w, 5, c1, c2, g, one)
                else:
                    _leaky_bwd_row(gss, gms, ps, gxs, G, mc, bl, th, w, -1, c1, c2, g, one)
                continue
            for j in range(w):
                v[j] = mc[j] - th[j]
            surrogate_row(v, sm, w, sid, c1, c2, one)
            if reset == _ZERO:
                for j in range(w):
                    gsm = gss[j] * sm[j]
                    gsm = gsm * g
                    a = gms[j] + gsm
                    a = a + cn[j] * G[j]
                    p = ps[j]
                    keep = zero if p > th[j] else one
                    dt[j] = dt[j] - gsm
                    db[j] = db[j] + a * p * keep
                    cn[j] = keep * bl[j]
                    G[j] = a
                    gxs[j] = a
                    mc[j] = p
            elif params:
                for j in range(w):
                    gsm = gss[j] * sm[j]
                    gsm = gsm * g
                    a = gms[j] + gsm
                    a = a + G[j] * bl[j]
                    p = ps[j]
                    r = rs if p > th[j] else zero
                    dt[j] = (dt[j] - gsm) - a * r
                    db[j] = db[j] + a * p
                    G[j] = a
                    gxs[j] = a
                    mc[j] = p
            else:  # no parameter gradients (snnTorch's fixed beta/threshold): the same without the partials
                for j in range(w):
                    gsm = gss[j] * sm[j]
                    gsm = gsm * g
                    a = gms[j] + gsm
                    a = a + G[j] * bl[j]
                    G[j] = a
                    gxs[j] = a
                    mc[j] = ps[j]
        for j in range(w):
            gmem0[lo + j] = cn[j] * G[j] if reset == _ZERO else G[j] * bl[j]
            dbeta[lo + j] = db[j]
            dthr[lo + j] = dt[j]


@jit
def leaky_bwd_general(gspk, gmem, has_gspk, has_gmem, x, mem0, mem, spk, beta, thr, sid, c1, c2, reset, late, rgrad, g,
                      one, params, BLOCK, b0, b1, gx, gmem0, dbeta, dthr):
    """Backward with the immediate reset and/or the gradient through the reset signal (the PyTorch
    path's general scan, per neuron)."""
    T, M = mem.shape
    nblk = (M + BLOCK - 1) // BLOCK
    zero = one - one
    for blk in range(b0, min(b1, nblk)):
        lo, w = block_span(blk, BLOCK, M)
        carry = np.zeros(w, mem.dtype)
        bl = per_neuron(beta, lo, w)
        th = per_neuron(thr, lo, w)
        vm = np.empty(w, mem.dtype)
        vu = np.empty(w, mem.dtype)
        mm = np.empty(w, mem.dtype)
        sm = np.empty(w, mem.dtype)
        su = np.empty(w, mem.dtype)
        db = np.zeros(w, mem.dtype)
        dt = np.zeros(w, mem.dtype)
        for t in range(T - 1, -1, -1):
            for j in range(w):
                u = mem[t - 1, lo + j] if t > 0 else mem0[lo + j]
                vu[j] = u - th[j]
                if late:
                    R = one if (reset != _NONE and vu[j] > zero) else zero
                    if reset == _SUB:
                        m = u * bl[j]
                        m = m + x[t, lo + j]
                        m = m + R * (-th[j])
                    else:
                        k = u - R * u
                        m = k * bl[j]
                        m = m + x[t, lo + j]
                    mm[j] = m
                    vm[j] = m - th[j]
                else:
                    vm[j] = mem[t, lo + j] - th[j]
            surrogate_row(vm, sm, w, sid, c1, c2, one)
            if rgrad:
                surrogate_row(vu, su, w, sid, c1, c2, one)
            for j in range(w):
                u = mem[t - 1, lo + j] if t > 0 else mem0[lo + j]
                R = one if (reset != _NONE and vu[j] > zero) else zero
                A = gmem[t, lo + j] + carry[j] if has_gmem else carry[j]
                gs = gspk[t if has_gspk else 0, lo + j]
                if g != one:
                    gs = gs * g
                GR = zero
                if not late:
                    p = gs * sm[j]
                    Gm = p + A
                    dt[j] = dt[j] - p
                elif reset == _SUB:
                    s = one if spk[t, lo + j] != zero else zero
                    Gs = gs - A * th[j]
                    Gm = Gs * sm[j] + A
                    dt[j] = dt[j] - (s - R) * A
                    GR = A * th[j]
                    dt[j] = dt[j] - Gs * sm[j]
                else:
                    s = one if spk[t, lo + j] != zero else zero
                    m = mm[j]
                    Gs = gs - A * m
                    Gm = Gs * sm[j] + A * ((R - s) + one)
                    GR = A * m
                    dt[j] = dt[j] - Gs * sm[j]
                gx[t, lo + j] = Gm
                if reset == _SUB:
                    du = bl[j]
                    GR = GR + Gm * (-th[j])
                    dt[j] = dt[j] - Gm * R
                    db[j] = db[j] + Gm * u
                elif reset == _ZERO:
                    keep = one - R
                    du = bl[j] * keep
                    GR = GR - Gm * (bl[j] * u)
                    db[j] = db[j] + Gm * (u * keep)
                else:
                    du = bl[j]
                    db[j] = db[j] + Gm * u
                c = Gm * du
                if rgrad:
                    c = c + GR * su[j]
                    dt[j] = dt[j] - GR * su[j]
                carry[j] = c
        for j in range(w):
            gmem0[lo + j] = carry[j]
            dbeta[lo + j] = db[j]
            dthr[lo + j] = dt[j]



# --------------------------------------------------------------------------------------------------
# Synaptic (snnTorch's current-based neuron): syn = alpha syn + x, m = beta mem + syn - reset
# --------------------------------------------------------------------------------------------------


@jit
def synaptic_fwd(x, syn0, mem0, alpha, beta, thr, reset, late, g, one, BLOCK, b0, b1, spk, syn, mem):
    """Forward of Synaptic over ``x: [T, M]``: writes ``spk`` (``g`` or 0), ``syn`` and ``mem`` (``[T, M]``).

    The operations and their order are those of the PyTorch path (``_synaptic_forward_torch``):
    ``R = H(u - theta)`` of the previous membrane ``u``, ``y = alpha y + x``, ``b = beta u + y``, then
    ``m = b - R theta`` (subtract), ``b - R b`` (zero) or ``b`` (none), then the immediate reset when
    ``late``. ``R`` is 0 or 1, so ``R theta`` and ``R b`` are exact.
    """
    T, M = x.shape
    nblk = (M + BLOCK - 1) // BLOCK
    zero = one - one
    xf = x.ravel()
    sf = spk.ravel()
    yf = syn.ravel()
    mf = mem.ravel()
    for blk in range(b0, min(b1, nblk)):
        lo, w = block_span(blk, BLOCK, M)
        y = block_state(syn0, lo, w)
        u = block_state(mem0, lo, w)
        al = per_neuron(alpha, lo, w)
        bl = per_neuron(beta, lo, w)
        th = per_neuron(thr, lo, w)
        for t in range(T):
            base = t * M + lo
            xs = xf[base:base + w]
            ss = sf[base:base + w]
            ys = yf[base:base + w]
            ms = mf[base:base + w]
            if reset == _SUB and not late:  # snnTorch's default: the branch-free loop
                for j in range(w):
                    uj = u[j]
                    r = one if uj > th[j] else zero
                    yj = y[j] * al[j]
                    yj = yj + xs[j]
                    m = uj * bl[j]
                    m = m + yj
                    m = m + r * (-th[j])
                    y[j] = yj
                    u[j] = m
                    ys[j] = yj
                    ss[j] = g if m > th[j] else zero
                    ms[j] = m
                continue
            for j in range(w):
                uj = u[j]
                r = one if (reset != _NONE and uj > th[j]) else zero
                yj = y[j] * al[j]
                yj = yj + xs[j]
                m = uj * bl[j]
                m = m + yj
                if reset == _SUB:
                    m = m + r * (-th[j])
                elif reset == _ZERO:
                    m = m - r * m
                s = one if m > th[j] else zero
                if late:
                    d = s - r
                    if reset == _SUB:
                        m = m + d * (-th[j])
                    else:
                        m = m - d * m
                y[j] = yj
                u[j] = m
                ys[j] = yj
                ss[j] = g if s != zero else zero
                ms[j] = m


@jit
def synaptic_bwd_linear(gspk, gsyn, gmem, has_gs, has_gy, has_gm, syn0, mem0, syn, mem, alpha, beta, thr, sid, c1,
                        c2, reset, g, one, params, BLOCK, b0, b1, gx, gsyn0, gmem0, dalpha, dbeta, dthr):
    """Backward of the delayed, detached reset (snnTorch's default), a linear reverse scan per neuron:
    ``Gm = g gspk sigma'(m[t] - theta) + gmem[t] + beta Gb[t+1]``, ``Gb = Gm`` (``Gm (1 - R)`` for the zero
    reset), ``G[t] = Gb + gsyn[t] + alpha G[t+1]``: the gradient on ``x[t]`` (and on ``syn[t]``). The
    gradient inputs whose ``has_*`` is False are one row of zeros (an unused output). Per-element partials
    of the parameters' gradients go to ``dalpha``/``dbeta``/``dthr`` (``[M]``) when ``params``."""
    T, M = mem.shape
    nblk = (M + BLOCK - 1) // BLOCK
    zero = one - one
    rs = one if reset == _SUB else zero  # R enters dthr for the subtract reset only
    rz = one if reset == _ZERO else zero  # ... and Gb for the zero reset
    gsf = gspk.ravel()
    gyf = gsyn.ravel()
    gmf = gmem.ravel()
    yf = syn.ravel()
    mf = mem.ravel()
    gxf = gx.ravel()
    for blk in range(b0, min(b1, nblk)):
        lo, w = block_span(blk, BLOCK, M)
        cs = np.zeros(w, mem.dtype)  # alpha G[t+1]
        cm = np.zeros(w, mem.dtype)  # beta Gb[t+1]
        al = per_neuron(alpha, lo, w)
        bl = per_neuron(beta, lo, w)
        th = per_neuron(thr, lo, w)
        v = np.empty(w, mem.dtype)
        sm = np.empty(w, mem.dtype)
        mc = block_state(mem[T - 1], lo, w)  # m[t]
        da = np.zeros(w, mem.dtype)
        db = np.zeros(w, mem.dtype)
        dt = np.zeros(w, mem.dtype)
        for t in range(T - 1, -1, -1):
            base = t * M + lo
            gss = gsf[base:base + w] if has_gs else gsf[lo:lo + w]
            gys = gyf[base:base + w] if has_gy else gyf[lo:lo + w]
            gms = gmf[base:base + w] if has_gm else gmf[lo:lo + w]
            gxs = gxf[base:base + w]
            ps = mf[base - M:base - M + w] if t > 0 else mem0[lo:lo + w]
            ys = yf[base - M:base - M + w] if t > 0 else syn0[lo:lo + w]
            for j in range(w):
                v[j] = mc[j] - th[j]
            surrogate_row(v, sm, w, sid, c1, c2, one)
            if params:
                for j in range(w):
                    gs = gss[j] * g
                    gsm = gs * sm[j]
                    A = gms[j] + cm[j]
                    Gm = gsm + A
                    p = ps[j]
                    r = one if p > th[j] else zero
                    Gb = Gm - (rz * r) * Gm
                    Gn = Gb + (gys[j] + cs[j])
                    dt[j] = (dt[j] - gsm) - Gm * (rs * r)
                    da[j] = da[j] + Gn * ys[j]
                    db[j] = db[j] + Gb * p
                    cs[j] = al[j] * Gn
                    cm[j] = bl[j] * Gb
                    gxs[j] = Gn
                    mc[j] = p
            else:  # no parameter gradients (snnTorch's fixed alpha/beta/threshold): without the partials
                for j in range(w):
                    gs = gss[j] * g
                    gsm = gs * sm[j]
                    A = gms[j] + cm[j]
                    Gm = gsm + A
                    p = ps[j]
                    r = one if p > th[j] else zero
                    Gb = Gm - (rz * r) * Gm
                    Gn = Gb + (gys[j] + cs[j])
                    cs[j] = al[j] * Gn
                    cm[j] = bl[j] * Gb
                    gxs[j] = Gn
                    mc[j] = p
        for j in range(w):
            gsyn0[lo + j] = cs[j]
            gmem0[lo + j] = cm[j]
            dalpha[lo + j] = da[j]
            dbeta[lo + j] = db[j]
            dthr[lo + j] = dt[j]


@jit
def synaptic_bwd_general(gspk, gsyn, gmem, has_gs, has_gy, has_gm, syn0, mem0, syn, mem, spk, alpha, beta, thr, sid,
                         c1, c2, reset, late, rgrad, g, one, params, BLOCK, b0, b1, gx, gsyn0, gmem0, dalpha, dbeta,
                         dthr):
    """Backward with the immediate reset and/or the gradient through the reset signal: the PyTorch path's
    general scan (``_synaptic_backward_torch``), per neuron. The pre-reset membrane of the immediate reset
    is recomputed from ``mem[t-1]`` and ``syn[t]``; ``spk`` is read only when ``late``."""
    T, M = mem.shape
    nblk = (M + BLOCK - 1) // BLOCK
    zero = one - one
    for blk in range(b0, min(b1, nblk)):
        lo, w = block_span(blk, BLOCK, M)
        cs = np.zeros(w, mem.dtype)
        cm = np.zeros(w, mem.dtype)
        al = per_neuron(alpha, lo, w)
        bl = per_neuron(beta, lo, w)
        th = per_neuron(thr, lo, w)
        vm = np.empty(w, mem.dtype)
        vu = np.empty(w, mem.dtype)
        mm = np.empty(w, mem.dtype)
        bb = np.empty(w, mem.dtype)
        sm = np.empty(w, mem.dtype)
        su = np.empty(w, mem.dtype)
        da = np.zeros(w, mem.dtype)
        db = np.zeros(w, mem.dtype)
        dt = np.zeros(w, mem.dtype)
        for t in range(T - 1, -1, -1):
            for j in range(w):
                i = lo + j
                u = mem[t - 1, i] if t > 0 else mem0[i]
                vu[j] = u - th[j]
                b = u * bl[j]
                b = b + syn[t, i]
                bb[j] = b
                if late:
                    R = one if vu[j] > zero else zero
                    m = b + R * (-th[j]) if reset == _SUB else b - R * b
                    mm[j] = m
                    vm[j] = m - th[j]
                else:
                    vm[j] = mem[t, i] - th[j]
            surrogate_row(vm, sm, w, sid, c1, c2, one)
            if rgrad:
                surrogate_row(vu, su, w, sid, c1, c2, one)
            for j in range(w):
                i = lo + j
                u = mem[t - 1, i] if t > 0 else mem0[i]
                y = syn[t - 1, i] if t > 0 else syn0[i]
                R = one if (reset != _NONE and vu[j] > zero) else zero
                A = gmem[t if has_gm else 0, i] + cm[j]
                C = gsyn[t if has_gy else 0, i] + cs[j]
                gs = gspk[t if has_gs else 0, i] * g
                GR = zero
                if not late:
                    p = gs * sm[j]
                    Gm = p + A
                    dt[j] = dt[j] - p
                elif reset == _SUB:  # m' = m - (s - R) theta
                    s = one if spk[t, i] != zero else zero
                    Gs = gs - A * th[j]
                    Gm = Gs * sm[j] + A
                    dt[j] = dt[j] - (s - R) * A
                    GR = A * th[j]
                    dt[j] = dt[j] - Gs * sm[j]
                else:  # zero: m' = m - (s - R) m
                    s = one if spk[t, i] != zero else zero
                    m = mm[j]
                    Gs = gs - A * m
                    Gm = Gs * sm[j] + A * ((R - s) + one)
                    GR = A * m
                    dt[j] = dt[j] - Gs * sm[j]
                Gb = Gm  # m = b - R theta  |  b - R b  |  b
                if reset == _SUB:
                    GR = GR + Gm * (-th[j])
                    dt[j] = dt[j] - Gm * R
                elif reset == _ZERO:
                    GR = GR - Gm * bb[j]
                    Gb = Gm * (one - R)
                Gn = Gb + C
                gx[t, i] = Gn
                da[j] = da[j] + Gn * y
                db[j] = db[j] + Gb * u
                cs[j] = al[j] * Gn
                c = bl[j] * Gb
                if rgrad:
                    c = c + GR * su[j]
                    dt[j] = dt[j] - GR * su[j]
                cm[j] = c
        for j in range(w):
            gsyn0[lo + j] = cs[j]
            gmem0[lo + j] = cm[j]
            dalpha[lo + j] = da[j]
            dbeta[lo + j] = db[j]
            dthr[lo + j] = dt[j]


# --------------------------------------------------------------------------------------------------
# Norse's feed-forward LIF (current-based) and LIF box neurons (kernels/norse_lif.py's PyTorch path):
# x [T, M] with M = R N, coefficient vectors [N]; the resets are not detached.
# --------------------------------------------------------------------------------------------------


@jit
def norse_ff_fwd(x, v0, i0, a, c, vl, vth, vr, one, BLOCK, b0, b1, spk, v_all, i_all):
    """Forward of Norse's LIF: ``j = i + x``, ``u = ((v_leak - v) + j) a + v``, ``i' = j c + j``,
    ``z = H(u - v_th)``, ``v' = z ? v_reset : u``, in the PyTorch path's operation order (bit for bit)."""
    T, M = x.shape
    nblk = (M + BLOCK - 1) // BLOCK
    zero = one - one
    xf = x.ravel()
    sf = spk.ravel()
    vf = v_all.ravel()
    if_ = i_all.ravel()
    for blk in range(b0, min(b1, nblk)):
        lo, w = block_span(blk, BLOCK, M)
        v = block_state(v0, lo, w)
        i = block_state(i0, lo, w)
        ab = per_neuron(a, lo, w)
        cb = per_neuron(c, lo, w)
        lb = per_neuron(vl, lo, w)
        tb = per_neuron(vth, lo, w)
        rb = per_neuron(vr, lo, w)
        for t in range(T):
            base = t * M + lo
            xs = xf[base:base + w]
            ss = sf[base:base + w]
            vs = vf[base:base + w]
            is_ = if_[base:base + w]
            for j in range(w):
                jj = i[j] + xs[j]
                vj = v[j]
                u = lb[j] - vj
                u = u + jj
                u = u * ab[j]
                u = u + vj
                ni = jj * cb[j]
                ni = ni + jj
                z = (u - tb[j]) > zero
                nv = rb[j] if z else u
                i[j] = ni
                v[j] = nv
                ss[j] = one if z else zero
                vs[j] = nv
                is_[j] = ni


@jit
def norse_ff_bwd(gz, gv, gi, has_gz, has_gv, has_gi, x, v0, i0, z, v_all, i_all, a, c, vl, vth, vr, sid, c1, c2,
                 one, params, BLOCK, b0, b1, gx, gv0, gi0, da, dc, dvl, dvth, dvr):
    """Reverse-time adjoint of Norse's LIF (kernels/norse_lif.py's recursion): ``Gv = gv + lv``,
    ``Gu = Gv ((1 - z) + (v_reset - u) sigma') + gz sigma'``, ``lv = (1 - a) Gu``, ``Gi = gi + li``,
    ``li = Gi (1 + c) + Gu a`` (the gradient on ``x[t]``). ``u`` and ``j`` are recomputed from the saved
    states. Per-element partials: ``da``, ``dc``, ``dvl`` (the sum of ``Gu``; the host multiplies by ``a``),
    ``dvth``, ``dvr``. Unused outputs' gradients (``has_* = False``) are one row of zeros."""
    T, M = x.shape
    nblk = (M + BLOCK - 1) // BLOCK
    zero = one - one
    gzf = gz.ravel()
    gvf = gv.ravel()
    gif = gi.ravel()
    xf = x.ravel()
    zf = z.ravel()
    vf = v_all.ravel()
    if_ = i_all.ravel()
    gxf = gx.ravel()
    for blk in range(b0, min(b1, nblk)):
        lo, w = block_span(blk, BLOCK, M)
        ab = per_neuron(a, lo, w)
        cb = per_neuron(c, lo, w)
        lb = per_neuron(vl, lo, w)
        tb = per_neuron(vth, lo, w)
        rb = per_neuron(vr, lo, w)
        lv = np.zeros(w, x.dtype)
        li = np.zeros(w, x.dtype)
        uu = np.empty(w, x.dtype)
        jb = np.empty(w, x.dtype)
        dr = np.empty(w, x.dtype)
        sv = np.empty(w, x.dtype)
        sp = np.empty(w, x.dtype)
        pa = np.zeros(w, x.dtype)
        pc = np.zeros(w, x.dtype)
        pl = np.zeros(w, x.dtype)
        pt = np.zeros(w, x.dtype)
        pr = np.zeros(w, x.dtype)
        for t in range(T - 1, -1, -1):
            base = t * M + lo
            xs = xf[base:base + w]
            vin = vf[base - M:base - M + w] if t > 0 else v0[lo:lo + w]
            iin = if_[base - M:base - M + w] if t > 0 else i0[lo:lo + w]
            for j in range(w):
                jj = iin[j] + xs[j]
                d = lb[j] - vin[j]
                d = d + jj
                u = d * ab[j]
                u = u + vin[j]
                jb[j] = jj
                dr[j] = d
                uu[j] = u
                sv[j] = u - tb[j]
            surrogate_row(sv, sp, w, sid, c1, c2, one)
            gzs = gzf[base:base + w] if has_gz else gzf[lo:lo + w]
            gvs = gvf[base:base + w] if has_gv else gvf[lo:lo + w]
            gis = gif[base:base + w] if has_gi else gif[lo:lo + w]
            zs = zf[base:base + w]
            gxs = gxf[base:base + w]
            for j in range(w):
                zj = one if zs[j] != zero else zero
                jump = rb[j] - uu[j]
                A = (one - zj) + jump * sp[j]
                Gv = gvs[j] + lv[j]
                Gu = Gv * A
                Gu = Gu + gzs[j] * sp[j]
                lv[j] = (one - ab[j]) * Gu
                Gi = gis[j] + li[j]
                nli = Gi * (one + cb[j])
                nli = nli + Gu * ab[j]
                li[j] = nli
                gxs[j] = nli
                if params:
                    Gz = gzs[j] + Gv * jump
                    pa[j] = pa[j] + Gu * dr[j]
                    pc[j] = pc[j] + Gi * jb[j]
                    pl[j] = pl[j] + Gu
                    pt[j] = pt[j] - Gz * sp[j]
                    pr[j] = pr[j] + Gv * zj
        for j in range(w):
            gv0[lo + j] = lv[j]
            gi0[lo + j] = li[j]
            da[lo + j] = pa[j]
            dc[lo + j] = pc[j]
            dvl[lo + j] = pl[j]
            dvth[lo + j] = pt[j]
            dvr[lo + j] = pr[j]


@jit
def norse_box_fwd(x, v0, a, vl, vth, vr, reset, one, BLOCK, b0, b1, spk, v_all):
    """Forward of Norse's LIF box: ``u = ((x + v_leak) - v) a + v``, ``s = u - v_th``, ``z = H(s)``,
    ``v' = z ? v_reset : u`` (``reset == 0``) or ``z ? s : u`` (subtract), bit for bit the PyTorch path."""
    T, M = x.shape
    nblk = (M + BLOCK - 1) // BLOCK
    zero = one - one
    xf = x.ravel()
    sf = spk.ravel()
    vf = v_all.ravel()
    for blk in range(b0, min(b1, nblk)):
        lo, w = block_span(blk, BLOCK, M)
        v = block_state(v0, lo, w)
        ab = per_neuron(a, lo, w)
        lb = per_neuron(vl, lo, w)
        tb = per_neuron(vth, lo, w)
        rb = per_neuron(vr, lo, w)
        for t in range(T):
            base = t * M + lo
            xs = xf[base:base + w]
            ss = sf[base:base + w]
            vs = vf[base:base + w]
            for j in range(w):
                u = box_membrane(xs[j], lb[j], v[j], ab[j])[1]
                sj = u - tb[j]
                z = sj > zero
                nv = (rb[j] if reset == 0 else sj) if z else u
                v[j] = nv
                ss[j] = one if z else zero
                vs[j] = nv


@jit_inline
def _box_bwd_row(xs, vin, gzs, gxs, lv, ab, na, lb, tb, rb, w, sid, c1, c2, one):
    """One row of the box adjoint for the value reset, no parameter gradients and no gradient on ``v``
    (Norse's defaults, a loss on the spikes): ``u`` recomputed, the surrogate, the adjoint, in one loop."""
    zero = one - one
    for j in range(w):
        u = box_membrane(xs[j], lb[j], vin[j], ab[j])[1]
        s = u - tb[j]
        sp = surrogate_one(s, sid, c1, c2, one)
        zj = one if s > zero else zero
        A = (one - zj) + (rb[j] - u) * sp
        Gv = zero + lv[j]
        Gu = Gv * A
        Gu = Gu + gzs[j] * sp
        lv[j] = na[j] * Gu
        gxs[j] = Gu * ab[j]


@jit
def norse_box_bwd(gz, gv, has_gz, has_gv, x, v0, z, v_all, a, vl, vth, vr, reset, sid, c1, c2, one, params, zsaved,
                  BLOCK, b0, b1, gx, gv0, da, dvl, dvth, dvr):
    """Reverse-time adjoint of the LIF box: ``Gv = gv + lv``, ``Gu = Gv A + gz sigma'`` with
    ``A = (1 - z) + (v_reset - u) sigma'`` (value reset) or ``1 - v_th sigma'`` (subtract),
    ``lv = (1 - a) Gu``, gradient on ``x[t]`` = ``Gu a``. Partials: ``da``, ``dvl`` (sum of ``Gu``; times
    ``a`` on the host), ``dvth`` (``-Gz sigma'``, and ``-Gv z`` for the subtract reset), ``dvr``.

    ``u`` is recomputed from ``x[t]`` and ``v[t-1]`` with the forward's operations, so ``H(u - v_th)`` is the
    forward's spike bit for bit: ``z`` is not read unless ``zsaved`` (the saved states were rounded to a
    narrower dtype than the kernels', so the recomputed ``u`` may differ from the forward's). Each row is two
    loops without branches inside (the variant is chosen per row, so LLVM vectorises them): the states and the
    surrogate, then the adjoint."""
    T, M = x.shape
    nblk = (M + BLOCK - 1) // BLOCK
    zero = one - one
    gzf = gz.ravel()
    gvf = gv.ravel()
    xf = x.ravel()
    zf = z.ravel()
    vf = v_all.ravel()
    gxf = gx.ravel()
    for blk in range(b0, min(b1, nblk)):
        lo, w = block_span(blk, BLOCK, M)
        ab = per_neuron(a, lo, w)
        lb = per_neuron(vl, lo, w)
        tb = per_neuron(vth, lo, w)
        rb = per_neuron(vr, lo, w)
        na = np.empty(w, x.dtype)  # 1 - a
        for j in range(w):
            na[j] = one - ab[j]
        lv = np.zeros(w, x.dtype)
        uu = np.empty(w, x.dtype)
        dr = np.empty(w, x.dtype)
        sv = np.empty(w, x.dtype)
        sp = np.empty(w, x.dtype)
        zz = np.empty(w, x.dtype)
        pa = np.zeros(w, x.dtype)
        pl = np.zeros(w, x.dtype)
        pt = np.zeros(w, x.dtype)
        pr = np.zeros(w, x.dtype)
        fused = reset == 0 and not params and not has_gv and not zsaved
        for t in range(T - 1, -1, -1):
            base = t * M + lo
            xs = xf[base:base + w]
            vin = vf[base - M:base - M + w] if t > 0 else v0[lo:lo + w]
            gzs = gzf[base:base + w] if has_gz else gzf[lo:lo + w]
            gxs = gxf[base:base + w]
            if fused:  # one loop per surrogate (a constant sid: its branches fold)
                if sid == 0:
                    _box_bwd_row(xs, vin, gzs, gxs, lv, ab, na, lb, tb, rb, w, 0, c1, c2, one)
                elif sid == 1:
                    _box_bwd_row(xs, vin, gzs, gxs, lv, ab, na, lb, tb, rb, w, 1, c1, c2, one)
                elif sid == 2:
                    _box_bwd_row(xs, vin, gzs, gxs, lv, ab, na, lb, tb, rb, w, 2, c1, c2, one)
                elif sid == 3:
                    _box_bwd_row(xs, vin, gzs, gxs, lv, ab, na, lb, tb, rb, w, 3, c1, c2, one)
                elif sid == 4:
                    _box_bwd_row(xs, vin, gzs, gxs, lv, ab, na, lb, tb, rb, w, 4, c1, c2, one)
                elif sid == 5:
                    _box_bwd_row(xs, vin, gzs, gxs, lv, ab, na, lb, tb, rb, w, 5, c1, c2, one)
                else:
                    _box_bwd_row(xs, vin, gzs, gxs, lv, ab, na, lb, tb, rb, w, -1, c1, c2, one)
                continue
            for j in range(w):
                d, u = box_membrane(xs[j], lb[j], vin[j], ab[j])
                s = u - tb[j]
                dr[j] = d
                uu[j] = u
                sv[j] = s
            surrogate_row(sv, sp, w, sid, c1, c2, one)
            if zsaved:
                zs = zf[base:base + w]
                for j in range(w):
                    zz[j] = one if zs[j] != zero else zero
            else:
                for j in range(w):
                    zz[j] = one if sv[j] > zero else zero
            gvs = gvf[base:base + w] if has_gv else gvf[lo:lo + w]
            for j in range(w):  # A, in sv (its last use was the surrogate)
                if reset == 0:
                    sv[j] = (one - zz[j]) + (rb[j] - uu[j]) * sp[j]
                else:
                    sv[j] = one - tb[j] * sp[j]
            if not params:
                for j in range(w):
                    Gv = gvs[j] + lv[j]
                    Gu = Gv * sv[j]
                    Gu = Gu + gzs[j] * sp[j]
                    lv[j] = na[j] * Gu
                    gxs[j] = Gu * ab[j]
                continue
            for j in range(w):
                zj = zz[j]
                jump = rb[j] - uu[j] if reset == 0 else -tb[j]
                Gv = gvs[j] + lv[j]
                Gu = Gv * sv[j]
                Gu = Gu + gzs[j] * sp[j]
                lv[j] = na[j] * Gu
                gxs[j] = Gu * ab[j]
                Gz = gzs[j] + Gv * jump
                pa[j] = pa[j] + Gu * dr[j]
                pl[j] = pl[j] + Gu
                pt[j] = pt[j] - Gz * sp[j]
                if reset == 0:
                    pr[j] = pr[j] + Gv * zj
                else:
                    pt[j] = pt[j] - Gv * zj
        for j in range(w):
            gv0[lo + j] = lv[j]
            da[lo + j] = pa[j]
            dvl[lo + j] = pl[j]
            dvth[lo + j] = pt[j]
            dvr[lo + j] = pr[j]
