"""Prompt-clustered statistics for comparing model arms.

Every arm answers the same prompts, each prompt ``k`` times. Replies to one prompt are not
independent, so the unit of analysis throughout is the prompt: score arrays are shaped
``(n_prompts, k)``, each prompt is first reduced to the mean of its ``k`` scores (NaN scores
ignored), and tests and confidence intervals are computed on those per-prompt means or on the
per-prompt paired differences between two arms (row ``i`` of both arms is the same prompt).

Conventions shared by every :class:`TestResult`:

* No field is ever NaN. When a test is undefined the ``status`` says why ("degenerate" for zero
  variance or a single prompt, "empty" when no prompt has data) and ``p_value`` is ``None``.
* For an empty comparison the effect is reported as ``0.0`` with a ``(0.0, 0.0)`` interval; the
  ``status`` "empty" (and ``n_prompts == 0``) is what marks it, not the numbers.
* p-values are clipped to ``[0, 1]``.
* Intervals are widened, if needed, to contain the point estimate. This only matters for
  floating point rounding and rare percentile-bootstrap edge cases.
* ``mde`` is the minimum detectable effect at the observed number of prompts (power 0.8), from
  a one-sample t power calculation on the SD of the per-prompt differences.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.proportion import proportion_confint
from statsmodels.stats.weightstats import DescrStatsW, ttost_paired

logger = logging.getLogger(__name__)

__all__ = [
    "TestResult",
    "aligned_prompt_means",
    "binomial_test",
    "bootstrap_ci",
    "holm",
    "mcnemar_test",
    "mean_ci",
    "minimum_detectable_effect",
    "noninferiority",
    "paired_difference",
    "prompt_means",
    "proportion_ci",
    "tost_paired",
]

_ALTERNATIVES = ("two-sided", "greater", "less")
# Relative tolerance under which per-prompt differences count as all equal. Per-prompt means
# computed from the same scores in a different order can differ in the last bits; treating such
# data as having variance would produce meaningless, huge t statistics.
_EQUAL_RTOL = 1e-12


@dataclass(frozen=True)
class TestResult:
    """Outcome of one statistical comparison.

    Attributes:
        effect: Point estimate, e.g. the mean paired per-prompt difference ``a - b`` or a rate.
        ci_low: Lower confidence bound.
        ci_high: Upper confidence bound.
        ci_level: Confidence level of the interval, e.g. 0.95 (0.90 for TOST at alpha 0.05).
        p_value: p-value in ``[0, 1]``; ``None`` exactly when ``status != "ok"``.
        n_prompts: Number of prompts (or trials / pairs) that entered the analysis.
        n_samples: Samples per prompt (``k``); 1 for per-prompt binary data.
        test: Human-readable name of the procedure.
        status: "ok", "degenerate" (zero variance, identical arms, single prompt) or "empty".
        detail: Short explanation when ``status != "ok"``, otherwise "".
        mde: Minimum detectable effect at this ``n`` (power 0.8), ``None`` if undefined.
    """

    __test__ = False  # not a pytest test class despite the name

    effect: float
    ci_low: float
    ci_high: float
    ci_level: float
    p_value: float | None
    n_prompts: int
    n_samples: int
    test: str
    status: str
    detail: str
    mde: float | None

    def as_dict(self) -> dict[str, Any]:
        """Returns the fields as a JSON-safe dict (non-finite floats become ``None``)."""
        out: dict[str, Any] = {}
        for key, value in dataclasses.asdict(self).items():
            if isinstance(value, (float, np.floating)):
                value = float(value) if math.isfinite(value) else None
            elif isinstance(value, np.integer):
                value = int(value)
            out[key] = value
        return out


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------


def _as_scores(scores: Any, name: str) -> np.ndarray:
    """Converts ``scores`` to a float array shaped (n_prompts, k)."""
    try:
        arr = np.asarray(scores, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name} must be a numeric array shaped (n_prompts, k); got {type(scores).__name__}"
        ) from exc
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 0)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D shaped (n_prompts, k) with one row per prompt; got shape "
            f"{arr.shape}. Reshape single-sample data with .reshape(-1, 1)."
        )
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains infinite scores; use finite values or NaN for missing")
    return arr


def _as_vector(values: Any, name: str) -> np.ndarray:
    """Converts ``values`` to a finite 1-D float array."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a 1-D numeric array") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}. Flatten it first.")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must contain only finite values; drop NaN/inf entries first")
    return arr


def _check_level(level: float, name: str = "level") -> float:
    if not (isinstance(level, (int, float)) and 0.0 < float(level) < 1.0):
        raise ValueError(
            f"{name} must be a number strictly between 0 and 1, e.g. 0.95; got {level}"
        )
    return float(level)


def _check_alpha(alpha: float, upper: float = 1.0) -> float:
    if not (isinstance(alpha, (int, float)) and 0.0 < float(alpha) < upper):
        raise ValueError(f"alpha must be a number in (0, {upper:g}), e.g. 0.05; got {alpha}")
    return float(alpha)


def _check_alternative(alternative: str) -> str:
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES}; got {alternative!r}")
    return alternative


def _check_margin(margin: float, *, allow_zero: bool) -> float:
    ok = isinstance(margin, (int, float)) and math.isfinite(margin)
    ok = ok and (margin >= 0 if allow_zero else margin > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"margin must be a finite number {bound} (in score units); got {margin}")
    return float(margin)


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a non-negative integer count; got a boolean")
    try:
        as_float = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a non-negative integer count; got {value!r}") from exc
    if not math.isfinite(as_float) or as_float < 0 or as_float != int(as_float):
        raise ValueError(f"{name} must be a non-negative integer count; got {value!r}")
    return int(as_float)


def _all_equal(values: np.ndarray) -> bool:
    """True when all values coincide up to floating point noise."""
    scale = max(1.0, float(np.max(np.abs(values))))
    return float(np.ptp(values)) <= _EQUAL_RTOL * scale


def _clip_p(p: float) -> float:
    return float(min(1.0, max(0.0, p)))


def _enclose(effect: float, low: float, high: float) -> tuple[float, float]:
    """Widens (low, high) to contain ``effect``."""
    return float(min(low, effect)), float(max(high, effect))


def _diff_sd(diffs: np.ndarray) -> float:
    return float(np.std(diffs, ddof=1)) if diffs.size >= 2 else float("nan")


# --------------------------------------------------------------------------------------------
# Per-prompt reduction and intervals
# --------------------------------------------------------------------------------------------


def prompt_means(scores: Any) -> np.ndarray:
    """Reduces each prompt to the mean of its samples.

    Args:
        scores: Array shaped (n_prompts, k). NaN marks a missing score and is ignored within
            its row.

    Returns:
        1-D array of per-prompt means. Rows whose scores are all NaN are dropped, so the
        result can be shorter than ``n_prompts``.

    Raises:
        ValueError: If ``scores`` is not 2-D numeric or contains infinite values.
    """
    arr = _as_scores(scores, "scores")
    keep = ~np.isnan(arr).all(axis=1)
    if arr.shape[0] and not keep.all():
        logger.debug("prompt_means: dropped %d all-NaN prompt rows", int((~keep).sum()))
    kept = arr[keep]
    if kept.shape[0] == 0:
        return np.zeros(0, dtype=float)
    return np.nanmean(kept, axis=1)


def aligned_prompt_means(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-prompt means of two arms with rows kept aligned.

    A prompt is dropped from both arms when either arm has no non-NaN score for it.

    Args:
        a: Scores of arm A, shaped (n_prompts, k).
        b: Scores of arm B, same shape as ``a``; row ``i`` is the same prompt in both.

    Returns:
        ``(means_a, means_b, n_dropped)`` where the two vectors have equal length.

    Raises:
        ValueError: If the arrays are not 2-D numeric or their shapes differ.
    """
    means_a, means_b, n_dropped, _ = _aligned(a, b)
    return means_a, means_b, n_dropped


def _aligned(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Implements :func:`aligned_prompt_means`, additionally returning ``k``."""
    arr_a = _as_scores(a, "a")
    arr_b = _as_scores(b, "b")
    if arr_a.shape != arr_b.shape:
        raise ValueError(
            f"a and b must have the same shape (rows aligned by prompt); got {arr_a.shape} and "
            f"{arr_b.shape}"
        )
    k = int(arr_a.shape[1])
    keep = ~(np.isnan(arr_a).all(axis=1) | np.isnan(arr_b).all(axis=1))
    n_dropped = int((~keep).sum())
    if n_dropped:
        logger.debug("aligned_prompt_means: dropped %d prompts without scores", n_dropped)
    if not keep.any():
        empty = np.zeros(0, dtype=float)
        return empty, empty.copy(), n_dropped, k
    return np.nanmean(arr_a[keep], axis=1), np.nanmean(arr_b[keep], axis=1), n_dropped, k


def bootstrap_ci(
    diffs: Any, *, level: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of a mean.

    Uses ``scipy.stats.bootstrap`` with the percentile method (robust to near-degenerate data,
    unlike BCa). When the values are per-prompt quantities this is a prompt-level (cluster)
    bootstrap. Constant input (including a single value) has no sampling variability and gives
    ``(x, x)``. The interval is widened if needed so that it contains the sample mean.

    Args:
        diffs: 1-D finite values, e.g. per-prompt paired differences.
        level: Two-sided confidence level.
        n_resamples: Number of bootstrap resamples.
        seed: Seed of the resampling generator (same seed, same resampled indices).

    Returns:
        ``(low, high)``.

    Raises:
        ValueError: If ``diffs`` is empty, not 1-D, or not finite, or arguments are invalid.
    """
    values = _as_vector(diffs, "diffs")
    level = _check_level(level)
    if values.size == 0:
        raise ValueError("diffs must contain at least one value to form a confidence interval")
    if not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer; got {n_resamples!r}")
    center = float(np.mean(values))
    if _all_equal(values):
        return center, center
    res = sps.bootstrap(
        (values,),
        np.mean,
        n_resamples=int(n_resamples),
        confidence_level=level,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    low = float(res.confidence_interval.low)
    high = float(res.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        return center, center
    return _enclose(center, low, high)


def proportion_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion.

    Args:
        successes: Number of successes, ``0 <= successes <= n``.
        n: Number of trials, at least 1.
        level: Two-sided confidence level.

    Returns:
        ``(low, high)`` within ``[0, 1]`` and containing ``successes / n``.

    Raises:
        ValueError: If the counts are invalid or ``n == 0``.
    """
    successes = _check_count(successes, "successes")
    n = _check_count(n, "n")
    level = _check_level(level)
    if n == 0:
        raise ValueError("n must be at least 1 to form a proportion interval")
    if successes > n:
        raise ValueError(f"successes ({successes}) must not exceed n ({n})")
    low, high = proportion_confint(successes, n, alpha=1.0 - level, method="wilson")
    low, high = _enclose(successes / n, float(low), float(high))
    return max(0.0, low), min(1.0, high)


def mean_ci(
    scores: Any, level: float = 0.95, seed: int = 0, *, n_resamples: int = 2000
) -> tuple[float, float, float, int, int]:
    """Overall mean of one arm with a prompt-clustered bootstrap interval.

    The mean is taken over per-prompt means, so every prompt weighs the same regardless of how
    many of its samples are missing. The interval resamples prompts, not individual replies.

    Args:
        scores: Array shaped (n_prompts, k); NaN scores are ignored, all-NaN rows dropped.
        level: Two-sided confidence level.
        seed: Bootstrap seed.
        n_resamples: Number of bootstrap resamples.

    Returns:
        ``(mean, low, high, n_prompts, k)``. With no usable prompt the result is
        ``(0.0, 0.0, 0.0, 0, k)``: check ``n_prompts`` before reading the numbers.

    Raises:
        ValueError: If ``scores`` is not a valid (n_prompts, k) array or ``level`` is invalid.
    """
    arr = _as_scores(scores, "scores")
    level = _check_level(level)
    means = prompt_means(arr)
    k = int(arr.shape[1])
    if means.size == 0:
        return 0.0, 0.0, 0.0, 0, k
    center = float(np.mean(means))
    low, high = bootstrap_ci(means, level=level, n_resamples=n_resamples, seed=seed)
    low, high = _enclose(center, low, high)
    return center, low, high, int(means.size), k


# --------------------------------------------------------------------------------------------
# Power and multiplicity
# --------------------------------------------------------------------------------------------


def minimum_detectable_effect(
    sd: float,
    n: int,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    alternative: str = "two-sided",
) -> float | None:
    """Minimum detectable mean difference for a paired (one-sample) t design.

    Solves ``statsmodels.stats.power.TTestPower`` for the standardized effect size reaching
    ``power`` at ``n`` observations and scales it by ``sd``. For TOST callers pass the alpha of
    each one-sided test with ``alternative="one-sided"``: the result is then the distance
    between the true difference and the nearer margin that one one-sided test detects with the
    given power. This is an approximation, since TOST needs both one-sided tests to reject and
    its power is lower when the margins are narrow relative to the standard error.

    Args:
        sd: Standard deviation of the per-prompt differences (or per-trial SD).
        n: Number of prompts.
        alpha: Significance level.
        power: Target power.
        alternative: "two-sided" or "one-sided".

    Returns:
        The effect in the units of ``sd``, or ``None`` when ``n < 2``, ``sd`` is zero or not
        finite, or the power equation has no solution.

    Raises:
        ValueError: If ``sd`` is negative or the other arguments are out of range.
    """
    if alternative not in ("two-sided", "one-sided"):
        raise ValueError(f"alternative must be 'two-sided' or 'one-sided'; got {alternative!r}")
    alpha = _check_alpha(alpha)
    power = _check_level(power, "power")
    try:
        sd = float(sd)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sd must be a non-negative number; got {sd!r}") from exc
    if sd < 0:
        raise ValueError(f"sd must be non-negative; got {sd}")
    if n is None or n < 2 or not math.isfinite(sd) or sd == 0.0:
        return None
    sm_alternative = "two-sided" if alternative == "two-sided" else "larger"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            es = TTestPower().solve_power(
                effect_size=None,
                nobs=int(n),
                alpha=alpha,
                power=power,
                alternative=sm_alternative,
            )
        except (ValueError, RuntimeError, ArithmeticError):
            return None
    es = float(np.asarray(es).squeeze())
    if not math.isfinite(es) or es <= 0:
        return None
    return es * sd


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjustment of one family of p-values.

    ``None`` entries (tests that were not run or were degenerate) pass through untouched and
    do not count towards the family size.

    Args:
        p_values: p-values in ``[0, 1]`` or ``None``.

    Returns:
        Adjusted p-values in the input order, each in ``[p, 1]``.

    Raises:
        ValueError: If a non-None entry is NaN or outside ``[0, 1]``.
    """
    values = list(p_values)
    idx = [i for i, p in enumerate(values) if p is not None]
    for i in idx:
        p = values[i]
        if not isinstance(p, (int, float, np.floating, np.integer)) or not (0.0 <= p <= 1.0):
            raise ValueError(f"p_values[{i}] must be a number in [0, 1] or None; got {p!r}")
    out: list[float | None] = [None] * len(values)
    if not idx:
        return out
    raw = np.array([float(values[i]) for i in idx])
    adjusted = multipletests(raw, method="holm")[1]
    for i, p_raw, p_adj in zip(idx, raw, adjusted, strict=True):
        out[i] = min(1.0, max(float(p_raw), float(p_adj)))
    return out


# --------------------------------------------------------------------------------------------
# Paired comparisons of two arms
# --------------------------------------------------------------------------------------------


def _empty(test: str, ci_level: float, n_samples: int, n_dropped: int) -> TestResult:
    detail = "no prompt has scores in both arms"
    if n_dropped:
        detail += f" ({n_dropped} all-NaN prompt rows dropped)"
    return TestResult(
        effect=0.0,
        ci_low=0.0,
        ci_high=0.0,
        ci_level=ci_level,
        p_value=None,
        n_prompts=0,
        n_samples=n_samples,
        test=test,
        status="empty",
        detail=detail,
        mde=None,
    )


def _paired_diffs(a: Any, b: Any) -> tuple[np.ndarray, int, int]:
    """Per-prompt differences ``a - b``, with ``k`` and the number of dropped prompts."""
    means_a, means_b, n_dropped, k = _aligned(a, b)
    return means_a - means_b, k, n_dropped


def _constant_detail(diffs: np.ndarray) -> str:
    if diffs.size == 1:
        return "only one prompt; the spread of differences cannot be estimated"
    d = float(diffs[0])
    if d == 0.0 and np.all(diffs == 0.0):
        return "arms identical on every prompt (all per-prompt differences are 0)"
    return f"every prompt has the same difference {d:.6g}; zero variance, t-test undefined"


def _ok_or_degenerate(p: float) -> tuple[float | None, str, str]:
    if math.isfinite(p):
        return _clip_p(p), "ok", ""
    return None, "degenerate", "test statistic undefined (numerically zero variance)"


def paired_difference(
    a: Any,
    b: Any,
    *,
    alternative: str = "two-sided",
    alpha: float = 0.05,
    n_resamples: int = 2000,
    seed: int = 0,
) -> TestResult:
    """Mean paired per-prompt difference ``a - b`` with a paired t-test.

    Each prompt is reduced to its mean score in each arm; the effect is the mean over prompts
    of the difference. The p-value is a one-sample t-test of the per-prompt differences against
    0 (equivalent to a paired t-test) with the given alternative. The interval is a two-sided
    ``1 - alpha`` prompt-level percentile bootstrap, whatever the alternative.

    Args:
        a: Scores of arm A, shaped (n_prompts, k).
        b: Scores of arm B, same shape, rows aligned by prompt.
        alternative: "two-sided", "greater" (A > B) or "less" (A < B).
        alpha: Significance level; sets the interval level and the MDE.
        n_resamples: Bootstrap resamples.
        seed: Bootstrap seed.

    Returns:
        A :class:`TestResult`. Status "degenerate" (no p-value) when every prompt has the same
        difference or only one prompt remains; "empty" when no prompt has data.

    Raises:
        ValueError: On malformed input or invalid arguments.
    """
    alternative = _check_alternative(alternative)
    alpha = _check_alpha(alpha)
    diffs, k, n_dropped = _paired_diffs(a, b)
    test = f"paired t on per-prompt means ({alternative})"
    level = 1.0 - alpha
    if diffs.size == 0:
        return _empty(test, level, k, n_dropped)
    effect = float(np.mean(diffs))
    sd = _diff_sd(diffs)
    mde_alt = "two-sided" if alternative == "two-sided" else "one-sided"
    mde = minimum_detectable_effect(sd, diffs.size, alpha=alpha, alternative=mde_alt)
    low, high = bootstrap_ci(diffs, level=level, n_resamples=n_resamples, seed=seed)
    if diffs.size < 2 or _all_equal(diffs):
        status, detail, p = "degenerate", _constant_detail(diffs), None
    else:
        res = sps.ttest_1samp(diffs, 0.0, alternative=alternative)
        p, status, detail = _ok_or_degenerate(float(res.pvalue))
    return TestResult(effect, low, high, level, p, int(diffs.size), k, test, status, detail, mde)


def tost_paired(a: Any, b: Any, *, margin: float, alpha: float = 0.05) -> TestResult:
    """Equivalence of two arms within ``±margin`` by two one-sided paired t-tests (TOST).

    H0: mean per-prompt difference ``a - b`` is ``<= -margin`` or ``>= margin``;
    H1: it lies strictly inside ``(-margin, margin)``. Computed with
    ``statsmodels.stats.weightstats.ttost_paired`` on per-prompt means; the p-value is the larger
    of the two one-sided p-values. The interval is the ``1 - 2 * alpha`` t-interval of the mean
    difference (90% for alpha 0.05), which lies inside the margins exactly when TOST rejects.

    When every prompt has the same difference ``d`` the outcome is known without a test: the
    result is "degenerate" with interval ``(d, d)`` and the detail states whether ``|d| <
    margin``.

    Args:
        a: Scores of arm A, shaped (n_prompts, k).
        b: Scores of arm B, same shape, rows aligned by prompt.
        margin: Positive equivalence margin in score units.
        alpha: Level of each one-sided test, in (0, 0.5).

    Returns:
        A :class:`TestResult`.

    Raises:
        ValueError: On malformed input or invalid arguments.
    """
    margin = _check_margin(margin, allow_zero=False)
    alpha = _check_alpha(alpha, upper=0.5)
    diffs, k, n_dropped = _paired_diffs(a, b)
    test = f"TOST paired t (margin ±{margin:g})"
    level = 1.0 - 2.0 * alpha
    if diffs.size == 0:
        return _empty(test, level, k, n_dropped)
    effect = float(np.mean(diffs))
    mde = minimum_detectable_effect(
        _diff_sd(diffs), diffs.size, alpha=alpha, alternative="one-sided"
    )
    if diffs.size < 2 or _all_equal(diffs):
        inside = abs(effect) < margin
        verdict = "inside" if inside else "not inside"
        detail = f"{_constant_detail(diffs)}; |d| = {abs(effect):.6g} is {verdict} the margin"
        if diffs.size == 1:
            detail = f"{detail} (single prompt, no inference possible)"
        return TestResult(
            effect, effect, effect, level, None, int(diffs.size), k, test, "degenerate", detail, mde
        )
    # ttost_paired tests the mean of x1 - x2; the per-prompt differences against zero give it.
    p_tost, _, _ = ttost_paired(diffs, np.zeros_like(diffs), -margin, margin)
    low, high = DescrStatsW(diffs).tconfint_mean(alpha=2.0 * alpha)
    low, high = _enclose(effect, float(low), float(high))
    p, status, detail = _ok_or_degenerate(float(p_tost))
    return TestResult(effect, low, high, level, p, int(diffs.size), k, test, status, detail, mde)


def noninferiority(
    a: Any,
    b: Any,
    *,
    margin: float,
    alpha: float = 0.05,
    n_resamples: int = 2000,
    seed: int = 0,
) -> TestResult:
    """Non-inferiority of arm A to arm B by a one-sided paired t-test.

    H0: mean per-prompt difference ``a - b <= -margin``; H1: ``a - b > -margin``. Computed as a
    one-sample t-test of the per-prompt differences with ``popmean=-margin`` and alternative
    "greater". The interval is the same two-sided ``1 - alpha`` prompt-level bootstrap as in
    :func:`paired_difference`; it is descriptive (the matching decision interval for a one-sided
    alpha test would be the ``1 - 2 * alpha`` two-sided one) and the p-value is the decision.

    Args:
        a: Scores of arm A (the candidate), shaped (n_prompts, k).
        b: Scores of arm B (the reference), same shape, rows aligned by prompt.
        margin: Non-negative tolerated shortfall in score units (0 gives a superiority test).
        alpha: One-sided significance level.
        n_resamples: Bootstrap resamples.
        seed: Bootstrap seed.

    Returns:
        A :class:`TestResult`; "degenerate" with an exact verdict in ``detail`` when every prompt
        has the same difference.

    Raises:
        ValueError: On malformed input or invalid arguments.
    """
    margin = _check_margin(margin, allow_zero=True)
    alpha = _check_alpha(alpha)
    diffs, k, n_dropped = _paired_diffs(a, b)
    test = f"non-inferiority paired t (margin {margin:g})"
    level = 1.0 - alpha
    if diffs.size == 0:
        return _empty(test, level, k, n_dropped)
    effect = float(np.mean(diffs))
    mde = minimum_detectable_effect(
        _diff_sd(diffs), diffs.size, alpha=alpha, alternative="one-sided"
    )
    low, high = bootstrap_ci(diffs, level=level, n_resamples=n_resamples, seed=seed)
    if diffs.size < 2 or _all_equal(diffs):
        holds = effect > -margin
        verdict = "above" if holds else "not above"
        detail = f"{_constant_detail(diffs)}; d = {effect:.6g} is {verdict} -margin"
        status, p = "degenerate", None
    else:
        res = sps.ttest_1samp(diffs, -margin, alternative="greater")
        p, status, detail = _ok_or_degenerate(float(res.pvalue))
    return TestResult(effect, low, high, level, p, int(diffs.size), k, test, status, detail, mde)


# --------------------------------------------------------------------------------------------
# Counts
# --------------------------------------------------------------------------------------------


def binomial_test(
    successes: int,
    n: int,
    *,
    p0: float = 0.5,
    alternative: str = "greater",
    alpha: float = 0.05,
) -> TestResult:
    """Exact binomial test of a rate against ``p0``.

    Uses ``scipy.stats.binomtest``; the interval is the two-sided ``1 - alpha`` Wilson score
    interval. The MDE uses ``sqrt(p0 * (1 - p0))`` as the per-trial SD (normal approximation).

    Args:
        successes: Number of successes.
        n: Number of trials (e.g. prompts).
        p0: Rate under the null hypothesis, in (0, 1).
        alternative: "two-sided", "greater" or "less".
        alpha: Significance level; sets the interval level and the MDE.

    Returns:
        A :class:`TestResult` whose effect is ``successes / n``; status "empty" when ``n == 0``.

    Raises:
        ValueError: On invalid counts or arguments.
    """
    successes = _check_count(successes, "successes")
    n = _check_count(n, "n")
    alternative = _check_alternative(alternative)
    alpha = _check_alpha(alpha)
    if not (isinstance(p0, (int, float)) and 0.0 < p0 < 1.0):
        raise ValueError(f"p0 must be a number strictly between 0 and 1; got {p0!r}")
    if successes > n:
        raise ValueError(f"successes ({successes}) must not exceed n ({n})")
    test = f"exact binomial (p0={p0:g}, {alternative})"
    level = 1.0 - alpha
    if n == 0:
        return TestResult(
            0.0, 0.0, 0.0, level, None, 0, 1, test, "empty", "no trials (n = 0)", None
        )
    rate = successes / n
    low, high = proportion_ci(successes, n, level=level)
    p = _clip_p(sps.binomtest(successes, n, p=p0, alternative=alternative).pvalue)
    mde_alt = "two-sided" if alternative == "two-sided" else "one-sided"
    mde = minimum_detectable_effect(math.sqrt(p0 * (1.0 - p0)), n, alpha=alpha, alternative=mde_alt)
    return TestResult(rate, low, high, level, p, n, 1, test, "ok", "", mde)


def _as_binary(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of per-prompt booleans; got {arr.shape}")
    try:
        as_float = arr.astype(float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must contain booleans or 0/1 values") from exc
    if not np.isin(as_float, (0.0, 1.0)).all():
        raise ValueError(f"{name} must contain only booleans or 0/1 values (no NaN)")
    return as_float.astype(bool)


def mcnemar_test(x: Any, y: Any, *, alpha: float = 0.05) -> TestResult:
    """Exact McNemar test of paired binary outcomes (one outcome per prompt per arm).

    The p-value is ``statsmodels.stats.contingency_tables.mcnemar(exact=True)``, i.e. an exact
    binomial test on the discordant pairs. The effect is ``rate(x) - rate(y)``; its interval is
    the Wald interval for a difference of paired proportions,
    ``(b - c) / n ± z * sqrt(b + c - (b - c)**2 / n) / n`` with ``b`` (x only) and ``c``
    (y only) the discordant counts, clipped to ``[-1, 1]``. Wald coverage is poor with few
    discordant pairs; the exact p-value is the basis for decisions.

    Args:
        x: Per-prompt binary outcomes of arm X (bool or 0/1).
        y: Per-prompt binary outcomes of arm Y, same length, aligned by prompt.
        alpha: Sets the interval level ``1 - alpha`` and the MDE.

    Returns:
        A :class:`TestResult`; "degenerate" when there is no discordant pair, "empty" when
        there are no prompts.

    Raises:
        ValueError: If inputs are not binary 1-D arrays of equal length.
    """
    alpha = _check_alpha(alpha)
    xb = _as_binary(x, "x")
    yb = _as_binary(y, "y")
    if xb.shape != yb.shape:
        raise ValueError(
            f"x and y must have the same length (aligned by prompt); got {xb.size} and {yb.size}"
        )
    test = "McNemar exact"
    level = 1.0 - alpha
    n = int(xb.size)
    if n == 0:
        return TestResult(0.0, 0.0, 0.0, level, None, 0, 1, test, "empty", "no prompts", None)
    both = int(np.sum(xb & yb))
    only_x = int(np.sum(xb & ~yb))
    only_y = int(np.sum(~xb & yb))
    neither = n - both - only_x - only_y
    effect = (only_x - only_y) / n
    mde = minimum_detectable_effect(_diff_sd(xb.astype(float) - yb.astype(float)), n, alpha=alpha)
    if only_x + only_y == 0:
        detail = "no discordant pairs; the arms agree on every prompt"
        return TestResult(
            effect, effect, effect, level, None, n, 1, test, "degenerate", detail, mde
        )
    table = np.array([[both, only_x], [only_y, neither]])
    p = _clip_p(float(sm_mcnemar(table, exact=True).pvalue))
    z = float(sps.norm.ppf(1.0 - alpha / 2.0))
    var_term = max(0.0, (only_x + only_y) - (only_x - only_y) ** 2 / n)
    half = z * math.sqrt(var_term) / n
    low, high = _enclose(effect, max(-1.0, effect - half), min(1.0, effect + half))
    return TestResult(effect, low, high, level, p, n, 1, test, "ok", "", mde)
