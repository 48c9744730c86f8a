"""The numbers behind 'does the mask matter?': paired differences, t intervals, Holm, labels."""

import math
import statistics

import pytest
from scipy import stats

from fedgma.lab.experiments import report
from fedgma.lab.experiments.verdicts import (
    HELPS,
    HURTS,
    INCONCLUSIVE,
    NOT_MEASURABLE,
    THRESHOLD_POINTS,
    TOO_FEW,
    Cell,
    PairedDifference,
    at_floor,
    holm,
    judge,
    label,
    overall,
    paired,
    t975,
)


def test_t_quantiles_match_the_tables():
    # Two-sided 95 % quantiles of Student's t, as printed in the tables.
    for df, quantile in ((1, 12.706), (2, 4.303), (9, 2.262), (30, 2.042), (200, 1.972)):
        assert t975(df) == pytest.approx(quantile, abs=5e-4)
    with pytest.raises(ValueError):
        t975(0)


def test_interval_is_the_t_interval_of_the_per_seed_differences():
    diffs = (1.0, 2.0, 4.0)
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = 4.303 * sd / math.sqrt(3)
    low, high = PairedDifference(diffs).interval
    assert low == pytest.approx(mean - half, abs=1e-3) and high == pytest.approx(mean + half, abs=1e-3)
    assert PairedDifference(diffs).format() == f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}] (n=3)"


def test_p_value_is_the_paired_t_tests():
    ours, theirs = [0.71, 0.74, 0.69, 0.80], [0.70, 0.70, 0.68, 0.75]
    difference = paired(dict(enumerate(ours)), dict(enumerate(theirs)))
    assert difference.p_value == pytest.approx(stats.ttest_rel(ours, theirs).pvalue)
    assert PairedDifference((2.0, 2.0, 2.0)).p_value == 0.0 and PairedDifference((0.0, 0.0)).p_value == 1.0
    assert PairedDifference((3.0,)).p_value is None


def test_holm_adjusts_as_by_hand():
    # Sorted 0.01, 0.03, 0.04, 0.2: x4 = 0.04, x3 = 0.09, x2 = 0.08 -> 0.09 (monotone), x1 = 0.2.
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    # Sorted 0.02, 0.5, 0.6: x3 = 0.06, x2 = 1.0 (capped), x1 = 0.6 -> 1.0.
    assert holm([0.6, 0.02, 0.5]) == pytest.approx([1.0, 0.06, 1.0])
    assert holm([]) == []


def _alone(diffs):
    """The label of one comparison that is its own family."""
    return judge([Cell(PairedDifference(diffs))])[0][1]


@pytest.mark.parametrize("diffs, expected", [
    ((5.0, 6.0, 7.0), HELPS),                        # interval [3.5, 8.5], p = 0.009
    ((-5.0, -6.0, -7.0), HURTS),
    ((0.5, 0.6, 0.7), "equivalent within 1 point"),  # significant, but under the 1-point threshold
    ((0.1, 0.2, 0.3), "equivalent within 1 point"),  # [-0.05, 0.45]
    ((1.0, 1.5, 2.0), HELPS),                        # [0.26, 2.74], p = 0.035
    ((-1.0, 0.0, 1.0), "equivalent within 3 points"),  # [-2.48, 2.48]
    ((1.0, 2.0, 4.0), INCONCLUSIVE),                 # [-1.5, 6.2]: wide, contains 0
    ((9.0,), TOO_FEW),
])
def test_labels(diffs, expected):
    assert THRESHOLD_POINTS == 1.0
    assert _alone(diffs) == expected


def test_both_arms_at_the_floor_is_not_measurable():
    assert judge([Cell(PairedDifference((5.0, 6.0, 7.0)), measurable=False)]) == [(None, NOT_MEASURABLE)]
    assert label(PairedDifference((5.0, 6.0, 7.0)), 0.001, measurable=False) == NOT_MEASURABLE
    # Within 3 points of chance (0.10) or of the untrained model (0.49): at the floor.
    assert at_floor(0.12, chance=0.1, untrained=0.49) and at_floor(0.47, chance=0.1, untrained=0.49)
    assert not at_floor(0.20, chance=0.1, untrained=0.49) and not at_floor(0.70, chance=0.5, untrained=0.49)
    assert at_floor(0.52, chance=0.5, untrained=None)


def test_significant_alone_is_not_helps_after_holm():
    lone = PairedDifference((1.0, 1.5, 2.0))
    assert lone.p_value == pytest.approx(0.0353, abs=1e-3) and _alone(lone.differences) == HELPS
    others = [PairedDifference((1.0, 2.0, 4.0)), PairedDifference((-1.0, 0.0, 1.0))]
    judged = judge([Cell(lone), *(Cell(o) for o in others)])
    adjusted = holm([lone.p_value, others[0].p_value, others[1].p_value])
    assert [p for p, _ in judged] == pytest.approx(adjusted)
    assert judged[0][0] == pytest.approx(3 * lone.p_value) and judged[0][0] >= 0.05
    assert judged[0][1] == "equivalent within 3 points"  # [0.26, 2.74]: no longer helps
    # A not-measurable cell is not in the family: it does not raise the others' p-values.
    judged = judge([Cell(lone), Cell(others[0], measurable=False)])
    assert judged[0] == (pytest.approx(lone.p_value), HELPS) and judged[1] == (None, NOT_MEASURABLE)


def test_paired_uses_the_seeds_both_have_in_points():
    diff = paired({0: 0.70, 1: 0.80, 2: 0.75}, {0: 0.60, 2: 0.70, 3: 0.1})
    assert diff.differences == pytest.approx((10.0, 5.0))
    assert paired({0: 0.5}, {1: 0.5}) is None


def test_overall_verdict_of_a_setting():
    within = "equivalent within 2 points"
    assert overall([INCONCLUSIVE, HELPS, within]) == HELPS
    assert overall([HURTS, INCONCLUSIVE]) == HURTS
    assert overall([HURTS, HELPS]) == "mixed"
    assert overall([within, "equivalent within 1 point", NOT_MEASURABLE]) == "does nothing"
    assert overall([within, INCONCLUSIVE]) == INCONCLUSIVE
    assert overall([NOT_MEASURABLE, NOT_MEASURABLE]) == NOT_MEASURABLE
    assert overall([TOO_FEW, TOO_FEW]) == TOO_FEW
    assert overall([]) == "not run"


def _run(setting, strategy, seed, values, study="main", untrained=0.5):
    """A run whose OOD accuracy is ``values`` in rounds 1.. (ID accuracy rising)."""
    rounds = [{"round": 0, "ood-accuracy": untrained, "id-accuracy": 0.5}]
    rounds += [{"round": i, "ood-accuracy": v, "id-accuracy": 0.5 + 0.01 * i} for i, v in enumerate(values, 1)]
    return report.Run(f"{setting}_{strategy}_{seed}", setting, strategy, seed, (study,), 3, None, 0.01, rounds)


def _binary_iid(seed, base, ws, control):
    """ws gains 8 points over FedAvg, and so does its no-mask control."""
    return [_run("binary-iid", "FedAvg", seed, [base + 0.05, base]),
            _run("binary-iid", ws, seed, [base + 0.13, base + 0.08 + 0.002 * seed]),
            _run("binary-iid", control, seed, [base + 0.13, base + 0.08])]


def test_mask_comparisons_judge_fedgma_against_its_control_not_fedavg():
    # ws gains 8 points over FedAvg everywhere, but its no-mask control gains 8 too.
    ws, control = "FedGMA ws, eta_s=1", "FedAvg, server step 2 (no mask)"
    runs = []
    for seed, base in enumerate((0.60, 0.65, 0.62)):
        runs += _binary_iid(seed, base, ws, control)
    lines = report.mask_comparisons(runs, "main")
    against_fedavg = next(ln for ln in lines if ln.startswith(f"| binary, IID | {ws} | FedAvg |"))
    against_control = next(ln for ln in lines if ln.startswith(f"| binary, IID | {ws} | {control} |"))
    # Primary: the mean of the (two) trained rounds; ws - FedAvg per seed = 8 + 0.1 * seed points.
    primary_vs_avg = PairedDifference((8.0, 8.1, 8.2))
    assert f"| {primary_vs_avg.format()} |" in against_fedavg and f"| {HELPS} |" in against_fedavg
    assert "| equivalent within 1 point |" in against_control
    verdict = next(ln for ln in lines if ln.startswith("- **binary, IID**"))
    assert verdict.startswith("- **binary, IID**: does nothing (")
    assert any("Holm over this table's 2 measurable comparisons" in ln for ln in lines)


def test_the_readme_summary_gives_each_settings_verdict_and_spells_out_the_decisive_ones():
    ws, control = "FedGMA ws, eta_s=1", "FedAvg, server step 2 (no mask)"
    runs = []
    for seed, base in enumerate((0.60, 0.65, 0.62)):
        runs += [*_binary_iid(seed, base, ws, control),
                 # At the paper's step the mask holds ws 10 points below its control.
                 _run("binary-non-iid", ws, seed, [base, base - 0.001 * seed], "client-step"),
                 _run("binary-non-iid", control, seed, [base + 0.1, base + 0.1], "client-step")]
    summary = report.full_summary(runs, "fashion-mnist").splitlines()
    assert summary[0].startswith("**Does the mask matter?** From the full grid on colored fashion-mnist")
    assert summary[2] == ("- The grid's client step (0.01): binary, IID *does nothing*. No comparison is labelled "
                          "*helps* or *hurts*.")
    behind = report.mask_verdicts(runs, "client-step")["binary-non-iid"]
    assert behind[0] == HURTS and f"{ws} vs {control}: " in behind[1][0]
    assert summary[3] == (f"- The paper's client step (0.01): binary, non-IID *{HURTS}*. Decisive: {behind[1][0]}.")


def test_two_models_at_chance_get_no_verdict():
    ws = "FedGMA ws, eta_s=1"
    runs = []
    for seed in range(3):
        runs += [_run("ten-class-iid", "FedAvg", seed, [0.10, 0.09 + 0.01 * seed], untrained=0.1),
                 _run("ten-class-iid", ws, seed, [0.12, 0.12 + 0.01 * seed], untrained=0.1)]
    line = next(ln for ln in report.mask_comparisons(runs, "main") if ln.startswith(f"| 10-class, IID | {ws} |"))
    assert f"| - | {NOT_MEASURABLE} |" in line
