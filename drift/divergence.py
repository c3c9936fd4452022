"""Distances between two categorical distributions given as counts: PSI and Jensen-Shannon.

Both are computed on **smoothed** proportions: every bin gets ``alpha`` (0.5, the
Krichevsky-Trofimov / Jeffreys prior) added to its count before normalising, so an empty
bin on one side gives a large but finite value instead of infinity.

Distributions over thousands of sparse items are binned first (:func:`top_bins`): the ``n``
most frequent keys of the *expected* side get one bin each and everything else shares one
``OTHER`` bin, so mass moving to unknown or rare keys is still seen, and the sampling noise
stays bounded by the number of bins rather than the number of items.

Sampling noise. For two samples of sizes ``n1`` and ``n2`` drawn from the *same*
distribution over ``B`` bins, ``PSI * n1 n2 / (n1 + n2)`` is approximately chi-square with
``B - 1`` degrees of freedom (both PSI and that statistic are ``sum (p - q)^2 / m`` to
second order), and ``JS ~ PSI / (8 ln 2)`` bits. :func:`noise_floor` turns a quantile of
that law into a value below which a divergence is indistinguishable from sampling noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy.stats import chi2

OTHER = "(other)"
ALPHA = 0.5


def top_bins(counts: Mapping[str, float], n: int) -> list[str]:
    """The ``n`` keys with the largest counts (ties by key, so the choice is deterministic).

    Examples
    --------
    >>> top_bins({"a": 1, "b": 5, "c": 5, "d": 2}, 2)
    ['b', 'c']
    """
    return [k for k, _ in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[:n]]


def bin_counts(counts: Mapping[str, float], bins: Sequence[str]) -> np.ndarray:
    """Counts per bin in ``bins`` order, plus one last bin for every other key.

    Examples
    --------
    >>> bin_counts({"a": 3, "b": 1, "z": 2, "y": 1}, ["a", "b"]).tolist()
    [3.0, 1.0, 3.0]
    """
    chosen = set(bins)
    out = np.array([float(counts.get(b, 0.0)) for b in bins] + [0.0])
    out[-1] = float(sum(v for k, v in counts.items() if k not in chosen))
    return out


def proportions(counts: Iterable[float], alpha: float = ALPHA) -> np.ndarray:
    """Additively smoothed proportions: ``(count + alpha) / (total + alpha * bins)``.

    Examples
    --------
    >>> proportions([3, 0, 1], alpha=0.5).round(3).tolist()
    [0.636, 0.091, 0.273]
    """
    counts = np.asarray(list(counts), dtype=float)
    smoothed = counts + alpha
    return smoothed / smoothed.sum()


def psi(expected: Iterable[float], actual: Iterable[float], alpha: float = ALPHA) -> float:
    """Population stability index of ``actual`` against ``expected`` counts (same bins).

    ``PSI = sum (a_i - e_i) ln(a_i / e_i)`` over smoothed proportions; 0 for identical
    distributions, symmetric, unbounded. Rule of thumb (Siddiqi 2006): below 0.1 stable,
    0.1 to 0.25 a moderate shift, above 0.25 a significant one.

    Examples
    --------
    >>> psi([50, 30, 20], [50, 30, 20])
    0.0
    >>> round(psi([50, 30, 20], [20, 30, 50]), 3)
    0.533

    References
    ----------
    N. Siddiqi. Credit Risk Scorecards: Developing and Implementing Intelligent Credit
    Scoring. Wiley, 2006.
    B. Yurdakul. Statistical Properties of Population Stability Index. PhD thesis, Western
    Michigan University, 2018.
    """
    e, a = proportions(expected, alpha), proportions(actual, alpha)
    return max(0.0, float(np.sum((a - e) * np.log(a / e))))


def js_divergence(p: Iterable[float], q: Iterable[float], alpha: float = ALPHA) -> float:
    """Jensen-Shannon divergence of two count vectors (same bins), in bits: 0 to 1.

    ``JS = (KL(p || m) + KL(q || m)) / 2`` with ``m = (p + q) / 2``, on smoothed proportions.

    Examples
    --------
    >>> js_divergence([10, 0], [10, 0])
    0.0
    >>> round(js_divergence([1000, 0], [0, 1000], alpha=0.0), 3)
    1.0
    >>> round(js_divergence([50, 30, 20], [20, 30, 50]), 3)
    0.093

    References
    ----------
    J. Lin. Divergence measures based on the Shannon entropy. IEEE Transactions on
    Information Theory 37(1), 145-151, 1991.
    """
    p, q = proportions(p, alpha), proportions(q, alpha)
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return min(1.0, max(0.0, (kl(p) + kl(q)) / 2))


def noise_floor(statistic: str, bins: int, n1: float, n2: float, quantile: float = 0.999) -> float:
    """The ``quantile`` of ``statistic`` ('psi' or 'js') between two same-distribution samples.

    Uses the chi-square approximation of the module docstring; infinite when a sample is empty.

    Examples
    --------
    >>> round(noise_floor("psi", 51, 4000, 4000), 4)
    0.0433
    >>> round(noise_floor("js", 51, 4000, 4000), 4)
    0.0078
    >>> noise_floor("psi", 51, 0, 4000)
    inf
    """
    if n1 <= 0 or n2 <= 0:
        return math.inf
    value = chi2.ppf(quantile, max(bins - 1, 1)) * (1 / n1 + 1 / n2)
    return float(value if statistic == "psi" else value / (8 * math.log(2)))
