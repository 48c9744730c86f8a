"""The "when does the mask help?" grid: its runs, their order, their controls, and its time plan."""

import json
import shutil
from pathlib import Path

import pytest

from fedgma.app.outputs import RunOutputs
from fedgma.app.server_app import run_directory
from fedgma.lab.experiments.comparisons import rise_note
from fedgma.lab.experiments.grids import (
    ARMS,
    BASELINE,
    NO_MASK_CONTROLS,
    PARTICIPATION,
    RANDOM_CONTROLS,
    STEP_CONTROLS,
    WHEN_BUDGET_RUNS,
    WHEN_LABELS,
    build_when_grid,
    grid_by_name,
)
from fedgma.lab.experiments.pace import Pace
from fedgma.lab.experiments.results import grid_run_folders
from fedgma.lab.experiments.runner import MADE_FILE, START_UP_SECONDS, GridRunner
from fedgma.lab.experiments.runs import Run, load_runs
from fedgma.lab.experiments.when_report import run_time

RESULTS = Path(__file__).parents[2] / "results"


def test_the_most_informative_runs_come_first():
    grid = grid_by_name("when")
    runs = grid.runs + grid.cut  # the whole plan: the budget keeps its first runs
    settings = [spec.setting for spec in runs]
    first = {"opposite-partial", "majority-partial", "private-partial"}
    then = {"opposite-full", "majority-full", "private-full"}
    # Full participation without ws eta_s=0.1 and its two controls (cut to fit the budget): 7 arms,
    # 3 seeds; its other 2 seeds come late, then the same-sign contrast: where the budget may end the grid.
    assert set(settings[:150]) == first and set(settings[150:213]) == then == set(settings[-60:-18])
    assert {spec.seed for spec in runs[150:213]} == {0, 1, 2} and {spec.seed for spec in runs[-60:-18]} == {3, 4}
    # Within seeds 0-2, ws eta_s=1 with FedAvg, its no-mask control and its random mask (36 runs) before gma's.
    ws_first = {BASELINE, "FedGMA ws, eta_s=1", NO_MASK_CONTROLS["FedGMA ws, eta_s=1"],
                RANDOM_CONTROLS["FedGMA ws, eta_s=1"]}
    assert {spec.label for spec in runs[150:186]} == ws_first
    assert not ws_first & {spec.label for spec in runs[186:213]}
    assert [spec.seed for spec in runs[150:162]] == [0] * 12
    assert set(settings[-18:]) == {"same-partial"}
    assert not any("eta_s=0.1" in spec.label or "step 1.1" in spec.label for spec in runs if spec.setting in then)
    order = [s for i, s in enumerate(settings) if s not in settings[:i]]
    assert order[6:] == ["binary-non-iid", "ten-class-rho0.8", "ten-class-rho0.9", "same-partial"]
    assert len(runs) == 150 + 63 + 21 + 24 + 42 + 18
    # Seed-major within a phase: an interrupted phase has all arms of its first seeds.
    assert [spec.seed for spec in runs[:30]] == [0] * 30
    assert len({spec.name for spec in runs}) == len(runs)


def test_the_budget_keeps_the_plans_first_runs_whole_setting_by_setting():
    grid = grid_by_name("when")
    plan = build_when_grid("when", grid.scale, grid.description, seeds=(0, 1, 2, 3, 4), contrast_seeds=(0, 1, 2))
    assert not plan.cut and grid.runs + grid.cut == plan.runs
    if WHEN_BUDGET_RUNS is not None:
        assert len(grid.runs) == WHEN_BUDGET_RUNS
    # The cut falls between two settings' blocks of a seed, never inside one (an arm without its references).
    if grid.runs and grid.cut:
        last, first_cut = grid.runs[-1], grid.cut[0]
        assert (last.setting, last.seed) != (first_cut.setting, first_cut.seed)


def test_every_fedgma_arm_runs_beside_its_controls():
    arms = {(spec.setting, spec.seed, spec.label) for spec in grid_by_name("when").runs}
    for setting, seed, label in arms:
        if label not in RANDOM_CONTROLS:
            continue
        assert (setting, seed, BASELINE) in arms and (setting, seed, NO_MASK_CONTROLS[label]) in arms
        if setting.startswith(("opposite", "majority", "private")):  # the settings the mask was designed for
            assert (setting, seed, RANDOM_CONTROLS[label]) in arms
            assert label not in STEP_CONTROLS or (setting, seed, STEP_CONTROLS[label]) in arms


def test_partial_participation_samples_ten_of_fifty_clients_of_the_same_size():
    for spec in grid_by_name("when").runs:
        config = spec.run_config
        if spec.setting.endswith("-partial"):
            assert spec.clients == 50 and config["fraction-train"] == 0.2 and config["min-nodes"] == 10
        else:
            assert spec.clients == 10 and config["fraction-train"] == 1.0
        # 500 training images per client either way, so a round trains on 5,000 images.
        assert config["train-images"] == 500 * spec.clients
    assert PARTICIPATION["partial"]["clients"] == 50


def test_controls_are_the_arms_they_control_with_only_the_mask_changed():
    for label, control in {**RANDOM_CONTROLS, **STEP_CONTROLS}.items():
        arm, other = dict(ARMS[label][1]), dict(ARMS[control][1])
        assert other.pop("mask-control") in {"random", "uniform"}
        assert arm == other


def test_the_full_grids_binary_non_iid_runs_can_stand_as_references(tmp_path):
    """The when grid's binary non-IID references are the full grid's runs, unchanged, so their
    committed folders count as finished there (they are copied, not run again)."""
    full = {spec.name: spec for spec in grid_by_name("full").runs}
    when = grid_by_name("when")
    shared = [spec for spec in when.runs + when.cut if spec.name in full]  # its plan, cut runs included
    assert {spec.label for spec in shared} == {BASELINE, "FedGMA ws, eta_s=1", "FedAvg, server step 2 (no mask)",
                                               "FedGMA gma, tau=0.4"}
    assert len(shared) == 12
    runner = GridRunner(grid_by_name("when"), tmp_path)
    for spec in shared:
        assert spec.run_config == full[spec.name].run_config
        shutil.copytree(RESULTS / "full" / "runs" / spec.name, runner.runs_dir / spec.name)
        assert runner.is_finished(spec)


def _finish(runner: GridRunner, spec, wall_seconds: float) -> None:
    config = runner.validated(spec)
    outputs = RunOutputs(run_directory(config, 1, runner.runs_dir))
    outputs.write_config(config, {"run-id": 1})
    for number in range(spec.rounds + 1):
        outputs.add_row({"round": number, "wall-seconds": wall_seconds * number / spec.rounds,
                         "id-accuracy": 0.9, "ood-accuracy": 0.5})
    outputs.write_summary(spec.label)


def test_time_left_is_planned_from_the_measured_time_per_round(tmp_path):
    runner = GridRunner(grid_by_name("when").uncut(), tmp_path)
    runs = runner.grid.runs
    assert runner.time_left(runner.status()) is None
    partial = [spec for spec in runs if spec.clients == 50 and spec.run_config["task"] == "binary"]
    full = [spec for spec in runs if spec.clients == 10 and spec.run_config["task"] == "binary"]
    _finish(runner, partial[0], 150.0)  # 3 s per round
    _finish(runner, partial[1], 100.0)  # 2 s per round
    _finish(runner, full[0], 50.0)  # 1 s per round
    status = runner.status()
    left = runner.time_left(status)
    assert left is not None and left.runs == len(runs) - 3
    todo = [spec for spec, finished in status if not finished]
    overall = (2.5 + 1.0) / 2  # ten-class runs: none measured, the mean of the kinds
    expected = sum(spec.rounds * (2.5 if spec.clients == 50 and spec.run_config["task"] == "binary" else
                                  1.0 if spec.run_config["task"] == "binary" else overall) + START_UP_SECONDS
                   for spec in todo)
    assert left.seconds == pytest.approx(expected)
    assert "binary, 50 clients 2.50 s (2 runs, jobs not recorded)" in left.format()
    assert "ten-class, 10 clients: none finished yet, planned at the mean of the kinds" in left.format()

    # Where the grid recorded how runs were made, those runs are what count, each with its share
    # of the machine: a run made two at once at 8 s per round took the grid 4 s per round.
    _finish(runner, partial[2], 400.0)
    (runner.folder(partial[2]).path / MADE_FILE).write_text(json.dumps({"jobs": 2}))
    made = runner.time_left(runner.status()).pace
    assert made.per_round["binary, 50 clients"] == pytest.approx(4.0)
    assert made.guessed == ("binary, 10 clients",)
    (runner.folder(partial[0]).path / MADE_FILE).write_text(json.dumps({"jobs": 1}))
    made = runner.time_left(runner.status()).pace
    assert made.per_round["binary, 50 clients"] == pytest.approx((150.0 + 400.0 / 2) / 100)
    assert made.clock_seconds == pytest.approx(150 + 100 + 50 + 400)
    assert made.wall_seconds == pytest.approx(150 + 100 + 50 + 200) and made.unrecorded == 2


def test_the_progress_line_counts_down_the_plan_grid_status_gives():
    """One estimate, not two: a grid's progress line starts from the plan ``grid status`` prints
    and takes off each round its kind's planned seconds."""
    from fedgma.lab.experiments.runner import _Progress, format_seconds

    runs = grid_by_name("when").uncut().runs
    partial = [spec for spec in runs if spec.clients == 50][:2]
    ten_class = next(spec for spec in runs if spec.run_config["task"] == "ten-class")
    made = Pace({"binary, 50 clients": 4.0}, {"binary, 50 clients": 3}, (), 1.0, 1.0, 0)
    todo = [*partial, ten_class]
    progress = _Progress(todo, made)
    planned = sum(spec.rounds * 4.0 + START_UP_SECONDS for spec in todo)  # ten-class: the kinds' mean, 4 s
    assert progress.add(partial[0], 1).endswith(
        f"remaining ~{format_seconds(planned - 4.0)} at the finished runs' pace")
    progress.skip(partial[1], partial[1].rounds, ended=True)  # failed before its first round
    assert f"remaining ~{format_seconds(planned - 8.0 - partial[1].rounds * 4.0 - START_UP_SECONDS)} " in (
        progress.add(ten_class, 1))
    # Before any run has finished there is no pace: the invocation's own rate.
    assert "remaining ~" in _Progress(todo).add(partial[0], 1)


def test_every_when_arm_is_a_valid_run(tmp_path):
    runner = GridRunner(grid_by_name("when").uncut(), tmp_path)
    labels = {spec.label for spec in runner.grid.runs}
    assert set(WHEN_LABELS) <= labels
    for spec in runner.grid.runs:
        config = runner.validated(spec)
        if "random mask" in spec.label:
            assert config.strategy.mask_control == "random"
        if "uniform step" in spec.label:
            assert config.strategy.mask_control == "uniform" and config.strategy.variant == "gma"


def _curve(name: str, label: str, values: list[float]) -> Run:
    rounds = [{"round": 0.0, "plain-accuracy": 0.5, "id-accuracy": 0.5}]
    rounds += [{"round": float(i + 1), "plain-accuracy": v, "id-accuracy": 0.9} for i, v in enumerate(values)]
    return Run(name, "opposite-full", label, 0, ("when",), 3, None, 0.01, rounds)


def test_a_curve_still_rising_is_named_and_a_flat_one_is_not():
    rising = _curve("a", BASELINE, [0.5 + 0.01 * i for i in range(30)])
    flat = _curve("b", "FedGMA ws, eta_s=1", [0.7] * 30)
    # The last 10 rounds (i = 20..29) against the 10 before (10..19): 10 points higher.
    assert rising.rise("plain") == pytest.approx(10.0) and flat.rise("plain") == pytest.approx(0.0)
    assert _curve("c", BASELINE, [0.7] * 19).rise("plain") is None
    note = rise_note([rising, flat], "opposite-full", [BASELINE, "FedGMA ws, eta_s=1"], "when")
    assert note is not None and note.startswith("*Still rising*") and f"{BASELINE} +10.0" in note
    assert "eta_s=1" not in note
    assert rise_note([flat], "opposite-full", ["FedGMA ws, eta_s=1"], "when").startswith(
        "*The curves have stopped rising*")


def test_the_reports_run_time_is_the_grids_pace(tmp_path):
    runner = GridRunner(grid_by_name("when").uncut(), tmp_path)
    runner.write_manifest()
    by_setting = {spec.setting: spec for spec in reversed(runner.grid.runs)}
    _finish(runner, by_setting["opposite-full"], 100.0)
    _finish(runner, by_setting["binary-non-iid"], 50.0)
    _finish(runner, by_setting["opposite-partial"], 300.0)
    _finish(runner, by_setting["ten-class-rho0.8"], 3600.0)
    (runner.folder(by_setting["opposite-partial"]).path / MADE_FILE).write_text(json.dumps({"jobs": 2}))
    runner.write_combined()
    line = run_time(grid_run_folders(tmp_path), load_runs(tmp_path), runner.grid.scale.clients)
    # Of the runs this grid made (binary non-IID's FedAvg seed 0 is the full grid's, reused), 4,000 s
    # on their clocks; the run made two at once counts half of its 300 s.
    assert line.startswith("Run time: the grid's wall time about 1:04:10 (h:mm:ss")
    assert "2 runs made before the grid recorded how many ran at once count in full" in line
    assert "start-up between runs and the 1 runs reused from the full grid not counted" in line
    assert "these runs' own clocks sum to 1:06:40" in line
    # Every run's pace, as grid status plans from: binary with 10 clients 150 s over 100 rounds;
    # 50 clients 150 s over 50; 10-class 36 s.
    assert ("per round: binary, 10 clients 1.50 s (2 runs, jobs not recorded), binary, 50 clients 3.00 s "
            "(1 runs), ten-class, 10 clients 36.00 s (1 runs, jobs not recorded).") in line


def test_a_settings_word_shows_what_it_rests_on():
    from fedgma.lab.experiments.when_report import SettingVerdict

    nothing = SettingVerdict("does nothing", [], [], [], ["equivalent within 1 point", "equivalent within 5 points"])
    assert nothing.wording() == "the mask does nothing (every comparison equivalent, the widest within 5 points)"
    assert nothing.shown() == []
    one_seed = SettingVerdict("does nothing", [], [], [],
                              ["equivalent within 2 points", "too few seeds", "too few seeds"])
    assert one_seed.wording() == ("the mask does nothing (every comparison with two or more seeds equivalent, the "
                                  "widest within 2 points; 2 with one seed, not judged)")
    unsure = SettingVerdict("inconclusive", [], [], [], ["inconclusive", "equivalent within 1 point"],
                            ["ws vs its no-mask control: +0.6 [-4.8, +5.9] (n=3) *inconclusive*"])
    assert unsure.wording() == "inconclusive" and unsure.shown() == unsure.undecided
    helps = SettingVerdict("helps", ["gma vs its random mask: +3.0 [+1.0, +5.0] (n=5) *helps*"], [], [],
                           ["helps", "inconclusive"], ["ws vs its random mask: +0.1 [-4.0, +4.2] (n=5) *inconclusive*"])
    assert helps.wording() == "the mask helps" and helps.shown() == helps.decisive
    assert SettingVerdict("not run", [], [], []).wording() == "not run yet"


def test_the_answer_in_short_groups_the_settings_by_their_verdict():
    from fedgma.lab.experiments.when_report import SettingVerdict, in_short

    def verdict(word: str) -> SettingVerdict:
        return SettingVerdict(word, [], [], [])

    verdicts = {"opposite-partial": verdict("does nothing"), "private-partial": verdict("does nothing"),
                "majority-full": verdict("hurts"), "same-partial": verdict("not run")}
    assert in_short(verdicts) == (
        "**In short:** of the when grid's 3 settings with finished runs, the mask helps in none and hurts in 1 "
        "(majority sign (70/30), full participation). It does nothing in 2 (opposite signs, partial participation; "
        "private markers, partial participation) and has not run in 1 (same sign, partial participation).")
    assert in_short({"opposite-full": verdict("helps")}) == (
        "**In short:** of the when grid's 1 setting with finished runs, the mask helps in 1 (opposite signs, full "
        "participation) and hurts in none.")


def test_the_manifest_names_the_cut_runs_and_the_answer_says_what_was_cut(tmp_path):
    from dataclasses import replace

    from fedgma.lab.experiments.results import read_manifest
    from fedgma.lab.experiments.when_report import cut_by_budget

    plan = grid_by_name("when").uncut()
    kept = [spec for spec in plan.runs if spec.setting == "opposite-partial" and spec.seed < 4]
    cut = [spec for spec in plan.runs if spec.setting == "same-partial" or
           (spec.setting == "opposite-partial" and spec.seed == 4)]
    runner = GridRunner(replace(plan, runs=tuple(kept), cut=tuple(cut)), tmp_path)
    runner.write_manifest()
    manifest = read_manifest(tmp_path)
    assert manifest is not None and len(manifest["runs"]) == 40
    assert [run["name"] for run in manifest["cut"]] == [spec.name for spec in cut]
    assert cut_by_budget(manifest) == (
        " Cut before they ran, to fit the grid's budget of machine time (28 runs): every run of same sign, "
        "partial participation (18 runs), and some seeds or arms of opposite signs, partial participation (10 runs).")
    assert cut_by_budget({**manifest, "cut": []}) == "" and cut_by_budget({"runs": []}) == ""
