"""Intervals for reports: a mean over seeds, a difference of two methods' means (Welch's t), and a seed-paired
difference (the same seeds of both: one difference per seed, a t-interval over those)."""
import math
import statistics

__all__ = ["diff_interval", "mean_interval", "seed_paired_interval"]


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


def seed_paired_interval(a: dict, b: dict, level: float = 0.95) -> tuple[float, float, list]:
    """a, b: {seed: accuracy}. (mean over the seeds both have of a - b, half-width of the t-interval over those
    per-seed differences (nan for fewer than 2), the seeds used). A seed's training noise is shared by nothing else,
    so the seeds, not the images, are the independent units."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return float("nan"), float("nan"), []
    m, hw = mean_interval([a[s] - b[s] for s in seeds], level)
    return m, hw, seeds
