"""The committed grid results (``results/full``, ``results/when``): made with the grid's settings,
and what the docs show.

These read the committed CSVs and JSON (no weights) and rebuild the combined CSVs and the
generated blocks of docs/experiments.md and README.md from them with the documented code, so a
hand edit or a stale report fails.
"""

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from fedgma.lab.experiments import report, when_report
from fedgma.lab.experiments.grids import grid_by_name
from fedgma.lab.experiments.runner import GridRunner

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results" / "full"
GRIDS = ("full", "when")


def finished_runs(grid: str = "full") -> list[Path]:
    return sorted(p.parent for p in (ROOT / "results" / grid / "runs").glob("*/summary.json"))


def test_some_full_grid_runs_are_committed():
    assert len(finished_runs()) >= 57  # stop 9 committed 57 of 123; runs are only ever added


@pytest.mark.parametrize(("grid", "run_dir"), [(g, r) for g in GRIDS for r in finished_runs(g)],
                         ids=lambda value: value if isinstance(value, str) else value.name)
def test_a_committed_run_matches_its_grid_settings_and_its_metrics(grid, run_dir):
    runner = GridRunner(grid_by_name(grid), ROOT / "results" / grid)
    spec = next(s for s in runner.grid.runs if s.name == run_dir.name)
    assert runner.is_finished(spec)  # raises GridMismatch if made with other settings
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    rounds = [int(r["round"]) for r in rows]
    planned = int(spec.run_config["num-server-rounds"])
    assert rounds == list(range(planned + 1)), "every round once, round 0 being the initial model"
    trained = rows[1:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rounds"] == planned
    assert summary["final-ood-accuracy"] == pytest.approx(float(trained[-1]["ood-accuracy"]))
    assert summary["final-id-accuracy"] == pytest.approx(float(trained[-1]["id-accuracy"]))
    assert summary["peak-ood-accuracy"] == pytest.approx(max(float(r["ood-accuracy"]) for r in trained))


@pytest.mark.parametrize("grid", GRIDS)
def test_weights_and_checkpoints_of_grid_runs_are_never_committed(grid):
    # A grid run in place writes these next to its CSVs; git must ignore them, and none may be tracked.
    results = ROOT / "results" / grid
    run = results.relative_to(ROOT) / "runs" / "any-run"
    for name in ("final_model.pt", "checkpoint.npz", ".writer.lock"):
        ignored = subprocess.run(["git", "check-ignore", "-q", str(run / name)], cwd=ROOT)
        assert ignored.returncode == 0, f"{run / name} is not ignored by git"
    tracked = subprocess.run(["git", "ls-files", str(results.relative_to(ROOT))], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(f).suffix in {".csv", ".json", ".md"} for f in tracked)
    assert tracked or grid == "when"


@pytest.mark.parametrize("grid", GRIDS)
def test_the_combined_csv_is_rebuilt_from_the_runs(grid, tmp_path):
    results = ROOT / "results" / grid
    if not (results / "results.csv").is_file():
        assert grid == "when" and not finished_runs(grid), "finished runs without their combined CSV"
        return
    copy = tmp_path / grid
    shutil.copytree(results, copy)
    (copy / "results.csv").unlink()
    rebuilt = GridRunner(grid_by_name(grid), copy).write_combined()
    assert rebuilt.read_text() == (results / "results.csv").read_text()


RESULTS_DOC = ROOT / "docs" / "experiments.md"  # the one file that holds the results block


def test_the_results_block_is_the_reports_output(tmp_path):
    text = RESULTS_DOC.read_text()
    assert text.count(report.BEGIN) == 1 and text.count(report.END) == 1
    assert report.BEGIN not in (ROOT / "README.md").read_text(), "the results block lives in docs/experiments.md only"
    block = text.split(report.BEGIN, 1)[1].split(report.END, 1)[0].strip("\n")
    # Figures go to a scratch copy of docs/figures so the committed PNGs are left alone;
    # links are relative to the document's folder (docs/) either way.
    expected = report.build_markdown(RESULTS, tmp_path / "docs" / "figures", tmp_path / "docs").strip("\n")
    assert block == expected, f"results block of docs/experiments.md is stale: run `{report.FULL_COMMAND}`"
    readme = (ROOT / "README.md").read_text()  # and the README's short answer
    summary = readme.split(report.SUMMARY_BEGIN, 1)[1].split(report.SUMMARY_END, 1)[0].strip("\n")
    assert summary == report.build_summary(RESULTS).strip("\n"), (
        f"README's summary is stale: run `{report.FULL_COMMAND}`")
    paper_step = any("client-step" in run.studies for run in report.load_runs(RESULTS))
    for name in ("figure2.png", "baselines.png", "ablations.png") + (("client_step.png",) if paper_step else ()):
        assert (ROOT / "docs" / "figures" / name).is_file()


def test_the_when_blocks_are_the_reports_output(tmp_path):
    """README.md's summary and docs/experiments.md's tables of the when grid, as `fedgma report results/when`
    writes them (before the grid has run, both say so)."""
    when = ROOT / "results" / "when"
    for path, begin, end, part in ((ROOT / "README.md", when_report.SUMMARY_BEGIN, when_report.SUMMARY_END, 1),
                                   (RESULTS_DOC, when_report.WHEN_BEGIN, when_report.WHEN_END, 0)):
        text = path.read_text()
        assert text.count(begin) == 1 and text.count(end) == 1
        block = text.split(begin, 1)[1].split(end, 1)[0].strip("\n")
        # Figures go to a scratch copy of docs/figures; links are relative to the document's folder.
        relative_to = tmp_path / path.parent.relative_to(ROOT)
        expected = when_report.build_when_markdown(when, tmp_path / "docs" / "figures", relative_to)[part].strip("\n")
        if cut := grid_by_name("when").cut:  # the summary says how many runs the budget cut
            runs = len(grid_by_name("when").runs)
            said = (f"the first {runs} of the {runs + len(cut)} runs it planned, the other {len(cut)} cut to fit its "
                    "budget"
                    if part else f"({len(cut)} more were planned and cut to fit the grid's budget)")
            assert said in block
        assert block == expected, f"the when block of {path.name} is stale: run `{when_report.WHEN_COMMAND}`"
