"""What a comparison says: paired per-seed differences, t intervals, Holm-adjusted p-values, labels.

Seeds are paired: two arms with the same seed share data split, colours and initial model, so
the effect of what differs between them is estimated from the per-seed differences ``d_s`` (in
accuracy points): mean ``d``, 95 % interval ``d +- t(0.975, n - 1) * sd(d_s) / sqrt(n)``, and
the paired t-test's two-sided p-value.

Each comparison gets one label (:func:`label`):

- *not measurable* (:data:`NOT_MEASURABLE`): both arms sit at the floor, i.e. each arm's mean
  value is within :data:`FLOOR_POINTS` of chance (1 / number of classes) or of the untrained
  model's (round 0) accuracy on the same test set: two models that learned nothing there;
- *helps* / *hurts*: the Holm-adjusted p-value (:func:`holm`, over the cells of one table) is
  below :data:`ALPHA` and the mean is at least :data:`THRESHOLD_POINTS` above / below 0 (with
  p below 0.05 the 95 % interval lies on that side of 0);
- *equivalent within X points*: the interval lies within +-X for the smallest X of
  :data:`EQUIVALENCE_LADDER`;
- *inconclusive*: anything else (a wide interval that contains 0); *too few seeds* under two.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

THRESHOLD_POINTS = 1.0  # smallest mean difference (accuracy points) called an effect
ALPHA = 0.05  # family-wise error rate of one table's helps / hurts labels (Holm)
EQUIVALENCE_LADDER = (1.0, 2.0, 3.0, 5.0)  # "equivalent within X points": the smallest X that fits
FLOOR_POINTS = 3.0  # an arm within this of chance or of its untrained model learned nothing measurable
HELPS, HURTS, INCONCLUSIVE, NOT_MEASURABLE, TOO_FEW = "helps", "hurts", "inconclusive", "not measurable", \
    "too few seeds"
EQUIVALENT = "equivalent within"  # each such label: "equivalent within X points" ("1 point")


def t975(degrees_of_freedom: int) -> float:
    """The 0.975 quantile of Student's t (two-sided 95 %)."""
    if degrees_of_freedom < 1:
        raise ValueError("a t interval needs at least two paired seeds")
    return float(stats.t.ppf(0.975, degrees_of_freedom))


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
    def p_value(self) -> float | None:
        """The paired t-test's two-sided p-value (mean difference 0), None under two seeds.
        Identical differences: 0 if they are not 0, else 1."""
        if self.seeds < 2:
            return None
        sd = statistics.stdev(self.differences)
        if sd == 0:
            return 0.0 if self.mean != 0 else 1.0
        t = self.mean / (sd / math.sqrt(self.seeds))
        return float(2 * stats.t.sf(abs(t), self.seeds - 1))

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


def at_floor(value: float, chance: float, untrained: float | None) -> bool:
    """Whether an arm's mean accuracy (fractions) is within :data:`FLOOR_POINTS` of chance or of
    the untrained model's accuracy on the same test set."""
    floors = [chance] + ([untrained] if untrained is not None else [])
    return any(abs(100.0 * (value - floor)) <= FLOOR_POINTS for floor in floors)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the given order: the i-th smallest of m is
    multiplied by m - i + 1 (i from 1), made non-decreasing, capped at 1."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def label(difference: PairedDifference, adjusted_p: float | None, measurable: bool = True) -> str:
    """One comparison's label (see the module docstring); ``adjusted_p``: its Holm-adjusted p-value."""
    if not measurable:
        return NOT_MEASURABLE
    interval = difference.interval
    if interval is None or adjusted_p is None:
        return TOO_FEW
    if adjusted_p < ALPHA and abs(difference.mean) >= THRESHOLD_POINTS:
        return HELPS if difference.mean > 0 else HURTS
    for width in EQUIVALENCE_LADDER:
        if -width <= interval[0] and interval[1] <= width:
            return f"{EQUIVALENT} {width:g} point{'' if width == 1 else 's'}"
    return INCONCLUSIVE


@dataclass(frozen=True)
class Cell:
    """One comparison of a table: its paired difference and whether both arms learned something."""

    difference: PairedDifference
    measurable: bool = True


def judge(cells: Sequence[Cell]) -> list[tuple[float | None, str]]:
    """Holm-adjusted p-values and labels of one table's comparisons (one family: the measurable
    cells with at least two seeds), in order."""
    tested = [i for i, c in enumerate(cells) if c.measurable and c.difference.p_value is not None]
    adjusted = dict(zip(tested, holm([cells[i].difference.p_value or 0.0 for i in tested]), strict=True))
    return [(adjusted.get(i), label(c.difference, adjusted.get(i), c.measurable)) for i, c in enumerate(cells)]


def family_caption(tested: int | None) -> str:
    """What a table's labels mean, with its family of tests (``tested`` of them; None: each table's)."""
    family = "each table's" if tested is None else f"this table's {tested}"
    return (f"Labels: *helps* / *hurts* when the Holm-adjusted paired t-test p-value is below {ALPHA:g} "
            f"(Holm over {family} measurable comparisons with two or more seeds, one family) and "
            f"the mean is at least {THRESHOLD_POINTS:g} point; *equivalent within X points* when the 95 % "
            f"interval lies within ±X, X the smallest of {', '.join(f'{x:g}' for x in EQUIVALENCE_LADDER)}; "
            f"*not measurable* when both arms' mean is within {FLOOR_POINTS:g} points of chance or of the "
            "untrained model (round 0) on that test set; *too few seeds* with one paired seed; else "
            "*inconclusive* (not significant after Holm, or under a point, and not shown equivalent). A "
            "setting's one word: *helps* or *hurts* if any comparison of its mask says so (*mixed* if both), "
            "*does nothing* if every measurable one is equivalent, else the comparisons' common label.")


def overall(labels: Sequence[str]) -> str:
    """One word for a set of comparisons of the mask: helps, hurts, mixed, does nothing (every
    measurable one equivalent), not measurable, inconclusive or too few seeds."""
    if not labels:
        return "not run"
    decided = {v for v in labels if v in (HELPS, HURTS)}
    if decided == {HELPS, HURTS}:
        return "mixed"
    if decided:
        return decided.pop()
    if all(v == NOT_MEASURABLE for v in labels):
        return NOT_MEASURABLE
    judged = [v for v in labels if v not in (NOT_MEASURABLE, TOO_FEW)]
    if not judged:
        return TOO_FEW
    if all(v.startswith(EQUIVALENT) for v in judged):
        return "does nothing"
    return INCONCLUSIVE
