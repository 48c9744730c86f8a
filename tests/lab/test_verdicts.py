"""The numbers behind 'does the mask matter?': paired differences, t intervals, verdicts."""

import math
import statistics

import pytest

from fedgma.lab.experiments import report
from fedgma.lab.experiments.verdicts import (
    HELPS,
    HURTS,
    NO_EFFECT,
    THRESHOLD_POINTS,
    TOO_FEW,
    PairedDifference,
    overall,
    paired,
    t975,
)


def test_t_quantiles_match_the_tables():
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(9) == 2.262 and t975(30) == 2.042
    assert t975(200) == 1.96
    with pytest.raises(ValueError):
        t975(0)


def test_interval_is_the_t_interval_of_the_per_seed_differences():
    diffs = (1.0, 2.0, 4.0)
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = 4.303 * sd / math.sqrt(3)
    low, high = PairedDifference(diffs).interval
    assert low == pytest.approx(mean - half) and high == pytest.approx(mean + half)
    assert PairedDifference(diffs).format() == f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}] (n=3)"


@pytest.mark.parametrize("diffs, verdict", [
    ((5.0, 6.0, 7.0), HELPS),            # interval [3.5, 8.5]
    ((-5.0, -6.0, -7.0), HURTS),
    ((1.0, 2.0, 4.0), NO_EFFECT),         # interval crosses 0
    ((0.5, 0.6, 0.7), NO_EFFECT),         # above 0, but under the threshold
    ((-0.5, -0.6, -0.7), NO_EFFECT),
    ((9.0,), TOO_FEW),
])
def test_verdicts(diffs, verdict):
    assert THRESHOLD_POINTS == 1.0
    assert PairedDifference(diffs).verdict == verdict


def test_paired_uses_the_seeds_both_have_in_points():
    diff = paired({0: 0.70, 1: 0.80, 2: 0.75}, {0: 0.60, 2: 0.70, 3: 0.1})
    assert diff.differences == pytest.approx((10.0, 5.0))
    assert paired({0: 0.5}, {1: 0.5}) is None


def test_overall_verdict_of_a_setting():
    assert overall([NO_EFFECT, HELPS, NO_EFFECT]) == HELPS
    assert overall([HURTS, NO_EFFECT]) == HURTS
    assert overall([HURTS, HELPS]).startswith("mixed")
    assert overall([NO_EFFECT, TOO_FEW]) == NO_EFFECT
    assert overall([TOO_FEW, TOO_FEW]) == TOO_FEW


def _run(setting, strategy, seed, peak, final, study="main"):
    rounds = [{"round": 0, "ood-accuracy": 0.5}, {"round": 1, "ood-accuracy": peak},
              {"round": 2, "ood-accuracy": final}]
    return report.Run(f"{setting}_{strategy}_{seed}", setting, strategy, seed, (study,), 3, None, 0.01, rounds)


def test_mask_comparisons_judge_fedgma_against_its_control_not_fedavg():
    # ws gains 8 points over FedAvg everywhere, but its no-mask control gains 8 too.
    ws, control = "FedGMA ws, eta_s=1", "FedAvg, server step 2 (no mask)"
    runs = []
    for seed, base in enumerate((0.60, 0.65, 0.62)):
        runs += [_run("binary-iid", "FedAvg", seed, base + 0.05, base),
                 _run("binary-iid", ws, seed, base + 0.13, base + 0.08 + 0.002 * seed),
                 _run("binary-iid", control, seed, base + 0.13, base + 0.08)]
    lines = report.mask_comparisons(runs, "main")
    against_fedavg = next(ln for ln in lines if ln.startswith(f"| binary, IID | {ws} | FedAvg |"))
    against_control = next(ln for ln in lines if ln.startswith(f"| binary, IID | {ws} | {control} |"))
    final_vs_avg = PairedDifference((8.0, 8.2, 8.4))
    assert final_vs_avg.verdict == HELPS and final_vs_avg.format() in against_fedavg
    assert f"final: {NO_EFFECT}" in against_control and f"peak: {NO_EFFECT}" in against_control
    verdict = next(ln for ln in lines if ln.startswith("- **binary, IID**"))
    assert verdict.startswith(f"- **binary, IID**: {NO_EFFECT} (")
