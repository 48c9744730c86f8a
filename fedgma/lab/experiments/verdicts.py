"""Does the mask matter? Paired per-seed differences, their 95 % intervals, and the verdicts.

Seeds are paired: a FedGMA run and its reference (FedAvg, or its no-mask control) with the
same seed share data split, colours and initial model, so the effect of the difference
between them is estimated from the per-seed differences ``d_s`` (in OOD accuracy points):
mean ``d``, 95 % interval ``d +- t(0.975, n - 1) * sd(d_s) / sqrt(n)``.

The verdict on the mask compares a FedGMA run with its no-mask control (the same server
update with every coordinate kept, :data:`~.grids.NO_MASK_CONTROLS`): it is
``helps`` when the whole interval lies above zero and the mean is at least
:data:`THRESHOLD_POINTS`; ``hurts`` in the mirror case; else ``no detectable effect``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

THRESHOLD_POINTS = 1.0  # smallest mean difference (OOD accuracy points) called an effect
# Two-sided 95 % quantiles of Student's t by degrees of freedom (seeds - 1); 1.96 beyond.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
HELPS, HURTS, NO_EFFECT, TOO_FEW = "mask helps", "mask hurts", "no detectable effect", "too few seeds"


def t975(degrees_of_freedom: int) -> float:
    """The 0.975 quantile of Student's t (two-sided 95 %)."""
    if degrees_of_freedom < 1:
        raise ValueError("a t interval needs at least two paired seeds")
    return _T975[degrees_of_freedom - 1] if degrees_of_freedom <= len(_T975) else 1.96


@dataclass(frozen=True)
class PairedDifference:
    """Per-seed differences ``run - reference`` in accuracy points, and their summary."""

    differences: tuple[float, ...]

    @property
    def seeds(self) -> int:
        return len(self.differences)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.differences)

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95 % t interval of the mean, or None with fewer than two seeds."""
        if self.seeds < 2:
            return None
        half = t975(self.seeds - 1) * statistics.stdev(self.differences) / math.sqrt(self.seeds)
        return self.mean - half, self.mean + half

    @property
    def verdict(self) -> str:
        """What these differences say, read as the effect of the mask (see the module docstring)."""
        interval = self.interval
        if interval is None:
            return TOO_FEW
        low, high = interval
        if low > 0 and self.mean >= THRESHOLD_POINTS:
            return HELPS
        if high < 0 and self.mean <= -THRESHOLD_POINTS:
            return HURTS
        return NO_EFFECT

    def format(self) -> str:
        """``+1.2 [-0.8, +3.1] (n=3)``."""
        interval = self.interval
        spread = "" if interval is None else f" [{interval[0]:+.1f}, {interval[1]:+.1f}]"
        return f"{self.mean:+.1f}{spread} (n={self.seeds})"


def paired(values: dict[int, float], reference: dict[int, float]) -> PairedDifference | None:
    """Differences in points over the seeds both have (accuracies given as fractions)."""
    seeds = sorted(set(values) & set(reference))
    if not seeds:
        return None
    return PairedDifference(tuple(100.0 * (values[s] - reference[s]) for s in seeds))


def overall(verdicts: list[str]) -> str:
    """One verdict for a setting from its comparisons' verdicts."""
    decided = {v for v in verdicts if v in (HELPS, HURTS)}
    if decided == {HELPS, HURTS}:
        return "mixed: the mask helps in one comparison and hurts in another"
    if decided:
        return decided.pop()
    if verdicts and all(v == TOO_FEW for v in verdicts):
        return TOO_FEW
    return NO_EFFECT
