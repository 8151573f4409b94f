"""surroflos.stats: Wilson intervals, Fisher's exact test, Mann-Whitney U, time to threshold."""

import math

import pytest

from surroflos import stats


@pytest.mark.parametrize("k, n, low, high", [
    (5, 10, 0.2366, 0.7634),   # by hand: centre 0.5, half-width 1.96/1.3841 * sqrt(0.025 + 0.0096)
    (0, 10, 0.0, 0.2775),      # upper bound z^2/n / (1 + z^2/n) = 0.38415 / 1.38415
    (7, 20, 0.1812, 0.5671),   # by hand: centre 0.37417, half-width 0.19298
    (10, 10, 0.7225, 1.0),
])
def test_wilson_interval_hand_computed(k, n, low, high):
    lo, hi = stats.wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_interval_properties():
    for n in (1, 3, 10, 37):
        for k in range(n + 1):
            lo, hi = stats.wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
            lo2, hi2 = stats.wilson_interval(n - k, n)
            assert lo == pytest.approx(1 - hi2, abs=1e-12) and hi == pytest.approx(1 - lo2, abs=1e-12)
    # wider at higher confidence, narrower with more trials at the same rate
    assert stats.wilson_interval(5, 10, 0.99)[0] < stats.wilson_interval(5, 10)[0]
    assert stats.wilson_interval(50, 100)[1] < stats.wilson_interval(5, 10)[1]
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        stats.wilson_interval(3, 2)


def test_fisher_exact_hand_computed():
    # 10/10 against 0/10: only this table and its mirror are as extreme, each 1 / C(20, 10)
    assert stats.fisher_exact(10, 10, 0, 10)["p_value"] == pytest.approx(2 / math.comb(20, 10), rel=1e-12)
    # Fisher's tea tasting, 3 of 4 right: two-sided p = (1 + 16 + 16 + 1) / 70
    res = stats.fisher_exact(3, 4, 1, 4)
    assert res["p_value"] == pytest.approx(34 / 70, rel=1e-12)
    assert res["table"] == [[3, 1], [1, 3]] and res["odds_ratio"] == pytest.approx(9.0)
    assert stats.fisher_exact(0, 8, 0, 8)["p_value"] == 1.0


def test_fisher_exact_agrees_with_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for na, nb in ((10, 10), (8, 12), (3, 7)):
        for a in range(na + 1):
            for b in range(nb + 1):
                ref = scipy_stats.fisher_exact([[a, na - a], [b, nb - b]], alternative="two-sided").pvalue
                got = stats.fisher_exact(a, na, b, nb)["p_value"]
                assert got == pytest.approx(ref, rel=1e-9, abs=1e-15), (a, na, b, nb)


def test_fisher_power():
    # 10 vs 10 with no successes in b: significant exactly when a >= 5 (p(5/10 vs 0/10) = 0.0325,
    # p(4/10 vs 0/10) = 0.0867), so the power is P(Bin(10, 0.3) >= 5)
    assert stats.fisher_exact(5, 10, 0, 10)["p_value"] < 0.05 < stats.fisher_exact(4, 10, 0, 10)["p_value"]
    want = sum(math.comb(10, k) * 0.3 ** k * 0.7 ** (10 - k) for k in range(5, 11))
    assert stats.fisher_power(0.3, 0.0, 10, 10) == pytest.approx(want, rel=1e-12)
    assert stats.fisher_power(0.5, 0.5, 10, 10) < 0.05  # the size of the (conservative) test
    assert stats.fisher_power(0.3, 0.0, 20, 20) > stats.fisher_power(0.3, 0.0, 10, 10)
    assert stats.fisher_power(1.0, 0.0, 3, 3) == 0.0  # 3/3 vs 0/3: p = 0.1, never significant


def test_mann_whitney():
    res = stats.mann_whitney([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    # complete separation of 3 and 3: U = 0, exact two-sided p = 2 / C(6, 3)
    assert res["U"] == 0.0 and res["p_value"] == pytest.approx(2 / 20)
    assert stats.mann_whitney([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])["U"] == 9.0
    assert stats.mann_whitney([0.5] * 4, [0.5] * 3)["p_value"] == 1.0
    none = stats.mann_whitney([None, float("nan")], [1.0])
    assert none["U"] is None and none["n"] == [0, 1]


def test_time_to_threshold_and_median():
    assert stats.time_to_threshold([1, 2, 3, 4], [0.5, 0.95, 0.7, 0.99], 0.9) == 2
    assert stats.time_to_threshold([1, 2, 3], [0.5, None, 0.8], 0.9) is None
    assert stats.time_to_threshold([2, 4, 6], [0.3, 0.1, 0.05], 0.1, higher_is_better=False) == 4
    with pytest.raises(ValueError):
        stats.time_to_threshold([1, 2], [0.1], 0.5)
    assert stats.median([3, 1, 2]) == 2 and stats.median([4, 1]) == 2.5 and stats.median([]) is None


def test_mean_interval_hand_computed():
    # 1..5: mean 3, s = sqrt(2.5), t_{0.975, 4} = 2.7764451; half-width 2.7764451 sqrt(2.5) / sqrt(5) = 1.9632
    lo, hi = stats.mean_interval([1, 2, 3, 4, 5])
    assert lo == pytest.approx(3 - 1.963243, abs=1e-5) and hi == pytest.approx(3 + 1.963243, abs=1e-5)
    lo90, hi90 = stats.mean_interval([1, 2, 3, 4, 5], confidence=0.9)
    assert lo < lo90 < 3 < hi90 < hi
    with pytest.raises(ValueError, match="at least 2"):
        stats.mean_interval([1.0])


def test_wilcoxon_paired():
    # all 5 differences positive: exact two-sided p = 2 / 2^5
    r = stats.wilcoxon_paired([2, 4, 6, 8, 10], [1, 2, 3, 4, 5])
    assert r["p_value"] == pytest.approx(2 / 32) and r["median_difference"] == 3 and r["n"] == 5
    assert stats.wilcoxon_paired([1, 2], [1, 2])["p_value"] == 1.0
    mixed = stats.wilcoxon_paired([1.0, 2.5, 3.0, 0.2, 5.0, 1.1], [1.5, 2.0, 1.0, 0.9, 2.0, 0.0])
    scipy_stats = pytest.importorskip("scipy.stats")
    d = [a - b for a, b in zip([1.0, 2.5, 3.0, 0.2, 5.0, 1.1], [1.5, 2.0, 1.0, 0.9, 2.0, 0.0])]
    assert mixed["p_value"] == pytest.approx(float(scipy_stats.wilcoxon(d).pvalue), rel=1e-12)
    with pytest.raises(ValueError, match="equal length"):
        stats.wilcoxon_paired([1, 2], [1])


def test_mantel_haenszel_one_table_is_the_scaled_pearson_test():
    scipy_stats = pytest.importorskip("scipy.stats")
    t = [[7, 3], [3, 7]]
    r = stats.mantel_haenszel([t], correction=False)
    pearson = scipy_stats.chi2_contingency(t, correction=False)
    n = 20
    # one stratum: the CMH statistic is Pearson's chi-square times (n - 1) / n (hypergeometric variance)
    assert r["statistic"] == pytest.approx(pearson.statistic * (n - 1) / n, rel=1e-12)
    assert r["p_value"] == pytest.approx(float(scipy_stats.chi2.sf(r["statistic"], 1)), rel=1e-12)
    assert r["odds_ratio"] == pytest.approx(7 * 7 / (3 * 3))
    assert (r["successes_a"], r["n_a"], r["successes_b"], r["n_b"]) == (7, 10, 3, 10)
    # one stratum: the Robins-Breslow-Greenland variance is Woolf's, 1/a + 1/b + 1/c + 1/d
    se = math.sqrt(1 / 7 + 1 / 3 + 1 / 3 + 1 / 7)
    assert r["odds_ratio_ci"] == pytest.approx([49 / 9 * math.exp(-1.959964 * se), 49 / 9 * math.exp(1.959964 * se)],
                                               rel=1e-6)


def test_mantel_haenszel_pools_strata():
    # Hand-computed: two tables of n = 20, E[a] = 5 and 7.5, Var(a) = 10*10*10*10/(400*19) and
    # 10*10*15*5/(400*19); observed a = 7 + 9.
    tables = [[[7, 3], [3, 7]], [[9, 1], [6, 4]]]
    r = stats.mantel_haenszel(tables)
    var = 10 * 10 * 10 * 10 / (400 * 19) + 10 * 10 * 15 * 5 / (400 * 19)
    assert r["statistic"] == pytest.approx((abs(16 - 12.5) - 0.5) ** 2 / var, rel=1e-12)
    assert r["odds_ratio"] == pytest.approx((7 * 7 / 20 + 9 * 4 / 20) / (3 * 3 / 20 + 1 * 6 / 20), rel=1e-12)
    assert r["strata"] == 2 and r["p_value"] < 0.05
    # order of strata is irrelevant; swapping the arms leaves the test and inverts the odds ratio
    assert stats.mantel_haenszel(tables[::-1])["p_value"] == pytest.approx(r["p_value"], rel=1e-12)
    swapped = stats.mantel_haenszel([[t[1], t[0]] for t in tables])
    assert swapped["p_value"] == pytest.approx(r["p_value"], rel=1e-12)
    assert swapped["odds_ratio"] == pytest.approx(1 / r["odds_ratio"], rel=1e-12)
    # a table with a zero margin adds nothing
    assert stats.mantel_haenszel(tables + [[[0, 5], [0, 5]]])["statistic"] == pytest.approx(r["statistic"])
    assert stats.mantel_haenszel([[[0, 5], [0, 5]]])["p_value"] == 1.0
    with pytest.raises(ValueError, match="at least one"):
        stats.mantel_haenszel([])
