"""acc@1 and unbiased pass@k, with confidence intervals.

- acc@1 (one greedy answer per problem) gets a Wilson score interval.
- pass@k over problems is the mean of per-problem unbiased estimates
  1 - C(n - c, k) / C(n, k) (Chen et al. 2021) and gets a percentile bootstrap interval over
  problems (seeded, so reruns print the same interval).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from statistics import NormalDist


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k draws (without replacement) from n samples with c
    correct ones is correct: 1 - C(n - c, k) / C(n, k), as a stable product."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def wilson_interval(successes: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (stays inside [0, 1], sane at 0 and n)."""
    if total <= 0:
        return (0.0, 1.0)
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_interval(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling problems)."""
    if not values:
        return (0.0, 1.0)
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(resamples))
    alpha = (1 - confidence) / 2
    lo = means[math.floor(alpha * (resamples - 1))]
    hi = means[math.ceil((1 - alpha) * (resamples - 1))]
    return (lo, hi)


def summarize(
    correct: Sequence[Sequence[bool]],
    ks: Sequence[int] = (1,),
    greedy: bool = True,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Metrics from per-problem lists of sample outcomes.

    Args:
        correct: one list of booleans per problem (its n samples, n >= 1).
        ks: the k of pass@k to report; a k larger than some problem's n is skipped.
        greedy: the samples are greedy answers, so also report ``acc@1`` with a Wilson CI.
    Returns:
        ``{"num_problems", "num_samples", "acc@1", "acc@1_ci_low", "acc@1_ci_high",
        "pass@k", "pass@k_ci_low", "pass@k_ci_high", ...}``.
    """
    if not correct:
        raise ValueError("no problems to summarise")
    metrics: dict[str, float] = {
        "num_problems": len(correct),
        "num_samples": sum(len(c) for c in correct),
    }
    if greedy:
        first = sum(bool(c[0]) for c in correct)
        lo, hi = wilson_interval(first, len(correct), confidence)
        metrics.update({"acc@1": first / len(correct), "acc@1_ci_low": lo, "acc@1_ci_high": hi})
    min_n = min(len(c) for c in correct)
    for k in ks:
        if k > min_n:
            continue
        per_problem = [pass_at_k(len(c), sum(map(bool, c)), k) for c in correct]
        lo, hi = bootstrap_interval(per_problem, confidence, seed=seed)
        mean = sum(per_problem) / len(per_problem)
        metrics.update({f"pass@{k}": mean, f"pass@{k}_ci_low": lo, f"pass@{k}_ci_high": hi})
    return metrics
