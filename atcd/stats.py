"""Intervals for reports: a mean over seeds, and a difference of two methods' means (Welch's t)."""
import math
import statistics

__all__ = ["diff_interval", "mean_interval"]


def _t(level: float, df: float) -> float:
    from scipy.stats import t
    return float(t.ppf(0.5 + level / 2, df))


def mean_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the t-interval); half-width nan for a single value."""
    m = statistics.mean(values)
    if len(values) < 2:
        return m, float("nan")
    return m, _t(level, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def diff_interval(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float]:
    """(mean(a) - mean(b), half-width of Welch's t-interval); nan half-width when either has one value."""
    d = statistics.mean(a) - statistics.mean(b)
    if len(a) < 2 or len(b) < 2:
        return d, float("nan")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return d, 0.0
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return d, _t(level, df) * se
