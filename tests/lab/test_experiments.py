"""Experiment grids, the combined CSV, the report's numbers and the toy figure (no Flower processes)."""

import csv
import json
import statistics
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from fedgma.app.outputs import RunOutputs
from fedgma.app.run_folder import METRIC_COLUMNS
from fedgma.app.server_app import run_directory
from fedgma.app.settings import parse_run_config
from fedgma.deployment.app_folder import app_defaults
from fedgma.lab.experiments import report, toy, when_report
from fedgma.lab.experiments.comparisons import write_block
from fedgma.lab.experiments.grids import (
    ABLATION_TAUS,
    ARMS,
    MAIN_LABELS,
    NO_MASK_CONTROLS,
    PAPER_STEP_LABELS,
    RANDOM_CONTROLS,
    SETTING_TITLES,
    SETTINGS,
    grid_by_name,
)
from fedgma.lab.experiments.runner import GridMismatch, GridRunner


def test_full_grid_has_every_setting_strategy_and_seed_once():
    grid = grid_by_name("full")
    names = [run.name for run in grid.runs]
    assert len(names) == len(set(names))
    main = [r for r in grid.runs if "main" in r.studies]
    assert len(main) == len(SETTINGS) * len(MAIN_LABELS) * 3
    for setting in SETTINGS:
        for label in MAIN_LABELS:
            assert sorted(r.seed for r in main if (r.setting, r.label) == (setting, label)) == [0, 1, 2]
    rounds = {r.setting: r.run_config["num-server-rounds"] for r in main}
    assert rounds == {"binary-iid": 50, "binary-non-iid": 50, "ten-class-iid": 100, "ten-class-non-iid": 100}
    taus = sorted({r.run_config["tau"] for r in grid.runs if "tau" in r.studies})
    assert taus == list(ABLATION_TAUS)
    # tau = 0.8 and E = 3 are the main runs themselves, not copies.
    shared = [r for r in grid.runs if set(r.studies) == {"main", "tau", "epochs"}]
    assert len(shared) == 3 and all(r.label == "FedGMA ws, eta_s=1" for r in shared)
    epochs = sorted({r.run_config["local-epochs"] for r in grid.runs if "epochs" in r.studies})
    assert epochs == [1, 3, 5]
    # The tau = 0 run is binary non-IID's no-mask control at eta_s = 1: one run, both studies.
    tau0 = [r for r in grid.runs if "tau" in r.studies and r.run_config["tau"] == 0.0]
    assert len(tau0) == 3 and all(r.studies == ("main", "tau") for r in tau0)
    assert {r.label for r in tau0} == {NO_MASK_CONTROLS["FedGMA ws, eta_s=1"]}
    # The paper's client step: binary settings, 6 strategies, 3 seeds, 50 rounds.
    paper = [r for r in grid.runs if "client-step" in r.studies]
    assert len(paper) == 2 * len(PAPER_STEP_LABELS) * 3 and {r.studies for r in paper} == {("client-step",)}
    assert {r.run_config["client-lr"] for r in paper} == {0.001}
    assert {r.setting for r in paper} == {"binary-iid", "binary-non-iid"}
    assert {r.run_config["num-server-rounds"] for r in paper} == {50}
    assert {r.run_config["client-lr"] for r in grid.runs if "client-step" not in r.studies} == {0.01}
    assert len(grid.runs) == 96 + 3 * (5 + 4) + 9 + 36


def test_no_mask_controls_are_fedgma_ws_with_the_mask_open():
    for label, control in NO_MASK_CONTROLS.items():
        fedgma, open_mask = ARMS[label][1], ARMS[control][1]
        if control == "FedAvg":  # gma at eta_s = 1 with m = 1 is FedAvg
            assert fedgma["variant"] == "gma" and fedgma["server-lr"] == 1.0
            continue
        assert open_mask == {**fedgma, "tau": 0.0}
        assert control == f"FedAvg, server step {1 + fedgma['server-lr']:g} (no mask)"


def test_grid_keeps_every_committed_run_as_it_was():
    committed = json.loads((Path(__file__).parents[2] / "results" / "full" / "grid.json").read_text())
    grid = {r.name: r for r in grid_by_name("full").runs}
    for run in committed["runs"]:
        assert grid[run["name"]].run_config == run["run-config"], run["name"]


@pytest.mark.parametrize("name", ["full", "quick", "smoke"])
def test_every_run_of_every_grid_is_a_valid_run_config(name, tmp_path):
    runner = GridRunner(grid_by_name(name), tmp_path)
    for spec in runner.grid.runs:
        config = runner.validated(spec)
        assert config.outputs.run_name == spec.name and config.task.seed == spec.seed


def test_quick_grid_has_the_full_grids_runs_with_fewer_rounds():
    full, quick = grid_by_name("full"), grid_by_name("quick")
    assert {r.name for r in quick.runs} == {r.name for r in full.runs if r.seed == 0}
    assert all(r.run_config["num-server-rounds"] == 3 for r in quick.runs)


def fake_run(runner, spec, ood):
    """A finished run's files as the ServerApp writes them, where it puts them."""
    config = runner.validated(spec)
    outputs = RunOutputs(run_directory(config, 1, runner.runs_dir))
    outputs.write_config(config, {"run-id": 1})
    for round_number, acc in enumerate(ood):
        outputs.add_row({"round": round_number, "wall-seconds": round_number, "round-seconds": 1.0 + round_number,
                         "id-accuracy": 0.9, "ood-accuracy": acc, "mask-kept-fraction": 0.25})
    outputs.write_summary(spec.label)


def test_combined_csv_and_report_numbers(tmp_path):
    runner = GridRunner(grid_by_name("smoke"), tmp_path)
    runner.results_dir.mkdir(parents=True, exist_ok=True)
    runner.write_manifest()
    fedavg, fedgma, control, fedavg_paper, fedgma_paper = runner.grid.runs
    fake_run(runner, fedavg, [0.5, 0.6, 0.55])
    fake_run(runner, fedgma, [0.5, 0.7, 0.65])
    fake_run(runner, control, [0.5, 0.75, 0.6])
    fake_run(runner, fedavg_paper, [0.5, 0.3, 0.2])
    fake_run(runner, fedgma_paper, [0.5, 0.4, 0.1])
    assert all(finished for _, finished in runner.status())
    path = runner.write_combined()
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 15 and {r["run"] for r in rows} == {s.name for s in runner.grid.runs}
    assert {r["client-lr"] for r in rows if r["run"] == fedgma_paper.name} == {"0.001"}
    runs = {r.name: r for r in report.load_runs(tmp_path)}
    # Two trained rounds: the primary metric is their mean; ID accuracy ties, so its best round is round 1.
    assert runs[fedgma.name].primary("ood") == pytest.approx(0.675) and runs[fedgma.name].peak("ood") == 0.7
    assert runs[fedgma.name].final("ood") == 0.65 and runs[fedgma.name].best_id_round == 1
    assert runs[fedgma.name].seconds_per_round == 3.0  # rounds 2+ only: round-seconds 3
    text = report.build_markdown(tmp_path, tmp_path / "fig", tmp_path)
    line = next(ln for ln in text.splitlines() if ln.startswith("| FedGMA ws, eta_s=1 |"))
    assert line == "| FedGMA ws, eta_s=1 | 1 | 0.6750 | 0.7000 | 0.6500 | 0.9000 | +10.0 | 3.00 | 1 |"
    # Against its no-mask control: primary 0.675 - 0.675, at best-ID round 0.70 - 0.75, final 0.65 - 0.60;
    # one seed gives no interval and no label.
    line = next(ln for ln in text.splitlines() if "| FedAvg, server step 2 (no mask) |" in ln and "FedGMA" in ln)
    assert line.endswith("| +0.0 (n=1) | - | too few seeds | -5.0 (n=1) | +5.0 (n=1) |")
    # The paper's client step has its own table and comparison.
    assert "**binary, non-IID, the paper's client step 0.001, 2 rounds**" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("| binary, non-IID | FedGMA ws, eta_s=1 | FedAvg |")
                and "(n=1)" in ln and "-10.0" in ln)
    assert "| +10.0 (n=1) | -10.0 (n=1) |" in line
    for figure in ("figure2.png", "client_step.png"):
        assert (tmp_path / "fig" / figure).stat().st_size > 10_000
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.BEGIN}\nold\n{report.END}\nrest\n")
    write_block(readme, "new table\n", report.BEGIN, report.END)
    assert readme.read_text() == f"intro\n{report.BEGIN}\nnew table\n{report.END}\nrest\n"


def test_a_grid_with_output_dir_finds_its_runs_where_the_app_put_them(tmp_path):
    """output-dir=x: the app writes <runs>/x/<run-name>; the grid, its report and the probe look there."""
    from fedgma.lab.experiments.results import grid_run_folders

    runner = GridRunner(grid_by_name("smoke"), tmp_path, overrides={"output-dir": "x"})
    runner.results_dir.mkdir(parents=True, exist_ok=True)
    runner.write_manifest()
    for spec in runner.grid.runs:
        fake_run(runner, spec, [0.5, 0.6, 0.55])
        assert (runner.runs_dir / "x" / spec.name / "summary.json").is_file()
    assert all(finished for _, finished in runner.status())
    with runner.write_combined().open() as handle:
        assert len(list(csv.DictReader(handle))) == 3 * len(runner.grid.runs)
    folders = grid_run_folders(tmp_path)
    assert {name: f.path for name, f in folders.items()} == {
        s.name: runner.runs_dir / "x" / s.name for s in runner.grid.runs}
    assert report.build_markdown(tmp_path, tmp_path / "fig", tmp_path)  # reads a run's config.json there


def test_the_demo_finds_its_runs_where_the_app_puts_them(tmp_path):
    from fedgma.deployment.app_folder import app_dir
    from fedgma.lab import demo

    for extra in ({}, {"output-dir": "x"}, {"output-dir": "x/y"}):
        run_config = {"num-server-rounds": 1, "strategy": "fedavg", "run-name": "fedavg", **extra}
        config = parse_run_config({**app_defaults(), **run_config})
        assert demo.run_folder(tmp_path, app_dir(), run_config).path == run_directory(config, 1, tmp_path)


@pytest.mark.parametrize(("override", "named"), [("nosuchkey=1", "unknown key(s) ['nosuchkey']"),
                                                   ("partitioning=bogus", "'partitioning' must be one of")])
def test_the_demo_names_a_bad_setting_before_starting_flower(tmp_path, monkeypatch, capsys, override, named):
    import argparse

    from fedgma.deployment import flower
    from fedgma.deployment.app_folder import parse_override
    from fedgma.lab import demo

    def no_runtime(*args, **kwargs):
        raise AssertionError("a SuperLink was started for a run that cannot succeed")

    monkeypatch.setattr(demo, "SimulationRuntime", no_runtime)
    monkeypatch.setattr(flower, "SimulationRuntime", no_runtime)
    parser = argparse.ArgumentParser()
    demo.configure(parser)
    assert demo.main(parser.parse_args(["--output-dir", str(tmp_path), override])) == 2
    assert named in capsys.readouterr().err
    parse_override(override)  # the key=value form itself is fine: the setting is what is refused


def test_the_demo_refuses_two_different_round_counts_and_ends_a_timed_out_run_in_one_line(tmp_path, monkeypatch,
                                                                                          capsys):
    import argparse
    from types import SimpleNamespace

    from fedgma.lab import demo

    stopped = []

    class TimingOut:  # a runtime whose run never finishes within --timeout
        workdir = tmp_path / "runtime"
        cli = SimpleNamespace(submit=lambda *a: 7, stop_run=stopped.append,
                              wait=lambda run_id, timeout, **kw: (_ for _ in ()).throw(
                                  TimeoutError(f"run {run_id} still running after {timeout:.0f} s")))

        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(demo, "SimulationRuntime", TimingOut)
    parser = argparse.ArgumentParser()
    demo.configure(parser)
    args = ["--output-dir", str(tmp_path), "--timeout", "30"]
    for bad in (["--timeout", "0"], ["--timeout", "nan"], ["--clients", "0"], ["--rounds", "-1"]):
        with pytest.raises(SystemExit):  # argparse's usage error (exit 2), naming the option
            parser.parse_args(bad)
        assert f"argument {bad[0]}: expected" in capsys.readouterr().err
    assert demo.main(parser.parse_args([*args, "--rounds", "1", "num-server-rounds=3"])) == 2
    assert "num-server-rounds=3 and --rounds 1 disagree" in capsys.readouterr().err and not stopped
    assert demo.main(parser.parse_args([*args, "num-server-rounds=3"])) == 1  # the same as --rounds 3
    out, err = capsys.readouterr()
    assert "3 rounds" in out and stopped == [7]
    assert err.splitlines() == [f"fedgma demo: FedGMA (ws): run 7 still running after 30 s (--timeout 30); stopped. "
                                f"SuperLink log: {tmp_path / 'runtime' / 'superlink.log'}"]


def test_ctrl_c_ends_a_command_in_one_line_with_130(monkeypatch, capsys):
    from fedgma import cli
    from fedgma.lab import commands

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "run", interrupted)
    assert cli.main(["grid", "status", "smoke"]) == 130
    assert capsys.readouterr().err == "fedgma grid: interrupted\n"


def test_margin_is_the_mean_of_paired_seed_differences():
    def run(seed, final):
        return report.Run("r", "binary-iid", "x", seed, ("main",), 3, None, 0.01,
                          [{"round": 0, "ood-accuracy": 0.5}, {"round": 1, "ood-accuracy": final}])
    base = [run(0, 0.60), run(1, 0.70), run(2, 0.50)]
    ours = [run(0, 0.65), run(1, 0.71), run(2, 0.56)]
    diffs = [5.0, 1.0, 6.0]
    expected = f"{statistics.fmean(diffs):+.1f} ± {statistics.stdev(diffs):.1f}"
    assert report.margin(ours, base, lambda r: r.final("ood")) == expected == "+4.0 ± 2.6"


def test_a_finished_run_with_other_settings_is_refused(tmp_path):
    runner = GridRunner(grid_by_name("smoke"), tmp_path)
    spec = runner.grid.runs[0]
    fake_run(runner, spec, [0.5, 0.6, 0.6])
    other = GridRunner(grid_by_name("smoke"), tmp_path, overrides={"label-noise": 0.25})
    with pytest.raises(GridMismatch, match="label-noise"):
        other.is_finished(spec)
    unfinished = runner.grid.runs[1]
    (runner.runs_dir / unfinished.name).mkdir(parents=True)
    assert not runner.is_finished(unfinished)  # no summary: it will be run again


def test_toy_gma_with_tau_zero_is_fedavg_and_fedavg_reaches_a_client_minimum():
    start = (0.3, -0.9)
    fedavg = toy.trajectory(start, None)
    np.testing.assert_allclose(toy.trajectory(start, ("gma", 0.0, 1.0)), fedavg, atol=1e-12)
    assert toy.nearest_minimum(fedavg[-1]) == "A"
    # The average is lowest at the client minima, not at the shared one.
    points = np.array([toy.SHARED, *toy.CLIENT_MINIMA])
    average = (toy.client_loss(points, 0)[0] + toy.client_loss(points, 1)[0]) / 2
    assert average[1] < average[0] and average[2] < average[0]
    # Each client's gradient vanishes at the shared minimum (up to the other wells' tails).
    for client in (0, 1):
        assert np.linalg.norm(toy.client_loss(toy.SHARED, client)[1]) < 0.05


def test_app_defaults_are_the_pyproject_settings():
    assert parse_run_config(app_defaults()).strategy.name == "fedgma"
    assert json.dumps(app_defaults())  # plain values only


def test_metrics_differences_ignore_only_the_timings(tmp_path):
    from fedgma.app.run_folder import RunFolder
    from fedgma.lab.experiments.runner import metrics_differences

    header = "round,wall-seconds,id-accuracy,train-wait-seconds,replies-used\n"
    for name, rows in (("a", "0,1.5,0.5,,\n1,3.25,0.75,0.5,10\n"), ("b", "0,9.0,0.5,,\n1,20.0,0.75,7.0,10\n"),
                       ("c", "0,1.5,0.5,,\n1,3.25,0.7500001,0.5,10\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.csv").write_text(header + rows)
    a, b, c = (RunFolder(tmp_path / name) for name in "abc")
    assert metrics_differences(a, b) == []
    assert metrics_differences(a, c) == ["round 1 id-accuracy: 0.75 -> 0.7500001"]


def test_one_override_parser_reads_values_as_flowers_run_config_does():
    import argparse

    from fedgma.deployment.app_folder import parse_override, parse_overrides

    assert parse_override("tau=0.8") == ("tau", 0.8)
    assert parse_override("num-server-rounds=3") == ("num-server-rounds", 3)
    assert parse_override("agreement-weighted=true") == ("agreement-weighted", True)
    assert parse_override('run-name="a b"') == ("run-name", "a b")
    assert parse_override("strategy=fedavg") == ("strategy", "fedavg")  # a bare word: a string
    assert parse_override("tau=auto") == ("tau", "auto")
    assert parse_overrides("seed=2 run-name='x y' output-dir=\"\" resume=\"3\"") == {
        "seed": 2, "run-name": "x y", "output-dir": "", "resume": "3"}  # quoted: a string, as in Flower
    for bad in ("tau", "=3"):
        with pytest.raises(argparse.ArgumentTypeError, match="key=value"):
            parse_override(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="'stray'"):
        parse_overrides("seed=2 stray")


def test_a_tool_without_its_extra_says_which_install_it_needs(tmp_path):
    import subprocess
    import sys

    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from fedgma import cli\n"
            f"sys.exit(cli.main(['report', 'results/full', '--markdown', r'{tmp_path / 'r.md'}', "
            f"'--figures', r'{tmp_path}']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 2
    assert "needs matplotlib" in result.stderr and "fedgma[lab]" in result.stderr


def test_primary_peak_at_best_id_and_final_from_a_metrics_table():
    # Round 0 is the untrained model; rounds 1-12 trained. OOD peaks at round 1 (not chosen); ID is best
    # at rounds 3 and 7 (the first is chosen); the last 10 rounds (3-12) alternate 0.7 / 0.3 on OOD.
    ood = [0.50, 0.90, 0.60] + [0.7, 0.3] * 5
    id_ = [0.50, 0.55, 0.80, 0.95, 0.90, 0.90, 0.90, 0.95, 0.90, 0.90, 0.90, 0.90, 0.90]
    rounds = [{"round": r, "ood-accuracy": o, "id-accuracy": i, "plain-accuracy": None if r == 12 else 0.6 + r / 100}
              for r, (o, i) in enumerate(zip(ood, id_, strict=True))]
    run = report.Run("r", "binary-iid", "x", 0, ("main",), 3, None, 0.01, rounds)
    assert run.primary("ood") == pytest.approx(0.5)  # (5 x 0.7 + 5 x 0.3) / 10
    assert run.best_id_round == 3 and run.peak("ood") == 0.7
    assert run.final("ood") == 0.3 and run.untrained("ood") == 0.5
    assert run.swing("ood") == pytest.approx(37.0)  # rounds 2-12: |0.7 - 0.6| once, then 0.4 nine times
    # A blank cell is left out: plain accuracy over rounds 3-11 only, and its final is round 11's.
    assert run.primary("plain") == pytest.approx(statistics.fmean(0.6 + r / 100 for r in range(3, 12)))
    assert run.final("plain") == pytest.approx(0.71)
    assert run.primary("absent") is None and run.peak("absent") is None and run.final("absent") is None


def test_every_arm_and_contender_names_a_registered_strategy():
    from fedgma.app.strategies import STRATEGIES
    from fedgma.lab.demo import CONTENDERS

    names = {settings["strategy"] for _, settings in ARMS.values()} | {s["strategy"] for s in CONTENDERS.values()}
    assert names <= set(STRATEGIES)


def _when_grid_with_some_runs(results_dir):
    """A when-grid results folder as the runner writes it (grid.json, results.csv, each finished run's
    config.json), three arms of one setting finished for seeds 0-2 (the random mask, gma and every other
    setting not run), with the columns a newer app writes (plain test set, kept fraction per channel)."""
    from fedgma.lab.experiments.runner import RUN_COLUMNS

    grid = grid_by_name("when").uncut()  # its whole plan: 10-class and the contrasts too
    ws, control = "FedGMA ws, eta_s=1", "FedAvg, server step 2 (no mask)"
    # Plain accuracy (rounds 1-11): FedAvg 0.60 + 0.01 s; ws 10 + 0.2 s points above it; its control
    # 0.1 s points above ws. ID 0.9, OOD 0.5, kept fraction 0.25 (and 0.5 / 0.1 / 0.2 per channel) for ws.
    random = RANDOM_CONTROLS[ws]  # seed 0 only: one paired seed, too few to judge
    plain = {"FedAvg": lambda s: 0.60 + 0.01 * s, ws: lambda s: 0.70 + 0.012 * s, control: lambda s: 0.70 + 0.013 * s,
             random: lambda s: 0.696}
    chosen = [spec for spec in grid.runs if spec.setting == "opposite-partial" and spec.label in plain
              and spec.seed <= (0 if spec.label == random else 2)]
    assert len(chosen) == 10
    (results_dir / "runs").mkdir(parents=True)
    manifest = {"grid": grid.name, "description": grid.description, "scale": asdict(grid.scale), "overrides": {},
                "runs": [{"name": s.name, "folder": s.name, "setting": s.setting, "strategy": s.label, "seed": s.seed,
                          "studies": list(s.studies), "run-config": s.run_config} for s in grid.runs]}
    (results_dir / "grid.json").write_text(json.dumps(manifest))
    extra = ["plain-accuracy", "mask-kept-red", "mask-kept-green", "mask-kept-blue"]
    with (results_dir / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*RUN_COLUMNS, *METRIC_COLUMNS, *extra], lineterminator="\n")
        writer.writeheader()
        for spec in chosen:
            (results_dir / "runs" / spec.name).mkdir()
            (results_dir / "runs" / spec.name / "config.json").write_text(json.dumps(
                {"dataset": "fashion-mnist", "color_flip_min": 0.1, "color_flip_max": 0.2}))
            facts = {"run": spec.name, "setting": spec.setting, "strategy": spec.label, "seed": spec.seed,
                     "studies": "when", "dataset": "fashion-mnist", "local-epochs": 3, "tau": "", "server-lr": 1.0,
                     "client-lr": 0.01}
            for number in range(12):
                kept = spec.label == ws and number > 0
                kept_fraction = 0.25 if kept else 0.15 if spec.label == random and number > 0 else ""
                writer.writerow({**facts, "round": number, "round-seconds": 1, "id-accuracy": 0.9, "ood-accuracy": 0.5,
                                 "plain-accuracy": 0.5 if number == 0 else plain[spec.label](spec.seed),
                                 "mask-kept-fraction": kept_fraction, "mask-kept-red": 0.5 if kept else "",
                                 "mask-kept-green": 0.1 if kept else "", "mask-kept-blue": 0.2 if kept else ""})
    return ws, control


def test_the_when_report_judges_each_fedgma_arm_and_shows_what_has_not_run(tmp_path):
    from fedgma.lab.experiments.verdicts import PairedDifference

    ws, control = _when_grid_with_some_runs(tmp_path / "when")
    tables, summary = when_report.build_when_markdown(tmp_path / "when", tmp_path / "fig", tmp_path)
    lines = tables.splitlines()
    planned_runs = len(grid_by_name("when").uncut().runs)
    assert lines[0] == f"#### Grid `when` on colored fashion-mnist: 10 of {planned_runs} runs finished"
    titles = [ln for ln in lines if ln.startswith("**") and ("(primary test set:" in ln or "not run yet (0 of" in ln)]
    planned = {spec.setting for spec in grid_by_name("when").uncut().runs}  # "same-full" was cut from the grid
    assert [t.split("**")[1] for t in titles] == [SETTING_TITLES[s] for s in when_report.WHEN_ORDER if s in planned]
    assert "**majority sign (70/30), partial participation**: not run yet (0 of 50 runs)." in lines
    assert "**opposite signs, partial participation**, 11 rounds (primary test set: plain;" in tables
    # The arm's row: primary (plain, rounds 2-11) 0.712 mean over seeds 0-2, ID 0.9, secondary OOD 0.5,
    # the mask's kept fraction and the per-channel fractions (blank for the others: shown as absent).
    lines = tables.split("**opposite signs, partial participation**", 1)[1].split("\n**", 1)[0].splitlines()
    row = next(ln for ln in lines if ln.startswith(f"| {ws} | 3 of 5 |"))
    assert row == (f"| {ws} | 3 of 5 | 0.7120 ± 0.0120 | 0.7120 ± 0.0120 | 0.7120 ± 0.0120 | 0.9000 ± 0.0000 "
                   "| 0.5000 ± 0.0000 | 0.250 | - | 0.500 / 0.100 / 0.200 |")
    assert f"| {ws}, random mask | 1 of 5 |" in tables and "| FedGMA gma, tau=0.4 | not run yet (0 of 5) |" in tables
    # ws - FedAvg: 10.0, 10.2, 10.4 points; ws - its control: 0, -0.1, -0.2; Holm over these two.
    versus_avg, versus_control = PairedDifference((10.0, 10.2, 10.4)), PairedDifference((0.0, -0.1, -0.2))
    p_avg = min(1.0, 2 * min(versus_avg.p_value, versus_control.p_value))
    expected = f"| {ws} | FedAvg | FedAvg | {versus_avg.format()} | {p_avg:.3f} | helps |"
    assert expected in lines
    row = next(ln for ln in lines if ln.startswith(f"| {ws} | {control} | no-mask control |"))
    assert row.startswith(f"| {ws} | {control} | no-mask control | {versus_control.format()} |")
    assert row.endswith("| equivalent within 1 point |")
    assert f"| {ws} | {ws}, random mask | random mask | +0.4 (n=1) | - | too few seeds |" in lines
    assert "| FedGMA gma, tau=0.4 | FedGMA gma, tau=0.4, uniform step | uniform step | not run yet | - | - |" in lines
    summary_lines = summary.splitlines()
    # Why: ws's kept share, and of the colour channels' first-layer weights the mean of red 0.5 and
    # green 0.1 (blue carries only markers); against its random mask (one seed: too few to judge, left out
    # of the word) 0.700 - 0.696 at seed 0, with the share that random run kept.
    assert "- **opposite signs, partial participation**: the mask does nothing (every comparison with two or more " \
        "seeds equivalent, the widest within 1 point; 1 with one seed, not judged) [10 of 50 runs]. " \
        "ws, eta_s=1 keeps 25.0 % (colour channels 30.0 %), " \
        "+0.4 (n=1) pts against its random mask (which kept 15.0 %)" in summary_lines
    assert "- **private markers, full participation**: not run yet [0 of 35 runs]" in summary_lines
    # Its runs' client step, beside the one of the full grid's client-step study (a different question).
    assert "every run at client step 0.01, where the full grid's client-step study uses the paper's 0.001;" in summary
    assert (f"{ws}: keeps 25.0 % of coordinates (its random mask 15.0 %); vs its no-mask control *equivalent "
            "within 1 point*, vs its random mask *too few seeds*") in tables
    assert (tmp_path / "fig" / "when.png").stat().st_size > 10_000


def test_a_readme_without_the_blocks_is_refused_before_anything_is_written(tmp_path, capsys):
    from fedgma import cli

    _when_grid_with_some_runs(tmp_path / "when")
    plain = tmp_path / "plain.md"
    plain.write_text("no blocks here\n")
    assert cli.main(["report", str(tmp_path / "when"), "--readme", str(plain)]) == 2
    assert capsys.readouterr().err == (f"fedgma report: {plain.resolve()}: no {when_report.WHEN_BEGIN} or "
                                       f"{when_report.SUMMARY_BEGIN} block to replace\n")
    assert not (tmp_path / "when" / "report.md").exists() and plain.read_text() == "no blocks here\n"


def test_the_when_reports_blocks_before_and_after_the_grid_has_run(tmp_path, capsys):
    readme, docs = tmp_path / "README.md", tmp_path / "docs" / "experiments.md"
    docs.parent.mkdir()
    readme.write_text(f"intro\n{when_report.SUMMARY_BEGIN}\nold\n{when_report.SUMMARY_END}\nrest\n")
    docs.write_text(f"a\n{when_report.WHEN_BEGIN}\nold\n{when_report.WHEN_END}\nb\n")
    not_run = tmp_path / "when"  # no folder yet
    assert report.write_report(not_run, tmp_path / "figures", readme=[readme, docs]) is None
    assert not not_run.exists()
    assert "has not run" in readme.read_text() and "has not run yet" in docs.read_text()
    _when_grid_with_some_runs(not_run)
    written = report.write_report(not_run, tmp_path / "figures", readme=[readme, docs])
    assert written == not_run / "report.md" and "**When does the mask help?**" in written.read_text()
    assert "- **opposite signs, partial participation**: the mask does nothing" in readme.read_text()
    assert "](../figures/when.png)" in docs.read_text() and "\nold\n" not in docs.read_text()
    with pytest.raises(ValueError, match="no <!-- when-results:begin -->"):
        report.write_report(not_run, tmp_path / "figures", readme=tmp_path / "when" / "report.md")
