"""Tests for study.stats: golden values, degenerate inputs and properties."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from study import stats as S

# Paired data: 8 prompts, k = 2 samples, helpfulness-like scores. Per-prompt differences of the
# means are [0.25, -0.25, 0.25, 0.0, -0.25, 0.25, 0.25, 0.25], mean 0.09375.
A = np.array(
    [[1.0, 0.5], [0.5, 0.5], [1.0, 1.0], [0.5, 0.5], [1.0, 0.5], [0.5, 1.0], [1.0, 1.0], [0.5, 1.0]]
)
B = np.array(
    [[0.5, 0.5], [0.5, 1.0], [1.0, 0.5], [0.5, 0.5], [1.0, 1.0], [0.5, 0.5], [1.0, 0.5], [0.5, 0.5]]
)
DIFFS = A.mean(axis=1) - B.mean(axis=1)

FAST = settings(max_examples=50, deadline=None, database=None)


def _assert_no_nan(result: S.TestResult) -> None:
    for name in ("effect", "ci_low", "ci_high", "ci_level"):
        assert math.isfinite(getattr(result, name)), name
    if result.p_value is not None:
        assert 0.0 <= result.p_value <= 1.0
    if result.mde is not None:
        assert math.isfinite(result.mde)
    assert (result.p_value is None) == (result.status != "ok")
    json.dumps(result.as_dict(), allow_nan=False)


# --------------------------------------------------------------------------------------------
# Golden values
# --------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_tost_golden():
    res = S.tost_paired(A, B, margin=0.2)
    # statsmodels.stats.weightstats.ttost_paired(A.mean(1), B.mean(1), -0.2, 0.2)[0]
    assert res.p_value == pytest.approx(0.11543092527616622, rel=1e-9)
    # statsmodels DescrStatsW(DIFFS).tconfint_mean(alpha=0.1)
    assert res.ci_low == pytest.approx(-0.059663140100887635, rel=1e-9)
    assert res.ci_high == pytest.approx(0.24716314010088763, rel=1e-9)
    assert res.effect == pytest.approx(0.09375)
    assert res.ci_level == pytest.approx(0.90)
    assert (res.status, res.n_prompts, res.n_samples) == ("ok", 8, 2)
    assert res.test == "TOST paired t (margin ±0.2)"
    _assert_no_nan(res)


@pytest.mark.unit
def test_paired_difference_golden():
    res = S.paired_difference(A, B)
    # scipy.stats.ttest_rel(A.mean(1), B.mean(1)).pvalue
    assert res.p_value == pytest.approx(0.284931380842322, rel=1e-9)
    # scipy.stats.bootstrap((DIFFS,), np.mean, n_resamples=2000, method="percentile",
    #     vectorized=True, rng=np.random.default_rng(0)).confidence_interval
    assert (res.ci_low, res.ci_high) == pytest.approx((-0.0625, 0.21875))
    assert res.effect == pytest.approx(0.09375)
    assert res.status == "ok"


@pytest.mark.unit
def test_noninferiority_golden():
    res = S.noninferiority(A, B, margin=0.1)
    # scipy.stats.ttest_1samp(DIFFS, -0.1, alternative="greater").pvalue
    assert res.p_value == pytest.approx(0.023988338060229635, rel=1e-9)
    assert (res.ci_low, res.ci_high) == pytest.approx((-0.0625, 0.21875))
    assert res.status == "ok"


@pytest.mark.unit
def test_mcnemar_golden():
    # Table [[both, x only], [y only, neither]] = [[10, 7], [1, 12]].
    x = np.array([1] * 10 + [1] * 7 + [0] * 1 + [0] * 12, dtype=bool)
    y = np.array([1] * 10 + [0] * 7 + [1] * 1 + [0] * 12, dtype=bool)
    res = S.mcnemar_test(x, y)
    # statsmodels.stats.contingency_tables.mcnemar([[10, 7], [1, 12]], exact=True).pvalue
    assert res.p_value == pytest.approx(0.0703125, rel=1e-12)
    assert res.effect == pytest.approx(0.2)
    # Wald: 0.2 ± 1.959964 * sqrt(8 - 36 / 30) / 30
    assert res.ci_low == pytest.approx(0.02963464103834551, rel=1e-6)
    assert res.ci_high == pytest.approx(0.3703653589616545, rel=1e-6)
    assert (res.status, res.n_prompts, res.n_samples) == ("ok", 30, 1)
    swapped = S.mcnemar_test(y, x)
    assert swapped.effect == pytest.approx(-res.effect)
    assert swapped.p_value == pytest.approx(res.p_value)


@pytest.mark.unit
def test_binomial_golden():
    res = S.binomial_test(14, 20, p0=0.5, alternative="greater")
    # scipy.stats.binomtest(14, 20, p=0.5, alternative="greater").pvalue
    assert res.p_value == pytest.approx(0.057659149169921875, rel=1e-12)
    # statsmodels.stats.proportion.proportion_confint(14, 20, method="wilson")
    assert res.ci_low == pytest.approx(0.48102718164647645, rel=1e-9)
    assert res.ci_high == pytest.approx(0.8545227551323957, rel=1e-9)
    assert res.effect == pytest.approx(0.7)
    assert res.mde is not None and res.mde > 0


@pytest.mark.unit
def test_bootstrap_ci_golden():
    values = np.array([0.2, -0.1, 0.4, 0.0, 0.3, 0.1, -0.2, 0.5])
    # scipy.stats.bootstrap((values,), np.mean, n_resamples=2000, method="percentile",
    #     vectorized=True, rng=np.random.default_rng(0)).confidence_interval
    low, high = S.bootstrap_ci(values, seed=0)
    assert low == pytest.approx(-0.012500000000000004, rel=1e-9)
    assert high == pytest.approx(0.3003125000000012, rel=1e-9)
    assert S.bootstrap_ci(values, seed=0) == (low, high)


@pytest.mark.unit
def test_holm_golden():
    # statsmodels.stats.multitest.multipletests([0.01, 0.04, 0.03, 0.005], method="holm")[1]
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, max(0.04*1, 0.06) = 0.06.
    assert S.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


@pytest.mark.unit
def test_holm_none_passthrough():
    out = S.holm([None, 0.01, None, 0.04, 0.03, 0.005])
    assert out[0] is None and out[2] is None
    assert out[1:2] + out[3:] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert S.holm([]) == []
    assert S.holm([None]) == [None]


@pytest.mark.unit
def test_wilson_golden():
    # statsmodels.stats.proportion.proportion_confint(3, 5, method="wilson")
    low, high = S.proportion_ci(3, 5)
    assert low == pytest.approx(0.2307242812760128, rel=1e-9)
    assert high == pytest.approx(0.882379225767352, rel=1e-9)


@pytest.mark.unit
def test_mde_golden():
    # TTestPower().solve_power(effect_size=None, nobs=30, alpha=0.05, power=0.8,
    #     alternative="two-sided") * 0.2
    assert S.minimum_detectable_effect(0.2, 30) == pytest.approx(0.10584714090477897, rel=1e-6)
    one_sided = S.minimum_detectable_effect(0.2, 30, alternative="one-sided")
    assert one_sided is not None and one_sided < 0.10584714090477897
    assert S.minimum_detectable_effect(0.2, 1) is None
    assert S.minimum_detectable_effect(0.0, 30) is None
    assert S.minimum_detectable_effect(float("nan"), 30) is None


@pytest.mark.unit
def test_mean_ci_and_prompt_means():
    scores = np.array([[1.0, np.nan], [0.0, 1.0], [np.nan, np.nan], [0.5, 0.5]])
    np.testing.assert_allclose(S.prompt_means(scores), [1.0, 0.5, 0.5])
    mean, low, high, n, k = S.mean_ci(scores)
    assert mean == pytest.approx(2.0 / 3.0)
    assert low <= mean <= high
    assert (n, k) == (3, 2)


@pytest.mark.unit
def test_aligned_prompt_means_drops_partner_rows():
    a = np.array([[1.0, 0.0], [np.nan, np.nan], [1.0, 1.0]])
    b = np.array([[0.0, 0.0], [1.0, 1.0], [np.nan, np.nan]])
    ma, mb, dropped = S.aligned_prompt_means(a, b)
    np.testing.assert_allclose(ma, [0.5])
    np.testing.assert_allclose(mb, [0.0])
    assert dropped == 2


# --------------------------------------------------------------------------------------------
# Degenerate and invalid inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.unit
def test_identical_arms():
    res = S.paired_difference(A, A)
    assert res.status == "degenerate"
    assert res.p_value is None
    assert "arms identical on every prompt" in res.detail
    assert (res.effect, res.ci_low, res.ci_high) == (0.0, 0.0, 0.0)
    _assert_no_nan(res)
    tost = S.tost_paired(A, A, margin=0.05)
    assert tost.status == "degenerate" and "inside" in tost.detail
    _assert_no_nan(tost)
    ni = S.noninferiority(A, A, margin=0.05)
    assert ni.status == "degenerate" and ni.p_value is None
    _assert_no_nan(ni)


@pytest.mark.unit
def test_constant_nonzero_difference():
    a = np.ones((5, 3))
    b = np.full((5, 3), 0.5)
    res = S.paired_difference(a, b)
    assert res.status == "degenerate" and res.p_value is None
    assert (res.effect, res.ci_low, res.ci_high) == (0.5, 0.5, 0.5)
    tost = S.tost_paired(a, b, margin=0.1)
    assert tost.status == "degenerate"
    assert (tost.effect, tost.ci_low, tost.ci_high) == (0.5, 0.5, 0.5)
    assert "not inside" in tost.detail
    ni = S.noninferiority(b, a, margin=0.1)
    assert ni.effect == -0.5 and "not above" in ni.detail
    for r in (res, tost, ni):
        _assert_no_nan(r)


@pytest.mark.unit
def test_all_equal_scores_mean_ci():
    assert S.mean_ci(np.full((4, 3), 0.5)) == (0.5, 0.5, 0.5, 4, 3)
    assert S.bootstrap_ci([0.3, 0.3, 0.3]) == (0.3, 0.3)
    assert S.bootstrap_ci([0.7]) == (0.7, 0.7)


@pytest.mark.unit
@pytest.mark.parametrize("empty", [np.zeros((0, 3)), [], np.full((3, 2), np.nan)])
def test_empty_inputs(empty):
    for res in (
        S.paired_difference(empty, empty),
        S.tost_paired(empty, empty, margin=0.1),
        S.noninferiority(empty, empty, margin=0.1),
    ):
        assert res.status == "empty"
        assert res.p_value is None and res.mde is None
        assert (res.effect, res.ci_low, res.ci_high) == (0.0, 0.0, 0.0)
        assert res.n_prompts == 0
        _assert_no_nan(res)
    assert S.mean_ci(empty)[:4] == (0.0, 0.0, 0.0, 0)
    assert S.prompt_means(empty).shape == (0,)


@pytest.mark.unit
def test_empty_counts():
    res = S.binomial_test(0, 0)
    assert res.status == "empty" and res.p_value is None
    _assert_no_nan(res)
    res = S.mcnemar_test([], [])
    assert res.status == "empty"
    _assert_no_nan(res)


@pytest.mark.unit
def test_mcnemar_no_discordant_pairs():
    x = np.array([True, False, True, True])
    res = S.mcnemar_test(x, x.copy())
    assert res.status == "degenerate" and res.p_value is None
    assert res.effect == 0.0
    _assert_no_nan(res)


@pytest.mark.unit
def test_single_prompt_is_degenerate():
    res = S.paired_difference([[1.0, 0.0]], [[0.0, 0.0]])
    assert res.status == "degenerate" and "one prompt" in res.detail
    assert res.mde is None
    _assert_no_nan(res)


@pytest.mark.unit
def test_all_nan_row_dropped_from_partner():
    a = np.vstack([A, [np.nan, np.nan]])
    b = np.vstack([B, [1.0, 1.0]])
    res = S.paired_difference(a, b)
    assert res.n_prompts == 8
    assert res.p_value == pytest.approx(S.paired_difference(A, B).p_value)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: S.paired_difference(np.ones((3, 2)), np.ones((3, 3))), "same shape"),
        (lambda: S.paired_difference(np.ones(3), np.ones(3)), "2-D"),
        (lambda: S.paired_difference(A, B, alternative="bigger"), "alternative"),
        (lambda: S.paired_difference(A, B, alpha=1.5), "alpha"),
        (lambda: S.tost_paired(A, B, margin=0.0), "margin"),
        (lambda: S.tost_paired(A, B, margin=0.1, alpha=0.6), "alpha"),
        (lambda: S.noninferiority(A, B, margin=-0.1), "margin"),
        (lambda: S.prompt_means(np.array([[1.0, np.inf]])), "infinite"),
        (lambda: S.binomial_test(6, 5), "must not exceed"),
        (lambda: S.binomial_test(2.5, 5), "successes"),
        (lambda: S.binomial_test(2, 5, p0=1.0), "p0"),
        (lambda: S.proportion_ci(0, 0), "n must be at least 1"),
        (lambda: S.mcnemar_test([1, 0, 2], [1, 0, 1]), "0/1"),
        (lambda: S.mcnemar_test([1, 0], [1, 0, 1]), "same length"),
        (lambda: S.holm([0.1, float("nan")]), r"p_values\[1\]"),
        (lambda: S.holm([1.2]), r"p_values\[0\]"),
        (lambda: S.bootstrap_ci([]), "at least one"),
        (lambda: S.minimum_detectable_effect(-1.0, 10), "sd"),
    ],
)
def test_invalid_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.unit
def test_as_dict_replaces_non_finite():
    res = S.TestResult(
        float("nan"), 0.0, 1.0, 0.95, None, 0, 1, "t", "empty", "x", float("inf")
    ).as_dict()
    assert res["effect"] is None and res["mde"] is None
    json.dumps(res, allow_nan=False)


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------

_SCORE = st.sampled_from([0.0, 0.5, 1.0, -1.0, 0.25, np.nan])


@st.composite
def paired_arms(draw):
    n = draw(st.integers(min_value=0, max_value=12))
    k = draw(st.integers(min_value=1, max_value=4))
    a = draw(hnp.arrays(float, (n, k), elements=_SCORE))
    b = draw(hnp.arrays(float, (n, k), elements=_SCORE))
    return a, b


@pytest.mark.unit
@FAST
@given(paired_arms())
def test_prop_paired_difference(arms):
    a, b = arms
    res = S.paired_difference(a, b, n_resamples=200)
    _assert_no_nan(res)
    assert res.ci_low <= res.effect <= res.ci_high
    swapped = S.paired_difference(b, a, n_resamples=200)
    assert swapped.effect == pytest.approx(-res.effect, abs=1e-12)
    assert swapped.ci_low == pytest.approx(-res.ci_high, abs=1e-9)
    assert swapped.ci_high == pytest.approx(-res.ci_low, abs=1e-9)
    assert swapped.status == res.status
    if res.p_value is not None:
        assert swapped.p_value == pytest.approx(res.p_value, abs=1e-9)


@pytest.mark.unit
@FAST
@given(paired_arms(), st.sampled_from([0.05, 0.1, 0.3]))
def test_prop_tost_and_noninferiority(arms, margin):
    a, b = arms
    for res in (
        S.tost_paired(a, b, margin=margin),
        S.noninferiority(a, b, margin=margin, n_resamples=200),
        S.paired_difference(a, b, alternative="greater", n_resamples=200),
        S.paired_difference(a, b, alternative="less", n_resamples=200),
    ):
        _assert_no_nan(res)
        assert res.ci_low <= res.effect <= res.ci_high
    tost_swapped = S.tost_paired(b, a, margin=margin)
    assert tost_swapped.effect == pytest.approx(-S.tost_paired(a, b, margin=margin).effect)


@pytest.mark.unit
@FAST
@given(hnp.arrays(float, hnp.array_shapes(min_dims=2, max_dims=2, max_side=10), elements=_SCORE))
def test_prop_mean_ci_contains_mean(scores):
    mean, low, high, n, k = S.mean_ci(scores, n_resamples=200)
    assert all(math.isfinite(v) for v in (mean, low, high))
    assert low <= mean <= high
    assert k == scores.shape[1] and n <= scores.shape[0]


@pytest.mark.unit
@FAST
@given(
    st.integers(min_value=0, max_value=200).flatmap(
        lambda n: st.tuples(st.integers(min_value=0, max_value=n), st.just(n))
    ),
    st.sampled_from([0.1, 0.5, 0.9]),
    st.sampled_from(["two-sided", "greater", "less"]),
)
def test_prop_binomial(counts, p0, alternative):
    successes, n = counts
    res = S.binomial_test(successes, n, p0=p0, alternative=alternative)
    _assert_no_nan(res)
    assert 0.0 <= res.ci_low <= res.effect <= res.ci_high <= 1.0


@pytest.mark.unit
@FAST
@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=40))
def test_prop_mcnemar(pairs):
    x = np.array([p[0] for p in pairs], dtype=bool)
    y = np.array([p[1] for p in pairs], dtype=bool)
    res = S.mcnemar_test(x, y)
    _assert_no_nan(res)
    assert -1.0 <= res.ci_low <= res.effect <= res.ci_high <= 1.0
    assert S.mcnemar_test(y, x).effect == pytest.approx(-res.effect)


@pytest.mark.unit
@FAST
@given(
    st.lists(
        st.one_of(st.none(), st.floats(min_value=0.0, max_value=1.0, allow_nan=False)),
        max_size=12,
    )
)
def test_prop_holm(p_values):
    out = S.holm(p_values)
    assert len(out) == len(p_values)
    for raw, adj in zip(p_values, out, strict=True):
        if raw is None:
            assert adj is None
        else:
            assert adj is not None and not math.isnan(adj)
            assert raw <= adj <= 1.0
