"""What both reports share (:mod:`.report` for the full grid, :mod:`.when_report` for the when
grid): a setting's primary metric, the paired comparison of two arms, the caveats generated from
the data, and writing a generated block into a markdown file."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from ..markdown import replace_block
from .grids import ALL_SETTINGS, ARMS, PRIMARY_TEST_SET, SETTING_TITLES
from .runs import LAST_ROUNDS, Run, mean_std, seed_values, select
from .verdicts import FLOOR_POINTS, Cell, at_floor, paired

SWING_POINTS = 5.0  # a mean round-to-round change (points) over the last rounds that makes "final" a coin flip
RISE_POINTS = 1.0  # a curve whose last-10 mean exceeds the 10 rounds before by more has not stopped rising


def primary_of(setting: str) -> Callable[[Run], float | None]:
    """The primary metric of a setting's runs (mean of the last rounds on its primary test set)."""
    return lambda run: run.primary(PRIMARY_TEST_SET[setting])


def test_title(test_set: str) -> str:
    return test_set if test_set == "plain" else test_set.upper()


def mean_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def learned_nothing(arm: list[Run], test_set: str) -> bool:
    """Whether an arm's mean primary value sits at chance or at its untrained model's accuracy."""
    value = mean_or_none([r.primary(test_set) for r in arm])
    if value is None:
        return False
    return at_floor(value, 1.0 / arm[0].num_classes, mean_or_none([r.untrained(test_set) for r in arm]))


def comparison(arm: list[Run], reference: list[Run], setting: str) -> Cell | None:
    """The paired comparison of two arms' primary metric, or None if they share no seed."""
    difference = paired(seed_values(arm, primary_of(setting)), seed_values(reference, primary_of(setting)))
    if difference is None:
        return None
    test = PRIMARY_TEST_SET[setting]
    return Cell(difference, not (learned_nothing(arm, test) and learned_nothing(reference, test)))


def paired_text(arm: list[Run], reference: list[Run], metric: str, test_set: str) -> str:
    """The paired difference of ``metric`` (``peak`` or ``final``) on ``test_set``, formatted."""
    def value(run: Run) -> float | None:
        return cast(float | None, getattr(run, metric)(test_set))

    difference = paired(seed_values(arm, value), seed_values(reference, value))
    return "-" if difference is None else difference.format()


def p_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def colour_only_accuracy(setting: str, config: dict[str, Any]) -> float | None:
    """The ID accuracy that colour alone gives, where the setting makes it known: the binary
    colour shortcut the same for every client (1 - the ID test set's flip probability), the
    10-class task with colour fixing the class (1); else None."""
    settings = ALL_SETTINGS.get(setting, {})
    if settings.get("task") == "binary" and settings.get("shortcut", "color") == "color" \
            and not settings.get("shortcut-reversed-share", 0):
        return 1.0 - (float(config["color_flip_min"]) + float(config["color_flip_max"])) / 2
    if settings.get("task") == "ten-class" and "color-class-correlation" not in settings:
        return 1.0
    return None


def caveats(runs: list[Run], setting: str, labels: Sequence[str], study: str, colour_only: float | None) -> list[str]:
    """Notes generated from the data: arms whose primary test set accuracy swings by at least
    :data:`SWING_POINTS` between consecutive late rounds (their final value samples the swing), whose
    primary metric is below the untrained model's, or whose ID accuracy is below colour alone's
    (by more than :data:`~.verdicts.FLOOR_POINTS`)."""
    test = PRIMARY_TEST_SET[setting]
    name = test_title(test)
    swinging, below_untrained, below_colour = [], [], []
    for label in labels:
        arm = select(runs, setting, label, study)
        if not arm:
            continue
        swing = mean_or_none([r.swing(test) for r in arm])
        if swing is not None and swing >= SWING_POINTS:
            swinging.append(f"{label}: {swing:.0f}")
        value, untrained = mean_or_none([r.primary(test) for r in arm]), mean_or_none([r.untrained(test) for r in arm])
        if value is not None and untrained is not None and 100 * (untrained - value) > FLOOR_POINTS:
            below_untrained.append(f"{label} ({value:.2f} < {untrained:.2f})")
        id_value = mean_or_none([r.primary("id") for r in arm])
        if colour_only is not None and id_value is not None and 100 * (colour_only - id_value) > FLOOR_POINTS:
            below_colour.append(f"{label} ({id_value:.2f})")
    notes = []
    if swinging:
        notes.append(f"*Final {name} accuracy is unreliable here*: over the last {LAST_ROUNDS} rounds it moves "
                     f"between consecutive rounds by a mean of at least {SWING_POINTS:g} points (mean over seeds; "
                     f"{'; '.join(swinging)}), so the final value samples that swing; the last-{LAST_ROUNDS} mean "
                     "is the primary metric.")
    if below_untrained:
        notes.append(f"*Below an untrained model* ({name}, last-{LAST_ROUNDS} mean under round 0's by more than "
                     f"{FLOOR_POINTS:g} points: it follows the shortcut): {', '.join(below_untrained)}.")
    if below_colour:
        notes.append(f"*ID accuracy below what colour alone gives* ({colour_only:.2f}; last-{LAST_ROUNDS} mean): "
                     f"{', '.join(below_colour)}.")
    return notes


def write_block(readme: Path, block: str, begin: str, end: str) -> None:
    """Put ``block`` between a file's markers ``begin`` and ``end`` (a generated block)."""
    try:
        readme.write_text(replace_block(readme.read_text(), begin, end, block))
    except ValueError as err:
        raise ValueError(f"{readme}: {err}") from None


def rise_note(runs: list[Run], setting: str, labels: Sequence[str], study: str) -> str | None:
    """Whether the curves have stopped rising: each arm's mean over seeds of :meth:`Run.rise` on
    the setting's primary test set against :data:`RISE_POINTS`; None without enough rounds."""
    test = PRIMARY_TEST_SET[setting]
    rises = {label: mean_or_none([r.rise(test) for r in select(runs, setting, label, study)]) for label in labels}
    measured = {label: value for label, value in rises.items() if value is not None}
    if not measured:
        return None
    rising = [f"{label} {value:+.1f}" for label, value in measured.items() if value > RISE_POINTS]
    window = f"the last {LAST_ROUNDS} rounds' mean {test_title(test)} accuracy against the {LAST_ROUNDS} before"
    if rising:
        return f"*Still rising* ({window}, points, mean over seeds): {', '.join(rising)}; more rounds would move these."
    largest = max(measured.values())
    return (f"*The curves have stopped rising*: {window} rises by at most {RISE_POINTS:g} point for every arm "
            f"(largest {largest:+.1f}).")


def probe_table(runs: list[Run], probes: dict[str, dict[str, float]]) -> list[str]:
    """The colour probe of the 10-class final models (``fedgma probe``), by setting and strategy."""
    by_name = {r.name: r for r in runs}
    groups: dict[tuple[str, str], list[tuple[Run, dict[str, float]]]] = defaultdict(list)
    for name, probe in probes.items():
        if name in by_name:
            groups[(by_name[name].setting, by_name[name].strategy)].append((by_name[name], probe))
    if not groups:
        return []
    lines = ["| setting | strategy | runs | final ID acc | final OOD acc | follows shape | follows colour "
             "| neither |", "|---|---|---|---|---|---|---|---|"]
    order = list(ALL_SETTINGS)
    for (setting, strategy), members in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]),
                                                                                  list(ARMS).index(kv[0][1]))):
        chosen = [run for run, _ in members]
        lines.append(f"| {SETTING_TITLES[setting]} | {strategy} | {len(members)} "
                     f"| {mean_std([r.final_id for r in chosen])} | {mean_std([r.final('ood') for r in chosen])} | "
                     + " | ".join(mean_std([p[k] for _, p in members]) for k in ("follows-shape", "follows-colour",
                                                                                   "neither")) + " |")
    return lines


def probe_coverage(runs: list[Run], probes: dict[str, dict[str, float]]) -> str:
    """How many of the finished 10-class runs the probe covered."""
    ten_class = [r.name for r in runs if r.num_classes == 10]
    probed = sum(name in probes for name in ten_class)
    return (f"{probed} of the {len(ten_class)} finished 10-class runs were probed (`fedgma probe` probes every "
            "10-class run whose final model is on the machine; weights are not committed)")
