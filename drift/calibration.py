"""Alert thresholds calibrated on a storefront's own reference windows.

A fixed threshold (PSI 0.25, a share moving 5 points) is too tight for a storefront whose
traffic comes in bursts of a few shoppers and too loose for a large, smooth one. Here the
threshold of each input metric is learnt from how much the metric varies *within* the
storefront's reference windows, where nothing is supposed to have drifted:

1. the reference events, in event-time order, are cut into ``CHUNKS`` contiguous chunks;
2. each chunk is compared with the others as a window is compared in production: with the
   rest of the reference (``*_reference`` metrics, ``purchase_share``), or with the chunk
   before it (``*_previous`` metrics, the new-item and new-user shares);
3. each comparison is divided by its **sampling-noise scale**, the factor by which its value
   shrinks as the samples grow: ``1/n1 + 1/n2`` for a divergence (:mod:`drift.divergence`),
   the binomial standard error ``sqrt(p (1 - p) (1/n1 + 1/n2))`` for a difference of shares.
   What is left is a size-free statistic (a chi-square-like one, or a z-score) that keeps the
   storefront's *extra* variation: shoppers who arrive in sessions, bursty campaigns;
4. the threshold of a new comparison is ``(mean + SD_MULTIPLIER sd)`` of those statistics,
   times the larger of the new comparison's noise scale and the chunks' (their median):
   a comparison of samples smaller than the chunks is noisier, so its threshold grows with
   its noise; one of larger samples keeps the chunks' threshold, because the part of the
   variation that is not sampling noise (shoppers' sessions, the slow turnover of what is
   popular) does not shrink with the sample size. It is never below the noise floor: the
   99.9% quantile of the metric between two samples of one distribution (chi-square for
   divergences, normal for shares).

With fewer than ``MIN_COMPARISONS`` chunk comparisons (a reference smaller than
``MIN_COMPARISONS + 1`` chunks of ``MIN_CHUNK_EVENTS``) the noise floor alone is the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

CHUNKS = 10  # chunks of the reference: ~9 comparisons, enough for a standard deviation
MIN_CHUNK_EVENTS = 100  # smaller chunks are cut fewer
MIN_COMPARISONS = 3
SD_MULTIPLIER = 3.0
NOISE_QUANTILE = 0.999


def divergence_scale(n1: float, n2: float) -> float:
    """How a divergence of two samples of sizes ``n1``, ``n2`` scales with them: ``1/n1 + 1/n2``.

    Examples
    --------
    >>> divergence_scale(1000, 4000)
    0.00125
    """
    return 1 / n1 + 1 / n2 if n1 > 0 and n2 > 0 else math.inf


def share_scale(p: float, n1: float, n2: float) -> float:
    """Standard error of the difference of two shares around ``p`` (sizes ``n1``, ``n2``).

    A share of exactly 0 or 1 counts as half an event away, so the scale is never 0.

    Examples
    --------
    >>> round(share_scale(0.2, 10000, 30000), 5)
    0.00462
    """
    if n1 <= 0 or n2 <= 0:
        return math.inf
    half = 0.5 / (n1 + n2)
    p = min(max(p, half), 1 - half)
    return math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))


def share_floor(p: float, n1: float, n2: float, two_sided: bool) -> float:
    """The 99.9% quantile of the change of a share between two samples of one population.

    Examples
    --------
    >>> round(share_floor(0.2, 10000, 30000, two_sided=True), 4)
    0.0152
    """
    q = 1 - (1 - NOISE_QUANTILE) / (2 if two_sided else 1)
    return float(norm.ppf(q)) * share_scale(p, n1, n2)


def chunks(events: pd.DataFrame, n: int = CHUNKS, min_events: int = MIN_CHUNK_EVENTS) -> list[pd.DataFrame]:
    """``events`` in event-time order cut into at most ``n`` contiguous chunks of at least ``min_events``.

    Examples
    --------
    >>> frame = pd.DataFrame({"ts": range(1050)})
    >>> [len(c) for c in chunks(frame)]
    [105, 105, 105, 105, 105, 105, 105, 105, 105, 105]
    >>> [len(c) for c in chunks(frame.iloc[:250])]
    [125, 125]
    """
    ordered = events.sort_values("ts", kind="stable") if "ts" in events else events
    k = min(n, len(ordered) // min_events)
    if k < 1:
        return []
    return [ordered.iloc[idx] for idx in np.array_split(np.arange(len(ordered)), k)]


@dataclass(frozen=True)
class Calibration:
    """Mean and standard deviation of size-free comparison statistics within the reference.

    ``source`` names the reference (e.g. 'windows 1-3'), ``comparisons`` how many chunk
    comparisons the statistics come from, ``scale`` their median noise scale.

    Examples
    --------
    >>> c = Calibration.of([1.0, 2.0, 3.0], "windows 1-3", scales=[0.004, 0.005, 0.006])
    >>> c.mean, c.sd, c.bound, c.scale
    (2.0, 1.0, 5.0, 0.005)
    >>> c.threshold(scale=0.01, floor=0.02), c.threshold(scale=0.001, floor=0.02), c.threshold(0.001, 0.0)
    (0.05, 0.025, 0.025)
    >>> Calibration.of([1.0, 2.0], "window 1") is None
    True
    """

    mean: float
    sd: float
    comparisons: int
    source: str
    scale: float = 0.0

    @classmethod
    def of(cls, statistics: Sequence[float], source: str, scales: Sequence[float] = ()) -> Calibration | None:
        """The calibration of size-free ``statistics`` of comparisons with noise ``scales`` (non-finite
        ones dropped); None when fewer than ``MIN_COMPARISONS``."""
        values = np.asarray([s for s in statistics if math.isfinite(s)], dtype=float)
        if len(values) < MIN_COMPARISONS:
            return None
        finite = [x for x in scales if math.isfinite(x)]
        return cls(float(values.mean()), float(values.std(ddof=1)), len(values), source,
                   float(np.median(finite)) if finite else 0.0)

    @property
    def bound(self) -> float:
        """``mean + SD_MULTIPLIER * sd`` of the size-free statistic."""
        return self.mean + SD_MULTIPLIER * self.sd

    def calibrated(self, scale: float) -> float:
        """``bound`` times the larger of ``scale`` and the chunks' noise scale."""
        return self.bound * max(scale, self.scale)

    def threshold(self, scale: float, floor: float) -> float:
        """The threshold of a comparison with noise ``scale``: ``max(calibrated(scale), floor)``."""
        return max(self.calibrated(scale), floor)

    def describe(self, scale: float, floor: float, floor_label: str = "noise floor") -> str:
        """The threshold's derivation in words."""
        calibrated = self.calibrated(scale)
        which = "calibrated" if calibrated >= floor else floor_label
        return (f"{which}: mean {self.mean:.3g} + {SD_MULTIPLIER:g} sd {self.sd:.3g} of {self.comparisons} chunk "
                f"comparisons of {self.source}, x noise scale {max(scale, self.scale):.3g} = {calibrated:.4g}; "
                f"{floor_label} {floor:.4g}")

    def detail(self, scale: float, floor: float) -> dict:
        """The numbers behind the threshold (stored next to the value)."""
        return {"method": "reference_chunks", "mean": self.mean, "sd": self.sd, "comparisons": self.comparisons,
                "sd_multiplier": SD_MULTIPLIER, "scale": scale, "chunk_scale": self.scale,
                "calibrated": self.calibrated(scale), "noise_floor": floor, "source": self.source}


def floor_only(floor: float, why: str, floor_label: str = "noise floor") -> tuple[float, str, dict]:
    """(threshold, method, detail) when no calibration is available."""
    return floor, f"{floor_label} {floor:.4g} ({why})", {"method": "noise_floor", "noise_floor": floor}


def judged_threshold(calibration: Calibration | None, scale: float, floor: float,
                     floor_label: str = "noise floor") -> tuple[float, str, dict]:
    """(threshold, method text, detail) of a comparison: calibrated when possible, else the floor.

    Examples
    --------
    >>> judged_threshold(None, 0.001, 0.02)[:2]
    (0.02, 'noise floor 0.02 (reference too small to calibrate)')
    >>> judged_threshold(Calibration.of([1, 2, 3], "windows 1-3", [0.002] * 3), 0.01, 0.02)[0]
    0.05
    """
    if calibration is None:
        return floor_only(floor, "reference too small to calibrate", floor_label)
    return (calibration.threshold(scale, floor), calibration.describe(scale, floor, floor_label),
            calibration.detail(scale, floor))
