"""The 10-class colour probe: does a model answer by shape or by colour?"""

import numpy as np
import torch
from torch import nn

from fedgma.app.task.colored.coloring import TRAIN_BACKGROUND, TRAIN_FOREGROUND
from fedgma.lab.experiments.colour_probe import shape_or_colour, swapped_colour_set


def _probe():
    grey = np.zeros((40, 28, 28), dtype=np.uint8)
    grey[:, 10:18, 10:18] = 255  # a full-intensity square: foreground colour there
    classes = np.arange(40) % 10
    return swapped_colour_set(grey, classes, seed=3)


class ReadsColour(nn.Module):
    """Answers the class whose training foreground colour the brightest pixel has."""

    def forward(self, x):
        pixel = x[:, :, 14, 14]  # [N, 3]
        palette = torch.from_numpy(TRAIN_FOREGROUND.reshape(20, 3)).float()
        nearest = torch.cdist(pixel, palette).argmin(dim=1) // 2
        return nn.functional.one_hot(nearest, 10).float()


class ReadsShape(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.classes = torch.from_numpy(classes)
        self.seen = 0

    def forward(self, x):
        answer = self.classes[self.seen:self.seen + len(x)]
        self.seen += len(x)
        return nn.functional.one_hot(answer, 10).float()


def test_swapped_colours_are_another_classes_training_colours():
    probe = _probe()
    assert np.all(probe.colour_labels != probe.shape_labels)
    for image, colour in zip(probe.images, probe.colour_labels, strict=False):
        fg = image[:, 14, 14] / 255.0
        bg = image[:, 0, 0] / 255.0
        assert min(np.abs(TRAIN_FOREGROUND[colour] - fg).max(axis=1)) < 0.01
        assert min(np.abs(TRAIN_BACKGROUND[colour] - bg).max(axis=1)) < 0.01


def test_a_colour_reader_follows_colour_and_a_shape_reader_follows_shape():
    probe = _probe()
    by_colour = shape_or_colour(ReadsColour(), probe, batch_size=7)
    assert by_colour == {"images": 40, "follows-shape": 0.0, "follows-colour": 1.0, "neither": 0.0}
    by_shape = shape_or_colour(ReadsShape(probe.shape_labels), probe, batch_size=7)
    assert by_shape["follows-shape"] == 1.0 and by_shape["follows-colour"] == 0.0


def test_probe_run_reads_a_finished_runs_files_and_writes_its_result(tmp_path, shared_data_dir):
    import json

    from fedgma.app.config import DataSource
    from fedgma.app.settings import parse_run_config
    from fedgma.app.task.colored.model import build_model
    from fedgma.deployment.app_folder import app_defaults
    from fedgma.lab.experiments.colour_probe import probe_grid
    from fedgma.lab.experiments.results import PROBE_FILE, grid_run_folders, load_probes

    source = DataSource(shared_data_dir, download=False)
    for name, task in (("ten", "ten-class"), ("two", "binary")):
        run_dir = tmp_path / "runs" / name
        run_dir.mkdir(parents=True)
        config = parse_run_config({**app_defaults(), "task": task, "test-images": 100})
        (run_dir / "config.json").write_text(json.dumps({**config.flat(), "run-id": 1}))
        torch.save(build_model(10 if task == "ten-class" else 2, seed=0).state_dict(), run_dir / "final_model.pt")
    said = []
    assert probe_grid(tmp_path, source, echo=said.append) == 1  # the binary run is left alone
    assert said[-1] == "probed 1 of 1 10-class runs (the others have no final model here)"
    written = json.loads((tmp_path / "runs" / "ten" / PROBE_FILE).read_text())
    assert written["images"] == 100 and written["dataset"] == "fashion-mnist"
    assert abs(written["follows-shape"] + written["follows-colour"] + written["neither"] - 1) < 1e-9
    assert load_probes(grid_run_folders(tmp_path)) == {"ten": written}
    assert not (tmp_path / "runs" / "two" / PROBE_FILE).exists()


def test_a_reruns_model_stands_in_only_where_its_metrics_are_the_runs(tmp_path, shared_data_dir):
    import json

    import pytest

    from fedgma.app.config import DataSource
    from fedgma.app.settings import parse_run_config
    from fedgma.app.task.colored.model import build_model
    from fedgma.deployment.app_folder import app_defaults
    from fedgma.lab.experiments.colour_probe import probe_grid
    from fedgma.lab.experiments.results import PROBE_FILE

    source = DataSource(shared_data_dir, download=False)
    config = parse_run_config({**app_defaults(), "task": "ten-class", "test-images": 100})
    header = "round,wall-seconds,id-accuracy\n"
    for folder, rows in (("committed", "1,5.0,0.5\n"), ("rerun", "1,7.5,0.5\n"), ("other", "1,5.0,0.6\n")):
        run_dir = tmp_path / folder / "runs" / "ten"
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text(json.dumps({**config.flat(), "run-id": 1}))
        (run_dir / "metrics.csv").write_text(header + rows)
        if folder != "committed":
            torch.save(build_model(10, seed=0).state_dict(), run_dir / "final_model.pt")
    said = []
    assert probe_grid(tmp_path / "committed", source, echo=said.append) == 0  # no model, no reruns
    # A rerun whose metrics are the run's (the timings aside) is the same model.
    assert probe_grid(tmp_path / "committed", source, echo=said.append, reruns=tmp_path / "rerun") == 1
    written = json.loads((tmp_path / "committed" / "runs" / "ten" / PROBE_FILE).read_text())
    assert written["model"] == "a rerun's, metrics identical" and written["images"] == 100
    with pytest.raises(ValueError, match="metrics differ"):
        probe_grid(tmp_path / "committed", source, echo=said.append, reruns=tmp_path / "other")


def test_the_reports_probe_table_has_one_cell_per_column():
    from fedgma.lab.experiments import report
    from fedgma.lab.experiments.comparisons import probe_table
    from fedgma.lab.experiments.runs import Run

    rounds = [{"round": 0, "ood-accuracy": 0.1, "id-accuracy": 0.1},
              {"round": 1, "ood-accuracy": 0.09, "id-accuracy": 1.0}]
    runs = [Run(f"r{s}", "ten-class-iid", "FedAvg", s, ("main",), 3, None, 0.01, rounds) for s in (0, 1)]
    probes = {"r0": {"follows-shape": 0.0, "follows-colour": 1.0, "neither": 0.0},
              "r1": {"follows-shape": 0.02, "follows-colour": 0.96, "neither": 0.02}}
    header, rule, row = probe_table(runs, probes)
    assert header.count("|") == rule.count("|") == row.count("|") == 9
    assert row == ("| 10-class, IID | FedAvg | 2 | 1.0000 ± 0.0000 | 0.0900 ± 0.0000 | 0.0100 ± 0.0141 "
                   "| 0.9800 ± 0.0283 | 0.0100 ± 0.0141 |")
    assert report.colour_only_note(runs, probes, "ten-class-iid").startswith(
        "; **colour only**: all 2 probed final models answer by colour on 96.0 % to 100.0 % of the probe's images")
    probes["r1"]["follows-colour"] = 0.85
    assert report.colour_only_note(runs, probes, "ten-class-iid") == ""


def test_percentages_are_exact_and_never_round_to_100_or_0():
    from fedgma.lab.experiments.results import percent

    assert percent(0.997) == "99.7 %" and percent(1.0) == "100.0 %" and percent(0.0) == "0.0 %"
    assert percent(0.9996) == "99.96 %" and percent(0.99999) == "99.999 %" and percent(0.0004) == "0.04 %"
    assert percent(0.25) == "25.0 %"
