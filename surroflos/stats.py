"""Small statistics for comparing ensembles of training runs (``surroflos train --compare``, studies).

- :func:`wilson_interval`: the Wilson score interval of a success rate ``k / n``.
- :func:`fisher_exact`: Fisher's exact test of two success counts (two-sided, 2 x 2 table), computed
  from the hypergeometric distribution with :func:`math.comb` (agrees with ``scipy.stats.fisher_exact``).
- :func:`fisher_power`: the exact power of that test for given true success rates and sizes.
- :func:`mann_whitney`: the Mann-Whitney U test of two samples (two-sided; scipy).
- :func:`mantel_haenszel`: the Cochran-Mantel-Haenszel test of several 2 x 2 tables (one per comparison)
  and the pooled odds ratio: is there a common effect across comparisons too small to show in any one?
- :func:`mean_interval`: the Student t interval of a mean (scipy's t quantile).
- :func:`wilcoxon_paired`: the Wilcoxon signed-rank test of paired values (two-sided; scipy).
- :func:`time_to_threshold`: the first epoch whose validation metric reaches a success threshold.

Everything takes and returns plain Python numbers, so results go to JSON as they are.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Optional, Sequence

__all__ = ["wilson_interval", "fisher_exact", "fisher_power", "mann_whitney", "time_to_threshold", "reaches", "median",
           "mean_interval", "wilcoxon_paired", "mantel_haenszel"]


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval ``(low, high)`` of the success probability after ``successes`` in ``n``.

    ``p = k/n``, ``z`` the two-sided normal quantile of ``confidence``:
    ``(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n)``. ``n = 0`` gives ``(0, 1)``.
    """
    if not (isinstance(successes, int) and isinstance(n, int)) or n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need integers 0 <= successes <= n, got successes={successes!r}, n={n!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At k = 0 (k = n) the bound is exactly 0 (1); center -+ half only rounds to it.
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def fisher_exact(successes_a: int, n_a: int, successes_b: int, n_b: int) -> dict:
    """Fisher's exact test of ``successes_a / n_a`` against ``successes_b / n_b`` (two-sided).

    The table ``[[a, n_a - a], [b, n_b - b]]`` with its margins fixed; the p-value sums the
    hypergeometric probabilities of every table at most as probable as the observed one (with a relative
    tolerance of 1e-7 for ties, as scipy does). Returns ``{"test", "table", "odds_ratio", "p_value"}``
    (the sample odds ratio ``a d / (b c)``, ``inf``/``nan`` where a cell is 0).
    """
    for k, n in ((successes_a, n_a), (successes_b, n_b)):
        if not (isinstance(k, int) and isinstance(n, int)) or n < 0 or not 0 <= k <= n:
            raise ValueError(f"need integers 0 <= successes <= n, got {k!r} of {n!r}")
    a, b, c, d = successes_a, n_a - successes_a, successes_b, n_b - successes_b
    col = a + c  # successes in all
    total = n_a + n_b
    lo, hi = max(0, col - n_b), min(col, n_a)

    def prob(x: int) -> float:
        return math.comb(n_a, x) * math.comb(n_b, col - x) / math.comb(total, col) if total else 1.0

    observed = prob(a)
    p = sum(q for q in (prob(x) for x in range(lo, hi + 1)) if q <= observed * (1 + 1e-7))
    if b * c:
        odds = a * d / (b * c)
    else:
        odds = float("nan") if a * d == 0 else float("inf")
    return {"test": "fisher_exact (two-sided)", "table": [[a, b], [c, d]], "odds_ratio": odds,
            "p_value": min(1.0, p)}


def fisher_power(p_a: float, p_b: float, n_a: int, n_b: int, alpha: float = 0.05) -> float:
    """The exact power of :func:`fisher_exact` at level ``alpha``: the probability, when the true success
    rates are ``p_a`` and ``p_b``, that ``n_a`` and ``n_b`` independent trials give ``p < alpha``
    (a sum over all ``(n_a + 1)(n_b + 1)`` outcomes, each with its binomial probability)."""
    for p in (p_a, p_b):
        if not 0 <= p <= 1:
            raise ValueError(f"success rates must lie in [0, 1], got {p!r}")

    def pmf(k: int, n: int, p: float) -> float:
        return math.comb(n, k) * p ** k * (1 - p) ** (n - k)

    return sum(pmf(a, n_a, p_a) * pmf(b, n_b, p_b) for a in range(n_a + 1) for b in range(n_b + 1)
               if fisher_exact(a, n_a, b, n_b)["p_value"] < alpha)


def mann_whitney(x: Sequence[float], y: Sequence[float]) -> dict:
    """The two-sided Mann-Whitney U test of samples ``x`` and ``y`` (``None`` and NaN values left out).

    Returns ``{"test", "U", "p_value", "n": [len x, len y]}``; ``U`` is ``x``'s statistic. With an empty
    sample, or when every value is the same, ``U`` and ``p_value`` are ``None`` / 1.0 as the data allow.
    """
    xs = [float(v) for v in x if v is not None and not math.isnan(v)]
    ys = [float(v) for v in y if v is not None and not math.isnan(v)]
    out = {"test": "mann_whitney_u (two-sided)", "U": None, "p_value": None, "n": [len(xs), len(ys)]}
    if not xs or not ys:
        return out
    if len(set(xs + ys)) == 1:  # all tied: no evidence of a difference (scipy returns NaN here)
        out.update(U=len(xs) * len(ys) / 2, p_value=1.0)
        return out
    from scipy.stats import mannwhitneyu

    res = mannwhitneyu(xs, ys, alternative="two-sided")
    out.update(U=float(res.statistic), p_value=float(res.pvalue))
    return out


def reaches(value: Optional[float], threshold: float, higher_is_better: bool) -> bool:
    """Whether a metric value counts as a success (``None``/NaN: no)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return value >= threshold if higher_is_better else value <= threshold


def time_to_threshold(epochs: Sequence[int], values: Sequence[Optional[float]], threshold: float,
                      higher_is_better: bool = True) -> Optional[int]:
    """The first of ``epochs`` whose validation metric (``values``, aligned) reaches ``threshold``;
    ``None`` if none does."""
    if len(epochs) != len(values):
        raise ValueError(f"epochs and values differ in length ({len(epochs)} != {len(values)})")
    for ep, v in zip(epochs, values):
        if reaches(v, threshold, higher_is_better):
            return int(ep)
    return None


def median(values: Sequence[float]) -> Optional[float]:
    """The median of ``values`` (``None`` for none)."""
    vals = sorted(values)
    if not vals:
        return None
    m = len(vals) // 2
    return float(vals[m]) if len(vals) % 2 else (vals[m - 1] + vals[m]) / 2


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """The Student t interval ``mean +- t_{(1+c)/2, n-1} s / sqrt(n)`` of the mean of ``values`` (n >= 2)."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n < 2:
        raise ValueError(f"a mean's interval needs at least 2 values, got {n}")
    from scipy.stats import t

    m = sum(vals) / n
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / (n - 1))
    h = float(t.ppf(0.5 + confidence / 2.0, n - 1)) * s / math.sqrt(n)
    return m - h, m + h


def wilcoxon_paired(x: Sequence[float], y: Sequence[float]) -> dict:
    """Wilcoxon's signed-rank test of the paired differences ``x - y`` (two-sided; exact for small n
    without ties, as scipy chooses). Returns ``{"test", "n", "median_difference", "p_value"}``."""
    if len(x) != len(y) or not x:
        raise ValueError(f"paired samples must be non-empty and of equal length, got {len(x)} and {len(y)}")
    d = [float(a) - float(b) for a, b in zip(x, y)]
    out = {"test": "Wilcoxon signed-rank (two-sided)", "n": len(d), "median_difference": median(d)}
    if all(v == 0 for v in d):  # no difference at all (scipy refuses zero differences only)
        return dict(out, p_value=1.0)
    from scipy.stats import wilcoxon

    return dict(out, p_value=float(wilcoxon(d).pvalue))


def mantel_haenszel(tables: Sequence[Sequence[Sequence[int]]], correction: bool = True,
                    confidence: float = 0.95) -> dict:
    """Cochran-Mantel-Haenszel test of K 2 x 2 tables ``[[a, b], [c, d]]`` (rows: arm A, arm B; columns:
    success, failure), stratified by table, against a common odds ratio of 1 (two-sided, chi-square with
    one degree of freedom; ``correction``: the 0.5 continuity correction).

    ``statistic = (|sum a - sum E[a]| - 0.5)^2 / sum Var(a)`` with the hypergeometric ``E[a] = (a+b)(a+c)/n``
    and ``Var(a) = (a+b)(c+d)(a+c)(b+d) / (n^2 (n-1))``; the pooled odds ratio is Mantel and Haenszel's
    ``sum(a d / n) / sum(b c / n)``, with the Robins-Breslow-Greenland ``confidence`` interval
    (``odds_ratio_ci``; NaN when the ratio is 0 or infinite). Tables with a zero margin add nothing.
    Returns ``{"test", "strata", "statistic", "p_value", "odds_ratio", "odds_ratio_ci", "successes_a", "n_a",
    "successes_b", "n_b"}`` (``odds_ratio`` is ``inf`` when no table has ``b c > 0``).
    """
    if not tables:
        raise ValueError("the Mantel-Haenszel test needs at least one 2 x 2 table")
    obs = exp = var = num = den = 0.0
    pr = ps_qr = qs = 0.0  # the Robins-Breslow-Greenland sums for the variance of log(odds ratio)
    totals = [0, 0, 0, 0]
    for t in tables:
        (a, b), (c, d) = t
        if min(a, b, c, d) < 0:
            raise ValueError(f"table counts must be non-negative, got {t}")
        n = a + b + c + d
        for i, v in enumerate((a, a + b, c, c + d)):
            totals[i] += v
        if n < 2:
            continue
        obs += a
        exp += (a + b) * (a + c) / n
        var += (a + b) * (c + d) * (a + c) * (b + d) / (n * n * (n - 1))
        num += a * d / n
        den += b * c / n
        p_, q_, r_, s_ = (a + d) / n, (b + c) / n, a * d / n, b * c / n
        pr, ps_qr, qs = pr + p_ * r_, ps_qr + p_ * s_ + q_ * r_, qs + q_ * s_
    if var == 0:
        stat, p = 0.0, 1.0
    else:
        dev = max(abs(obs - exp) - (0.5 if correction else 0.0), 0.0)
        stat = dev * dev / var
        p = math.erfc(math.sqrt(stat / 2.0))  # chi-square survival function, 1 degree of freedom
    ratio = num / den if den > 0 else (math.inf if num > 0 else float("nan"))
    ci = [float("nan"), float("nan")]
    if num > 0 and den > 0:
        se = math.sqrt(pr / (2 * num * num) + ps_qr / (2 * num * den) + qs / (2 * den * den))
        z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
        ci = [ratio * math.exp(-z * se), ratio * math.exp(z * se)]
    return {"test": "Cochran-Mantel-Haenszel (two-sided)" + (", continuity-corrected" if correction else ""),
            "strata": len(tables), "statistic": stat, "p_value": p, "odds_ratio": ratio, "odds_ratio_ci": ci,
            "successes_a": totals[0], "n_a": totals[1], "successes_b": totals[2], "n_b": totals[3]}
